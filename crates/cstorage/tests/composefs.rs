//! `cstorage composefs` (issue 15) checked against code nobody here wrote:
//!
//! - composefs-rs's own OCI importer (`composefs-oci` 0.9.4 from crates.io, through the
//!   test-only `composefs-oracle` crate): the image exported by skopeo from the same store to
//!   an OCI layout, imported, `create_filesystem` with the default OCI transforms,
//!   `commit_image`. Our EROFS image, digest and dumpfile must be byte-identical.
//! - Where composefs-oci 0.9.4 refuses an image or stacks it differently from the OCI layer
//!   rules, the test says which and checks our tree against `umoci unpack` instead.
//! - The C tools of the Debian 13 chroot (`mkcomposefs`, `composefs-info`) on our dumpfile,
//!   our EROFS image and our digest store, and the podman 5 stores made there.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use composefs_storage::composefs::composefs::fsverity::{
    FsVerityHashValue, Sha256HashValue, Sha512HashValue,
};
use testutil::fixtures::{PY_ZOO, ROOTFS_TAGS, Rootfs, rootfs, rootfs_layer};
use testutil::{Blob, OciLayout, TestStore, go_arch};

mod common;
use common::cst;

fn fx() -> &'static Rootfs {
    static F: OnceLock<Rootfs> = OnceLock::new();
    F.get_or_init(|| rootfs(&testutil::fixture_dir(&std::env::temp_dir(), "cst-cf")))
}

fn ok(what: &str, o: Output) -> Vec<u8> {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn cst_ok(store: &TestStore, args: &[&str]) -> Vec<u8> {
    ok(&format!("cstorage {args:?}"), cst(store, args))
}

/// `skopeo copy` of `name` from `store` to the OCI layout `dir` under `tag`.
fn skopeo_export(store: &TestStore, name: &str, dir: &Path, tag: &str) {
    testutil::run(
        Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(format!("{}{name}", store.spec()))
            .arg(format!("oci:{}:{tag}", dir.display())),
    );
}

/// What composefs-rs makes of `name` in `store`, through a skopeo-exported OCI layout.
fn oracle<H: FsVerityHashValue>(
    store: &TestStore,
    name: &str,
    tmp: &Path,
) -> anyhow::Result<composefs_oracle::Oracle> {
    let layout = tmp.join("layout");
    skopeo_export(store, name, &layout, "t");
    let repo = tmp.join(format!("repo-{}", H::ALGORITHM.hash_name()));
    composefs_oracle::from_oci_layout::<H>(&layout, "t", &repo)
}

/// Our EROFS image, digest and dumpfile of `name` must be composefs-rs's, byte for byte.
fn assert_same_as_composefs_rs(store: &TestStore, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let o = oracle::<Sha256HashValue>(store, name, tmp.path())
        .unwrap_or_else(|e| panic!("composefs-oci could not import {name}: {e:#}"));
    let dump = cst_ok(store, &["composefs", "dump", name]);
    assert_eq!(
        String::from_utf8_lossy(&dump),
        String::from_utf8_lossy(&o.dumpfile),
        "{name}: dumpfile differs from composefs-oci's"
    );
    let cfs = tmp.path().join("ours.cfs");
    cst_ok(
        store,
        &["composefs", "mkfs", name, "-o", cfs.to_str().unwrap()],
    );
    let ours = std::fs::read(&cfs).unwrap();
    assert!(
        ours == o.erofs,
        "{name}: EROFS image differs from composefs-oci's"
    );
    let digest = cst_ok(store, &["composefs", "digest", name]);
    assert_eq!(String::from_utf8_lossy(&digest).trim(), o.digest, "{name}");
}

#[test]
fn identical_to_composefs_rs_on_rootfs_fixture() {
    let fx = fx();
    for tag in ROOTFS_TAGS {
        let name = format!("localhost/{tag}:latest");
        assert_same_as_composefs_rs(&fx.native, &name);
        // AUFS-style whiteouts on disk; the tar-split is the same.
        assert_same_as_composefs_rs(&fx.fuse, &name);
    }
}

#[test]
fn sha512_digest_identical_to_composefs_rs() {
    let fx = fx();
    let name = "localhost/three:latest";
    let tmp = tempfile::tempdir().unwrap();
    let o = oracle::<Sha512HashValue>(&fx.native, name, tmp.path()).unwrap();
    let d = cst_ok(
        &fx.native,
        &["composefs", "digest", "--hash", "sha512", name],
    );
    assert_eq!(String::from_utf8_lossy(&d).trim(), o.digest);
    assert_eq!(o.digest.len(), 128);
}

/// A store holding the images of this file's own layers.
struct Quirks {
    store: TestStore,
    layout: PathBuf,
    _tmp: tempfile::TempDir,
}

const CAPS_PY: &str = r##"
import io, sys, tarfile
out = io.BytesIO()
t = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)
def add(name, kind=tarfile.REGTYPE, data=b"", **kw):
    i = tarfile.TarInfo(name)
    i.type = kind
    i.mtime = kw.pop("mtime", 1700000000)
    i.mode = kw.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    for k, v in kw.items():
        setattr(i, k, v)
    i.size = len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(i, io.BytesIO(data) if data else None)
