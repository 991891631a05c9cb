//! Log format tests: round trips across block boundaries, and the torn-tail
//! versus corruption classification under truncation and byte flips.

use super::*;
use std::path::Path;

fn write_log(records: &[Vec<u8>]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.log");
    let mut w = LogWriter::create(&*crate::fs::os(), &path).unwrap();
    for r in records {
        w.add_record(r).unwrap();
    }
    w.sync().unwrap();
    std::fs::read(&path).unwrap()
}

fn read_log(bytes: &[u8], tolerate: bool) -> crate::Result<Vec<Vec<u8>>> {
    let mut r = LogReader::new(bytes, Path::new("test.log"), tolerate);
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok(out)
}

/// Every record `r` yields, skipping each corruption as a caller in
/// `RecoveryMode::SkipCorrupted` does; any other error fails the test.
fn records_skipping_damage(r: &mut LogReader<&[u8]>) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    loop {
        match r.next_record() {
            Ok(Some(rec)) => got.push(rec),
            Ok(None) => return got,
            Err(crate::Error::Corruption { offset, .. }) => r.skip_damage(offset),
            Err(e) => panic!("{e}"),
        }
    }
}

fn sample_records() -> Vec<Vec<u8>> {
    vec![
        b"small".to_vec(),
        vec![],
        vec![7u8; BLOCK_SIZE - 2 * HEADER_SIZE - 5],
        vec![1u8; 3 * BLOCK_SIZE + 17],
        (0..1000u32).flat_map(|i| i.to_le_bytes()).collect(),
        b"tail".to_vec(),
    ]
}

#[test]
fn round_trip_across_blocks() {
    let records = sample_records();
    let bytes = write_log(&records);
    assert_eq!(read_log(&bytes, false).unwrap(), records);
    assert_eq!(read_log(&bytes, true).unwrap(), records);
}

#[test]
fn record_exactly_filling_block_leaves_trailer() {
    // First record leaves exactly 6 bytes in the block: they must become padding.
    let records = vec![vec![3u8; BLOCK_SIZE - HEADER_SIZE - 6], b"next".to_vec()];
    let bytes = write_log(&records);
    assert_eq!(&bytes[BLOCK_SIZE - 6..BLOCK_SIZE], &[0u8; 6]);
    assert_eq!(read_log(&bytes, false).unwrap(), records);
}

#[test]
fn every_truncation_recovers_a_prefix_when_tolerated() {
    let records = sample_records();
    let bytes = write_log(&records);
    for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        let got = read_log(&bytes[..cut], true).unwrap();
        assert!(got.len() <= records.len());
        assert_eq!(got, records[..got.len()], "cut at {cut}");
    }
}

#[test]
fn truncation_is_corruption_when_not_tolerated() {
    let records = sample_records();
    let bytes = write_log(&records);
    let cut = bytes.len() - 2;
    let err = read_log(&bytes[..cut], false).unwrap_err();
    assert!(err.is_corruption(), "{err}");
}

#[test]
fn flipped_byte_in_the_middle_is_corruption() {
    let records = sample_records();
    let bytes = write_log(&records);
    for pos in [3usize, 10, BLOCK_SIZE + 100, 2 * BLOCK_SIZE + 9] {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x40;
        for tolerate in [false, true] {
            match read_log(&bad, tolerate) {
                Err(e) => assert!(e.is_corruption(), "{e}"),
                Ok(got) => panic!("flip at {pos} went unnoticed: {} records", got.len()),
            }
        }
    }
}

#[test]
fn every_flipped_byte_of_the_last_record_is_corruption() {
    // A whole fragment whose checksum fails was damaged after it was written:
    // if it was a synced batch, treating it as a torn tail would lose it.
    let records = sample_records();
    let bytes = write_log(&records);
    let last_start = bytes.len() - (HEADER_SIZE + b"tail".len());
    for pos in last_start..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut bad = bytes.clone();
            bad[pos] ^= mask;
            for tolerate in [false, true] {
                match read_log(&bad, tolerate) {
                    Err(e) => assert!(e.is_corruption(), "flip at {pos}: {e}"),
                    Ok(got) => panic!("flip {mask:#x} at {pos} read as {} records", got.len()),
                }
            }
        }
    }
}

#[test]
fn a_length_that_runs_past_the_end_over_a_whole_payload_is_corruption() {
    let records = vec![b"one".to_vec(), b"the last record".to_vec()];
    let mut bytes = write_log(&records);
    let last = bytes.len() - (HEADER_SIZE + records[1].len());
    // Length + 100: the header now claims bytes the file does not have, as
    // a torn append would, but the checksum matches the payload that is there.
    bytes[last + 4] += 100;
    let err = read_log(&bytes, true).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert!(err.to_string().contains("length"), "{err}");
}

