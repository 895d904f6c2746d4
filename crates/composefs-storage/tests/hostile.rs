//! A catalogue of hostile and corrupted stores. Each case: a clear error naming what is wrong
//! (or, where the damage is harmless, correct results), no panic, no hang, and nothing read
//! outside the store. "Outside" is a canary directory next to the store holding a valid-looking
//! store: reading it would make the operation succeed with the canary's data.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use composefs_storage::{ExportOptions, Storage, StorageConfig, StorageError, Verify};
use serde_json::{Value, json};
use testutil::{Blob, OciLayout, TestStore, go_arch, python_tar, run};

/// A template store (two images sharing a base layer), copied for each case.
fn template() -> &'static (PathBuf, String) {
    static T: OnceLock<(PathBuf, String)> = OnceLock::new();
    T.get_or_init(|| {
        let dir = testutil::fixture_dir(&std::env::temp_dir(), "cst-ho");
        let store = TestStore::at(&dir.join("tpl"), &[]);
        let mut l = OciLayout::create(&dir.join("layout"));
        let t1 = python_tar("import tarfile,io,sys\nt=tarfile.open(fileobj=sys.stdout.buffer,mode='w|',format=tarfile.PAX_FORMAT)\nfor n in ['etc/a','etc/b']:\n d=(n*100).encode(); i=tarfile.TarInfo(n); i.size=len(d); t.addfile(i,io.BytesIO(d))\nt.close()");
        let t2 = python_tar("import tarfile,io,sys\nt=tarfile.open(fileobj=sys.stdout.buffer,mode='w|',format=tarfile.PAX_FORMAT)\nd=b'top'*1000; i=tarfile.TarInfo('app/top'); i.size=len(d); t.addfile(i,io.BytesIO(d))\nt.close()");
        l.add_image("base", std::slice::from_ref(&t1), Blob::Gzip, go_arch());
        l.add_image("app", &[t1, t2], Blob::Gzip, go_arch());
        store.copy_in(&l.source("base"), "localhost/base:latest", &[]);
        store.copy_in(&l.source("app"), "localhost/app:latest", &[]);
        let base_layer = store.go_layers().iter().find(|l| l.get("parent").is_none()).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        (dir, base_layer)
    })
}

/// A fresh copy of the template: (store root, canary root outside it).
struct Case {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    canary: PathBuf,
}

impl Case {
    fn new() -> Case {
        let (dir, _) = template();
        let tmp = tempfile::Builder::new().prefix("cst-h-").tempdir().unwrap();
        run(Command::new("cp")
            .arg("-a")
            .arg(dir.join("tpl/root"))
            .arg(tmp.path().join("root")));
        // The canary: another copy, outside the store.
        run(Command::new("cp")
            .arg("-a")
            .arg(dir.join("tpl/root"))
            .arg(tmp.path().join("canary")));
        Case {
            root: tmp.path().join("root"),
            canary: tmp.path().join("canary"),
            _tmp: tmp,
        }
    }

    fn open(&self) -> Result<Storage, StorageError> {
        let mut c = StorageConfig::for_graphroot(&self.root);
        c.set_driver_options(vec!["overlay.skip_mount_home=true".into()]);
        Storage::open_with_config(&c)
    }

    fn layers_json(&self) -> Vec<Value> {
        serde_json::from_slice(
            &std::fs::read(self.root.join("overlay-layers/layers.json")).unwrap(),
        )
        .unwrap()
    }

    fn set_layers_json(&self, v: &Value) {
        std::fs::write(
            self.root.join("overlay-layers/layers.json"),
            serde_json::to_vec(v).unwrap(),
        )
        .unwrap();
    }

    fn images_json(&self) -> Vec<Value> {
        serde_json::from_slice(
            &std::fs::read(self.root.join("overlay-images/images.json")).unwrap(),
        )
        .unwrap()
    }

    fn set_images_json(&self, v: &Value) {
        std::fs::write(
            self.root.join("overlay-images/images.json"),
            serde_json::to_vec(v).unwrap(),
        )
        .unwrap();
    }

