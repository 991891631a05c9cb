//! The body of `POST /internal/v1/apply` (`peer::wire::decode_apply`),
//! as any holder of the secret can send it: refused, or decoded into a key
//! and a record that encode back to exactly the same body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_server::peer::wire::{decode_apply, encode_apply};

fuzz_target!(|data: &[u8]| {
    if let Ok((key, record)) = decode_apply(data.to_vec().into()) {
        assert_eq!(&encode_apply(&key, record.record())[..], data);
    }
});
