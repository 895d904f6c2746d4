//! The records of every layer and image store and the cache that keeps them: per store, the
//! JSON files (`layers.json`, `volatile-layers.json`, `images.json`, `containers.json`) loaded
//! when their lock's last-write token or their mtime changes, and [`Snapshot`], the records of
//! every store as of one moment.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::fs::Dir;
use serde::de::DeserializeOwned;

use crate::error::{Result, StorageError};
use crate::fsutil;
use crate::store::chains::Chains;
use crate::store::config::{OverlayOptions, StorageConfig};
use crate::store::lock::{LockFile, SharedLock, Token};
use crate::store::records::{ImageMetadata, LayerMetadata};

/// Largest JSON record file accepted (`layers.json`, `images.json`, ...).
pub(crate) const MAX_RECORDS_FILE: u64 = 1 << 30;

/// A directory handle together with its path for messages.
#[derive(Debug)]
pub(crate) struct NamedDir {
    pub(crate) dir: Dir,
    pub(crate) path: PathBuf,
}

impl NamedDir {
    /// Opens the subdirectory `name` (following symlinks only beneath this directory);
    /// `None` if it does not exist.
    pub(crate) fn open_subdir(&self, name: &str) -> Result<Option<NamedDir>> {
        let path = self.path.join(name);
        match fsutil::open_dir(&self.dir, Path::new(name)) {
            Ok(dir) => Ok(Some(NamedDir { dir, path })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(path, e)),
        }
    }
}

/// One JSON file of records.
#[derive(Debug)]
pub(crate) struct JsonSource {
    pub(crate) dir: Arc<NamedDir>,
    pub(crate) name: &'static str,
}

impl JsonSource {
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path.join(self.name)
    }

    pub(crate) fn mtime(&self) -> Result<Option<(i64, i64)>> {
        fsutil::lstat_name(&self.dir.dir, self.name)
            .map(|st| st.map(|st| (st.st_mtime, st.st_mtime_nsec as i64)))
            .map_err(|e| StorageError::io(self.path(), e))
    }

    pub(crate) fn load<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let path = self.path();
        let data =
            fsutil::read_file_optional(&self.dir.dir, Path::new(self.name), MAX_RECORDS_FILE)
                .map_err(|e| StorageError::io(&path, e))?;
        match data {
            None => Ok(Vec::new()),
            Some(d) if d.iter().all(|b| b.is_ascii_whitespace()) => Ok(Vec::new()),
            Some(d) => {
                serde_json::from_slice(&d).map_err(|error| StorageError::Json { path, error })
            }
        }
    }
}

/// A record of `layers.json` or `images.json`, as the index loads it.
pub(crate) trait StoreRecord: DeserializeOwned {
    /// "layer" or "image", for messages.
    const WHAT: &'static str;
    fn id(&self) -> &str;
    /// Why c/storage would not list this record (a layer being created or deleted).
    fn skip_reason(&self) -> Option<&'static str> {
        None
    }
    fn set_read_only(&mut self, read_only: bool);
}

impl StoreRecord for LayerMetadata {
    const WHAT: &'static str = "layer";
    fn id(&self) -> &str {
        &self.id
    }
    fn skip_reason(&self) -> Option<&'static str> {
        self.is_incomplete()
            .then_some("flagged incomplete (being created or deleted)")
    }
    fn set_read_only(&mut self, read_only: bool) {
        self.read_only = read_only;
    }
}

impl StoreRecord for ImageMetadata {
    const WHAT: &'static str = "image";
    fn id(&self) -> &str {
        &self.id
    }
    fn set_read_only(&mut self, read_only: bool) {
        self.read_only = read_only;
    }
}

/// The records of one layer or image store as of one last-write token and the mtimes of
/// its JSON files.
#[derive(Debug)]
pub(crate) struct Index<T> {
    token: Token,
    mtimes: Vec<Option<(i64, i64)>>,
    /// The records in file order, first occurrence of each ID.
    pub(crate) records: Vec<Arc<T>>,
    by_id: HashMap<String, usize>,
}

/// The records of one layer store.
pub(crate) type LayerIndex = Index<LayerMetadata>;
/// The records of one image store.
pub(crate) type ImageIndex = Index<ImageMetadata>;

impl<T: StoreRecord> Index<T> {
    /// The record with ID `id`.
    pub(crate) fn get(&self, id: &str) -> Option<&Arc<T>> {
        self.by_id.get(id).map(|&i| &self.records[i])
    }

    /// True if a record has ID `id`.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// The index of `sources` as they are now, from `cache` if neither the token nor a file's
    /// mtime changed since it was loaded. Must be called with the store's locks held.
    fn refresh(
        cache: &Mutex<Option<Arc<Self>>>,
        sources: &[JsonSource],
        token: Token,
        read_only: bool,
    ) -> Result<Arc<Self>> {
        let mtimes = sources
            .iter()
            .map(|s| s.mtime())
            .collect::<Result<Vec<_>>>()?;
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref() {
            if c.token == token && c.mtimes == mtimes {
                return Ok(c.clone());
            }
        }
        let mut idx = Index {
            token,
            mtimes,
            records: Vec::new(),
            by_id: HashMap::new(),
        };
        for src in sources {
            for mut rec in src.load::<T>()? {
                if idx.by_id.contains_key(rec.id()) {
                    log::debug!(
                        "{}: duplicate {} {} ignored",
                        src.path().display(),
                        T::WHAT,
                        rec.id()
                    );
                    continue;
                }
                if let Some(why) = rec.skip_reason() {
                    log::debug!(
                        "{}: skipping {} {}: {why}",
                        src.path().display(),
                        T::WHAT,
                        rec.id()
                    );
                    continue;
                }
                rec.set_read_only(read_only);
                idx.by_id.insert(rec.id().to_string(), idx.records.len());
                idx.records.push(Arc::new(rec));
            }
        }
        let idx = Arc::new(idx);
        *cache = Some(idx.clone());
        Ok(idx)
    }
}

