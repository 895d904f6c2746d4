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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::error::{Result, StorageError};
use crate::store::config::{OverlayOptions, StorageConfig};
use crate::store::lock::{LockFile, SharedLock};
use crate::store::records::ContainerMetadata;
use crate::store::state::{
    ContainerStore, ImageStore, Inner, JsonSource, LayerStore, NamedDir, Snapshot,
};

pub use crate::store::records::LayerMetadata;
pub use users::LayerUsers;

pub mod disk_usage;
pub mod lineage;
mod lookup;
mod users;

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
                sources: images_dir
                    .iter()
                    .map(|d| JsonSource {
                        dir: d.clone(),
                        name: "images.json",
                    })
                    .collect(),
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
}
/// The path the kernel reports for an open directory, for messages only.
fn fd_path(dir: &Dir) -> PathBuf {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .unwrap_or_else(|_| PathBuf::from("<graph root>"))
}
