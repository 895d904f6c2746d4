//! [`Storage`]: an open store, its records, and lookups.
//!
//! A `Storage` holds directory handles for the graph root (and imagestore, run root and
//! additional image stores); no absolute path is built after opening. Records are cached per
//! layer/image store together with the store's last-write token and the JSON files' mtimes;
//! every query takes the stores' shared locks in c/storage's order (primary `layers.lock`,
//! additional stores' `layers.lock`, primary `images.lock`, additional `images.lock`), reloads
//! what changed, takes an immutable snapshot and releases the locks again. Reading a file of an
//! image or layer later takes that store's shared lock again for the duration of the read.
//! [`Storage::read_lock`] keeps all the shared locks for as long as the caller wants.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use oci_spec::image::Digest;
use serde::de::DeserializeOwned;

use crate::store::chains::Chains;
use crate::store::config::{OverlayOptions, StorageConfig};
use crate::error::{Result, StorageError};
use crate::fsutil;
use crate::store::image::Image;
use crate::store::layer::Layer;
use crate::store::lock::{LockFile, SharedLock, Token};
use crate::store::records::{ContainerMetadata, ImageMetadata};
use crate::store::reference::{Reference, is_full_id};

pub use crate::store::records::LayerMetadata;

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
    fn open_subdir(&self, name: &str) -> Result<Option<NamedDir>> {
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
struct JsonSource {
    dir: Arc<NamedDir>,
    name: &'static str,
}

impl JsonSource {
    fn path(&self) -> PathBuf {
        self.dir.path.join(self.name)
    }

    fn mtime(&self) -> Result<Option<(i64, i64)>> {
        fsutil::lstat_name(&self.dir.dir, self.name)
            .map(|st| st.map(|st| (st.st_mtime, st.st_mtime_nsec as i64)))
            .map_err(|e| StorageError::io(self.path(), e))
    }

    fn load<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let path = self.path();
        let data =
            fsutil::read_file_optional(&self.dir.dir, Path::new(self.name), MAX_RECORDS_FILE)
                .map_err(|e| StorageError::io(&path, e))?;
        match data {
            None => Ok(Vec::new()),
            Some(d) if d.iter().all(|b| b.is_ascii_whitespace()) => Ok(Vec::new()),
            Some(d) => {
                serde_json::from_slice(&d).map_err(|source| StorageError::Json { path, source })
            }
        }
    }
}

/// The records of one layer store as of one token.
#[derive(Debug, Default)]
pub(crate) struct LayerIndex {
    token: Token,
    mtimes: Vec<Option<(i64, i64)>>,
    pub(crate) layers: Vec<Arc<LayerMetadata>>,
    by_id: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
}

impl LayerIndex {
    pub(crate) fn get(&self, id: &str) -> Option<&Arc<LayerMetadata>> {
        self.by_id.get(id).map(|&i| &self.layers[i])
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
    sources: Vec<JsonSource>,
    locks: Vec<Arc<LockFile>>,
    cache: Mutex<Option<Arc<LayerIndex>>>,
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
        let mtimes = self
            .sources
            .iter()
            .map(|s| s.mtime())
            .collect::<Result<Vec<_>>>()?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref() {
            if c.token == token && c.mtimes == mtimes {
                return Ok(c.clone());
            }
        }
        let mut idx = LayerIndex {
            token,
            mtimes,
            ..Default::default()
        };
        for src in &self.sources {
            for mut rec in src.load::<LayerMetadata>()? {
                if idx.by_id.contains_key(&rec.id) {
                    log::debug!(
                        "{}: duplicate layer {} ignored",
                        src.path().display(),
                        rec.id
                    );
                    continue;
                }
                if rec.is_incomplete() {
                    log::debug!(
                        "{}: skipping layer {} flagged incomplete (being created or deleted)",
                        src.path().display(),
                        rec.id
                    );
                    continue;
                }
                rec.read_only = self.read_only;
                let i = idx.layers.len();
                idx.by_id.insert(rec.id.clone(), i);
                for n in &rec.names {
                    idx.by_name.insert(n.clone(), i);
                }
                idx.layers.push(Arc::new(rec));
            }
        }
        let idx = Arc::new(idx);
        *cache = Some(idx.clone());
        Ok(idx)
    }
}

/// The records of one image store as of one token.
#[derive(Debug, Default)]
pub(crate) struct ImageIndex {
    token: Token,
    mtime: Option<(i64, i64)>,
    pub(crate) images: Vec<Arc<ImageMetadata>>,
    by_id: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
}

