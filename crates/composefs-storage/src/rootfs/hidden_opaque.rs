//! Opaque directories a process cannot see.
//!
//! A native overlay store written by root marks an opaque directory (`.wh..wh..opq` in the
//! layer tar) with the `trusted.overlay.opaque` extended attribute. The kernel lets only a
//! process with `CAP_SYS_ADMIN` (in the initial user namespace) read `trusted.*`; for any
//! other, `getxattr` answers `ENODATA`, exactly as for a directory that is not opaque. So a
//! non-root user reading a root-owned store gets a merged view in which lower layers' files
//! show through those directories, with nothing failing.
//!
//! This cannot be seen from the directory, but it can from the layer's tar-split, which
//! records the `.wh..wh..opq` entry: [`check`] lists the directories the tar-split marks
//! opaque whose layer directory shows no marker this process can read (no
//! `.wh..wh..opq` file, no readable `*.overlay.opaque` attribute). Opening the merged view
//! ([`crate::RootFs`]) logs one warning per store naming them.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::Result;
use crate::overlay::{OPAQUE_MARKER, OPAQUE_XATTRS};
use crate::store::image::Image;
use crate::store::layer::Layer;
use crate::tar::names::content_path;
use crate::tar::tar_split::{Raw, TarSplitReader, gz_reader};

/// Opaque directories of an image's layers that this process cannot see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HiddenOpaque {
    /// (store root, layer ID, directory path in the image starting with `/`), base layer
    /// first.
    pub dirs: Vec<(PathBuf, String, PathBuf)>,
}

pub use crate::userns::can_read_trusted_xattrs;

/// The directories `layer`'s tar-split marks opaque (paths relative to the layer root).
fn opaque_in_tar_split(layer: &Layer) -> Result<Vec<PathBuf>> {
    let (_locks, file) = crate::tar::tar_split::open_locked(layer)?;
    let Some(file) = file else {
        return Ok(Vec::new());
    };
    let mut r = TarSplitReader::new(gz_reader(file), layer.id());
    let mut out = Vec::new();
    while let Some(raw) = r.next_raw()? {
        if let Raw::File { name, .. } = raw {
            let Ok(p) = content_path(name) else { continue };
            if p.file_name().map(|n| n.as_bytes()) == Some(OPAQUE_MARKER) {
                out.push(p.parent().unwrap_or(Path::new("")).to_path_buf());
            }
        }
    }
    Ok(out)
}

/// Does the layer directory `dir` carry an opaque marker this process can see? `None` if
/// it cannot be looked at (then nothing is claimed).
fn marker_visible(diff: &cap_std::fs::Dir, dir: &Path) -> Option<bool> {
    let rel = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    // Opened for reading (not `O_PATH`, on which attributes cannot be read).
    let d = match crate::fsutil::open_dir(diff, rel) {
        Ok(d) => d,
        Err(e) => {
            log::debug!("opening {}: {e}", dir.display());
            return None;
        }
    };
    if d.symlink_metadata(std::ffi::OsStr::from_bytes(OPAQUE_MARKER))
        .is_ok()
    {
        return Some(true);
    }
    let values = match crate::fsutil::fd_xattr_values(&d, &OPAQUE_XATTRS) {
        Ok(v) => v,
        Err(e) => {
            log::debug!("reading the attributes of {}: {e}", dir.display());
            return None;
        }
    };
    Some(values.iter().any(|v| v.as_deref() == Some(b"y")))
}

/// The opaque directories of `image`'s layers (above the base layer, where they matter)
/// that this process cannot see. Layers without a tar-split, or whose directories cannot be
/// opened, are not judged.
pub fn check(image: &Image) -> Result<HiddenOpaque> {
    let layers = image.layers()?;
    check_layers(&layers)
}

fn check_layers(layers: &[Layer]) -> Result<HiddenOpaque> {
    let mut out = HiddenOpaque::default();
    for l in layers.iter().skip(1) {
        let dirs = opaque_in_tar_split(l)?;
        if dirs.is_empty() {
            continue;
        }
        let diff = match l.diff_dir() {
            Ok(d) => d,
            Err(e) => {
                log::debug!(
                    "layer {}: not checked for hidden opaque directories: {e}",
                    l.id()
                );
                continue;
            }
        };
        for d in dirs {
            let seen = marker_visible(&diff, &d);
            log::debug!(
                "layer {}: opaque directory /{} in the tar-split; marker visible: {seen:?}",
                l.id(),
                d.display()
            );
            if seen == Some(false) {
                out.dirs.push((
                    l.store_root().to_path_buf(),
                    l.id().to_string(),
                    Path::new("/").join(&d),
                ));
            }
        }
    }
    Ok(out)
}

/// Is this store one whose opaque markers may be hidden from this process: written by root
/// (its root directory owned by UID 0), with the kernel's overlay (no `mount_program`),
/// read by a process that cannot read `trusted.*`?
fn may_hide(layer: &Layer) -> bool {
    use std::os::unix::fs::MetadataExt;
    if can_read_trusted_xattrs() {
        return false;
    }
    if layer.storage().overlay_options().mount_program.is_some() {
        return false;
    }
    std::fs::metadata(layer.store_root())
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Logs one warning per store (per process) if `layers` (an image's, base first) have
/// opaque directories this process cannot see. Errors while checking are logged at debug
/// level only: the check must not make a working read fail.
pub(crate) fn warn_once(image_id: &str, layers: &[Layer]) {
    static WARNED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    static CHECKED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    if layers.len() < 2 || !layers.iter().skip(1).any(may_hide) {
        log::debug!("image {image_id}: opaque directories are visible to this process");
        return;
    }
    {
        let Ok(mut c) = CHECKED.lock() else { return };
        if !c
            .get_or_insert_with(HashSet::new)
            .insert(image_id.to_string())
        {
            return;
        }
    }
    let hidden = match check_layers(layers) {
        Ok(h) => h,
        Err(e) => {
            log::debug!("checking opaque directories of image {image_id}: {e}");
            return;
        }
    };
    let Some((store, layer, first)) = hidden.dirs.first() else {
        return;
    };
    let Ok(mut w) = WARNED.lock() else { return };
    if !w.get_or_insert_with(HashSet::new).insert(store.clone()) {
        return;
    }
    let n = hidden.dirs.len();
    log::warn!(
        "store {}: {n} opaque director{} of image {} ({} in layer {}{}) {} marked only by trusted.overlay.opaque, which a process without CAP_SYS_ADMIN cannot read: lower layers' files show through {}; run as root for a faithful view",
        store.display(),
        if n == 1 { "y" } else { "ies" },
        image_id,
        first.display(),
        &layer[..layer.len().min(12)],
        if n > 1 { ", ..." } else { "" },
        if n == 1 { "is" } else { "are" },
        if n == 1 { "it" } else { "them" },
    );
}
