//! Checking a store's images against the digests it records: every layer rebuilt from
//! tar-split with each file's CRC and the stream's sha256 compared with `diff-digest`, the
//! big-data items (manifests, config) against `big-data-digests`, and the layers against the
//! config's DiffIDs; with [`VerifyOptions::metadata`], also every layer's files against its
//! tar headers ([`compare_layer_metadata`]).

use std::collections::HashSet;

use serde::Serialize;

use cap_std::fs::Dir;
use rustix::fs::FileType;

use crate::error::{Result, StorageError};
use crate::export::{ExportOptions, Verify};
use crate::fsutil::{self, Follow};
use crate::store::image::Image;
use crate::store::layer::Layer;
use crate::store::manifest::{ManifestKind, guess_kind, sha256_digest};
use crate::tar::header::{EntryType, TarHeader};

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Check {
    /// What was checked: `layer <id>`, `image <id> big-data <key>`, `image <id> layers`.
    pub subject: String,
    /// True if it is fine.
    pub ok: bool,
    /// What was found (the error when not fine).
    pub detail: String,
    /// For a metadata check (`layer <id> metadata`), each difference found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<MetadataDifference>,
}

/// Callback told when a layer check starts (layer ID, its size if known) and ends.
pub type VerifyProgress = std::sync::Arc<dyn Fn(&str, Option<u64>, bool) + Send + Sync>;

fn check(subject: String, r: std::result::Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            subject,
            ok: true,
            detail,
            differences: Vec::new(),
        },
        Err(detail) => Check {
            subject,
            ok: false,
            detail,
            differences: Vec::new(),
        },
    }
}

/// The metadata check of one layer, as a [`Check`] named `layer <id> metadata`.
fn metadata_check(l: &Layer) -> Check {
    let subject = format!("layer {} metadata", l.id());
    match compare_layer_metadata(l) {
        Ok(None) => check(
            subject,
            Ok("not compared: no tar-split, or files stored by digest (composefs)".into()),
        ),
        Ok(Some(r)) if r.differences.is_empty() => check(
            subject,
            Ok(format!(
                "{} tar entries, {} files: no differences",
                r.entries, r.files
            )),
        ),
        Ok(Some(r)) => {
            let n = r.differences.len();
            let mut detail = format!("{n} difference{}:", if n == 1 { "" } else { "s" });
            for d in r.differences.iter().take(20) {
                detail.push_str(&format!(" {d};"));
            }
            if n > 20 {
                detail.push_str(&format!(" and {} more", n - 20));
            }
            let mut c = check(subject, Err(detail.trim_end_matches(';').to_string()));
            c.differences = r.differences;
            c
        }
        Err(e) => check(subject, Err(e.to_string())),
    }
}

/// Checks the images' metadata and (once each) their layers, `jobs` layers at a time.
pub fn verify_images(
    images: &[Image],
    jobs: usize,
    progress: Option<VerifyProgress>,
) -> Vec<Check> {
    verify_images_with(images, &VerifyOptions::new(jobs), progress)
}

