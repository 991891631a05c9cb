//! Frames of the multiplexed peer transport (`peer::mux::frame::Opener`),
//! as a node receives them from a connection. Odd first bytes feed raw
//! bytes in pieces: the opener must refuse or wait, never panic. Even ones
//! seal frames built from the input under the session key, flip one byte
//! (or none), and check that exactly the frames before the flip open, each
//! as it was sealed.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use strata_server::peer::mux::frame::{Frame, Kind, Opener, Sealer};

const KEY: [u8; 32] = [42; 32];
const KINDS: [Kind; 9] = [
    Kind::Apply,
    Kind::ApplyBatch,
    Kind::Read,
    Kind::ReadDigest,
    Kind::Done,
    Kind::Record,
    Kind::Absent,
    Kind::Digest,
    Kind::Refused,
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mut opener = Opener::new(&KEY, 4096);
    if mode % 2 == 1 {
        let mut buf = BytesMut::new();
        for piece in data.chunks(usize::from(mode / 2) + 1) {
            buf.extend_from_slice(piece);
            loop {
                match opener.open(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
        return;
    }
    let frames: Vec<Frame> = data
        .chunks(37)
        .enumerate()
        .map(|(i, c)| Frame {
            id: i as u64,
            kind: KINDS[usize::from(c[0]) % KINDS.len()],
            payload: Bytes::copy_from_slice(&c[1..]),
        })
        .collect();
    let mut sealer = Sealer::new(&KEY);
    let mut buf = BytesMut::new();
    let mut ends = Vec::new();
    for f in &frames {
        sealer.seal(f, &mut buf);
        ends.push(buf.len());
    }
    let flip = usize::from(mode) * 131 % (buf.len() + 1);
    if flip < buf.len() {
        buf[flip] ^= 0x5a;
    }
    let mut opened = Vec::new();
    while let Ok(Some(f)) = opener.open(&mut buf) {
        opened.push(f);
    }
    // Frames that end at or before the flipped byte open unchanged; the one
    // holding it and every later one do not.
    let intact = ends.iter().filter(|&&end| end <= flip).count();
    assert_eq!(opened.len(), intact.min(frames.len()));
    assert_eq!(&opened[..], &frames[..opened.len()]);
});
