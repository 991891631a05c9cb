//! The bodies of the anti-entropy calls (`peer::repair`): the digest and
//! repair-pull requests a node receives and the digest and repair-pull
//! answers it reads back. Each is refused, or decodes into a value that
//! encodes back to exactly the same bytes; the pull counts never exceed
//! the ranges asked for, whatever pieces they arrive in.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_server::peer::repair::{DigestAnswer, DigestRequest, PullCounts, PullRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = DigestRequest::decode(data) {
        assert_eq!(request.encode(), data);
    }
    if let Ok(answer) = DigestAnswer::decode(data) {
        assert_eq!(answer.encode(), data);
    }
    if let Ok(request) = PullRequest::decode(data) {
        assert_eq!(request.encode(), data);
    }
    let ranges = usize::from(data.first().copied().unwrap_or(0));
    let mut counts = PullCounts::default();
    for piece in data.chunks(7) {
        if counts.push(piece, ranges).is_err() {
            break;
        }
    }
    assert!(counts.counts().len() <= ranges);
});
