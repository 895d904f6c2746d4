//! The calls embedders asked for, against real stores written by skopeo: which layer
//! supplied each file of a tar-split stream, one layer's own files with whiteout and opaque
//! markers (checked against the layer tars as Python's tarfile reads them), DiffIDs resolved
//! in a batch (checked against `containers-storage layers`), and a store opened from a
//! directory handle.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use composefs_storage::layer_files::{LayerEntryKind, WhiteoutForm};
use composefs_storage::rootfs::FileKind;
use composefs_storage::{Digest, Layer, Storage, StorageConfig, TarSplitFdStream, TarSplitItem};
use serde_json::Value;
use testutil::fixtures::rootfs_layer;
use testutil::{Blob, OciLayout, TestStore, go_arch, run, sha256_hex};

mod common;
use common::{config_of, open};

struct Fx {
    native: TestStore,
    fuse: TestStore,
    layout: OciLayout,
    /// The three layer tars of image `three`, base first.
    tars: Vec<Vec<u8>>,
}

fn fx() -> &'static Fx {
    static F: OnceLock<Fx> = OnceLock::new();
    F.get_or_init(|| {
        let dir = testutil::fixture_dir(&std::env::temp_dir(), "cst-em");
        let tars: Vec<Vec<u8>> = (0..3).map(|i| rootfs_layer(i, false)).collect();
        let mut layout = OciLayout::create(&dir.join("layout"));
        layout.add_image("three", &tars, Blob::Gzip, go_arch());
        // A top layer that adds again, with the same content, a file of the base layer.
        let again = testutil::python_tar(
            r#"
import io, sys, tarfile
out = io.BytesIO()
t = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)
d = tarfile.TarInfo("etc/"); d.type = tarfile.DIRTYPE; d.mode = 0o755; d.mtime = 1700000000
t.addfile(d)
data = b"root:x:0:0::/root:/bin/sh\n"
f = tarfile.TarInfo("etc/passwd"); f.size = len(data); f.mode = 0o644; f.mtime = 1700000000
t.addfile(f, io.BytesIO(data))
t.close()
sys.stdout.buffer.write(out.getvalue())
"#,
        );
        layout.add_image("again", &[tars[0].clone(), again], Blob::Plain, go_arch());
        let native = TestStore::at(&dir.join("n"), &[]);
        let fuse = TestStore::at(
            &dir.join("f"),
            &["overlay.mount_program=/usr/bin/fuse-overlayfs"],
        );
        for s in [&native, &fuse] {
            s.copy_in(&layout.source("three"), "localhost/three:latest", &[]);
        }
        Fx {
            native,
            fuse,
            layout,
            tars,
        }
    })
}

fn stores() -> [(&'static str, &'static TestStore); 2] {
    let fx = fx();
    [("native", &fx.native), ("fuse", &fx.fuse)]
}

/// Rebuilds the layer tar from the stream; returns it with the supplying layer of each file.
fn reassemble(l: &Layer) -> (Vec<u8>, BTreeMap<String, String>, Vec<String>) {
    let mut stream = TarSplitFdStream::new(l).unwrap();
    let chain = stream.layer_chain().unwrap();
    let mut out = Vec::new();
    let mut from = BTreeMap::new();
    for item in stream {
        match item.unwrap() {
            TarSplitItem::Segment(b) => out.extend_from_slice(&b),
            TarSplitItem::FileContent {
                fd, name, layer, ..
            } => {
                std::fs::File::from(fd).read_to_end(&mut out).unwrap();
                from.insert(name.to_string_lossy().into_owned(), layer.to_string());
            }
        }
    }
    (out, from, chain)
}

