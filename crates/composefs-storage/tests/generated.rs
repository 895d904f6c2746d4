//! Layers without tar-split (container layers): the generated tar has the entries c/storage's
//! own diff produces for the same directory.

use std::collections::BTreeMap;
use std::process::Command;

use composefs_storage::{ExportOptions, Storage, StorageConfig, Verify};
use serde_json::Value;
use testutil::{
    Blob, OciLayout, TarFormat, TestStore, gnu_tar, go_arch, make_tree, run, stdout_of,
};

fn open(store: &TestStore) -> Storage {
    let mut c = StorageConfig::for_graphroot(&store.root);
    c.set_runroot(&store.runroot);
    c.set_driver_options(store.all_opts());
    Storage::open_with_config(&c).unwrap()
}

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
    let store = TestStore::new();
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
    run(Command::new("mknod")
        .arg(diff.join("etc/old"))
        .args(["c", "0", "0"]));
    run(Command::new("setfattr")
        .args(["-n", "trusted.overlay.opaque", "-v", "y"])
        .arg(diff.join("opq")));
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
    let (ours, go) = (entries(&ours), entries(&go));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        go.keys().collect::<Vec<_>>()
    );
    for (name, o) in &ours {
        assert_eq!(o, &go[name], "{name}");
    }
    // The whiteout and the opaque marker are there, in AUFS form.
    assert!(ours.contains_key("etc/.wh.old"));
    assert!(ours.contains_key("opq/.wh..wh..opq"));
}