/// [`verify_images`] with options: with `metadata`, each layer also gets a
/// `layer <id> metadata` check ([`compare_layer_metadata`]).
pub fn verify_images_with(
    images: &[Image],
    opts: &VerifyOptions,
    progress: Option<VerifyProgress>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let mut layers: Vec<Layer> = Vec::new();
    let mut seen = HashSet::new();
    for img in images {
        let id = img.id();
        // Big-data items against their recorded digests.
        for key in img.big_data_names() {
            let Some(want) = img.metadata().big_data_digests.get(key) else {
                continue;
            };
            let subject = format!("image {id} big-data {key}");
            let r = match img.read_big_data(key) {
                Ok(b) => {
                    let got = sha256_digest(&b);
                    // Manifest digests of schema 1 manifests ignore their signatures.
                    let schema1 = key.starts_with("manifest")
                        && guess_kind(&b) == ManifestKind::DockerV2Schema1;
                    if got == *want || schema1 || want.algorithm().as_ref() != "sha256" {
                        Ok(format!("{got}"))
                    } else {
                        Err(format!("content has digest {got}, the record says {want}"))
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            out.push(check(subject, r));
        }
        // The layer chain against the config's DiffIDs.
        let r = match img.layers() {
            Ok(ls) => {
                for l in &ls {
                    if seen.insert(l.id().to_string()) {
                        layers.push(l.clone());
                    }
                }
                Ok(format!("{} layers match the config's DiffIDs", ls.len()))
            }
            Err(e) => {
                // Still verify whatever layers the chain has.
                if let Ok(ls) = img.storage_layers() {
                    for l in ls {
                        if seen.insert(l.id().to_string()) {
                            layers.push(l);
                        }
                    }
                }
                Err(e.to_string())
            }
        };
        out.push(check(format!("image {id} layers"), r));
    }
    out.extend(layer_checks(&layers, opts, progress));
    out
}

/// Rebuilds each layer's tar from tar-split, verifying CRCs, size and sha256.
pub fn verify_layers(
    layers: &[Layer],
    jobs: usize,
    progress: Option<VerifyProgress>,
) -> Vec<Check> {
    layer_checks(layers, &VerifyOptions::new(jobs), progress)
}

fn layer_checks(
    layers: &[Layer],
    opts: &VerifyOptions,
    progress: Option<VerifyProgress>,
) -> Vec<Check> {
    let per_layer = crate::pool::map(layers, opts.jobs, |l| {
        if let Some(p) = &progress {
            p(l.id(), l.diff_size(), false);
        }
        let mut r = vec![check(format!("layer {}", l.id()), verify_layer(l))];
        if opts.metadata {
            r.push(metadata_check(l));
        }
        if let Some(p) = &progress {
            p(l.id(), l.diff_size(), true);
        }
        r
    });
    per_layer.into_iter().flatten().collect()
}

fn verify_layer(l: &Layer) -> std::result::Result<String, String> {
    match l.has_tar_split() {
        Ok(false) => return Err(l.no_tar_split_reason().to_string()),
        Err(e) => return Err(e.to_string()),
        Ok(true) => {}
    }
    if l.diff_id().is_none() {
        return Err("no diff-digest recorded: nothing to verify against".into());
    }
    let mut sink = std::io::sink();
    match l.export(&mut sink, &ExportOptions::new(Verify::Digest)) {
        Ok(rep) => Ok(format!(
            "{} bytes, {} files, {}",
            rep.bytes,
            rep.files,
            rep.digest.map(|d| d.to_string()).unwrap_or_default()
        )),
        Err(StorageError::DigestMismatch {
            expected, found, ..
        }) => Err(format!(
            "rebuilt tar has digest {found}, the store records {expected}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Metadata: a layer's `diff` directory against its tar-split headers.
// ---------------------------------------------------------------------------------------

/// What [`verify_images_with`] checks.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Layers checked in parallel (0: the number of CPUs).
    pub jobs: usize,
    /// Also compare each layer's `diff` directory with its tar-split headers
    /// ([`compare_layer_metadata`]).
    pub metadata: bool,
}

impl VerifyOptions {
    /// Options with `jobs` parallel layer checks, digests only.
    pub fn new(jobs: usize) -> Self {
        VerifyOptions {
            jobs,
            metadata: false,
        }
    }

    /// Adds (or not) the metadata comparison.
    pub fn with_metadata(mut self, metadata: bool) -> Self {
        self.metadata = metadata;
        self
    }
}

/// One way a file in a layer's `diff` directory departs from the layer's tar headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DifferenceKind {
    /// In the tar, not in the directory.
    Missing {
        /// The tar entry's type.
        tar: String,
    },
    /// In the directory, not in the tar (and not a parent directory the tar implies).
    Extra {
        /// The file's type on disk.
        disk: String,
    },
    /// Another file type.
    Type {
        /// In the tar.
        tar: String,
        /// On disk.
        disk: String,
    },
    /// Other permission bits (`0o7777`).
    Mode {
        /// In the tar.
        tar: u32,
        /// On disk (or in `force_mask`'s override xattr).
        disk: u32,
    },
    /// Another owner (container IDs: the disk's mapped back through the store's ID maps).
    Owner {
        /// UID and GID in the tar.
        tar: (u64, u64),
        /// UID and GID on disk, as container IDs.
        disk: (u64, u64),
    },
    /// Another size (regular files).
    Size {
        /// In the tar.
        tar: u64,
        /// On disk.
        disk: u64,
    },
    /// Another symlink target.
    SymlinkTarget {
        /// In the tar.
        tar: String,
        /// On disk.
        disk: String,
    },
    /// Other device numbers.
    Device {
        /// Major and minor in the tar.
        tar: (u32, u32),
        /// On disk.
        disk: (u32, u32),
    },
    /// An extended attribute absent on one side or with another value (values shown
    /// lossily as UTF-8).
    Xattr {
        /// The attribute's name.
        name: String,
        /// In the tar.
        tar: Option<String>,
        /// On disk.
        disk: Option<String>,
    },
    /// A hard link in the tar that is not the same file as its target on disk.
    HardLink {
        /// The target named by the tar.
        target: String,
    },
    /// An overlay metadata-only file or redirect, which only a container's read-write layer
    /// may hold (its content or directory is elsewhere).
    OverlayStub {
        /// The overlay xattr found.
        xattr: String,
    },
}

impl std::fmt::Display for DifferenceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use DifferenceKind as D;
        match self {
            D::Missing { tar } => write!(f, "missing ({tar} in the tar)"),
            D::Extra { disk } => write!(f, "not in the tar ({disk} on disk)"),
            D::Type { tar, disk } => write!(f, "type: tar {tar}, disk {disk}"),
            D::Mode { tar, disk } => write!(f, "mode: tar {tar:04o}, disk {disk:04o}"),
            D::Owner { tar, disk } => write!(
                f,
                "owner: tar {}:{}, disk {}:{}",
                tar.0, tar.1, disk.0, disk.1
            ),
            D::Size { tar, disk } => write!(f, "size: tar {tar}, disk {disk}"),
            D::SymlinkTarget { tar, disk } => {
                write!(f, "symlink target: tar {tar:?}, disk {disk:?}")
            }
            D::Device { tar, disk } => write!(
                f,
                "device: tar {}:{}, disk {}:{}",
                tar.0, tar.1, disk.0, disk.1
            ),
            D::Xattr { name, tar, disk } => write!(
                f,
                "xattr {name}: tar {}, disk {}",
                tar.as_deref().map_or("absent".into(), |v| format!("{v:?}")),
                disk.as_deref()
                    .map_or("absent".into(), |v| format!("{v:?}"))
            ),
            D::HardLink { target } => write!(f, "hard link to {target:?}: not the same file"),
            D::OverlayStub { xattr } => {
                write!(
                    f,
                    "overlay {xattr} in an image layer (metadata-only stub or redirect)"
                )
            }
        }
    }
}

/// A difference at one path of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MetadataDifference {
    /// The path in the layer (no leading `/`), lossily UTF-8.
    pub path: String,
    /// What differs.
    #[serde(flatten)]
    pub kind: DifferenceKind,
}

impl std::fmt::Display for MetadataDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.kind)
    }
}

