//! `cstorage unpack`, `cp` and `image export --format rootfs-tar`, compared with what
//! `umoci unpack`, `podman cp` and Python's tarfile make of the same images; hostile stores
//! (nothing written outside the target); failures (ENOSPC, read-only target, corrupted layer
//! file, SIGKILL) leaving nothing half-done behind silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use testutil::fixtures::{ROOTFS_TAGS, Rootfs, rootfs};
use testutil::{TestStore, run};

fn fx() -> &'static Rootfs {
    static F: OnceLock<Rootfs> = OnceLock::new();
    F.get_or_init(|| rootfs(&testutil::fixture_dir(&std::env::temp_dir(), "cst-un")))
}

fn stores() -> [(&'static str, &'static TestStore); 2] {
    let fx = fx();
    [("native", &fx.native), ("fuse", &fx.fuse)]
}

fn cst(store: &TestStore, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cstorage"))
        .args(store.cstorage_args())
        .args(args)
        .output()
        .unwrap()
}

fn ok(store: &TestStore, args: &[&str]) -> Output {
    let o = cst(store, args);
    assert!(
        o.status.success(),
        "cstorage {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Everything about a tree that `umoci unpack` defines, as JSON from Python (so that the
/// reading is independent of our code): path → type, mode, uid, gid, size, mtime in
/// nanoseconds, symlink target, device numbers, xattrs (hex), sha256 of regular files; and
/// the hard-link groups (paths sharing an inode). The root directory itself is left out.
const SNAPSHOT_PY: &str = r#"
import hashlib, json, os, stat, sys
root = sys.argv[1]
out = {}
inodes = {}
for dp, dns, fns in os.walk(root):
    for n in dns + fns:
        p = os.path.join(dp, n)
        rel = "/" + os.path.relpath(p, root)
        st = os.lstat(p)
        m = st.st_mode
        t = {stat.S_IFREG: "-", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c",
             stat.S_IFBLK: "b", stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}[stat.S_IFMT(m)]
        e = {"type": t, "mode": "%04o" % stat.S_IMODE(m), "uid": st.st_uid, "gid": st.st_gid,
             "mtime_ns": st.st_mtime_ns}
        if t in "-l":
            e["size"] = st.st_size
        if t == "l":
            e["target"] = os.readlink(p)
        if t in "cb":
            e["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
        if t == "-":
            with open(p, "rb") as f:
                e["sha256"] = hashlib.sha256(f.read()).hexdigest()
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        try:
            xs = os.listxattr(p, follow_symlinks=False)
        except OSError:
            xs = []
        e["xattrs"] = {k: os.getxattr(p, k, follow_symlinks=False).hex() for k in sorted(xs)
                       if k != "security.selinux"}
        out[rel] = e
groups = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
json.dump({"entries": out, "links": groups}, sys.stdout, sort_keys=True)
"#;

fn snapshot(root: &Path) -> Value {
    let o = run(Command::new("python3").arg("-c").arg(SNAPSHOT_PY).arg(root));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Compares two snapshots entry by entry, printing every difference before failing.
fn assert_same_tree(what: &str, ours: &Value, theirs: &Value) {
    let a = ours["entries"].as_object().unwrap();
    let b = theirs["entries"].as_object().unwrap();
    let ka: BTreeSet<&String> = a.keys().collect();
    let kb: BTreeSet<&String> = b.keys().collect();
    let mut diffs = Vec::new();
    for k in ka.symmetric_difference(&kb) {
        diffs.push(format!(
            "{k}: only in {}",
            if a.contains_key(*k) { "ours" } else { "theirs" }
        ));
    }
    for k in ka.intersection(&kb) {
        if a[*k] != b[*k] {
            diffs.push(format!("{k}: ours {} theirs {}", a[*k], b[*k]));
        }
    }
    if ours["links"] != theirs["links"] {
        diffs.push(format!(
            "hard links: ours {} theirs {}",
            ours["links"], theirs["links"]
        ));
    }
    assert!(diffs.is_empty(), "{what}:\n{}", diffs.join("\n"));
    assert!(a.len() > 3, "{what}: a tree was compared");
}

/// `unpack` of every image of the fixture, from both stores, equals `umoci unpack` of the
/// same OCI layout: names, types, modes, owners, sizes, nanosecond mtimes (directories
/// too), symlink targets, devices, xattrs, hard-link groups and every file's sha256.
#[test]
fn unpack_matches_umoci() {
    let fx = fx();
    let tmp = tempfile::tempdir().unwrap();
    for (name, store) in stores() {
        for tag in ROOTFS_TAGS {
            let want = snapshot(&fx.umoci[tag]);
            for jobs in ["1", "4"] {
                let dir = tmp.path().join(format!("{name}-{tag}-{jobs}"));
                ok(
                    store,
                    &[
                        "unpack",
                        "--jobs",
                        jobs,
                        &format!("localhost/{tag}:latest"),
                        dir.to_str().unwrap(),
                    ],
                );
                assert_same_tree(&format!("{name} {tag} jobs {jobs}"), &snapshot(&dir), &want);
            }
        }
    }
}

/// Into an existing empty directory (here a symlink to one, which is followed) works; into
/// a non-empty one is refused without touching it.
#[test]
fn unpack_into_existing_directories() {
    let fx = fx();
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
    ok(
        &fx.native,
        &["unpack", "three", tmp.path().join("link").to_str().unwrap()],
    );
    assert_same_tree("via symlink", &snapshot(&real), &snapshot(&fx.umoci["three"]));
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("mine"), b"keep").unwrap();
    let o = cst(&fx.native, &["unpack", "three", full.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);
}
