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
//! - [`layer_files`]: [`LayerFiles`], one layer's own files (not the merged view) with its
//!   whiteouts and opaque directories reported as such.
//! - [`output`]: [`OutputFile`], the rules every writer of files follows (atomic
//!   replacement, `-` for standard output, nothing left behind).
//! - [`unpack`]: writing a [`RootFs`] into a directory (like `umoci unpack`), safely
//!   beneath it.
//! - [`userns`]: whether this process can read every file of a rootless store.
//! - `composefs` (feature `composefs`, off by default): an image's composefs tree, dumpfile,
//!   EROFS image and digest, built with composefs-rs's crate from the layers' tar-split.
//! - Internally, `fsutil` (fd-relative opens) and `lock` (c/storage-compatible shared locks).
//!
//! The on-disk format this crate reads is described in `containers-storage-format.md` in the
//! project's shared documentation.
//!
//! # For embedders
//!
//! The crate's `examples/` directory holds small programs that take a store root and an
//! image: `list_images`, `image_config` (the config blob as stored), `export_layer` (a layer
//! tar to a file through [`OutputFile`]), `import_layer` (a layer into a content-addressed
//! object store: each file reflinked by digest, the tar's other bytes inline) and
//! `walk_image` (the merged tree). The project's tests run each against a real store.
//!
//! - Opening: [`Storage::discover`], [`Storage::open`], [`Storage::open_with_config`], or
//!   from a directory handle you already hold with [`Storage::from_dir`].
//! - DiffIDs to layers, many at once: [`Storage::resolve_diff_ids`].
//! - A layer's tar as segments and file descriptors: [`TarSplitFdStream`]; each file's
//!   item names the layer that supplied it, and [`TarSplitFdStream::layer_chain`] the layers
//!   the stream reads from.
//! - One layer's files with whiteout semantics: [`Layer::files`]; the merged view:
//!   [`Image::rootfs`].
//!
//! # API stability
//!
//! The crate follows [Semantic Versioning](https://semver.org) as Cargo applies it to 0.x
//! versions: while the version is `0.y.z`, a release that breaks the API raises `y`
//! (0.1 → 0.2) and a `z` release never breaks it. From 1.0 on, only a major version may.
//! Every change is listed in the project's `CHANGELOG.md`, breaking ones marked as such.
//!
//! What is covered: every public item reachable from the crate root, except what is marked
//! `#[doc(hidden)]` (such as the `fuzzing` module, an entry point for the fuzz targets only).
//! Types marked `#[non_exhaustive]` (most records, option and error types) may gain fields
//! or variants in any minor release: match them with `..` and `_`, and build them through
//! their constructors. [`TarSplitItem`] is exhaustive, so that a match on it stays simple:
//! a new variant or field there is a breaking change.
//!
//! What is not covered: the exact text of error messages and log lines (the error
//! *variants* and their fields are); the order of items where the documentation does not
//! promise one; and the minimum supported Rust version (`rust-version` in `Cargo.toml`),
//! which a minor release may raise, saying so in the changelog.
//!
//! Behaviour towards the store is part of the contract and does not change in a patch
//! release: the crate never writes to the store, takes c/storage's shared locks in
//! c/storage's order, and never follows a path out of the store.

#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

mod chains;
#[cfg(feature = "composefs")]
pub mod composefs;
pub mod config;
pub mod copy_file;
pub mod disk_usage;
pub mod error;
pub mod export;
mod fsutil;
pub mod hidden_opaque;
pub mod image;
pub mod image_export;
mod intermediate;
pub mod layer;
pub mod layer_files;
mod lock;
pub mod manifest;
mod naive_diff;
mod native_diff;
pub mod output;
mod records;
pub mod reference;
pub mod rootfs;
pub mod storage;
pub mod tar_header;
pub mod tar_split;
mod toc;
pub mod unpack;
pub mod userns;
pub mod verify;

#[doc(hidden)]
pub mod fuzzing;

pub use config::{AdditionalLayerStore, StorageConfig};
pub use error::{Result, StorageError};
pub use export::{ExportOptions, ExportReport, Verify};
pub use image::Image;
pub use intermediate::ImageLineage;
pub use layer::Layer;
pub use layer_files::LayerFiles;
pub use output::OutputFile;
pub use records::{ContainerMetadata, IdMapping, ImageMetadata};
pub use rootfs::RootFs;
pub use storage::{LayerMetadata, LayerUsers, ReadGuard, Storage};
pub use tar_split::{TarHeader, TarSplitFdStream, TarSplitItem};
pub use userns::can_bypass_file_permissions;

pub use oci_spec::image::{Descriptor, Digest, ImageConfiguration, ImageManifest};