    /// Replaces `rel` in the store with a symlink to the same path in the canary.
    fn symlink_out(&self, rel: &str) {
        let p = self.root.join(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        std::os::unix::fs::symlink(self.canary.join(rel), &p).unwrap();
    }
}

/// Every operation a reader does on the store, stopping at the first error.
fn read_everything(s: &Storage) -> Result<usize, StorageError> {
    let mut n = 0;
    for img in s.list_images()? {
        img.manifest()?;
        img.config()?;
        for l in img.layers()? {
            l.diff_dir()?;
            l.link_id()?;
            l.lower_diff_dirs()?;
            let mut out = Vec::new();
            l.export(&mut out, &ExportOptions::new(Verify::Digest))?;
            n += 1;
        }
    }
    Ok(n)
}

fn expect_err(case: &Case, want: &[&str]) -> String {
    let r = case.open().and_then(|s| read_everything(&s));
    let e = r
        .expect_err("the damaged store must give an error")
        .to_string();
    for w in want {
        assert!(e.contains(w), "error {e:?} lacks {w:?}");
    }
    e
}

#[test]
fn clean_copy_reads_fine() {
    let c = Case::new();
    assert_eq!(read_everything(&c.open().unwrap()).unwrap(), 3);
}

#[test]
fn symlinked_store_directories_are_refused() {
    for rel in ["overlay-layers", "overlay-images"] {
        let c = Case::new();
        c.symlink_out(rel);
        expect_err(&c, &[rel, "outside the store"]);
    }
    let (_, base) = template();
    // A layer's diff dir pointing outside (not an additional-layer-store layer).
    let c = Case::new();
    c.symlink_out(&format!("overlay/{base}/diff"));
    expect_err(&c, &[base, "symlink"]);
    // A whole layer directory.
    let c = Case::new();
    c.symlink_out(&format!("overlay/{base}"));
    expect_err(&c, &[base]);
    // A tar-split file.
    let c = Case::new();
    c.symlink_out(&format!("overlay-layers/{base}.tar-split.gz"));
    expect_err(&c, &[base, "outside the store"]);
    // An image's big-data directory.
    let c = Case::new();
    let img = c.images_json()[0]["id"].as_str().unwrap().to_string();
    c.symlink_out(&format!("overlay-images/{img}"));
    expect_err(&c, &[&img, "outside the store"]);
}

#[test]
fn symlinked_lock_files_are_refused() {
    for rel in ["overlay-layers/layers.lock", "overlay-images/images.lock"] {
        let c = Case::new();
        c.symlink_out(rel);
        expect_err(&c, &[rel, "outside the store"]);
    }
}

#[test]
fn zero_byte_and_missing_lock_files_are_fine() {
    let c = Case::new();
    std::fs::write(c.root.join("overlay-layers/layers.lock"), b"").unwrap();
    std::fs::remove_file(c.root.join("overlay-images/images.lock")).unwrap();
    assert_eq!(read_everything(&c.open().unwrap()).unwrap(), 3);
}

#[test]
fn fifo_where_a_file_is_expected_does_not_hang() {
    for rel in [
        "overlay-images/images.json",
        "overlay-layers/layers.json",
        "overlay-layers/layers.lock",
    ] {
        let c = Case::new();
        std::fs::remove_file(c.root.join(rel)).unwrap();
        run(Command::new("mkfifo").arg(c.root.join(rel)));
        expect_err(&c, &[rel, "FIFO"]);
    }
    // A device as a big-data item.
    let c = Case::new();
    let img = c.images_json()[0]["id"].as_str().unwrap().to_string();
    let m = c.root.join(format!("overlay-images/{img}/manifest"));
    std::fs::remove_file(&m).unwrap();
    run(Command::new("mknod").arg(&m).args(["c", "1", "5"]));
    expect_err(&c, &[&img, "character device"]);
}

#[test]
fn hostile_ids_and_keys() {
    // Layer IDs with '/', '..' or NUL, as a top layer of an image.
    for bad in ["../../etc", "a/b", "..", "x\u{0}y"] {
        let c = Case::new();
        let mut layers = c.layers_json();
        let top = layers
            .iter()
            .position(|l| l.get("parent").is_some())
            .unwrap();
        let old = layers[top]["id"].as_str().unwrap().to_string();
        layers[top]["id"] = json!(bad);
        c.set_layers_json(&Value::Array(layers));
        let mut images = c.images_json();
        for i in images.iter_mut() {
            if i["layer"] == old.as_str() {
                i["layer"] = json!(bad);
            }
        }
        c.set_images_json(&Value::Array(images));
        expect_err(&c, &["invalid layer ID"]);
    }
    // Image IDs with '..' are refused when their files are read.
    let c = Case::new();
    let mut images = c.images_json();
    images[0]["id"] = json!("..");
    c.set_images_json(&Value::Array(images));
    expect_err(&c, &["invalid image ID"]);
    // Big-data keys that would name '..' or contain '/'.
    for key in ["..", "???"] {
        let c = Case::new();
        let mut images = c.images_json();
        images[0]["big-data-names"] = json!([key]);
        images[0]["big-data-digests"] = json!({});
        c.set_images_json(&Value::Array(images));
        let s = c.open().unwrap();
        let img = &s.list_images().unwrap()[0];
        let e = img.read_big_data(key).unwrap_err().to_string();
        assert!(e.contains("big-data key"), "{e}");
    }
    // A link file and lower entries that try to climb out.
    let (_, base) = template();
    let c = Case::new();
    std::fs::write(c.root.join(format!("overlay/{base}/link")), b"../../../etc").unwrap();
    let s = c.open().unwrap();
    let e = s
        .find_layer(base)
        .unwrap()
        .link_id()
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid link ID"), "{e}");
    let c = Case::new();
    let top = c
        .layers_json()
        .iter()
        .find(|l| l.get("parent").is_some())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for lower in ["l/../../../etc", "../x", "l/"] {
        std::fs::write(c.root.join(format!("overlay/{top}/lower")), lower).unwrap();
        let s = c.open().unwrap();
        let e = s
            .find_layer(&top)
            .unwrap()
            .lower_diff_dirs()
            .unwrap_err()
            .to_string();
        assert!(e.contains("lower"), "{lower}: {e}");
    }
    // A link symlink whose target leaves the store.
    let c = Case::new();
    let link = std::fs::read_to_string(c.root.join(format!("overlay/{base}/link"))).unwrap();
    let l = c.root.join("overlay/l").join(link.trim());
    std::fs::remove_file(&l).unwrap();
    std::os::unix::fs::symlink(c.canary.join(format!("overlay/{base}/diff")), &l).unwrap();
    let s = c.open().unwrap();
    let e = s
        .find_layer(&top)
        .unwrap()
        .lower_diff_dirs()
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not ../<layer-id>/diff"), "{e}");
}

#[test]
fn parent_loops_and_deep_chains() {
    let c = Case::new();
    let mut layers = c.layers_json();
    let base = layers
        .iter()
        .position(|l| l.get("parent").is_none())
        .unwrap();
    let top = layers.iter().find(|l| l.get("parent").is_some()).unwrap()["id"].clone();
    layers[base]["parent"] = top;
    c.set_layers_json(&Value::Array(layers));
    expect_err(&c, &["loops"]);
    // A chain of 5000 layers.
    let c = Case::new();
    let mut layers = c.layers_json();
    let base = layers
        .iter()
        .position(|l| l.get("parent").is_none())
        .unwrap();
    let mut prev = None::<String>;
    for i in 0..5000 {
        let mut l = layers[base].clone();
        l["id"] = json!(format!("{i:064x}"));
        match &prev {
            Some(p) => l["parent"] = json!(p),
            None => {
                l.as_object_mut().unwrap().remove("parent");
            }
        }
        prev = Some(format!("{i:064x}"));
        layers.push(l);
    }
    let old_base = layers[base]["id"].as_str().unwrap().to_string();
    layers[base]["parent"] = json!(prev.unwrap());
    c.set_layers_json(&Value::Array(layers));
    let s = c.open().unwrap();
    let e = s
        .find_layer(&old_base)
        .unwrap()
        .chain()
        .unwrap_err()
        .to_string();
    assert!(e.contains("longer than"), "{e}");
    expect_err(&c, &["longer than"]);
}

#[test]
fn broken_json_records() {
    let cases: [(&str, &[u8], &str); 6] = [
        (
            "overlay-layers/layers.json",
            b"[{\"id\": 7}]",
            "invalid type",
        ),
        (
            "overlay-layers/layers.json",
            b"[{\"id\":\"a\",\"id\":\"b\"}]",
            "duplicate field",
        ),
        (
            "overlay-layers/layers.json",
            b"[{\"id\":\"a\",\"diff-size\":18446744073709551616}]",
            "layers.json",
        ),
        (
            "overlay-layers/layers.json",
            b"[{\"id\":\"a\",\"uidset\":[4294967296]}]",
            "layers.json",
        ),
        (
            "overlay-images/images.json",
            b"{\"not\":\"a list\"}",
            "images.json",
        ),
        (
            "overlay-images/images.json",
            b"\xff\xfe garbage",
            "images.json",
        ),
    ];
    for (rel, content, want) in cases {
        let c = Case::new();
        std::fs::write(c.root.join(rel), content).unwrap();
        let e = expect_err(&c, &[rel]);
        assert!(e.contains(want), "{rel}: {e}");
    }
    // Huge strings are read (bounded by the record file size limit), not a crash.
    let c = Case::new();
    let mut images = c.images_json();
    images[0]["names"] = json!([format!("localhost/{}:latest", "x".repeat(8 << 20))]);
    c.set_images_json(&Value::Array(images));
    let s = c.open().unwrap();
    assert_eq!(s.list_images().unwrap().len(), 2);
}

#[test]
fn sizes_near_integer_limits() {
    let c = Case::new();
    let mut layers = c.layers_json();
    for l in layers.iter_mut() {
        l["diff-size"] = json!(i64::MAX);
        l["compressed-size"] = json!(-5);
    }
    c.set_layers_json(&Value::Array(layers));
    // The rebuilt tar's size then disagrees with the record: a clear error, not an overflow.
    expect_err(&c, &["diff-size"]);
    let s = c.open().unwrap();
    let img = s.find_image("localhost/app:latest").unwrap();
    assert!(
        img.size() >= i64::MAX as u64,
        "sizes saturate instead of overflowing"
    );
    assert!(img.layers().unwrap()[0].compressed_size().is_none());
}

#[test]
fn missing_directories() {
    let (_, base) = template();
    let c = Case::new();
    std::fs::remove_dir_all(c.root.join(format!("overlay/{base}"))).unwrap();
    expect_err(&c, &[base, "layer directory not found"]);
    let c = Case::new();
    std::fs::remove_dir_all(c.root.join("overlay-layers")).unwrap();
    expect_err(&c, &["does not exist"]);
    let c = Case::new();
    std::fs::remove_dir_all(c.root.join("overlay-images")).unwrap();
    let s = c.open().unwrap();
    assert!(s.list_images().unwrap().is_empty());
    assert_eq!(s.list_layers().unwrap().len(), 2);
}

/// The canary is a complete, readable store: had any case above followed a link into it, that
/// case would have succeeded instead of failing with its stated reason.
#[test]
fn canary_would_have_been_readable() {
    let c = Case::new();
    let mut cfg = StorageConfig::for_graphroot(&c.canary);
    cfg.set_driver_options(vec!["overlay.skip_mount_home=true".into()]);
    let s = Storage::open_with_config(&cfg).unwrap();
    assert_eq!(read_everything(&s).unwrap(), 3);
}