#[test]
fn file_content_names_the_supplying_layer() {
    for (what, store) in stores() {
        let s = open(store);
        let layers = s.find_image("three").unwrap().layers().unwrap();
        assert_eq!(layers.len(), 3);
        for (i, l) in layers.iter().enumerate() {
            let (tar, from, chain) = reassemble(l);
            assert_eq!(tar, fx().tars[i], "{what} layer {i}");
            assert!(!from.is_empty());
            // skopeo extracts every file into the layer's own diff/.
            assert!(from.values().all(|id| id == l.id()), "{what} {from:?}");
            // The chain is the layer, then its parents top-most first, as the records say.
            let mut parents: Vec<String> = layers[..i].iter().map(|p| p.id().into()).collect();
            parents.reverse();
            assert_eq!(chain[0], l.id());
            assert_eq!(chain[1..], parents, "{what} layer {i}");
            assert_eq!(l.lower_layer_ids().unwrap(), parents);
        }
    }
}

#[test]
fn file_content_from_a_lower_layer() {
    // Its own store: a file is removed from the top layer's diff/ (as in a layer whose
    // diff/ lacks a file its tar has, which c/storage then reads from the lowers).
    let fx = fx();
    let store = TestStore::new();
    store.copy_in(&fx.layout.source("again"), "localhost/again:latest", &[]);
    let s = open(&store);
    let layers = s.find_image("again").unwrap().layers().unwrap();
    let (base, top) = (&layers[0], &layers[1]);
    let (before, from, _) = reassemble(top);
    assert_eq!(from["etc/passwd"], top.id());
    std::fs::remove_file(
        store
            .root
            .join(format!("overlay/{}/diff/etc/passwd", top.id())),
    )
    .unwrap();
    let (after, from, chain) = reassemble(top);
    assert_eq!(from["etc/passwd"], base.id(), "{from:?}");
    assert_eq!(chain, [top.id(), base.id()]);
    assert_eq!(after, before);
    assert_eq!(
        format!("sha256:{}", sha256_hex(&after)),
        top.diff_digest().unwrap().to_string()
    );
    // The Go implementation reads the same file from the same place.
    let go = run(store.cs().args(["diff", "-u", top.id()])).stdout;
    assert!(go == after, "containers-storage diff differs");
}

/// One member of a layer tar, as Python's tarfile reads it.
#[derive(Debug)]
struct Member {
    name: String,
    kind: String,
    target: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    sha256: String,
}

fn tar_members(tar: &[u8]) -> Vec<Member> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("l.tar");
    std::fs::write(&p, tar).unwrap();
    let script = r#"
import hashlib, json, sys, tarfile
t = tarfile.open(sys.argv[1])
out = []
for m in t.getmembers():
    kind = {tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.DIRTYPE: "dir",
            tarfile.SYMTYPE: "sym", tarfile.LNKTYPE: "lnk", tarfile.CHRTYPE: "chr",
            tarfile.BLKTYPE: "blk", tarfile.FIFOTYPE: "fifo"}[m.type]
    data = t.extractfile(m).read() if m.isreg() else b""
    out.append({"name": m.name.rstrip("/"), "kind": kind, "target": m.linkname, "mode": m.mode,
                "uid": m.uid, "gid": m.gid, "mtime": int(m.mtime),
                "sha256": hashlib.sha256(data).hexdigest()})
print(json.dumps(out))
"#;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(&p)).stdout;
    let v: Vec<Value> = serde_json::from_slice(&out).unwrap();
    v.iter()
        .map(|m| Member {
            name: m["name"].as_str().unwrap().trim_start_matches("./").into(),
            kind: m["kind"].as_str().unwrap().into(),
            target: m["target"].as_str().unwrap().into(),
            mode: m["mode"].as_u64().unwrap() as u32,
            uid: m["uid"].as_u64().unwrap() as u32,
            gid: m["gid"].as_u64().unwrap() as u32,
            mtime: m["mtime"].as_i64().unwrap(),
            sha256: m["sha256"].as_str().unwrap().into(),
        })
        .collect()
}

fn split(name: &str) -> (&str, &str) {
    name.rsplit_once('/').unwrap_or(("", name))
}

