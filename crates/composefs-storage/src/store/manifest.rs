//! Stored manifests: raw bytes, their kind, and parsed forms.

use oci_spec::image::{Digest, ImageIndex, ImageManifest};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// OCI image manifest media type.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const MEDIA_TYPE_DOCKER_V2S2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 (signed) media type.
pub const MEDIA_TYPE_DOCKER_V2S1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker schema 1 (unsigned) media type.
pub const MEDIA_TYPE_DOCKER_V2S1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// OCI image config media type.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config media type.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI uncompressed layer media type.
pub const MEDIA_TYPE_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker uncompressed layer media type.
pub const MEDIA_TYPE_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// What kind of document a stored manifest is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestKind {
    /// An OCI image manifest.
    OciManifest,
    /// A Docker schema 2 image manifest.
    DockerV2Schema2,
    /// A Docker schema 1 manifest (signed or not).
    DockerV2Schema1,
    /// An OCI image index (a list of per-platform manifests).
    OciIndex,
    /// A Docker manifest list.
    DockerManifestList,
    /// Something else (the media type found, if any).
    Unknown(String),
}

impl ManifestKind {
    /// True for manifest lists and indexes.
    pub fn is_list(&self) -> bool {
        matches!(
            self,
            ManifestKind::OciIndex | ManifestKind::DockerManifestList
        )
    }

    /// True for single-image manifests that list a config and layers (OCI, Docker schema 2).
    pub fn is_image(&self) -> bool {
        matches!(
            self,
            ManifestKind::OciManifest | ManifestKind::DockerV2Schema2
        )
    }

    /// The media type of this kind.
    pub fn media_type(&self) -> &str {
        match self {
            ManifestKind::OciManifest => MEDIA_TYPE_OCI_MANIFEST,
            ManifestKind::DockerV2Schema2 => MEDIA_TYPE_DOCKER_V2S2,
            ManifestKind::DockerV2Schema1 => MEDIA_TYPE_DOCKER_V2S1_SIGNED,
            ManifestKind::OciIndex => MEDIA_TYPE_OCI_INDEX,
            ManifestKind::DockerManifestList => MEDIA_TYPE_DOCKER_LIST,
            ManifestKind::Unknown(m) => m,
        }
    }
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(default)]
    signatures: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<ProbeConfig>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ProbeConfig {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
}

/// Guesses the kind of a manifest from its content, like c/image's `GuessMIMEType`.
pub fn guess_kind(bytes: &[u8]) -> ManifestKind {
    let Ok(p) = serde_json::from_slice::<Probe>(bytes) else {
        return ManifestKind::Unknown(String::new());
    };
    match p.media_type.as_deref() {
        Some(MEDIA_TYPE_OCI_MANIFEST) => return ManifestKind::OciManifest,
        Some(MEDIA_TYPE_OCI_INDEX) => return ManifestKind::OciIndex,
        Some(MEDIA_TYPE_DOCKER_V2S2) => return ManifestKind::DockerV2Schema2,
        Some(MEDIA_TYPE_DOCKER_LIST) => return ManifestKind::DockerManifestList,
        Some(MEDIA_TYPE_DOCKER_V2S1) | Some(MEDIA_TYPE_DOCKER_V2S1_SIGNED) => {
            return ManifestKind::DockerV2Schema1;
        }
        _ => {}
    }
    match p.schema_version {
        Some(1) => ManifestKind::DockerV2Schema1,
        Some(2) => {
            let _ = p.signatures;
            if p.manifests.is_some() {
                return ManifestKind::OciIndex;
            }
            if p.layers.is_some() || p.config.is_some() {
                if p.config.and_then(|c| c.media_type).as_deref() == Some(MEDIA_TYPE_DOCKER_CONFIG)
                {
                    return ManifestKind::DockerV2Schema2;
                }
                return ManifestKind::OciManifest;
            }
            ManifestKind::Unknown(p.media_type.unwrap_or_default())
        }
        _ => ManifestKind::Unknown(p.media_type.unwrap_or_default()),
    }
}

/// A manifest as stored: its exact bytes (digests are over bytes) and its kind.
#[derive(Debug, Clone)]
pub struct Manifest {
    key: String,
    bytes: Vec<u8>,
    kind: ManifestKind,
}

impl Manifest {
    pub(crate) fn new(key: String, bytes: Vec<u8>) -> Manifest {
        let kind = guess_kind(&bytes);
        Manifest { key, bytes, kind }
    }

    /// The big-data key it was read from (`manifest` or `manifest-<digest>`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The exact bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The kind (OCI, Docker schema 2, list, ...).
    pub fn kind(&self) -> &ManifestKind {
        &self.kind
    }

    /// The sha256 digest of the bytes.
    pub fn digest(&self) -> Digest {
        sha256_digest(&self.bytes)
    }

    /// Parses an OCI or Docker schema 2 image manifest.
    pub fn image_manifest(&self) -> Result<ImageManifest, String> {
        if !self.kind.is_image() {
            return Err(format!(
                "manifest {} is {}, not an image manifest",
                self.key,
                self.kind.media_type()
            ));
        }
        serde_json::from_slice(&self.bytes).map_err(|e| format!("manifest {}: {e}", self.key))
    }

    /// Parses an OCI index or Docker manifest list.
    pub fn index(&self) -> Result<ImageIndex, String> {
        if !self.kind.is_list() {
            return Err(format!("manifest {} is not a list", self.key));
        }
        serde_json::from_slice(&self.bytes).map_err(|e| format!("manifest list {}: {e}", self.key))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    let h = Sha256::digest(bytes);
    hex_digest(&h)
}

/// A `sha256:` digest from a raw 32-byte hash.
pub(crate) fn hex_digest(h: &[u8]) -> Digest {
    let s = format!("sha256:{}", hex::encode(h));
    // A 64-hex sha256 digest always parses.
    s.parse()
        .unwrap_or_else(|_| unreachable!("sha256 digest {s} must parse"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            guess_kind(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#
            ),
            ManifestKind::OciManifest
        );
        assert_eq!(
            guess_kind(br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json"},"layers":[]}"#),
            ManifestKind::OciManifest
        );
        assert_eq!(
            guess_kind(br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.docker.container.image.v1+json"},"layers":[]}"#),
            ManifestKind::DockerV2Schema2
        );
        assert_eq!(
            guess_kind(br#"{"schemaVersion":2,"manifests":[]}"#),
            ManifestKind::OciIndex
        );
        assert_eq!(
            guess_kind(br#"{"schemaVersion":1,"fsLayers":[]}"#),
            ManifestKind::DockerV2Schema1
        );
        assert!(matches!(guess_kind(b"not json"), ManifestKind::Unknown(_)));
    }

    #[test]
    fn digest() {
        assert_eq!(
            sha256_digest(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
