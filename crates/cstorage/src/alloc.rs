//! The allocator's settings for the whole program (mimalloc, set in `main.rs`).

/// mimalloc's `mi_option_arena_eager_commit`: its index in the `mi_option_t` enum of the
/// mimalloc v3 sources libmimalloc-sys 0.1.49 builds (include/mimalloc.h); the crate's own
/// constants describe an older enum.
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;

unsafe extern "C" {
    // From mimalloc (linked through the mimalloc crate).
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Commits mimalloc's arenas on demand instead of eagerly. With eager commit (mimalloc's
/// default on Linux) `cstorage serve` kept 70 to 115 MiB resident while 8 clients pulled a
/// layer, 25 to 30 MiB without (bench/serve.sh, bench/RESULTS.md; the test
/// `peak_memory_with_8_clients` in tests/serve.rs fails without it); the other commands
/// took no more CPU time (bench/RESULTS.md). This must run before the first arena is reserved, i.e.
/// before the first allocation, hence a constructor: mimalloc's own runs earlier (priority
/// 101), Rust's runtime allocates only later, in `main`. It changes the option only when it
/// reads mimalloc's default (2, "on where the OS overcommits"): a value set by the user
/// (`MIMALLOC_ARENA_EAGER_COMMIT`) is kept, and if the index above ever named another
/// option, that option would almost surely not read 2 either.
extern "C" fn lazy_arena_commit() {
    // SAFETY: mimalloc's option functions only read and write its static option table,
    // which its constructor has initialized; no other thread exists yet.
    unsafe {
        if mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) == 2 {
            mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        }
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static LAZY_ARENA_COMMIT: extern "C" fn() = lazy_arena_commit;
