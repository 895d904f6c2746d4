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
use std::sync::{Arc, Mutex};

use oci_spec::image::Digest;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::error::{Result, StorageError};
use crate::export::{ExportOptions, Verify, tmp_name};
use crate::image::Image;
use crate::layer::Layer;
use crate::manifest::{
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_MANIFEST, hex_digest,
};
use crate::tar_header::{BLOCK, EntryType, TarHeader, padding};

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

/// Removes a temporary file when dropped unless disarmed.
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Writes `bytes` as blob `digest` in `dir` (temporary name, then rename), unless present.
fn put_blob_bytes(dir: &Path, digest: &Digest, bytes: &[u8]) -> Result<bool> {
    let dst = dir.join(hex(digest));
    if dst.is_file() {
        return Ok(false);
    }
    let tmp = dir.join(tmp_name("blob"));
    let mut guard = TmpGuard(Some(tmp.clone()));
    std::fs::write(&tmp, bytes).map_err(|e| StorageError::io(&tmp, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| StorageError::io(&dst, e))?;
    guard.0 = None;
    Ok(true)
}

/// Export options for a layer blob: digest verified, progress reported under the layer's ID.
fn verified_export(layer: &Layer, progress: Option<&ImageProgress>) -> ExportOptions {
    let opts = ExportOptions::new(Verify::Digest);
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
fn put_layer_blob(
    dir: &Path,
    layer: &Layer,
    compression: LayerCompression,
    level: Option<i32>,
    progress: Option<&ImageProgress>,
) -> Result<(BlobInfo, bool)> {
    let diff_id = layer.diff_id().ok_or_else(|| {
        StorageError::layer(
            layer.id(),
            "has no DiffID; it cannot be exported as an image layer",
        )
    })?;
    let opts = verified_export(layer, progress);
    if compression == LayerCompression::None {
        let dst = dir.join(hex(&diff_id));
        let info = BlobInfo {
            digest: diff_id.clone(),
            size: layer.diff_size().unwrap_or(0),
            media_type: MEDIA_TYPE_OCI_LAYER.into(),
        };
        if let Ok(md) = std::fs::metadata(&dst) {
            if md.is_file() && layer.diff_size().is_none_or(|s| s == md.len()) {
                return Ok((
                    BlobInfo {
                        size: md.len(),
                        ..info
                    },
                    false,
                ));
            }
        }
        let tmp = dir.join(tmp_name("layer"));
        let mut guard = TmpGuard(Some(tmp.clone()));
        let f = File::create(&tmp).map_err(|e| StorageError::io(&tmp, e))?;
        let rep = layer.export_to_fd(f.as_fd(), &tmp, &opts)?;
        drop(f);
        std::fs::rename(&tmp, &dst).map_err(|e| StorageError::io(&dst, e))?;
        guard.0 = None;
        return Ok((
            BlobInfo {
                size: rep.bytes,
                ..info
            },
            true,
        ));
    }
    let tmp = dir.join(tmp_name("layer"));
    let mut guard = TmpGuard(Some(tmp.clone()));
    let f = File::create(&tmp).map_err(|e| StorageError::io(&tmp, e))?;
    let hw = HashWriter {
        inner: BufWriter::with_capacity(1 << 20, f),
        sha: Sha256::new(),
        n: 0,
    };
    let (hw, media_type) = match compression {
        LayerCompression::Gzip => {
            let lvl = level.unwrap_or(1).clamp(0, 9) as u32;
            let mut enc = flate2::write::GzEncoder::new(hw, flate2::Compression::new(lvl));
            layer.export(&mut enc, &opts)?;
            (
                enc.finish().map_err(|e| StorageError::io(&tmp, e))?,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        LayerCompression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(hw, level.unwrap_or(3))
                .map_err(|e| StorageError::io(&tmp, e))?;
            layer.export(&mut enc, &opts)?;
            (
                enc.finish().map_err(|e| StorageError::io(&tmp, e))?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            )
        }
        LayerCompression::None => unreachable!("handled above"),
    };
    let HashWriter { inner, sha, n } = hw;
    inner
        .into_inner()
        .map_err(|e| StorageError::io(&tmp, e.into_error()))?;
    let digest = hex_digest(&sha.finalize());
    let dst = dir.join(hex(&digest));
    let fresh = !dst.is_file();
    std::fs::rename(&tmp, &dst).map_err(|e| StorageError::io(&dst, e))?;
    guard.0 = None;
    Ok((
        BlobInfo {
            digest,
            size: n,
            media_type: media_type.into(),
        },
        fresh,
    ))
}

/// The number of parallel jobs `jobs` means (0: one per CPU).
fn effective_jobs(jobs: usize) -> usize {
    if jobs == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        jobs
    }
}

/// Exports layers in parallel into `dir`; returns layer ID → blob.
fn export_layers(
    dir: &Path,
    layers: &[Layer],
    opts: &ImageExportOptions,
    report: &mut ImageExportReport,
) -> Result<HashMap<String, BlobInfo>> {
    let queue = Mutex::new(layers.to_vec());
    let results: Mutex<HashMap<String, (BlobInfo, bool)>> = Mutex::new(HashMap::new());
    let failed: Mutex<Option<StorageError>> = Mutex::new(None);
    let jobs = effective_jobs(opts.jobs).min(layers.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let Some(l) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                        return;
                    };
                    match put_layer_blob(
                        dir,
                        &l,
                        opts.compression,
                        opts.level,
                        opts.progress.as_ref(),
                    ) {
                        Ok(r) => {
                            if let Ok(mut m) = results.lock() {
                                m.insert(l.id().to_string(), r);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut out = HashMap::new();
    for (id, (info, fresh)) in results {
        if fresh {
            report.blobs_written += 1;
            report.bytes += info.size;
        } else {
            report.blobs_reused += 1;
        }
        out.insert(id, info);
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

fn new_oci_manifest(p: &Prepared, blobs: &HashMap<String, BlobInfo>) -> Result<Vec<u8>> {
    let layers: Vec<Value> = p
        .layers
        .iter()
        .map(|l| {
            let b = &blobs[l.id()];
            json!({"mediaType": b.media_type, "digest": b.digest.to_string(), "size": b.size})
        })
        .collect();
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "digest": p.config_digest.to_string(), "size": p.config.len()},
        "layers": layers,
    });
    if let Some(a) = &p.annotations {
        m["annotations"] = a.clone();
    }
    serde_json::to_vec(&m).map_err(|e| StorageError::image(p.image.id(), e.to_string()))
}

/// Writes the OCI layout metadata (blobs already in `root/blobs/sha256`).
fn write_oci_layout(
    root: &Path,
    prepared: &[Prepared],
    blobs: &HashMap<String, BlobInfo>,
    report: &mut ImageExportReport,
) -> Result<()> {
    let blob_dir = root.join("blobs/sha256");
    let layout_file = root.join("oci-layout");
    if !layout_file.exists() {
        put_file(&layout_file, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    let index_path = root.join("index.json");
    let mut index: Value = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            StorageError::corrupt(&index_path, format!("existing index.json is not JSON: {e}"))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            json!({"schemaVersion": 2, "manifests": []})
        }
        Err(e) => return Err(StorageError::io(&index_path, e)),
    };
    if !index["manifests"].is_array() {
        index["manifests"] = json!([]);
    }
    index["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
    for p in prepared {
        put_blob_bytes(&blob_dir, &p.config_digest, &p.config)?;
        let m = oci_manifest(p, blobs)?;
        let md = hex_digest(&Sha256::digest(&m));
        put_blob_bytes(&blob_dir, &md, &m)?;
        let mut entry = json!({"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": md.to_string(), "size": m.len()});
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
    let b = serde_json::to_vec(&index)
        .map_err(|e| StorageError::io(&index_path, std::io::Error::other(e)))?;
    put_file(&index_path, &b)
}

/// Writes a small file atomically (temporary name, then rename).
fn put_file(path: &Path, b: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(tmp_name("meta"));
    let mut guard = TmpGuard(Some(tmp.clone()));
    std::fs::write(&tmp, b).map_err(|e| StorageError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StorageError::io(path, e))?;
    guard.0 = None;
    Ok(())
}

/// Appends a directory tree (files and symlinks) to a tar, sorted by name.
fn tar_tree(out: &mut impl Write, root: &Path, rel: &Path) -> std::io::Result<()> {
    let mut names: Vec<_> =
        std::fs::read_dir(root.join(rel))?.collect::<std::io::Result<Vec<_>>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let r = rel.join(&name);
        let md = std::fs::symlink_metadata(root.join(&r))?;
        use std::os::unix::ffi::OsStrExt;
        let rb = r.as_os_str().as_bytes().to_vec();
        if md.is_dir() {
            let mut h = TarHeader::new([rb, b"/".to_vec()].concat(), EntryType::Directory);
            h.mode = 0o755;
            out.write_all(&h.to_bytes())?;
            tar_tree(out, root, &r)?;
        } else if md.file_type().is_symlink() {
            let mut h = TarHeader::new(rb, EntryType::Symlink);
            h.mode = 0o777;
            use std::os::unix::ffi::OsStringExt;
            h.link_target = std::fs::read_link(root.join(&r))?
                .into_os_string()
                .into_vec();
            out.write_all(&h.to_bytes())?;
        } else {
            let mut h = TarHeader::new(rb, EntryType::Regular);
            h.mode = 0o644;
            h.size = md.len();
            out.write_all(&h.to_bytes())?;
            let mut f = File::open(root.join(&r))?;
            let n = std::io::copy(&mut f, out)?;
            if n != md.len() {
                return Err(std::io::Error::other(format!(
                    "{} changed size while archived",
                    r.display()
                )));
            }
            out.write_all(&[0u8; BLOCK][..padding(n) as usize])?;
        }
    }
    Ok(())
}

/// Appends the uncompressed blob of `layer` to the archive `w` as the member `name`: its tar,
/// rebuilt with the digest verified (a mismatch fails the export, and the caller removes the
/// unfinished archive).
fn stream_layer(
    w: &mut BufWriter<File>,
    name: &str,
    layer: &Layer,
    progress: Option<&ImageProgress>,
    archive: &Path,
) -> Result<()> {
    let size = layer.diff_size().unwrap_or(0);
    let mut h = TarHeader::new(name.as_bytes().to_vec(), EntryType::Regular);
    h.mode = 0o644;
    h.size = size;
    w.write_all(&h.to_bytes())
        .and_then(|_| w.flush())
        .map_err(|e| StorageError::io(archive, e))?;
    let opts = verified_export(layer, progress);
    // Straight into the file (copy_file_range where it can), after what the buffer held.
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

/// Writes a docker-archive tree into `root` (layers already in `root` as `<hex>.tar`).
fn write_docker_tree(
    root: &Path,
    prepared: &[Prepared],
    blobs: &HashMap<String, BlobInfo>,
    report: &mut ImageExportReport,
) -> Result<()> {
    let mut manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for p in prepared {
        let cfg_name = format!("{}.json", hex(&p.config_digest));
        put_file(&root.join(&cfg_name), &p.config)?;
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
            let ld = root.join(&legacy_id);
            if !ld.exists() {
                std::fs::create_dir_all(&ld).map_err(|e| StorageError::io(&ld, e))?;
                put_file(&ld.join("VERSION"), b"1.0")?;
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
                put_file(&ld.join("json"), cfg.to_string().as_bytes())?;
                let link = ld.join("layer.tar");
                std::os::unix::fs::symlink(format!("../{physical}"), &link)
                    .map_err(|e| StorageError::io(&link, e))?;
            }
            parent = legacy_id.clone();
            last = legacy_id;
        }
        let mut item = json!({"Config": cfg_name, "RepoTags": [], "Layers": layer_paths});
        if let Some(n) = &p.name {
            // RepoTags are `name:tag` without a digest.
            let r = crate::reference::Reference::parse_normalized(n)
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
    put_file(
        &root.join("manifest.json"),
        serde_json::to_string(&manifest)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    put_file(
        &root.join("repositories"),
        serde_json::to_string(&repositories)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(())
}

/// Exports `items` to `path` in the chosen format.
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
        ArchiveFormat::Oci => {
            if path.exists() && !path.is_dir() {
                return Err(StorageError::io(
                    path,
                    std::io::Error::other("exists and is not a directory"),
                ));
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                if !parent.is_dir() {
                    return Err(StorageError::io(
                        path,
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{} is not a directory", parent.display()),
                        ),
                    ));
                }
            }
            let blob_dir = path.join("blobs/sha256");
            std::fs::create_dir_all(&blob_dir).map_err(|e| StorageError::io(&blob_dir, e))?;
            let blobs = export_layers(&blob_dir, &layers, opts, &mut report)?;
            write_oci_layout(path, &prepared, &blobs, &mut report)?;
        }
        ArchiveFormat::OciArchive | ArchiveFormat::DockerArchive => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let base = path
                .file_name()
                .map(|b| b.to_string_lossy().into_owned())
                .unwrap_or_default();
            let work = dir.join(tmp_name(&format!("{base}.d")));
            // Not create_dir_all: a missing parent directory is the caller's error.
            std::fs::create_dir(&work).map_err(|e| {
                StorageError::io(
                    path,
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot create a temporary directory in {}: {e}",
                            dir.display()
                        ),
                    ),
                )
            })?;
            struct DirGuard(PathBuf);
            impl Drop for DirGuard {
                fn drop(&mut self) {
                    let _ = std::fs::remove_dir_all(&self.0);
                }
            }
            let _wg = DirGuard(work.clone());
            // Uncompressed layers of known size can go straight into the archive (their blob
            // is the layer tar: digest = DiffID, size = diff-size, both known before writing)
            // instead of through a temporary file. The largest one does, while the others
            // are written to the work tree in parallel (all of them stream with one job).
            let jobs = effective_jobs(opts.jobs);
            let mut candidates: Vec<(String, Layer, Digest, u64)> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let uncompressed = if opts.compression == LayerCompression::None {
                &layers[..]
            } else {
                &[]
            };
            for l in uncompressed {
                if let (Some(digest), Some(size)) = (l.diff_id(), l.diff_size()) {
                    let name = if opts.format == ArchiveFormat::OciArchive {
                        format!("blobs/sha256/{}", hex(&digest))
                    } else {
                        format!("{}.tar", hex(&digest))
                    };
                    if seen.insert(name.clone()) {
                        candidates.push((name, l.clone(), digest, size));
                    }
                }
            }
            candidates.sort_by_key(|c| std::cmp::Reverse(c.3));
            let n_streamed = if jobs <= 1 {
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
            let blob_dir = if opts.format == ArchiveFormat::OciArchive {
                work.join("blobs/sha256")
            } else {
                work.clone()
            };
            std::fs::create_dir_all(&blob_dir).map_err(|e| StorageError::io(&blob_dir, e))?;
            let tmp = dir.join(tmp_name(&base));
            let mut guard = TmpGuard(Some(tmp.clone()));
            let f = File::create(&tmp).map_err(|e| StorageError::io(path, e))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            let spool_opts = ImageExportOptions {
                jobs: jobs.saturating_sub(n_streamed.min(1)).max(1),
                ..opts.clone()
            };
            let (spool_result, stream_result) = std::thread::scope(|sc| {
                let spool = sc.spawn(|| {
                    let mut r = ImageExportReport::default();
                    export_layers(&blob_dir, &spooled, &spool_opts, &mut r).map(|b| (b, r))
                });
                let streamed_ok = streamed.iter().try_for_each(|(name, l, _, _)| {
                    stream_layer(&mut w, name, l, opts.progress.as_ref(), path)
                });
                let spooled = spool.join().unwrap_or_else(|_| {
                    Err(StorageError::InvalidArgument(
                        "a layer export thread panicked".into(),
                    ))
                });
                (spooled, streamed_ok)
            });
            stream_result?;
            let (mut blobs, spool_report) = spool_result?;
            report.blobs_written += spool_report.blobs_written;
            report.blobs_reused += spool_report.blobs_reused;
            report.bytes += spool_report.bytes;
            for l in &layers {
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
            if opts.format == ArchiveFormat::OciArchive {
                write_oci_layout(&work, &prepared, &blobs, &mut report)?;
            } else {
                // Spooled layers are stored as <digest>.tar.
                for b in blobs.values() {
                    let from = work.join(hex(&b.digest));
                    let to = work.join(format!("{}.tar", hex(&b.digest)));
                    if from.exists() {
                        std::fs::rename(&from, &to).map_err(|e| StorageError::io(&to, e))?;
                    }
                }
                write_docker_tree(&work, &prepared, &blobs, &mut report)?;
            }
            tar_tree(&mut w, &work, Path::new(""))
                .and_then(|_| w.write_all(&[0u8; 2 * BLOCK]))
                .and_then(|_| w.flush())
                .map_err(|e| StorageError::io(path, e))?;
            drop(w);
            std::fs::rename(&tmp, path).map_err(|e| StorageError::io(path, e))?;
            guard.0 = None;
        }
    }
    Ok(report)
}
