//! `cstorage verify --metadata`: each layer's `diff` directory against its tar-split headers.
//! Zero differences on stores written by skopeo/podman (native overlay, fuse-overlayfs,
//! `force_mask`, an additional image store, rootless), exactly the planted ones on a damaged
//! copy. (The podman 5 stores of the Debian 13 chroot are checked in `modern.rs`, with
//! `podman system check` beside it.)

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use testutil::fixtures::{Standard, standard};
use testutil::{Blob, OciLayout, TestStore, go_arch, python_tar, run};

mod common;
use common::cstorage;

/// The `layer <id> metadata` checks of `verify --metadata --all`, and whether it exited 0.
fn metadata_checks(c: &mut Command) -> (Vec<Value>, bool) {
    let out = c
        .args(["--format", "json", "verify", "--metadata", "--all"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["subject"].as_str().unwrap().ends_with(" metadata"))
        .cloned()
        .collect();
    (checks, out.status.success())
}

/// Every layer compared, none with a difference.
fn assert_clean(what: &str, c: &mut Command, min_layers: usize) {
    let (checks, ok) = metadata_checks(c);
    let compared: Vec<&Value> = checks
        .iter()
        .filter(|c| c["detail"].as_str().unwrap().contains("no differences"))
        .collect();
    let bad: Vec<&Value> = checks.iter().filter(|c| c["ok"] != true).collect();
    assert!(bad.is_empty(), "{what}: {bad:#?}");
    assert!(
        compared.len() >= min_layers,
        "{what}: only {} layers compared: {checks:#?}",
        compared.len()
    );
    assert!(ok, "{what}: verify failed");
}

fn fixture() -> &'static Standard {
    static F: OnceLock<Standard> = OnceLock::new();
    F.get_or_init(|| standard(&testutil::fixture_dir(&std::env::temp_dir(), "cst-meta")))
}

#[test]
fn skopeo_stores_have_no_differences() {
    let f = fixture();
    assert_clean("native store", &mut cstorage(&f.store), 4);
    assert_clean("fuse-overlayfs store", &mut cstorage(&f.fuse), 2);
    assert_clean("additional image store", &mut cstorage(&f.ais), 1);
}

