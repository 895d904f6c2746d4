//! [`Layer`]: one layer record and its files (`overlay/<id>/diff`, tar-split, link, lower).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use cap_std::fs::Dir;
use oci_spec::image::Digest;

use crate::error::{Result, StorageError};
use crate::fsutil::{self, Follow};
use crate::store::big_data;
use crate::store::chains::MAX_CHAIN;
use crate::store::records::{IdMapping, LayerMetadata};
use crate::store::state::{LayerStore, NamedDir, Snapshot};
use crate::store::storage::Storage;

/// The layer big-data key that says how a partially pulled layer is stored.
const LAYER_DATA_KEY: &str = "zstd-chunked-layer-data";

/// Compression of the blob a layer was created from (`compression` in `layers.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Uncompressed.
    None,
    /// bzip2.
    Bzip2,
    /// gzip.
    Gzip,
    /// xz.
    Xz,
    /// zstd.
    Zstd,
    /// A value this crate does not know.
    Other(i64),
}

impl Compression {
    fn from_raw(v: i64) -> Self {
        match v {
            0 => Compression::None,
            1 => Compression::Bzip2,
            2 => Compression::Gzip,
            3 => Compression::Xz,
            4 => Compression::Zstd,
            o => Compression::Other(o),
        }
    }
}

/// A short lower-case name: `none`, `bzip2`, `gzip`, `xz`, `zstd`, or `unknown(N)`.
impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Bzip2 => f.write_str("bzip2"),
            Compression::Gzip => f.write_str("gzip"),
            Compression::Xz => f.write_str("xz"),
            Compression::Zstd => f.write_str("zstd"),
            Compression::Other(o) => write!(f, "unknown({o})"),
        }
    }
}

/// Why a layer's original tar cannot be rebuilt exactly (it has no tar-split).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoTarSplit {
    /// A partially pulled layer (eStargz, or zstd:chunked without tar-split), known only by
    /// its table of contents.
    PartialPull {
        /// The DiffID the layer's tar would have, if recorded.
        expected_diff_id: Option<Digest>,
    },
    /// An image layer whose tar-split is missing (filled through a mount, or removed).
    Missing {
        /// The digest of the original tar.
        diff_digest: Digest,
    },
    /// A container's read-write layer: no tar-split and no diff-digest. A tar generated
    /// from its `diff/` directory matches no DiffID.
    ContainerLayer,
}

impl std::fmt::Display for NoTarSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoTarSplit::PartialPull { expected_diff_id } => {
                write!(
                    f,
                    "partially pulled layer with no tar-split, known only by its table of \
                     contents: its original tar cannot be rebuilt"
                )?;
                if let Some(d) = expected_diff_id {
                    write!(f, "; its expected DiffID is {d}")?;
                }
                Ok(())
            }
            NoTarSplit::Missing { diff_digest } => write!(
                f,
                "has no tar-split, so its original tar ({diff_digest}) cannot be rebuilt"
            ),
            NoTarSplit::ContainerLayer => f.write_str(
                "has no tar-split and no diff-digest (a container's read-write layer): its \
                 original tar cannot be rebuilt; a tar generated from its diff directory \
                 matches no DiffID",
            ),
        }
    }
}

/// A layer of the store (an image layer or a container's read-write layer): a cheap handle
/// on its record, from [`Image::layers`](crate::Image::layers), [`Storage::list_layers`], [`Storage::find_layer`]
/// or [`Storage::resolve_diff_ids`].
///
/// ```no_run
/// use composefs_storage::{ExportOptions, Verify};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let storage = composefs_storage::Storage::open("/var/lib/containers/storage")?;
/// let layer = storage.find_image("alpine")?.layers()?.remove(0);
/// println!("{} {:?} parent {:?}", layer.id(), layer.diff_digest(), layer.parent_id());
/// // The original tar, rebuilt bit for bit and checked against the DiffID.
/// let mut out = std::fs::File::create("base.tar")?;
/// layer.export(&mut out, &ExportOptions::new(Verify::Digest))?;
/// // Its own files (not the merged view), with whiteouts reported as such.
/// for entry in layer.read_dir("/")? {
///     println!("{:?} {:?}", entry.name, entry.kind);
/// }
/// # Ok(())
/// # }
/// ```
///
/// Methods that belong to a feature are defined with it (so that the store does not depend
/// on what is built on it): [`Layer::export`], [`Layer::export_to_fd`],
/// [`Layer::export_to_path`] and [`Layer::entries`] in the `export` module;
/// [`Layer::files`], [`Layer::open_file`], [`Layer::stat`] and [`Layer::read_dir`] with
/// [`LayerFiles`](crate::LayerFiles).
#[derive(Debug, Clone)]
pub struct Layer {
    storage: Storage,
    snap: Arc<Snapshot>,
    store: usize,
    meta: Arc<LayerMetadata>,
}

