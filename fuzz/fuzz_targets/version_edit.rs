#![no_main]
use libfuzzer_sys::fuzz_target;

// Arbitrary bytes as one MANIFEST record (a version edit), and as a whole
// MANIFEST read the way open and repair read it.
fuzz_target!(|data: &[u8]| {
    strata_engine::fuzzing::version_edit(data);
    strata_engine::fuzzing::manifest(data);
});
