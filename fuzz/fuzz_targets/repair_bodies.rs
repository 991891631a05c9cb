//! The bodies of the anti-entropy calls (`peer::repair`): the digest and
//! repair-rows requests a node receives and the digest and repair-rows
//! answers it reads back. Each is refused, or decodes into a value that
//! encodes back to exactly the same bytes (an answer's items are checked
//! by the apply-batch decoder, which the `stream_frames` target covers).

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_ring::TokenRange;
use strata_server::peer::repair::{
    encode_rows_answer, DigestAnswer, DigestRequest, LeafHashes, RowsAnswer, RowsRequest,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = DigestRequest::decode(data) {
        assert_eq!(request.encode(), data);
    }
    let parents = usize::from(data.first().copied().unwrap_or(0));
    if let Ok(answer) = DigestAnswer::decode(data, parents) {
        assert_eq!(answer.encode(), data);
    }
    if let Ok(request) = RowsRequest::decode(data) {
        assert_eq!(request.encode(), data);
    }
    // An answer to a request of three leaves of 0, 5 and 9 hashes.
    let request = RowsRequest {
        session: 1,
        range: TokenRange::new(0, 0),
        depth: 2,
        leaves: [(1, 0), (4, 5), (7, 9)]
            .into_iter()
            .map(|(leaf, k)| LeafHashes {
                leaf,
                hashes: (0..k).collect(),
            })
            .collect(),
    };
    if let Ok(answer) = RowsAnswer::decode(data, &request) {
        let bits = data.len() - answer.items_len;
        let batch = &data[bits..];
        assert_eq!(
            encode_rows_answer(answer.answered, &answer.lacks, batch),
            data
        );
    }
});
