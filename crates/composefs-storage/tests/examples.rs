//! Runs the crate's examples (`examples/`, which `cargo test` builds) against a real store
//! written by skopeo and checks what they print or write against the Go tools and the
//! original layer tars: the image list against `containers-storage images`, the config
//! against `skopeo inspect --config --raw`, exported layers against their DiffIDs, the
//! object-store import reassembled from its split stream and objects (and, with store and
//! repository on a loop-mounted btrfs, its objects reflinked: `filefrag` reports their
//! extents shared), and the merged tree against `umoci unpack` of the same image.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use testutil::fixtures::rootfs_layer;
use testutil::{Blob, OciLayout, TestStore, go_arch, run, sha256_file, sha256_hex, stdout_of};

struct Fx {
    store: TestStore,
    /// The layer tars of image `three`, base first.
    tars: Vec<Vec<u8>>,
    /// What `umoci unpack` makes of `three`.
    umoci: PathBuf,
    dir: PathBuf,
}

fn fx() -> &'static Fx {
    static F: OnceLock<Fx> = OnceLock::new();
    F.get_or_init(|| {
        testutil::require_tool("umoci");
        let dir = testutil::fixture_dir(&std::env::temp_dir(), "cst-ex");
        let tars: Vec<Vec<u8>> = (0..3).map(|i| rootfs_layer(i, false)).collect();
        let layout = dir.join("layout");
        let mut l = OciLayout::create(&layout);
        l.add_image("three", &tars, Blob::Gzip, go_arch());
        l.add_image("one", &tars[..1], Blob::Plain, go_arch());
        let store = TestStore::at(&dir.join("s"), &[]);
        store.copy_in(&l.source("three"), "localhost/three:latest", &[]);
        store.copy_in(&l.source("one"), "localhost/one:v1", &[]);
        let bundle = dir.join("bundle");
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:three", layout.display()))
            .arg(&bundle));
        Fx {
            store,
            tars,
            umoci: bundle.join("rootfs"),
            dir,
        }
    })
}

/// The example binary `name`, next to this test's own directory (`target/<profile>/examples`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let p = profile_dir.join("examples").join(name);
    let how =
        "the examples are built by `cargo test -p composefs-storage` (or `cargo build --examples`)";
    let built = std::fs::metadata(&p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}: {how}", p.display()));
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.rs"));
    let changed = std::fs::metadata(&source).unwrap().modified().unwrap();
    assert!(
        built >= changed,
        "{} is older than {}: {how}",
        p.display(),
        source.display()
    );
    p
}

fn run_example(name: &str, args: &[&str]) -> Output {
    let root = fx().store.root.display().to_string();
    let mut all = vec![root.as_str()];
    all.extend_from_slice(args);
    run(Command::new(example(name)).args(&all))
}

#[test]
fn list_images_matches_containers_storage() {
    let out = String::from_utf8(run_example("list_images", &[]).stdout).unwrap();
    let ours: BTreeMap<String, String> = out
        .lines()
        .map(|l| {
            let (id, names) = l.split_once('\t').unwrap();
            (id.to_string(), names.to_string())
        })
        .collect();
    let go: BTreeMap<String, String> = fx()
        .store
        .go_images()
        .iter()
        .map(|i| {
            let names: Vec<&str> = i["names"]
                .as_array()
                .map(|a| a.iter().map(|n| n.as_str().unwrap()).collect())
                .unwrap_or_default();
            (i["id"].as_str().unwrap().to_string(), names.join(","))
        })
        .collect();
    assert_eq!(ours, go);
    assert_eq!(ours.len(), 2);
}

#[test]
fn image_config_is_what_skopeo_reads() {
    let store = &fx().store;
    for (image, query) in [
        ("localhost/three:latest", "three"),
        ("localhost/one:v1", "one:v1"),
    ] {
        let ours = run_example("image_config", &[query]).stdout;
        let skopeo = run(Command::new("skopeo")
            .args(["inspect", "--config", "--raw"])
            .arg(format!("{}{image}", store.spec())))
        .stdout;
        assert!(!ours.is_empty());
        assert!(ours == skopeo, "{image}: config differs from skopeo's");
    }
    // An unknown image is one line on stderr and exit status 1.
    let out = Command::new(example("image_config"))
        .arg(&store.root)
        .arg("nosuchimage")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuchimage"));
}

