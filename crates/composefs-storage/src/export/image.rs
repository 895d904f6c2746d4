//! Exporting images straight from the store: OCI image layout (directory or `oci-archive`)
//! and `docker-archive` (the layout `podman save` writes).
//!
//! The config blob is the stored config's bytes unchanged. Layers are rebuilt from tar-split
//! and checked against their DiffIDs while they are written (see [`crate::export`]);
//! uncompressed by default, so their digests are the DiffIDs, or compressed (gzip, zstd) in
//! parallel across layers. In an OCI layout every blob is written under a temporary name and
//! renamed to its digest only after the digest was checked, so an interrupted export never
//! leaves a blob whose name lies about its content. An existing OCI layout is added to: its
//! blobs are reused and its `index.json` keeps its other entries. Archives are written to a
//! temporary file renamed into place only when complete and every blob checked; the largest
//! uncompressed layer is written straight into it, the others beside it in parallel.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{Descriptor, Digest, ImageManifest, ImageManifestBuilder, MediaType};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::error::{Result, StorageError};
use crate::export::{ExportOptions, Verify};
use crate::output::{self, OutputFile, Pending};
use crate::store::image::Image;
use crate::store::layer::Layer;
use crate::store::manifest::{
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_MANIFEST, hex_digest,
};
use crate::tar::header::{BLOCK, EntryType, TarHeader, padding};

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveFormat {
    /// An OCI image layout directory.
    #[default]
    Oci,
    /// An OCI image layout in a tar file.
    OciArchive,
    /// A docker-archive tar (`podman save`'s format).
    DockerArchive,
}

impl std::str::FromStr for ArchiveFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "oci" | "oci-dir" => Ok(ArchiveFormat::Oci),
            "oci-archive" => Ok(ArchiveFormat::OciArchive),
            "docker-archive" => Ok(ArchiveFormat::DockerArchive),
            o => Err(format!(
                "{o:?} is not one of oci, oci-archive, docker-archive"
            )),
        }
    }
}

/// Compression of the exported layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerCompression {
    /// Uncompressed tars (their digests are the DiffIDs).
    #[default]
    None,
    /// gzip (zlib-rs, level 1 by default).
    Gzip,
    /// zstd (level 3 by default).
    Zstd,
}

impl std::str::FromStr for LayerCompression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(LayerCompression::None),
            "gzip" => Ok(LayerCompression::Gzip),
            "zstd" => Ok(LayerCompression::Zstd),
            o => Err(format!("{o:?} is not one of none, gzip, zstd")),
        }
    }
}

/// Progress callback: (layer ID, bytes of that layer's tar written so far, its total if known).
pub type ImageProgress = Arc<dyn Fn(&str, u64, Option<u64>) + Send + Sync>;

/// Options of an image export.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ImageExportOptions {
    /// Output format.
    pub format: ArchiveFormat,
    /// Layer compression (OCI formats only).
    pub compression: LayerCompression,
    /// Compression level (gzip 0-9, zstd 1-22); `None` for the default.
    pub level: Option<i32>,
    /// Layers exported at once (default: the number of CPUs).
    pub jobs: usize,
    /// Progress callback.
    pub progress: Option<ImageProgress>,
    /// How the uncompressed layers written straight into an archive on standard output, a
    /// FIFO or a device are verified. `None`: [`Verify::Crc`]: each file's size and CRC-64
    /// against the layer's tar-split (the tar's headers come from the tar-split itself) and
    /// the layer's size against its `diff-size`; the sha256 is the receiver's to check
    /// (`podman load`, `docker load` do), and one found wrong after the layer's bytes were
    /// sent could not take them back anyway. Every other layer, and every layer of an
    /// archive written to a file, is verified with [`Verify::Digest`].
    pub stream_verify: Option<Verify>,
}

impl ImageExportOptions {
    /// Options for a format, with defaults otherwise.
    pub fn new(format: ArchiveFormat) -> Self {
        ImageExportOptions {
            format,
            ..Default::default()
        }
    }
}

/// One image to export and the name to record for it (`org.opencontainers.image.ref.name`
/// in OCI layouts, `RepoTags` in docker-archive).
#[derive(Debug, Clone)]
pub struct ExportItem {
    /// The image.
    pub image: Image,
    /// The name to record, if any.
    pub name: Option<String>,
}

/// What an image export wrote.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ImageExportReport {
    /// Per image: its ID, the digest of the manifest written (OCI formats), its name.
    pub images: Vec<(String, Option<Digest>, Option<String>)>,
    /// Layer blobs written.
    pub blobs_written: usize,
    /// Layer blobs already present and reused.
    pub blobs_reused: usize,
    /// Bytes of layer blobs written.
    pub bytes: u64,
}

