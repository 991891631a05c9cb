//! The stored record (`storage::Record::decode`): what a node reads back from
//! its engine, and also, byte for byte, the answer of
//! `POST /internal/v1/read` that a coordinator decodes from a replica. Any
//! bytes must be refused or decode to a record that encodes back to exactly
//! those bytes: never a panic, never a record that says something else.
//! The same holds for the answer of `POST /internal/v1/read-digest`
//! (`peer::wire::RecordDigest::decode`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_server::peer::wire::RecordDigest;
use strata_server::storage::{EncodedRecord, Record};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::decode(data.to_vec().into()) {
        assert_eq!(record.encode(), data);
        assert_eq!(record.encoded_len(), data.len());
        let encoded = EncodedRecord::decode(data.to_vec().into()).expect("decoded once");
        assert_eq!(encoded.record(), &record);
        assert_eq!(&encoded.bytes()[..], data);
    } else {
        assert!(EncodedRecord::decode(data.to_vec().into()).is_err());
    }
    if let Ok(digest) = RecordDigest::decode(data) {
        assert_eq!(&digest.encode()[..], data);
    }
});
