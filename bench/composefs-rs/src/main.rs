//! `composefs-rs-import REPO IMAGE [--copy]`: imports IMAGE from the default containers-storage
//! store (CONTAINERS_STORAGE_ROOT) into a new composefs-rs repository at REPO the way
//! `cfsctl oci pull containers-storage:IMAGE` does, and prints the composefs image digest
//! (format V1) it recorded. Without --copy, objects are reflinked or hard-linked from the
//! store where the file system allows it (composefs-rs's zerocopy); with --copy they are
//! copied.

use std::sync::Arc;

use anyhow::{Context, Result};
use composefs_oci::composefs::erofs::format::FormatVersion;
use composefs_oci::composefs::fsverity::{FsVerityHashValue, Sha256HashValue};
use composefs_oci::composefs::repository::{Repository, RepositoryConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (repo_dir, image) = (
        args.get(1).context("usage: REPO IMAGE [--copy]")?,
        args.get(2).context("usage: REPO IMAGE [--copy]")?,
    );
    let zerocopy = args.get(3).map(String::as_str) != Some("--copy");
    let (repo, _) = Repository::<Sha256HashValue>::init_path(
        rustix::fs::CWD,
        repo_dir,
        RepositoryConfig::default().set_insecure(),
    )?;
    let repo = Arc::new(repo);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let root = std::env::var_os("CONTAINERS_STORAGE_ROOT").map(std::path::PathBuf::from);
    let (((manifest, manifest_verity), _config), _stats) =
        rt.block_on(composefs_oci::cstor::import_from_containers_storage(
            &repo,
            image,
            None,
            zerocopy,
            root.as_deref(),
            &[],
            None,
            Arc::new(composefs_oci::NullReporter),
        ))?;
    let id = composefs_oci::composefs_erofs_for_manifest(
        &repo,
        &manifest,
        Some(&manifest_verity),
        FormatVersion::V1,
    )?
    .context("no composefs image recorded")?;
    println!("{}", id.to_hex());
    Ok(())
}
