//! Test-only oracle for `cstorage composefs`: composefs-rs's own OCI importer
//! (`composefs-oci` from crates.io) computing an image's composefs EROFS image from an OCI
//! layout, the way its users do: `import_oci_layout` into a fresh repository, then
//! `create_filesystem` with the default OCI transforms and `commit_image`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use composefs_oci::composefs::fsverity::{Algorithm, FsVerityHashValue};
use composefs_oci::composefs::repository::{Repository, RepositoryConfig};
use composefs_oci::oci_layout::{OciLayoutKind, import_oci_layout};
use composefs_oci::{NullReporter, OciTransformOptions};

/// What composefs-rs made of an image.
pub struct Oracle {
    /// The EROFS image bytes as committed to the repository.
    pub erofs: Vec<u8>,
    /// The image's fs-verity digest (hex), as the repository names it.
    pub digest: String,
    /// The composefs dumpfile of the tree it built.
    pub dumpfile: Vec<u8>,
}

/// Imports the image tagged `tag` of the OCI layout `layout` into a new repository at
/// `repo_dir` (insecure: no fs-verity needed; objects named by `H`) and commits its composefs image.
pub fn from_oci_layout<H: FsVerityHashValue>(
    layout: &Path,
    tag: &str,
    repo_dir: &Path,
) -> Result<Oracle> {
    let (repo, _) = Repository::<H>::init_path(
        rustix::fs::CWD,
        repo_dir,
        RepositoryConfig::new(Algorithm::for_hash::<H>()).set_insecure(),
    )
    .context("creating the composefs repository")?;
    let repo = Arc::new(repo);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (pull, _stats) = rt.block_on(import_oci_layout(
        &repo,
        OciLayoutKind::Directory,
        layout,
        Some(tag),
        Arc::new(NullReporter),
    ))?;
    let fs = composefs_oci::image::create_filesystem(
        &repo,
        &pull.config_digest,
        Some(&pull.config_verity),
        &OciTransformOptions::default(),
    )?;
    let mut dumpfile = Vec::new();
    composefs_oci::composefs::dumpfile::write_dumpfile(&mut dumpfile, &fs)?;
    let id = fs.commit_image(&repo, None)?;
    let erofs = repo.read_object(&id)?;
    Ok(Oracle {
        erofs,
        digest: id.to_hex(),
        dumpfile,
    })
}

/// What composefs-rs's library finds in a repository under an image's ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoView {
    /// The manifest's digest, from the ref.
    pub manifest_digest: String,
    /// The config's digest, from the manifest.
    pub config_digest: String,
    /// The config splitstream's object ID (hex).
    pub config_verity: String,
    /// The EROFS image the config refers to in the repository's default format (hex).
    pub image_ref: Option<String>,
    /// The composefs image digest composefs-rs computes from the layer splitstreams
    /// (`create_filesystem` with the default OCI transforms), in the repository's default
    /// format; its error where it refuses the image (composefs-oci 0.9.4 refuses an image
    /// without `/usr`).
    pub computed_digest: Result<String, String>,
    /// Per diff_id (in the config's order): the layer splitstream's object ID (hex) and the
    /// objects it references (hex, sorted).
    pub layers: Vec<(String, String, Vec<String>)>,
    /// The uncompressed tar of each layer as composefs-rs reassembles it from the
    /// splitstream, sha256 hex (must be the diff_id).
    pub layer_tar_sha256: Vec<String>,
    /// composefs-rs's `fsck` of the whole repository.
    pub fsck_ok: bool,
    /// Its report when not OK.
    pub fsck_report: String,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// composefs-oci's own full import of an OCI layout image into a new repository: layers,
