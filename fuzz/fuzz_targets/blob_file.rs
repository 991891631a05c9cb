//! A blob file's bytes as the engine reads them from disk: the scan a
//! repair runs, and a read through a pointer taken from the same bytes.
//! Damage is an error; a scan that passes covers the file exactly.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_engine::fuzzing::blob_file(data));