impl ImageIndex {
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }
}

/// An image store: `overlay-images` of the imagestore, graph root or an additional store.
#[derive(Debug)]
pub(crate) struct ImageStore {
    pub(crate) root: PathBuf,
    pub(crate) read_only: bool,
    /// `<root>/overlay-images`.
    pub(crate) images_dir: Option<Arc<NamedDir>>,
    source: Option<JsonSource>,
    pub(crate) lock: Option<Arc<LockFile>>,
    cache: Mutex<Option<Arc<ImageIndex>>>,
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
        let mtime = match &self.source {
            Some(s) => s.mtime()?,
            None => None,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref() {
            if c.token == token && c.mtime == mtime {
                return Ok(c.clone());
            }
        }
        let mut idx = ImageIndex {
            token,
            mtime,
            ..Default::default()
        };
        if let Some(src) = &self.source {
            for mut rec in src.load::<ImageMetadata>()? {
                if idx.by_id.contains_key(&rec.id) {
                    log::debug!(
                        "{}: duplicate image {} ignored",
                        src.path().display(),
                        rec.id
                    );
                    continue;
                }
                rec.read_only = self.read_only;
                let i = idx.images.len();
                idx.by_id.insert(rec.id.clone(), i);
                for n in &rec.names {
                    idx.by_name.insert(n.clone(), i);
                }
                idx.images.push(Arc::new(rec));
            }
        }
        let idx = Arc::new(idx);
        *cache = Some(idx.clone());
        Ok(idx)
    }
}

#[derive(Debug)]
struct ContainerStore {
    sources: Vec<JsonSource>,
    lock: Option<Arc<LockFile>>,
}

/// Everything a `Storage` shares with the images and layers it hands out.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: StorageConfig,
    pub(crate) overlay: OverlayOptions,
    pub(crate) layer_stores: Vec<LayerStore>,
    pub(crate) image_stores: Vec<ImageStore>,
    containers: Option<ContainerStore>,
}

/// The records of every store, as of one moment when all shared locks were held.
/// An image record and the index of the store holding it.
pub(crate) type StoreImage<'a> = (usize, &'a Arc<ImageMetadata>);

#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) layers: Vec<Arc<LayerIndex>>,
    pub(crate) images: Vec<Arc<ImageIndex>>,
    /// The layer forest, computed on first use.
    chains: std::sync::OnceLock<Chains>,
}

impl Snapshot {
    /// The layer forest of this snapshot (depths, chain sizes, children), built once.
    pub(crate) fn chains(&self) -> &Chains {
        self.chains.get_or_init(|| Chains::new(self))
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
            for img in &idx.images {
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
            for l in &idx.layers {
                if seen.insert(l.id.as_str()) {
                    out.push((si, l));
                }
            }
        }
        out
    }
}

/// Holds the shared locks of every layer and image store until dropped, so that no
/// c/storage writer can change the store in the meantime. Operations on the same `Storage`
/// (and its images and layers) work normally while it is held.
#[derive(Debug)]
#[must_use = "the locks are released when this is dropped"]
pub struct ReadGuard {
    _locks: Vec<SharedLock>,
}

/// What [`Storage::counts`] returns: the numbers `cstorage info` prints.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct StoreCounts {
    /// Images in all stores (duplicates counted once).
    pub images: usize,
    /// Layers in all stores (incomplete layers excluded).
    pub layers: usize,
    /// Containers.
    pub containers: usize,
}

/// An open containers-storage store (overlay driver), read-only. Cloning it is cheap (the
/// directory handles and cached records are shared), and it can be used from several
/// threads.
///
/// ```no_run
/// use composefs_storage::{Storage, StorageConfig};
/// # fn main() -> composefs_storage::Result<()> {
/// let storage = Storage::discover()?;                         // as podman finds it
/// let mut config = StorageConfig::for_graphroot("/srv/store"); // or set up explicitly
/// config.set_driver_options(vec!["overlay.mount_program=/usr/bin/fuse-overlayfs".into()]);
/// let other = Storage::open_with_config(&config)?;
/// for image in storage.list_images()? {
///     println!("{} {:?}", image.id(), image.names());
/// }
/// let layer = other.find_layer("sha256:4abcf2066143")?;      // ID, prefix, name or digest
/// println!("{:?}", layer.diff_size());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Storage {
    pub(crate) inner: Arc<Inner>,
}

