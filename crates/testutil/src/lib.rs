//! Test support: OCI layouts built from real tars, and real containers-storage stores written
//! by skopeo, with the Go tools (containers-storage, podman) at hand to compare against.
//!
//! Nothing here imitates a store: stores are always written by skopeo/podman.

#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod fixtures;
pub mod rootless;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Fails the test with an explanation if a tool the tests need is missing.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "the tests need `{name}` (Debian packages are installed by .ci/run); it is not in PATH"
    );
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn sha256_file(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Runs a command, panicking with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    out
}

pub fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("utf-8 output")
}

/// GNU tar archive formats.
#[derive(Clone, Copy, Debug)]
pub enum TarFormat {
    Gnu,
    Posix,
    Ustar,
    V7,
}

impl TarFormat {
    fn flag(self) -> &'static str {
        match self {
            TarFormat::Gnu => "--format=gnu",
            TarFormat::Posix => "--format=posix",
            TarFormat::Ustar => "--format=ustar",
            TarFormat::V7 => "--format=v7",
        }
    }
}

/// Tars the contents of `dir` with GNU tar (entries named `./...`, sorted).
pub fn gnu_tar(dir: &Path, format: TarFormat, extra: &[&str]) -> Vec<u8> {
    let mut c = Command::new("tar");
    c.arg("-C")
        .arg(dir)
        .arg(format.flag())
        .arg("--sort=name")
        .arg("--numeric-owner");
    if matches!(format, TarFormat::Posix) {
        c.arg("--xattrs").arg("--xattrs-include=*");
    }
    c.args(extra).arg("-cf").arg("-").arg(".");
    run(&mut c).stdout
}

/// Runs a Python script that writes a tar to stdout (for dialects GNU tar cannot produce).
pub fn python_tar(script: &str) -> Vec<u8> {
    run(Command::new("python3").arg("-c").arg(script)).stdout
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A built image: its manifest and config digests and the layers' DiffIDs.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest_digest: String,
    pub manifest_size: usize,
    pub config_digest: String,
    pub diff_ids: Vec<String>,
    pub manifest: Vec<u8>,
}

/// How a layer blob is stored in the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blob {
    Plain,
    Gzip,
}

/// An OCI image layout directory written by hand (index.json, blobs/sha256).
pub struct OciLayout {
    pub dir: PathBuf,
    index: Vec<Value>,
}