/// A blob of the export: digest, size, media type.
#[derive(Debug, Clone)]
struct BlobInfo {
    digest: Digest,
    size: u64,
    media_type: String,
}

struct Prepared {
    image: Image,
    name: Option<String>,
    config: Vec<u8>,
    config_digest: Digest,
    layers: Vec<Layer>,
    annotations: Option<Value>,
    /// The stored manifest's exact bytes.
    stored_manifest: Vec<u8>,
}

fn hex(d: &Digest) -> &str {
    d.digest()
}

/// A writer that hashes and counts what passes through.
struct HashWriter<W> {
    inner: W,
    sha: Sha256,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.sha.update(&b[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `bytes` as blob `digest` in `dir` unless a regular file of that name is there;
/// returns the new blob, registered for removal until the export completes.
fn put_blob_bytes(dir: &Path, digest: &Digest, bytes: &[u8]) -> Result<Option<Pending>> {
    let dst = dir.join(hex(digest));
    if std::fs::symlink_metadata(&dst).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let (tmp, mut f) = output::create_temp_in(dir, "blob").map_err(|e| StorageError::io(dir, e))?;
    f.write_all(bytes).map_err(|e| StorageError::io(&dst, e))?;
    drop(f);
    Ok(Some(
        tmp.renamed(&dst).map_err(|e| StorageError::io(&dst, e))?,
    ))
}

/// Export options for a layer blob: verified as `verify` says, progress reported under the
/// layer's ID.
fn verified_export(
    layer: &Layer,
    progress: Option<&ImageProgress>,
    verify: Verify,
) -> ExportOptions {
    let opts = ExportOptions::new(verify);
    match progress {
        Some(p) => {
            let p = p.clone();
            let id = layer.id().to_string();
            let total = layer.diff_size();
            opts.with_progress(Arc::new(move |n| p(&id, n, total)))
        }
        None => opts,
    }
}

/// Writes a layer blob into `dir` (compressed or not), verified, named by its digest.
/// Returns the blob and, if it was not there before, its path registered for removal until
/// the export completes. Write errors name `name` (what the user asked to write).
fn put_layer_blob(
    dir: &Path,
    name: &Path,
    layer: &Layer,
    compression: LayerCompression,
    level: Option<i32>,
    progress: Option<&ImageProgress>,
) -> Result<(BlobInfo, Option<Pending>)> {
    let diff_id = layer.diff_id().ok_or_else(|| {
        StorageError::layer(
            layer.id(),
            "has no DiffID; it cannot be exported as an image layer",
        )
    })?;
    let opts = verified_export(layer, progress, Verify::Digest);
    let create_err = |e: std::io::Error| {
        StorageError::io(
            name,
            std::io::Error::new(
                e.kind(),
                format!("cannot create a temporary file in {}: {e}", dir.display()),
            ),
        )
    };
    if compression == LayerCompression::None {
        let dst = dir.join(hex(&diff_id));
        let info = BlobInfo {
            digest: diff_id.clone(),
            size: layer.diff_size().unwrap_or(0),
            media_type: MEDIA_TYPE_OCI_LAYER.into(),
        };
        if let Ok(md) = std::fs::symlink_metadata(&dst) {
            if md.is_file() && layer.diff_size().is_none_or(|s| s == md.len()) {
                return Ok((
                    BlobInfo {
                        size: md.len(),
                        ..info
                    },
                    None,
                ));
            }
        }
        let (tmp, f) = output::create_temp_in(dir, "layer").map_err(create_err)?;
        let rep = layer.export_to_fd(f.as_fd(), name, &opts)?;
        drop(f);
        let kept = tmp.renamed(&dst).map_err(|e| StorageError::io(&dst, e))?;
        return Ok((
            BlobInfo {
                size: rep.bytes,
                ..info
            },
            Some(kept),
        ));
    }
    let (tmp, f) = output::create_temp_in(dir, "layer").map_err(create_err)?;
    let hw = HashWriter {
        inner: BufWriter::with_capacity(1 << 20, f),
        sha: Sha256::new(),
        n: 0,
    };
    let (hw, media_type) = match compression {
        LayerCompression::Gzip => {
            let lvl = level.unwrap_or(1).clamp(0, 9) as u32;
            let mut enc = flate2::write::GzEncoder::new(hw, flate2::Compression::new(lvl));
            layer.export_named(&mut enc, name, &opts)?;
            (
                enc.finish().map_err(|e| StorageError::io(name, e))?,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        LayerCompression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(hw, level.unwrap_or(3))
                .map_err(|e| StorageError::io(name, e))?;
            layer.export_named(&mut enc, name, &opts)?;
            (
                enc.finish().map_err(|e| StorageError::io(name, e))?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            )
        }
        LayerCompression::None => unreachable!("handled above"),
    };
    let HashWriter { inner, sha, n } = hw;
    inner
        .into_inner()
        .map_err(|e| StorageError::io(name, e.into_error()))?;
    let digest = hex_digest(&sha.finalize());
    let dst = dir.join(hex(&digest));
    let info = BlobInfo {
        digest,
        size: n,
        media_type: media_type.into(),
    };
    if std::fs::symlink_metadata(&dst).is_ok_and(|m| m.is_file()) {
        // The same blob is there already (compression is deterministic): keep that one.
        return Ok((info, None));
    }
    let kept = tmp.renamed(&dst).map_err(|e| StorageError::io(&dst, e))?;
    Ok((info, Some(kept)))
}

/// Blobs of exported layers by layer ID, and the files this export created for them.
#[derive(Default)]
struct LayerBlobs {
    blobs: HashMap<String, BlobInfo>,
    created: Vec<Pending>,
}

/// Exports layers in parallel into `dir`.
fn export_layers(
    dir: &Path,
    name: &Path,
    layers: &[Layer],
    opts: &ImageExportOptions,
    report: &mut ImageExportReport,
) -> Result<LayerBlobs> {
    // A failed export returns the error; the blobs of layers already done drop with the
    // results, which removes the files they created.
    let results = crate::pool::try_map(layers, opts.jobs, |l| {
        put_layer_blob(
            dir,
            name,
            l,
            opts.compression,
            opts.level,
            opts.progress.as_ref(),
        )
        .map(|(info, created)| (l.id().to_string(), info, created))
    })?;
    let mut out = LayerBlobs::default();
    for (id, info, created) in results {
        match created {
            Some(c) => {
                report.blobs_written += 1;
                report.bytes += info.size;
                out.created.push(c);
            }
            None => report.blobs_reused += 1,
        }
        out.blobs.insert(id, info);
    }
    Ok(out)
}

fn prepare(items: &[ExportItem]) -> Result<Vec<Prepared>> {
    items.iter().map(prepare_one).collect()
}

fn prepare_one(it: &ExportItem) -> Result<Prepared> {
    let img = &it.image;
    let manifest = img.manifest()?;
    if !manifest.kind().is_image() {
        return Err(StorageError::image(
            img.id(),
            format!(
                "its manifest is {}; only OCI and Docker schema 2 images can be exported",
                manifest.kind().media_type()
            ),
        ));
    }
    let parsed: Value = serde_json::from_slice(manifest.bytes())
        .map_err(|e| StorageError::image(img.id(), format!("manifest: {e}")))?;
    let config = img.config_bytes()?;
    let config_digest = img.config_digest()?;
    let layers = img.layers()?;
    Ok(Prepared {
        image: img.clone(),
        name: it.name.clone(),
        config,
        config_digest,
        layers,
        annotations: parsed.get("annotations").cloned(),
        stored_manifest: manifest.bytes().to_vec(),
    })
}

fn unique_layers(prepared: &[Prepared]) -> Vec<Layer> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for p in prepared {
        for l in &p.layers {
            if seen.insert(l.id().to_string()) {
                out.push(l.clone());
            }
        }
    }
    out
}

/// The manifest written for `p` whose layers are `blobs`: the stored manifest's bytes
/// unchanged if it is an OCI manifest describing exactly these blobs and the config (as a
/// manifest whose layers were stored uncompressed is, for uncompressed layers), so its digest
/// stays the one it was pulled by; otherwise a new OCI manifest listing them.
fn oci_manifest(p: &Prepared, blobs: &HashMap<String, BlobInfo>) -> Result<Vec<u8>> {
    if stored_manifest_matches(p, blobs) {
        return Ok(p.stored_manifest.clone());
    }
    new_oci_manifest(p, blobs)
}

fn stored_manifest_matches(p: &Prepared, blobs: &HashMap<String, BlobInfo>) -> bool {
    let Ok(m) = serde_json::from_slice::<Value>(&p.stored_manifest) else {
        return false;
    };
    let desc_is = |d: &Value, media_type: &str, digest: &Digest, size: u64| {
        d["mediaType"].as_str() == Some(media_type)
            && d["digest"].as_str() == Some(digest.as_ref())
            && d["size"].as_u64() == Some(size)
    };
    let Some(layers) = m["layers"].as_array() else {
        return false;
    };
    m["schemaVersion"].as_u64() == Some(2)
        && m["mediaType"].as_str() == Some(MEDIA_TYPE_OCI_MANIFEST)
        && desc_is(
            &m["config"],
            MEDIA_TYPE_OCI_CONFIG,
            &p.config_digest,
            p.config.len() as u64,
        )
        && layers.len() == p.layers.len()
        && layers.iter().zip(&p.layers).all(|(d, l)| {
            blobs
                .get(l.id())
                .is_some_and(|b| desc_is(d, &b.media_type, &b.digest, b.size))
        })
}

/// The OCI manifest an image is exported with uncompressed (`cstorage image export`, the
/// default) and served with (`cstorage serve`): layers `application/vnd.oci.image.layer.v1.tar`
/// with digest = DiffID and size = diff-size, the stored config blob unchanged, the stored
/// manifest's annotations. If the stored manifest is already exactly that (an OCI image
/// stored with uncompressed layers), its bytes are returned unchanged.
///
/// Fails for images whose manifest is not an image manifest (OCI or Docker schema 2), and
/// for layers without a DiffID or without a known size.
pub fn uncompressed_manifest(image: &Image) -> Result<Vec<u8>> {
    let p = prepare_one(&ExportItem {
        image: image.clone(),
        name: None,
    })?;
    let mut blobs = HashMap::new();
    for l in &p.layers {
        let missing = |what: &str| {
            StorageError::layer(
                l.id(),
                format!("has no {what}; it cannot be served as an image layer"),
            )
        };
        let digest = l.diff_id().ok_or_else(|| missing("DiffID"))?;
        let size = l.diff_size().ok_or_else(|| missing("diff-size"))?;
        blobs.insert(
            l.id().to_string(),
            BlobInfo {
                digest,
                size,
                media_type: MEDIA_TYPE_OCI_LAYER.into(),
            },
        );
    }
    oci_manifest(&p, &blobs)
}

/// A descriptor of a blob.
fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
    Descriptor::new(MediaType::from(media_type), size, digest.clone())
}

fn new_oci_manifest(p: &Prepared, blobs: &HashMap<String, BlobInfo>) -> Result<Vec<u8>> {
    let invalid = |e: &dyn std::fmt::Display| StorageError::image(p.image.id(), e.to_string());
    let layers: Vec<Descriptor> = p
        .layers
        .iter()
        .map(|l| {
            let b = &blobs[l.id()];
            descriptor(&b.media_type, &b.digest, b.size)
        })
        .collect();
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MEDIA_TYPE_OCI_CONFIG,
            &p.config_digest,
            p.config.len() as u64,
        ))
        .layers(layers)
        .build()
        .map_err(|e| invalid(&e))?;
    // The stored manifest's annotations go last, in their stored order (oci-spec keeps
    // annotations in a HashMap, whose order would make the bytes, and so the digest, vary).
    #[derive(serde::Serialize)]
    struct WithAnnotations<'a> {
        #[serde(flatten)]
        manifest: &'a ImageManifest,
        #[serde(skip_serializing_if = "Option::is_none")]
        annotations: Option<&'a Value>,
    }
    serde_json::to_vec(&WithAnnotations {
        manifest: &manifest,
        annotations: p.annotations.as_ref(),
    })
    .map_err(|e| invalid(&e))
}

