//! Layer export and listing against real stores written by skopeo, compared with the original
//! tars, `containers-storage diff -u`, `tar-split asm` and Python's tarfile.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use composefs_storage::tar_header::EntryType;
use composefs_storage::{ExportOptions, Layer, Storage, TarSplitFdStream, TarSplitItem, Verify};
use serde_json::Value;
use testutil::fixtures::layer_tars;
use testutil::{Blob, OciLayout, TestStore, go_arch, run, sha256_hex};

mod common;
use common::open;

struct Fx {
    native: TestStore,
    fuse: TestStore,
    /// DiffID → original tar.
    tars: BTreeMap<String, (String, Vec<u8>)>,
}

fn fx() -> &'static Fx {
    static F: OnceLock<Fx> = OnceLock::new();
    F.get_or_init(|| {
        let dir = testutil::fixture_dir(&std::env::temp_dir(), "cst-lx");
        let tars = layer_tars(&dir.join("trees"));
        let layout = dir.join("layout");
        let mut l = OciLayout::create(&layout);
        let ustar = tars.iter().find(|(n, _)| n == "ustar").unwrap().1.clone();
        for (name, tar) in &tars {
            if name == "whiteouts" {
                l.add_image(name, &[ustar.clone(), tar.clone()], Blob::Gzip, go_arch());
            } else {
                l.add_image(name, std::slice::from_ref(tar), Blob::Plain, go_arch());
            }
        }
        let native = TestStore::at(&dir.join("native"), &[]);
        let fuse = TestStore::at(
            &dir.join("fuse"),
            &["overlay.mount_program=/usr/bin/fuse-overlayfs"],
        );
        for (name, _) in &tars {
            native.copy_in(&l.source(name), &format!("localhost/{name}:latest"), &[]);
            fuse.copy_in(&l.source(name), &format!("localhost/{name}:latest"), &[]);
        }
        Fx {
            native,
            fuse,
            tars: tars
                .into_iter()
                .map(|(n, t)| (format!("sha256:{}", sha256_hex(&t)), (n, t)))
                .collect(),
        }
    })
}

fn export(l: &Layer, verify: Verify) -> Vec<u8> {
    let mut v = Vec::new();
    l.export(&mut v, &ExportOptions::new(verify))
        .unwrap_or_else(|e| panic!("export of {}: {e}", l.id()));
    v
}

fn each_layer(f: impl Fn(&TestStore, &Storage, &Layer, &str, &[u8])) {
    let fx = fx();
    for store in [&fx.native, &fx.fuse] {
        let s = open(store);
        let layers = s.list_layers().unwrap();
        assert_eq!(layers.len(), fx.tars.len());
        for l in &layers {
            let diff_id = l.diff_digest().unwrap().to_string();
            let (name, tar) = &fx.tars[&diff_id];
            f(store, &s, l, name, tar);
        }
    }
}

#[test]
fn export_is_the_original_tar_and_matches_go() {
    each_layer(|store, _s, l, name, tar| {
        let ours = export(l, Verify::Digest);
        assert_eq!(ours.len() as u64, l.diff_size().unwrap(), "{name}");
        assert_eq!(
            format!("sha256:{}", sha256_hex(&ours)),
            l.diff_digest().unwrap().to_string(),
            "{name}"
        );
        assert!(ours == *tar, "{name}: export differs from the original tar");
        // containers-storage diff -u
        let go = run(store.cs().args(["diff", "-u", l.id()])).stdout;
        assert!(
            go == ours,
            "{name}: differs from containers-storage diff -u"
        );
        // tar-split asm over the same diff directory
        let out = store
            .root
            .parent()
            .unwrap()
            .join(format!("asm-{}.tar", l.id()));
        run(Command::new("tar-split")
            .arg("asm")
            .arg("--input")
            .arg(
                store
                    .root
                    .join(format!("overlay-layers/{}.tar-split.gz", l.id())),
            )
            .arg("--path")
            .arg(store.root.join(format!("overlay/{}/diff", l.id())))
            .arg("--output")
            .arg(&out));
        assert!(
            std::fs::read(&out).unwrap() == ours,
            "{name}: differs from tar-split asm"
        );
        std::fs::remove_file(out).unwrap();
        // Every verification mode gives the same bytes.
        assert!(
            export(l, Verify::None) == ours && export(l, Verify::Crc) == ours,
            "{name}"
        );
    });
}

