//! `cstorage image export` read back by independent tools: skopeo, podman load, umoci, and
//! compared with `skopeo copy containers-storage:... oci:...` from the same store.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use testutil::fixtures::{Standard, standard};
use testutil::{TestStore, run, stdout_of};

mod common;
use common::cstorage;

fn fixture() -> &'static Standard {
    static F: OnceLock<Standard> = OnceLock::new();
    F.get_or_init(|| standard(&testutil::fixture_dir(&std::env::temp_dir(), "cst-ie")))
}

fn skopeo_inspect(src: &str) -> Value {
    serde_json::from_str(&stdout_of(Command::new("skopeo").args(["inspect", src]))).unwrap()
}

fn skopeo_config(src: &str) -> Vec<u8> {
    run(Command::new("skopeo").args(["inspect", "--raw", "--config", src])).stdout
}

/// DiffIDs of an image as a fresh store sees them after `skopeo copy SRC` into it.
fn diff_ids_after_copy(src: &str) -> Vec<String> {
    let store = TestStore::new();
    store.copy_in(src, "localhost/reimported:latest", &[]);
    let img = &store.go_images()[0];
    let layers: BTreeMap<String, Value> = store
        .go_layers()
        .into_iter()
        .map(|l| (l["id"].as_str().unwrap().to_string(), l))
        .collect();
    let mut chain = Vec::new();
    let mut cur = img["layer"].as_str().map(String::from);
    while let Some(id) = cur {
        let l = &layers[&id];
        chain.push(l["diff-digest"].as_str().unwrap().to_string());
        cur = l.get("parent").and_then(|p| p.as_str()).map(String::from);
    }
    chain.reverse();
    chain
}

const NAMES: [&str; 3] = [
    "localhost/app1:latest",
    "localhost/app2:v2",
    "docker.io/library/dockerimg:latest",
];

#[test]
fn oci_layout_reads_back_like_skopeos_own_export() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("oci");
    for compress in ["none", "gzip", "zstd"] {
        let out = out.with_extension(compress);
        let mut c = cstorage(&f.store);
        c.args(["image", "export", "--compress", compress, "-o"])
            .arg(&out)
            .args(NAMES);
        stdout_of(&mut c);
        for name in NAMES {
            let ours = format!("oci:{}:{name}", out.display());
            // Reference: skopeo's own export of the same image from the same store.
            let theirs_dir = dir
                .path()
                .join(format!("skopeo-{}", name.replace(['/', ':'], "_")));
            if !theirs_dir.exists() {
                run(Command::new("skopeo")
                    .args(["copy", "-q"])
                    .arg(format!("{}{name}", f.store.spec()))
                    .arg(format!("oci:{}:x", theirs_dir.display())));
            }
            let theirs = format!("oci:{}:x", theirs_dir.display());
            let (a, b) = (skopeo_inspect(&ours), skopeo_inspect(&theirs));
            assert_eq!(a["Architecture"], b["Architecture"]);
            // The config blob is the stored one, byte for byte: same digest as skopeo's.
            assert_eq!(
                skopeo_config(&ours),
                skopeo_config(&theirs),
                "{name} {compress}"
            );
            let cfg: Value = serde_json::from_slice(&skopeo_config(&ours)).unwrap();
            let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_string())
                .collect();
            assert_eq!(diff_ids, f.built[name].diff_ids);
            if compress == "none" {
                // Uncompressed: layer digests are the DiffIDs.
                let layers: Vec<String> = a["Layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(layers, diff_ids, "{name}");
            }
            // Copied into a fresh store, the layers have the same diff-digests.
            assert_eq!(diff_ids_after_copy(&ours), diff_ids, "{name} {compress}");
        }
        // umoci unpacks it (gzip and none; this umoci predates zstd).
        if compress != "zstd" {
            let bundle = dir.path().join(format!("bundle-{compress}"));
            run(Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:localhost/app1:latest", out.display()))
                .arg(&bundle));
            assert_eq!(
                std::fs::read_to_string(bundle.join("rootfs/app/one.txt")).unwrap(),
                "one\n"
            );
            assert!(
                !bundle.join("rootfs/etc/os-release").exists(),
                "whiteout applied"
            );
            assert_eq!(
                std::fs::read_to_string(bundle.join("rootfs/usr/share/doc/new")).unwrap(),
                "new doc\n"
            );
            assert!(
                !bundle.join("rootfs/usr/share/doc/readme").exists(),
                "opaque dir applied"
            );
        }
    }
}

