//! Reading while real c/storage writers (skopeo copy, podman rmi, podman tag) change the store.
//!
//! The contract: a layer export holds the layer store's shared lock from opening the layer's
//! tar-split to its last byte, so a writer that wants to delete the layer waits, and the bytes
//! are right; a handle to an image or layer that a writer removed in the meantime gives a
//! "changed while reading" error, never wrong bytes; a long-lived `Storage` sees what writers
//! added or renamed.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use composefs_storage::{ExportOptions, StorageError, Verify};
use testutil::{Blob, OciLayout, TestStore, go_arch, python_tar, sha256_hex};

mod common;
use common::open;

fn store_with_images() -> (TestStore, OciLayout) {
    let store = TestStore::new();
    let mut l = OciLayout::create(&store.root.parent().unwrap().join("layout"));
    let big = python_tar(
        "import tarfile,io,sys,random\nr=random.Random(7)\nt=tarfile.open(fileobj=sys.stdout.buffer,mode='w|',format=tarfile.PAX_FORMAT)\nfor n in range(4):\n d=r.randbytes(2<<20); i=tarfile.TarInfo(f'data/{n}'); i.size=len(d); t.addfile(i,io.BytesIO(d))\nt.close()",
    );
    let small = python_tar(
        "import tarfile,io,sys\nt=tarfile.open(fileobj=sys.stdout.buffer,mode='w|',format=tarfile.PAX_FORMAT)\nd=b'x'*100; i=tarfile.TarInfo('small'); i.size=len(d); t.addfile(i,io.BytesIO(d))\nt.close()",
    );
    l.add_image("big", std::slice::from_ref(&big), Blob::Gzip, go_arch());
    l.add_image("small", std::slice::from_ref(&small), Blob::Gzip, go_arch());
    l.add_image("other", &[small, big], Blob::Gzip, go_arch());
    store.copy_in(&l.source("big"), "localhost/big:latest", &[]);
    (store, l)
}

#[test]
fn rmi_waits_for_an_export_in_progress_and_the_bytes_are_right() {
    let (store, _l) = store_with_images();
    let s = open(&store);
    let img = s.find_image("localhost/big:latest").unwrap();
    let layer = img.layers().unwrap().remove(0);
    let want = layer.diff_digest().unwrap().digest().to_string();
    // A slow reader: the export blocks on the pipe (holding its shared lock) until it reads.
    let (r, w) = rustix::pipe::pipe().unwrap();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        let mut v = Vec::new();
        std::fs::File::from(r).read_to_end(&mut v).unwrap();
        v
    });
    let l2 = layer.clone();
    let exporter = std::thread::spawn(move || {
        let r = l2.export_to_fd(
            w.as_fd(),
            Path::new("pipe"),
            &ExportOptions::new(Verify::Digest),
        );
        drop(w);
        r
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut rmi = store
        .podman()
        .args(["rmi", "-f", "localhost/big:latest"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert!(
            rmi.try_wait().unwrap().is_none(),
            "podman rmi finished while the layer was being exported"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let bytes = reader.join().unwrap();
    exporter.join().unwrap().unwrap();
    assert_eq!(sha256_hex(&bytes), want);
    assert!(rmi.wait().unwrap().success());
    // The image and its layer are gone now: the old handles say so, clearly.
    let mut out = Vec::new();
    match layer.export(&mut out, &ExportOptions::default()) {
        Err(StorageError::Changed { .. }) => {}
        other => panic!("expected a changed-while-reading error, got {other:?}"),
    }
    assert!(
        matches!(img.manifest(), Err(StorageError::Changed { .. })),
        "{:?}",
        img.manifest()
    );
    assert!(s.list_images().unwrap().is_empty());
}

#[test]
fn readers_and_writers_together_stay_correct() {
    let (store, l) = store_with_images();
    let s = open(&store);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let exports = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        // Readers: export every layer of every image, over and over, verifying digests.
        for _ in 0..2 {
            sc.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for img in s.list_images().unwrap() {
                        let layers = match img.layers() {
                            Ok(l) => l,
                            Err(StorageError::Changed { .. })
                            | Err(StorageError::ImageNotFound(_)) => continue,
                            Err(e) => panic!("{e}"),
                        };
                        for layer in layers {
                            let mut out = Vec::new();
                            match layer.export(&mut out, &ExportOptions::new(Verify::Digest)) {
                                Ok(_) => {
                                    assert_eq!(
                                        format!("sha256:{}", sha256_hex(&out)),
                                        layer.diff_digest().unwrap().to_string()
                                    );
                                    exports.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                Err(StorageError::Changed { .. }) => {}
                                Err(e) => panic!("export of {} failed: {e}", layer.id()),
                            }
                        }
                    }
                }
            });
        }
        // Writers: copy images in, tag, remove, in sequence.
        let run = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        store.copy_in(&l.source("small"), "localhost/small:latest", &[]);
        run(store
            .podman()
            .args(["tag", "localhost/small:latest", "localhost/small:tagged"]));
        store.copy_in(&l.source("other"), "localhost/other:latest", &[]);
        run(store.podman().args(["rmi", "localhost/small:tagged"]));
        run(store.podman().args(["rmi", "-f", "localhost/other:latest"]));
        store.copy_in(&l.source("other"), "localhost/other:latest", &[]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(exports.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // The long-lived Storage sees the end state.
    let mut names: Vec<String> = s
        .list_images()
        .unwrap()
        .iter()
        .flat_map(|i| i.names().to_vec())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "localhost/big:latest",
            "localhost/other:latest",
            "localhost/small:latest"
        ]
    );
}

#[test]
fn rmi_waits_while_a_rootfs_view_is_open() {
    let (store, _l) = store_with_images();
    let s = open(&store);
    let img = s.find_image("localhost/big:latest").unwrap();
    let fs = img.rootfs().unwrap();
    let mut rmi = store
        .podman()
        .args(["rmi", "-f", "localhost/big:latest"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert!(
            rmi.try_wait().unwrap().is_none(),
            "podman rmi finished while the rootfs view was open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The whole tree is still readable, with the right content.
    let mut files = 0;
    for e in fs.walk() {
        let e = e.unwrap();
        if e.metadata.kind == composefs_storage::rootfs::FileKind::Regular {
            let mut f = fs.open(&e.path).unwrap();
            let mut v = Vec::new();
            f.read_to_end(&mut v).unwrap();
            assert_eq!(v.len() as u64, e.metadata.size);
            files += 1;
        }
    }
    assert_eq!(files, 4);
    drop(fs);
    assert!(rmi.wait().unwrap().success());
    assert!(
        matches!(img.rootfs(), Err(StorageError::Changed { .. })),
        "{:?}",
        img.rootfs().map(|_| ())
    );
}
