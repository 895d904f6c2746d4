//! The `cstorage` binary against real stores, compared with podman and containers-storage.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use testutil::fixtures::{Standard, standard};
use testutil::{TestStore, stdout_of};

mod common;
use common::cstorage;

fn fixture() -> &'static Standard {
    static F: OnceLock<Standard> = OnceLock::new();
    F.get_or_init(|| standard(&testutil::fixture_dir(&std::env::temp_dir(), "cst-cli")))
}

fn json_of(c: &mut Command) -> Value {
    let out = stdout_of(c);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Runs a command expected to fail; returns its stderr.
fn fails(c: &mut Command) -> String {
    let out: Output = c.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{c:?} must exit 1; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line on stderr: {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn images_json_matches_podman() {
    let f = fixture();
    let ours = json_of(cstorage(&f.store).args([
        "--storage-opt",
        &f.ais_opt(),
        "images",
        "--format",
        "json",
    ]));
    let mut pod = f.store.podman();
    pod.args(["--storage-opt", &f.ais_opt(), "images", "--format", "json"]);
    let go = json_of(&mut pod);
    let ids = |v: &Value, key: &str| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i[key].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&ours, "id"), ids(&go, "Id"));
    for i in ours.as_array().unwrap() {
        let g = go
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["Id"] == i["id"])
            .unwrap();
        assert_eq!(i["size"], g["Size"], "{}", i["id"]);
        let names: BTreeSet<&str> = i["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        let gnames: BTreeSet<&str> = g["Names"]
            .as_array()
            .map(|a| a.iter().map(|n| n.as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(names, gnames);
        assert_eq!(i["digest"], g["Digest"]);
    }
    // The table has a row per name plus the header.
    let table = stdout_of(cstorage(&f.store).args(["--storage-opt", &f.ais_opt(), "images"]));
    let names: usize = ours
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["names"].as_array().unwrap().len().max(1))
        .sum();
    assert_eq!(table.lines().count(), names + 1, "{table}");
    assert!(table.starts_with("REPOSITORY"));
    // -q prints IDs.
    let q = stdout_of(cstorage(&f.store).args(["images", "-q"]));
    let primary = f.store.go_images().len();
    assert_eq!(q.lines().count(), primary, "primary store only: {q}");
    assert_eq!(ours.as_array().unwrap().len(), primary + 1, "plus ais-only");
}

#[test]
fn image_inspect_has_record_manifest_config_layers() {
    let f = fixture();
    let v = json_of(cstorage(&f.store).args(["image", "inspect", "app1", "dockerimg"]));
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    let app1 = &arr[0];
    let built = &f.built["localhost/app1:latest"];
    assert_eq!(app1["config_digest"].as_str().unwrap(), built.config_digest);
    assert_eq!(
        app1["manifest_digest"].as_str().unwrap(),
        built.manifest_digest
    );
    assert_eq!(
        app1["manifest_type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let diff_ids: Vec<&str> = app1["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diff_id"].as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, built.diff_ids);
    assert_eq!(
        app1["config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(app1["names"][0], "localhost/app1:latest");
    assert!(app1["record"]["big-data-names"].is_array());
    assert_eq!(
        arr[1]["manifest_type"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    // Against containers-storage's view of the same image record.
    let go = json_of(
        f.store
            .cs()
            .args(["image", "-j", app1["id"].as_str().unwrap()]),
    );
    assert_eq!(go[0]["id"], app1["id"]);
    assert_eq!(go[0]["layer"], app1["top_layer"]);
    assert_eq!(go[0], app1["record"]);
}

#[test]
fn layers_match_containers_storage() {
    let f = fixture();
    let ours = json_of(cstorage(&f.store).args(["layers", "--format", "json"]));
    let go = f.store.go_layers();
    let ids = |v: &[Value]| -> BTreeSet<String> {
        v.iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(ours.as_array().unwrap()), ids(&go));
    for l in ours.as_array().unwrap() {
        let g = go.iter().find(|g| g["id"] == l["id"]).unwrap();
        assert_eq!(l["diff_digest"], g["diff-digest"]);
        assert_eq!(l["diff_size"], g["diff-size"]);
        assert_eq!(l["compressed_digest"], g["compressed-diff-digest"]);
        assert_eq!(l["parent"], g.get("parent").cloned().unwrap_or(Value::Null));
    }
    // Inspect by diff digest.
    let first = &ours[0];
    let v = json_of(cstorage(&f.store).args([
        "layer",
        "inspect",
        first["diff_digest"].as_str().unwrap(),
    ]));
    assert_eq!(v[0]["id"], first["id"]);
    assert_eq!(v[0]["has_tar_split"], true);
    assert_eq!(v[0]["link_id"].as_str().unwrap().len(), 26);
    let table = stdout_of(cstorage(&f.store).arg("layers"));
    assert_eq!(table.lines().count(), go.len() + 1);
}

#[test]
fn containers_are_listed() {
    let (store, id) = store_with_container();
    let v = json_of(cstorage(&store).args(["containers", "--format", "json"]));
    let go = json_of(store.cs().args(["containers", "-j"]));
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["id"], go[0]["id"]);
    assert_eq!(v[0]["image"].as_str().unwrap(), id);
    assert_eq!(v[0]["layer"], go[0]["layer"]);
    // The container's layer is listed, without tar-split.
    let l = json_of(cstorage(&store).args(["layer", "inspect", v[0]["layer"].as_str().unwrap()]));
    assert_eq!(l[0]["has_tar_split"], false);
    assert!(stdout_of(cstorage(&store).arg("containers")).starts_with("CONTAINER ID"));
}

fn store_with_container() -> (TestStore, String) {
    let f = fixture();
    let store = TestStore::new();
    let l = testutil::OciLayout::create(&store.root.parent().unwrap().join("l"));
    drop(l);
    store.copy_in(
        &format!("oci:{}:base", f.layout.display()),
        "localhost/base:latest",
        &[],
    );
    let id = stdout_of(store.cs().args(["images", "-q"]))
        .trim()
        .to_string();
    stdout_of(store.cs().args(["create-container", &id]));
    (store, id)
}

#[test]
fn info_follows_storage_conf_like_podman() {
    let f = fixture();
    let store = TestStore::new();
    store.copy_in(
        &format!("oci:{}:base", f.layout.display()),
        "localhost/base:latest",
        &[],
    );
    let conf = store.root.parent().unwrap().join("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n[storage.options]\nadditionalimagestores = [\"{}\"]\n[storage.options.overlay]\nskip_mount_home = \"true\"\nmountopt = \"nodev\"\n",
            store.root.display(),
            store.runroot.display(),
            f.ais.root.display()
        ),
    )
    .unwrap();
    let ours = json_of(
        Command::new(env!("CARGO_BIN_EXE_cstorage"))
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .args(["info", "--format", "json"]),
    );
    let go = json_of(
        Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .args([
                "--cgroup-manager=cgroupfs",
                "--events-backend=none",
                "info",
                "--format",
                "json",
            ]),
    );
    let gs = &go["store"];
    assert_eq!(ours["graphroot"], gs["graphRoot"]);
    assert_eq!(ours["runroot"], gs["runRoot"]);
    assert_eq!(ours["driver"], gs["graphDriverName"]);
    assert_eq!(ours["config_file"], gs["configFile"]);
    // podman counts the images of the primary and additional stores, an image present in
    // both twice; cstorage lists such an image once (the primary copy wins).
    assert_eq!(gs["imageStore"]["number"], 3);
    let podman_images = json_of(
        Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .args([
                "--cgroup-manager=cgroupfs",
                "--events-backend=none",
                "images",
                "--format",
                "json",
            ]),
    );
    let unique: BTreeSet<&str> = podman_images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Id"].as_str().unwrap())
        .collect();
    assert_eq!(ours["images"], unique.len());
    assert_eq!(
        ours["additional_image_stores"][0].as_str().unwrap(),
        f.ais.root.display().to_string()
    );
    let opts: BTreeSet<String> = ours["driver_options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_string())
        .collect();
    for (k, v) in gs["graphOptions"].as_object().unwrap() {
        assert!(
            opts.contains(&format!("{k}={}", v.as_str().unwrap())),
            "{k}={v} in {opts:?}"
        );
    }
    // `images` with no flags at all uses the same configuration.
    let listed = json_of(
        Command::new(env!("CARGO_BIN_EXE_cstorage"))
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .args(["images", "--format", "json"]),
    );
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "base (primary) + ais-only (additional)"
    );
}

#[test]
fn errors_are_one_clear_line() {
    let f = fixture();
    let e = fails(Command::new(env!("CARGO_BIN_EXE_cstorage")).args([
        "--root",
        "/nonexistent/store",
        "images",
    ]));
    assert!(e.contains("/nonexistent/store"), "{e}");
    let e = fails(cstorage(&f.store).args(["image", "inspect", "no-such-image"]));
    assert!(e.contains("image not known: no-such-image"), "{e}");
    let e = fails(cstorage(&f.store).args(["layer", "inspect", "no-such-layer"]));
    assert!(e.contains("layer not known"), "{e}");
    let e = fails(cstorage(&f.store).args(["--storage-driver", "vfs", "images"]));
    assert!(e.contains("vfs") && e.contains("overlay"), "{e}");
    let conf = f.store.root.parent().unwrap().join("broken.conf");
    std::fs::write(&conf, "[storage\n").unwrap();
    let e = fails(
        Command::new(env!("CARGO_BIN_EXE_cstorage"))
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .arg("images"),
    );
    assert!(e.contains("broken.conf"), "{e}");
    // A corrupt images.json names the file.
    let store = TestStore::new();
    store.copy_in(
        &format!("oci:{}:base", f.layout.display()),
        "localhost/base:latest",
        &[],
    );
    let images_json = store.root.join("overlay-images/images.json");
    std::fs::write(&images_json, "{not json").unwrap();
    let e = fails(cstorage(&store).arg("images"));
    assert!(e.contains(&images_json.display().to_string()), "{e}");
    assert!(Path::new(&images_json).exists());
}

#[test]
fn layer_export_matches_go_and_ls_matches_tar() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    for l in f.store.go_layers() {
        let id = l["id"].as_str().unwrap();
        let digest = l["diff-digest"].as_str().unwrap();
        // To a file, with digest verification.
        let out = dir.path().join(format!("{id}.tar"));
        stdout_of(
            cstorage(&f.store)
                .args(["layer", "export", id, "--verify", "digest", "-o"])
                .arg(&out),
        );
        assert_eq!(format!("sha256:{}", testutil::sha256_file(&out)), digest);
        // To a pipe: the same bytes as containers-storage.
        let ours = testutil::run(cstorage(&f.store).args(["layer", "export", id])).stdout;
        let go = testutil::run(f.store.cs().args(["diff", "-u", id])).stdout;
        assert!(ours == go, "layer {id}");
        // `layer ls` lists what tar lists.
        let ls = stdout_of(cstorage(&f.store).args(["layer", "ls", id]));
        let tar = stdout_of(std::process::Command::new("tar").arg("-tf").arg(&out));
        assert_eq!(ls, tar, "layer {id}");
        let long = stdout_of(cstorage(&f.store).args(["layer", "ls", "-l", id]));
        assert_eq!(long.lines().count(), tar.lines().count());
        let json = json_of(cstorage(&f.store).args(["--format", "json", "layer", "ls", id]));
        assert_eq!(json.as_array().unwrap().len(), tar.lines().count());
    }
    // A layer by image and index, and by diff digest.
    let img = json_of(cstorage(&f.store).args(["image", "inspect", "app1"]));
    let top = img[0]["layers"][1]["id"].as_str().unwrap();
    let by_index =
        testutil::run(cstorage(&f.store).args(["layer", "export", "--image", "app1", "1"])).stdout;
    let by_id = testutil::run(cstorage(&f.store).args(["layer", "export", top])).stdout;
    assert!(by_index == by_id);
    let long = stdout_of(cstorage(&f.store).args(["layer", "ls", "-l", "--image", "app1", "1"]));
    assert!(
        long.contains("./etc/.wh.os-release") && long.contains("./usr/share/doc/.wh..wh..opq"),
        "{long}"
    );
    let e = fails(cstorage(&f.store).args(["layer", "export", "--image", "app1", "7"]));
    assert!(e.contains("no layer 7"), "{e}");
}

#[test]
fn layer_export_refuses_a_terminal_and_warns_for_generated_tars() {
    let (store, _) = store_with_container();
    let ctr = json_of(cstorage(&store).args(["containers", "--format", "json"]));
    let layer = ctr[0]["layer"].as_str().unwrap().to_string();
    // `script` gives the command a terminal as stdout.
    let cmd = format!(
        "CONTAINERS_STORAGE_CONF=/dev/null {} {} layer export {layer}",
        env!("CARGO_BIN_EXE_cstorage"),
        store.cstorage_args().join(" ")
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("refusing to write binary data to a terminal")
    );
    // A container layer has no tar-split: exported with a warning.
    let out = cstorage(&store)
        .args(["layer", "export", &layer])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("no tar-split"),
        "{err}"
    );
    assert!(
        out.stdout.len() >= 1024,
        "an empty layer is still a valid tar"
    );
    let e = fails(cstorage(&store).args(["layer", "export", &layer, "--verify", "digest"]));
    assert!(e.contains("no tar-split"), "{e}");
}

#[test]
fn verify_reports_exactly_what_is_damaged() {
    let f = fixture();
    let store = TestStore::new();
    for (tag, name) in [
        ("app1", "localhost/app1:latest"),
        ("app2", "localhost/app2:latest"),
        ("dock", "localhost/dock:latest"),
    ] {
        store.copy_in(&format!("oci:{}:{tag}", f.layout.display()), name, &[]);
    }
    let clean = cstorage(&store)
        .args(["verify", "--all", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    let checks: Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert!(checks.as_array().unwrap().iter().all(|c| c["ok"] == true));
    // 4 distinct layers (shared base), 3 images.
    let layer_checks = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["subject"].as_str().unwrap().starts_with("layer "))
        .count();
    assert_eq!(layer_checks, 4);

    let inspect = |q: &str| json_of(cstorage(&store).args(["image", "inspect", q]))[0].clone();
    let (app1, app2, dock) = (inspect("app1"), inspect("app2"), inspect("dock"));
    let top = |v: &Value| v["top_layer"].as_str().unwrap().to_string();
    // 1. A changed file in app2's top layer.
    let f2 = store
        .root
        .join(format!("overlay/{}/diff/app/two.bin", top(&app2)));
    let mut b = std::fs::read(&f2).unwrap();
    b[7] ^= 1;
    std::fs::write(&f2, b).unwrap();
    // 2. The tar-split of dock's top layer deleted.
    std::fs::remove_file(
        store
            .root
            .join(format!("overlay-layers/{}.tar-split.gz", top(&dock))),
    )
    .unwrap();
    // 3. app1's manifest edited.
    let m = store.root.join(format!(
        "overlay-images/{}/manifest",
        app1["id"].as_str().unwrap()
    ));
    let mut mb = std::fs::read(&m).unwrap();
    mb.extend_from_slice(b"\n");
    std::fs::write(&m, mb).unwrap();

    let out = cstorage(&store)
        .args(["verify", "--all", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut failed: Vec<String> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["subject"].as_str().unwrap().to_string())
        .collect();
    failed.sort();
    let mut want = vec![
        format!("image {} big-data manifest", app1["id"].as_str().unwrap()),
        format!("layer {}", top(&app2)),
        format!("layer {}", top(&dock)),
    ];
    want.sort();
    assert_eq!(failed, want);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 of the checks failed"), "{err}");
    // The table says the same.
    let table = cstorage(&store).args(["verify", "app2"]).output().unwrap();
    assert_eq!(table.status.code(), Some(1));
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(t.contains("FAILED") && t.contains("app/two.bin"), "{t}");
}

/// Peak resident memory (KiB) and stdout of a cstorage run, through `/usr/bin/time`.
fn peak_rss(store: &TestStore, args: &[&str]) -> (u64, String) {
    let rss = store.root.parent().unwrap().join("rss");
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f").arg("%M").arg("-o").arg(&rss);
    c.arg(env!("CARGO_BIN_EXE_cstorage"));
    c.args(store.cstorage_args()).args(args);
    c.env("CONTAINERS_STORAGE_CONF", "/dev/null");
    let out = stdout_of(&mut c);
    let kib = std::fs::read_to_string(&rss)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (kib, out)
}

#[test]
fn deep_chains_with_many_images_take_linear_memory() {
    // One real image, then a chain of 4200 layers on its base layer with an image on each
    // (records written by hand: skopeo cannot build such a store in test time).
    let f = fixture();
    let store = TestStore::new();
    store.copy_in(
        &format!("oci:{}:base", f.layout.display()),
        "localhost/base:latest",
        &[],
    );
    let lpath = store.root.join("overlay-layers/layers.json");
    let ipath = store.root.join("overlay-images/images.json");
    let mut layers: Vec<Value> = serde_json::from_slice(&std::fs::read(&lpath).unwrap()).unwrap();
    let mut images: Vec<Value> = serde_json::from_slice(&std::fs::read(&ipath).unwrap()).unwrap();
    let base = layers[0]["id"].as_str().unwrap().to_string();
    const DEPTH: usize = 4200;
    // IDs that differ in their first 12 characters (the table's short IDs).
    let layer_id = |i: usize| format!("{i:012x}{:052x}", 0);
    let mut parent = base.clone();
    for i in 0..DEPTH {
        let mut l = layers[0].clone();
        let id = layer_id(i + 1);
        l["id"] = Value::from(id.clone());
        l["parent"] = Value::from(parent.clone());
        l.as_object_mut().unwrap().remove("names");
        layers.push(l);
        let mut img = images[0].clone();
        img["id"] = Value::from(format!("e{:063x}", i + 1));
        img["layer"] = Value::from(id.clone());
        img.as_object_mut().unwrap().remove("names");
        images.push(img);
        parent = id;
    }
    std::fs::write(&lpath, serde_json::to_vec(&layers).unwrap()).unwrap();
    std::fs::write(&ipath, serde_json::to_vec(&images).unwrap()).unwrap();
    // Counts: the base is used by every image; the layer at depth k (1-based above the
    // base) by the images on it and above it.
    let (kib, out) = peak_rss(&store, &["layers"]);
    let count_of = |id: &str| -> usize {
        let short = &id[..12];
        let line = out.lines().find(|l| l.starts_with(short)).unwrap();
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert_eq!(count_of(&base), DEPTH + 1);
    assert_eq!(count_of(&layer_id(1)), DEPTH);
    assert_eq!(count_of(&layer_id(4000)), DEPTH - 3999);
    assert_eq!(count_of(&layer_id(DEPTH)), 1);
    assert!(kib < 100 * 1024, "layers: {kib} KiB");
    let (kib, out) = peak_rss(&store, &["layer", "inspect", &base]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["images"].as_array().unwrap().len(), DEPTH + 1);
    assert!(kib < 100 * 1024, "layer inspect: {kib} KiB");
    // Images above 4096 layers cannot be read: `images` says their size is unknown, as
    // `image inspect` refuses them.
    let (kib, out) = peak_rss(&store, &["images", "-a", "--format", "json"]);
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    let deep = format!("e{:063x}", DEPTH);
    let ok = format!("e{:063x}", 10);
    let size_of = |id: &str| v.iter().find(|i| i["id"] == id).unwrap()["size"].clone();
    assert!(size_of(&deep).is_null());
    assert!(size_of(&ok).as_u64().unwrap() > 0);
    assert!(kib < 100 * 1024, "images: {kib} KiB");
    // (with the big data of the real image, so that only its depth is wrong)
    let orig = images[0]["id"].as_str().unwrap();
    testutil::run(
        Command::new("cp")
            .arg("-a")
            .arg(store.root.join("overlay-images").join(orig))
            .arg(store.root.join("overlay-images").join(&deep)),
    );
    let e = fails(cstorage(&store).args(["image", "inspect", &deep]));
    assert!(e.contains("longer than"), "{e}");
}

/// `--format` templates, `df -v` and the container fields against Debian 12's podman 4.3 on
/// a store with podman-created containers. (Filters are compared with podman 5 in
/// modern.rs; podman 4.3 differs there in two ways the README lists.)
#[test]
fn templates_and_df_match_podman4() {
    let f = fixture();
    let store = TestStore::new();
    for (src, name) in [
        ("base", "localhost/base:latest"),
        ("app1", "localhost/app1:latest"),
        ("app1", "docker.io/library/again:v1"),
    ] {
        store.copy_in(&format!("oci:{}:{src}", f.layout.display()), name, &[]);
    }
    for (n, img) in [
        ("c1", "localhost/app1:latest"),
        ("c2", "localhost/base:latest"),
    ] {
        testutil::run(
            store
                .podman()
                .args(["create", "--name", n, "--network", "none", img, "/x"]),
        );
    }
    let sorted = |b: Vec<u8>| {
        let mut v: Vec<String> = String::from_utf8_lossy(&b)
            .lines()
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    let ours = |args: &[&str]| sorted(cstorage(&store).args(args).output().unwrap().stdout);
    let podman = |args: &[&str]| sorted(testutil::run(store.podman().args(args)).stdout);
    for t in [
        "table {{.ID}}\\t{{.Repository}}\\t{{.Tag}}\\t{{.Size}}\\t{{.CreatedAt}}\\t{{.Digest}}",
        "{{.ID}}|{{.Labels}}|{{.Names}}|{{.History}}|{{.Containers}}|{{.VirtualSize}}|{{.ParentId}}|{{.Dangling}}",
        "{{range .RepoDigests}}{{.}},{{end}} {{lower .Repository}} {{printf \"%.4s\" .Tag}}",
    ] {
        assert_eq!(
            ours(&["images", "--format", t]),
            podman(&["images", "--format", t]),
            "{t}"
        );
    }
    let t = "{{.ID}} {{.Names}} {{.Image}} {{.ImageID}} {{.Labels}}";
    assert_eq!(
        ours(&["containers", "--format", t]),
        podman(&["ps", "-a", "--format", t])
    );
    let t = "{{.Id}} {{.RepoTags}} {{.Size}} {{.Config.Cmd}} {{.RootFS.Layers}} {{.Parent}}";
    assert_eq!(
        ours(&["image", "inspect", "--format", t, "localhost/app1"]),
        podman(&["image", "inspect", "--format", t, "localhost/app1"])
    );
    // df -v: the images table (CREATED is a human duration: left out).
    let rows = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .take_while(|l| !l.starts_with("Containers space usage"))
            .filter(|l| !l.is_empty() && !l.starts_with("Images space usage"))
            .map(|l| {
                let c: Vec<&str> = l
                    .split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect();
                [&c[..3], &c[4..]].concat().join("|")
            })
            .collect()
    };
    let unsorted = |b: Vec<u8>| -> Vec<String> {
        String::from_utf8_lossy(&b)
            .lines()
            .map(String::from)
            .collect()
    };
    let mut a = rows(unsorted(
        cstorage(&store).args(["df", "-v"]).output().unwrap().stdout,
    ));
    let mut b = rows(unsorted(
        testutil::run(store.podman().args(["system", "df", "-v"])).stdout,
    ));
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert!(
        a.iter().any(|r| r.contains("|1")),
        "a container is counted: {a:?}"
    );
}

#[test]
fn completions_load_and_the_man_page_renders() {
    let bin = env!("CARGO_BIN_EXE_cstorage");
    let o = testutil::run(Command::new("bash").arg("-c").arg(format!(
        "source <({bin} completions bash) && complete -p cstorage"
    )));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("_cstorage"),
        "{o:?}"
    );
    // bash: what Tab after `cstorage ima` offers.
    let o = testutil::run(Command::new("bash").arg("-c").arg(format!(
        "source <({bin} completions bash); COMP_WORDS=(cstorage ima); COMP_CWORD=1; _cstorage cstorage ima cstorage; echo \"${{COMPREPLY[@]}}\""
    )));
    let offered = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        offered.contains("images") && offered.contains("image"),
        "{offered}"
    );
    testutil::require_tool("zsh");
    let o = testutil::run(Command::new("zsh").arg("-fc").arg(format!(
        "autoload -Uz compinit && compinit -u -D && source <({bin} completions zsh) && print -r -- ${{_comps[cstorage]}}"
    )));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "_cstorage",
        "{o:?}"
    );
    let o = testutil::run(Command::new("sh").arg("-c").arg(format!(
        "{bin} man > /tmp/cstorage.1.$$ && MANWIDTH=100 man -l /tmp/cstorage.1.$$; rc=$?; rm -f /tmp/cstorage.1.$$; exit $rc"
    )));
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains("NAME") && page.contains("cstorage"), "{page}");
    assert!(
        page.contains("images") && page.contains("--storage-opt"),
        "{page}"
    );
    let v = stdout_of(Command::new(bin).arg("--version"));
    assert!(v.starts_with("cstorage 0."), "{v}");
}
