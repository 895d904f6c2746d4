//! Layer export on damaged and hostile stores: every case is a clear error naming the layer
//! and file, never a panic, never a read outside the store, and never a finished output file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use composefs_storage::tar_split::crc64_go_iso;
use composefs_storage::{ExportOptions, Layer, Storage, StorageError, TarSplitFdStream, Verify};
use serde_json::{Value, json};
use testutil::{Blob, OciLayout, TestStore, go_arch, python_tar};

mod common;
use common::open;

/// A private store with one single-layer image, returned with its only layer.
struct One {
    store: TestStore,
    layer_id: String,
}

impl One {
    fn new() -> One {
        let store = TestStore::new();
        let tar = python_tar(
            r#"
import io, sys, tarfile
t = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT)
def add(name, data=b"", kind=tarfile.REGTYPE):
    i = tarfile.TarInfo(name); i.type = kind; i.mtime = 1700000000; i.mode = 0o644
    i.size = len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(i, io.BytesIO(data) if data else None)
add("a/", kind=tarfile.DIRTYPE)
add("a/file1", bytes(range(256)) * 40)
add("a/file2", b"second file\n")
add("b/", kind=tarfile.DIRTYPE)
t.close()
"#,
        );
        let mut l = OciLayout::create(&store.root.parent().unwrap().join("layout"));
        l.add_image("one", &[tar], Blob::Gzip, go_arch());
        store.copy_in(&l.source("one"), "localhost/one:latest", &[]);
        let s = open(&store);
        let layer_id = s.list_layers().unwrap()[0].id().to_string();
        One { store, layer_id }
    }

    fn storage(&self) -> Storage {
        open(&self.store)
    }

    fn layer(&self) -> Layer {
        self.storage().find_layer(&self.layer_id).unwrap()
    }

    fn diff(&self) -> PathBuf {
        self.store
            .root
            .join("overlay")
            .join(&self.layer_id)
            .join("diff")
    }

    fn tar_split_path(&self) -> PathBuf {
        self.store
            .root
            .join(format!("overlay-layers/{}.tar-split.gz", self.layer_id))
    }

    fn tar_split_lines(&self) -> Vec<Value> {
        let mut s = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(self.tar_split_path()).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn write_tar_split_raw(&self, content: &[u8]) {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(content).unwrap();
        std::fs::write(self.tar_split_path(), e.finish().unwrap()).unwrap();
    }

    fn write_tar_split(&self, lines: &[Value]) {
        let mut s = String::new();
        for l in lines {
            s.push_str(&serde_json::to_string(l).unwrap());
            s.push('\n');
        }
        self.write_tar_split_raw(s.as_bytes());
    }

    /// Exports with `verify`, expecting an error; checks it names the layer.
    fn export_err(&self, verify: Verify) -> StorageError {
        let mut out = Vec::new();
        let e = self
            .layer()
            .export(&mut out, &ExportOptions::new(verify))
            .expect_err("the export must fail");
        assert!(
            e.to_string().contains(&self.layer_id),
            "error names the layer: {e}"
        );
        e
    }
}

