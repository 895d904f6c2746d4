//! `cstorage unpack`, `cp` and `image export --format rootfs-tar`, compared with what
//! `umoci unpack`, `podman cp` and Python's tarfile make of the same images; hostile stores
//! (nothing written outside the target); failures (ENOSPC, read-only target, corrupted layer
//! file, SIGKILL) leaving nothing half-done behind silently.

use std::collections::BTreeSet;
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
    assert!(!a.is_empty(), "{what}: something was compared");
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
    assert_same_tree(
        "via symlink",
        &snapshot(&real),
        &snapshot(&fx.umoci["three"]),
    );
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("mine"), b"keep").unwrap();
    let o = cst(&fx.native, &["unpack", "three", full.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);
}

/// Drops the mtimes of `paths` (directories the test made, whose times change as things are
/// written into them) from a snapshot.
fn without_mtimes(mut v: Value, paths: &[&str]) -> Value {
    for p in paths {
        if let Some(e) = v["entries"].get_mut(*p) {
            e.as_object_mut().unwrap().remove("mtime_ns");
        }
    }
    v
}

/// Created containers of the fixture image `three` (one per store used).
fn container(store: &TestStore) -> String {
    let o = run(store
        .podman()
        .args(["create", "localhost/three:latest", "/bin/true"]));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// `cp` against `podman cp` from a created container of the same image: files, a symlink
/// chain (followed, as podman does), directories into missing and existing destinations,
/// `DIR/.` (contents), trailing slashes, and the errors (a directory onto a file, a missing
/// directory named with `/`). Same outcome, same tree; owners are the caller's in both.
#[test]
fn cp_matches_podman_cp() {
    let fx = fx();
    let store = &fx.native;
    let ctr = container(store);
    let tmp = tempfile::tempdir().unwrap();
    // (source path, destination relative to the case directory); each case directory holds
    // an existing file `f` and an existing empty directory `d`.
    let cases = [
        ("/etc/passwd", "new"),
        ("/etc/passwd", "f"),
        ("/etc/passwd", "d"),
        ("/etc/passwd", "d/"),
        ("/etc/passwd", "missing/"),
        ("/etc/setuid", "new"),
        ("/srv", "new"),
        ("/srv", "d"),
        ("/srv", "d/"),
        ("/srv/.", "d"),
        ("/srv/", "new"),
        ("/srv", "f"),
        ("/usr/bin/d", "new"),
        ("/usr/bin/d", "d"),
        ("/usr", "new"),
        ("/home/user", "d"),
        ("/etc/gone", "new"),
    ];
    let mut compared = 0;
    for (i, (src, dest)) in cases.iter().enumerate() {
        let mut outcome = Vec::new();
        let mut trees = Vec::new();
        for who in ["podman", "cstorage"] {
            let case = tmp.path().join(format!("{i}-{who}"));
            std::fs::create_dir(&case).unwrap();
            std::fs::write(case.join("f"), b"old\n").unwrap();
            std::fs::File::options()
                .write(true)
                .open(case.join("f"))
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000))
                .unwrap();
            std::fs::create_dir(case.join("d")).unwrap();
            let dest_path = format!("{}/{dest}", case.display());
            let o = if who == "podman" {
                store
                    .podman()
                    .args(["cp", &format!("{ctr}:{src}"), &dest_path])
                    .output()
                    .unwrap()
            } else {
                cst(store, &["cp", &format!("three:{src}"), &dest_path])
            };
            if who == "cstorage" && !o.status.success() {
                let err = String::from_utf8_lossy(&o.stderr).to_string();
                assert_eq!(err.lines().count(), 1, "{src} {dest}: {err}");
            }
            outcome.push(o.status.success());
            trees.push(without_mtimes(snapshot(&case), &["/d"]));
        }
        assert_eq!(outcome[0], outcome[1], "{src} -> {dest}: success differs");
        assert_same_tree(&format!("cp {src} {dest}"), &trees[1], &trees[0]);
        compared += usize::from(outcome[0]);
    }
    assert!(compared >= 10, "most cases succeed ({compared})");
}

