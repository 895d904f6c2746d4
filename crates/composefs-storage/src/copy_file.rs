//! One regular file of an image copied into an open output (`cstorage cp IMAGE:FILE DEST`
//! onto a file, FIFO or device): the content only, CRC-checked against the layer's
//! tar-split as it is copied, and, as the caller asks, the image's mode, time and extended
//! attributes. Where the output comes from (a temporary file renamed over the destination,
//! a FIFO written into) is the caller's business: see [`crate::output::OutputFile`].

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::Mode;
use rustix::io::Errno;

use crate::error::{Result, StorageError};
use crate::rootfs::{FileKind, Metadata};
use crate::store::image::Image;
use crate::unpack::{copy_data, crc_map, read_xattrs, times};

/// Options of [`copy_file`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CopyFileOptions {
    /// Check the content's size and CRC-64 against the layer's tar-split.
    pub verify: bool,
    /// Give the output the image's permission bits (a new file; an existing one keeps its
    /// own under the output rules).
    pub mode: bool,
    /// Give the output the image's modification time.
    pub times: bool,
    /// Copy the image's extended attributes (where permitted and supported; others are
    /// counted in [`CopiedFile::xattrs_skipped`]).
    pub xattrs: bool,
    /// Set to stop: checked before and after the content is copied (the call then fails
    /// with `EINTR`).
    pub cancel: Option<std::sync::Arc<AtomicBool>>,
}

/// What [`copy_file`] copied.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CopiedFile {
    /// The file's metadata in the image.
    pub metadata: Metadata,
    /// Bytes of content written.
    pub bytes: u64,
    /// The content was cloned (`FICLONE`), not copied.
    pub cloned: bool,
    /// Extended attributes that could not be set.
    pub xattrs_skipped: u64,
}

/// Copies the regular file `path` of `image` (symlinks followed inside the image) into
/// `out`, which must be empty and positioned at its start (a new file, a FIFO, a device).
/// Metadata is only set on a regular-file output. Errors name `out_name` for the output
/// side, the image path and layer for the source side.
pub fn copy_file(
    image: &Image,
    path: &Path,
    out: BorrowedFd<'_>,
    out_name: &Path,
    opts: &CopyFileOptions,
) -> Result<CopiedFile> {
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    };
    let interrupted = || StorageError::io(out_name, std::io::Error::from_raw_os_error(libc::EINTR));
    let rootfs = image.rootfs()?;
    let mut walk = rootfs.walk_from(path)?;
    let (entry, src) = match walk.next_with_source() {
        Some(r) => r?,
        None => {
            return Err(StorageError::io(
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
    };
    let md = entry.metadata;
    let image_err = |e: std::io::Error| StorageError::ImagePath {
        image: image.id().to_string(),
        path: entry.path.display().to_string(),
        error: e,
    };
    let src = match (md.kind, src) {
        (FileKind::Regular, Some(s)) => s,
        (FileKind::Directory, _) => {
            return Err(image_err(std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        _ => {
            return Err(image_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
    };
    if cancelled() {
        return Err(interrupted());
    }
    let file = src.open_file().map_err(image_err)?;
    let expect = if opts.verify && md.size > 0 {
        let layers = image.layers()?;
        match layers.get(md.layer) {
            Some(layer) => crc_map(layer)?.and_then(|m| {
                let rel = entry.path.as_os_str().as_bytes();
                let rel = rel.strip_prefix(b"/").unwrap_or(rel);
                m.get(rel)
                    .map(|&(size, crc)| (layer.id().to_string(), size, crc))
            }),
            None => None,
        }
    } else {
        None
    };
    let ((bytes, crc), cloned) = copy_data(&file, out, md.size, expect.is_some())
        .map_err(|e| StorageError::io(out_name, e))?;
    if let (Some((layer, size, want)), Some(got)) = (&expect, crc) {
        if bytes != *size {
            return Err(StorageError::Integrity {
                layer: layer.clone(),
                file: entry.path.display().to_string(),
                message: format!("file is {bytes} bytes on disk, the tar records {size}"),
            });
        }
        if let Some(want) = want {
            if got != *want {
                return Err(StorageError::Integrity {
                    layer: layer.clone(),
                    file: entry.path.display().to_string(),
                    message: format!(
                        "content has CRC-64 {got:016x}, tar-split records {want:016x}: the layer file is corrupted"
                    ),
                });
            }
        }
    }
    if cancelled() {
        return Err(interrupted());
    }
    let mut xattrs_skipped = 0;
    let regular = rustix::fs::fstat(out)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
        .unwrap_or(false);
    if regular {
        let set =
            |r: std::result::Result<(), Errno>| r.map_err(|e| StorageError::io(out_name, e.into()));
        if opts.xattrs && src.on_disk() {
            let xs = read_xattrs(file.as_fd()).map_err(image_err)?;
            for (k, v) in xs {
                let Ok(name) = std::ffi::CString::new(k) else {
                    continue;
                };
                match rustix::fs::fsetxattr(
                    out,
                    name.as_c_str(),
                    &v,
                    rustix::fs::XattrFlags::empty(),
                ) {
                    Ok(()) => {}
                    Err(Errno::NOTSUP) | Err(Errno::PERM) => xattrs_skipped += 1,
                    Err(e) => set(Err(e))?,
                }
            }
        }
        if opts.mode {
            set(rustix::fs::fchmod(out, Mode::from_raw_mode(md.mode)))?;
        }
        if opts.times {
            set(rustix::fs::futimens(out, &times(&md)))?;
        }
    }
    Ok(CopiedFile {
        metadata: md,
        bytes,
        cloned,
        xattrs_skipped,
    })
}