#[test]
fn archives_load_back() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    // oci-archive
    let oa = dir.path().join("images.oci.tar");
    let mut c = cstorage(&f.store);
    c.args(["image", "export", "--format", "oci-archive", "-o"])
        .arg(&oa)
        .args(NAMES);
    stdout_of(&mut c);
    for name in NAMES {
        let src = format!("oci-archive:{}:{name}", oa.display());
        assert_eq!(diff_ids_after_copy(&src), f.built[name].diff_ids, "{name}");
    }
    // docker-archive, loaded by podman.
    let da = dir.path().join("images.docker.tar");
    let mut c = cstorage(&f.store);
    c.args(["image", "export", "--format", "docker-archive", "-o"])
        .arg(&da)
        .args(NAMES);
    stdout_of(&mut c);
    let store = TestStore::new();
    let loaded = stdout_of(store.podman().args(["load", "-i"]).arg(&da));
    for name in NAMES {
        assert!(loaded.contains(name), "{name} in {loaded}");
    }
    let inspect: Value = serde_json::from_str(&stdout_of(
        store.podman().args(["image", "inspect"]).args(NAMES),
    ))
    .unwrap();
    for (i, name) in NAMES.iter().enumerate() {
        let ids: Vec<String> = inspect[i]["RootFS"]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, f.built[*name].diff_ids, "{name}");
        // Image ID = config digest: the config came through unchanged.
        assert_eq!(
            format!("sha256:{}", inspect[i]["Id"].as_str().unwrap()),
            f.built[*name].config_digest,
            "{name}"
        );
    }
    // skopeo reads it too.
    let src = format!("docker-archive:{}:localhost/app1:latest", da.display());
    assert_eq!(
        diff_ids_after_copy(&src),
        f.built["localhost/app1:latest"].diff_ids
    );
}

#[test]
fn existing_layout_is_added_to_and_blobs_reused() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("oci");
    stdout_of(
        cstorage(&f.store)
            .args(["image", "export", "localhost/base:latest", "-o"])
            .arg(&out),
    );
    let out2 = testutil::run(
        cstorage(&f.store)
            .args([
                "--log-level",
                "info",
                "image",
                "export",
                "localhost/app1:latest",
                "-o",
            ])
            .arg(&out),
    );
    let err = String::from_utf8_lossy(&out2.stderr);
    assert!(err.contains("1 reused"), "{err}");
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let refs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(refs, ["localhost/base:latest", "localhost/app1:latest"]);
    for r in refs {
        skopeo_inspect(&format!("oci:{}:{r}", out.display()));
    }
    // No temporary files left.
    for e in walk(&out) {
        assert!(
            !e.file_name().unwrap().to_string_lossy().contains(".tmp-"),
            "{}",
            e.display()
        );
    }
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        v.push(e.path());
        if e.path().is_dir() {
            v.extend(walk(&e.path()));
        }
    }
    v
}

#[test]
fn corrupted_layer_fails_naming_it_and_leaves_no_blob() {
    let f = fixture();
    // A private copy of the store, with one file of app2's top layer damaged.
    let store = TestStore::new();
    store.copy_in(
        &format!("oci:{}:app2", f.layout.display()),
        "localhost/app2:latest",
        &[],
    );
    let layers = store.go_layers();
    let top = layers.iter().find(|l| l.get("parent").is_some()).unwrap();
    let top_id = top["id"].as_str().unwrap();
    let file = store
        .root
        .join(format!("overlay/{top_id}/diff/app/two.bin"));
    let mut b = std::fs::read(&file).unwrap();
    b[100] ^= 0xff;
    std::fs::write(&file, b).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Archives take their largest uncompressed layer (here the damaged one, 200 kB) straight
    // from the store, the others too with one job; the OCI layout writes every blob aside.
    for (format, out, jobs) in [
        ("oci", dir.path().join("oci"), "2"),
        ("oci-archive", dir.path().join("a.tar"), "1"),
        ("oci-archive", dir.path().join("a.tar"), "2"),
        ("docker-archive", dir.path().join("d.tar"), "1"),
        ("docker-archive", dir.path().join("d.tar"), "2"),
    ] {
        let o = cstorage(&store)
            .args([
                "image",
                "export",
                "--format",
                format,
                "--jobs",
                jobs,
                "localhost/app2:latest",
                "-o",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{format}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(top_id) && err.contains("app/two.bin"),
            "{format}: {err}"
        );
        // A new layout directory is removed with everything in it, archives are not left,
        // and no temporary file remains.
        assert!(
            !out.exists(),
            "{format}: nothing of the failed export is left"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("cstorage-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn unwritable_target_is_a_clear_error() {
    let f = fixture();
    let o = cstorage(&f.store)
        .args([
            "image",
            "export",
            "localhost/base:latest",
            "--format",
            "oci-archive",
            "-o",
            "/nonexistent-dir/x.tar",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent-dir"), "{err}");
    assert!(
        !Path::new("/nonexistent-dir").exists(),
        "the missing directory was not created"
    );
    let o = cstorage(&f.store)
        .args([
            "image",
            "export",
            "localhost/base:latest",
            "-o",
            "/nonexistent-dir/oci",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(!Path::new("/nonexistent-dir").exists());
    let o = cstorage(&f.store)
        .args([
            "image",
            "export",
            "localhost/base:latest",
            "--format",
            "docker-archive",
            "--compress",
            "gzip",
            "-o",
            "/nonexistent-dir/x.tar",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("uncompressed"));
}
