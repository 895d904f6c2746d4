//! [`Image`]: an image record, its big data (manifests, config), and its layers.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use oci_spec::image::{Digest, ImageConfiguration, ImageManifest};

use crate::error::{Result, StorageError};
use crate::fsutil;
use crate::store::big_data;
use crate::store::chains::MAX_CHAIN;
use crate::store::layer::Layer;
use crate::store::manifest::{Manifest, sha256_digest};
use crate::store::records::ImageMetadata;
use crate::store::state::{ImageStore, Snapshot};
use crate::store::storage::Storage;

/// An image of the store: a cheap handle on its record, from [`Storage::list_images`],
/// [`Storage::find_image`] or [`Storage::images_by_digest`]. Its manifest, config and layers
/// are read when asked for.
///
/// ```no_run
/// # fn main() -> composefs_storage::Result<()> {
/// let storage = composefs_storage::Storage::open("/var/lib/containers/storage")?;
/// let image = storage.find_image("quay.io/fedora/fedora:latest")?;
/// println!("{} {:?} {:?}", image.id(), image.names(), image.manifest_digest());
/// let config = image.config()?;                 // oci_spec ImageConfiguration
/// println!("{}/{}", config.os(), config.architecture());
/// for layer in image.layers()? {                // base first, checked against the DiffIDs
///     println!("{} {:?}", layer.id(), layer.diff_size());
/// }
/// # Ok(())
/// # }
/// ```
///
/// [`Image::rootfs`], the merged root filesystem, is defined with [`RootFs`](crate::RootFs)
/// (so that the store does not depend on what is built on it).
#[derive(Debug, Clone)]
pub struct Image {
    storage: Storage,
    snap: Arc<Snapshot>,
    store: usize,
    meta: Arc<ImageMetadata>,
    /// The manifest digest the image was looked up by, if any (`name@sha256:...`).
    requested_digest: Option<Digest>,
}

impl Image {
    pub(crate) fn new(
        storage: Storage,
        snap: Arc<Snapshot>,
        store: usize,
        meta: Arc<ImageMetadata>,
        requested_digest: Option<Digest>,
    ) -> Image {
        Image {
            storage,
            snap,
            store,
            meta,
            requested_digest,
        }
    }

    fn store(&self) -> &ImageStore {
        &self.storage.inner.image_stores[self.store]
    }

    /// The image ID.
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    /// The whole record.
    pub fn metadata(&self) -> &ImageMetadata {
        &self.meta
    }

    /// The image's names.
    pub fn names(&self) -> &[String] {
        &self.meta.names
    }

    /// Every name the image ever had, newest first.
    pub fn names_history(&self) -> &[String] {
        &self.meta.names_history
    }

    /// The image's `digest` field (for images pulled through a list: the list's digest).
    pub fn digest(&self) -> Option<&Digest> {
        self.meta.digest.as_ref()
    }

    /// All digests the image can be looked up by (c/storage's `Digests`).
    pub fn digests(&self) -> Vec<Digest> {
        self.meta.digests()
    }

    /// The digest the image was looked up by (`name@sha256:...`), if any.
    pub fn requested_digest(&self) -> Option<&Digest> {
        self.requested_digest.as_ref()
    }

    /// The digest of the per-platform manifest (`big-data-digests["manifest"]`, else the
    /// image's `digest`).
    pub fn manifest_digest(&self) -> Option<Digest> {
        self.meta
            .big_data_digests
            .get("manifest")
            .cloned()
            .or_else(|| self.meta.digest.clone())
    }

    /// When the image was created.
    pub fn created(&self) -> Option<SystemTime> {
        self.meta.created_time()
    }

    /// The top layer's ID (`None` for images without layers, e.g. podman manifest lists).
    pub fn top_layer_id(&self) -> Option<&str> {
        self.meta.layer.as_deref()
    }

    /// True if the image belongs to a read-only additional image store.
    pub fn is_read_only(&self) -> bool {
        self.store().read_only
    }

    /// The root of the store (imagestore, graph root or additional store) holding the image.
    pub fn store_root(&self) -> &Path {
        &self.store().root
    }

    /// The keys of the image's big-data items.
    pub fn big_data_names(&self) -> &[String] {
        &self.meta.big_data_names
    }