/// A blob's digest and bytes.
type DigestedBlob = (Digest, Vec<u8>);

/// The OCI documents of an export: the blobs besides layers (configs, manifests) and the
/// new `index.json`, which keeps the other entries of `index` (an existing layout's).
fn oci_documents(
    prepared: &[Prepared],
    blobs: &HashMap<String, BlobInfo>,
    mut index: Value,
    report: &mut ImageExportReport,
) -> Result<(Vec<DigestedBlob>, Vec<u8>)> {
    if !index["manifests"].is_array() {
        index["manifests"] = json!([]);
    }
    index["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
    let mut docs = Vec::new();
    for p in prepared {
        docs.push((p.config_digest.clone(), p.config.clone()));
        let m = oci_manifest(p, blobs)?;
        let md = hex_digest(&Sha256::digest(&m));
        let mut entry =
            serde_json::to_value(descriptor(MEDIA_TYPE_OCI_MANIFEST, &md, m.len() as u64))
                .map_err(|e| StorageError::image(p.image.id(), e.to_string()))?;
        docs.push((md.clone(), m));
        if let Some(n) = &p.name {
            entry["annotations"] = json!({"org.opencontainers.image.ref.name": n});
            if let Some(arr) = index["manifests"].as_array_mut() {
                arr.retain(|e| {
                    e["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(n)
                });
            }
        }
        if let Some(arr) = index["manifests"].as_array_mut() {
            arr.push(entry);
        }
        report
            .images
            .push((p.image.id().to_string(), Some(md), p.name.clone()));
    }
    let b = serde_json::to_vec(&index).map_err(|e| StorageError::InvalidArgument(e.to_string()))?;
    Ok((docs, b))
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

fn empty_index() -> Value {
    json!({"schemaVersion": 2, "manifests": []})
}

/// A directory of the layout (`blobs`, `blobs/sha256`): used if it is a real directory (a
/// symlink is never followed out of the layout), created (and registered) if absent.
fn layout_dir(path: &Path, created: &mut Vec<Pending>) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(StorageError::Output {
            path: path.to_owned(),
            message: "is not a directory (a symlink in an OCI layout is not followed); refusing to write into it".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            created.push(output::create_dir_pending(path).map_err(|e| StorageError::io(path, e))?);
            Ok(())
        }
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// Writes an OCI layout directory at `path`: a new one, or added to an existing layout (or
/// an empty directory). On failure nothing this export created remains.
fn export_oci_dir(
    prepared: &[Prepared],
    layers: &[Layer],
    path: &Path,
    opts: &ImageExportOptions,
    report: &mut ImageExportReport,
) -> Result<()> {
    let output_err = |m: &str| StorageError::Output {
        path: path.to_owned(),
        message: m.to_string(),
    };
    if path == Path::new("-") {
        return Err(output_err(
            "an OCI layout is a directory; write oci-archive or docker-archive to standard output",
        ));
    }
    let mut created: Vec<Pending> = Vec::new();
    // Follows a symlink to the directory the user named.
    let root = match std::fs::metadata(path) {
        Ok(md) if md.is_dir() => {
            let root = std::fs::canonicalize(path).map_err(|e| StorageError::io(path, e))?;
            let mut entries = std::fs::read_dir(&root).map_err(|e| StorageError::io(path, e))?;
            let empty = entries.next().is_none();
            if !empty
                && !std::fs::symlink_metadata(root.join("oci-layout")).is_ok_and(|m| m.is_file())
            {
                return Err(output_err(
                    "is neither empty nor an OCI layout (it has no oci-layout file); refusing to write into it",
                ));
            }
            root
        }
        Ok(_) => return Err(output_err("exists and is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            created.push(output::create_dir_pending(path).map_err(|e| StorageError::io(path, e))?);
            path.to_owned()
        }
        Err(e) => return Err(StorageError::io(path, e)),
    };
    let index_path = root.join("index.json");
    let index = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            StorageError::corrupt(&index_path, format!("existing index.json is not JSON: {e}"))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => empty_index(),
        Err(e) => return Err(StorageError::io(&index_path, e)),
    };
    output::remove_stale_temporaries(&root);
    layout_dir(&root.join("blobs"), &mut created)?;
    let blob_dir = root.join("blobs/sha256");
    layout_dir(&blob_dir, &mut created)?;
    output::remove_stale_temporaries(&blob_dir);
    let mut lb = export_layers(&blob_dir, path, layers, opts, report)?;
    created.append(&mut lb.created);
    let (docs, index) = oci_documents(prepared, &lb.blobs, index, report)?;
    for (d, b) in &docs {
        created.extend(put_blob_bytes(&blob_dir, d, b)?);
    }
    if !std::fs::symlink_metadata(root.join("oci-layout")).is_ok_and(|m| m.is_file()) {
        put_file(&root.join("oci-layout"), OCI_LAYOUT)?;
    }
    // The commit point: the new index names the new blobs.
    put_file(&index_path, &index)?;
    created.into_iter().for_each(Pending::keep);
    Ok(())
}

/// Writes a small file of the layout by the output rules (atomically, keeping the mode and
/// owner of the file it replaces).
fn put_file(path: &Path, b: &[u8]) -> Result<()> {
    let mut out = OutputFile::create(path)?;
    out.write_all(b).map_err(|e| StorageError::io(path, e))?;
    out.commit()
}

/// A member of an archive, besides the layers streamed into it.
enum Member {
    Dir(String),
    Bytes(String, Vec<u8>),
    Symlink(String, String),
    /// A blob spooled to a file.
    File(String, PathBuf),
}

impl Member {
    fn name(&self) -> &str {
        match self {
            Member::Dir(n) | Member::Bytes(n, _) | Member::Symlink(n, _) | Member::File(n, _) => n,
        }
    }
}

/// Appends `members` to a tar, each directory followed by its contents, siblings sorted by
/// name; a name given twice is written once.
fn write_members(out: &mut impl Write, mut members: Vec<Member>) -> std::io::Result<()> {
    members.sort_by(|a, b| {
        a.name()
            .trim_end_matches('/')
            .split('/')
            .cmp(b.name().trim_end_matches('/').split('/'))
    });
    members.dedup_by(|a, b| a.name() == b.name());
    for m in members {
        match m {
            Member::Dir(n) => {
                let mut h = TarHeader::new(n.into_bytes(), EntryType::Directory);
                h.mode = 0o755;
                out.write_all(&h.to_bytes())?;
            }
            Member::Symlink(n, target) => {
                let mut h = TarHeader::new(n.into_bytes(), EntryType::Symlink);
                h.mode = 0o777;
                h.link_target = target.into_bytes();
                out.write_all(&h.to_bytes())?;
            }
            Member::Bytes(n, b) => {
                let mut h = TarHeader::new(n.into_bytes(), EntryType::Regular);
                h.mode = 0o644;
                h.size = b.len() as u64;
                out.write_all(&h.to_bytes())?;
                out.write_all(&b)?;
                out.write_all(&[0u8; BLOCK][..padding(b.len() as u64) as usize])?;
            }
            Member::File(n, path) => {
                let mut f = File::open(&path)?;
                let len = f.metadata()?.len();
                let mut h = TarHeader::new(n.clone().into_bytes(), EntryType::Regular);
                h.mode = 0o644;
                h.size = len;
                out.write_all(&h.to_bytes())?;
                let copied = std::io::copy(&mut f, out)?;
                if copied != len {
                    return Err(std::io::Error::other(format!(
                        "{n} changed size while archived"
                    )));
                }
                out.write_all(&[0u8; BLOCK][..padding(len) as usize])?;
            }
        }
    }
    Ok(())
}

/// Appends the uncompressed blob of `layer` to the archive `w` as the member `name`: its tar,
/// rebuilt with the digest verified (a mismatch fails the export, and the caller removes the
/// unfinished archive).
fn stream_layer(
    w: &mut BufWriter<OutputFile>,
    name: &str,
    layer: &Layer,
    progress: Option<&ImageProgress>,
    archive: &Path,
    verify: Verify,
) -> Result<()> {
    let size = layer.diff_size().unwrap_or(0);
    let mut h = TarHeader::new(name.as_bytes().to_vec(), EntryType::Regular);
    h.mode = 0o644;
    h.size = size;
    w.write_all(&h.to_bytes())
        .and_then(|_| w.flush())
        .map_err(|e| StorageError::io(archive, e))?;
    let opts = verified_export(layer, progress, verify);
    // Straight into the output (copy_file_range or splice where it can), after what the
    // buffer held.
    let rep = layer.export_to_fd(w.get_ref().as_fd(), archive, &opts)?;
    if rep.bytes != size {
        return Err(StorageError::layer(
            layer.id(),
            format!("rebuilt {} bytes, but its diff-size is {size}", rep.bytes),
        ));
    }
    w.write_all(&[0u8; BLOCK][..padding(size) as usize])
        .map_err(|e| StorageError::io(archive, e))
}

/// The docker-archive members besides layer blobs (configs, legacy layer directories,
/// `manifest.json`, `repositories`).
fn docker_members(
    prepared: &[Prepared],
    blobs: &HashMap<String, BlobInfo>,
    report: &mut ImageExportReport,
) -> Result<Vec<Member>> {
    let mut members = Vec::new();
    let mut manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for p in prepared {
        let cfg_name = format!("{}.json", hex(&p.config_digest));
        members.push(Member::Bytes(cfg_name.clone(), p.config.clone()));
        let mut layer_paths = Vec::new();
        let mut parent = String::new();
        let mut last = String::new();
        for (i, l) in p.layers.iter().enumerate() {
            let b = &blobs[l.id()];
            let physical = format!("{}.tar", hex(&b.digest));
            layer_paths.push(physical.clone());
            // Legacy per-layer directories (VERSION, json, layer.tar -> ../<digest>.tar).
            let legacy_id = hex(&hex_digest(&Sha256::digest(
                format!("{parent} {}", b.digest).as_bytes(),
            )))
            .to_string();
            members.push(Member::Dir(format!("{legacy_id}/")));
            members.push(Member::Bytes(
                format!("{legacy_id}/VERSION"),
                b"1.0".to_vec(),
            ));
            let mut cfg = json!({"id": legacy_id});
            if !parent.is_empty() {
                cfg["parent"] = json!(parent);
            }
            if i + 1 == p.layers.len() {
                if let Ok(Value::Object(c)) = serde_json::from_slice::<Value>(&p.config) {
                    for k in [
                        "architecture",
                        "config",
                        "container",
                        "container_config",
                        "created",
                        "docker_version",
                        "os",
                    ] {
                        if let Some(v) = c.get(k) {
                            cfg[k] = v.clone();
                        }
                    }
                }
            }
            members.push(Member::Bytes(
                format!("{legacy_id}/json"),
                cfg.to_string().into_bytes(),
            ));
            members.push(Member::Symlink(
                format!("{legacy_id}/layer.tar"),
                format!("../{physical}"),
            ));
            parent = legacy_id.clone();
            last = legacy_id;
        }
        let mut item = json!({"Config": cfg_name, "RepoTags": [], "Layers": layer_paths});
        if let Some(n) = &p.name {
            // RepoTags are `name:tag` without a digest.
            let r = crate::store::reference::Reference::parse_normalized(n)
                .map_err(|e| StorageError::image(p.image.id(), e.to_string()))?
                .with_default_tag();
            if let Some(tag) = r.tag() {
                item["RepoTags"] = json!([format!("{}:{tag}", r.repository())]);
                repositories
                    .entry(r.repository())
                    .or_default()
                    .insert(tag.to_string(), last.clone());
            }
        }
        manifest.push(item);
        report
            .images
            .push((p.image.id().to_string(), None, p.name.clone()));
    }
    members.push(Member::Bytes(
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap_or_default(),
    ));
    members.push(Member::Bytes(
        "repositories".into(),
        serde_json::to_vec(&repositories).unwrap_or_default(),
    ));
    Ok(members)
}

/// Writes an oci-archive or docker-archive to `path` by the output rules: a regular file is
/// replaced only when the archive is complete; standard output, a FIFO or a device receive
/// it in one pass.
fn export_archive(
    prepared: &[Prepared],
    layers: &[Layer],
    path: &Path,
    opts: &ImageExportOptions,
    report: &mut ImageExportReport,
) -> Result<()> {
    let out = OutputFile::create(path)?;
    let name = out.name().to_owned();
    let direct = out.is_direct();
    let stream_verify = match (direct, opts.stream_verify) {
        (true, Some(v)) => v,
        (true, None) => Verify::Crc,
        (false, _) => Verify::Digest,
    };
    let oci = opts.format == ArchiveFormat::OciArchive;
    // Uncompressed layers of known size can go straight into the archive (their blob is the
    // layer tar: digest = DiffID, size = diff-size, both known before writing) instead of
    // through a temporary file. Into a stream all of them do (one pass, nothing spooled);
    // into a file the largest one does, while the others are written beside it in parallel
    // (all of them with one job).
    let jobs = crate::pool::threads(opts.jobs);
    let mut candidates: Vec<(String, Layer, Digest, u64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let uncompressed = if opts.compression == LayerCompression::None {
        layers
    } else {
        &[]
    };
    for l in uncompressed {
        if let (Some(digest), Some(size)) = (l.diff_id(), l.diff_size()) {
            let member = if oci {
                format!("blobs/sha256/{}", hex(&digest))
            } else {
                format!("{}.tar", hex(&digest))
            };
            if seen.insert(member.clone()) {
                candidates.push((member, l.clone(), digest, size));
            }
        }
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.3));
    let n_streamed = if direct || jobs <= 1 {
        candidates.len()
    } else {
        candidates.len().min(1)
    };
    let streamed = &candidates[..n_streamed];
    // The streamed layers, and layers sharing their blob, need no blob of their own.
    let spooled: Vec<Layer> = layers
        .iter()
        .filter(|l| !streamed.iter().any(|c| Some(&c.2) == l.diff_id().as_ref()))
        .cloned()
        .collect();
    // Spooled blobs go beside a file output, or to the temporary directory for a stream
    // (compressed layers, whose digest is known only once compressed).
    let spool = if spooled.is_empty() {
        None
    } else {
        let dir = match out.directory() {
            Some(d) => d.to_owned(),
            None => std::env::temp_dir(),
        };
        output::remove_stale_temporaries(&dir);
        let base = name
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_else(|| "export".into());
        let spool_path = dir.join(output::temp_name(std::ffi::OsStr::new(&format!(
            "{base}.d"
        ))));
        Some(output::create_dir_pending(&spool_path).map_err(|e| {
            StorageError::io(
                &name,
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create a temporary directory in {}: {e}",
                        dir.display()
                    ),
                ),
            )
        })?)
    };
    let spool_dir = spool.as_ref().map(|p| p.path().to_owned());
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let spool_opts = ImageExportOptions {
        jobs: jobs.saturating_sub(n_streamed.min(1)).max(1),
        ..opts.clone()
    };
    let (spool_result, stream_result) = std::thread::scope(|sc| {
        let spool = sc.spawn(|| {
            let mut r = ImageExportReport::default();
            match &spool_dir {
                Some(d) => export_layers(d, &name, &spooled, &spool_opts, &mut r).map(|b| (b, r)),
                None => Ok((LayerBlobs::default(), r)),
            }
        });
        let streamed_ok = streamed.iter().try_for_each(|(member, l, _, _)| {
            stream_layer(
                &mut w,
                member,
                l,
                opts.progress.as_ref(),
                &name,
                stream_verify,
            )
        });
        let spooled = match spool.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        };
        (spooled, streamed_ok)
    });
    stream_result?;
    let (spooled_blobs, spool_report) = spool_result?;
    report.blobs_written += spool_report.blobs_written;
    report.blobs_reused += spool_report.blobs_reused;
    report.bytes += spool_report.bytes;
    let mut blobs = spooled_blobs.blobs;
    for l in layers {
        if let Some(c) = streamed.iter().find(|c| Some(&c.2) == l.diff_id().as_ref()) {
            blobs.insert(
                l.id().to_string(),
                BlobInfo {
                    digest: c.2.clone(),
                    size: c.3,
                    media_type: MEDIA_TYPE_OCI_LAYER.into(),
                },
            );
        }
    }
    report.blobs_written += streamed.len();
    report.bytes += streamed.iter().map(|c| c.3).sum::<u64>();
    // Spooled blobs, under their member names.
    let mut members = Vec::new();
    if let Some(d) = &spool_dir {
        let mut done = std::collections::HashSet::new();
        for l in &spooled {
            let b = &blobs[l.id()];
            if done.insert(b.digest.clone()) {
                let member = if oci {
                    format!("blobs/sha256/{}", hex(&b.digest))
                } else {
                    format!("{}.tar", hex(&b.digest))
                };
                members.push(Member::File(member, d.join(hex(&b.digest))));
            }
        }
    }
    if oci {
        let (docs, index) = oci_documents(prepared, &blobs, empty_index(), report)?;
        members.push(Member::Dir("blobs/".into()));
        members.push(Member::Dir("blobs/sha256/".into()));
        for (d, b) in docs {
            members.push(Member::Bytes(format!("blobs/sha256/{}", hex(&d)), b));
        }
        members.push(Member::Bytes("oci-layout".into(), OCI_LAYOUT.to_vec()));
        members.push(Member::Bytes("index.json".into(), index));
    } else {
        members.extend(docker_members(prepared, &blobs, report)?);
    }
    write_members(&mut w, members)
        .and_then(|_| w.write_all(&[0u8; 2 * BLOCK]))
        .and_then(|_| w.flush())
        .map_err(|e| StorageError::io(&name, e))?;
    let out = w
        .into_inner()
        .map_err(|e| StorageError::io(&name, e.into_error()))?;
    out.commit()?;
    drop(spool);
    Ok(())
}

/// Exports `items` to `path` in the chosen format, by the rules of [`crate::output`]: an OCI
/// layout goes into a new directory, an empty one or an existing layout; an archive may go
/// to standard output (`-`), a FIFO or a device, else replaces a regular file atomically. On
/// failure nothing this export created remains.
pub fn export_images(
    items: &[ExportItem],
    path: &Path,
    opts: &ImageExportOptions,
) -> Result<ImageExportReport> {
    if items.is_empty() {
        return Err(StorageError::InvalidArgument("no image to export".into()));
    }
    if opts.format == ArchiveFormat::DockerArchive && opts.compression != LayerCompression::None {
        return Err(StorageError::InvalidArgument(
            "docker-archive layers are always uncompressed".into(),
        ));
    }
    let prepared = prepare(items)?;
    let layers = unique_layers(&prepared);
    let mut report = ImageExportReport::default();
    match opts.format {
        ArchiveFormat::Oci => export_oci_dir(&prepared, &layers, path, opts, &mut report)?,
        ArchiveFormat::OciArchive | ArchiveFormat::DockerArchive => {
            export_archive(&prepared, &layers, path, opts, &mut report)?
        }
    }
    Ok(report)
}