#[test]
fn a_torn_tail_is_reported_with_its_offset_and_size() {
    let records = vec![b"one".to_vec(), vec![9u8; 100]];
    let bytes = write_log(&records);
    let last = (bytes.len() - (HEADER_SIZE + 100)) as u64;
    for cut in [3usize, HEADER_SIZE, HEADER_SIZE + 50] {
        let torn = &bytes[..last as usize + cut];
        let mut r = LogReader::new(torn, Path::new("test.log"), true);
        assert_eq!(r.next_record().unwrap(), Some(records[0].clone()));
        assert_eq!(r.next_record().unwrap(), None);
        let tail = r.torn_tail().expect("the tear is reported");
        assert_eq!((tail.offset, tail.bytes), (last, cut as u64), "cut {cut}");
    }
    // A clean end reports nothing.
    let mut r = LogReader::new(&bytes[..], Path::new("test.log"), true);
    while r.next_record().unwrap().is_some() {}
    assert!(r.torn_tail().is_none());
}

#[test]
fn skipping_damage_recovers_the_records_after_it_and_counts_the_loss() {
    let records: Vec<Vec<u8>> = (0..2000u32).map(|i| i.to_le_bytes().repeat(10)).collect();
    let mut bytes = write_log(&records);
    // Damage a record in the first block; the second block on is intact.
    bytes[100] ^= 0x10;
    let mut r = LogReader::new(&bytes[..], Path::new("test.log"), true);
    let mut got = Vec::new();
    let mut damages = 0;
    loop {
        match r.next_record() {
            Ok(Some(rec)) => got.push(rec),
            Ok(None) => break,
            Err(crate::Error::Corruption { offset, .. }) => {
                damages += 1;
                r.skip_damage(offset);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(damages, 1);
    assert!(r.skipped_bytes() > 0 && r.skipped_bytes() <= BLOCK_SIZE as u64);
    // What was read is a prefix of the records, then a suffix: the damaged
    // record and the rest of its block are gone, nothing else.
    let prefix = got.iter().zip(&records).take_while(|(g, r)| g == r).count();
    let lost = records.len() - got.len();
    assert!(lost >= 1, "the damaged record cannot be read back");
    assert_eq!(got[prefix..], records[prefix + lost..]);
    assert!(
        lost * (HEADER_SIZE + 40) <= BLOCK_SIZE,
        "lost {lost} records"
    );
}

#[test]
fn zero_filled_tail_is_torn_but_zeros_before_data_are_not() {
    let records = vec![b"one".to_vec(), b"two".to_vec()];
    let mut bytes = write_log(&records);
    bytes.extend_from_slice(&[0u8; 100]);
    assert_eq!(read_log(&bytes, true).unwrap(), records);
    bytes.push(1);
    assert!(read_log(&bytes, true).unwrap_err().is_corruption());
}

#[test]
fn a_mapped_wal_read_before_its_writer_is_dropped_ends_at_its_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("000001.log");
    let mut w = LogWriter::create_wal(&*crate::fs::os(), &path, true).unwrap();
    // Past the first reserved window, records of every fragmentation.
    let mut records: Vec<Vec<u8>> = (0..8u8)
        .flat_map(|i| {
            let mut r = sample_records();
            r.iter_mut().for_each(|r| r.push(i));
            r
        })
        .collect();
    // Last, a record of nonzero bytes that spans a block boundary.
    records.push((0..40_000u32).map(|i| (i % 251 + 1) as u8).collect());
    let mut last_start = 0;
    for r in &records {
        last_start = usize::try_from(w.len()).unwrap();
        w.add_record(r).unwrap();
    }
    // Read as a crash leaves it: the reserved zeros still follow.
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() as u64 > w.len(), "space is reserved ahead");
    let read = |bytes: &[u8]| {
        let mut r = LogReader::new(bytes, &path, false).zero_tail_ends();
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        assert!(r.torn_tail().is_none());
        Ok::<_, crate::Error>(out)
    };
    assert_eq!(read(&bytes).unwrap(), records);
    // Not a WAL: the same zeros are a tear, refused where none may be.
    assert!(read_log(&bytes, false).unwrap_err().is_corruption());
    // A copy cut short anywhere in the last record (the zeros reserved
    // behind it) is a torn tail in the newest log, corruption in an older one.
    let end = usize::try_from(w.len()).unwrap();
    for cut in (last_start..end).step_by(499) {
        let mut torn = bytes.clone();
        torn[cut..].fill(0);
        let mut r = LogReader::new(&torn[..], &path, true).zero_tail_ends();
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push(rec);
        }
        assert_eq!(got[..], records[..records.len() - 1], "cut at {cut}");
        let tail = r.torn_tail();
        assert!(cut == last_start || tail.is_some(), "cut at {cut}");
        let mut older = LogReader::new(&torn[..], &path, false).zero_tail_ends();
        let refused = loop {
            match older.next_record() {
                Ok(Some(_)) => continue,
                Ok(None) => break false,
                Err(e) => break e.is_corruption(),
            }
        };
        assert!(cut == last_start || refused, "cut at {cut}");
    }
    // A flipped byte in a record that ends in data is damage, not a cut.
    let mut flipped = bytes.clone();
    flipped[end - 50] ^= 0x40;
    let mut r = LogReader::new(&flipped[..], &path, true).zero_tail_ends();
    let err = loop {
        match r.next_record() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a flipped byte read as the end"),
            Err(e) => break e,
        }
    };
    assert!(err.is_corruption());
    drop(w);
    assert_eq!(
        read_log(&std::fs::read(&path).unwrap(), false).unwrap(),
        records
    );
}