    /// Reads a big-data item by key, under the image store's shared lock.
    pub fn read_big_data(&self, key: &str) -> Result<Vec<u8>> {
        let st = self.store();
        fsutil::check_component(self.id())
            .map_err(|m| StorageError::image(self.id(), format!("invalid image ID: {m}")))?;
        let fname = big_data::file_name(key)
            .map_err(|m| StorageError::image(self.id(), format!("big-data key {key:?}: {m}")))?;
        let Some(dir) = &st.images_dir else {
            return Err(StorageError::BigDataNotFound {
                image: self.id().into(),
                key: key.into(),
            });
        };
        let _g = st.lock()?;
        if !st.refresh()?.contains(self.id()) {
            return Err(StorageError::Changed {
                what: format!("image {}", self.id()),
                message: "it was removed from the store".into(),
            });
        }
        big_data::read(dir, self.id(), &fname)?.ok_or_else(|| StorageError::BigDataNotFound {
            image: self.id().into(),
            key: key.into(),
        })
    }

    fn try_manifest(&self, key: &str) -> Result<Option<Manifest>> {
        match self.read_big_data(key) {
            Ok(b) => Ok(Some(Manifest::new(key.to_string(), b))),
            Err(StorageError::BigDataNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The image's manifest, as c/image's storage source picks it: `manifest-<digest>` for
    /// the digest the image was looked up by (if that is a single-image manifest), otherwise
    /// `manifest`, otherwise `manifest-<digest>` for the record's manifest digest.
    pub fn manifest(&self) -> Result<Manifest> {
        if let Some(d) = &self.requested_digest {
            if let Some(m) = self.try_manifest(&format!("manifest-{d}"))? {
                if !m.kind().is_list() {
                    return Ok(m);
                }
            }
        }
        if let Some(m) = self.try_manifest("manifest")? {
            return Ok(m);
        }
        if let Some(d) = self.manifest_digest() {
            if let Some(m) = self.try_manifest(&format!("manifest-{d}"))? {
                return Ok(m);
            }
        }
        // Any other stored manifest-<digest> that is not a list.
        for k in self.big_data_names() {
            if k.starts_with("manifest-") {
                if let Some(m) = self.try_manifest(k)? {
                    if !m.kind().is_list() {
                        return Ok(m);
                    }
                }
            }
        }
        Err(StorageError::image(self.id(), "no manifest stored"))
    }

    /// The manifest list (OCI index or Docker list) the image was pulled through, if stored.
    pub fn manifest_list(&self) -> Result<Option<Manifest>> {
        for k in self.big_data_names() {
            if k == "manifest" || k.starts_with("manifest-") {
                if let Some(m) = self.try_manifest(k)? {
                    if m.kind().is_list() {
                        return Ok(Some(m));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The parsed image manifest (OCI or Docker schema 2).
    pub fn image_manifest(&self) -> Result<ImageManifest> {
        self.manifest()?
            .image_manifest()
            .map_err(|m| StorageError::image(self.id(), m))
    }

    /// The config's digest, from the manifest.
    pub fn config_digest(&self) -> Result<Digest> {
        Ok(self.image_manifest()?.config().digest().clone())
    }

    /// The config blob's exact bytes (big-data key = the manifest's config digest). Its
    /// sha256 is checked against that digest.
    pub fn config_bytes(&self) -> Result<Vec<u8>> {
        let digest = self.config_digest()?;
        let bytes = self.read_big_data(digest.as_ref())?;
        let found = sha256_digest(&bytes);
        if digest.algorithm().as_ref() == "sha256" && found != digest {
            return Err(StorageError::image(
                self.id(),
                format!("config has digest {found}, but the manifest says {digest}"),
            ));
        }
        Ok(bytes)
    }

    /// The parsed image config.
    pub fn config(&self) -> Result<ImageConfiguration> {
        let b = self.config_bytes()?;
        serde_json::from_slice(&b)
            .map_err(|e| StorageError::image(self.id(), format!("config: {e}")))
    }

    /// The storage layers from the top layer down its `parent` links, base layer first,
    /// without checking them against the config.
    pub fn storage_layers(&self) -> Result<Vec<Layer>> {
        let Some(top) = self.top_layer_id() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cur = Some(top.to_string());
        while let Some(id) = cur {
            if !seen.insert(id.clone()) {
                return Err(StorageError::image(
                    self.id(),
                    format!("layer chain loops back to layer {id}"),
                ));
            }
            if out.len() >= MAX_CHAIN {
                return Err(StorageError::image(
                    self.id(),
                    format!("layer chain is longer than {MAX_CHAIN} layers"),
                ));
            }
            let (si, m) = self.snap.layer(&id).ok_or_else(|| {
                StorageError::image(self.id(), format!("layer {id} does not exist"))
            })?;
            cur = m.parent.clone();
            out.push(Layer::new(
                self.storage.clone(),
                self.snap.clone(),
                si,
                m.clone(),
            ));
        }
        out.reverse();
        Ok(out)
    }

    /// The image's layers, base first, each checked against the config's `rootfs.diff_ids`
    /// (a layer whose DiffID differs is an error naming both digests). Images without layers
    /// give an empty list; images whose manifest is not OCI or Docker schema 2 are not checked.
    pub fn layers(&self) -> Result<Vec<Layer>> {
        let layers = self.storage_layers()?;
        if layers.is_empty() {
            return Ok(layers);
        }
        let manifest = self.manifest()?;
        if !manifest.kind().is_image() {
            return Ok(layers);
        }
        let config = self.config()?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != layers.len() {
            return Err(StorageError::image(
                self.id(),
                format!(
                    "the config lists {} layers (rootfs.diff_ids) but the store has {} in the chain from {}",
                    diff_ids.len(),
                    layers.len(),
                    self.top_layer_id().unwrap_or("")
                ),
            ));
        }
        for (i, (l, expected)) in layers.iter().zip(diff_ids).enumerate() {
            let found = l.diff_id();
            if found.as_ref().map(|d| d.to_string()).as_deref() != Some(expected.as_str()) {
                return Err(StorageError::DiffIdMismatch {
                    image: self.id().into(),
                    layer: l.id().into(),
                    index: i,
                    expected: expected.clone(),
                    found: found
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "(none)".into()),
                });
            }
        }
        Ok(layers)
    }

    /// The image's size as podman reports it (c/storage `ImageSize`): the uncompressed sizes
    /// of every layer in its chains (top layer and mapped top layers) plus the sizes of its
    /// big-data items. Layers whose size is unknown count as 0.
    pub fn size(&self) -> u64 {
        let tops: Vec<&String> = self
            .meta
            .layer
            .iter()
            .chain(self.meta.mapped_layers.iter())
            .collect();
        let chains = self.snap.chains();
        let size = match tops[..] {
            // One chain: its size was summed once for the whole forest.
            [top] => chains
                .chain_size(top)
                .unwrap_or_else(|| self.walked_size(&tops)),
            _ => self.walked_size(&tops),
        };
        size.saturating_add(self.big_data_size())
    }

    /// The summed sizes of the image's big-data items (manifests, config, signatures).
    pub fn big_data_size(&self) -> u64 {
        self.meta
            .big_data_sizes
            .values()
            .map(|v| u64::try_from(*v).unwrap_or(0))
            .sum()
    }

    /// [`Image::size`], or `None` if a layer chain of the image is longer than this crate
    /// follows (the image cannot be read: [`Image::layers`] fails for it).
    pub fn known_size(&self) -> Option<u64> {
        let chains = self.snap.chains();
        let too_deep = self
            .meta
            .layer
            .iter()
            .chain(self.meta.mapped_layers.iter())
            .any(|t| chains.depth(t).is_some_and(|d| d > MAX_CHAIN));
        (!too_deep).then(|| self.size())
    }

    /// The summed known sizes of the layers in the chains of `tops`, each layer once,
    /// walked (for images with several tops or broken chains).
    fn walked_size(&self, tops: &[&String]) -> u64 {
        let mut seen = std::collections::HashSet::new();
        let mut size: u64 = 0;
        for top in tops {
            let mut cur = Some((*top).clone());
            while let Some(id) = cur {
                if !seen.insert(id.clone()) || seen.len() > MAX_CHAIN {
                    break;
                }
                let Some((_, l)) = self.snap.layer(&id) else {
                    break;
                };
                size = size.saturating_add(l.known_diff_size().unwrap_or(0));
                cur = l.parent.clone();
            }
        }
        size
    }

    /// The storage this image belongs to.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
}