impl Layer {
    pub(crate) fn new(
        storage: Storage,
        snap: Arc<Snapshot>,
        store: usize,
        meta: Arc<LayerMetadata>,
    ) -> Layer {
        Layer {
            storage,
            snap,
            store,
            meta,
        }
    }

    pub(crate) fn store(&self) -> &LayerStore {
        &self.storage.inner.layer_stores[self.store]
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The layer ID.
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    /// The whole record.
    pub fn metadata(&self) -> &LayerMetadata {
        &self.meta
    }

    /// The layer's names (rarely used).
    pub fn names(&self) -> &[String] {
        &self.meta.names
    }

    /// The parent layer's ID.
    pub fn parent_id(&self) -> Option<&str> {
        self.meta.parent.as_deref()
    }

    /// The parent layer (searched in every layer store, primary first).
    pub fn parent(&self) -> Result<Option<Layer>> {
        let Some(pid) = self.parent_id() else {
            return Ok(None);
        };
        match self.snap.layer(pid) {
            Some((si, m)) => Ok(Some(Layer::new(
                self.storage.clone(),
                self.snap.clone(),
                si,
                m.clone(),
            ))),
            None => Err(StorageError::layer(
                self.id(),
                format!("parent layer {pid} does not exist"),
            )),
        }
    }

    /// This layer and its ancestors, base layer first. Fails on a missing parent, a loop or a
    /// chain longer than 4096 layers.
    pub fn chain(&self) -> Result<Vec<Layer>> {
        let mut out = vec![self.clone()];
        let mut seen = std::collections::HashSet::new();
        seen.insert(self.id().to_string());
        while let Some(p) = out.last().unwrap_or(self).parent()? {
            if !seen.insert(p.id().to_string()) {
                return Err(StorageError::layer(
                    self.id(),
                    format!("parent chain loops back to layer {}", p.id()),
                ));
            }
            if out.len() >= MAX_CHAIN {
                return Err(StorageError::layer(
                    self.id(),
                    format!("parent chain is longer than {MAX_CHAIN} layers"),
                ));
            }
            out.push(p);
        }
        out.reverse();
        Ok(out)
    }

    /// When the layer record was created.
    pub fn created(&self) -> Option<SystemTime> {
        self.meta.created_time()
    }

    /// `diff-digest`: the digest of the uncompressed layer tar (the DiffID).
    pub fn diff_digest(&self) -> Option<&Digest> {
        self.meta.diff_digest.as_ref()
    }

    /// The DiffID: `diff-digest`, or c/image's `expected-layer-diffid` for TOC-only layers.
    pub fn diff_id(&self) -> Option<Digest> {
        self.meta.diff_id()
    }

    /// The uncompressed tar size, if the record's size is valid.
    pub fn diff_size(&self) -> Option<u64> {
        self.meta.known_diff_size()
    }

    /// Digest of the blob the layer was created from.
    pub fn compressed_digest(&self) -> Option<&Digest> {
        self.meta.compressed_diff_digest.as_ref()
    }

    /// Size of the blob the layer was created from.
    pub fn compressed_size(&self) -> Option<u64> {
        self.meta
            .compressed_diff_digest
            .as_ref()
            .and(self.meta.compressed_size)
            .and_then(|s| u64::try_from(s).ok())
    }

    /// The zstd:chunked / eStargz TOC digest of partially pulled layers.
    pub fn toc_digest(&self) -> Option<&Digest> {
        self.meta.toc_digest.as_ref()
    }

    /// The compression of the blob the layer was created from.
    pub fn compression(&self) -> Option<Compression> {
        self.meta.compression.map(Compression::from_raw)
    }

    /// UIDs used by the layer's files.
    pub fn uid_set(&self) -> &[u32] {
        &self.meta.uidset
    }

    /// GIDs used by the layer's files.
    pub fn gid_set(&self) -> &[u32] {
        &self.meta.gidset
    }

    /// The UID mapping the files were chowned with (usually empty).
    pub fn uid_map(&self) -> &[IdMapping] {
        &self.meta.uidmap
    }

    /// The GID mapping the files were chowned with (usually empty).
    pub fn gid_map(&self) -> &[IdMapping] {
        &self.meta.gidmap
    }

    /// The record's flags.
    pub fn flags(&self) -> &std::collections::BTreeMap<String, serde_json::Value> {
        &self.meta.flags
    }

    /// True if the layer belongs to a read-only additional image store.
    pub fn is_read_only(&self) -> bool {
        self.store().read_only
    }

    /// The root of the store (graph root or additional image store) the layer belongs to.
    pub fn store_root(&self) -> &Path {
        &self.store().root
    }

    /// The IDs of the images whose layer chain contains this layer.
    pub fn image_ids(&self) -> Vec<String> {
        let (images, tops) = self.snap.image_tops();
        self.snap
            .chains()
            .users_of(self.id(), &tops)
            .into_iter()
            .map(|i| images[i].1.id.clone())
            .collect()
    }

    fn check_id(&self) -> Result<()> {
        fsutil::check_component(self.id())
            .map_err(|m| StorageError::layer(self.id(), format!("invalid layer ID: {m}")))
    }

    /// The layer's directory `overlay/<id>` (imagestore first, then graph root, for the
    /// primary store) and its path for messages.
    pub(crate) fn layer_dir(&self) -> Result<(Dir, PathBuf)> {
        self.check_id()?;
        find_layer_dir(&self.store().homes, self.id())?.ok_or_else(|| {
            StorageError::layer(
                self.id(),
                format!(
                    "layer directory not found in {}",
                    self.store()
                        .homes
                        .iter()
                        .map(|h| h.path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    /// A handle to the layer's `diff` directory (its own files; the overlay upper dir).
    pub fn diff_dir(&self) -> Result<Dir> {
        Ok(self.diff_dir_with_path()?.0)
    }

    pub(crate) fn diff_dir_with_path(&self) -> Result<(Dir, PathBuf)> {
        let (ld, lpath) = self.layer_dir()?;
        let path = lpath.join("diff");
        match fsutil::open_dir_nofollow(&ld, Path::new("diff")) {
            Ok(d) => Ok((d, path)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                Err(StorageError::layer(
                    self.id(),
                    format!(
                        "{} is a symlink or not a directory; refusing to follow it out of the store",
                        path.display()
                    ),
                ))
            }
            Err(e) => Err(StorageError::io(path, e)),
        }
    }

    /// The 26-character link ID (`overlay/<id>/link`), if the layer has one.
    pub fn link_id(&self) -> Result<Option<String>> {
        let (ld, lpath) = self.layer_dir()?;
        let Some(b) = fsutil::read_file_optional(&ld, Path::new("link"), 4096)
            .map_err(|e| StorageError::io(lpath.join("link"), e))?
        else {
            return Ok(None);
        };
        let s = String::from_utf8(b)
            .map_err(|_| StorageError::corrupt(lpath.join("link"), "link ID is not UTF-8"))?;
        let s = s.trim().to_string();
        fsutil::check_component(&s).map_err(|m| {
            StorageError::corrupt(lpath.join("link"), format!("invalid link ID: {m}"))
        })?;
        Ok(Some(s))
    }

    /// The diff directories of the layer's overlay lowers, top-most first, as listed in
    /// `overlay/<id>/lower` (`l/<LINK>:l/<LINK>:...`). Each link is resolved by reading the
    /// `l/<LINK>` symlink (expected `../<layer-id>/diff`) and opening that layer's directory
    /// in the store's driver homes, never by following the link itself.
    pub fn lower_diff_dirs(&self) -> Result<Vec<Dir>> {
        Ok(self
            .lower_diff_dirs_with_paths()?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    pub(crate) fn lower_diff_dirs_with_paths(&self) -> Result<Vec<(Dir, PathBuf)>> {
        Ok(self
            .lower_layers()?
            .into_iter()
            .map(|l| (l.dir, l.path))
            .collect())
    }

    /// The IDs of the layers whose diff directories are this layer's overlay lowers,
    /// top-most first (the layers named by `overlay/<id>/lower`; empty for a base layer).
    /// These are the directories c/storage, and [`crate::TarSplitFdStream`], look in for a
    /// file missing from this layer's own `diff/`.
    pub fn lower_layer_ids(&self) -> Result<Vec<String>> {
        Ok(self.lower_layers()?.into_iter().map(|l| l.id).collect())
    }

    /// The overlay lowers with their layer IDs, top-most first.
    pub(crate) fn lower_layers(&self) -> Result<Vec<LowerDir>> {
        let (ld, lpath) = self.layer_dir()?;
        let lower_path = lpath.join("lower");
        let Some(b) = fsutil::read_file_optional(&ld, Path::new("lower"), 1 << 20)
            .map_err(|e| StorageError::io(&lower_path, e))?
        else {
            return Ok(Vec::new());
        };
        let s =
            String::from_utf8(b).map_err(|_| StorageError::corrupt(&lower_path, "not UTF-8"))?;
        // Every driver home of every store: the overlay driver resolves links in all of them.
        let homes: Vec<Arc<NamedDir>> = self
            .storage
            .inner
            .layer_stores
            .iter()
            .flat_map(|s| s.homes.iter().cloned())
            .collect();
        let mut out = Vec::new();
        for entry in s.trim().split(':').filter(|e| !e.is_empty()) {
            let link = entry.strip_prefix("l/").ok_or_else(|| {
                StorageError::corrupt(
                    &lower_path,
                    format!("entry {entry:?} does not start with l/"),
                )
            })?;
            fsutil::check_component(link)
                .map_err(|m| StorageError::corrupt(&lower_path, format!("entry {entry:?}: {m}")))?;
            let mut resolved = None;
            for home in &homes {
                let l_dir = match fsutil::open_dir(&home.dir, Path::new("l")) {
                    Ok(d) => d,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io(home.path.join("l"), e)),
                };
                let target = match fsutil::read_link_at(&l_dir, Path::new(link)) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io(home.path.join("l").join(link), e)),
                };
                let t = target.to_string_lossy();
                let id = t
                    .strip_prefix("../")
                    .and_then(|r| r.strip_suffix("/diff"))
                    .filter(|id| fsutil::check_component(id).is_ok())
                    .ok_or_else(|| {
                        StorageError::corrupt(
                            home.path.join("l").join(link),
                            format!("link target {t:?} is not ../<layer-id>/diff"),
                        )
                    })?;
                let Some((dir, dpath)) = find_layer_dir(&homes, id)? else {
                    continue;
                };
                let diff = fsutil::open_dir_nofollow(&dir, Path::new("diff"))
                    .map_err(|e| StorageError::io(dpath.join("diff"), e))?;
                resolved = Some(LowerDir {
                    dir: diff,
                    path: dpath.join("diff"),
                    id: id.to_string(),
                });
                break;
            }
            out.push(resolved.ok_or_else(|| {
                StorageError::corrupt(&lower_path, format!("lower link {link} does not resolve"))
            })?);
        }
        Ok(out)
    }

    /// Takes the layer store's shared locks and checks, with them held, that the layer is
    /// still in the store (reloading the records if a writer changed them).
    pub(crate) fn lock_and_check(&self) -> Result<Vec<crate::store::lock::SharedLock>> {
        let store = self.store();
        let locks = store.lock()?;
        let idx = store.refresh()?;
        if idx.get(self.id()).is_none() {
            return Err(StorageError::Changed {
                what: format!("layer {}", self.id()),
                message: "it was removed from the store".into(),
            });
        }
        Ok(locks)
    }

    /// Path of the tar-split file, for messages.
    pub(crate) fn tar_split_path(&self) -> PathBuf {
        self.store()
            .root
            .join("overlay-layers")
            .join(format!("{}.tar-split.gz", self.id()))
    }

    /// Opens `overlay-layers/<id>.tar-split.gz`; `None` if the layer has none.
    pub(crate) fn open_tar_split(&self) -> Result<Option<File>> {
        self.check_id()?;
        let Some(dir) = &self.store().layers_dir else {
            return Ok(None);
        };
        let name = format!("{}.tar-split.gz", self.id());
        match fsutil::open_regular(&dir.dir, Path::new(&name), Follow::Yes) {
            Ok((f, _)) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(self.tar_split_path(), e)),
        }
    }

    /// True if the layer has tar-split metadata, so its original tar can be rebuilt exactly.
    pub fn has_tar_split(&self) -> Result<bool> {
        Ok(self.open_tar_split()?.is_some())
    }

    /// Why the layer's original tar cannot be rebuilt exactly, or `None` when it can (the
    /// layer has tar-split). Layers without tar-split are container (read-write) layers,
    /// layers filled through a mount, and partially pulled layers known only by their table
    /// of contents (eStargz, or zstd:chunked without tar-split).
    pub fn not_reproducible_reason(&self) -> Result<Option<NoTarSplit>> {
        if self.has_tar_split()? {
            return Ok(None);
        }
        Ok(Some(self.no_tar_split_reason()))
    }

    /// Why this layer (which has no tar-split) cannot be rebuilt exactly.
    pub(crate) fn no_tar_split_reason(&self) -> NoTarSplit {
        if self.toc_digest().is_some() {
            NoTarSplit::PartialPull {
                expected_diff_id: self.diff_id(),
            }
        } else if let Some(d) = self.diff_digest() {
            NoTarSplit::Missing {
                diff_digest: d.clone(),
            }
        } else {
            NoTarSplit::ContainerLayer
        }
    }

    /// [`StorageError::NoTarSplit`] for this layer.
    pub(crate) fn no_tar_split_error(&self) -> StorageError {
        StorageError::NoTarSplit {
            layer: self.id().into(),
            reason: self.no_tar_split_reason(),
        }
    }

    /// True if the layer is stored in the flat format of composefs-backed stores
    /// (`zstd-chunked-layer-data` big data `{"format":1}`): `diff/` holds file contents by
    /// digest, and names come from the table of contents.
    pub fn is_flat(&self) -> Result<bool> {
        if !self.meta.big_data_names.iter().any(|n| n == LAYER_DATA_KEY) {
            return Ok(false);
        }
        #[derive(serde::Deserialize)]
        struct LayerData {
            #[serde(default)]
            format: i64,
        }
        let b = self.read_big_data(LAYER_DATA_KEY)?;
        let d: LayerData = serde_json::from_slice(&b).map_err(|e| {
            StorageError::layer(self.id(), format!("{LAYER_DATA_KEY} is not valid: {e}"))
        })?;
        Ok(d.format == 1)
    }

    /// Reads a layer big-data item (e.g. `zstd-chunked-manifest`).
    pub fn read_big_data(&self, key: &str) -> Result<Vec<u8>> {
        self.check_id()?;
        let fname = big_data::file_name(key)
            .map_err(|m| StorageError::layer(self.id(), format!("big-data key {key:?}: {m}")))?;
        let missing = || StorageError::LayerBigDataNotFound {
            layer: self.id().into(),
            key: key.into(),
        };
        let Some(dir) = &self.store().layers_dir else {
            return Err(missing());
        };
        let _g = self.store().lock()?;
        big_data::read(dir, self.id(), &fname)?.ok_or_else(missing)
    }
}

/// One overlay lower of a layer: its `diff/` directory, that path (for messages) and the
/// ID of the layer it belongs to.
pub(crate) struct LowerDir {
    pub(crate) dir: Dir,
    pub(crate) path: PathBuf,
    pub(crate) id: String,
}

/// Finds `<home>/<id>` in the first home that has it.
fn find_layer_dir(homes: &[Arc<NamedDir>], id: &str) -> Result<Option<(Dir, PathBuf)>> {
    for home in homes {
        let path = home.path.join(id);
        match fsutil::open_dir_nofollow(&home.dir, Path::new(id)) {
            Ok(d) => return Ok(Some((d, path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io(path, e)),
        }
    }
    Ok(None)
}