/// The result of comparing one layer's directory with its tar headers.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct MetadataReport {
    /// Tar entries compared.
    pub entries: u64,
    /// Files found on disk.
    pub files: u64,
    /// What differs (empty if nothing).
    pub differences: Vec<MetadataDifference>,
}

enum Expect {
    Entry(Box<TarHeader>),
    Whiteout { uid: u64, gid: u64 },
}

const OVERRIDE_XATTR: &[u8] = crate::overlay::OVERRIDE_STAT_XATTR.as_bytes();

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn value_str(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\0') => s.to_string(),
        _ => format!(
            "0x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    }
}

fn join_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut v = Vec::with_capacity(dir.len() + 1 + name.len());
    v.extend_from_slice(dir);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

fn split_path(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&c| c == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&b""[..], p),
    }
}

/// A tar name as c/storage extracts it: cleaned, inside the layer (`/x` is `x`); `None` for
/// the layer's root.
fn layer_path(name: &[u8]) -> Option<Vec<u8>> {
    let c = crate::tar::names::clean_name(name);
    let start = c.iter().position(|&b| b != b'/').unwrap_or(c.len());
    let c = c[start..].to_vec();
    (!c.is_empty() && c != b".").then_some(c)
}

fn tar_kind(t: EntryType) -> &'static str {
    match t {
        EntryType::Regular => "file",
        EntryType::HardLink => "hard link",
        EntryType::Symlink => "symlink",
        EntryType::CharDevice => "char device",
        EntryType::BlockDevice => "block device",
        EntryType::Directory => "directory",
        EntryType::Fifo => "fifo",
        _ => "other",
    }
}

