//! The bodies of `POST /internal/v1/apply` and `/internal/v1/apply-batch`
//! (`peer::wire::decode_apply`, `decode_apply_batch`), as any holder of the
//! secret can send them: refused, or decoded into entries that encode back
//! to a body that decodes to the same entries (the single apply: to exactly
//! the same bytes).

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_server::peer::wire::{decode_apply, decode_apply_batch, encode_apply, ApplyBatch};

fuzz_target!(|data: &[u8]| {
    if let Ok((key, record)) = decode_apply(data.to_vec().into()) {
        assert_eq!(&encode_apply(&key, record.record())[..], data);
    }
    if let Ok(entries) = decode_apply_batch(data) {
        let mut batch = ApplyBatch::default();
        for e in &entries {
            batch.push(e.user_key(), &e.record.encode());
        }
        assert_eq!(decode_apply_batch(&batch.finish()).ok(), Some(entries));
    }
});
