//! Errors returned by this crate.
//!
//! Every variant names the file, layer or image it is about, so that the one line a program
//! prints from [`StorageError`]'s `Display` is enough to find the problem. That line includes
//! the underlying system or parse error, so [`std::error::Error::source`] returns `None`
//! (an error chain printed in full says each cause once); [`StorageError::io_error`] gives
//! the underlying I/O error to callers that match on it.

use std::path::PathBuf;

/// The result type used throughout this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong while reading a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A system call on a file of the store failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file concerned (for display only; never opened by this path).
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },

    /// There is no store where one was expected.
    #[error("no containers-storage store at {}: {reason}", path.display())]
    StoreNotFound {
        /// The graph root that was looked at.
        path: PathBuf,
        /// Why it is not a store.
        reason: String,
    },

    /// The store (or configuration) uses a graph driver other than overlay.
    #[error("storage driver {driver:?} is not supported{}: only the overlay driver can be read", .path.as_ref().map(|p| format!(" (store {})", p.display())).unwrap_or_default())]
    UnsupportedDriver {
        /// The driver name found.
        driver: String,
        /// The store it was found in, if known.
        path: Option<PathBuf>,
    },

    /// A configuration file could not be parsed, or holds a value that cannot be used.
    #[error("{}: {message}", path.display())]
    Config {
        /// The configuration file (or the environment variable or flag) concerned.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A JSON file of the store could not be parsed.
    #[error("{}: invalid JSON: {error}", path.display())]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The parse error (with line and column).
        error: serde_json::Error,
    },

    /// A value read from the store is not acceptable (hostile or corrupted store).
    #[error("{}: {message}", path.display())]
    Corrupt {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// No image matches the reference the user gave.
    #[error("image not known: {0}")]
    ImageNotFound(String),

    /// No layer matches what the user gave.
    #[error("layer not known: {0}")]
    LayerNotFound(String),

    /// A prefix or name matches several images or layers.
    #[error("{what} {query:?} is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        /// "image" or "layer".
        what: &'static str,
        /// What the user asked for.
        query: String,
        /// Every ID that matches.
        candidates: Vec<String>,
    },

    /// A reference (image name) is not valid.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An image's manifest, config or layer chain is not usable.
    #[error("image {image}: {message}")]
    Image {
        /// The image ID.
        image: String,
        /// What is wrong.
        message: String,
    },

    /// A big-data item of an image does not exist.
    #[error("image {image}: no big-data item {key:?}")]
    BigDataNotFound {
        /// The image ID.
        image: String,
        /// The key asked for.
        key: String,
    },

    /// A layer's original tar cannot be rebuilt: it has no tar-split.
    #[error("layer {layer}: {reason}")]
    NoTarSplit {
        /// The layer ID.
        layer: String,
        /// Why it has none, and what that means.
        reason: crate::layer::NoTarSplit,
    },

    /// A big-data item of a layer does not exist.
    #[error("layer {layer}: no big-data item {key:?}")]
    LayerBigDataNotFound {
        /// The layer ID.
        layer: String,
        /// The key asked for.
        key: String,
    },

    /// A storage layer's DiffID does not equal the one the image config lists for it.
    #[error(
        "image {image}: layer {index} ({layer}) has DiffID {found}, but the config's rootfs.diff_ids[{index}] is {expected}"
    )]
    DiffIdMismatch {
        /// The image ID.
        image: String,
        /// The storage layer ID.
        layer: String,
        /// Position in the layer list (0 = base).
        index: usize,
        /// The DiffID in the config.
        expected: String,
        /// The layer's `diff-digest` (or expected DiffID).
        found: String,
    },

    /// A layer's record or files are not usable.
    #[error("layer {layer}: {message}")]
    Layer {
        /// The layer ID.
        layer: String,
        /// What is wrong.
        message: String,
    },

    /// A layer's tar-split metadata is invalid.
    #[error("layer {layer}: tar-split{}: {message}", .entry.map(|n| format!(" entry {n}")).unwrap_or_default())]
    TarSplit {
        /// The layer ID.
        layer: String,
        /// The 0-based line number in the tar-split stream, if known.
        entry: Option<u64>,
        /// What is wrong.
        message: String,
    },

    /// A file of a layer does not have the content its tar-split records.
    #[error("layer {layer}: file {file:?}: {message}")]
    Integrity {
        /// The layer ID.
        layer: String,
        /// The file name as recorded in the tar.
        file: String,
        /// What differs (CRC or size).
        message: String,
    },

    /// The rebuilt layer stream's digest is not the recorded `diff-digest`.
    #[error(
        "layer {layer}: rebuilt tar has digest {found}, but the store records diff-digest {expected}"
    )]
    DigestMismatch {
        /// The layer ID.
        layer: String,
        /// The recorded digest.
        expected: String,
        /// The digest of what was produced.
        found: String,
    },

    /// The store changed (an item was removed or replaced) while it was being read.
    #[error("{what} changed while reading: {message}")]
    Changed {
        /// The image or layer concerned.
        what: String,
        /// Details.
        message: String,
    },

    /// A tar header could not be parsed.
    #[error("invalid tar header: {0}")]
    TarHeader(String),

    /// Setting up or talking to the user-namespace helper failed.
    #[error("user namespace helper: {0}")]
    UserNs(String),

    /// A path inside one layer's own files ([`crate::rootfs::layer_files`]) could not be resolved
    /// or read.
    #[error("layer {layer}: {path}: {error}")]
    LayerPath {
        /// The layer ID.
        layer: String,
        /// The path in the layer, as given (lossily converted to UTF-8 for display).
        path: String,
        /// The underlying error (`ENOENT` for a name the layer does not have or whites out).
        error: std::io::Error,
    },

    /// A path inside an image's merged root filesystem could not be resolved or read.
    #[error("image {image}: {path}: {error}")]
    ImagePath {
        /// The image ID.
        image: String,
        /// The path in the image, as given (lossily converted to UTF-8 for display).
        path: String,
        /// The underlying error (`ENOENT`, `ENOTDIR`, `ELOOP`, ...).
        error: std::io::Error,
    },

    /// An output target cannot be written by the output rules (see [`crate::output`]).
    #[error("{}: {message}", path.display())]
    Output {
        /// The output as the caller named it.
        path: PathBuf,
        /// Why it cannot be used.
        message: String,
    },

    /// An operation was given an argument it cannot use.
    #[error("{0}")]
    InvalidArgument(String),
}

