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
            let mut tree = without_mtimes(snapshot(&case), &["/d"]);
            if *dest == "f" && o.status.success() {
                // One difference on purpose: `podman cp` unlinks an existing file and
                // creates it anew with the image's mode; cstorage replaces it by the output
                // rules, keeping its mode (here the test's 0644).
                let f = tree["entries"]["/f"].as_object_mut().unwrap();
                let mode = f.remove("mode").unwrap();
                if who == "cstorage" {
                    assert_eq!(mode, "0644", "{src}: the existing file's mode is kept");
                }
            }
            trees.push(tree);
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

/// Layers of the extra images: `xa` (extended attributes on files and a directory, a
/// set-user-ID file with a capability, hard links), `big` (a 1 MiB file) and `many` (2000
/// files, for killing an unpack half-way).
const EXTRA_PY: &str = r#"
import io, sys, tarfile
def tar(entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data, pax in entries:
            ti = tarfile.TarInfo(name); ti.mtime = 1700000000; ti.mode = 0o755 if kind == "d" else 0o644
            ti.pax_headers = pax
            if kind == "d": ti.type = tarfile.DIRTYPE; t.addfile(ti)
            elif kind == "h": ti.type = tarfile.LNKTYPE; ti.linkname = data.decode(); t.addfile(ti)
            else: ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    return b.getvalue()
cap = "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
layers = [
  tar([("d", "d", b"", {"SCHILY.xattr.user.dir": "on a dir"}),
       ("d/f", "f", b"xattrs\n", {"SCHILY.xattr.user.a": "1", "SCHILY.xattr.user.b": "two"}),
       ("d/ping", "f", b"\x7fELF", {"SCHILY.xattr.security.capability": cap}),
       ("d/h", "h", b"d/f", {}),
       ("plain", "f", b"no xattrs\n", {})]),
  tar([("big", "d", b"", {}), ("big/file", "f", bytes(range(256)) * 4096, {})]),
  tar([("m", "d", b"", {})] + [("m/%04d" % i, "f", b"%d\n" % i * 200, {}) for i in range(2000)]),
]
for l in layers:
    sys.stdout.buffer.write(len(l).to_bytes(8, "little") + l)
"#;

/// A native store with the extra images (`localhost/xa`, `big`, `many`), and umoci's
/// unpacking of `xa`.
struct Extra {
    dir: PathBuf,
    layout: testutil::OciLayout,
    store: TestStore,
    umoci_xa: PathBuf,
}

fn extra_layers() -> Vec<Vec<u8>> {
    let raw = testutil::python_tar(EXTRA_PY);
    let mut tars = Vec::new();
    let mut rest = &raw[..];
    while !rest.is_empty() {
        let n = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        tars.push(rest[8..8 + n].to_vec());
        rest = &rest[8 + n..];
    }
    tars
}

fn extra() -> &'static Extra {
    static E: OnceLock<Extra> = OnceLock::new();
    E.get_or_init(|| {
        let dir = testutil::fixture_dir(&std::env::temp_dir(), "cst-ux");
        let tars = extra_layers();
        let mut layout = testutil::OciLayout::create(&dir.join("layout"));
        for (i, tag) in ["xa", "big", "many"].iter().enumerate() {
            layout.add_image(
                tag,
                std::slice::from_ref(&tars[i]),
                testutil::Blob::Gzip,
                testutil::go_arch(),
            );
        }
        let store = TestStore::at(&dir.join("s"), &[]);
        store.copy_in(&layout.source("xa"), "localhost/xa:latest", &[]);
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:xa", layout.dir.display()))
            .arg(dir.join("bundle-xa")));
        Extra {
            umoci_xa: dir.join("bundle-xa/rootfs"),
            dir,
            layout,
            store,
        }
    })
}

/// A fresh store holding one extra image (for tests that damage it).
fn fresh_store(tag: &str) -> (tempfile::TempDir, TestStore) {
    let e = extra();
    let tmp = tempfile::Builder::new()
        .prefix("cst-uf-")
        .tempdir_in(&e.dir)
        .unwrap();
    let store = TestStore::at(tmp.path(), &[]);
    store.copy_in(
        &e.layout.source(tag),
        &format!("localhost/{tag}:latest"),
        &[],
    );
    (tmp, store)
}

/// The diff directory of the top layer of the store's only image.
fn top_diff(store: &TestStore) -> PathBuf {
    let images = store.go_images();
    assert_eq!(images.len(), 1);
    let top = images[0]["layer"].as_str().unwrap();
    store.root.join("overlay").join(top).join("diff")
}