/// Checks one layer's files against its tar (as Python's tarfile reads it): every directory
/// lists exactly the tar's names (whiteouts under the name they delete, no markers), opaque
/// exactly where the tar has `.wh..wh..opq`, and every member's type, owner, mode, time,
/// content or target. `form`: the whiteout form the store uses, if known. Returns the number
/// of whiteouts the tar has.
fn check_layer_files(
    what: &str,
    i: usize,
    l: &Layer,
    tar: &[u8],
    form: Option<WhiteoutForm>,
) -> usize {
    let members = tar_members(tar);
    let files = l.files().unwrap();
    let by_name: BTreeMap<&str, &Member> = members.iter().map(|m| (m.name.as_str(), m)).collect();
    // Directory → the names the tar gives it (whiteouts under the name they delete).
    let mut children: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut opaque: BTreeSet<String> = BTreeSet::new();
    let mut whiteouts = 0;
    for m in &members {
        let (dir, base) = split(&m.name);
        let mut parts: Vec<&str> = Vec::new();
        for c in dir.split('/').filter(|c| !c.is_empty()) {
            let parent = parts.join("/");
            parts.push(c);
            children
                .entry(parent)
                .or_default()
                .insert(c.into(), "dir".into());
        }
        if base == ".wh..wh..opq" {
            opaque.insert(dir.into());
        } else if let Some(gone) = base.strip_prefix(".wh.") {
            whiteouts += 1;
            children
                .entry(dir.into())
                .or_default()
                .insert(gone.into(), "whiteout".into());
        } else {
            let kind = if m.kind == "lnk" { "reg" } else { &m.kind };
            children
                .entry(dir.into())
                .or_default()
                .insert(base.into(), kind.into());
        }
    }
    for (dir, want) in &children {
        let got: BTreeMap<String, String> = files
            .read_dir(dir)
            .unwrap_or_else(|e| panic!("{what} layer {i} read_dir {dir:?}: {e}"))
            .into_iter()
            .map(|e| {
                let k = match e.kind {
                    LayerEntryKind::Whiteout(_) => "whiteout",
                    LayerEntryKind::File(FileKind::Regular) => "reg",
                    LayerEntryKind::File(FileKind::Directory) => "dir",
                    LayerEntryKind::File(FileKind::Symlink) => "sym",
                    LayerEntryKind::File(FileKind::CharDevice) => "chr",
                    LayerEntryKind::File(FileKind::BlockDevice) => "blk",
                    LayerEntryKind::File(FileKind::Fifo) => "fifo",
                    k => panic!("{k:?}"),
                };
                (e.name.to_string_lossy().into_owned(), k.to_string())
            })
            .collect();
        assert_eq!(&got, want, "{what} layer {i} directory {dir:?}");
        let st = files.stat(dir).unwrap();
        assert_eq!(st.kind, LayerEntryKind::File(FileKind::Directory));
        assert_eq!(st.opaque, opaque.contains(dir), "{what} layer {i} {dir:?}");
        for (name, kind) in want {
            let path = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            let st = files.stat(&path).unwrap();
            if kind == "whiteout" {
                match form {
                    Some(form) => {
                        assert_eq!(st.kind, LayerEntryKind::Whiteout(form), "{what} {path}")
                    }
                    None => assert!(
                        matches!(st.kind, LayerEntryKind::Whiteout(_)),
                        "{what} {path}: {:?}",
                        st.kind
                    ),
                }
                let e = files.open(&path).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{path}: {e}");
                continue;
            }
            let Some(m) = by_name.get(path.as_str()) else {
                continue; // a directory the tar only implies
            };
            let md = &st.metadata;
            assert_eq!(md.layer, i);
            assert_eq!((md.uid, md.gid), (m.uid, m.gid), "{what} {path}");
            if m.kind != "sym" {
                assert_eq!(md.mode, m.mode, "{what} {path}");
            }
            match m.kind.as_str() {
                "reg" | "lnk" => {
                    let mut content = Vec::new();
                    files
                        .open(&path)
                        .unwrap()
                        .read_to_end(&mut content)
                        .unwrap();
                    let want = if m.kind == "lnk" {
                        &by_name[m.target.as_str()].sha256
                    } else {
                        &m.sha256
                    };
                    assert_eq!(&sha256_hex(&content), want, "{what} {path}");
                    assert_eq!(md.mtime, m.mtime, "{what} {path}");
                }
                "sym" => {
                    assert_eq!(
                        md.symlink_target.as_deref(),
                        Some(Path::new(&m.target)),
                        "{what} {path}"
                    );
                    let e = files.open(&path).unwrap_err();
                    assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{path}: {e}");
                }
                "dir" => {
                    let e = files.open(&path).unwrap_err();
                    assert_eq!(e.raw_os_error(), Some(libc::EISDIR), "{path}: {e}");
                }
                _ => {}
            }
        }
    }
    // Names the layer does not have are ENOENT, even where a lower layer has them;
    // the markers themselves are not files.
    for p in ["nonexistent", "no/such", "etc/.wh.gone", "opq/.wh..wh..opq"] {
        if by_name.contains_key(p) {
            continue;
        }
        let e = files.stat(p).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOENT),
            "{what} layer {i} {p}: {e}"
        );
        assert!(e.to_string().contains(l.id()), "{e}");
    }
    if by_name.contains_key("etc/passwd") {
        let e = files.stat("etc/passwd/x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR), "{e}");
    }
    whiteouts
}