D = tarfile.DIRTYPE
if WHICH == "caps":
    add("usr/", D)
    add("usr/bin/", D)
    add("usr/bin/ping", data=b"\x7fELF" + b"p" * 100, mode=0o755,
        pax_headers={"SCHILY.xattr.security.capability": "\x00\x00\x00\x02\x00\x20" + "\x00" * 14,
                     "SCHILY.xattr.user.dropped": "by the allowlist"})
    add("usr/bin/exactly64", data=b"6" * 64)
    add("usr/bin/exactly65", data=b"6" * 65)
    add("run/", D)
    add("run/stub", data=b"emptied by the OCI transforms\n")
elif WHICH == "childfirst":
    add("usr/", D)
    add("late/sub/file", data=b"a child before its directories\n")
    add("late/sub/", D, mode=0o700, uid=5, gid=6, mtime=1600000000)
    add("late/", D, mode=0o750, mtime=1500000000)
elif WHICH == "negmtime":
    add("usr/", D)
    add("old", data=b"before the epoch\n", mtime=-1)
elif WHICH == "nousr":
    add("etc/", D)
    add("etc/only", data=b"no /usr in this image\n")
elif WHICH == "opqbase":
    add("usr/", D)
    add("o/", D)
    add("o/lower", data=b"hidden by the opaque marker\n")
elif WHICH == "opqlate":
    add("o/", D)
    add("o/same-layer", data=b"before the marker, same layer: kept\n")
    add("o/.wh..wh..opq")
t.close()
sys.stdout.buffer.write(out.getvalue())
"##;

fn py_layer(which: &str) -> Vec<u8> {
    testutil::python_tar(&format!("WHICH = {which:?}\n{CAPS_PY}"))
}

fn quirks() -> &'static Quirks {
    static Q: OnceLock<Quirks> = OnceLock::new();
    Q.get_or_init(|| {
        let tmp = tempfile::Builder::new().prefix("cst-q").tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let mut l = OciLayout::create(&layout);
        let arch = go_arch();
        let images: Vec<(&str, Vec<Vec<u8>>)> = vec![
            (
                "zoo",
                vec![
                    rootfs_layer(0, false),
                    testutil::python_tar(PY_ZOO),
                    py_layer("caps"),
                ],
            ),
            ("childfirst", vec![py_layer("childfirst")]),
            ("negmtime", vec![py_layer("negmtime")]),
            ("nousr", vec![py_layer("nousr")]),
            ("opqlate", vec![py_layer("opqbase"), py_layer("opqlate")]),
        ];
        let store = TestStore::at(&tmp.path().join("s"), &[]);
        for (tag, layers) in &images {
            l.add_image(tag, layers, Blob::Gzip, arch);
            store.copy_in(&l.source(tag), &format!("localhost/{tag}:latest"), &[]);
        }
        Quirks {
            store,
            layout,
            _tmp: tmp,
        }
    })
}

#[test]
fn identical_to_composefs_rs_with_xattrs_devices_odd_names() {
    // Non-UTF-8 and long names, devices, FIFOs, hard links, big IDs, fractional mtimes,
    // security.capability kept and user.* dropped, /run emptied, the 64/65-byte inline edge.
    let q = quirks();
    assert_same_as_composefs_rs(&q.store, "localhost/zoo:latest");
    let dump = String::from_utf8(cst_ok(
        &q.store,
        &["composefs", "dump", "localhost/zoo:latest"],
    ))
    .unwrap();
    let line = |p: &str| {
        dump.lines()
            .find(|l| l.split(' ').next() == Some(p))
            .unwrap_or_else(|| panic!("{p} not in the dumpfile"))
            .to_string()
    };
    assert!(line("/usr/bin/ping").contains("security.capability="));
    assert!(!line("/usr/bin/ping").contains("user.dropped"));
    assert!(!dump.contains("/run/stub"));
    assert!(line("/zoo/caf\\xe9-latin1.txt").contains(" 100644 "));
}

/// Parses a composefs dumpfile into path → (type, mode, uid, gid, size, mtime secs,
/// content key, nlink); hard links (`@`) take their target's line. The content key is the
/// fs-verity digest for external files, the unescaped inline content otherwise, the target
/// of symlinks.
type DumpEntry = (char, u32, u32, u32, u64, i64, Vec<u8>, u32);

fn unescape(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' => {
                    out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
                    i += 4;
                    continue;
                }
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                c => out.push(c),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn parse_dump(dump: &str) -> BTreeMap<Vec<u8>, DumpEntry> {
    let mut out = BTreeMap::new();
    let mut links = Vec::new();
    for l in dump.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let path = unescape(f[0]);
        // path size mode nlink uid gid rdev mtime payload content digest xattrs...
        if f[2].starts_with('@') {
            links.push((path, unescape(f[8])));
            continue;
        }
        let mode = u32::from_str_radix(f[2], 8).unwrap();
        let t = match mode & 0o170000 {
            0o040000 => 'd',
            0o100000 => '-',
            0o120000 => 'l',
            0o020000 => 'c',
            0o060000 => 'b',
            _ => 'p',
        };
        let key = match t {
            '-' if f[10] != "-" => f[10].as_bytes().to_vec(),
            '-' => unescape(f[9]),
            'l' => unescape(f[8]),
            _ => Vec::new(),
        };
        let mtime: i64 = f[7].split('.').next().unwrap().parse().unwrap();
        out.insert(
            path,
            (
                t,
                mode & 0o7777,
                f[4].parse().unwrap(),
                f[5].parse().unwrap(),
                f[1].parse().unwrap(),
                mtime,
                key,
                f[3].parse().unwrap(),
            ),
        );
    }
    for (p, target) in links {
        let e = out[&target].clone();
        out.insert(p, e);
    }
    out
}