#[test]
fn export_layer_writes_the_layer_tar() {
    let fx = fx();
    let go: BTreeMap<String, String> = fx
        .store
        .go_layers()
        .iter()
        .map(|l| {
            (
                l["diff-digest"].as_str().unwrap().to_string(),
                l["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let out_dir = tempfile::tempdir().unwrap();
    for (i, tar) in fx.tars.iter().enumerate() {
        let out = out_dir.path().join(format!("layer{i}.tar"));
        run_example(
            "export_layer",
            &["three", &i.to_string(), out.to_str().unwrap()],
        );
        let digest = format!("sha256:{}", sha256_file(&out));
        // The store has a layer of that DiffID, and the bytes are the original tar.
        assert!(go.contains_key(&digest), "layer {i}: {digest}");
        assert!(std::fs::read(&out).unwrap() == *tar, "layer {i}");
    }
    // A failed export (no such layer) leaves the existing file as it was, and nothing else.
    let out = out_dir.path().join("layer0.tar");
    let before = std::fs::read(&out).unwrap();
    let r = Command::new(example("export_layer"))
        .arg(&fx.store.root)
        .args(["three", "7"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 3);
}

/// Reads the split stream format documented in `examples/import_layer.rs` and reassembles
/// the tar from it and the objects, checking each object's name against its content.
fn reassemble(repo: &Path, stream: &[u8]) -> (Vec<u8>, usize) {
    assert_eq!(&stream[..8], b"CSSPLIT1");
    let mut at = 8;
    let mut out = Vec::new();
    let mut objects = 0;
    let u64_at = |at: usize| u64::from_le_bytes(stream[at..at + 8].try_into().unwrap()) as usize;
    while at < stream.len() {
        let kind = stream[at];
        let n = u64_at(at + 1);
        at += 9;
        match kind {
            b'I' => {
                out.extend_from_slice(&stream[at..at + n]);
                at += n;
            }
            b'X' => {
                let hex = hex::encode(&stream[at..at + 32]);
                at += 32;
                let obj = std::fs::read(repo.join("objects").join(&hex[..2]).join(&hex[2..]))
                    .unwrap_or_else(|e| panic!("object {hex}: {e}"));
                assert_eq!(sha256_hex(&obj), hex);
                assert_eq!(obj.len(), n);
                out.extend_from_slice(&obj);
                objects += 1;
            }
            k => panic!("record type {k}"),
        }
    }
    (out, objects)
}

#[test]
fn import_layer_into_an_object_store_reassembles_the_tar() {
    let fx = fx();
    let repo = tempfile::tempdir_in(&fx.dir).unwrap();
    for (i, tar) in fx.tars.iter().enumerate() {
        let out = run_example(
            "import_layer",
            &["three", &i.to_string(), repo.path().to_str().unwrap()],
        );
        let summary = String::from_utf8_lossy(&out.stderr).into_owned();
        let stream = std::fs::read(repo.path().join("streams").join(sha256_hex(tar))).unwrap();
        let (rebuilt, objects) = reassemble(repo.path(), &stream);
        assert!(rebuilt == *tar, "layer {i}: reassembled tar differs");
        assert!(objects > 0, "layer {i}");
        // Reflinked where the file system can, copied otherwise; each object once.
        assert!(
            summary.contains("reflinked") && summary.contains("copied"),
            "{summary}"
        );
    }
    // Importing again reuses every object and rewrites the same stream.
    let out = run_example(
        "import_layer",
        &["three", "0", repo.path().to_str().unwrap()],
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains(" 0 objects reflinked, 0 copied"),
        "{summary}"
    );
    // No temporary files are left.
    let leftovers = stdout_of(
        Command::new("find")
            .arg(repo.path())
            .args(["-name", ".*", "-type", "f"]),
    );
    assert_eq!(leftovers, "");
}

/// `walk_image`'s line for a path of the unpacked tree.
fn line_of(root: &Path, path: &str) -> String {
    let full = root.join(path.trim_start_matches('/'));
    let md = std::fs::symlink_metadata(&full).unwrap();
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "socket"
    };
    let size = if ft.is_file() {
        md.size().to_string()
    } else {
        "-".into()
    };
    let mut l = format!(
        "{path} {kind} {:04o} {} {} {size}",
        md.mode() & 0o7777,
        md.uid(),
        md.gid()
    );
    if ft.is_symlink() {
        l.push_str(&format!(
            " -> {}",
            std::fs::read_link(&full).unwrap().display()
        ));
    }
    l
}

fn umoci_lines(root: &Path) -> Vec<String> {
    let mut out = vec![line_of(root, "/")];
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
        let mut names: Vec<String> = std::fs::read_dir(root.join(rel.trim_start_matches('/')))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let p = format!("{}/{n}", rel.trim_end_matches('/'));
            out.push(line_of(root, &p));
            if std::fs::symlink_metadata(root.join(p.trim_start_matches('/')))
                .unwrap()
                .is_dir()
            {
                walk(root, &p, out);
            }
        }
    }
    walk(root, "/", &mut out);
    out
}

#[test]
fn walk_image_matches_umoci_unpack() {
    let fx = fx();
    let ours = String::from_utf8(run_example("walk_image", &["three"]).stdout).unwrap();
    let ours: Vec<&str> = ours.lines().collect();
    let theirs = umoci_lines(&fx.umoci);
    // The tars have no entry for the root directory: its mode is that of the directory
    // each tool made (c/storage's diff/, umoci's rootfs/).
    assert!(ours[0].starts_with("/ dir "), "{}", ours[0]);
    assert_eq!(ours[1..], theirs[1..]);
    assert!(ours.iter().any(|l| l.starts_with("/opq/new file")));
    assert!(!ours.iter().any(|l| l.contains(".wh.")));
}

/// A btrfs file system in a loop-mounted image file, unmounted (lazily) on drop.
struct LoopBtrfs {
    dir: tempfile::TempDir,
}

impl LoopBtrfs {
    fn new(base: &Path) -> LoopBtrfs {
        testutil::require_tool("mkfs.btrfs");
        let dir = tempfile::tempdir_in(base).unwrap();
        let img = dir.path().join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        run(Command::new("mkfs.btrfs").arg("-q").arg(&img));
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        LoopBtrfs { dir }
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
    }
}

/// `filefrag -v` (e2fsprogs) flags an extent `shared` when another file references it.
fn has_shared_extents(p: &Path) -> bool {
    stdout_of(Command::new("filefrag").arg("-v").arg(p))
        .lines()
        .any(|l| l.contains("shared"))
}

#[test]
fn import_layer_reflinks_on_btrfs() {
    let fx = fx();
    let fs = LoopBtrfs::new(&fx.dir);
    // A layer with a file big enough to have its own extents (small files are stored
    // inline in btrfs metadata, which FICLONE copies).
    let tar = testutil::python_tar(
        r#"
import io, os, random, sys, tarfile
out = io.BytesIO()
t = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)
random.seed(7)
for name, size in [("big.bin", 512 << 10), ("small.txt", 10)]:
    data = bytes(random.getrandbits(8) for _ in range(size))
    i = tarfile.TarInfo(name); i.size = size; i.mtime = 1700000000
    t.addfile(i, io.BytesIO(data))
t.close()
sys.stdout.buffer.write(out.getvalue())
"#,
    );
    let layout = fx.dir.join("layout-reflink");
    let mut l = OciLayout::create(&layout);
    l.add_image("big", std::slice::from_ref(&tar), Blob::Plain, go_arch());
    let store = TestStore::at(&fs.mnt(), &[]);
    store.copy_in(&l.source("big"), "localhost/big:latest", &[]);
    let repo = fs.mnt().join("repo");
    let out = run(Command::new(example("import_layer"))
        .arg(&store.root)
        .args(["big", "0"])
        .arg(&repo));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains(": 2 objects reflinked, 0 copied"),
        "{summary}"
    );
    let stream = std::fs::read(repo.join("streams").join(sha256_hex(&tar))).unwrap();
    let (rebuilt, objects) = reassemble(&repo, &stream);
    assert!(rebuilt == tar);
    assert_eq!(objects, 2);
    // The big object shares its extents with the layer's file (checked by e2fsprogs).
    let object = stdout_of(
        Command::new("find")
            .arg(repo.join("objects"))
            .args(["-type", "f", "-size", "512k"]),
    );
    let object = Path::new(object.trim());
    assert!(object.is_file(), "{object:?}");
    assert!(
        has_shared_extents(object),
        "{} is not reflinked",
        object.display()
    );
    drop(store);
}