#[test]
fn skipping_damage_that_ends_in_zeros_resumes_at_the_next_block() {
    // rec2 fills block 0 to its end and ends in zeros; rec3 starts block 1.
    let rec1 = vec![5u8; 100];
    let mut rec2 = vec![9u8; 1000];
    rec2.resize(BLOCK_SIZE - 2 * HEADER_SIZE - rec1.len(), 0);
    let rec3 = b"after the damage".to_vec();
    let mut bytes = write_log(&[rec1.clone(), rec2, rec3.clone()]);
    bytes[HEADER_SIZE + rec1.len() + HEADER_SIZE + 500] ^= 1;
    let path = Path::new("000001.log");
    let mut r = LogReader::new(&bytes[..], path, false).zero_tail_ends();
    let got = records_skipping_damage(&mut r);
    assert_eq!(got, vec![rec1, rec3]);
}

/// A newest WAL of nonzero records, and where each record ends.
fn nonzero_log() -> (Vec<Vec<u8>>, Vec<usize>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.log");
    let mut w = LogWriter::create(&*crate::fs::os(), &path).unwrap();
    let mut records = Vec::new();
    let mut ends = Vec::new();
    for i in 0..120u32 {
        let len = 300 + (i as usize * 37) % 900;
        let record: Vec<u8> = (0..len)
            .map(|j| ((i as usize + j) % 251 + 1) as u8)
            .collect();
        w.add_record(&record).unwrap();
        records.push(record);
        ends.push(usize::try_from(w.len()).unwrap());
    }
    w.sync().unwrap();
    (records, ends, std::fs::read(&path).unwrap())
}

fn read_wal(bytes: &[u8], newest: bool) -> crate::Result<(Vec<Vec<u8>>, Option<reader::TornTail>)> {
    let mut r = LogReader::new(bytes, Path::new("000001.log"), newest).zero_tail_ends();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok((out, r.torn_tail().cloned()))
}

#[test]
fn a_page_suffix_lost_by_a_power_cut_ends_the_newest_wal_and_is_damage_in_an_older_one() {
    let (records, ends, bytes) = nonzero_log();
    let page = 4096;
    for boundary in (page..bytes.len() - page).step_by(page) {
        for lost in [page, 1000, reader::MIN_LOST_RUN] {
            let from = boundary - lost;
            let mut holed = bytes.clone();
            holed[from..boundary].fill(0);
            let (got, torn) = read_wal(&holed, true)
                .unwrap_or_else(|e| panic!("hole at {from}..{boundary}: {e}"));
            let intact = ends.iter().take_while(|&&end| end <= from).count();
            assert!(got.len() >= intact, "hole at {from}..{boundary}");
            assert_eq!(got[..], records[..got.len()], "hole at {from}..{boundary}");
            let torn = torn.expect("the hole is reported as a torn tail");
            assert!(torn.offset <= from as u64);
            assert_eq!(torn.offset + torn.bytes, bytes.len() as u64);
            assert!(read_wal(&holed, false).unwrap_err().is_corruption());
        }
    }
}