/// The same view of the tree `umoci unpack` makes (root excluded).
fn umoci_view(root: &Path) -> BTreeMap<Vec<u8>, DumpEntry> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let ft = md.file_type();
            let (t, key) = if ft.is_dir() {
                todo.push(rel.clone());
                ('d', Vec::new())
            } else if ft.is_symlink() {
                (
                    'l',
                    std::fs::read_link(e.path())
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else if ft.is_file() {
                let data = std::fs::read(e.path()).unwrap();
                let key = if data.len() > 64 {
                    composefs_storage::composefs::verity_of_reader::<Sha256HashValue>(
                        &mut &data[..],
                    )
                    .unwrap()
                    .to_hex()
                    .into_bytes()
                } else {
                    data
                };
                ('-', key)
            } else if ft.is_char_device() {
                ('c', Vec::new())
            } else if ft.is_block_device() {
                ('b', Vec::new())
            } else {
                ('p', Vec::new())
            };
            let size = if matches!(t, '-' | 'l') { md.size() } else { 0 };
            let nlink = if t == 'd' { 0 } else { md.nlink() as u32 };
            let mut p = b"/".to_vec();
            p.extend_from_slice(rel.as_os_str().as_bytes());
            out.insert(
                p,
                (
                    t,
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    size,
                    md.mtime(),
                    key,
                    nlink,
                ),
            );
        }
    }
    out
}

/// Our tree of `tag` (no transforms besides the OCI ones) against `umoci unpack` of the same
/// image: names, types, modes, owners, sizes, content, link counts; mtimes of non-directories.
fn assert_matches_umoci(q: &Quirks, tag: &str) -> BTreeMap<Vec<u8>, DumpEntry> {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    testutil::run(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", q.layout.display()))
            .arg(&bundle),
    );
    let name = format!("localhost/{tag}:latest");
    let dump = String::from_utf8(cst_ok(&q.store, &["composefs", "dump", &name])).unwrap();
    let mut ours = parse_dump(&dump);
    ours.remove(b"/".as_slice());
    let theirs = umoci_view(&bundle.join("rootfs"));
    assert_eq!(
        ours.keys()
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>(),
        theirs
            .keys()
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>(),
        "{tag}: names"
    );
    for (p, o) in &ours {
        let mut t = theirs[p].clone();
        let mut o = o.clone();
        if o.0 == 'd' {
            // umoci's directories get new mtimes as their children are made.
            (o.5, t.5, o.7) = (0, 0, 0);
        }
        assert_eq!(o, t, "{tag}: {}", String::from_utf8_lossy(p));
    }
    ours
}

#[test]
fn directory_entry_after_its_children_follows_umoci_where_composefs_rs_refuses() {
    let q = quirks();
    let tmp = tempfile::tempdir().unwrap();
    let name = "localhost/childfirst:latest";
    let e = oracle::<Sha256HashValue>(&q.store, name, tmp.path())
        .err()
        .expect("composefs-oci 0.9.4 was expected to refuse a child before its directory");
    eprintln!("composefs-oci on {name}: {e:#}");
    let ours = assert_matches_umoci(q, "childfirst");
    // The directory entries that came last gave their metadata.
    assert_eq!(ours[b"/late/sub".as_slice()].1, 0o700);
    assert_eq!(ours[b"/late/sub".as_slice()].5, 1600000000);
    assert_eq!(ours[b"/late".as_slice()].1, 0o750);
}

#[test]
fn pax_mtime_before_epoch_follows_umoci_where_composefs_rs_refuses() {
    let q = quirks();
    let tmp = tempfile::tempdir().unwrap();
    let name = "localhost/negmtime:latest";
    let e = oracle::<Sha256HashValue>(&q.store, name, tmp.path())
        .err()
        .expect("composefs-oci 0.9.4 was expected to refuse a PAX mtime of -1");
    eprintln!("composefs-oci on {name}: {e:#}");
    let ours = assert_matches_umoci(q, "negmtime");
    assert_eq!(ours[b"/old".as_slice()].5, -1);
}

#[test]
fn image_without_usr_follows_umoci_where_composefs_rs_refuses() {
    let q = quirks();
    let tmp = tempfile::tempdir().unwrap();
    let name = "localhost/nousr:latest";
    let e = oracle::<Sha256HashValue>(&q.store, name, tmp.path())
        .err()
        .expect("composefs-oci 0.9.4 was expected to refuse an image without /usr");
    eprintln!("composefs-oci on {name}: {e:#}");
    assert_matches_umoci(q, "nousr");
}

#[test]
fn opaque_marker_after_same_layer_entries_follows_umoci_not_composefs_rs() {
    let q = quirks();
    let tmp = tempfile::tempdir().unwrap();
    let name = "localhost/opqlate:latest";
    let o = oracle::<Sha256HashValue>(&q.store, name, tmp.path()).unwrap();
    let theirs = parse_dump(&String::from_utf8(o.dumpfile).unwrap());
    // composefs-oci applies the marker where it stands: the same layer's entry is gone.
    assert!(!theirs.contains_key(b"/o/same-layer".as_slice()));
    let ours = assert_matches_umoci(q, "opqlate");
    assert!(ours.contains_key(b"/o/same-layer".as_slice()));
    assert!(!ours.contains_key(b"/o/lower".as_slice()));
}