fn disk_kind(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "file",
        FileType::Symlink => "symlink",
        FileType::CharacterDevice => "char device",
        FileType::BlockDevice => "block device",
        FileType::Directory => "directory",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        _ => "other",
    }
}

/// Xattrs on disk that c/storage (or the kernel, or the host) adds and the tar never has.
fn host_xattr(name: &[u8]) -> bool {
    name == b"security.selinux"
        || name == b"security.ima"
        || name == b"security.evm"
        || name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.containers.")
        || name.starts_with(b"user.fuseoverlayfs.")
}

/// `security.capability` without its version and (v3) root ID: the effective flag and the
/// permitted/inheritable sets. A namespaced (v3) value written in a user namespace reads back
/// with the namespace's root ID.
fn caps_norm(v: &[u8]) -> Vec<u8> {
    if v.len() < 20 {
        return v.to_vec();
    }
    let mut out = vec![v[0] & 1];
    out.extend_from_slice(&v[4..20]);
    out
}

struct MetaWalk<'a> {
    layer: &'a Layer,
    expected: std::collections::HashMap<Vec<u8>, Expect>,
    implied: HashSet<Vec<u8>>,
    opaque: HashSet<Vec<u8>>,
    whiteouts: HashSet<Vec<u8>>,
    aufs: bool,
    force_mask: bool,
    ignore_owner: bool,
    rootless: bool,
    read_trusted: bool,
    id_maps: Option<&'static (crate::userns::IdMap, crate::userns::IdMap)>,
    inodes: std::collections::HashMap<Vec<u8>, (u64, u64)>,
    links: Vec<(Vec<u8>, Vec<u8>)>,
    diffs: Vec<MetadataDifference>,
    files: u64,
}