/// The tar's entries as Python's tarfile reads them: name → type, mode, uid, gid, size,
/// mtime, link target, device numbers, xattrs, sha256; hard-link groups.
const TAR_PY: &str = r#"
import hashlib, json, sys, tarfile
t = tarfile.open(fileobj=sys.stdin.buffer, mode="r|")
out = {}
links = {}
owners = len(sys.argv) > 1
for m in t:
    name = "/" + m.name.rstrip("/")
    ty = {tarfile.REGTYPE: "-", tarfile.AREGTYPE: "-", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l",
          tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b", tarfile.FIFOTYPE: "p", tarfile.LNKTYPE: "h"}[m.type]
    if ty == "h":
        target = "/" + m.linkname
        links.setdefault(target, [target]).append(name)
        e = dict(out[target])
    else:
        e = {"type": ty, "mode": "%04o" % m.mode, "mtime_ns": int(m.mtime) * 10**9}
        if owners:
            e["uid"] = m.uid
            e["gid"] = m.gid
        if ty in "-l":
            e["size"] = m.size if ty == "-" else len(m.linkname)
        if ty == "l":
            e["target"] = m.linkname
        if ty in "cb":
            e["rdev"] = [m.devmajor, m.devminor]
        if ty == "-":
            e["sha256"] = hashlib.sha256(t.extractfile(m).read()).hexdigest()
        e["xattrs"] = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape").hex()
                       for k, v in sorted(m.pax_headers.items()) if k.startswith("SCHILY.xattr.")}
    out[name] = e
json.dump({"entries": out, "links": sorted(sorted(g) for g in links.values())}, sys.stdout, sort_keys=True)
"#;

fn read_tar(tar: &[u8], owners: bool) -> Value {
    use std::io::Write;
    let mut c = Command::new("python3");
    c.arg("-c").arg(TAR_PY);
    if owners {
        c.arg("owners");
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(tar).unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A snapshot with mtimes in whole seconds and, optionally, without owners.
fn coarse(mut v: Value, owners: bool) -> Value {
    for (_, e) in v["entries"].as_object_mut().unwrap() {
        let o = e.as_object_mut().unwrap();
        let t = o["mtime_ns"].as_i64().unwrap();
        o.insert(
            "mtime_ns".into(),
            Value::from(t.div_euclid(1_000_000_000) * 1_000_000_000),
        );
        if !owners {
            o.remove("uid");
            o.remove("gid");
        }
    }
    v
}

/// `image export --format rootfs-tar`, to a file and to a pipe (`-o -`), is the same bytes
/// twice, and Python's tarfile reads from it exactly the tree `unpack` writes (times in
/// whole seconds, as the tar keeps them), hard links as links.
#[test]
fn rootfs_tar_equals_the_unpacked_tree() {
    let fx = fx();
    let tmp = tempfile::tempdir().unwrap();
    for (name, store) in stores() {
        for tag in ROOTFS_TAGS {
            let image = format!("localhost/{tag}:latest");
            let file = tmp.path().join(format!("{name}-{tag}.tar"));
            ok(
                store,
                &[
                    "image",
                    "export",
                    &image,
                    "--format",
                    "rootfs-tar",
                    "-o",
                    file.to_str().unwrap(),
                ],
            );
            let bytes = std::fs::read(&file).unwrap();
            let piped = ok(
                store,
                &[
                    "image",
                    "export",
                    &image,
                    "--format",
                    "rootfs-tar",
                    "-o",
                    "-",
                ],
            );
            assert_eq!(piped.stdout, bytes, "{name} {tag}: deterministic");
            let dir = tmp.path().join(format!("{name}-{tag}"));
            ok(store, &["unpack", &image, dir.to_str().unwrap()]);
            assert_same_tree(
                &format!("{name} {tag} rootfs-tar"),
                &read_tar(&bytes, true),
                &coarse(snapshot(&dir), true),
            );
        }
    }
    // Nothing but the outputs in the directory (no temporary files).
    let names: BTreeSet<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar"))
        .collect();
    assert_eq!(names.len(), 6);
    // A terminal is refused; so is more than one image.
    let o = cst(
        &fx.native,
        &[
            "image",
            "export",
            "two",
            "three",
            "--format",
            "rootfs-tar",
            "-o",
            "-",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
}

/// `cp IMAGE:PATH -` writes a tar of PATH as `podman cp CTR:PATH -` does: the same names,
/// types, modes, sizes, times, link targets and contents. (Owners differ on purpose:
/// podman writes them mapped to the caller, cstorage writes the image's.)
#[test]
fn cp_to_stdout_matches_podman() {
    let fx = fx();
    let store = &fx.native;
    let ctr = container(store);
    for src in ["/srv", "/srv/.", "/etc/passwd", "/usr"] {
        let theirs = run(store.podman().args(["cp", &format!("{ctr}:{src}"), "-"])).stdout;
        let ours = ok(store, &["cp", &format!("three:{src}"), "-"]).stdout;
        assert_same_tree(
            &format!("cp {src} -"),
            &read_tar(&ours, false),
            &read_tar(&theirs, false),
        );
    }
}
