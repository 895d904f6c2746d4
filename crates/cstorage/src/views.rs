//! The JSON shapes `cstorage` prints. Field names are stable and documented in the README.

use composefs_storage::{ContainerMetadata, Image, Layer, Storage};
use serde::Serialize;

use crate::fmt::rfc3339;

/// One entry of `cstorage images --format json`.
#[derive(Serialize)]
pub struct ImageSummary {
    pub id: String,
    pub names: Vec<String>,
    pub digest: Option<String>,
    pub digests: Vec<String>,
    pub created: Option<String>,
    pub size: Option<u64>,
    pub top_layer: Option<String>,
    pub read_only: bool,
    pub names_history: Vec<String>,
    pub store: String,
}

impl ImageSummary {
    pub fn new(i: &Image) -> Self {
        ImageSummary {
            id: i.id().to_string(),
            names: i.names().to_vec(),
            digest: i.digest().map(|d| d.to_string()),
            digests: i.digests().iter().map(|d| d.to_string()).collect(),
            created: i.created().map(rfc3339),
            size: i.known_size(),
            top_layer: i.top_layer_id().map(String::from),
            read_only: i.is_read_only(),
            names_history: i.names_history().to_vec(),
            store: i.store_root().display().to_string(),
        }
    }
}

/// One entry of `cstorage layers --format json`.
#[derive(Serialize)]
pub struct LayerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub parent: Option<String>,
    pub created: Option<String>,
    pub diff_digest: Option<String>,
    pub diff_size: Option<u64>,
    pub compressed_digest: Option<String>,
    pub compressed_size: Option<u64>,
    pub toc_digest: Option<String>,
    pub expected_diff_id: Option<String>,
    pub compression: Option<String>,
    pub uidset: Vec<u32>,
    pub gidset: Vec<u32>,
    pub flags: serde_json::Value,
    pub read_only: bool,
    pub images: Vec<String>,
    pub store: String,
}

impl LayerSummary {
    pub fn new(l: &Layer, images: Vec<String>) -> Self {
        let m = l.metadata();
        LayerSummary {
            id: l.id().to_string(),
            names: l.names().to_vec(),
            parent: l.parent_id().map(String::from),
            created: l.created().map(rfc3339),
            diff_digest: l.diff_digest().map(|d| d.to_string()),
            diff_size: l.diff_size(),
            compressed_digest: l.compressed_digest().map(|d| d.to_string()),
            compressed_size: l.compressed_size(),
            toc_digest: l.toc_digest().map(|d| d.to_string()),
            expected_diff_id: m.expected_diff_id().map(|d| d.to_string()),
            compression: l.compression().map(|c| c.to_string()),
            uidset: l.uid_set().to_vec(),
            gidset: l.gid_set().to_vec(),
            flags: serde_json::to_value(l.flags()).unwrap_or_default(),
            read_only: l.is_read_only(),
            images,
            store: l.store_root().display().to_string(),
        }
    }
}

/// `cstorage layer inspect`.
#[derive(Serialize)]
pub struct LayerDetail {
    #[serde(flatten)]
    pub summary: LayerSummary,
    pub link_id: Option<String>,
    pub has_tar_split: bool,
    /// True if `layer export` rebuilds the original tar bit for bit.
    pub reproducible: bool,
    /// Why not, when it is not.
    pub not_reproducible_reason: Option<String>,
    /// True for layers stored flat (composefs): contents by digest, names from the TOC.
    pub flat: bool,
    pub record: serde_json::Value,
}

impl LayerDetail {
    pub fn new(l: &Layer) -> anyhow::Result<Self> {
        let reason = l.not_reproducible_reason()?;
        Ok(LayerDetail {
            summary: LayerSummary::new(l, l.image_ids()),
            link_id: l.link_id()?,
            has_tar_split: l.has_tar_split()?,
            reproducible: reason.is_none(),
            not_reproducible_reason: reason.map(|r| r.to_string()),
            flat: l.is_flat()?,
            record: serde_json::to_value(l.metadata())?,
        })
    }
}

/// One layer within `cstorage image inspect`.
#[derive(Serialize)]
pub struct ImageLayer {
    pub id: String,
    pub diff_id: Option<String>,
    pub diff_size: Option<u64>,
    pub compressed_digest: Option<String>,
    pub compressed_size: Option<u64>,
    pub toc_digest: Option<String>,
}