/// Extended attributes (user.*, security.capability on a file, user.* on a directory) and
/// hard links come out as umoci writes them.
#[test]
fn xattrs_and_hard_links_match_umoci() {
    let e = extra();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("xa");
    ok(&e.store, &["unpack", "xa", dir.to_str().unwrap()]);
    let ours = snapshot(&dir);
    assert_same_tree("xa", &ours, &snapshot(&e.umoci_xa));
    assert_eq!(ours["entries"]["/d/f"]["xattrs"]["user.b"], "74776f");
    assert!(ours["entries"]["/d/ping"]["xattrs"]["security.capability"].is_string());
    assert_eq!(ours["links"][0], serde_json::json!(["/d/f", "/d/h"]));
}

/// Every path under `dir` with its type, mode, size, link count, mtime and content, for
/// "nothing changed here".
fn fingerprint(dir: &Path) -> Value {
    let v = snapshot(dir);
    // Link counts too: a hard link made to a canary file would raise its count.
    let o = run(Command::new("find")
        .arg(dir)
        .args(["-printf", "%p %n %i\n"]));
    serde_json::json!([v, String::from_utf8(o.stdout).unwrap()])
}

/// Hostile stores: layer directories changed on disk after the store was written, so that a
/// tar-replaying or name-following writer would write outside the target. A canary
/// directory beside the target stays exactly as it was, and the target holds what the
/// merged view says.
///
/// * the lower layer's `d` replaced by a symlink to the canary (absolute), while the upper
///   layer has a directory `d` with files: the merged `d` is the upper directory;
/// * symlinks in the top layer to the canary (absolute, `../` climbing): written as
///   symlinks, never followed;
/// * a file hard-linked to a canary file from inside the layer: copied, not linked;
/// * whiteout files for `..` and `.` (`.wh...`, `.wh..`): ignored.
#[test]
fn hostile_stores_write_nothing_outside() {
    let e = extra();
    let (tmp, store) = fresh_store("xa");
    // A second layer over xa: python tar with a directory `d` holding a file.
    let upper = testutil::python_tar(
        "import tarfile,io,sys\nt=tarfile.open(fileobj=sys.stdout.buffer,mode='w|',format=tarfile.PAX_FORMAT)\nfor n in ['up/','up/f']:\n i=tarfile.TarInfo(n.rstrip('/')); i.mtime=1700000000\n if n.endswith('/'): i.type=tarfile.DIRTYPE; i.mode=0o755; t.addfile(i)\n else: d=b'upper\\n'; i.size=len(d); t.addfile(i,io.BytesIO(d))\nt.close()",
    );
    let mut layout = testutil::OciLayout::create(&tmp.path().join("layout"));
    layout.add_image(
        "two",
        &[extra_layers().remove(0), upper],
        testutil::Blob::Gzip,
        testutil::go_arch(),
    );
    store.copy_in(&layout.source("two"), "localhost/two:latest", &[]);
    let two: Vec<Value> = store
        .go_images()
        .into_iter()
        .filter(|i| i["names"].to_string().contains("two"))
        .collect();
    let top = two[0]["layer"].as_str().unwrap().to_string();
    let top_dir = store.root.join("overlay").join(&top).join("diff");
    let layers = store.go_layers();
    let lower = layers.iter().find(|l| l["id"] != top.as_str()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let lower_dir = store.root.join("overlay").join(&lower).join("diff");

    let case = tmp.path().join("case");
    let canary = case.join("canary");
    testutil::make_tree(
        &canary,
        &[("passwd", b"canary\n"), ("f", b"canary f\n"), ("sub/", b"")],
    );
    // The lower `d` becomes a symlink to the canary; the upper layer gets a `d` directory
    // with a file named like one of the canary's.
    std::fs::remove_dir_all(lower_dir.join("d")).unwrap();
    std::os::unix::fs::symlink(&canary, lower_dir.join("d")).unwrap();
    std::fs::create_dir(top_dir.join("d")).unwrap();
    std::fs::write(top_dir.join("d/passwd"), b"image passwd\n").unwrap();
    std::os::unix::fs::symlink(&canary, top_dir.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../canary", top_dir.join("up/rel")).unwrap();
    std::os::unix::fs::symlink("/", top_dir.join("root")).unwrap();
    std::fs::hard_link(canary.join("f"), top_dir.join("up/hl")).unwrap();
    std::fs::write(top_dir.join(".wh..."), b"").unwrap();
    std::fs::write(top_dir.join("up/.wh.."), b"").unwrap();
    let before = fingerprint(&canary);

    let target = case.join("out");
    ok(&store, &["unpack", "two", target.to_str().unwrap()]);
    assert_eq!(fingerprint(&canary), before, "the canary is untouched");
    let got = snapshot(&target);
    let ent = &got["entries"];
    assert_eq!(ent["/d"]["type"], "d");
    assert_eq!(
        std::fs::read(target.join("d/passwd")).unwrap(),
        b"image passwd\n"
    );
    assert!(ent.get("/d/f").is_none(), "the lower d is hidden");
    assert_eq!(ent["/abs"]["type"], "l");
    assert_eq!(ent["/up/rel"]["type"], "l");
    assert_eq!(ent["/root"]["target"], "/");
    assert_eq!(ent["/up/hl"]["type"], "-");
    assert_eq!(std::fs::read(target.join("up/hl")).unwrap(), b"canary f\n");
    assert!(ent.get("/up/.wh..").is_none() && ent.get("/.wh...").is_none());
    // Only `canary` and `out` beside each other.
    let names: BTreeSet<String> = std::fs::read_dir(&case)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["canary".to_string(), "out".to_string()])
    );

    // The same through cp (into an existing directory, overwriting) and rootfs-tar.
    let cp_dest = case.join("cpdest");
    std::fs::create_dir(&cp_dest).unwrap();
    ok(&store, &["cp", "two:/.", cp_dest.to_str().unwrap()]);
    ok(&store, &["cp", "two:/.", cp_dest.to_str().unwrap()]);
    let tar = ok(
        &store,
        &[
            "image",
            "export",
            "two",
            "--format",
            "rootfs-tar",
            "-o",
            "-",
        ],
    )
    .stdout;
    assert!(read_tar(&tar, true)["entries"]["/abs"]["type"] == "l");
    assert_eq!(fingerprint(&canary), before, "the canary is untouched");
    let _ = e;
}

