//! A rootless store written by an unprivileged user: `cstorage-rl` (created by
//! `scripts/rootless-user.sh`, which `scripts/install-deps.sh` runs as root) runs `skopeo copy`
//! with a fresh podman-default setup (no storage.conf, only `HOME` and `XDG_RUNTIME_DIR`).
//! The images hold files of container users with modes 0600, 0700 and 0000, which the user
//! cannot open outside podman's user namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Blob, OciLayout, fixture_dir, python_tar, run};

/// The unprivileged user the rootless tests run as.
pub const USER: &str = "cstorage-rl";

/// Files of the `rl` image; (path, kind, mode, uid, content). Whiteouts and an opaque
/// directory in the second layer.
const LAYERS: &str = r#"
import io, sys, tarfile
def tar(entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, mode, uid, data in entries:
            ti = tarfile.TarInfo(name); ti.mode = mode; ti.uid = uid; ti.gid = uid
            ti.mtime = 1700000000
            if kind == "d": ti.type = tarfile.DIRTYPE; t.addfile(ti)
            elif kind == "l": ti.type = tarfile.SYMTYPE; ti.linkname = data.decode(); t.addfile(ti)
            else: ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    return b.getvalue()
layers = [
  tar([("etc", "d", 0o755, 0, b""), ("etc/shadow", "f", 0o600, 0, b"root:*:19000::::::\n"),
       ("etc/passwd", "f", 0o644, 0, b"root:x:0:0:root:/root:/bin/sh\n"),
       ("home", "d", 0o755, 0, b""), ("home/u", "d", 0o700, 1000, b""),
       ("home/u/secret", "f", 0o600, 1000, b"the user's secret\n"),
       ("home/u/open", "f", 0o644, 1000, b"readable, in a closed directory\n"),
       ("home/u/link", "l", 0o777, 1000, b"secret"),
       ("srv", "d", 0o000, 0, b""), ("srv/x", "f", 0o644, 0, b"below a mode 000 directory\n"),
       ("zero", "f", 0o000, 1000, b"mode 000 file\n"), ("pub", "f", 0o644, 1000, b"public\n"),
       ("opt", "d", 0o755, 0, b""), ("opt/locked", "d", 0o700, 2000, b""),
       ("opt/locked/old", "f", 0o600, 2000, b"hidden by the opaque directory above\n")]),
  tar([("etc", "d", 0o755, 0, b""), ("etc/shadow", "f", 0o640, 42, b"changed in layer 2\n"),
       ("var", "d", 0o700, 33, b""), ("var/www", "f", 0o600, 33, b"www data\n"),
       ("home", "d", 0o755, 0, b""), ("home/u", "d", 0o700, 1000, b""),
       ("home/u/.wh.open", "f", 0o600, 1000, b""),
       ("opt", "d", 0o755, 0, b""), ("opt/locked", "d", 0o700, 2000, b""),
       ("opt/locked/.wh..wh..opq", "f", 0o600, 2000, b""),
       ("opt/locked/new", "f", 0o600, 2000, b"new in layer 2\n")]),
]
# One layer for the killed-helper test: a protected file first (starts the helper), then
# 2 MiB that fill the output pipe, then many more protected files.
many = [("a", "d", 0o755, 0, b""), ("a/first", "f", 0o600, 1000, b"first\n"),
        ("b", "d", 0o755, 0, b""), ("b/big", "f", 0o644, 0, bytes(range(256)) * 8192),
        ("c", "d", 0o755, 0, b"")]
many += [("c/s%03d" % i, "f", 0o600, 1000 + i, b"secret %d\n" % i) for i in range(200)]
layers.append(tar(many))
for l in layers:
    sys.stdout.buffer.write(len(l).to_bytes(8, "little") + l)
"#;

/// A rootless store of [`USER`] in a per-process directory, with images `localhost/rl`
/// (two layers: container-owned files, a whiteout and an opaque directory) and
/// `localhost/many` (one layer: a protected file, 2 MiB of public data, 200 protected files).
pub struct RootlessStore {
    /// The per-process directory (mode 0755), holding `home/`, `run/` and the OCI layout `oci/`.
    pub dir: PathBuf,
    /// The user's `HOME` (the store is under `.local/share/containers/storage`).
    pub home: PathBuf,
    /// The user's `XDG_RUNTIME_DIR`.
    pub run: PathBuf,
    /// The DiffIDs of image `rl` (base first) and of image `many`.
    pub rl_layers: Vec<String>,
    pub many_layer: String,
}

impl RootlessStore {
    /// Writes the store (must run as root). `name` names the per-process directory under the
    /// system temporary directory.
    pub fn new(name: &str) -> RootlessStore {
        let uid = crate::stdout_of(Command::new("id").arg("-u"));
        assert_eq!(
            uid.trim(),
            "0",
            "the rootless tests run as root and switch to {USER}"
        );
        let ok = Command::new("id").arg(USER).output().unwrap();
        assert!(
            ok.status.success(),
            "user {USER} is missing: run scripts/install-deps.sh (as root) first"
        );
        let dir = fixture_dir(&std::env::temp_dir(), name);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = dir.join("home");
        let run_dir = dir.join("run");
        for d in [&home, &run_dir] {
            std::fs::create_dir(d).unwrap();
            run(Command::new("chown").arg(format!("{USER}:{USER}")).arg(d));
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let raw = python_tar(LAYERS);
        let mut tars = Vec::new();
        let mut rest = &raw[..];
        while !rest.is_empty() {
            let n = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            tars.push(rest[8..8 + n].to_vec());
            rest = &rest[8 + n..];
        }
        assert_eq!(tars.len(), 3);
        let mut oci = OciLayout::create(&dir.join("oci"));
        let rl = oci.add_image("rl", &tars[..2], Blob::Gzip, crate::go_arch());
        let many = oci.add_image("many", &tars[2..], Blob::Plain, crate::go_arch());
        run(Command::new("chmod").args(["-R", "a+rX"]).arg(&oci.dir));
        let s = RootlessStore {
            dir,
            home,
            run: run_dir,
            rl_layers: rl.diff_ids,
            many_layer: many.diff_ids[0].clone(),
        };
        for tag in ["rl", "many"] {
            let src = oci.source(tag);
            run(s
                .as_user("skopeo")
                .args(["copy", "--quiet", &src])
                .arg(format!("containers-storage:localhost/{tag}:latest")));
        }
        s
    }

    /// `prog` run as [`USER`] with a fresh login-like environment: no storage.conf, no
    /// CONTAINERS_* variables, only HOME, XDG_RUNTIME_DIR and PATH; in [`Self::dir`].
    pub fn as_user(&self, prog: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", USER, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("XDG_RUNTIME_DIR={}", self.run.display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg("LANG=C.UTF-8")
            .arg(prog)
            .current_dir(&self.dir);
        c
    }

    /// Copies the program `exe` into [`Self::dir`] as `name` (mode 0755): the user may not be
    /// able to reach the build tree.
    pub fn install(&self, exe: &Path, name: &str) -> PathBuf {
        let bin = self.dir.join(name);
        std::fs::copy(exe, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    /// The store's graph root, as rootless podman places it by default.
    pub fn graphroot(&self) -> PathBuf {
        self.home.join(".local/share/containers/storage")
    }

    /// The layer records (`layers.json`, read as root): (id, diff-digest).
    pub fn layer_records(&self) -> Vec<(String, String)> {
        let b = std::fs::read(self.graphroot().join("overlay-layers/layers.json")).unwrap();
        let v: Vec<serde_json::Value> = serde_json::from_slice(&b).unwrap();
        v.iter()
            .map(|l| {
                (
                    l["id"].as_str().unwrap().to_string(),
                    l["diff-digest"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}
