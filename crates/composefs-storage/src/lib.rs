//! # Overview
//!
//! `composefs_storage` reads **containers-storage**, the on-disk image store of podman,
//! buildah, skopeo and CRI-O (overlay driver), without Go, without a daemon, without root and
//! without mounting anything. Point it at a store and list and inspect images and layers, read
//! manifests and configs as [`oci_spec`] types, and open the layers' files.
//!
//! # Key features
//!
//! - **Finds the store like podman does**: `storage.conf` (root and rootless search order,
//!   `CONTAINERS_STORAGE_CONF`, `STORAGE_DRIVER`, `STORAGE_OPTS`), additional image stores and
//!   the split `imagestore` layout ([`StorageConfig`]).
//! - **Cooperates with writers**: takes the same shared locks c/storage takes (fcntl record
//!   locks, as OFD locks), in the same order, and reloads its cache when a writer's
//!   last-write token changes.
//! - **Capability-based file access**: every file is opened relative to a directory handle
//!   with `openat2(RESOLVE_BENEATH)`; a hostile or broken store cannot make the reader touch
//!   anything outside it, and FIFOs or devices where files are expected are refused.
//! - **Images as podman's users name them**: IDs, prefixes, names, normalized references,
//!   `name@digest`, manifest digests ([`Storage::find_image`]).
//! - **Typed and checked**: manifests (OCI, Docker schema 2, lists) with their exact bytes,
//!   configs found through the manifest's config digest, layers checked against the config's
//!   DiffIDs; structured errors ([`StorageError`]) naming the file, layer or image concerned.
//!
//! # Example
//!
//! ```no_run
//! use composefs_storage::Storage;
//!
//! # fn main() -> composefs_storage::Result<()> {
//! let storage = Storage::discover()?;                          // default store, storage.conf-aware
//! let storage = Storage::open("/var/lib/containers/storage")?;  // or an explicit root
//! for image in storage.list_images()? {
//!     println!("Image: {}", image.id());
//! }
//! let image = storage.find_image("alpine")?;
//! let config = image.config()?;
//! for (layer, diff_id) in image.layers()?.iter().zip(config.rootfs().diff_ids()) {
//!     println!("{} {diff_id}", layer.id());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Architecture
//!
//! - [`config`]: `storage.conf` and environment → [`StorageConfig`] (graph root, run root,
//!   imagestore, additional stores, overlay options).
//! - [`storage`]: [`Storage`] holds directory handles for every store and caches their
//!   records (`layers.json`, `images.json`, `containers.json`) keyed by the lock files'
//!   last-write tokens; each query takes the shared locks, refreshes, and answers from an
//!   immutable snapshot.
//! - [`image`] / [`layer`]: [`Image`] and [`Layer`] are cheap handles on a snapshot record;
//!   reading their files (big data, `diff/`, `lower`) takes the store's shared lock again.
//! - [`manifest`]: stored manifests as raw bytes plus their kind and parsed forms.
//! - [`mod@reference`]: image reference parsing and docker.io normalization.
//! - [`rootfs`]: [`RootFs`], an image's merged root filesystem (whiteouts, opaque
//!   directories, symlinks resolved inside the image) read from its layers without mounting.
//! - [`userns`]: whether this process can read every file of a rootless store.
//! - `composefs` (feature `composefs`, off by default): an image's composefs tree, dumpfile,
//!   EROFS image and digest, built with composefs-rs's crate from the layers' tar-split.
//! - Internally, `fsutil` (fd-relative opens) and `lock` (c/storage-compatible shared locks).
//!
//! The on-disk format this crate reads is described in `containers-storage-format.md` in the
//! project's shared documentation.

#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "composefs")]
pub mod composefs;
pub mod config;
pub mod error;
pub mod export;
mod fsutil;
pub mod image;
pub mod image_export;
mod intermediate;
pub mod layer;
mod lock;
pub mod manifest;
mod native_diff;
mod records;
pub mod reference;
pub mod rootfs;
pub mod storage;
pub mod tar_header;
pub mod tar_split;
mod toc;
pub mod userns;
pub mod verify;

#[doc(hidden)]
pub mod fuzzing;

pub use config::{AdditionalLayerStore, StorageConfig};
pub use error::{Result, StorageError};
pub use export::{ExportOptions, ExportReport, Verify};
pub use image::Image;
pub use layer::Layer;
pub use records::{ContainerMetadata, IdMapping, ImageMetadata};
pub use rootfs::RootFs;
pub use storage::{LayerMetadata, ReadGuard, Storage};
pub use tar_split::{TarHeader, TarSplitFdStream, TarSplitItem};
pub use userns::can_bypass_file_permissions;

pub use oci_spec::image::{Descriptor, Digest, ImageConfiguration, ImageManifest};
