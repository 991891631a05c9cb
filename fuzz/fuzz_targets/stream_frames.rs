//! Stream frames (`peer::frames::Decoder`), as a joining node receives them
//! from a source, in pieces of any size. The first byte picks the piece
//! size. Decoding in pieces must give the same frames, and the same error,
//! as decoding the bytes whole; every entry decoded carries its own token;
//! and frames rebuilt from the entries decode to the same entries.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_server::peer::frames::{Decoder, Frame, FrameBuilder, FrameError};

fn decode(data: &[u8], piece: usize) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = Decoder::default();
    let mut frames = Vec::new();
    for chunk in data.chunks(piece.max(1)) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let whole = decode(data, data.len());
    assert_eq!(decode(data, usize::from(piece)), whole);
    for frame in &whole.0 {
        let Frame::Records(entries) = frame else {
            continue;
        };
        let mut builder = FrameBuilder::default();
        for entry in entries {
            assert_eq!(entry.token(), strata_ring::token(entry.user_key()));
            builder.push(&entry.engine_key, &entry.record.encode());
        }
        let mut decoder = Decoder::default();
        decoder.push(&builder.take());
        assert_eq!(decoder.next_frame(), Ok(Some(frame.clone())));
    }
});
