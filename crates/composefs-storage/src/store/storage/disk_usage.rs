//! Disk usage of a store, as `podman system df` (podman 4.3 and 5.4) counts it, by
//! containers/common `libimage`'s image-tree rule: an image's size is the recorded sizes of
//! the layers in its chains plus its big data; an image with a child image (podman's parent
//! rule, see `intermediate`) shares all of it; otherwise an image with a parent shares its
//! parent's size and the rest is unique; an image with neither is all unique. The images'
//! total counts every layer once plus every image's big data. Sizes come from the records
//! (one pass over the layer forest); podman mounts or walks layers whose size is not
//! recorded. Only container layers, whose size no record holds, are walked (file sizes
//! summed, hard links once), as c/storage's `DiffSize` does. Newer containers/common
//! versions count shared bytes per layer instead (a layer used by several images); no
//! podman on the test machines does yet.

use cap_std::fs::MetadataExt;
use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::store::image::Image;
use crate::store::records::ContainerMetadata;
use crate::store::storage::Storage;

/// The disk usage of one image.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImageUsage {
    /// The image.
    pub image: Image,
    /// `shared_size + unique_size`.
    pub size: u64,
    /// What it shares with its child images (all of it) or its parent (the parent's size).
    pub shared_size: u64,
    /// The rest.
    pub unique_size: u64,
    /// Containers created from it.
    pub containers: usize,
}

/// The disk usage of one container.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ContainerUsage {
    /// The container's record.
    pub container: ContainerMetadata,
    /// Bytes in its read-write layer (`None` if it could not be walked).
    pub size: Option<u64>,
    /// True if its layer is mounted (by podman, for a running container).
    pub mounted: bool,
}

/// The disk usage of a store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DiskUsage {
    /// Every image (intermediate ones included), in listing order.
    pub images: Vec<ImageUsage>,
    /// Every layer's recorded size once, plus every image's big data (podman's images
    /// total).
    pub images_size: u64,
    /// Number of layers.
    pub layers: usize,
    /// Layers no image chain and no container uses.
    pub unused_layers: usize,
    /// Recorded sizes of all layers.
    pub layers_size: u64,
    /// Recorded sizes of the unused layers.
    pub unused_layers_size: u64,
    /// Every container.
    pub containers: Vec<ContainerUsage>,
}

/// Bytes of the non-directories under `dir`, each inode once (c/storage's `directory.Size`).
fn tree_size(dir: &cap_std::fs::Dir) -> std::io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut todo = vec![dir.try_clone()?];
    while let Some(d) = todo.pop() {
        for e in d.entries()? {
            let e = e?;
            let md = e.metadata()?;
            if !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            if md.is_dir() {
                todo.push(e.open_dir()?);
            } else {
                total = total.saturating_add(md.size());
            }
        }
    }
    Ok(total)
}

impl Storage {
    /// IDs of the layers c/storage records as mounted (`<runroot>/overlay-layers/
    /// mountpoints.json`, mount count above 0). Best effort: an unreadable file means none.
    fn mounted_layers(&self) -> HashSet<String> {
        #[derive(serde::Deserialize)]
        struct Mount {
            #[serde(default)]
            id: String,
            #[serde(default)]
            count: i64,
        }
        let Some(run) = &self.config().runroot else {
            return HashSet::new();
        };
        let path = run.join("overlay-layers/mountpoints.json");
        let Ok(b) = std::fs::read(&path) else {
            return HashSet::new();
        };
        match serde_json::from_slice::<Vec<Mount>>(&b) {
            Ok(v) => v
                .into_iter()
                .filter(|m| m.count > 0)
                .map(|m| m.id)
                .collect(),
            Err(e) => {
                log::warn!("{}: {e}", path.display());
                HashSet::new()
            }
        }
    }

    /// The disk usage of the store (see the module documentation).
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let snap = self.snapshot()?;
        let (_, tops) = snap.image_tops();
        let counts = snap.chains().user_counts(&tops);
        let (all, children) = self.image_children()?;
        let mut parent: Vec<Option<usize>> = vec![None; all.len()];
        for (p, ch) in children.iter().enumerate() {
            for &c in ch {
                parent[c].get_or_insert(p);
            }
        }
        let sizes: Vec<u64> = all.iter().map(Image::size).collect();
        let containers = self.list_containers()?;
        let mut per_image: HashMap<String, usize> = HashMap::new();
        for c in &containers {
            if let Some(i) = &c.image {
                *per_image.entry(i.clone()).or_insert(0) += 1;
            }
        }
        let mut images = Vec::with_capacity(all.len());
        let mut images_size = 0u64;
        for (i, image) in all.into_iter().enumerate() {
            images_size = images_size.saturating_add(image.big_data_size());
            let size = sizes[i];
            let (shared, unique) = if !children[i].is_empty() {
                (size, 0)
            } else if let Some(p) = parent[i] {
                (sizes[p], size.saturating_sub(sizes[p]))
            } else {
                (0, size)
            };
            let containers = per_image.get(image.id()).copied().unwrap_or(0);
            images.push(ImageUsage {
                image,
                size: shared.saturating_add(unique),
                shared_size: shared,
                unique_size: unique,
                containers,
            });
        }
        let container_layers: HashSet<&str> = containers
            .iter()
            .filter_map(|c| c.layer.as_deref())
            .collect();
        let (mut layers, mut layers_size, mut unused_layers, mut unused_layers_size) =
            (0, 0u64, 0, 0u64);
        for ((_, l), users) in snap.all_layers().iter().zip(&counts) {
            let size = l.known_diff_size().unwrap_or(0);
            layers += 1;
            layers_size = layers_size.saturating_add(size);
            if *users == 0 && !container_layers.contains(l.id.as_str()) {
                unused_layers += 1;
                unused_layers_size = unused_layers_size.saturating_add(size);
            }
        }
        images_size = images_size.saturating_add(layers_size);
        let mounted = self.mounted_layers();
        let containers = containers
            .into_iter()
            .map(|c| {
                let layer = c.layer.as_deref().and_then(|l| self.find_layer(l).ok());
                let size = layer.as_ref().and_then(|l| {
                    let d = l.diff_dir().ok()?;
                    tree_size(&d)
                        .map_err(|e| {
                            log::warn!(
                                "container {}: layer {}: cannot sum its files: {e}",
                                c.id,
                                l.id()
                            );
                        })
                        .ok()
                });
                let mounted = c.layer.as_deref().is_some_and(|l| mounted.contains(l));
                ContainerUsage {
                    container: c,
                    size,
                    mounted,
                }
            })
            .collect();
        Ok(DiskUsage {
            images,
            images_size,
            layers,
            unused_layers,
            layers_size,
            unused_layers_size,
            containers,
        })
    }
}