/// CRC-64 with the ISO polynomial as Go's `hash/crc64` computes it (what tar-split records).
fn crc64_iso(data: &[u8]) -> u64 {
    let mut crc = !0u64;
    for &b in data {
        crc ^= u64::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xD800_0000_0000_0000
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn fd_stream_reassembles_the_layer() {
    each_layer(|_store, _s, l, name, tar| {
        let mut out = Vec::new();
        let mut files = 0;
        for item in TarSplitFdStream::new(l).unwrap() {
            match item.unwrap() {
                TarSplitItem::Segment(b) => out.extend_from_slice(&b),
                TarSplitItem::FileContent {
                    fd,
                    size,
                    name: n,
                    crc,
                    layer,
                } => {
                    assert_eq!(&*layer, l.id(), "{n:?}");
                    let mut f = std::fs::File::from(fd);
                    let mut content = Vec::new();
                    f.read_to_end(&mut content).unwrap();
                    assert_eq!(content.len() as u64, size, "{n:?}");
                    // The CRC reported is the one of the content (computed here bit by bit,
                    // independently of the library's CRC code).
                    assert_eq!(crc, Some(crc64_iso(&content)), "{n:?}");
                    out.extend_from_slice(&content);
                    files += 1;
                }
            }
        }
        assert!(files > 0, "{name}");
        assert!(out == *tar, "{name}");
    });
}

#[test]
fn zero_copy_to_files_and_pipes() {
    let fx = fx();
    let s = open(&fx.native);
    let dir = tempfile::tempdir().unwrap();
    let mut big_files = 0;
    for l in s.list_layers().unwrap() {
        let (name, tar) = &fx.tars[&l.diff_digest().unwrap().to_string()];
        // Files of 128 KiB or more move without a copy through user space when nothing is
        // verified, and never otherwise.
        let big = l
            .entries()
            .unwrap()
            .filter(|e| {
                let h = e.as_ref().unwrap();
                h.entry_type == composefs_storage::tar_header::EntryType::Regular
                    && h.size >= 128 << 10
            })
            .count() as u64;
        big_files += big;
        for verify in [Verify::None, Verify::Crc, Verify::Digest] {
            let want_zero_copied = if verify == Verify::None { big } else { 0 };
            // A regular file (copy_file_range when not verifying).
            let p = dir.path().join(format!("{name}.tar"));
            let rep = l.export_to_path(&p, &ExportOptions::new(verify)).unwrap();
            assert_eq!(rep.bytes, tar.len() as u64);
            assert_eq!(
                rep.zero_copied_files, want_zero_copied,
                "{name} {verify:?} file"
            );
            assert!(std::fs::read(&p).unwrap() == *tar, "{name} {verify:?} file");
            // A pipe (splice when not verifying), read by another thread.
            let (r, w) = rustix::pipe::pipe().unwrap();
            let reader = std::thread::spawn(move || {
                let mut v = Vec::new();
                std::fs::File::from(r).read_to_end(&mut v).unwrap();
                v
            });
            let rep = l
                .export_to_fd(w.as_fd(), Path::new("pipe"), &ExportOptions::new(verify))
                .unwrap();
            drop(w);
            assert!(reader.join().unwrap() == *tar, "{name} {verify:?} pipe");
            assert_eq!(
                rep.zero_copied_files, want_zero_copied,
                "{name} {verify:?} pipe"
            );
        }
        // No temporary files are left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.iter()
                .all(|n| !n.to_string_lossy().contains("cstorage-tmp-")),
            "{left:?}"
        );
    }
    assert!(
        big_files > 0,
        "the fixture has files large enough to be moved zero-copy"
    );
}

/// Python's tarfile listing of a tar (an independent parser).
fn python_listing(tar: &[u8]) -> Vec<Value> {
    let tf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tf.path(), tar).unwrap();
    let script = r#"
import json, sys, tarfile
t = tarfile.open(sys.argv[1], encoding="utf-8", errors="surrogateescape")
for m in t:
    x = {k[len("SCHILY.xattr."):]: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    print(json.dumps({"path": m.name.encode("utf-8", "surrogateescape").hex(), "type": m.type.decode(),
        "mode": m.mode, "uid": m.uid, "gid": m.gid, "size": m.size if m.isreg() else 0, "mtime": m.mtime,
        "link": m.linkname, "major": m.devmajor, "minor": m.devminor, "xattrs": x}))
"#;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(tf.path())).stdout;
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn listing_from_tar_split_matches_python_tarfile() {
    each_layer(|_store, _s, l, name, tar| {
        let ours: Vec<_> = l.entries().unwrap().map(|e| e.unwrap()).collect();
        let py = python_listing(tar);
        assert_eq!(ours.len(), py.len(), "{name}");
        for (h, p) in ours.iter().zip(&py) {
            let ctx = format!("{name}: {}", h.path_lossy());
            // Python strips the trailing slash of directory names.
            let mut path = h.path.clone();
            if h.entry_type == EntryType::Directory && path.len() > 1 && path.ends_with(b"/") {
                path.pop();
            }
            assert_eq!(hex::encode(&path), p["path"].as_str().unwrap(), "{ctx}");
            let ty = match h.entry_type {
                EntryType::Regular => ["0", "\0", "7"].as_slice(),
                EntryType::HardLink => &["1"],
                EntryType::Symlink => &["2"],
                EntryType::CharDevice => &["3"],
                EntryType::BlockDevice => &["4"],
                EntryType::Directory => &["5"],
                EntryType::Fifo => &["6"],
                _ => &["?"],
            };
            assert!(
                ty.contains(&p["type"].as_str().unwrap()),
                "{ctx}: {:?} vs {}",
                h.entry_type,
                p["type"]
            );
            assert_eq!(
                u64::from(h.mode & 0o7777),
                p["mode"].as_u64().unwrap() & 0o7777,
                "{ctx}"
            );
            assert_eq!(h.uid, p["uid"].as_u64().unwrap(), "{ctx}");
            assert_eq!(h.gid, p["gid"].as_u64().unwrap(), "{ctx}");
            let size = if h.entry_type == EntryType::Regular {
                h.size
            } else {
                0
            };
            assert_eq!(size, p["size"].as_u64().unwrap(), "{ctx}");
            let mtime = h.mtime as f64 + f64::from(h.mtime_nsec) / 1e9;
            assert!(
                (mtime - p["mtime"].as_f64().unwrap()).abs() < 1e-6,
                "{ctx}: {mtime} vs {}",
                p["mtime"]
            );
            assert_eq!(h.link_target_lossy(), p["link"].as_str().unwrap(), "{ctx}");
            if matches!(h.entry_type, EntryType::CharDevice | EntryType::BlockDevice) {
                assert_eq!(
                    u64::from(h.dev_major),
                    p["major"].as_u64().unwrap(),
                    "{ctx}"
                );
                assert_eq!(
                    u64::from(h.dev_minor),
                    p["minor"].as_u64().unwrap(),
                    "{ctx}"
                );
            }
            let x: BTreeMap<String, String> = h
                .xattrs
                .iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            let px: BTreeMap<String, String> = serde_json::from_value(p["xattrs"].clone()).unwrap();
            assert_eq!(x, px, "{ctx}");
        }
    });
}
