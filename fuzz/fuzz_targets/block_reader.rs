//! Fuzzes the block reader and the LZ4 block decoder: arbitrary bytes must give records or errors, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    strata_engine::fuzzing::block_reader(data);
});
