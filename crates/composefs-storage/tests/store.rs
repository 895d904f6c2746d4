//! The library against real stores written by skopeo, compared with the Go implementation
//! (containers-storage and podman reading the same stores).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use composefs_storage::manifest::ManifestKind;
use composefs_storage::{Storage, StorageConfig, StorageError};
use serde_json::Value;
use testutil::fixtures::{Standard, standard};
use testutil::{Blob, OciLayout, TestStore, stdout_of};

fn fixture() -> &'static Standard {
    static F: OnceLock<Standard> = OnceLock::new();
    F.get_or_init(|| {
        let dir = testutil::fixture_dir(&std::env::temp_dir(), "cst-fx");
        standard(&dir)
    })
}

fn open(store: &TestStore, extra_opts: &[String]) -> Storage {
    let mut c = StorageConfig::for_graphroot(&store.root);
    c.set_runroot(&store.runroot);
    let mut opts = store.all_opts();
    opts.extend(extra_opts.iter().cloned());
    c.set_driver_options(opts);
    Storage::open_with_config(&c).unwrap()
}

/// Our parsed records, serialized back, equal what containers-storage prints for them.
fn assert_records_match(store: &TestStore) {
    let s = open(store, &[]);
    let go_layers: BTreeMap<String, Value> = store
        .go_layers()
        .into_iter()
        .map(|v| (v["id"].as_str().unwrap().to_string(), v))
        .collect();
    let ours: BTreeMap<String, Value> = s
        .list_layers()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l.id().to_string(),
                serde_json::to_value(l.metadata()).unwrap(),
            )
        })
        .collect();
    assert_eq!(ours, go_layers, "layer records of {}", store.root.display());

    let go_images: BTreeMap<String, Value> = store
        .go_images()
        .into_iter()
        .map(|v| (v["id"].as_str().unwrap().to_string(), v))
        .collect();
    let ours: BTreeMap<String, Value> = s
        .list_images()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i.id().to_string(),
                serde_json::to_value(i.metadata()).unwrap(),
            )
        })
        .collect();
    assert_eq!(ours, go_images, "image records of {}", store.root.display());
}

#[test]
fn records_match_containers_storage() {
    let f = fixture();
    assert_records_match(&f.store);
    assert_records_match(&f.ais);
    assert_records_match(&f.fuse);
}

#[test]
fn every_image_has_its_built_layers_and_config() {
    let f = fixture();
    let s = open(&f.store, &[f.ais_opt()]);
    for (name, built) in &f.built {
        let img = s.find_image(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(img.names().contains(name), "{name}: {:?}", img.names());
        let layers = img.layers().unwrap();
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| l.diff_id().unwrap().to_string())
            .collect();
        assert_eq!(diff_ids, built.diff_ids, "{name}");
        // The config is found through the manifest and is the built one, byte for byte.
        let cfg = img.config_bytes().unwrap();
        assert_eq!(
            format!("sha256:{}", testutil::sha256_hex(&cfg)),
            built.config_digest,
            "{name}"
        );
        let config = img.config().unwrap();
        assert_eq!(config.rootfs().diff_ids(), &built.diff_ids);
        // Layer dirs exist and are the layer's own.
        for l in &layers {
            l.diff_dir().unwrap();
            assert!(
                l.has_tar_split().unwrap(),
                "{name}: layer {} has a tar-split",
                l.id()
            );
        }
        let kind = img.manifest().unwrap().kind().clone();
        if name.starts_with("docker.io/") {
            assert_eq!(kind, ManifestKind::DockerV2Schema2, "{name}");
        } else {
            assert_eq!(kind, ManifestKind::OciManifest, "{name}");
            assert_eq!(
                img.manifest().unwrap().bytes(),
                built.manifest.as_slice(),
                "{name}"
            );
        }
    }
}

#[test]
fn shared_base_layer_is_one_layer_used_by_many_images() {
    let f = fixture();
    let s = open(&f.store, &[]);
    let base = s.find_image("localhost/base:latest").unwrap();
    let base_layer = base.layers().unwrap().remove(0);
    let app1 = s.find_image("localhost/app1:latest").unwrap();
    assert_eq!(app1.layers().unwrap()[0].id(), base_layer.id());
    let users = base_layer.image_ids();
    assert!(users.contains(&app1.id().to_string()) && users.contains(&base.id().to_string()));
    // Two names, one image.
    let a = s.find_image("localhost/app2:latest").unwrap();
    let b = s.find_image("localhost/app2:v2").unwrap();
    assert_eq!(a.id(), b.id());
    assert_eq!(a.names().len(), 2);
    // The top layer's chain, parent links and link ids.
    let top = app1.layers().unwrap().pop().unwrap();
    assert_eq!(top.parent_id(), Some(base_layer.id()));
    assert_eq!(top.chain().unwrap().len(), 2);
    assert_eq!(top.link_id().unwrap().unwrap().len(), 26);
    let lowers = top.lower_diff_dirs().unwrap();
    assert_eq!(lowers.len(), 1);
    // The lower is the base layer's diff dir: same files.
    assert_eq!(
        lowers[0].read("etc/hello").unwrap(),
        base_layer.diff_dir().unwrap().read("etc/hello").unwrap()
    );
}