#[test]
fn corrupted_file_fails_naming_layer_and_file_and_leaves_nothing() {
    let fx = fx();
    let store = TestStore::new();
    store.copy_in(
        &format!("oci:{}:three", fx.layout.display()),
        "localhost/three:latest",
        &[],
    );
    let name = "localhost/three:latest";
    let out = tempfile::tempdir().unwrap();
    let cfs = out.path().join("x.cfs");
    let objs = out.path().join("objects");
    cst_ok(
        &store,
        &[
            "composefs",
            "mkfs",
            name,
            "-o",
            cfs.to_str().unwrap(),
            "--digest-store",
            objs.to_str().unwrap(),
        ],
    );
    let before = std::fs::read(&cfs).unwrap();
    // Flip one byte of etc/passwd in the top layer that has one (same size: only the CRC
    // tells).
    let layers: serde_json::Value = serde_json::from_slice(&cst_ok(
        &store,
        &["--format", "json", "image", "inspect", name],
    ))
    .unwrap();
    let top = layers[0]["layers"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let f = store
        .root
        .join("overlay")
        .join(&top)
        .join("diff/etc/passwd");
    let mut data = std::fs::read(&f).unwrap();
    data[0] ^= 0x20;
    std::fs::write(&f, &data).unwrap();
    let other = out.path().join("y.cfs");
    let objs2 = out.path().join("objects2");
    for args in [
        vec!["composefs", "mkfs", name, "-o", cfs.to_str().unwrap()],
        vec![
            "composefs",
            "mkfs",
            name,
            "-o",
            other.to_str().unwrap(),
            "--digest-store",
            objs2.to_str().unwrap(),
        ],
        vec!["composefs", "mkfs", name, "-o", other.to_str().unwrap()],
        vec!["composefs", "dump", name, "-o", other.to_str().unwrap()],
        vec!["composefs", "digest", name],
    ] {
        let o = cst(&store, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{args:?} succeeded on a corrupted file"
        );
        assert!(
            err.contains(&top) && err.contains("etc/passwd") && err.contains("CRC"),
            "{args:?}: {err}"
        );
    }
    // The earlier image is untouched, no new output, no temporary file left.
    assert_eq!(std::fs::read(&cfs).unwrap(), before);
    assert!(!other.exists());
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    let stored: Vec<_> = std::fs::read_dir(&objs2)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        stored.is_empty(),
        "objects left by a failed mkfs: {stored:?}"
    );
}

// ---- The C tools and the podman 5 stores of the Debian 13 chroot ----

fn trixie_scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/trixie")
        .canonicalize()
        .unwrap()
}

fn trixie_work() -> PathBuf {
    std::env::var_os("CSTORAGE_TRIXIE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cstorage-trixie"))
        .join("work")
}

/// Runs `args` in the trixie chroot (with `CONTAINERS_STORAGE_CONF` if given).
fn trixie(conf: Option<&Path>, args: &[&OsStr]) -> Output {
    let mut c = Command::new(trixie_scripts().join("trixie-env.sh"));
    c.arg("run").args(args).stdin(Stdio::null());
    if let Some(conf) = conf {
        c.env("CONTAINERS_STORAGE_CONF", conf);
    }
    c.output().unwrap()
}

/// The trixie stores, made (or checked) by `ensure-stores.sh` under its lock, as the modern
/// tests do; the lock is kept shared while this test binary reads them.
fn trixie_stores() -> &'static Path {
    static S: OnceLock<(PathBuf, std::fs::File)> = OnceLock::new();
    let (p, _) = S.get_or_init(|| {
        use std::os::fd::AsRawFd;
        let cache = trixie_work().parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&cache).unwrap();
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cache.join(".ensure.lock"))
            .unwrap();
        // SAFETY: flock on a file descriptor we own.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let o = Command::new(trixie_scripts().join("ensure-stores.sh"))
            .env("CSTORAGE_TRIXIE_LOCK_HELD", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "THE TRIXIE CHROOT OR ITS STORES COULD NOT BE BUILT: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // SAFETY: as above; converts the exclusive lock to a shared one.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) }, 0);
        (trixie_work().join("stores"), lock)
    });
    p
}

/// Held while a test runs tools in the chroot: the last one to finish unmounts it, so a run
/// leaves nothing mounted (as the modern tests do).
struct InChroot;

static RUNNING: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

impl InChroot {
    fn new() -> InChroot {
        trixie_stores();
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        InChroot
    }
}