/// config and manifest (`import_oci_layout`), the ref (`tag_image`) and the EROFS image
/// linked from the config (`upgrade_repo`, which generates it for tagged images as the
/// pull path's finalization does). Insecure repository (no fs-verity needed).
pub fn import_layout_tagged<H: FsVerityHashValue>(
    layout: &Path,
    layout_tag: &str,
    repo_dir: &Path,
    name: &str,
) -> Result<()> {
    let (repo, _) = Repository::<H>::init_path(
        rustix::fs::CWD,
        repo_dir,
        RepositoryConfig::new(Algorithm::for_hash::<H>()).set_insecure(),
    )
    .context("creating the composefs repository")?;
    let repo = Arc::new(repo);
    let (pull, _stats) = runtime()?.block_on(import_oci_layout(
        &repo,
        OciLayoutKind::Directory,
        layout,
        Some(layout_tag),
        Arc::new(NullReporter),
    ))?;
    composefs_oci::oci_image::tag_image(&*repo, &pull.manifest_digest, name)?;
    composefs_oci::upgrade_repo(&repo)?;
    Ok(())
}

/// Opens the repository at `repo_dir` with composefs-rs's library and reads the image
/// tagged `name` (see [`RepoView`]).
pub fn view<H: FsVerityHashValue>(repo_dir: &Path, name: &str) -> Result<RepoView> {
    use composefs_oci::composefs::splitstream::SplitStreamData;
    let repo = Arc::new(
        Repository::<H>::open_path(rustix::fs::CWD, repo_dir)
            .context("opening the composefs repository")?,
    );
    let (manifest_digest, manifest_verity) =
        composefs_oci::oci_image::resolve_ref(&*repo, name).context("resolving the ref")?;
    let img =
        composefs_oci::oci_image::OciImage::open(&*repo, &manifest_digest, Some(&manifest_verity))
            .context("opening the image")?;
    let version = repo.erofs_version();
    let computed_digest = composefs_oci::image::create_filesystem(
        &*repo,
        img.config_digest(),
        Some(img.config_verity()),
        &OciTransformOptions::default(),
    )
    .map(|fs| fs.compute_image_id(version).to_hex())
    .map_err(|e| format!("{e:#}"));
    let config =
        composefs_oci::open_config(&*repo, img.config_digest(), Some(img.config_verity()))?;
    let mut layers = Vec::new();
    let mut layer_tar_sha256 = Vec::new();
    for diff_id in config.config.rootfs().diff_ids() {
        let v = img
            .layer_refs()
            .get(diff_id.as_str())
            .with_context(|| format!("no layer ref for {diff_id}"))?;
        let mut objs = Vec::new();
        let mut r = repo.open_stream("", Some(v), Some(composefs_oci::LAYER_CONTENT_TYPE))?;
        r.get_object_refs(|id| objs.push(id.to_hex()))?;
        objs.sort();
        objs.dedup();
        layers.push((diff_id.clone(), v.to_hex(), objs));
        let mut r = repo.open_stream("", Some(v), Some(composefs_oci::LAYER_CONTENT_TYPE))?;
        let mut tar = Vec::new();
        r.for_each_chunk(|c| {
            match c {
                SplitStreamData::Inline(b) => tar.extend_from_slice(&b),
                SplitStreamData::External(id) => tar.extend(repo.read_object(&id)?),
            }
            Ok(())
        })?;
        layer_tar_sha256.push(composefs_oci::sha256_content_digest(&tar).to_string());
    }
    let fsck = runtime()?.block_on(repo.fsck())?;
    Ok(RepoView {
        manifest_digest: manifest_digest.to_string(),
        config_digest: img.config_digest().to_string(),
        config_verity: img.config_verity().to_hex(),
        image_ref: img.image_ref(version).map(|i| i.to_hex()),
        computed_digest,
        layers,
        layer_tar_sha256,
        fsck_ok: fsck.is_ok(),
        fsck_report: fsck.to_string(),
    })
}

/// The objects composefs-rs's garbage collector would remove from the repository (dry run),
/// and the streams and images it would remove.
pub fn gc_dry_run<H: FsVerityHashValue>(repo_dir: &Path) -> Result<(u64, u64, u64)> {
    let repo = Repository::<H>::open_path(rustix::fs::CWD, repo_dir)
        .context("opening the composefs repository")?;
    let r = repo.gc_dry_run(&[])?;
    Ok((r.objects_removed, r.streams_pruned, r.images_pruned))
}
