//! Layers without tar-split (container layers): the generated tar has the entries c/storage's
//! own diff produces for the same directory.

use std::collections::BTreeMap;
use std::process::Command;

use composefs_storage::{ExportOptions, Verify};
use serde_json::Value;
use testutil::{
    Blob, OciLayout, TarFormat, TestStore, gnu_tar, go_arch, make_tree, run, stdout_of,
};

mod common;
use common::open;

/// Entries of a tar as Python's tarfile sees them, keyed by name.
fn entries(tar: &[u8]) -> BTreeMap<String, Value> {
    let tf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tf.path(), tar).unwrap();
    let script = r#"
import hashlib, json, sys, tarfile
t = tarfile.open(sys.argv[1])
for m in t:
    data = t.extractfile(m).read() if m.isreg() else b""
    x = {k: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    print(json.dumps({"name": m.name, "type": m.type.decode(), "mode": m.mode, "uid": m.uid, "gid": m.gid,
        "size": m.size if m.isreg() else 0, "mtime": int(m.mtime), "link": m.linkname,
        "dev": [m.devmajor, m.devminor] if m.ischr() or m.isblk() else None,
        "sha": hashlib.sha256(data).hexdigest(), "xattrs": x}))
"#;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(tf.path())).stdout;
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["name"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn container_layer_tar_has_the_entries_c_storage_generates() {
    check(TestStore::new(), true);
}

#[test]
fn container_layer_in_a_fuse_overlayfs_store() {
    check(TestStore::fuse(), false);
}

fn check(store: TestStore, native: bool) {
    let base_dir = store.root.parent().unwrap().join("base");
    make_tree(
        &base_dir,
        &[
            ("etc/", b""),
            ("etc/old", b"old\n"),
            ("opq/", b""),
            ("opq/gone", b"x\n"),
        ],
    );
    let tar = gnu_tar(&base_dir, TarFormat::Posix, &["--owner=0", "--group=0"]);
    let mut l = OciLayout::create(&store.root.parent().unwrap().join("layout"));
    l.add_image("base", &[tar], Blob::Gzip, go_arch());
    store.copy_in(&l.source("base"), "localhost/base:latest", &[]);
    let image_id = stdout_of(store.cs().args(["images", "-q"]))
        .trim()
        .to_string();
    stdout_of(store.cs().args(["create-container", &image_id]));
    let s = open(&store);
    let ctr = &s.list_containers().unwrap()[0];
    let layer = s.find_layer(ctr.layer.as_deref().unwrap()).unwrap();
    assert!(!layer.has_tar_split().unwrap());
    // What a running container would leave in its upper directory.
    let diff = store.root.join("overlay").join(layer.id()).join("diff");
    make_tree(
        &diff,
        &[
            ("new/", b""),
            ("new/file", b"new content\n"),
            ("new/empty", b""),
            ("etc/", b""),
            ("opq/", b""),
            ("opq/fresh", b"fresh\n"),
        ],
    );
    std::os::unix::fs::symlink("file", diff.join("new/link")).unwrap();
    std::fs::hard_link(diff.join("new/file"), diff.join("new/hard")).unwrap();
    if native {
        // What the kernel writes for a deletion and an opaque directory.
        run(Command::new("mknod")
            .arg(diff.join("etc/old"))
            .args(["c", "0", "0"]));
        run(Command::new("setfattr")
            .args(["-n", "trusted.overlay.opaque", "-v", "y"])
            .arg(diff.join("opq")));
    } else {
        // fuse-overlayfs stores keep AUFS-style whiteout files.
        for w in ["etc/.wh.old", "opq/.wh..wh..opq"] {
            std::fs::write(diff.join(w), b"").unwrap();
            std::fs::set_permissions(
                diff.join(w),
                std::os::unix::fs::PermissionsExt::from_mode(0o000),
            )
            .unwrap();
        }
    }
    run(Command::new("setfattr")
        .args(["-n", "user.note", "-v", "kept"])
        .arg(diff.join("new/file")));
    run(Command::new("mkfifo").arg(diff.join("new/fifo")));

    let mut ours = Vec::new();
    let rep = layer
        .export(&mut ours, &ExportOptions::new(Verify::Crc))
        .unwrap();
    assert!(!rep.reproducible);
    let go = run(store.cs().args(["diff", "-u", layer.id()])).stdout;
    let (mut ours, mut go) = (entries(&ours), entries(&go));
    if !native {
        // With a mount program c/storage diffs the mounted trees ("naive diff"), which has
        // no opaque markers: an opaque directory becomes whiteouts of each lower child.
        // The generated tar keeps the marker the layer has; both give the same filesystem.
        assert!(ours.remove("opq/.wh..wh..opq").is_some());
        assert!(go.remove("opq/.wh.gone").is_some());
        // The naive diff reports times of the whiteout files it synthesizes, not ours.
        ours.get_mut("etc/.wh.old").unwrap()["mtime"] = Value::Null;
        go.get_mut("etc/.wh.old").unwrap()["mtime"] = Value::Null;
    }
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        go.keys().collect::<Vec<_>>()
    );
    for (name, o) in &ours {
        assert_eq!(o, &go[name], "{name}");
    }
    // The whiteout is there, in AUFS form (and the opaque marker, checked above for fuse).
    assert!(ours.contains_key("etc/.wh.old"));
    if native {
        assert!(ours.contains_key("opq/.wh..wh..opq"));
    }
}