impl MetaWalk<'_> {
    fn diff(&mut self, path: &[u8], kind: DifferenceKind) {
        self.diffs.push(MetadataDifference {
            path: lossy(path),
            kind,
        });
    }

    fn err(&self, path: &[u8], e: std::io::Error) -> StorageError {
        StorageError::layer(
            self.layer.id(),
            format!("comparing its files with its tar: {}: {e}", lossy(path)),
        )
    }

    fn owner(&self, uid: u32, gid: u32) -> (u64, u64) {
        let u = crate::overlay::to_container(self.layer.uid_map(), uid).unwrap_or(uid);
        let g = crate::overlay::to_container(self.layer.gid_map(), gid).unwrap_or(gid);
        match self.id_maps {
            Some((um, gm)) => (u64::from(um.to_inside(u)), u64::from(gm.to_inside(g))),
            None => (u64::from(u), u64::from(g)),
        }
    }

    /// Walks the layer's directory without recursion (a tree may be thousands of levels
    /// deep): directories are pushed by path and opened beneath the root when their turn
    /// comes, so one handle is open at a time.
    fn walk(&mut self, root: &Dir) -> Result<()> {
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 32 << 10];
        let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(rel) = stack.pop() {
            let opened;
            let dir: &Dir = if rel.is_empty() {
                root
            } else {
                opened = fsutil::open_dir_nofollow(root, os_path(&rel))
                    .map_err(|e| self.err(&rel, e))?;
                &opened
            };
            self.walk_dir(dir, &rel, &mut buf, &mut stack)?;
        }
        Ok(())
    }

    fn walk_dir(
        &mut self,
        dir: &Dir,
        rel: &[u8],
        buf: &mut [std::mem::MaybeUninit<u8>],
        stack: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        // getdents on the handle itself: a directory the user-namespace helper opened for a
        // rootless user cannot be reopened.
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut rd = rustix::fs::RawDir::new(dir, buf);
        while let Some(e) = rd.next() {
            let e = e.map_err(|e| self.err(rel, e.into()))?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
        names.sort();
        for name in names {
            let path = join_path(rel, &name);
            let st = fsutil::lstat_at(dir, os_path(&name)).map_err(|e| self.err(&path, e))?;
            let ft = FileType::from_raw_mode(st.st_mode);
            self.files += 1;
            let mut descend = ft == FileType::Directory;
            let xattrs = match ft {
                FileType::Directory => {
                    let d = fsutil::open_dir_nofollow(dir, os_path(&name))
                        .map_err(|e| self.err(&path, e))?;
                    fsutil::fd_xattrs(&d).map_err(|e| self.err(&path, e))?
                }
                FileType::RegularFile => {
                    let (f, _) = fsutil::open_regular(dir, os_path(&name), Follow::No)
                        .map_err(|e| self.err(&path, e))?;
                    fsutil::fd_xattrs(&f).map_err(|e| self.err(&path, e))?
                }
                _ => Vec::new(),
            };
            for (k, _) in &xattrs {
                let stub = [b"trusted.overlay.", b"user.overlay.".as_slice()]
                    .iter()
                    .any(|p| {
                        k.strip_prefix(*p)
                            .is_some_and(|r| r == b"metacopy" || r == b"redirect")
                    });
                if stub {
                    self.diff(&path, DifferenceKind::OverlayStub { xattr: lossy(k) });
                }
            }
            if ft != FileType::Directory {
                self.inodes.insert(path.clone(), (st.st_dev, st.st_ino));
            }
            if ft == FileType::Directory && !self.aufs && (self.read_trusted || self.rootless) {
                let on_disk = xattrs.iter().any(|(k, v)| {
                    crate::overlay::KERNEL_OPAQUE_XATTRS
                        .iter()
                        .any(|o| o.as_bytes() == k)
                        && v == b"y"
                });
                let in_tar = self.opaque.remove(&path);
                if on_disk != in_tar {
                    self.diff(
                        &path,
                        DifferenceKind::Xattr {
                            name: "overlay.opaque (.wh..wh..opq in the tar)".into(),
                            tar: in_tar.then(|| "y".into()),
                            disk: on_disk.then(|| "y".into()),
                        },
                    );
                }
            }
            match self.expected.remove(&path) {
                None => {
                    if !(ft == FileType::Directory && self.implied.contains(&path)) {
                        // Everything below an extra directory is extra too: it is reported
                        // once.
                        descend = false;
                        self.diff(
                            &path,
                            DifferenceKind::Extra {
                                disk: disk_kind(ft).into(),
                            },
                        );
                    }
                }
                Some(Expect::Whiteout { uid, gid }) => {
                    if ft != FileType::CharacterDevice || st.st_rdev != 0 {
                        self.diff(
                            &path,
                            DifferenceKind::Type {
                                tar: "whiteout".into(),
                                disk: disk_kind(ft).into(),
                            },
                        );
                    } else {
                        let disk = self.owner(st.st_uid, st.st_gid);
                        if !self.ignore_owner && disk != (uid, gid) {
                            self.diff(
                                &path,
                                DifferenceKind::Owner {
                                    tar: (uid, gid),
                                    disk,
                                },
                            );
                        }
                    }
                }
                Some(Expect::Entry(h)) => self.compare(dir, &name, &path, &h, &st, &xattrs)?,
            }
            if descend {
                stack.push(path);
            }
        }
        Ok(())
    }

    fn compare(
        &mut self,
        dir: &Dir,
        name: &[u8],
        path: &[u8],
        h: &TarHeader,
        st: &rustix::fs::Stat,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        use DifferenceKind as D;
        if h.entry_type == EntryType::HardLink {
            if let Some(t) = layer_path(&h.link_target) {
                self.links.push((path.to_vec(), t));
            }
            return Ok(());
        }
        let ft = FileType::from_raw_mode(st.st_mode);
        let mut kind = disk_kind(ft);
        let mut mode = st.st_mode & 0o7777;
        let mut owner = self.owner(st.st_uid, st.st_gid);
        let mut dev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
        let mut size = st.st_size as u64;
        // With force_mask, c/storage keeps the real owner and mode only in the override
        // xattr, which only regular files and directories get: a symlink's owner is lost.
        let mut check_owner = !self.ignore_owner;
        // c/storage before 1.57 wrote `uid:gid:mode` without the setuid, setgid and sticky
        // bits; 1.57 added the type and keeps them.
        let mut mode_mask = 0o7777;
        if self.force_mask {
            let ov = xattrs.iter().find(|(k, _)| k == OVERRIDE_XATTR);
            if ov.is_none() {
                check_owner = false;
            }
            if let Some((_, v)) = ov {
                match parse_override(v) {
                    Some(o) => {
                        owner = (u64::from(o.uid), u64::from(o.gid));
                        mode = o.mode & 0o7777;
                        if !o.typed {
                            mode_mask = 0o777;
                        }
                        if let Some(k) = o.kind {
                            if (k == "directory") == (ft == FileType::Directory) {
                                kind = k;
                                if matches!(k, "char device" | "block device") {
                                    size = 0;
                                }
                            }
                        }
                        if let Some(d) = o.dev {
                            dev = d;
                        }
                    }
                    None => self.diff(
                        path,
                        D::Xattr {
                            name: lossy(OVERRIDE_XATTR),
                            tar: None,
                            disk: Some(value_str(v)),
                        },
                    ),
                }
            }
        }
        let want = tar_kind(h.entry_type);
        if want != kind {
            self.diff(
                path,
                D::Type {
                    tar: want.into(),
                    disk: kind.into(),
                },
            );
            return Ok(());
        }
        if h.entry_type != EntryType::Symlink && h.mode & mode_mask != mode & mode_mask {
            self.diff(
                path,
                D::Mode {
                    tar: h.mode & 0o7777,
                    disk: mode,
                },
            );
        }
        if check_owner && (h.uid, h.gid) != owner {
            self.diff(
                path,
                D::Owner {
                    tar: (h.uid, h.gid),
                    disk: owner,
                },
            );
        }
        if h.entry_type == EntryType::Regular && h.size != size {
            self.diff(
                path,
                D::Size {
                    tar: h.size,
                    disk: size,
                },
            );
        }
        if h.entry_type == EntryType::Symlink {
            use std::os::unix::ffi::OsStringExt;
            let t = fsutil::read_link_at(dir, os_path(name))
                .map_err(|e| self.err(path, e))?
                .into_vec();
            if t != h.link_target {
                self.diff(
                    path,
                    D::SymlinkTarget {
                        tar: lossy(&h.link_target),
                        disk: lossy(&t),
                    },
                );
            }
        }
        if matches!(h.entry_type, EntryType::CharDevice | EntryType::BlockDevice)
            && (h.dev_major, h.dev_minor) != dev
        {
            self.diff(
                path,
                D::Device {
                    tar: (h.dev_major, h.dev_minor),
                    disk: dev,
                },
            );
        }
        if matches!(ft, FileType::RegularFile | FileType::Directory) {
            self.compare_xattrs(path, &h.xattrs, xattrs);
        }
        Ok(())
    }

    fn compare_xattrs(
        &mut self,
        path: &[u8],
        tar: &[(Vec<u8>, Vec<u8>)],
        disk: &[(Vec<u8>, Vec<u8>)],
    ) {
        let readable = |n: &[u8]| self.read_trusted || !n.starts_with(b"trusted.");
        let same = |n: &[u8], a: &[u8], b: &[u8]| {
            if n == b"security.capability" {
                caps_norm(a) == caps_norm(b)
            } else {
                a == b
            }
        };
        let mut out = Vec::new();
        for (n, v) in tar {
            if n == b"security.selinux" || !readable(n) {
                continue;
            }
            match disk.iter().find(|(k, _)| k == n) {
                Some((_, dv)) if same(n, v, dv) => {}
                Some((_, dv)) => out.push((n, Some(v), Some(dv))),
                // In a user namespace c/storage cannot set trusted.* (and some security.*)
                // attributes, and goes on without them.
                None if self.rootless
                    && (n.starts_with(b"trusted.") || n.starts_with(b"security.")) => {}
                None => out.push((n, Some(v), None)),
            }
        }
        for (n, dv) in disk {
            if host_xattr(n) || !readable(n) || tar.iter().any(|(k, _)| k == n) {
                continue;
            }
            out.push((n, None, Some(dv)));
        }
        for (n, t, d) in out {
            self.diff(
                path,
                DifferenceKind::Xattr {
                    name: lossy(n),
                    tar: t.map(|v| value_str(v)),
                    disk: d.map(|v| value_str(v)),
                },
            );
        }
    }
}

