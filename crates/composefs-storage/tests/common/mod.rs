//! Helpers shared by the library's integration tests (each test file is its own crate and
//! uses some of them).
#![allow(dead_code)]

use composefs_storage::{Storage, StorageConfig};
use testutil::TestStore;

/// The configuration that opens `store` (its graph root, run root and driver options).
pub fn config_of(store: &TestStore) -> StorageConfig {
    let mut c = StorageConfig::for_graphroot(&store.root);
    c.set_runroot(&store.runroot);
    c.set_driver_options(store.all_opts());
    c
}

/// Opens `store` as the tests' stores are opened: explicit configuration, no storage.conf.
pub fn open(store: &TestStore) -> Storage {
    Storage::open_with_config(&config_of(store)).unwrap()
}