#[test]
fn one_layer_files_match_the_layer_tar() {
    for (what, store) in stores() {
        let s = open(store);
        let layers = s.find_image("three").unwrap().layers().unwrap();
        // skopeo writes overlay whiteouts (char 0/0) in native stores and keeps `.wh.`
        // files for fuse-overlayfs.
        let form = if what == "native" {
            WhiteoutForm::CharDevice
        } else {
            WhiteoutForm::AufsFile
        };
        for (i, l) in layers.iter().enumerate() {
            let whiteouts = check_layer_files(what, i, l, &fx().tars[i], Some(form));
            assert!(i == 0 || whiteouts > 0);
        }
        // Layer::stat / open_file / read_dir are the same calls through a fresh handle.
        let top = layers.last().unwrap();
        assert!(top.stat("newdir").unwrap().opaque);
        assert_eq!(top.read_dir("newdir").unwrap().len(), 1);
        let mut v = String::new();
        top.open_file("/repl/../etc/passwd")
            .unwrap()
            .read_to_string(&mut v)
            .unwrap();
        assert_eq!(v, "changed again\n");
    }
}

#[test]
fn resolve_diff_ids_matches_go() {
    let store = &fx().native;
    let s = open(store);
    let go: BTreeMap<String, String> = store
        .go_layers()
        .iter()
        .map(|l| {
            (
                l["diff-digest"].as_str().unwrap().to_string(),
                l["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ids: Vec<Digest> = fx()
        .tars
        .iter()
        .map(|t| format!("sha256:{}", sha256_hex(t)).parse().unwrap())
        .collect();
    let unknown: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
    let ask = vec![
        ids[2].clone(),
        unknown,
        ids[0].clone(),
        ids[1].clone(),
        ids[0].clone(),
    ];
    let got = s.resolve_diff_ids(&ask).unwrap();
    let got: Vec<Option<&str>> = got.iter().map(|l| l.as_ref().map(|l| l.id())).collect();
    let want: Vec<Option<&str>> = ask
        .iter()
        .map(|d| go.get(&d.to_string()).map(String::as_str))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.iter().filter(|g| g.is_some()).count(), 4);
    assert!(s.resolve_diff_ids(&[]).unwrap().is_empty());
}

#[test]
fn from_dir_opens_the_store_of_the_handle() {
    for (what, store) in stores() {
        let dir =
            cap_std::fs::Dir::open_ambient_dir(&store.root, cap_std::ambient_authority()).unwrap();
        let s = Storage::from_dir_with_config(dir, &config_of(store)).unwrap();
        let go: BTreeSet<String> = store
            .go_images()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        let ours: BTreeSet<String> = s
            .list_images()
            .unwrap()
            .iter()
            .map(|i| i.id().to_string())
            .collect();
        assert_eq!(ours, go, "{what}");
        // Layer files are reached through the handle as through a path.
        let rootfs = s.find_image("three").unwrap().rootfs().unwrap();
        let mut v = String::new();
        rootfs
            .open("/etc/passwd")
            .unwrap()
            .read_to_string(&mut v)
            .unwrap();
        assert_eq!(v, "changed again\n");
    }
    // Without a configuration: the handle alone; messages name its path.
    let store = &fx().native;
    let dir =
        cap_std::fs::Dir::open_ambient_dir(&store.root, cap_std::ambient_authority()).unwrap();
    let s = Storage::from_dir(dir).unwrap();
    assert_eq!(s.config().graphroot, store.root);
    assert_eq!(s.list_layers().unwrap().len(), 3);
    // A directory that is no store is refused, as by `open`.
    let empty = tempfile::tempdir().unwrap();
    let dir =
        cap_std::fs::Dir::open_ambient_dir(empty.path(), cap_std::ambient_authority()).unwrap();
    let e = Storage::from_dir(dir).unwrap_err().to_string();
    assert!(e.contains(&empty.path().display().to_string()), "{e}");
}

/// The composefs store of `tests/trixie` (podman 5.4 with `use_composefs`, layers pulled as
/// zstd:chunked and stored flat), made by `tests/trixie/ensure-stores.sh` as
/// `crates/cstorage/tests/modern.rs` describes: under that script's `flock` (exclusive while
/// it completes the chroot and any missing store, then shared while this test reads).
/// Returns the storage.conf and the held lock.
fn trixie_composefs_store() -> (PathBuf, std::fs::File) {
    use std::os::fd::AsRawFd;
    let cache = std::env::var_os("CSTORAGE_TRIXIE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cstorage-trixie"));
    std::fs::create_dir_all(&cache).unwrap();
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join(".ensure.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/trixie/ensure-stores.sh");
    let out = Command::new(&script)
        .arg("--keep-stores")
        .env("CSTORAGE_TRIXIE_LOCK_HELD", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "THE TRIXIE CHROOT OR ITS STORES COULD NOT BE BUILT: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: as above; converts the lock to a shared one.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) }, 0);
    (cache.join("work/stores/composefs/storage.conf"), lock)
}

#[test]
fn flat_composefs_layers() {
    let (conf, _lock) = trixie_composefs_store();
    let s = Storage::open_with_config(&StorageConfig::from_file(&conf).unwrap()).unwrap();
    let (mut flat, mut whiteouts) = (0, 0);
    for l in s.list_layers().unwrap() {
        if !l.is_flat().unwrap() || !l.has_tar_split().unwrap() {
            continue;
        }
        flat += 1;
        // The layer tar, rebuilt and checked against the diff-digest podman recorded: the
        // original bytes, which Python's tarfile then reads.
        let mut tar = Vec::new();
        l.export(
            &mut tar,
            &composefs_storage::ExportOptions::new(composefs_storage::Verify::Digest),
        )
        .unwrap();
        let i = l.chain().unwrap().len() - 1;
        whiteouts += check_layer_files("composefs", i, &l, &tar, None);
        // Contents come from the layer's own objects only.
        let (rebuilt, from, chain) = reassemble(&l);
        assert!(rebuilt == tar);
        assert_eq!(chain, [l.id()]);
        assert!(from.values().all(|id| id == l.id()), "{from:?}");
    }
    assert!(
        flat > 0,
        "no flat layer with tar-split in {}",
        conf.display()
    );
    // The test layout deletes a file in its second layer (tests/trixie/make-oci-layout.py).
    assert!(whiteouts > 0, "no whiteout in the flat layers");
}