fn set_len(p: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn changed_byte_is_a_crc_error_naming_the_file() {
    let one = One::new();
    let p = one.diff().join("a/file1");
    let mut b = std::fs::read(&p).unwrap();
    b[1234] ^= 1;
    std::fs::write(&p, &b).unwrap();
    let e = one.export_err(Verify::Crc);
    assert!(matches!(e, StorageError::Integrity { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("a/file1") && msg.contains("CRC"), "{msg}");
    // With digest verification too; and the file target is not left behind.
    one.export_err(Verify::Digest);
    let out = one.store.root.parent().unwrap().join("out.tar");
    let e = one
        .layer()
        .export_to_path(&out, &ExportOptions::default())
        .unwrap_err();
    assert!(matches!(e, StorageError::Integrity { .. }));
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("out.tar"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Without verification the bytes are written as they are, but the digest is not claimed.
    let mut v = Vec::new();
    let rep = one
        .layer()
        .export(&mut v, &ExportOptions::new(Verify::None))
        .unwrap();
    assert!(rep.digest.is_none());
}

#[test]
fn shortened_and_grown_files_are_size_errors() {
    let one = One::new();
    let p = one.diff().join("a/file1");
    let len = std::fs::metadata(&p).unwrap().len();
    for new_len in [len - 1, len + 1, 0] {
        set_len(&p, new_len);
        for verify in [Verify::None, Verify::Crc, Verify::Digest] {
            let e = one.export_err(verify);
            let msg = e.to_string();
            assert!(msg.contains("a/file1") && msg.contains("bytes"), "{msg}");
        }
    }
}

#[test]
fn missing_file_and_fifo_are_errors_without_hanging() {
    let one = One::new();
    let p = one.diff().join("a/file2");
    std::fs::remove_file(&p).unwrap();
    let msg = one.export_err(Verify::Crc).to_string();
    assert!(msg.contains("a/file2") && msg.contains("missing"), "{msg}");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let msg = one.export_err(Verify::Crc).to_string();
    assert!(msg.contains("FIFO"), "{msg}");
}

#[test]
fn symlinks_never_lead_outside() {
    let one = One::new();
    // A content file replaced by a symlink to a host file.
    let p = one.diff().join("a/file2");
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
    let msg = one.export_err(Verify::None).to_string();
    assert!(msg.contains("a/file2") && msg.contains("symlink"), "{msg}");
    // A directory on the path replaced by a symlink out of the layer.
    let one = One::new();
    let a = one.diff().join("a");
    std::fs::rename(&a, one.diff().join("a-moved")).unwrap();
    let outside = one.store.root.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("file1"), bytes_like_file1()).unwrap();
    std::fs::write(outside.join("file2"), b"second file\n").unwrap();
    std::os::unix::fs::symlink(&outside, &a).unwrap();
    let msg = one.export_err(Verify::None).to_string();
    assert!(msg.contains("outside the layer"), "{msg}");
    // Also through a relative symlink climbing out.
    std::fs::remove_file(&a).unwrap();
    std::os::unix::fs::symlink("../../../../outside", &a).unwrap();
    let msg = one.export_err(Verify::None).to_string();
    assert!(msg.contains("outside the layer"), "{msg}");
}

fn bytes_like_file1() -> Vec<u8> {
    (0..=255u8).collect::<Vec<_>>().repeat(40)
}

#[test]
fn hostile_names_in_tar_split() {
    let one = One::new();
    let lines = one.tar_split_lines();
    let host = std::fs::read("/etc/passwd").unwrap();
    let crc = base64::engine::general_purpose::STANDARD.encode(crc64_go_iso(&host).to_be_bytes());
    let with_name = |name: &str| -> Vec<Value> {
        let mut v = lines.clone();
        let i = v.iter().position(|l| l["name"] == "a/file2").unwrap();
        v[i] = json!({"type": 1, "name": name, "size": host.len(), "payload": crc, "position": i});
        v
    };
    for name in ["../../../../../../etc/passwd", "a/../../etc/passwd"] {
        one.write_tar_split(&with_name(name));
        let msg = one.export_err(Verify::Crc).to_string();
        assert!(msg.contains("climbs out"), "{name}: {msg}");
    }
    // An absolute name is resolved inside the layer (as c/storage does), never on the host:
    // the layer has no etc/passwd, so it is missing.
    one.write_tar_split(&with_name("/etc/passwd"));
    let msg = one.export_err(Verify::None).to_string();
    assert!(
        msg.contains("missing") && msg.contains(&one.layer_id),
        "{msg}"
    );
    // ... and if the layer has such a file, that one is used (its CRC does not match the
    // host's /etc/passwd, so this fails with a CRC error, proving which file was read).
    std::fs::create_dir_all(one.diff().join("etc")).unwrap();
    let mut fake = host.clone();
    fake[0] ^= 0xff;
    std::fs::write(one.diff().join("etc/passwd"), &fake).unwrap();
    let msg = one.export_err(Verify::Crc).to_string();
    assert!(msg.contains("CRC"), "{msg}");
}

#[test]
fn broken_tar_split_files() {
    let one = One::new();
    let good = std::fs::read(one.tar_split_path()).unwrap();
    // Truncated gzip.
    std::fs::write(one.tar_split_path(), &good[..good.len() / 2]).unwrap();
    let msg = one.export_err(Verify::Crc).to_string();
    assert!(msg.contains("tar-split"), "{msg}");
    // Not gzip at all.
    std::fs::write(one.tar_split_path(), b"this is not gzip").unwrap();
    let msg = one.export_err(Verify::Crc).to_string();
    assert!(msg.contains("tar-split"), "{msg}");
    // Bad JSON on line 2, unknown type, duplicate names.
    let lines = one.tar_split_lines_from(&good);
    let mut s = serde_json::to_string(&lines[0]).unwrap();
    s.push_str("\n{\"type\":1,\"name\":\"x\",\"size\":3\n");
    one.write_tar_split_raw(s.as_bytes());
    let msg = one.export_err(Verify::Crc).to_string();
    assert!(
        msg.contains("invalid JSON") && msg.contains("entry 1"),
        "{msg}"
    );
    let mut v = lines.clone();
    v.insert(1, json!({"type": 7, "payload": null}));
    one.write_tar_split(&v);
    assert!(
        one.export_err(Verify::Crc)
            .to_string()
            .contains("unknown entry type 7")
    );
    let mut v = lines.clone();
    let dup = v.iter().find(|l| l["name"] == "a/file2").unwrap().clone();
    v.push(dup);
    one.write_tar_split(&v);
    assert!(
        one.export_err(Verify::Crc)
            .to_string()
            .contains("duplicate path")
    );
    // The listing reports the same kind of errors.
    let e = one
        .layer()
        .entries()
        .unwrap()
        .find_map(|r| r.err())
        .unwrap();
    assert!(e.to_string().contains("duplicate path"), "{e}");
}

impl One {
    fn tar_split_lines_from(&self, gz: &[u8]) -> Vec<Value> {
        let mut s = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut s)
            .unwrap();
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn digest_verification_catches_a_wrong_diff_digest() {
    let one = One::new();
    let layers_json = one.store.root.join("overlay-layers/layers.json");
    let mut v: Vec<Value> = serde_json::from_slice(&std::fs::read(&layers_json).unwrap()).unwrap();
    let real = v[0]["diff-digest"].as_str().unwrap().to_string();
    let fake = format!("sha256:{}", "1".repeat(64));
    v[0]["diff-digest"] = json!(fake);
    std::fs::write(&layers_json, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = one.export_err(Verify::Digest);
    match &e {
        StorageError::DigestMismatch {
            expected, found, ..
        } => {
            assert_eq!(expected, &fake);
            assert_eq!(found, &real);
        }
        other => panic!("{other}"),
    }
    // Per-file CRCs are still right.
    let mut out = Vec::new();
    one.layer()
        .export(&mut out, &ExportOptions::new(Verify::Crc))
        .unwrap();
}

#[test]
fn layer_without_tar_split() {
    let one = One::new();
    let tar = std::fs::read(one.tar_split_path()).unwrap();
    std::fs::remove_file(one.tar_split_path()).unwrap();
    let l = one.layer();
    assert!(!l.has_tar_split().unwrap());
    assert!(TarSplitFdStream::new(&l).is_err());
    assert!(l.entries().is_err());
    // Digest verification is impossible: a clear error.
    let msg = one.export_err(Verify::Digest).to_string();
    assert!(msg.contains("no tar-split"), "{msg}");
    // Otherwise a tar is generated, flagged as not reproducible, with the same files.
    let mut out = Vec::new();
    let rep = l
        .export(&mut out, &ExportOptions::new(Verify::Crc))
        .unwrap();
    assert!(!rep.reproducible);
    let names: Vec<String> = tar_names(&out);
    assert_eq!(names, ["a/", "a/file1", "a/file2", "b/"]);
    std::fs::write(one.tar_split_path(), tar).unwrap();
}

fn tar_names(tar: &[u8]) -> Vec<String> {
    let tf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tf.path(), tar).unwrap();
    let out = testutil::run(std::process::Command::new("tar").arg("-tf").arg(tf.path())).stdout;
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn export_to_a_device_or_fifo_path_writes_into_it() {
    let one = One::new();
    let dir = tempfile::tempdir().unwrap();
    // A character device like /dev/null must stay a device (never be renamed over).
    let null = dir.path().join("null");
    testutil::run(
        std::process::Command::new("mknod")
            .arg(&null)
            .args(["c", "1", "3"]),
    );
    one.layer()
        .export_to_path(&null, &ExportOptions::default())
        .unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&null)
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // A FIFO gets the stream.
    let fifo = dir.path().join("fifo");
    testutil::run(std::process::Command::new("mkfifo").arg(&fifo));
    let f2 = fifo.clone();
    let reader = std::thread::spawn(move || std::fs::read(f2).unwrap());
    one.layer()
        .export_to_path(&fifo, &ExportOptions::default())
        .unwrap();
    let got = reader.join().unwrap();
    let mut want = Vec::new();
    one.layer()
        .export(&mut want, &ExportOptions::default())
        .unwrap();
    assert!(got == want);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A directory is an error.
    let e = one
        .layer()
        .export_to_path(dir.path(), &ExportOptions::default())
        .unwrap_err();
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
    // Nothing else was created in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