/// `cstorage image inspect`.
#[derive(Serialize)]
pub struct ImageDetail {
    #[serde(flatten)]
    pub summary: ImageSummary,
    pub manifest_digest: Option<String>,
    pub manifest_type: String,
    pub manifest: serde_json::Value,
    pub manifest_list: Option<serde_json::Value>,
    pub config_digest: Option<String>,
    pub config: Option<serde_json::Value>,
    pub layers: Vec<ImageLayer>,
    pub big_data_names: Vec<String>,
    pub record: serde_json::Value,
}

impl ImageDetail {
    pub fn new(i: &Image) -> anyhow::Result<Self> {
        let manifest = i.manifest()?;
        let manifest_json: serde_json::Value = serde_json::from_slice(manifest.bytes())
            .map_err(|e| anyhow::anyhow!("image {}: manifest is not JSON: {e}", i.id()))?;
        let list = i
            .manifest_list()?
            .and_then(|m| serde_json::from_slice(m.bytes()).ok());
        let (config_digest, config) = if manifest.kind().is_image() {
            let b = i.config_bytes()?;
            let v: serde_json::Value = serde_json::from_slice(&b)
                .map_err(|e| anyhow::anyhow!("image {}: config is not JSON: {e}", i.id()))?;
            (Some(i.config_digest()?.to_string()), Some(v))
        } else {
            (None, None)
        };
        let layers = i
            .layers()?
            .iter()
            .map(|l| ImageLayer {
                id: l.id().to_string(),
                diff_id: l.diff_id().map(|d| d.to_string()),
                diff_size: l.diff_size(),
                compressed_digest: l.compressed_digest().map(|d| d.to_string()),
                compressed_size: l.compressed_size(),
                toc_digest: l.toc_digest().map(|d| d.to_string()),
            })
            .collect();
        Ok(ImageDetail {
            summary: ImageSummary::new(i),
            manifest_digest: Some(manifest.digest().to_string()),
            manifest_type: manifest.kind().media_type().to_string(),
            manifest: manifest_json,
            manifest_list: list,
            config_digest,
            config,
            layers,
            big_data_names: i.big_data_names().to_vec(),
            record: serde_json::to_value(i.metadata())?,
        })
    }
}

/// One entry of `cstorage containers --format json`.
#[derive(Serialize)]
pub struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub image: Option<String>,
    pub layer: Option<String>,
    pub created: Option<String>,
    pub record: serde_json::Value,
}

impl ContainerSummary {
    pub fn new(c: &ContainerMetadata) -> Self {
        ContainerSummary {
            id: c.id.clone(),
            names: c.names.clone(),
            image: c.image.clone(),
            layer: c.layer.clone(),
            created: c.created_time().map(rfc3339),
            record: serde_json::to_value(c).unwrap_or_default(),
        }
    }
}

/// `cstorage info`.
#[derive(Serialize)]
pub struct Info {
    pub graphroot: String,
    pub runroot: Option<String>,
    pub driver: String,
    pub driver_options: Vec<String>,
    pub imagestore: Option<String>,
    pub additional_image_stores: Vec<String>,
    pub additional_layer_stores: Vec<String>,
    pub transient_store: bool,
    pub config_file: Option<String>,
    pub rootless: bool,
    pub mount_program: Option<String>,
    pub force_mask: Option<String>,
    pub use_composefs: bool,
    pub pull_options: std::collections::BTreeMap<String, String>,
    pub images: usize,
    pub layers: usize,
    pub containers: usize,
}

impl Info {
    pub fn new(s: &Storage) -> anyhow::Result<Self> {
        let c = s.config();
        let o = s.overlay_options();
        let counts = s.counts()?;
        Ok(Info {
            graphroot: c.graphroot.display().to_string(),
            runroot: c.runroot.as_ref().map(|p| p.display().to_string()),
            driver: c.driver.clone(),
            driver_options: c.driver_options.clone(),
            imagestore: c.imagestore.as_ref().map(|p| p.display().to_string()),
            additional_image_stores: s
                .additional_image_store_roots()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            additional_layer_stores: c
                .additional_layer_stores()?
                .iter()
                .map(|a| {
                    let mut s = a.path.display().to_string();
                    if a.with_reference {
                        s.push_str(":ref");
                    }
                    s
                })
                .collect(),
            transient_store: c.transient_store,
            config_file: c.config_file.as_ref().map(|p| p.display().to_string()),
            rootless: c.rootless,
            mount_program: o.mount_program.as_ref().map(|p| p.display().to_string()),
            force_mask: o.force_mask.map(|m| format!("{m:04o}")),
            use_composefs: o.use_composefs,
            pull_options: c.pull_options.clone(),
            images: counts.images,
            layers: counts.layers,
            containers: counts.containers,
        })
    }
}