fn tmpfs(dir: &Path, opts: &str) {
    std::fs::create_dir_all(dir).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(dir));
}

fn umount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

fn one_line_error(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "fails");
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

/// ENOSPC on a small tmpfs: one error naming the file; a new target directory is removed,
/// an existing one is reported as partial. A read-only target: one clear error.
#[test]
fn no_space_and_read_only_targets() {
    let (tmp, store) = fresh_store("big");
    let small = tmp.path().join("small");
    tmpfs(&small, "size=256k");
    // Unmounted even if an assertion fails.
    let small_mount = Mounted(small.clone());
    let o = cst(
        &store,
        &["unpack", "big", small.join("new").to_str().unwrap()],
    );
    let err = one_line_error(&o);
    assert!(
        err.contains("No space left") && err.contains("big/file") && err.contains("removed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&small).unwrap().count(),
        0,
        "nothing left"
    );
    std::fs::create_dir(small.join("existing")).unwrap();
    let o = cst(
        &store,
        &["unpack", "big", small.join("existing").to_str().unwrap()],
    );
    let err = one_line_error(&o);
    assert!(
        err.contains("No space left") && err.contains("partial"),
        "{err}"
    );
    // `cp` of one file onto an existing one that does not fit: the old file stays as it
    // was, and no temporary file is left beside it.
    run(Command::new("rm").arg("-rf").arg(small.join("existing")));
    let keep = small.join("keep");
    std::fs::write(&keep, b"old\n").unwrap();
    let o = cst(&store, &["cp", "big:/big/file", keep.to_str().unwrap()]);
    let err = one_line_error(&o);
    assert!(
        err.contains("No space left") && err.contains(keep.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(std::fs::read(&keep).unwrap(), b"old\n");
    assert_eq!(
        std::fs::read_dir(&small).unwrap().count(),
        1,
        "only the old file"
    );
    drop(small_mount);

    let ro = tmp.path().join("ro");
    tmpfs(&ro, "size=1m");
    let ro_mount = Mounted(ro.clone());
    std::fs::create_dir(ro.join("empty")).unwrap();
    run(Command::new("mount").args(["-o", "remount,ro"]).arg(&ro));
    for target in [ro.join("new"), ro.join("empty")] {
        let o = cst(&store, &["unpack", "big", target.to_str().unwrap()]);
        let err = one_line_error(&o);
        assert!(err.contains("Read-only file system"), "{err}");
    }
    assert_eq!(std::fs::read_dir(ro.join("empty")).unwrap().count(), 0);
    drop(ro_mount);
}

/// A layer file whose bytes changed on disk (same size): the CRC-64 recorded in the
/// tar-split does not match, the error says so and names the file; the new target is
/// removed. `--no-verify` copies it as it is.
#[test]
fn corrupted_layer_file_is_a_crc_error() {
    let (tmp, store) = fresh_store("big");
    let file = top_diff(&store).join("big/file");
    let mut b = std::fs::read(&file).unwrap();
    b[500_000] ^= 0xff;
    std::fs::write(&file, &b).unwrap();
    let target = tmp.path().join("out");
    let o = cst(&store, &["unpack", "big", target.to_str().unwrap()]);
    let err = one_line_error(&o);
    assert!(err.contains("CRC") && err.contains("big/file"), "{err}");
    assert!(!target.exists(), "removed");
    // To a pipe, what was written is followed by no end-of-archive marker, and the exit
    // status and message say why.
    let o = cst(
        &store,
        &[
            "image",
            "export",
            "big",
            "--format",
            "rootfs-tar",
            "-o",
            "-",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("CRC") && err.lines().count() == 1, "{err}");
    let out = target.with_extension("tar");
    let o = cst(
        &store,
        &[
            "image",
            "export",
            "big",
            "--format",
            "rootfs-tar",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let err = one_line_error(&o);
    assert!(err.contains("CRC"), "{err}");
    assert_eq!(
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("tar"))
            .count(),
        0,
        "no file, no temporary file"
    );
    // `cp` of the damaged file onto an existing file: the same error, the old file (content,
    // mode) untouched, nothing beside it.
    let cpdir = tmp.path().join("cp");
    std::fs::create_dir(&cpdir).unwrap();
    let keep = cpdir.join("keep");
    std::fs::write(&keep, b"old\n").unwrap();
    std::fs::set_permissions(&keep, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let o = cst(&store, &["cp", "big:/big/file", keep.to_str().unwrap()]);
    let err = one_line_error(&o);
    assert!(err.contains("CRC") && err.contains("big/file"), "{err}");
    assert_eq!(std::fs::read(&keep).unwrap(), b"old\n");
    assert_eq!(mode_of(&keep), 0o640);
    assert_eq!(
        std::fs::read_dir(&cpdir).unwrap().count(),
        1,
        "only the old file"
    );
    ok(
        &store,
        &["unpack", "--no-verify", "big", target.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(target.join("big/file")).unwrap(), b);
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// `cp IMAGE:FILE DEST` onto an existing file follows the output rules, not `podman cp`'s
/// unlink-and-create: the file is replaced atomically and keeps its mode and owner (it
/// gets the image's content and modification time, as umoci writes them); a symlink to it
/// is followed (and stays a symlink); a FIFO receives the bytes and stays a FIFO; a new
/// file gets the image's mode. Nothing is left beside the destination.
#[test]
fn cp_onto_a_file_follows_the_output_rules() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let fx = fx();
    let store = &fx.native;
    let theirs = fx.umoci["three"].join("etc/passwd");
    let want = std::fs::read(&theirs).unwrap();
    let want_mtime = std::fs::metadata(&theirs).unwrap().mtime();
    assert_eq!(
        mode_of(&theirs),
        0o600,
        "the fixture's mode differs from the file's"
    );
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let f = d.join("f");
    std::fs::write(&f, b"old contents, longer than the new ones\n").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let ino = std::fs::metadata(&f).unwrap().ino();
    ok(store, &["cp", "three:/etc/passwd", f.to_str().unwrap()]);
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), want);
    assert_eq!(md.mode() & 0o7777, 0o664, "mode kept");
    assert_eq!((md.uid(), md.gid()), (1234, 5678), "owner kept");
    assert_eq!(md.mtime(), want_mtime, "the image's time");
    assert_ne!(md.ino(), ino, "replaced by rename, not written in place");
    // Through a symlink.
    std::fs::write(&f, b"old\n").unwrap();
    std::os::unix::fs::symlink("f", d.join("link")).unwrap();
    ok(
        store,
        &["cp", "three:/etc/passwd", d.join("link").to_str().unwrap()],
    );
    assert!(
        std::fs::symlink_metadata(d.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&f).unwrap(), want);
    assert_eq!(mode_of(&f), 0o664);
    // Into an existing directory, onto the file of that name there.
    std::fs::create_dir(d.join("dir")).unwrap();
    std::fs::write(d.join("dir/passwd"), b"old\n").unwrap();
    std::fs::set_permissions(
        d.join("dir/passwd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    ok(
        store,
        &["cp", "three:/etc/passwd", d.join("dir").to_str().unwrap()],
    );
    assert_eq!(std::fs::read(d.join("dir/passwd")).unwrap(), want);
    assert_eq!(mode_of(&d.join("dir/passwd")), 0o640);
    // A new file: the image's mode and time.
    ok(
        store,
        &["cp", "three:/etc/passwd", d.join("new").to_str().unwrap()],
    );
    assert_eq!(std::fs::read(d.join("new")).unwrap(), want);
    assert_eq!(mode_of(&d.join("new")), 0o600);
    assert_eq!(
        std::fs::metadata(d.join("new")).unwrap().mtime(),
        want_mtime
    );
    // A FIFO is written into.
    let fifo = d.join("fifo");
    run(Command::new("mkfifo").arg(&fifo));
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    ok(store, &["cp", "three:/etc/passwd", fifo.to_str().unwrap()]);
    assert_eq!(reader.join().unwrap(), want);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["dir", "f", "fifo", "link", "new"],
        "no temporary files"
    );
}

/// An unpack killed with SIGKILL half-way leaves the target (partial, as it was being
/// written) and nothing else: no temporary file beside it, nothing new in the store.
#[test]
fn sigkill_leaves_no_stray_files() {
    let (tmp, store) = fresh_store("many");
    let listing = |d: &Path| {
        String::from_utf8(run(Command::new("find").arg(d).args(["-printf", "%P %s\n"])).stdout)
            .unwrap()
    };
    let store_before = listing(&store.root);
    let parent = tmp.path().join("parent");
    std::fs::create_dir(&parent).unwrap();
    let target = parent.join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cstorage"))
        .args(store.cstorage_args())
        .args(["unpack", "--jobs", "1", "many"])
        .arg(&target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut killed_mid = false;
    while start.elapsed() < std::time::Duration::from_secs(20) {
        let n = std::fs::read_dir(target.join("m"))
            .map(|r| r.count())
            .unwrap_or(0);
        if n >= 10 {
            let _ = Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status();
            killed_mid = n < 2000;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let _ = child.wait();
    assert!(killed_mid, "the unpack was killed half-way");
    let names: Vec<String> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["out"]);
    assert_eq!(listing(&store.root), store_before, "the store is unchanged");

    // SIGTERM (as SIGINT, SIGHUP): the unpack stops, removes the directory it created and
    // says so.
    let target = parent.join("term");
    let child = Command::new(env!("CARGO_BIN_EXE_cstorage"))
        .args(store.cstorage_args())
        .args(["unpack", "--jobs", "1", "many"])
        .arg(&target)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut signalled = false;
    while start.elapsed() < std::time::Duration::from_secs(20) {
        let n = std::fs::read_dir(target.join("m"))
            .map(|r| r.count())
            .unwrap_or(0);
        if n >= 10 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            signalled = n < 2000;
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let o = child.wait_with_output().unwrap();
    assert!(signalled, "signalled half-way");
    let err = one_line_error(&o);
    assert!(
        err.contains("Interrupted") && err.contains("removed"),
        "{err}"
    );
    assert!(!target.exists());
    assert_eq!(listing(&store.root), store_before, "the store is unchanged");
}

/// As the rootless test user, on the user's own rootless store: `unpack` equals
/// `umoci unpack --rootless` of the same layout (run as the same user): every file owned by
/// the user, the image's owners in `user.rootlesscontainers`, modes (0000 and 0700
/// directories included), times, contents. With `--no-owners`, the same without the
/// attribute. Files the user cannot read outside the user namespace come through the
/// helper.
#[test]
fn rootless_unpack_matches_umoci_rootless() {
    use testutil::rootless::RootlessStore;
    let s = RootlessStore::new("cst-unrl");
    let bin = s.install(Path::new(env!("CARGO_BIN_EXE_cstorage")), "cstorage");
    let work = s.home.join("work");
    run(s.as_user("mkdir").arg(&work));
    run(s
        .as_user("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:rl", s.dir.join("oci").display()))
        .arg(work.join("bundle")));
    let theirs = snapshot(&work.join("bundle/rootfs"));
    let out = run(s
        .as_user(bin.to_str().unwrap())
        .args(["unpack", "localhost/rl"])
        .arg(work.join("ours")));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = snapshot(&work.join("ours"));
    // One difference, ours being right: umoci 0.4 sets the attribute after the mode, so on a
    // regular file without the owner's write bit (`/zero`, mode 0000, owner 1000:1000) the
    // write is refused and umoci drops the owner without a word. We keep it.
    let mut cmp = ours.clone();
    for (path, v) in cmp["entries"].as_object_mut().unwrap() {
        let mode = u32::from_str_radix(v["mode"].as_str().unwrap(), 8).unwrap();
        if v["type"] == "-"
            && mode & 0o200 == 0
            && theirs["entries"][path]["xattrs"]
                .as_object()
                .unwrap()
                .is_empty()
        {
            let x = v["xattrs"].as_object_mut().unwrap();
            assert!(
                x.remove("user.rootlesscontainers").is_some(),
                "{path}: the owner is kept"
            );
        }
    }
    assert_same_tree("rootless", &cmp, &theirs);
    let e = &ours["entries"];
    let uid: u64 = testutil::stdout_of(Command::new("id").args(["-u", testutil::rootless::USER]))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(e["/home/u/secret"]["uid"], uid);
    assert_eq!(
        e["/home/u/secret"]["xattrs"]["user.rootlesscontainers"],
        "08e80710e807"
    );
    // Without owners: no attribute, otherwise the same.
    run(s
        .as_user(bin.to_str().unwrap())
        .args(["unpack", "--no-owners", "localhost/rl"])
        .arg(work.join("plain")));
    let plain = snapshot(&work.join("plain"));
    let mut stripped = ours.clone();
    for (_, v) in stripped["entries"].as_object_mut().unwrap() {
        v["xattrs"]
            .as_object_mut()
            .unwrap()
            .remove("user.rootlesscontainers");
    }
    assert_same_tree("rootless --no-owners", &plain, &stripped);
}

/// As a user who may not make devices (the rootless test user, on a world-readable copy of
/// the fixture's fuse-overlayfs store, whose opaque directories are marked by files: the
/// `trusted.overlay.opaque` attributes of a native store are invisible to non-root): the devices are skipped with one warning naming how many, the FIFO
/// and everything else is written, and the run succeeds. (`umoci unpack --rootless` writes
/// an empty regular file in place of each device instead; a placeholder that looks like a
/// real file is what we avoid.)
#[test]
fn devices_are_skipped_with_one_warning_without_root() {
    use testutil::rootless::USER;
    let fx = fx();
    let tmp = tempfile::Builder::new()
        .prefix("cst-ud-")
        .tempdir()
        .unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(&fx.fuse.root)
        .arg(tmp.path().join("root")));
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(tmp.path()));
    let run_dir = tmp.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    run(Command::new("chown").arg(USER).arg(&run_dir));
    let bin = tmp.path().join("cstorage");
    std::fs::copy(env!("CARGO_BIN_EXE_cstorage"), &bin).unwrap();
    let out = run_dir.join("out");
    let o = Command::new("runuser")
        .args(["-u", USER, "--", "env", "-i", "PATH=/usr/bin:/bin"])
        .arg(format!("HOME={}", run_dir.display()))
        .arg(format!("XDG_RUNTIME_DIR={}", run_dir.display()))
        .arg(&bin)
        .arg("--root")
        .arg(tmp.path().join("root"))
        .arg("--runroot")
        .arg(&run_dir)
        .args(["--storage-opt", "overlay.skip_mount_home=true"])
        .args([
            "--storage-opt",
            "overlay.mount_program=/usr/bin/fuse-overlayfs",
        ])
        .args(["unpack", "three"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "cstorage: warning: skipped 2 device files: only root can make devices\n"
    );
    let dev: BTreeSet<String> = std::fs::read_dir(out.join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dev, BTreeSet::from(["fifo".to_string()]));
    let want = snapshot(&fx.umoci["three"]);
    let got = snapshot(&out);
    let names = |v: &Value| -> BTreeSet<String> {
        v["entries"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !k.starts_with("/dev/") || k.as_str() == "/dev/fifo")
            .cloned()
            .collect()
    };
    assert_eq!(names(&got), names(&want));
}

/// SIGTERM while `cp IMAGE:FILE DEST` is writing the replacement of an existing file (held
/// in its `copy_file_range` by strace's syscall delay injection, so that the temporary file
/// exists when the signal comes): the temporary file is removed, the old file is as it was,
/// and the process dies by the signal (143).
#[test]
fn a_signal_during_cp_leaves_the_old_file_and_no_temporary() {
    use std::os::unix::process::ExitStatusExt;
    testutil::require_tool("strace");
    let fx = fx();
    let tmp = tempfile::tempdir().unwrap();
    let keep = tmp.path().join("keep");
    std::fs::write(&keep, b"old\n").unwrap();
    let child = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "-e", "trace=copy_file_range"])
        .args(["-e", "inject=copy_file_range:delay_enter=5000000"])
        .arg(env!("CARGO_BIN_EXE_cstorage"))
        .args(fx.native.cstorage_args())
        .args(["cp", "--no-verify", "three:/etc/passwd"])
        .arg(&keep)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The temporary file appears (named with the cstorage process's PID) once the copy is
    // under way.
    let started = std::time::Instant::now();
    let tmp_pid = loop {
        let found = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(".keep.cstorage-tmp-"));
        if let Some(n) = found {
            break n
                .trim_start_matches(".keep.cstorage-tmp-")
                .split('-')
                .next()
                .unwrap()
                .parse::<i32>()
                .unwrap();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no temporary file appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    run(Command::new("kill").args(["-TERM", &tmp_pid.to_string()]));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.code() == Some(143) || out.status.signal() == Some(15),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&keep).unwrap(), b"old\n");
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["keep"], "no temporary file left");
}

/// A non-root user reading a root-owned native store cannot read `trusted.overlay.opaque`
/// (the kernel answers ENODATA, as for a directory that is not opaque), so the image's two
/// opaque directories (`/opq` in layer 2, `/newdir` in layer 3) are not applied. `unpack`
/// and `rootfs-tar` say so in one warning naming the store and the first directory; the
/// run still succeeds. Root, who can read the attribute, gets no warning and umoci's tree.
#[test]
fn hidden_opaque_directories_are_warned_about() {
    use testutil::rootless::USER;
    let fx = fx();
    let tmp = tempfile::Builder::new()
        .prefix("cst-uo-")
        .tempdir()
        .unwrap();
    let root = tmp.path().join("root");
    // cp -a as root keeps the trusted.* attributes.
    run(Command::new("cp").arg("-a").arg(&fx.native.root).arg(&root));
    // The fuse-overlayfs store marks the same directories in ways any reader sees.
    let fuse_root = tmp.path().join("fuse");
    run(Command::new("cp")
        .arg("-a")
        .arg(&fx.fuse.root)
        .arg(&fuse_root));
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(tmp.path()));
    let run_dir = tmp.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    run(Command::new("chown").arg(USER).arg(&run_dir));
    let bin = tmp.path().join("cstorage");
    std::fs::copy(env!("CARGO_BIN_EXE_cstorage"), &bin).unwrap();
    let store_root = std::cell::RefCell::new(root.clone());
    let store_args = |c: &mut Command| {
        c.arg("--root")
            .arg(&*store_root.borrow())
            .arg("--runroot")
            .arg(&run_dir)
            .args(["--storage-opt", "overlay.skip_mount_home=true"]);
    };
    let as_user = |args: &[&str]| -> Output {
        let mut c = Command::new("runuser");
        c.args(["-u", USER, "--", "env", "-i", "PATH=/usr/bin:/bin"])
            .arg(format!("HOME={}", run_dir.display()))
            .arg(format!("XDG_RUNTIME_DIR={}", run_dir.display()))
            .arg(&bin);
        store_args(&mut c);
        c.args(args).output().unwrap()
    };
    let warned = |o: &Output, what: &str| {
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("opaque")).collect();
        assert_eq!(lines.len(), 1, "{what}: one warning: {err}");
        let w = lines[0];
        assert!(
            w.starts_with("cstorage: warning: ")
                && w.contains(&format!("store {}", root.display()))
                && w.contains("2 opaque directories")
                && w.contains("/opq")
                && w.contains("trusted.overlay.opaque")
                && w.contains("CAP_SYS_ADMIN"),
            "{what}: {w}"
        );
    };
    let out = run_dir.join("out");
    let o = as_user(&["unpack", "--no-owners", "three", out.to_str().unwrap()]);
    warned(&o, "unpack");
    // What the warning is about: the file hidden by the opaque directory shows through.
    assert!(out.join("opq/old1").exists());
    assert!(!fx.umoci["three"].join("opq/old1").exists());
    let o = as_user(&[
        "image",
        "export",
        "three",
        "--format",
        "rootfs-tar",
        "-o",
        "/dev/null",
    ]);
    warned(&o, "rootfs-tar");
    *store_root.borrow_mut() = fuse_root.clone();
    let o = as_user(&[
        "image",
        "export",
        "three",
        "--format",
        "rootfs-tar",
        "-o",
        "/dev/null",
    ]);
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "fuse store: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    *store_root.borrow_mut() = root.clone();
    // Root reads the attribute: no warning, and the opaque directory is applied.
    let mut c = Command::new(&bin);
    store_args(&mut c);
    let rout = tmp.path().join("rout");
    let o = c.args(["unpack", "three"]).arg(&rout).output().unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!rout.join("opq/old1").exists());
}