/// What podman resolves a query to.
fn podman_id(store: &TestStore, extra_opts: &[String], q: &str) -> Option<String> {
    let mut c = store.podman();
    for o in extra_opts {
        c.arg("--storage-opt").arg(o);
    }
    let out = c
        .args(["image", "inspect", "--format", "{{.Id}}", q])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap().trim().to_string())
}

#[test]
fn lookups_resolve_like_podman() {
    let f = fixture();
    let ais = vec![f.ais_opt()];
    let s = open(&f.store, &ais);
    let app1 = s.find_image("localhost/app1:latest").unwrap();
    let dock = s.find_image("docker.io/library/dockerimg:latest").unwrap();
    let multi = s.find_image("localhost/multi:latest").unwrap();
    let app1_digest = app1.manifest_digest().unwrap().to_string();
    let queries = vec![
        app1.id().to_string(),
        format!("sha256:{}", app1.id()),
        app1.id()[..12].to_string(),
        "localhost/app1:latest".into(),
        "app1".into(),
        "app1:latest".into(),
        "localhost/app1".into(),
        "app2:v2".into(),
        "localhost/app2:v2".into(),
        "dockerimg".into(),
        "library/dockerimg".into(),
        "docker.io/dockerimg:latest".into(),
        dock.id()[..5].to_string(),
        format!("localhost/app1@{app1_digest}"),
        format!("app1@{app1_digest}"),
        format!("localhost/multi@{}", f.multi_index_digest),
        "ais-only".into(),
        "base".into(),
        multi.id().to_string(),
    ];
    for q in &queries {
        let ours = s.find_image(q).map(|i| i.id().to_string()).ok();
        let go = podman_id(&f.store, &ais, q);
        assert!(go.is_some(), "podman resolves {q}");
        assert_eq!(ours, go, "query {q:?}");
    }
    // Things podman does not find, we do not find either.
    for q in ["nonexistent", "localhost/app1:nope", "app3"] {
        assert!(podman_id(&f.store, &ais, q).is_none(), "{q}");
        assert!(
            matches!(s.find_image(q), Err(StorageError::ImageNotFound(_))),
            "{q}"
        );
    }
    // Looked up by the list digest: the per-platform manifest, and the list beside it.
    let m = s
        .find_image(&format!("localhost/multi@{}", f.multi_index_digest))
        .unwrap();
    assert_eq!(m.manifest().unwrap().kind(), &ManifestKind::OciManifest);
    let list = m.manifest_list().unwrap().unwrap();
    assert_eq!(list.digest().to_string(), f.multi_index_digest);
    // A digest of the image's manifest alone.
    assert_eq!(s.find_image(&app1_digest).unwrap().id(), app1.id());
}

#[test]
fn ambiguous_prefix_lists_candidates() {
    let f = fixture();
    let s = open(&f.store, &[]);
    let images = s.list_images().unwrap();
    let mut by_first: BTreeMap<char, Vec<String>> = BTreeMap::new();
    for i in &images {
        by_first
            .entry(i.id().chars().next().unwrap())
            .or_default()
            .push(i.id().to_string());
    }
    let (c, ids) = by_first
        .into_iter()
        .find(|(_, v)| v.len() > 1)
        .expect("the fixture makes two IDs share a first digit");
    match s.find_image(&c.to_string()) {
        Err(StorageError::Ambiguous { candidates, .. }) => {
            let mut cands = candidates.clone();
            cands.sort();
            let mut ids = ids.clone();
            ids.sort();
            assert_eq!(cands, ids);
        }
        other => panic!("expected an ambiguity error, got {other:?}"),
    }
}