impl Drop for InChroot {
    fn drop(&mut self) {
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            let _ = Command::new(trixie_scripts().join("trixie-env.sh"))
                .arg("teardown")
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// A scratch directory the chroot sees at the same path.
fn trixie_scratch(name: &str) -> PathBuf {
    let d = trixie_work().join("out").join(format!("composefs-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cst_conf(conf: &Path, args: &[&str]) -> Vec<u8> {
    ok(
        &format!("cstorage {args:?}"),
        Command::new(env!("CARGO_BIN_EXE_cstorage"))
            .args(args)
            .env("CONTAINERS_STORAGE_CONF", conf)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn c_mkcomposefs_and_composefs_info_agree_with_our_dumpfile_image_and_objects() {
    let _chroot = InChroot::new();
    let fx = fx();
    let dir = trixie_scratch("c-tools");
    for tag in ROOTFS_TAGS {
        let name = format!("localhost/{tag}:latest");
        let dump = dir.join(format!("{tag}.dump"));
        let cfs = dir.join(format!("{tag}.cfs"));
        let objs = dir.join(format!("{tag}.objects"));
        let s = |p: &Path| p.to_str().unwrap().to_string();
        cst_ok(&fx.native, &["composefs", "dump", &name, "-o", &s(&dump)]);
        cst_ok(
            &fx.native,
            &[
                "composefs",
                "mkfs",
                &name,
                "-o",
                &s(&cfs),
                "--digest-store",
                &s(&objs),
            ],
        );
        let ours = String::from_utf8(cst_ok(&fx.native, &["composefs", "digest", &name])).unwrap();
        // The C writer on our dumpfile gives our digest...
        let c = ok(
            "mkcomposefs --print-digest-only",
            trixie(
                None,
                &[
                    os("mkcomposefs"),
                    os("--from-file"),
                    os("--min-version=1"),
                    os("--print-digest-only"),
                    dump.as_os_str(),
                ],
            ),
        );
        assert_eq!(String::from_utf8_lossy(&c).trim(), ours.trim(), "{tag}");
        // ...and the same bytes.
        let c_cfs = dir.join(format!("{tag}.c.cfs"));
        ok(
            "mkcomposefs",
            trixie(
                None,
                &[
                    os("mkcomposefs"),
                    os("--from-file"),
                    os("--min-version=1"),
                    dump.as_os_str(),
                    c_cfs.as_os_str(),
                ],
            ),
        );
        assert!(
            std::fs::read(&c_cfs).unwrap() == std::fs::read(&cfs).unwrap(),
            "{tag}: EROFS bytes differ from mkcomposefs's"
        );
        // composefs-info reads our image: the same objects as our digest store holds.
        let listed = String::from_utf8(ok(
            "composefs-info objects",
            trixie(
                None,
                &[os("composefs-info"), os("objects"), cfs.as_os_str()],
            ),
        ))
        .unwrap();
        let mut listed: Vec<String> = listed.lines().map(str::to_string).collect();
        listed.sort();
        let mut stored = Vec::new();
        for d in std::fs::read_dir(&objs).unwrap() {
            let d = d.unwrap();
            for f in std::fs::read_dir(d.path()).unwrap() {
                let f = f.unwrap();
                let rel = format!(
                    "{}/{}",
                    d.file_name().to_str().unwrap(),
                    f.file_name().to_str().unwrap()
                );
                // Each object's content has the digest it is named by.
                let v = composefs_storage::composefs::verity_of_reader::<Sha256HashValue>(
                    &mut std::fs::File::open(f.path()).unwrap(),
                )
                .unwrap();
                assert_eq!(rel.replace('/', ""), v.to_hex(), "{}", f.path().display());
                stored.push(rel);
            }
        }
        stored.sort();
        assert_eq!(listed, stored, "{tag}");
        ok(
            "composefs-info dump",
            trixie(None, &[os("composefs-info"), os("dump"), cfs.as_os_str()]),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn podman5_stores_identical_to_composefs_rs_and_mkcomposefs() {
    let _chroot = InChroot::new();
    let stores = trixie_stores();
    for (store, image) in [
        ("plain", "localhost/test:v1"),
        ("chunked", "localhost/test:chunked"),
        ("composefs", "127.0.0.1:5000/test:chunked"),
        ("imagestore", "localhost/test:v1"),
    ] {
        let conf = stores.join(store).join("storage.conf");
        let dir = trixie_scratch(store);
        let layout = dir.join("layout");
        ok(
            &format!("skopeo copy from the {store} store"),
            trixie(
                Some(&conf),
                &[
                    os("skopeo"),
                    os("copy"),
                    os("-q"),
                    OsStr::new(&format!("containers-storage:{image}")),
                    OsStr::new(&format!("oci:{}:t", layout.display())),
                ],
            ),
        );
        let o =
            composefs_oracle::from_oci_layout::<Sha256HashValue>(&layout, "t", &dir.join("repo"))
                .unwrap_or_else(|e| panic!("{store}: composefs-oci: {e:#}"));
        let cfs = dir.join("ours.cfs");
        cst_conf(
            &conf,
            &["composefs", "mkfs", image, "-o", cfs.to_str().unwrap()],
        );
        assert!(
            std::fs::read(&cfs).unwrap() == o.erofs,
            "{store}: EROFS differs from composefs-oci's"
        );
        let dump = dir.join("ours.dump");
        cst_conf(
            &conf,
            &["composefs", "dump", image, "-o", dump.to_str().unwrap()],
        );
        assert_eq!(
            std::fs::read(&dump).unwrap(),
            o.dumpfile,
            "{store}: dumpfile"
        );
        let digest = String::from_utf8(cst_conf(&conf, &["composefs", "digest", image])).unwrap();
        assert_eq!(digest.trim(), o.digest, "{store}");
        let c = ok(
            "mkcomposefs",
            trixie(
                None,
                &[
                    os("mkcomposefs"),
                    os("--from-file"),
                    os("--min-version=1"),
                    os("--print-digest-only"),
                    dump.as_os_str(),
                ],
            ),
        );
        assert_eq!(String::from_utf8_lossy(&c).trim(), o.digest, "{store}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Unmounts what it holds when dropped (also when a test fails).
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

/// Mounts our EROFS image over our digest store the way composefs does (EROFS metadata as
/// the overlay lower, the digest store as a data-only lower reached through the
/// `trusted.overlay.redirect`/metacopy xattrs) and compares what the kernel shows with
/// `umoci unpack` of the same image. Needs root, erofs and overlayfs with data-only lowers
/// (Linux 6.5+); this machine has them, so a refused mount fails the test.
#[test]
fn mounted_image_with_digest_store_matches_umoci() {
    let fx = fx();
    let q = quirks();
    let cases: Vec<(&TestStore, String, PathBuf)> = ROOTFS_TAGS
        .iter()
        .map(|t| {
            (
                &fx.native,
                format!("localhost/{t}:latest"),
                fx.umoci[*t].clone(),
            )
        })
        .chain(std::iter::once({
            let tmp = q._tmp.path().join("bundle-zoo");
            if !tmp.exists() {
                testutil::run(
                    Command::new("umoci")
                        .args(["unpack", "--image"])
                        .arg(format!("{}:zoo", q.layout.display()))
                        .arg(&tmp),
                );
            }
            (
                &q.store,
                "localhost/zoo:latest".to_string(),
                tmp.join("rootfs"),
            )
        }))
        .collect();
    for (store, name, umoci_root) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (cfs, objs, meta, mnt) = (
            tmp.path().join("i.cfs"),
            tmp.path().join("objects"),
            tmp.path().join("meta"),
            tmp.path().join("mnt"),
        );
        std::fs::create_dir(&meta).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        cst_ok(
            store,
            &[
                "composefs",
                "mkfs",
                &name,
                "-o",
                cfs.to_str().unwrap(),
                "--digest-store",
                objs.to_str().unwrap(),
            ],
        );
        let mut mounts = Mounts(Vec::new());
        ok(
            "mount -t erofs",
            Command::new("mount")
                .args(["-t", "erofs", "-o", "loop,ro"])
                .arg(&cfs)
                .arg(&meta)
                .output()
                .unwrap(),
        );
        mounts.0.push(meta.clone());
        ok(
            "mount -t overlay",
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "ro,metacopy=on,redirect_dir=on,lowerdir={}::{}",
                    meta.display(),
                    objs.display()
                ))
                .arg(&mnt)
                .output()
                .unwrap(),
        );
        mounts.0.push(mnt.clone());
        let mut ours = umoci_view(&mnt);
        let mut theirs = umoci_view(&umoci_root);
        // The OCI transforms empty /run (composefs-rs does the same).
        theirs.retain(|p, _| !p.starts_with(b"/run/"));
        for v in [&mut ours, &mut theirs] {
            for e in v.values_mut() {
                if e.0 == 'd' {
                    e.5 = 0; // umoci's directories get new mtimes as children are made
                }
                if e.0 == 'l' {
                    // A symlink keeps the tar's mode in the image (as composefs-rs's does);
                    // one umoci creates is 0777 as every Linux symlink.
                    e.1 = 0;
                }
            }
        }
        assert_eq!(
            ours.keys()
                .map(|k| String::from_utf8_lossy(k))
                .collect::<Vec<_>>(),
            theirs
                .keys()
                .map(|k| String::from_utf8_lossy(k))
                .collect::<Vec<_>>(),
            "{name}: names"
        );
        for (p, o) in &ours {
            assert_eq!(o, &theirs[p], "{name}: {}", String::from_utf8_lossy(p));
        }
        drop(mounts);
    }
}

/// A rootless user's own store, read as that user through the user-namespace helper (files
/// of container users with modes 0600/0000 below 0700/000 directories), gives the same
/// dumpfile and digest as root reading the same store directly.
#[test]
fn rootless_user_gets_the_same_image_as_root() {
    use testutil::rootless::RootlessStore;
    let store = RootlessStore::new("cst-rlc");
    let bin = store.install(Path::new(env!("CARGO_BIN_EXE_cstorage")), "cstorage");
    for image in ["localhost/rl:latest", "localhost/many:latest"] {
        let as_user = |args: &[&str]| {
            ok(
                &format!("cstorage {args:?} as the user"),
                store
                    .as_user(bin.to_str().unwrap())
                    .args(args)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap(),
            )
        };
        let as_root = |args: &[&str]| {
            ok(
                &format!("cstorage {args:?} as root"),
                Command::new(env!("CARGO_BIN_EXE_cstorage"))
                    .arg("--root")
                    .arg(store.graphroot())
                    .args(args)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap(),
            )
        };
        let user_dump = as_user(&["composefs", "dump", image]);
        assert_eq!(
            String::from_utf8_lossy(&user_dump),
            String::from_utf8_lossy(&as_root(&["composefs", "dump", image])),
            "{image}"
        );
        assert_eq!(
            as_user(&["composefs", "digest", image]),
            as_root(&["composefs", "digest", image]),
            "{image}"
        );
        // `composefs import` as the user, into a repository in the user's home: the same
        // image digest, and composefs-rs's library reads the repository.
        let repo = store
            .home
            .join(format!("repo-{}", image.replace(['/', ':'], "_")));
        let imported = as_user(&[
            "composefs",
            "import",
            image,
            "--repo",
            repo.to_str().unwrap(),
        ]);
        let digest = as_root(&["composefs", "digest", image]);
        assert_eq!(imported, digest, "{image}");
        let v = composefs_oracle::view::<Sha256HashValue>(&repo, image).unwrap();
        assert_eq!(
            v.image_ref.as_deref(),
            Some(String::from_utf8_lossy(&digest).trim()),
            "{image}"
        );
        // composefs-oci 0.9.4 cannot rebuild the tree itself: these images have no /usr.
        assert!(
            v.computed_digest.as_ref().is_err_and(|e| e.contains("usr")),
            "{image}: {:?}",
            v.computed_digest
        );
        assert!(v.fsck_ok, "{image}: {}", v.fsck_report);
        // The image's own owners, not the host's mapped IDs.
        let dump = String::from_utf8(user_dump).unwrap();
        assert!(
            dump.lines().any(|l| l.contains(" 100600 1 1000 1000 ")),
            "{image}: {dump}"
        );
    }
}

/// `--digest-store`: objects are copies (or reflinks), never hard links to the store's files;
/// a second run reuses them; each is named by its content's fs-verity digest.
#[test]
fn digest_store_objects_are_copies_and_are_reused() {
    let q = quirks();
    let name = "localhost/zoo:latest";
    let tmp = tempfile::tempdir().unwrap();
    let objs = tmp.path().join("objects");
    let mkfs = |out: &str| {
        let o = cst(
            &q.store,
            &[
                "--log-level",
                "info",
                "composefs",
                "mkfs",
                name,
                "-o",
                tmp.path().join(out).to_str().unwrap(),
                "--digest-store",
                objs.to_str().unwrap(),
            ],
        );
        ok("mkfs", o);
    };
    mkfs("a.cfs");
    let mut objects = Vec::new();
    for d in std::fs::read_dir(&objs).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            objects.push(f.unwrap().path());
        }
    }
    // zoo/big.bin (3 MiB) and usr/bin/ping, usr/bin/exactly65.
    assert_eq!(objects.len(), 3, "{objects:?}");
    let mut inodes = Vec::new();
    for p in &objects {
        let md = std::fs::metadata(p).unwrap();
        assert_eq!(md.nlink(), 1, "{}: a hard link", p.display());
        assert_eq!(md.mode() & 0o7777, 0o644);
        inodes.push((md.dev(), md.ino()));
        let v = composefs_storage::composefs::verity_of_reader::<Sha256HashValue>(
            &mut std::fs::File::open(p).unwrap(),
        )
        .unwrap();
        let rel = p
            .strip_prefix(&objs)
            .unwrap()
            .to_str()
            .unwrap()
            .replace('/', "");
        assert_eq!(rel, v.to_hex());
    }
    // A second run finds them: same files (same inodes), same image.
    let o = cst(
        &q.store,
        &[
            "--log-level",
            "info",
            "composefs",
            "mkfs",
            name,
            "-o",
            tmp.path().join("b.cfs").to_str().unwrap(),
            "--digest-store",
            objs.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("0 objects written, 3 already there"), "{err}");
    for (p, ino) in objects.iter().zip(&inodes) {
        let md = std::fs::metadata(p).unwrap();
        assert_eq!((md.dev(), md.ino()), *ino);
    }
    assert_eq!(
        std::fs::read(tmp.path().join("a.cfs")).unwrap(),
        std::fs::read(tmp.path().join("b.cfs")).unwrap()
    );
}

// ---- `composefs import --repo`: a composefs-rs repository, read by composefs-rs ----

fn import(store: &TestStore, name: &str, repo: &Path) -> Output {
    cst(
        store,
        &[
            "--log-level",
            "info",
            "composefs",
            "import",
            name,
            "--repo",
            repo.to_str().unwrap(),
        ],
    )
}

/// After our import, composefs-rs's library opens the repository, finds the image by its
/// ref and computes the digest `cstorage composefs digest` prints, from the layer
/// splitstreams we wrote; its fsck finds nothing wrong. composefs-oci's own import of the
/// same image (OCI layout exported by skopeo from the same store) into another repository
/// gives byte-identical layer splitstreams (same object IDs), the same objects, the same
/// config splitstream and the same EROFS image. What may differ, and does: the manifest —
/// skopeo's OCI layout holds a manifest it wrote (its own compressed layer blobs and their
/// digests), not the store's, so the manifest digest and its splitstream differ; the ref
/// points to each repository's own manifest.
#[test]
fn import_is_read_by_composefs_rs_like_its_own_import() {
    let fx = fx();
    let q = quirks();
    let cases: [(&TestStore, &str); 3] = [
        (&fx.native, "localhost/three:latest"),
        (&fx.fuse, "localhost/three:latest"),
        (&q.store, "localhost/zoo:latest"),
    ];
    for (store, name) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let ours = tmp.path().join("ours");
        let o = import(store, name, &ours);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        let printed = String::from_utf8(ok("import", o)).unwrap();
        let digest = String::from_utf8(cst_ok(store, &["composefs", "digest", name])).unwrap();
        assert_eq!(printed.trim(), digest.trim(), "{name}: {err}");
        let v = composefs_oracle::view::<Sha256HashValue>(&ours, name)
            .unwrap_or_else(|e| panic!("{name}: composefs-rs cannot read our import: {e:#}"));
        assert!(v.fsck_ok, "{name}: {}", v.fsck_report);
        assert_eq!(v.image_ref.as_deref(), Some(digest.trim()), "{name}");
        assert_eq!(v.computed_digest.as_deref(), Ok(digest.trim()), "{name}");
        let diff_ids: Vec<String> = v.layers.iter().map(|l| l.0.clone()).collect();
        assert_eq!(v.layer_tar_sha256, diff_ids, "{name}: reassembled tars");
        // The objects are copies (or reflinks): one link each, none is a store file.
        let mut n = 0;
        for d in std::fs::read_dir(ours.join("objects")).unwrap() {
            let d = d.unwrap();
            if !d.file_type().unwrap().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(d.path()).unwrap() {
                let md = f.unwrap().metadata().unwrap();
                assert_eq!(md.nlink(), 1, "{name}: an object is a hard link");
                n += 1;
            }
        }
        assert!(n > 0);

        // composefs-oci's own import of the same image.
        let layout = tmp.path().join("layout");
        skopeo_export(store, name, &layout, "t");
        let theirs = tmp.path().join("theirs");
        composefs_oracle::import_layout_tagged::<Sha256HashValue>(&layout, "t", &theirs, name)
            .unwrap_or_else(|e| panic!("{name}: composefs-oci import: {e:#}"));
        let t = composefs_oracle::view::<Sha256HashValue>(&theirs, name).unwrap();
        assert!(t.fsck_ok, "{name}: {}", t.fsck_report);
        assert_eq!(t.image_ref, v.image_ref, "{name}: EROFS image");
        assert_eq!(t.computed_digest, v.computed_digest, "{name}");
        assert_eq!(t.layers, v.layers, "{name}: layer splitstreams / objects");
        assert_eq!(t.config_digest, v.config_digest, "{name}: config");
        assert_eq!(
            t.config_verity, v.config_verity,
            "{name}: config splitstream"
        );
        assert_ne!(
            t.manifest_digest, v.manifest_digest,
            "{name}: the manifests"
        );
        // Every object (contents, splitstreams, JSON, EROFS) except the manifest's JSON and
        // splitstream is in both repositories.
        let objects = |r: &Path| -> std::collections::BTreeSet<String> {
            let mut s = std::collections::BTreeSet::new();
            for d in std::fs::read_dir(r.join("objects")).unwrap() {
                let d = d.unwrap();
                if d.file_type().unwrap().is_dir() {
                    for f in std::fs::read_dir(d.path()).unwrap() {
                        s.insert(format!(
                            "{}{}",
                            d.file_name().to_str().unwrap(),
                            f.unwrap().file_name().to_str().unwrap()
                        ));
                    }
                }
            }
            s
        };
        let (a, b) = (objects(&ours), objects(&theirs));
        assert_eq!(
            a.difference(&b).count(),
            2,
            "{name}: ours only: {a:?} {b:?}"
        );
        // composefs-oci writes the config and manifest splitstreams twice (before and after
        // linking the EROFS image); the first ones stay as unreferenced objects.
        assert!(b.difference(&a).count() >= 2, "{name}");

        // A second import reuses every object and layer.
        let o = import(store, name, &ours);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(
            String::from_utf8(ok("import", o)).unwrap().trim(),
            digest.trim()
        );
        assert!(
            err.contains("0 layers written") && err.contains("0 objects written"),
            "{err}"
        );
    }
}

/// A corrupted file (same size, only the CRC tells) fails the import naming layer and file;
/// no stream, image or ref is written, and the ref of an earlier import stays as it was.
/// Objects stored before the failure are left unreferenced (composefs-rs's gc removes them).
#[test]
fn import_of_corrupted_file_fails_and_leaves_no_ref() {
    let fx = fx();
    let store = TestStore::new();
    store.copy_in(
        &format!("oci:{}:three", fx.layout.display()),
        "localhost/three:latest",
        &[],
    );
    let name = "localhost/three:latest";
    let tmp = tempfile::tempdir().unwrap();
    let earlier = tmp.path().join("earlier");
    ok("import", import(&store, name, &earlier));
    let before = composefs_oracle::view::<Sha256HashValue>(&earlier, name).unwrap();
    let layers: serde_json::Value = serde_json::from_slice(&cst_ok(
        &store,
        &["--format", "json", "image", "inspect", name],
    ))
    .unwrap();
    let top = layers[0]["layers"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let f = store
        .root
        .join("overlay")
        .join(&top)
        .join("diff/etc/passwd");
    let mut data = std::fs::read(&f).unwrap();
    data[0] ^= 0x20;
    std::fs::write(&f, &data).unwrap();
    let fresh = tmp.path().join("fresh");
    for repo in [&fresh, &earlier] {
        let o = import(&store, name, repo);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "import succeeded on a corrupted file");
        assert!(
            err.contains(&top) && err.contains("etc/passwd") && err.contains("CRC"),
            "{err}"
        );
    }
    // The fresh repository has no stream, no image, no ref.
    for sub in ["streams", "images"] {
        let d = fresh.join(sub);
        let left: Vec<_> = std::fs::read_dir(&d)
            .map(|r| r.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{}: {left:?}", d.display());
    }
    let (objs, _, _) = composefs_oracle::gc_dry_run::<Sha256HashValue>(&fresh).unwrap();
    let mut stored = 0;
    for d in std::fs::read_dir(fresh.join("objects")).unwrap() {
        let d = d.unwrap();
        if d.file_type().unwrap().is_dir() {
            stored += std::fs::read_dir(d.path()).unwrap().count() as u64;
        }
    }
    assert_eq!(objs, stored, "every object left is unreferenced");
    // The earlier import is untouched.
    assert_eq!(
        composefs_oracle::view::<Sha256HashValue>(&earlier, name).unwrap(),
        before
    );
}