/// A layer store: the primary one (graph root, plus imagestore) or an additional image store's.
#[derive(Debug)]
pub(crate) struct LayerStore {
    /// The store root (graph root or additional store), for messages.
    pub(crate) root: PathBuf,
    pub(crate) read_only: bool,
    /// `<root>/overlay-layers`: tar-split files and layer big data.
    pub(crate) layers_dir: Option<Arc<NamedDir>>,
    /// Overlay driver homes where `<id>/diff` is looked for, in order.
    pub(crate) homes: Vec<Arc<NamedDir>>,
    pub(crate) sources: Vec<JsonSource>,
    pub(crate) locks: Vec<Arc<LockFile>>,
    pub(crate) cache: Mutex<Option<Arc<LayerIndex>>>,
}

impl LayerStore {
    pub(crate) fn lock(&self) -> Result<Vec<SharedLock>> {
        self.locks.iter().map(|l| l.lock_shared()).collect()
    }

    /// Must be called with the store's locks held.
    pub(crate) fn refresh(&self) -> Result<Arc<LayerIndex>> {
        let token = match self.locks.first() {
            Some(l) => l.token()?,
            None => None,
        };
        Index::refresh(&self.cache, &self.sources, token, self.read_only)
    }
}

/// An image store: `overlay-images` of the imagestore, graph root or an additional store.
#[derive(Debug)]
pub(crate) struct ImageStore {
    pub(crate) root: PathBuf,
    pub(crate) read_only: bool,
    /// `<root>/overlay-images`.
    pub(crate) images_dir: Option<Arc<NamedDir>>,
    /// `images.json`, if the store has an `overlay-images` directory.
    pub(crate) sources: Vec<JsonSource>,
    pub(crate) lock: Option<Arc<LockFile>>,
    pub(crate) cache: Mutex<Option<Arc<ImageIndex>>>,
}

impl ImageStore {
    pub(crate) fn lock(&self) -> Result<Option<SharedLock>> {
        self.lock.as_ref().map(|l| l.lock_shared()).transpose()
    }

    /// Must be called with the store's lock held.
    pub(crate) fn refresh(&self) -> Result<Arc<ImageIndex>> {
        let token = match &self.lock {
            Some(l) => l.token()?,
            None => None,
        };
        Index::refresh(&self.cache, &self.sources, token, self.read_only)
    }
}

#[derive(Debug)]
pub(crate) struct ContainerStore {
    pub(crate) sources: Vec<JsonSource>,
    pub(crate) lock: Option<Arc<LockFile>>,
}

/// Everything a `Storage` shares with the images and layers it hands out.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: StorageConfig,
    pub(crate) overlay: OverlayOptions,
    pub(crate) layer_stores: Vec<LayerStore>,
    pub(crate) image_stores: Vec<ImageStore>,
    pub(crate) containers: Option<ContainerStore>,
}

/// The records of every store, as of one moment when all shared locks were held.
/// An image record and the index of the store holding it.
pub(crate) type StoreImage<'a> = (usize, &'a Arc<ImageMetadata>);

#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) layers: Vec<Arc<LayerIndex>>,
    pub(crate) images: Vec<Arc<ImageIndex>>,
    /// The layer forest, computed on first use.
    pub(crate) chains: std::sync::OnceLock<Chains>,
}

impl Snapshot {
    /// The layer forest of this snapshot (depths, chain sizes, children), built once.
    pub(crate) fn chains(&self) -> &Chains {
        self.chains.get_or_init(|| Chains::new(&self.all_layers()))
    }

    /// Every image (as [`Snapshot::all_images`]) with its top layers (top layer, then mapped
    /// top layers).
    pub(crate) fn image_tops(&self) -> (Vec<StoreImage<'_>>, Vec<Vec<&str>>) {
        let images = self.all_images();
        let tops = images
            .iter()
            .map(|(_, m)| {
                m.layer
                    .iter()
                    .chain(m.mapped_layers.iter())
                    .map(String::as_str)
                    .collect()
            })
            .collect();
        (images, tops)
    }

    /// Finds a layer by exact ID: primary store first.
    pub(crate) fn layer(&self, id: &str) -> Option<(usize, &Arc<LayerMetadata>)> {
        self.layers
            .iter()
            .enumerate()
            .find_map(|(i, idx)| idx.get(id).map(|l| (i, l)))
    }

    /// Every image, primary store first; images of later stores whose ID an earlier store
    /// already has are left out (the primary copy is authoritative).
    pub(crate) fn all_images(&self) -> Vec<(usize, &Arc<ImageMetadata>)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (si, idx) in self.images.iter().enumerate() {
            for img in &idx.records {
                if seen.insert(img.id.as_str()) {
                    out.push((si, img));
                }
            }
        }
        out
    }

    /// Every layer, primary store first, first occurrence of each ID.
    pub(crate) fn all_layers(&self) -> Vec<(usize, &Arc<LayerMetadata>)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (si, idx) in self.layers.iter().enumerate() {
            for l in &idx.records {
                if seen.insert(l.id.as_str()) {
                    out.push((si, l));
                }
            }
        }
        out
    }
}