#[test]
fn podman_sees_the_same_images_and_sizes() {
    let f = fixture();
    let ais = vec![f.ais_opt()];
    let s = open(&f.store, &ais);
    let mut c = f.store.podman();
    for o in &ais {
        c.arg("--storage-opt").arg(o);
    }
    let out = stdout_of(c.args(["images", "--format", "json"]));
    let go: Vec<Value> = serde_json::from_str(&out).unwrap();
    let go: BTreeMap<String, &Value> = go
        .iter()
        .map(|v| (v["Id"].as_str().unwrap().to_string(), v))
        .collect();
    let ours = s.list_images().unwrap();
    assert_eq!(ours.len(), go.len());
    for img in &ours {
        let g = go
            .get(img.id())
            .unwrap_or_else(|| panic!("podman lacks {}", img.id()));
        assert_eq!(
            g["Size"].as_u64().unwrap(),
            img.size(),
            "size of {}",
            img.id()
        );
        let mut names: Vec<String> = g["Names"]
            .as_array()
            .map(|a| a.iter().map(|n| n.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        names.sort();
        let mut ours_names = img.names().to_vec();
        ours_names.sort();
        assert_eq!(names, ours_names);
        assert_eq!(
            g["Digest"].as_str(),
            img.digest().map(|d| d.to_string()).as_deref()
        );
        let created = img
            .created()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(g["Created"].as_u64().unwrap(), created);
    }
}

#[test]
fn additional_image_store_is_read_only_and_primary_wins() {
    let f = fixture();
    let s = open(&f.store, &[f.ais_opt()]);
    let only = s.find_image("localhost/ais-only:latest").unwrap();
    assert!(only.is_read_only());
    assert_eq!(only.store_root(), f.ais.root);
    let layers = only.layers().unwrap();
    assert!(layers.last().unwrap().is_read_only());
    assert_eq!(
        layers
            .last()
            .unwrap()
            .diff_dir()
            .unwrap()
            .read_to_string("ais/only")
            .unwrap(),
        "in the additional store\n"
    );
    // `base` exists in both stores with the same ID: listed once, from the primary store.
    let all = s.list_images().unwrap();
    let bases: Vec<_> = all
        .iter()
        .filter(|i| i.names().contains(&"localhost/base:latest".into()))
        .collect();
    assert_eq!(bases.len(), 1);
    assert!(!bases[0].is_read_only());
    assert_eq!(s.additional_image_store_roots(), vec![f.ais.root.as_path()]);
}

#[test]
fn fuse_store_reads_the_same() {
    let f = fixture();
    let s = open(&f.fuse, &[]);
    let img = s.find_image("app1").unwrap();
    let layers = img.layers().unwrap();
    let top = layers.last().unwrap().diff_dir().unwrap();
    // AUFS-format whiteouts stay as .wh. files in fuse-overlayfs stores.
    assert!(top.exists("etc/.wh.os-release"));
    assert!(top.exists("usr/share/doc/.wh..wh..opq"));
    assert_eq!(
        s.overlay_options().mount_program.as_deref(),
        Some(Path::new("/usr/bin/fuse-overlayfs"))
    );
    // The native store turned them into a 0/0 char device and an opaque xattr.
    let n = open(&fixture().store, &[]);
    let top = n
        .find_image("app1")
        .unwrap()
        .layers()
        .unwrap()
        .pop()
        .unwrap()
        .diff_dir()
        .unwrap();
    let md = top.symlink_metadata("etc/os-release").unwrap();
    use cap_std::fs::FileTypeExt;
    assert!(md.file_type().is_char_device());
    assert!(!top.exists("etc/.wh.os-release"));
}

/// A store with one image, private to a test that changes it.
fn private_store() -> (TestStore, OciLayout) {
    let store = TestStore::new();
    let dir = store.root.parent().unwrap().join("layout");
    let mut l = OciLayout::create(&dir);
    let t1 = testutil::python_tar(
        "import tarfile,io,sys\nt=tarfile.open(fileobj=sys.stdout.buffer,mode='w|',format=tarfile.PAX_FORMAT)\nfor n in ['a','b']:\n d=(n*10).encode(); i=tarfile.TarInfo(n); i.size=len(d); t.addfile(i,io.BytesIO(d))\nt.close()",
    );
    l.add_image(
        "one",
        std::slice::from_ref(&t1),
        Blob::Gzip,
        testutil::go_arch(),
    );
    let t2 = testutil::python_tar(
        "import tarfile,io,sys\nt=tarfile.open(fileobj=sys.stdout.buffer,mode='w|',format=tarfile.GNU_FORMAT)\nd=b'x'*5000; i=tarfile.TarInfo('c'); i.size=len(d); t.addfile(i,io.BytesIO(d))\nt.close()",
    );
    l.add_image("two", &[t1, t2], Blob::Gzip, testutil::go_arch());
    store.copy_in(&l.source("one"), "localhost/one:latest", &[]);
    (store, l)
}

#[test]
fn writer_waits_for_our_shared_lock_and_we_see_its_changes() {
    let (store, layout) = private_store();
    let s = open(&store, &[]);
    assert_eq!(s.list_images().unwrap().len(), 1);
    let guard = s.read_lock().unwrap();
    let mut child = Command::new("skopeo")
        .args(["copy", "-q", &layout.source("two")])
        .arg(format!("{}localhost/two:latest", store.spec()))
        .spawn()
        .unwrap();
    // While we hold the shared locks, skopeo (a c/storage writer) cannot commit.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "skopeo finished while we held the lock"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reads through the same Storage still work while the guard is held.
    assert_eq!(s.list_images().unwrap().len(), 1);
    drop(guard);
    let status = child.wait().unwrap();
    assert!(status.success());
    // The Storage opened before the copy sees the new image (token changed → reload).
    let two = s.find_image("localhost/two:latest").unwrap();
    assert_eq!(two.layers().unwrap().len(), 2);
    assert_eq!(s.list_images().unwrap().len(), 2);
}

#[test]
fn clear_errors() {
    // Missing store.
    let e = Storage::open("/nonexistent/store").unwrap_err();
    assert!(matches!(e, StorageError::StoreNotFound { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/store"));

    // A store of another driver.
    let td = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(td.path().join("vfs-images")).unwrap();
    std::fs::create_dir_all(td.path().join("vfs-layers")).unwrap();
    let e = Storage::open(td.path()).unwrap_err();
    assert!(matches!(e, StorageError::UnsupportedDriver { .. }), "{e}");
    assert!(e.to_string().contains("vfs"), "{e}");

    // Corrupt images.json: the error names the file.
    let (store, _l) = private_store();
    let images_json = store.root.join("overlay-images/images.json");
    std::fs::write(&images_json, b"[{\"id\": \"abc\", ").unwrap();
    let s = open(&store, &[]);
    let e = s.list_images().unwrap_err();
    assert!(matches!(e, StorageError::Json { .. }), "{e}");
    assert!(
        e.to_string().contains(&images_json.display().to_string()),
        "{e}"
    );
    // Wrong types are errors too, naming the file.
    std::fs::write(&images_json, b"[{\"id\": 5}]").unwrap();
    let e = s.list_images().unwrap_err();
    assert!(e.to_string().contains("images.json"), "{e}");
    // Unknown image.
    std::fs::write(&images_json, b"[]").unwrap();
    assert!(matches!(
        s.find_image("nope"),
        Err(StorageError::ImageNotFound(_))
    ));
}

#[test]
fn incomplete_layers_are_skipped() {
    let (store, _l) = private_store();
    let layers_json = store.root.join("overlay-layers/layers.json");
    let mut v: Vec<Value> = serde_json::from_slice(&std::fs::read(&layers_json).unwrap()).unwrap();
    assert_eq!(v.len(), 1);
    let mut extra = v[0].clone();
    extra["id"] = Value::String("f".repeat(64));
    extra["flags"] = serde_json::json!({"incomplete": true});
    v.push(extra);
    std::fs::write(&layers_json, serde_json::to_vec(&v).unwrap()).unwrap();
    let s = open(&store, &[]);
    let ids: Vec<String> = s
        .list_layers()
        .unwrap()
        .iter()
        .map(|l| l.id().to_string())
        .collect();
    assert_eq!(ids.len(), 1);
    assert!(!ids.contains(&"f".repeat(64)));
}

#[test]
fn diff_id_mismatch_names_both_digests() {
    let (store, _l) = private_store();
    let layers_json = store.root.join("overlay-layers/layers.json");
    let mut v: Vec<Value> = serde_json::from_slice(&std::fs::read(&layers_json).unwrap()).unwrap();
    let real = v[0]["diff-digest"].as_str().unwrap().to_string();
    let fake = format!("sha256:{}", "0".repeat(64));
    v[0]["diff-digest"] = Value::String(fake.clone());
    std::fs::write(&layers_json, serde_json::to_vec(&v).unwrap()).unwrap();
    let s = open(&store, &[]);
    let img = s.find_image("localhost/one:latest").unwrap();
    let e = img.layers().unwrap_err();
    assert!(matches!(e, StorageError::DiffIdMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&real) && msg.contains(&fake) && msg.contains(img.id()),
        "{msg}"
    );
    // The unchecked chain is still available.
    assert_eq!(img.storage_layers().unwrap().len(), 1);
}