/// As root, `--uid-map`/`--gid-map` shift owners as `umoci unpack --uid-map/--gid-map` does
/// with the same ranges (two ranges for UIDs, one for GIDs): the trees are equal, owners
/// included. An owner outside every range is an error naming it; as any other user, or
/// with `--no-owners`, the maps are refused.
#[test]
fn uid_and_gid_maps_shift_owners_as_umoci() {
    let fx = fx();
    let tmp = tempfile::tempdir().unwrap();
    let maps = [
        "--uid-map",
        "0:100000:1000",
        "--uid-map",
        "1000:300000:64536",
        "--gid-map",
        "0:200000:65536",
    ];
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .args(maps)
        .arg("--image")
        .arg(format!("{}:three", fx.layout.display()))
        .arg(&bundle));
    let theirs = snapshot(&bundle.join("rootfs"));
    let out = tmp.path().join("ours");
    let mut args = vec!["unpack"];
    args.extend(maps);
    args.extend(["three", out.to_str().unwrap()]);
    ok(&fx.native, &args);
    let ours = snapshot(&out);
    assert_same_tree("uid/gid maps", &ours, &theirs);
    assert_eq!(ours["entries"]["/srv/app.conf"]["uid"], 300000 + 234);
    assert_eq!(ours["entries"]["/srv/app.conf"]["gid"], 200000 + 5678);
    // Owners no range covers (1000:1000, 1234:5678).
    let o = cst(
        &fx.native,
        &[
            "unpack",
            "--uid-map",
            "0:100000:1000",
            "three",
            tmp.path().join("partial").to_str().unwrap(),
        ],
    );
    let err = one_line_error(&o);
    assert!(
        err.contains("is not covered by the --uid-map ranges"),
        "{err}"
    );
    assert!(!tmp.path().join("partial").exists(), "removed");
    let o = cst(
        &fx.native,
        &[
            "unpack",
            "--no-owners",
            "--gid-map",
            "0:1:1",
            "three",
            tmp.path().join("no").to_str().unwrap(),
        ],
    );
    let err = one_line_error(&o);
    assert!(err.contains("only when owners are set"), "{err}");
}

