#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    composefs_storage::fuzzing::records(data);
});
