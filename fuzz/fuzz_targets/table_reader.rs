//! Fuzzes the table reader: arbitrary bytes opened as a table file must give
//! entries or `Error::Corruption`, never a panic.
#![no_main]

use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    strata_engine::fuzzing::table_reader(dir.path(), data);
});
