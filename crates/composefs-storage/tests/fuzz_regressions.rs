//! Every input a fuzz target ever crashed on (fuzz/regressions/<target>/) runs through that
//! target's entry point again.

#[test]
fn fuzz_crashes_stay_fixed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let mut n = 0;
    for target in std::fs::read_dir(&dir).unwrap().flatten() {
        let f: fn(&[u8]) = match target.file_name().to_str().unwrap() {
            "tar_split" => composefs_storage::fuzzing::tar_split_stream,
            "tar_header" => composefs_storage::fuzzing::tar_header,
            "storage_conf" => composefs_storage::fuzzing::storage_conf,
            "records" => composefs_storage::fuzzing::records,
            "reference" => composefs_storage::fuzzing::reference,
            other => panic!("unknown fuzz target {other}"),
        };
        for input in std::fs::read_dir(target.path()).unwrap().flatten() {
            f(&std::fs::read(input.path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "the regression inputs are found");
}
