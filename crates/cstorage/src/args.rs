//! Enumerated flag values as clap `ValueEnum`s (so that `--help`, errors and shell
//! completions list them), mapped onto the library's types.

use clap::ValueEnum;
use composefs_storage::Verify;
use composefs_storage::image_export::{ArchiveFormat, LayerCompression};

/// `--verify`: what a layer export checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerifyArg {
    /// Nothing (file contents may move without passing through user space).
    None,
    /// Each file's size and CRC-64 as tar-split recorded them.
    Crc,
    /// Also the sha256 of the whole tar against the layer's diff-digest.
    Digest,
}

impl From<VerifyArg> for Verify {
    fn from(v: VerifyArg) -> Verify {
        match v {
            VerifyArg::None => Verify::None,
            VerifyArg::Crc => Verify::Crc,
            VerifyArg::Digest => Verify::Digest,
        }
    }
}

/// `--compress`: layer compression of an image export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressArg {
    /// Uncompressed layers (their digests are the DiffIDs).
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl From<CompressArg> for LayerCompression {
    fn from(c: CompressArg) -> LayerCompression {
        match c {
            CompressArg::None => LayerCompression::None,
            CompressArg::Gzip => LayerCompression::Gzip,
            CompressArg::Zstd => LayerCompression::Zstd,
        }
    }
}

/// `image export --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// An OCI image layout directory.
    Oci,
    /// An OCI image layout in a tar file.
    OciArchive,
    /// A docker-archive tar (`podman save`'s format).
    DockerArchive,
    /// The merged root filesystem as one tar.
    RootfsTar,
}

impl ExportFormat {
    /// Parses the global `--format` for `image export` (absent: `oci`).
    pub fn parse(s: Option<&str>) -> anyhow::Result<ExportFormat> {
        match s {
            None => Ok(ExportFormat::Oci),
            Some(s) => ExportFormat::from_str(s, false).map_err(|_| {
                let names: Vec<String> = ExportFormat::value_variants()
                    .iter()
                    .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
                    .collect();
                anyhow::anyhow!("--format {s:?}: image export writes {}", names.join(", "))
            }),
        }
    }

    /// The archive format, or `None` for `rootfs-tar`.
    pub fn archive(self) -> Option<ArchiveFormat> {
        match self {
            ExportFormat::Oci => Some(ArchiveFormat::Oci),
            ExportFormat::OciArchive => Some(ArchiveFormat::OciArchive),
            ExportFormat::DockerArchive => Some(ArchiveFormat::DockerArchive),
            ExportFormat::RootfsTar => None,
        }
    }
}