/// Two layers with what c/storage turns into other forms on disk: a whiteout, an opaque
/// directory, a directory only implied by the tar, a hard link, a device, a FIFO, xattrs.
const LAYERS: &str = r#"
import io, sys, tarfile
def tar(entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, mode, uid, data, extra in entries:
            ti = tarfile.TarInfo(name); ti.mode = mode; ti.uid = uid; ti.gid = uid + 1
            ti.mtime = 1700000000
            ti.pax_headers = extra
            if kind == "d": ti.type = tarfile.DIRTYPE; t.addfile(ti)
            elif kind == "l": ti.type = tarfile.SYMTYPE; ti.linkname = data.decode(); t.addfile(ti)
            elif kind == "h": ti.type = tarfile.LNKTYPE; ti.linkname = data.decode(); t.addfile(ti)
            elif kind == "c": ti.type = tarfile.CHRTYPE; ti.devmajor = 1; ti.devminor = 3; t.addfile(ti)
            elif kind == "p": ti.type = tarfile.FIFOTYPE; t.addfile(ti)
            else: ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    return b.getvalue()
x = {"SCHILY.xattr.user.note": "kept"}
layers = [
  tar([("etc", "d", 0o755, 0, b"", {}), ("etc/conf", "f", 0o644, 0, b"conf\n", x),
       ("etc/secret", "f", 0o600, 0, b"secret\n", {}),
       ("etc/owned", "f", 0o640, 7, b"owned\n", {}),
       ("etc/link", "l", 0o777, 0, b"conf", {}),
       ("etc/hard", "h", 0o644, 0, b"etc/conf", {}),
       ("etc/gone", "f", 0o644, 0, b"removed in layer 2\n", {}),
       ("dev", "d", 0o755, 0, b"", {}), ("dev/null", "c", 0o666, 0, b"", {}),
       ("dev/fifo", "p", 0o600, 0, b"", {}),
       ("opq", "d", 0o750, 3, b"", {}), ("opq/old", "f", 0o644, 3, b"old\n", {})]),
  tar([("etc", "d", 0o755, 0, b"", {}), ("etc/.wh.gone", "f", 0o600, 0, b"", {}),
       ("opq", "d", 0o750, 3, b"", {}), ("opq/.wh..wh..opq", "f", 0o600, 3, b"", {}),
       ("opq/new", "f", 0o4755, 3, b"new\n", {}),
       ("var/lib/app/data", "f", 0o644, 5, b"data under implied directories\n", x)]),
]
for l in layers:
    sys.stdout.buffer.write(len(l).to_bytes(8, "little") + l)
"#;

fn tars(device: bool) -> Vec<Vec<u8>> {
    let script = if device {
        LAYERS.to_string()
    } else {
        LAYERS
            .replace(r#"("dev/null", "c", 0o666, 0, b"", {}),"#, "")
            .replace(r#"("dev/fifo", "p", 0o600, 0, b"", {}),"#, "")
    };
    let raw = python_tar(&script);
    let mut tars = Vec::new();
    let mut rest = &raw[..];
    while !rest.is_empty() {
        let n = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        tars.push(rest[8..8 + n].to_vec());
        rest = &rest[8 + n..];
    }
    tars
}

fn store_with(opts: &[&str]) -> (TestStore, Vec<String>) {
    let store = TestStore::with_opts(opts);
    let mut l = OciLayout::create(&store.root.parent().unwrap().join("layout"));
    // c/storage 1.43 cannot store a device or a FIFO with force_mask: it fails setting the
    // override xattr on the node it created (EPERM).
    let device = !opts.iter().any(|o| o.contains("force_mask"));
    let img = l.add_image("meta", &tars(device), Blob::Gzip, go_arch());
    store.copy_in(&l.source("meta"), "localhost/meta:latest", &[]);
    let layers = store.go_layers();
    let ids = img
        .diff_ids
        .iter()
        .map(|d| {
            layers
                .iter()
                .find(|l| l["diff-digest"] == d.as_str())
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    (store, ids)
}

#[test]
fn whiteouts_devices_links_and_xattrs_are_no_differences() {
    let (s, _) = store_with(&[]);
    assert_clean("native", &mut cstorage(&s), 2);
    let (s, _) = store_with(&["overlay.mount_program=/usr/bin/fuse-overlayfs"]);
    assert_clean("fuse-overlayfs", &mut cstorage(&s), 2);
    // force_mask: modes on disk are the mask, the real ones in user.containers.override_stat.
    let (s, ids) = store_with(&[
        "overlay.mount_program=/usr/bin/fuse-overlayfs",
        "overlay.force_mask=0700",
    ]);
    let secret = s.root.join("overlay").join(&ids[0]).join("diff/etc/conf");
    let md = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o7777,
        0o700
    );
    assert_clean("force_mask", &mut cstorage(&s), 2);
}

/// A copy of a store, damaged in five ways: verify --metadata reports exactly those.
#[test]
fn damaged_copy_reports_exactly_the_planted_differences() {
    let (s, ids) = store_with(&[]);
    assert_clean("original", &mut cstorage(&s), 2);
    let copy = s.root.parent().unwrap().join("copy");
    std::fs::create_dir(&copy).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(&s.root)
        .arg(copy.join("root")));
    let damaged = TestStore::at(&copy, &[]);
    let d0 = damaged.root.join("overlay").join(&ids[0]).join("diff");
    let d1 = damaged.root.join("overlay").join(&ids[1]).join("diff");
    run(Command::new("chmod").arg("4777").arg(d0.join("etc/secret")));
    std::fs::write(d1.join("etc/extra"), b"planted\n").unwrap();
    std::fs::remove_file(d1.join("opq/new")).unwrap();
    std::fs::remove_file(d0.join("etc/link")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", d0.join("etc/link")).unwrap();
    run(Command::new("chown")
        .args(["-h", "0:1"])
        .arg(d0.join("etc/link")));
    run(Command::new("chown")
        .arg("1234:1234")
        .arg(d0.join("etc/owned")));

    let (checks, ok) = metadata_checks(&mut cstorage(&damaged));
    assert!(!ok, "verify must fail on the damaged copy");
    // Each difference as (layer, path, the rest with sorted keys).
    let canon = |v: &Value| -> String {
        let m: std::collections::BTreeMap<String, Value> =
            serde_json::from_value(v.clone()).unwrap();
        serde_json::to_string(&m).unwrap()
    };
    let mut found = BTreeSet::new();
    for c in &checks {
        let layer = c["subject"].as_str().unwrap().split(' ').nth(1).unwrap();
        for d in c["differences"].as_array().into_iter().flatten() {
            let mut d = d.clone();
            let path = d["path"].as_str().unwrap().to_string();
            d.as_object_mut().unwrap().remove("path");
            found.insert((layer.to_string(), path, canon(&d)));
        }
    }
    let want: BTreeSet<(String, String, String)> = [
        (
            &ids[0],
            "etc/secret",
            r#"{"disk":2559,"kind":"mode","tar":384}"#,
        ),
        (&ids[1], "etc/extra", r#"{"disk":"file","kind":"extra"}"#),
        (&ids[1], "opq/new", r#"{"kind":"missing","tar":"file"}"#),
        (
            &ids[0],
            "etc/link",
            r#"{"disk":"/etc/shadow","kind":"symlink-target","tar":"conf"}"#,
        ),
        (
            &ids[0],
            "etc/owned",
            r#"{"disk":[1234,1234],"kind":"owner","tar":[7,8]}"#,
        ),
    ]
    .into_iter()
    .map(|(l, p, d)| (l.clone(), p.to_string(), d.to_string()))
    .collect();
    assert_eq!(found, want, "{checks:#?}");
    // The table names them too, and the exit status is 1.
    let out = cstorage(&damaged)
        .args(["verify", "--metadata", "--all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("etc/secret: mode: tar 0600, disk 4777"),
        "{table}"
    );
}

/// Run as the rootless user on their own store: owners mapped back through the user's
/// subordinate ranges, whiteouts and opaque directories in the rootless forms.
#[test]
fn rootless_store_has_no_differences() {
    let store = testutil::rootless::RootlessStore::new("cst-rl-meta");
    let bin = store.install(Path::new(env!("CARGO_BIN_EXE_cstorage")), "cstorage");
    let mut c = store.as_user(bin.to_str().unwrap());
    let (checks, ok) = metadata_checks(&mut c);
    let bad: Vec<&Value> = checks.iter().filter(|c| c["ok"] != true).collect();
    assert!(bad.is_empty() && ok, "{bad:#?}");
    assert_eq!(
        checks
            .iter()
            .filter(|c| c["detail"].as_str().unwrap().contains("no differences"))
            .count(),
        3,
        "{checks:#?}"
    );
}

/// An image layer never holds overlay metadata-only files or redirects (podman 4.3 builds
/// with metacopy=on do not write them); one found is reported, not read as zeros silently.
#[test]
fn overlay_stub_in_an_image_layer_is_reported() {
    let (s, ids) = store_with(&[]);
    let f = s.root.join("overlay").join(&ids[0]).join("diff/etc/conf");
    run(Command::new("setfattr")
        .args(["-n", "trusted.overlay.metacopy", "-v", ""])
        .arg(&f));
    let (checks, ok) = metadata_checks(&mut cstorage(&s));
    assert!(!ok);
    let diffs: Vec<&Value> = checks
        .iter()
        .flat_map(|c| c["differences"].as_array().into_iter().flatten())
        .collect();
    // The file and its hard link (the same inode).
    let paths: Vec<&str> = diffs.iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["etc/conf", "etc/hard"], "{checks:#?}");
    for d in diffs {
        assert_eq!(d["kind"], "overlay-stub");
        assert_eq!(d["xattr"], "trusted.overlay.metacopy");
    }
}

/// A 5000-deep tree planted in a layer (deeper than PATH_MAX allows naming in one path) is
/// one difference, its top; checking it neither recurses 5000 frames nor opens 5000 handles.
#[test]
fn planted_deep_tree_is_one_difference() {
    let (s, ids) = store_with(&[]);
    let top = s.root.join("overlay").join(&ids[1]).join("diff");
    let script = r#"
import os, sys
os.chdir(sys.argv[1])
for i in range(5000):
    os.mkdir("d")
    os.chdir("d")
open("leaf", "w").write("deep\n")
"#;
    run(Command::new("python3").arg("-c").arg(script).arg(&top));
    let (checks, ok) = metadata_checks(&mut cstorage(&s));
    assert!(!ok);
    let diffs: Vec<&Value> = checks
        .iter()
        .flat_map(|c| c["differences"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(diffs.len(), 1, "{checks:#?}");
    assert_eq!(diffs[0]["path"], "d");
    assert_eq!(diffs[0]["kind"], "extra");
    assert_eq!(diffs[0]["disk"], "directory");
}