impl OciLayout {
    pub fn create(dir: &Path) -> OciLayout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = OciLayout {
            dir: dir.to_owned(),
            index: Vec::new(),
        };
        l.write_index();
        l
    }

    fn write_index(&self) {
        let idx = json!({"schemaVersion": 2, "manifests": self.index});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&idx).unwrap(),
        )
        .unwrap();
    }

    /// Writes a blob and returns `sha256:<hex>`.
    pub fn put_blob(&self, b: &[u8]) -> String {
        let h = sha256_hex(b);
        std::fs::write(self.dir.join("blobs/sha256").join(&h), b).unwrap();
        format!("sha256:{h}")
    }

    /// Adds an image made of the given layer tars (base first) and tags it `tag`
    /// (an empty tag adds no index entry, e.g. for list members).
    pub fn add_image(
        &mut self,
        tag: &str,
        layers: &[Vec<u8>],
        blob: Blob,
        arch: &str,
    ) -> BuiltImage {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for t in layers {
            diff_ids.push(format!("sha256:{}", sha256_hex(t)));
            let (data, mt) = match blob {
                Blob::Plain => (t.clone(), "application/vnd.oci.image.layer.v1.tar"),
                Blob::Gzip => (gzip(t), "application/vnd.oci.image.layer.v1.tar+gzip"),
            };
            let d = self.put_blob(&data);
            descs.push(json!({"mediaType": mt, "digest": d, "size": data.len()}));
        }
        let history: Vec<Value> = layers
            .iter()
            .enumerate()
            .map(|(i, _)| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("layer {i} of {tag}")}))
            .collect();
        let config = json!({
            "created": "2024-01-02T03:04:05Z",
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin"], "Labels": {"test.tag": tag}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_digest = self.put_blob(&config_bytes);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": descs,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let manifest_digest = self.put_blob(&manifest_bytes);
        if !tag.is_empty() {
            self.index.push(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_bytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }));
            self.write_index();
        }
        BuiltImage {
            manifest_digest,
            manifest_size: manifest_bytes.len(),
            config_digest,
            diff_ids,
            manifest: manifest_bytes,
        }
    }

    /// Adds an OCI index over the given images (each with its architecture) under `tag`.
    pub fn add_index(&mut self, tag: &str, members: &[(&BuiltImage, &str)]) -> String {
        let manifests: Vec<Value> = members
            .iter()
            .map(|(m, arch)| {
                json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m.manifest_digest,
                       "size": m.manifest_size, "platform": {"architecture": arch, "os": "linux"}})
            })
            .collect();
        let idx = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        let b = serde_json::to_vec(&idx).unwrap();
        let d = self.put_blob(&b);
        self.index.push(json!({
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": b.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        self.write_index();
        d
    }

    /// The skopeo source name for `tag`.
    pub fn source(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }
}

/// A host architecture name as Go spells it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A real store in a temporary directory, written by skopeo.
pub struct TestStore {
    pub root: PathBuf,
    pub runroot: PathBuf,
    /// Driver options besides `overlay.skip_mount_home=true`.
    pub opts: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestStore {
    /// A native-overlay store.
    pub fn new() -> TestStore {
        Self::with_opts(&[])
    }

    /// A store using fuse-overlayfs (AUFS whiteout format).
    pub fn fuse() -> TestStore {
        Self::with_opts(&["overlay.mount_program=/usr/bin/fuse-overlayfs"])
    }

    pub fn with_opts(opts: &[&str]) -> TestStore {
        require_tool("skopeo");
        let tmp = tempfile::Builder::new().prefix("cst-").tempdir().unwrap();
        TestStore {
            root: tmp.path().join("root"),
            runroot: tmp.path().join("run"),
            opts: opts.iter().map(|s| s.to_string()).collect(),
            _tmp: Some(tmp),
        }
    }

    /// A store at a fixed path that outlives the test (for fixtures shared by a test binary).
    pub fn at(dir: &Path, opts: &[&str]) -> TestStore {
        require_tool("skopeo");
        TestStore {
            root: dir.join("root"),
            runroot: dir.join("run"),
            opts: opts.iter().map(|s| s.to_string()).collect(),
            _tmp: None,
        }
    }

    pub fn all_opts(&self) -> Vec<String> {
        let mut v = vec!["overlay.skip_mount_home=true".to_string()];
        v.extend(self.opts.iter().cloned());
        v
    }

    /// The `containers-storage:` transport prefix for this store.
    pub fn spec(&self) -> String {
        format!(
            "containers-storage:[overlay@{}+{}:{}]",
            self.root.display(),
            self.runroot.display(),
            self.all_opts().join(",")
        )
    }

    /// `skopeo copy SRC containers-storage:[...]NAME` with extra arguments.
    pub fn copy_in(&self, src: &str, name: &str, extra: &[&str]) {
        run(Command::new("skopeo")
            .arg("copy")
            .arg("-q")
            .args(extra)
            .arg(src)
            .arg(format!("{}{name}", self.spec())));
    }

    /// A `containers-storage` command on this store.
    pub fn cs(&self) -> Command {
        require_tool("containers-storage");
        let mut c = Command::new("containers-storage");
        c.arg("-s")
            .arg("overlay")
            .arg("-g")
            .arg(&self.root)
            .arg("-R")
            .arg(&self.runroot);
        for o in self.all_opts() {
            c.arg("--storage-opt").arg(o);
        }
        c
    }

    /// A `podman` command on this store.
    pub fn podman(&self) -> Command {
        require_tool("podman");
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .arg("--storage-driver")
            .arg("overlay")
            .arg("--cgroup-manager=cgroupfs")
            .arg("--events-backend=none");
        for o in self.all_opts() {
            c.arg("--storage-opt").arg(o);
        }
        c
    }

    /// Global flags for `cstorage` on this store.
    pub fn cstorage_args(&self) -> Vec<String> {
        let mut v = vec![
            "--root".to_string(),
            self.root.display().to_string(),
            "--runroot".to_string(),
            self.runroot.display().to_string(),
        ];
        for o in self.all_opts() {
            v.push("--storage-opt".into());
            v.push(o);
        }
        v
    }

    /// The layer records as containers-storage prints them (`layers -j`).
    pub fn go_layers(&self) -> Vec<Value> {
        let out = stdout_of(self.cs().arg("layers").arg("-j"));
        serde_json::from_str(&out).unwrap()
    }

    /// The image records as containers-storage prints them (`images -j`).
    pub fn go_images(&self) -> Vec<Value> {
        let out = stdout_of(self.cs().arg("images").arg("-j"));
        serde_json::from_str(&out).unwrap()
    }
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        // c/storage may have left mounts below the store (e.g. after `podman` commands);
        // unmount them so the temporary directory can be removed.
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| {
                    Path::new(p).starts_with(&self.root) || Path::new(p).starts_with(&self.runroot)
                })
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

/// Makes a directory tree from `(path, content)` pairs; paths ending in `/` are directories.
pub fn make_tree(dir: &Path, entries: &[(&str, &[u8])]) {
    std::fs::create_dir_all(dir).unwrap();
    for (p, content) in entries {
        let path = dir.join(p);
        if p.ends_with('/') {
            std::fs::create_dir_all(&path).unwrap();
        } else {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
        }
    }
}

/// A per-process directory `<base>/<name>-<pid>` for fixtures shared by the tests of one test
/// binary (`base` is normally the system temporary directory: podman refuses run roots longer than 50 characters). Directories of processes that no
/// longer run are removed first, so fixtures do not pile up.
pub fn fixture_dir(base: &Path, name: &str) -> PathBuf {
    let prefix = format!("{name}-");
    if let Ok(rd) = std::fs::read_dir(base) {
        for e in rd.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = fname
                .strip_prefix(&prefix)
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let d = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
