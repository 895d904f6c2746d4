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
