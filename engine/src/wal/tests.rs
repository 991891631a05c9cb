//! Log format tests: round trips across block boundaries, and the torn-tail
//! versus corruption classification under truncation and byte flips.

use super::*;
use std::path::Path;

fn write_log(records: &[Vec<u8>]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.log");
    let mut w = LogWriter::create(&path).unwrap();
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
fn flipped_byte_in_last_fragment_is_a_torn_tail() {
    let records = sample_records();
    let bytes = write_log(&records);
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(read_log(&bad, true).unwrap(), records[..records.len() - 1]);
    assert!(read_log(&bad, false).unwrap_err().is_corruption());
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