impl StorageError {
    /// Builds an [`StorageError::Io`] for `path`. The errors the kernel gives for refused
    /// symlinks (`openat2` with `RESOLVE_BENEATH`, `O_NOFOLLOW`) are reworded to say so.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let source = match source.raw_os_error() {
            Some(libc::EXDEV) => std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "resolves outside the store through a symlink or an absolute path; refused",
            ),
            Some(libc::ELOOP) => std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "is a symlink where none is allowed (or a symlink loop); refused",
            ),
            _ => source,
        };
        StorageError::Io {
            path: path.into(),
            error: source,
        }
    }

    /// Builds a [`StorageError::Corrupt`] for `path`.
    pub(crate) fn corrupt(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        StorageError::Corrupt {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Builds a [`StorageError::Layer`].
    pub(crate) fn layer(layer: impl Into<String>, message: impl Into<String>) -> Self {
        StorageError::Layer {
            layer: layer.into(),
            message: message.into(),
        }
    }

    /// Builds a [`StorageError::Image`].
    pub(crate) fn image(image: impl Into<String>, message: impl Into<String>) -> Self {
        StorageError::Image {
            image: image.into(),
            message: message.into(),
        }
    }

    /// The underlying I/O error, if this is one.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            StorageError::Io { error, .. }
            | StorageError::ImagePath { error, .. }
            | StorageError::LayerPath { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The `errno` of an underlying I/O error, if this is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.io_error().and_then(std::io::Error::raw_os_error)
    }

    /// True if this error is a "permission denied" from the kernel (e.g. a rootless store's
    /// file owned by a subordinate UID).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
    }
}