#[test]
fn zeros_that_do_not_reach_a_page_boundary_or_are_too_few_are_damage() {
    let (_, _, bytes) = nonzero_log();
    let boundary = 3 * 4096;
    let damaged = [
        // Zeros inside a page: no writeback leaves them.
        (boundary - 2000, boundary - 100),
        // Too few zeros before the boundary to tell from data.
        (boundary - (reader::MIN_LOST_RUN - 1), boundary),
    ];
    for (from, to) in damaged {
        let mut holed = bytes.clone();
        holed[from..to].fill(0);
        let err = read_wal(&holed, true).unwrap_err();
        assert!(err.is_corruption(), "zeros at {from}..{to}: {err}");
    }
}

/// The record a child of the kill test writes `i`-th: 200 to ~3.5 KiB of
/// nonzero bytes, the sizes `memcpy` copies in no particular order.
fn killed_writer_record(i: usize) -> Vec<u8> {
    let len = 200 + (i * 1237) % 3300;
    (0..len).map(|j| ((i + j) % 251 + 1) as u8).collect()
}

/// The child half of [`a_writer_killed_mid_append_leaves_a_torn_tail_not_damage`]:
/// appends records to the mapped WAL at `STRATA_KILLED_WAL` until killed.
#[test]
#[ignore = "the child process of a_writer_killed_mid_append_leaves_a_torn_tail_not_damage"]
fn killed_wal_writer_child() {
    let Some(path) = std::env::var_os("STRATA_KILLED_WAL") else {
        eprintln!("not run by its parent test: nothing to write");
        return;
    };
    let mut w = LogWriter::create_wal(&*crate::fs::os(), Path::new(&path), true).unwrap();
    for i in 0.. {
        w.add_record(&killed_writer_record(i)).unwrap();
    }
}

#[test]
fn a_writer_killed_mid_append_leaves_a_torn_tail_not_damage() {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut torn = 0;
    for round in 0..40u64 {
        let path = dir.path().join(format!("{round:06}.log"));
        let mut child = std::process::Command::new(&exe)
            .args([
                "wal::tests::killed_wal_writer_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env("STRATA_KILLED_WAL", &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it write for a while, until its log has grown past a block.
        let started = std::time::Instant::now();
        while std::fs::metadata(&path).map_or(0, |m| m.len()) == 0
            && started.elapsed() < std::time::Duration::from_secs(10)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(5 + round * 7 % 23));
        child.kill().unwrap();
        child.wait().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (records, tail) = read_wal(&bytes, true)
            .unwrap_or_else(|e| panic!("round {round}: a kill left damage: {e}"));
        assert!(
            !records.is_empty(),
            "round {round}: the child wrote nothing"
        );
        for (i, r) in records.iter().enumerate() {
            assert_eq!(*r, killed_writer_record(i), "round {round}, record {i}");
        }
        torn += usize::from(tail.is_some());
    }
    println!("{torn} of 40 kills cut a record short");
}

#[test]
fn a_lost_page_suffix_that_takes_part_of_a_header_is_told_from_damage_by_the_rest() {
    // The second record's header starts 2 bytes before the page boundary.
    let records = vec![
        vec![9u8; 4096 - 2 - HEADER_SIZE],
        (0..500u32).map(|i| (i % 251 + 1) as u8).collect(),
        b"third".to_vec(),
    ];
    let bytes = write_log(&records);
    let mut holed = bytes.clone();
    holed[4094..4096].fill(0);
    let (got, torn) = read_wal(&holed, true).unwrap();
    assert_eq!(got, records[..1]);
    assert_eq!(torn.unwrap().offset, 4094);
    // The same zeros with the payload damaged too: not what a power cut
    // leaves, since the checksum bytes kept are not the payload's.
    let mut damaged = holed.clone();
    damaged[4096 + 100] ^= 1;
    assert!(read_wal(&damaged, true).unwrap_err().is_corruption());
    assert!(read_wal(&holed, false).unwrap_err().is_corruption());
}

#[test]
fn a_reader_that_skips_damage_reads_past_a_lost_page() {
    let (records, ends, bytes) = nonzero_log();
    let mut holed = bytes.clone();
    holed[2 * 4096..3 * 4096].fill(0);
    let mut r = LogReader::new(&holed[..], Path::new("000001.log"), true)
        .zero_tail_ends()
        .read_past_holes();
    let got = records_skipping_damage(&mut r);
    // A skip resumes at the next block.
    let after = ends.iter().filter(|&&end| end > 2 * BLOCK_SIZE).count();
    assert!(after > 0);
    assert!(
        got.ends_with(&records[records.len() - after..]),
        "the records after the hole are read"
    );
    assert!(r.torn_tail().is_none());
}
