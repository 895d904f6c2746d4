//! The library embedded in a program that a rootless user runs on their own store: this test
//! binary is that program. Run as root (by `cargo test`), it writes a rootless store as the
//! user `cstorage-rl` with skopeo (testutil::rootless), then runs a copy of itself as that
//! user, which calls `userns::init()` first thing in `main` as the documentation asks, finds
//! the store as rootless podman does and reads everything through the public API: every
//! layer exported with `Verify::Digest`, files of container users read through `RootFs`, the
//! whole tree walked. The root side checks the results against the store's own records.
//!
//! `harness = false`: the user-namespace helper is this binary re-executed, which needs our
//! `main` (a libtest `main` would not call `init()`).

use std::io::Read;

use composefs_storage::{ExportOptions, Storage, Verify};
use sha2::{Digest, Sha256};
use testutil::rootless::RootlessStore;

const CHILD: &str = "ROOTLESS_LIB_AS_USER";
/// Set (with [`CHILD`]) to run the user's side without opting in to the helper.
const NO_INIT: &str = "ROOTLESS_LIB_NO_INIT";

fn main() {
    if std::env::var_os(NO_INIT).is_none() {
        composefs_storage::userns::init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os(CHILD).is_none() {
        let selected = selected_by(&args);
        if args.iter().any(|a| a == "--list") {
            if selected {
                println!("rootless_lib: test");
            }
            return;
        }
        if !selected {
            println!("\nrunning 0 tests\n");
            println!(
                "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out\n"
            );
            return;
        }
        println!("\nrunning 1 test");
    }
    if std::env::var_os(CHILD).is_some() {
        if std::env::var_os(NO_INIT).is_some() {
            without_helper();
        } else {
            as_user();
        }
        return;
    }
    as_root();
    println!("test rootless_lib ... ok\n");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n");
}

/// Whether libtest's arguments select the one test of this binary, `rootless_lib`: options
/// that take a value (`--test-threads N`, `--skip F`, `--format F`, ...) consume it; other
/// positional arguments are name filters (substrings, or whole names with `--exact`); none
/// selects everything; `--ignored` selects only ignored tests (this one is not).
fn selected_by(args: &[String]) -> bool {
    const NAME: &str = "rootless_lib";
    const WITH_VALUE: [&str; 6] = [
        "--test-threads",
        "--format",
        "--color",
        "--logfile",
        "--shuffle-seed",
        "-Z",
    ];
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let (mut exact, mut ignored_only) = (false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--exact" => exact = true,
            "--ignored" => ignored_only = true,
            "--skip" => skips.extend(it.next().cloned()),
            _ if a.starts_with("--skip=") => skips.push(a["--skip=".len()..].to_string()),
            _ if WITH_VALUE.contains(&a.as_str()) => {
                it.next();
            }
            _ if a.starts_with('-') => {}
            _ => filters.push(a.clone()),
        }
    }
    let matches = |f: &String| {
        if exact {
            f == NAME
        } else {
            NAME.contains(f.as_str())
        }
    };
    !ignored_only
        && (filters.is_empty() || filters.iter().any(matches))
        && !skips.iter().any(matches)
}

/// The program a rootless user runs: prints one line per finding.
fn as_user() {
    let storage = Storage::discover().expect("discover the rootless store");
    assert!(storage.config().rootless);
    for image in storage.list_images().expect("list images") {
        for layer in image.layers().expect("layers") {
            let mut h = Hasher(Sha256::new());
            layer
                .export(&mut h, &ExportOptions::new(Verify::Digest))
                .unwrap_or_else(|e| panic!("export {}: {e}", layer.id()));
            println!(
                "layer {} sha256:{}",
                layer.id(),
                hex::encode(h.0.finalize())
            );
        }
        let names = image.names().join(",");
        let rootfs = image.rootfs().expect("rootfs");
        let mut n = 0;
        for e in rootfs.walk() {
            let e = e.unwrap_or_else(|e| panic!("walk {names}: {e}"));
            n += 1;
            if e.metadata.kind == composefs_storage::rootfs::FileKind::Regular {
                let mut f = rootfs
                    .open(&e.path)
                    .unwrap_or_else(|err| panic!("open {}: {err}", e.path.display()));
                let mut content = Vec::new();
                f.read_to_end(&mut content).unwrap();
                assert_eq!(
                    content.len() as u64,
                    e.metadata.size,
                    "{}",
                    e.path.display()
                );
            }
        }
        println!("walked {names} {n}");
        if names.contains("localhost/rl") {
            let mut s = String::new();
            rootfs
                .open("/home/u/secret")
                .expect("open a 0600 file of container user 1000")
                .read_to_string(&mut s)
                .unwrap();
            println!("secret {s:?}");
            let md = rootfs.stat("/home/u/secret").unwrap();
            println!("owner {}:{}", md.uid, md.gid);
        }
    }
}

/// Without `init()`, a file of a container user is a permission error.
fn without_helper() {
    let storage = Storage::discover().expect("discover the rootless store");
    let image = storage.find_image("localhost/rl").unwrap();
    let rootfs = image.rootfs().unwrap();
    match rootfs.open("/home/u/secret") {
        Ok(_) => println!("opened without the helper"),
        Err(e) => println!("denied: {e}"),
    }
}

struct Hasher(Sha256);

impl std::io::Write for Hasher {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn as_root() {
    let store = RootlessStore::new("cst-rlib");
    let me = store.install(&std::env::current_exe().unwrap(), "rootless_lib");
    let out = store
        .as_user("env")
        .arg(format!("{CHILD}=1"))
        .arg(&me)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "as the user:\n{stdout}\n{stderr}");
    // Every layer exported, with the diff-digest its record has.
    let records = store.layer_records();
    assert_eq!(records.len(), 3, "{records:?}");
    for (id, digest) in &records {
        assert!(
            stdout.lines().any(|l| l == format!("layer {id} {digest}")),
            "layer {id} ({digest}) not exported as it should be:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("secret \"the user's secret\\n\""),
        "{stdout}"
    );
    assert!(stdout.contains("owner 1000:1000"), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("walked ")).count(),
        2,
        "{stdout}"
    );
    // Those files did need the helper: the same program without `init()` is refused them.
    let out = store
        .as_user("env")
        .arg(format!("{CHILD}=1"))
        .arg(format!("{NO_INIT}=1"))
        .arg(&me)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("denied: ") && stdout.contains("Permission denied"),
        "{stdout}"
    );
}
