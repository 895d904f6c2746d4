//! Helpers shared by the CLI's integration tests (each test file is its own crate and uses
//! some of them).
#![allow(dead_code)]

use std::process::{Command, Output, Stdio};

use testutil::TestStore;

/// `cstorage` pointed at `store`, with an empty `storage.conf` beside it so that the host's
/// configuration stays out of the test.
pub fn cstorage(store: &TestStore) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cstorage"));
    c.args(store.cstorage_args());
    let empty = store.root.parent().unwrap().join("empty-storage.conf");
    std::fs::write(&empty, "").unwrap();
    c.env("CONTAINERS_STORAGE_CONF", empty);
    c
}

/// Runs `cstorage ARGS` on `store` with standard input closed.
pub fn cst(store: &TestStore, args: &[&str]) -> Output {
    cstorage(store)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The standard output of a run that must succeed (`what` names it if it does not).
pub fn stdout_of(what: &str, o: Output) -> Vec<u8> {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}
