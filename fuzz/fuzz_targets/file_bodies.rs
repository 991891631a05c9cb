//! What a client or a peer sends the file API, as any of them can forge it:
//! a manifest (`Manifest::decode`, the body of `POST /v1/files/{name}` and
//! every stored manifest) is refused, or consistent: its chunks cover its
//! size exactly and it encodes back to the same manifest; nodes' listing
//! pages (`files::index::merge`, the answers to `POST /internal/v1/files`)
//! merge into at most a page of live names in order, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_server::files::index::{merge, Listed, MAX_PAGE};
use strata_server::files::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let lens: Vec<u64> = (0..m.chunks.len())
            .map(|i| m.chunk(i).expect("every chunk of a checked manifest").1)
            .collect();
        assert_eq!(lens.iter().sum::<u64>(), m.size);
        assert!(lens.iter().all(|&l| l > 0 && l <= m.chunk_size));
        assert_eq!(Manifest::decode(&m.encode()).ok(), Some(m));
    }
    if let Some((&limit, pages)) = data.split_first() {
        if let Ok(pages) = serde_json::from_slice::<Vec<Vec<Listed>>>(pages) {
            let merged = merge(pages, u32::from(limit));
            assert!(merged.files.len() <= usize::from(limit).clamp(1, MAX_PAGE as usize));
            assert!(merged.files.iter().all(|l| l.live));
            assert!(merged.files.windows(2).all(|w| w[0].name < w[1].name));
        }
    }
});