/// A tar that cannot be written names where it was going: the user's path, or "standard
/// output" (not a generic "output").
#[test]
fn tar_write_errors_name_the_target() {
    let fx = fx();
    let o = cst(
        &fx.native,
        &[
            "image",
            "export",
            "three",
            "--format",
            "rootfs-tar",
            "-o",
            "/dev/full",
        ],
    );
    let err = one_line_error(&o);
    assert!(
        err.contains("/dev/full") && err.contains("No space left"),
        "{err}"
    );
    assert!(!err.contains("output:"), "{err}");
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    for args in [
        &["cp", "three:/etc", "-"][..],
        &[
            "image",
            "export",
            "three",
            "--format",
            "rootfs-tar",
            "-o",
            "-",
        ][..],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_cstorage"))
            .args(fx.native.cstorage_args())
            .args(args)
            .stdout(full.try_clone().unwrap())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("standard output") && err.contains("No space left"),
            "{args:?}: {err}"
        );
    }
}

/// Unmounts a test mount when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        umount(&self.0);
    }
}

/// On a file system with reflinks (btrfs on a loop device, store and target on it), file
/// contents are cloned from the store (`FICLONE`), the clone is CRC-checked (a corrupted
/// layer file is still an error), and the tree still equals umoci's.
#[test]
fn reflinks_on_btrfs() {
    testutil::require_tool("mkfs.btrfs");
    let e = extra();
    let tmp = tempfile::Builder::new()
        .prefix("cst-ub-")
        .tempdir_in(&e.dir)
        .unwrap();
    let img = tmp.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    run(Command::new("mkfs.btrfs").arg("-q").arg(&img));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    let _m = Mounted(mnt.clone());
    let store = TestStore::at(&mnt.join("s"), &[]);
    for tag in ["xa", "big"] {
        store.copy_in(
            &e.layout.source(tag),
            &format!("localhost/{tag}:latest"),
            &[],
        );
    }
    let o = ok(
        &store,
        &[
            "--log-level",
            "info",
            "unpack",
            "big",
            mnt.join("big").to_str().unwrap(),
        ],
    );
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(log.contains(", 1 cloned)"), "{log}");
    ok(&store, &["unpack", "xa", mnt.join("xa").to_str().unwrap()]);
    assert_same_tree(
        "xa on btrfs",
        &snapshot(&mnt.join("xa")),
        &snapshot(&e.umoci_xa),
    );
    let want = std::fs::read(mnt.join("big/big/file")).unwrap();
    assert_eq!(want, (0..=255u8).cycle().take(1 << 20).collect::<Vec<u8>>());
    // A corrupted layer file, cloned: the check reads the clone.
    let images = store.go_images();
    let big = images
        .iter()
        .find(|i| i["names"].to_string().contains("big"))
        .unwrap();
    let file = store
        .root
        .join("overlay")
        .join(big["layer"].as_str().unwrap())
        .join("diff/big/file");
    let mut b = std::fs::read(&file).unwrap();
    b[1234] ^= 1;
    std::fs::write(&file, &b).unwrap();
    let o = cst(
        &store,
        &["unpack", "big", mnt.join("bad").to_str().unwrap()],
    );
    let err = one_line_error(&o);
    assert!(err.contains("CRC"), "{err}");
    assert!(!mnt.join("bad").exists());
    drop(store);
}
