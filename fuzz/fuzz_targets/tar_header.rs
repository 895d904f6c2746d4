#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    composefs_storage::fuzzing::tar_header(data);
});
