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
//! The modules are layered, each using only those below it (the project's
//! `docs/architecture.md` has a paragraph per module and the dependency graph):
//!
//! - the store: [`config`] (`storage.conf` → [`StorageConfig`]), [`storage`] ([`Storage`]:
//!   directory handles for every store, records cached by the lock files' last-write tokens,
//!   shared locks taken per query), [`image`] / [`layer`] ([`Image`] and [`Layer`], cheap
//!   handles on a snapshot record), [`manifest`], [`mod@reference`];
//! - tar as the store keeps it: [`tar_split`] ([`TarSplitFdStream`]) and [`tar_header`];
//! - views: [`rootfs`] ([`RootFs`], an image's merged root filesystem without mounting) and
//!   [`layer_files`] ([`LayerFiles`], one layer's own files);
//! - writers: [`export`] (a layer's tar, bit for bit), [`image_export`] (OCI layout and
//!   archives), [`unpack`] (a root filesystem into a directory), `composefs` (feature
//!   `composefs`: composefs images), all through [`output`] ([`OutputFile`], the rules every
//!   writer follows);
//! - [`verify`], [`disk_usage`], and [`userns`] (reading rootless stores' files through a
//!   user-namespace helper).
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
#![deny(unsafe_code)]
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "composefs")]
pub mod composefs;
#[cfg(feature = "composefs")]
pub mod composefs_import;
pub mod copy_file;
pub mod error;
pub mod export;
mod fsutil;
pub mod output;
mod overlay;
mod pool;
pub mod rootfs;
mod store;
#[allow(unsafe_code)]
mod sys;
mod tar;
pub mod unpack;
pub mod userns;
pub mod verify;

#[doc(hidden)]
pub mod fuzzing;

pub use export::image as image_export;
pub use rootfs::{hidden_opaque, layer_files};
pub use store::storage::disk_usage;
pub use store::{config, image, layer, manifest, reference, storage};
pub use tar::{header as tar_header, tar_split};

pub use config::{AdditionalLayerStore, StorageConfig};
pub use error::{Result, StorageError};
pub use export::{ExportOptions, ExportReport, Verify};
pub use image::Image;
pub use layer::Layer;
pub use layer_files::LayerFiles;
pub use output::OutputFile;
pub use rootfs::RootFs;
pub use storage::{LayerMetadata, LayerUsers, ReadGuard, Storage};
pub use store::records::{ContainerMetadata, IdMapping, ImageMetadata, parse_rfc3339};
pub use store::storage::lineage::ImageLineage;
pub use tar_split::{TarHeader, TarSplitFdStream, TarSplitItem};
pub use userns::can_bypass_file_permissions;

pub use oci_spec::image::{Descriptor, Digest, ImageConfiguration, ImageManifest};