fn open_root(path: &Path, what: &str) -> Result<NamedDir> {
    match Dir::open_ambient_dir(path, ambient_authority()) {
        Ok(dir) => {
            // A rootless store's container-owned files may need the user-namespace helper,
            // which opens only beneath registered roots.
            crate::userns::register_root(std::os::fd::AsFd::as_fd(&dir));
            Ok(NamedDir {
                dir,
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::StoreNotFound {
            path: path.to_owned(),
            reason: format!("the {what} does not exist"),
        }),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

fn lock_in(dir: &Option<Arc<NamedDir>>, name: &str) -> Result<Option<Arc<LockFile>>> {
    let Some(d) = dir else { return Ok(None) };
    let dup = d
        .dir
        .try_clone()
        .map_err(|e| StorageError::io(&d.path, e))?;
    Ok(Some(LockFile::new(dup, name, d.path.join(name))))
}

/// Fails with a clear error if the directory holds another driver's store and no overlay one.
fn check_store_driver(root: &NamedDir) -> Result<()> {
    let mut other = None;
    let mut has_overlay = false;
    let entries = root
        .dir
        .entries()
        .map_err(|e| StorageError::io(&root.path, e))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(d) = name
            .strip_suffix("-images")
            .or_else(|| name.strip_suffix("-layers"))
        {
            if d == "overlay" {
                has_overlay = true;
            } else if !d.is_empty() {
                other = Some(d.to_string());
            }
        }
    }
    if has_overlay {
        return Ok(());
    }
    match other {
        Some(driver) => Err(StorageError::UnsupportedDriver {
            driver,
            path: Some(root.path.clone()),
        }),
        None => Err(StorageError::StoreNotFound {
            path: root.path.clone(),
            reason: "no overlay-images or overlay-layers directory".into(),
        }),
    }
}

pub mod disk_usage;
pub mod lineage;

impl Storage {
    /// Opens the store podman would use in this environment (storage.conf, environment
    /// variables, root or rootless defaults; see [`StorageConfig::discover`]).
    pub fn discover() -> Result<Storage> {
        Self::open_with_config(&StorageConfig::discover()?)
    }

    /// Opens the store whose graph root is `path`, without additional stores.
    pub fn open(path: impl AsRef<Path>) -> Result<Storage> {
        Self::open_with_config(&StorageConfig::for_graphroot(path.as_ref()))
    }

    /// Opens the store described by `config`.
    pub fn open_with_config(config: &StorageConfig) -> Result<Storage> {
        config.check_driver()?;
        let graph = open_root(&config.graphroot, "graph root")?;
        Self::open_graph(config, graph)
    }

    /// Opens the store whose graph root is the directory handle `root`, for a caller that
    /// holds a capability for it (a cap-std [`Dir`]) rather than a path. Nothing in the
    /// store is reached except through `root`: no path is resolved, and the store's files
    /// are opened beneath it as with [`Storage::open`]. The path used in messages is the
    /// one the kernel reports for the handle (`/proc/self/fd`), or `<graph root>`.
    ///
    /// ```no_run
    /// use cap_std::fs::Dir;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let root = Dir::open_ambient_dir("/var/lib/containers/storage",
    ///                                  cap_std::ambient_authority())?;
    /// let storage = composefs_storage::Storage::from_dir(root)?;
    /// println!("{} images", storage.list_images()?.len());
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_dir(root: Dir) -> Result<Storage> {
        let path = fd_path(&root);
        Self::from_dir_with_config(root, &StorageConfig::for_graphroot(&path))
    }

    /// Like [`Storage::from_dir`], with the other settings of `config` (run root, driver
    /// options such as `overlay.imagestore` or `overlay.mount_program`, additional image
    /// stores, transient store). `config.graphroot` is used only in messages: the graph
    /// root is `root`. Directories `config` names besides the graph root (run root,
    /// imagestore, additional image stores) are opened by path, as
    /// [`Storage::open_with_config`] does.
    pub fn from_dir_with_config(root: Dir, config: &StorageConfig) -> Result<Storage> {
        config.check_driver()?;
        crate::userns::register_root(std::os::fd::AsFd::as_fd(&root));
        let graph = NamedDir {
            dir: root,
            path: config.graphroot.clone(),
        };
        Self::open_graph(config, graph)
    }

    fn open_graph(config: &StorageConfig, graph: NamedDir) -> Result<Storage> {
        let overlay = config.overlay_options()?;
        let graph = Arc::new(graph);
        let imagestore = match &config.imagestore {
            Some(p) => match open_root(p, "imagestore") {
                Ok(d) => Some(Arc::new(d)),
                Err(StorageError::StoreNotFound { .. }) => {
                    log::debug!("imagestore {} does not exist yet", p.display());
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        if imagestore.is_none() {
            check_store_driver(&graph)?;
        }
        let runroot = match &config.runroot {
            Some(p) => match Dir::open_ambient_dir(p, ambient_authority()) {
                Ok(dir) => Some(Arc::new(NamedDir {
                    dir,
                    path: p.clone(),
                })),
                Err(e) => {
                    log::debug!("run root {}: {e}", p.display());
                    None
                }
            },
            None => None,
        };
        let sub = |d: &Arc<NamedDir>, name: &str| -> Result<Option<Arc<NamedDir>>> {
            Ok(d.open_subdir(name)?.map(Arc::new))
        };

        // Primary layer store.
        let g_layers = sub(&graph, "overlay-layers")?;
        let i_layers = match &imagestore {
            Some(i) => sub(i, "overlay-layers")?,
            None => None,
        };
        let r_layers = match (&runroot, config.transient_store) {
            (Some(r), true) => sub(r, "overlay-layers")?,
            _ => None,
        };
        let mut sources = Vec::new();
        let mut locks = Vec::new();
        if let Some(d) = &g_layers {
            sources.push(JsonSource {
                dir: d.clone(),
                name: "layers.json",
            });
            locks.extend(lock_in(&g_layers, "layers.lock")?);
        }
        if let Some(d) = &i_layers {
            sources.push(JsonSource {
                dir: d.clone(),
                name: "layers.json",
            });
            locks.extend(lock_in(&i_layers, "layers.lock")?);
        }
        let volatile_dir = if config.transient_store {
            &r_layers
        } else {
            &g_layers
        };
        if let Some(d) = volatile_dir {
            sources.push(JsonSource {
                dir: d.clone(),
                name: "volatile-layers.json",
            });
        }
        let mut homes = Vec::new();
        if let Some(i) = &imagestore {
            homes.extend(sub(i, "overlay")?);
        }
        homes.extend(sub(&graph, "overlay")?);
        let mut layer_stores = vec![LayerStore {
            root: config.graphroot.clone(),
            read_only: false,
            layers_dir: g_layers,
            homes,
            sources,
            locks,
            cache: Mutex::new(None),
        }];

        // Primary image stores: the imagestore (if any), then the graph root.
        let image_store_for = |root: &Arc<NamedDir>, read_only: bool| -> Result<ImageStore> {
            let images_dir = sub(root, "overlay-images")?;
            Ok(ImageStore {
                root: root.path.clone(),
                read_only,
                source: images_dir.as_ref().map(|d| JsonSource {
                    dir: d.clone(),
                    name: "images.json",
                }),
                lock: lock_in(&images_dir, "images.lock")?,
                images_dir,
                cache: Mutex::new(None),
            })
        };
        let mut image_stores = Vec::new();
        if let Some(i) = &imagestore {
            image_stores.push(image_store_for(i, false)?);
        }
        image_stores.push(image_store_for(&graph, false)?);

        // Additional image stores, in configured order.
        for path in config.additional_image_stores() {
            if path == config.graphroot || Some(&path) == config.imagestore.as_ref() {
                continue;
            }
            let root = Arc::new(open_root(&path, "additional image store").map_err(
                |e| match e {
                    StorageError::StoreNotFound { path, .. } => StorageError::StoreNotFound {
                        path,
                        reason: "the additional image store does not exist".into(),
                    },
                    e => e,
                },
            )?);
            let layers_dir = sub(&root, "overlay-layers")?;
            let mut sources = Vec::new();
            if let Some(d) = &layers_dir {
                sources.push(JsonSource {
                    dir: d.clone(),
                    name: "layers.json",
                });
                sources.push(JsonSource {
                    dir: d.clone(),
                    name: "volatile-layers.json",
                });
            }
            layer_stores.push(LayerStore {
                root: path.clone(),
                read_only: true,
                locks: lock_in(&layers_dir, "layers.lock")?.into_iter().collect(),
                layers_dir,
                homes: sub(&root, "overlay")?.into_iter().collect(),
                sources,
                cache: Mutex::new(None),
            });
            image_stores.push(image_store_for(&root, true)?);
        }

        // Containers.
        let g_ctrs = sub(&graph, "overlay-containers")?;
        let r_ctrs = match (&runroot, config.transient_store) {
            (Some(r), true) => sub(r, "overlay-containers")?,
            _ => None,
        };
        let containers = g_ctrs.as_ref().map(|g| {
            let volatile = if config.transient_store {
                r_ctrs.clone()
            } else {
                Some(g.clone())
            };
            let mut sources = vec![JsonSource {
                dir: g.clone(),
                name: "containers.json",
            }];
            if let Some(v) = &volatile {
                sources.push(JsonSource {
                    dir: v.clone(),
                    name: "volatile-containers.json",
                });
            }
            (sources, volatile)
        });
        let containers = match containers {
            Some((sources, volatile)) => {
                let lock_dir = if config.transient_store {
                    &volatile
                } else {
                    &g_ctrs
                };
                Some(ContainerStore {
                    sources,
                    lock: lock_in(lock_dir, "containers.lock")?,
                })
            }
            None => None,
        };

        let mut config = config.clone();
        if config.driver.is_empty() {
            config.driver = "overlay".into();
        }
        Ok(Storage {
            inner: Arc::new(Inner {
                config,
                overlay,
                layer_stores,
                image_stores,
                containers,
            }),
        })
    }

    /// The configuration this store was opened with.
    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// The overlay options in effect.
    pub fn overlay_options(&self) -> &OverlayOptions {
        &self.inner.overlay
    }

    /// The roots of the additional image stores that were opened, in search order.
    pub fn additional_image_store_roots(&self) -> Vec<&Path> {
        self.inner
            .layer_stores
            .iter()
            .filter(|s| s.read_only)
            .map(|s| s.root.as_path())
            .collect()
    }

    /// Takes the shared locks of every layer and image store (in c/storage's order) and holds
    /// them until the returned guard is dropped. c/storage writers (pulls, removals, tags) wait
    /// meanwhile, so hold it only as long as needed.
    pub fn read_lock(&self) -> Result<ReadGuard> {
        let mut locks = Vec::new();
        for ls in &self.inner.layer_stores {
            locks.extend(ls.lock()?);
        }
        for is in &self.inner.image_stores {
            locks.extend(is.lock()?);
        }
        Ok(ReadGuard { _locks: locks })
    }

    /// Refreshes the caches under the shared locks and returns a consistent snapshot.
    pub(crate) fn snapshot(&self) -> Result<Arc<Snapshot>> {
        let mut guards = Vec::new();
        let mut layers = Vec::new();
        for ls in &self.inner.layer_stores {
            guards.extend(ls.lock()?);
            layers.push(ls.refresh()?);
        }
        let mut images = Vec::new();
        for is in &self.inner.image_stores {
            guards.extend(is.lock()?);
            images.push(is.refresh()?);
        }
        drop(guards);
        Ok(Arc::new(Snapshot {
            layers,
            images,
            chains: Default::default(),
        }))
    }

    pub(crate) fn make_image(
        &self,
        snap: &Arc<Snapshot>,
        store: usize,
        meta: &Arc<ImageMetadata>,
    ) -> Image {
        Image::new(self.clone(), snap.clone(), store, meta.clone(), None)
    }

    pub(crate) fn make_layer(
        &self,
        snap: &Arc<Snapshot>,
        store: usize,
        meta: &Arc<LayerMetadata>,
    ) -> Layer {
        Layer::new(self.clone(), snap.clone(), store, meta.clone())
    }

    /// Every image in the store and in the additional image stores (primary first; an image
    /// an earlier store also has is listed once).
    pub fn list_images(&self) -> Result<Vec<Image>> {
        let snap = self.snapshot()?;
        Ok(snap
            .all_images()
            .into_iter()
            .map(|(si, m)| self.make_image(&snap, si, m))
            .collect())
    }

    /// Every layer (primary first), incomplete layers excluded.
    pub fn list_layers(&self) -> Result<Vec<Layer>> {
        let snap = self.snapshot()?;
        Ok(snap
            .all_layers()
            .into_iter()
            .map(|(si, m)| self.make_layer(&snap, si, m))
            .collect())
    }

    /// Counts of images, layers and containers.
    pub fn counts(&self) -> Result<StoreCounts> {
        let snap = self.snapshot()?;
        Ok(StoreCounts {
            images: snap.all_images().len(),
            layers: snap.all_layers().len(),
            containers: self.list_containers()?.len(),
        })
    }

    /// Every container record (`containers.json` and `volatile-containers.json`).
    pub fn list_containers(&self) -> Result<Vec<ContainerMetadata>> {
        let Some(cs) = &self.inner.containers else {
            return Ok(Vec::new());
        };
        let _g = cs.lock.as_ref().map(|l| l.lock_shared()).transpose()?;
        let mut out: Vec<ContainerMetadata> = Vec::new();
        let mut seen = HashSet::new();
        for src in &cs.sources {
            for c in src.load::<ContainerMetadata>()? {
                if seen.insert(c.id.clone()) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    /// Finds an image the way podman's users name them:
    ///
    /// 1. a full ID, optionally prefixed by `sha256:`;
    /// 2. an exact name as stored;
    /// 3. a reference, normalized (`alpine` → `localhost/alpine:latest`, then
    ///    `docker.io/library/alpine:latest`); `name@sha256:<digest>` matches an image with that
    ///    digest and a name in the same repository; a short name finally matches a stored name
    ///    whose repository ends in `/<name>` with the same tag, if only one does;
    /// 4. a digest (`sha256:...`) of one of the image's manifests;
    /// 5. a unique prefix of an ID (an ambiguous one is an error listing the candidates).
    ///
    /// Registries from registries.conf short-name aliases and search lists are not consulted.
    pub fn find_image(&self, query: &str) -> Result<Image> {
        let snap = self.snapshot()?;
        let all = snap.all_images();
        let found = |si: usize, m: &Arc<ImageMetadata>, digest: Option<Digest>| {
            Image::new(self.clone(), snap.clone(), si, m.clone(), digest)
        };
        let q = query.trim();
        if q.is_empty() {
            return Err(StorageError::ImageNotFound(query.into()));
        }
        // 1. Full ID.
        let hex = q.strip_prefix("sha256:").unwrap_or(q);
        if is_full_id(hex) {
            if let Some((si, m)) = all.iter().find(|(_, m)| m.id == hex) {
                return Ok(found(*si, m, None));
            }
        }
        // 2. Exact name.
        if let Some((si, m)) = all.iter().find(|(_, m)| m.names.iter().any(|n| n == q)) {
            return Ok(found(*si, m, None));
        }
        // 3. References.
        if let Ok(r) = Reference::parse_normalized(q) {
            let short = Reference::is_short_name(q);
            let mut candidates: Vec<Reference> = Vec::new();
            if short {
                if let Ok(l) = Reference::parse_normalized(&format!("localhost/{q}")) {
                    candidates.push(l);
                }
            }
            candidates.push(r.clone());
            for c in &candidates {
                if let Some(d) = c.digest() {
                    let Ok(digest) = d.parse::<Digest>() else {
                        continue;
                    };
                    let repo = c.repository();
                    let hits: Vec<_> = all
                        .iter()
                        .filter(|(_, m)| {
                            m.digests().contains(&digest)
                                && m.names
                                    .iter()
                                    .any(|n| repository_of(n).as_deref() == Some(&repo))
                        })
                        .collect();
                    if let Some((si, m)) = hits.first() {
                        return Ok(found(*si, m, Some(digest)));
                    }
                } else {
                    let name = c.clone().with_default_tag().to_string();
                    if let Some((si, m)) = all.iter().find(|(_, m)| m.names.contains(&name)) {
                        return Ok(found(*si, m, None));
                    }
                }
            }
            if short && r.digest().is_none() {
                // Fuzzy: a stored name whose repository ends in "/<name>" with the same tag.
                let typed = q.split(':').next().unwrap_or(q);
                let tag = r.tag().unwrap_or("latest");
                let suffix = format!("/{typed}");
                let hits: Vec<_> = all
                    .iter()
                    .filter(|(_, m)| {
                        m.names.iter().any(|n| {
                            Reference::parse_normalized(n).is_ok_and(|nr| {
                                nr.repository().ends_with(&suffix) && nr.tag() == Some(tag)
                            })
                        })
                    })
                    .collect();
                match hits.as_slice() {
                    [(si, m)] => return Ok(found(*si, m, None)),
                    [] => {}
                    many => {
                        return Err(StorageError::Ambiguous {
                            what: "image",
                            query: query.into(),
                            candidates: many.iter().map(|(_, m)| m.id.clone()).collect(),
                        });
                    }
                }
            }
        }
        // 4. A manifest digest.
        if let Ok(digest) = q.parse::<Digest>() {
            let hits: Vec<_> = all
                .iter()
                .filter(|(_, m)| m.digests().contains(&digest))
                .collect();
            match hits.as_slice() {
                [(si, m)] => return Ok(found(*si, m, Some(digest))),
                [] => {}
                many => {
                    return Err(StorageError::Ambiguous {
                        what: "image",
                        query: query.into(),
                        candidates: many.iter().map(|(_, m)| m.id.clone()).collect(),
                    });
                }
            }
        }
        // 5. Unique ID prefix.
        if !hex.is_empty() && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let hits: Vec<_> = all.iter().filter(|(_, m)| m.id.starts_with(hex)).collect();
            match hits.as_slice() {
                [(si, m)] => return Ok(found(*si, m, None)),
                [] => {}
                many => {
                    return Err(StorageError::Ambiguous {
                        what: "image",
                        query: query.into(),
                        candidates: many.iter().map(|(_, m)| m.id.clone()).collect(),
                    });
                }
            }
        }
        Err(StorageError::ImageNotFound(query.into()))
    }

    /// Every image whose digests (c/storage's computed `Digests`) contain `digest`.
    pub fn images_by_digest(&self, digest: &Digest) -> Result<Vec<Image>> {
        let snap = self.snapshot()?;
        Ok(snap
            .all_images()
            .into_iter()
            .filter(|(_, m)| m.digests().contains(digest))
            .map(|(si, m)| {
                Image::new(
                    self.clone(),
                    snap.clone(),
                    si,
                    m.clone(),
                    Some(digest.clone()),
                )
            })
            .collect())
    }

    /// Finds a layer by full ID, name, digest (`diff-digest`, then `compressed-diff-digest`,
    /// then `toc-digest`) or unique ID prefix.
    pub fn find_layer(&self, query: &str) -> Result<Layer> {
        let snap = self.snapshot()?;
        let all = snap.all_layers();
        let q = query.trim();
        let mk = |si: usize, m: &Arc<LayerMetadata>| self.make_layer(&snap, si, m);
        if q.is_empty() {
            return Err(StorageError::LayerNotFound(query.into()));
        }
        let hex = q.strip_prefix("sha256:").unwrap_or(q);
        if let Some((si, m)) = all.iter().find(|(_, m)| m.id == q || m.id == hex) {
            return Ok(mk(*si, m));
        }
        if let Some((si, m)) = all.iter().find(|(_, m)| m.names.iter().any(|n| n == q)) {
            return Ok(mk(*si, m));
        }
        if let Ok(d) = q.parse::<Digest>() {
            type Pick = fn(&LayerMetadata) -> Option<Digest>;
            let picks: [Pick; 3] = [
                |l| l.diff_id(),
                |l| l.compressed_diff_digest.clone(),
                |l| l.toc_digest.clone(),
            ];
            for pick in picks {
                if let Some((si, m)) = all.iter().find(|(_, m)| pick(m).as_ref() == Some(&d)) {
                    return Ok(mk(*si, m));
                }
            }
        }
        if !hex.is_empty() && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let hits: Vec<_> = all.iter().filter(|(_, m)| m.id.starts_with(hex)).collect();
            match hits.as_slice() {
                [(si, m)] => return Ok(mk(*si, m)),
                [] => {}
                many => {
                    return Err(StorageError::Ambiguous {
                        what: "layer",
                        query: query.into(),
                        candidates: many.iter().map(|(_, m)| m.id.clone()).collect(),
                    });
                }
            }
        }
        Err(StorageError::LayerNotFound(query.into()))
    }

    /// Finds the layer of each DiffID (uncompressed layer digest, as in an image config's
    /// `rootfs.diff_ids`) in one pass over the layer records: the answer has one entry per
    /// digest asked, in the same order, `None` where no layer has that DiffID. A layer's
    /// DiffID is its `diff-digest`, or for a layer known only by its table of contents the
    /// DiffID c/image expects of it (as [`Layer::diff_id`]). Where several layers share a
    /// DiffID (the same tar applied on different parents), the first is given, in the order
    /// of [`Storage::list_layers`] (primary store first), as [`Storage::find_layer`] does; to
    /// resolve an image's layers along its chain, use [`Image::layers`].
    ///
    /// ```no_run
    /// use composefs_storage::Digest;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let storage = composefs_storage::Storage::open("/var/lib/containers/storage")?;
    /// let config = storage.find_image("alpine")?.config()?;
    /// let diff_ids = config.rootfs().diff_ids().iter()
    ///     .map(|d| d.parse::<Digest>())
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let layers = storage.resolve_diff_ids(&diff_ids)?;
    /// for (diff_id, layer) in diff_ids.iter().zip(&layers) {
    ///     println!("{diff_id} {:?}", layer.as_ref().map(|l| l.id()));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn resolve_diff_ids(&self, diff_ids: &[Digest]) -> Result<Vec<Option<Layer>>> {
        let snap = self.snapshot()?;
        let wanted: HashMap<&Digest, Vec<usize>> =
            diff_ids
                .iter()
                .enumerate()
                .fold(HashMap::new(), |mut m, (i, d)| {
                    m.entry(d).or_default().push(i);
                    m
                });
        let mut out: Vec<Option<Layer>> = vec![None; diff_ids.len()];
        let mut left = wanted.len();
        for (si, m) in snap.all_layers() {
            if left == 0 {
                break;
            }
            let Some(d) = m.diff_id() else { continue };
            let Some(positions) = wanted.get(&d) else {
                continue;
            };
            if out[positions[0]].is_some() {
                continue;
            }
            let layer = self.make_layer(&snap, si, m);
            for &p in positions {
                out[p] = Some(layer.clone());
            }
            left -= 1;
        }
        Ok(out)
    }

    /// For each layer ID, how many images have it in their layer chain: linear in the
    /// number of layers and images, whatever the depth of the chains.
    pub fn layer_user_counts(&self) -> Result<HashMap<String, usize>> {
        let snap = self.snapshot()?;
        let (_, tops) = snap.image_tops();
        let chains = snap.chains();
        let counts = chains.user_counts(&tops);
        Ok(chains.ids().iter().cloned().zip(counts).collect())
    }

    /// Which images use each layer, held compactly (4 bytes per layer-image pair), for
    /// callers that list them all (`layers --format json`).
    pub fn layer_users_index(&self) -> Result<LayerUsers> {
        let snap = self.snapshot()?;
        Ok(LayerUsers::new(&snap))
    }

    /// For each layer ID, the IDs of the images whose layer chain contains it.
    pub fn layer_users(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let snap = self.snapshot()?;
        Ok(layer_users(&snap))
    }
}

/// For each layer ID, the IDs of the images whose layer chain (top layer and mapped layers,
/// then parents) contains it.
pub(crate) fn layer_users(snap: &Snapshot) -> BTreeMap<String, Vec<String>> {
    let users = LayerUsers::new(snap);
    users
        .layers
        .iter()
        .map(|(id, &i)| {
            let ids = users.lists[i]
                .iter()
                .map(|&j| users.images[j as usize].clone());
            (id.clone(), ids.collect())
        })
        .collect()
}

/// Which images use each layer (their chain contains it), computed in one pass over the
/// records and held compactly: see [`Storage::layer_users_index`].
#[derive(Debug, Clone)]
pub struct LayerUsers {
    images: Vec<String>,
    layers: HashMap<String, usize>,
    lists: Vec<Vec<u32>>,
}

impl LayerUsers {
    fn new(snap: &Snapshot) -> LayerUsers {
        let (images, tops) = snap.image_tops();
        let chains = snap.chains();
        let lists = chains.users(&tops);
        LayerUsers {
            images: images.iter().map(|(_, m)| m.id.clone()).collect(),
            layers: chains
                .ids()
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect(),
            lists,
        }
    }

    /// The IDs of the images using layer `id`, in the order images are listed.
    pub fn image_ids(&self, id: &str) -> impl Iterator<Item = &str> {
        self.layers
            .get(id)
            .map(|&i| self.lists[i].as_slice())
            .unwrap_or_default()
            .iter()
            .map(|&j| self.images[j as usize].as_str())
    }

    /// How many images use layer `id`.
    pub fn count(&self, id: &str) -> usize {
        self.layers
            .get(id)
            .map(|&i| self.lists[i].len())
            .unwrap_or(0)
    }
}

/// The path the kernel reports for an open directory, for messages only.
fn fd_path(dir: &Dir) -> PathBuf {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .unwrap_or_else(|_| PathBuf::from("<graph root>"))
}

/// The repository (`domain/path`) of a stored name, if it parses.
fn repository_of(name: &str) -> Option<String> {
    Reference::parse_normalized(name)
        .ok()
        .map(|r| r.repository())
}