fn os_path(b: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(b))
}

struct Override {
    uid: u32,
    gid: u32,
    mode: u32,
    kind: Option<&'static str>,
    dev: Option<(u32, u32)>,
    /// The 1.57+ form, with a type (and the special mode bits kept).
    typed: bool,
}

/// `user.containers.override_stat`: `uid:gid:octal-mode[:type]`.
fn parse_override(v: &[u8]) -> Option<Override> {
    let s = std::str::from_utf8(v).ok()?.trim_end_matches('\0');
    let mut parts = s.splitn(4, ':');
    let uid = parts.next()?.parse().ok()?;
    let gid = parts.next()?.parse().ok()?;
    let mode = u32::from_str_radix(parts.next()?, 8).ok()?;
    let mut kind = (mode & 0o170000 != 0).then(|| disk_kind(FileType::from_raw_mode(mode)));
    let mut dev = None;
    let rest = parts.next();
    let typed = rest.is_some();
    if let Some(t) = rest {
        let d = |r: &str| -> Option<(u32, u32)> {
            let (a, b) = r.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        kind = Some(match t {
            "file" => "file",
            "dir" => "directory",
            "symlink" => "symlink",
            "pipe" => "fifo",
            "socket" => "socket",
            _ => {
                if let Some(r) = t.strip_prefix("block-") {
                    dev = Some(d(r)?);
                    "block device"
                } else if let Some(r) = t.strip_prefix("char-") {
                    dev = Some(d(r)?);
                    "char device"
                } else {
                    return None;
                }
            }
        });
    }
    Some(Override {
        uid,
        gid,
        mode,
        kind,
        dev,
        typed,
    })
}

/// Compares a layer's `diff` directory with its tar-split headers: every path on both sides,
/// type, permission bits, owner (mapped back through the layer's and a rootless store's ID
/// maps, or from `force_mask`'s `user.containers.override_stat`), size, symlink target,
/// device numbers and xattrs. What c/storage's extraction legitimately changes is not a
/// difference: whiteouts and opaque markers in the overlay form, parent directories the tar
/// only implies (any mode: partial pulls create them 0000), times (not compared), hard links
/// (the same file as their target), `security.selinux` and overlay/containers xattrs,
/// devices, `trusted.*` and `security.*` xattrs a rootless store could not create, and
/// whiteouts below a path the same layer whites out.
///
/// `None` for layers without tar-split (nothing to compare with) and flat (composefs)
/// layers, whose files are stored by digest.
pub fn compare_layer_metadata(layer: &Layer) -> Result<Option<MetadataReport>> {
    if !layer.has_tar_split()? || layer.is_flat()? {
        return Ok(None);
    }
    let storage = layer.storage();
    let ov = storage.overlay_options();
    let rootless = storage.config().rootless;
    let mut w = MetaWalk {
        layer,
        expected: std::collections::HashMap::new(),
        implied: HashSet::new(),
        opaque: HashSet::new(),
        whiteouts: HashSet::new(),
        aufs: ov.mount_program.is_some(),
        force_mask: ov.force_mask.is_some(),
        ignore_owner: ov.ignore_chown_errors,
        rootless,
        read_trusted: rustix::process::geteuid().is_root(),
        id_maps: if rootless {
            crate::userns::rootless_id_maps()
        } else {
            None
        },
        inodes: std::collections::HashMap::new(),
        links: Vec::new(),
        diffs: Vec::new(),
        files: 0,
    };
    let mut entries = 0u64;
    for h in layer.entries()? {
        let h = h?;
        if !matches!(
            h.entry_type,
            EntryType::Regular
                | EntryType::HardLink
                | EntryType::Symlink
                | EntryType::CharDevice
                | EntryType::BlockDevice
                | EntryType::Directory
                | EntryType::Fifo
        ) {
            continue;
        }
        entries += 1;
        let Some(path) = layer_path(&h.path) else {
            continue;
        };
        let mut p = &path[..];
        while let Some(i) = p.iter().rposition(|&c| c == b'/') {
            p = &p[..i];
            if !w.implied.insert(p.to_vec()) {
                break;
            }
        }
        let (dir, base) = split_path(&path);
        if !w.aufs && base.starts_with(b".wh.") {
            if base == b".wh..wh..opq" {
                w.opaque.insert(dir.to_vec());
            } else if !base.starts_with(b".wh..wh.") {
                let target = join_path(dir, &base[4..]);
                w.whiteouts.insert(target.clone());
                w.expected.insert(
                    target,
                    Expect::Whiteout {
                        uid: h.uid,
                        gid: h.gid,
                    },
                );
            }
            continue;
        }
        w.expected.insert(path, Expect::Entry(Box::new(h)));
    }
    let diff = layer.diff_dir()?;
    w.walk(&diff)?;
    // Hard links: the same file as their target.
    for (p, t) in std::mem::take(&mut w.links) {
        let (a, b) = (w.inodes.get(&p), w.inodes.get(&t));
        if a.is_none() || a != b {
            w.diff(&p, DifferenceKind::HardLink { target: lossy(&t) });
        }
    }
    let mut missing: Vec<(Vec<u8>, Expect)> = w.expected.drain().collect();
    missing.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, e) in missing {
        let below_whiteout = || {
            let mut q = &p[..];
            while let Some(i) = q.iter().rposition(|&c| c == b'/') {
                q = &q[..i];
                if w.whiteouts.contains(q) {
                    return true;
                }
            }
            false
        };
        let what = match &e {
            Expect::Whiteout { .. } if below_whiteout() => continue,
            Expect::Whiteout { .. } => "whiteout",
            Expect::Entry(h)
                if rootless
                    && matches!(h.entry_type, EntryType::CharDevice | EntryType::BlockDevice) =>
            {
                // c/storage skips devices in a user namespace.
                continue;
            }
            Expect::Entry(h) => tar_kind(h.entry_type),
        };
        w.diff(&p, DifferenceKind::Missing { tar: what.into() });
    }
    let mut opq: Vec<Vec<u8>> = w.opaque.drain().collect();
    opq.sort();
    for p in opq {
        w.diff(
            &p,
            DifferenceKind::Missing {
                tar: "opaque directory".into(),
            },
        );
    }
    w.diffs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Some(MetadataReport {
        entries,
        files: w.files,
        differences: w.diffs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_forms() {
        // c/storage before 1.57: no type, no special bits.
        let o = parse_override(b"0:0:0755").unwrap();
        assert_eq!((o.uid, o.gid, o.mode, o.typed), (0, 0, 0o755, false));
        assert_eq!(o.kind, None);
        // 1.57: with a type, special bits kept; devices carry their numbers.
        let o = parse_override(b"1000:1001:4755:file").unwrap();
        assert_eq!((o.uid, o.gid, o.mode, o.typed), (1000, 1001, 0o4755, true));
        assert_eq!(o.kind, Some("file"));
        let o = parse_override(b"0:0:0666:char-1-3").unwrap();
        assert_eq!((o.kind, o.dev), (Some("char device"), Some((1, 3))));
        // The file type in the mode bits (c/storage's darwin form).
        assert_eq!(
            parse_override(b"0:0:40755").unwrap().kind,
            Some("directory")
        );
        for bad in [
            &b"0:0"[..],
            b"x:0:0755",
            b"0:0:0755:char-1",
            b"0:0:0755:weird",
        ] {
            assert!(parse_override(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn capabilities_compare_without_version_and_root_id() {
        let caps = [
            0x01, 0x00, 0x20, 0x00, 0x00, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut v2 = vec![0x01, 0x00, 0x00, 0x02];
        v2.extend_from_slice(&caps[4..]);
        let mut v3 = vec![0x01, 0x00, 0x00, 0x03];
        v3.extend_from_slice(&caps[4..]);
        v3.extend_from_slice(&100000u32.to_le_bytes());
        assert_eq!(caps_norm(&v2), caps_norm(&v3));
        let mut other = v2.clone();
        other[4] = 0x01;
        assert_ne!(caps_norm(&v2), caps_norm(&other));
        // Not effective vs effective.
        let mut ne = v2.clone();
        ne[0] = 0;
        assert_ne!(caps_norm(&v2), caps_norm(&ne));
    }

    #[test]
    fn tar_names_as_c_storage_extracts_them() {
        assert_eq!(layer_path(b"./etc/x"), Some(b"etc/x".to_vec()));
        assert_eq!(layer_path(b"/etc/x/"), Some(b"etc/x".to_vec()));
        assert_eq!(layer_path(b"etc//y/../x"), Some(b"etc/x".to_vec()));
        assert_eq!(layer_path(b"./"), None);
        assert_eq!(layer_path(b"/"), None);
    }
}
