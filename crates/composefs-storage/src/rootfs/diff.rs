//! The changes between two merged trees ([`diff`]), in walk order.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::Result;

use super::node::*;
use super::tree::*;

/// How a path differs between two images ([`diff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// Only in the second image.
    Added,
    /// Only in the first image.
    Removed,
    /// In both, with different content or metadata.
    Changed,
}

impl ChangeKind {
    /// `A`, `D` or `C` (as `podman diff` prints them).
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Removed => 'D',
            ChangeKind::Changed => 'C',
        }
    }

    /// `added`, `removed` or `changed`.
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Changed => "changed",
        }
    }
}

/// One difference found by [`diff`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The path in the images, starting with `/`.
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// Compares the paths of two images' trees component by component (the walk order).
pub(crate) fn walk_order(a: &Path, b: &Path) -> std::cmp::Ordering {
    let ca = a.as_os_str().as_bytes().split(|&c| c == b'/');
    let cb = b.as_os_str().as_bytes().split(|&c| c == b'/');
    ca.cmp(cb)
}

/// True if the regular files `path` of `a` and `b` have different bytes.
pub(crate) fn content_differs(a: &RootFs, b: &RootFs, path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut fa = a.open(path)?;
    let mut fb = b.open(path)?;
    let mut ba = vec![0u8; 128 << 10];
    let mut bb = vec![0u8; 128 << 10];
    loop {
        let n = fa
            .read(&mut ba)
            .map_err(|e| a.err(path.as_os_str().as_bytes(), e))?;
        if n == 0 {
            let mut one = [0u8; 1];
            let m = fb
                .read(&mut one)
                .map_err(|e| b.err(path.as_os_str().as_bytes(), e))?;
            return Ok(m != 0);
        }
        let mut got = 0;
        while got < n {
            let m = fb
                .read(&mut bb[got..n])
                .map_err(|e| b.err(path.as_os_str().as_bytes(), e))?;
            if m == 0 {
                return Ok(true);
            }
            got += m;
        }
        if ba[..n] != bb[..n] {
            return Ok(true);
        }
    }
}

/// True if `path` differs between `a` (metadata `ma`) and `b` (metadata `mb`): type,
/// permission bits, owner, symlink target or device numbers; for non-directories also size,
/// modification time and content. (Directory times change with their contents and are left
/// out, as are link counts and inode numbers.)
pub(crate) fn differs(
    a: &RootFs,
    ma: &Metadata,
    b: &RootFs,
    mb: &Metadata,
    path: &Path,
) -> Result<bool> {
    if ma.kind != mb.kind
        || ma.mode != mb.mode
        || ma.uid != mb.uid
        || ma.gid != mb.gid
        || ma.symlink_target != mb.symlink_target
        || (ma.rdev_major, ma.rdev_minor) != (mb.rdev_major, mb.rdev_minor)
    {
        return Ok(true);
    }
    if ma.kind == FileKind::Directory {
        return Ok(false);
    }
    if ma.size != mb.size || (ma.mtime, ma.mtime_nsec) != (mb.mtime, mb.mtime_nsec) {
        return Ok(true);
    }
    if ma.kind != FileKind::Regular {
        return Ok(false);
    }
    // The same file of the same layer (images sharing layers) needs no reading.
    let same_file = a.layer_ids.get(ma.layer) == b.layer_ids.get(mb.layer)
        && (ma.dev, ma.ino) == (mb.dev, mb.ino);
    if same_file {
        return Ok(false);
    }
    content_differs(a, b, path)
}

/// The differences between the trees of two images, in walk order: paths only in `b` are
/// [`ChangeKind::Added`], paths only in `a` [`ChangeKind::Removed`], and paths in both whose
/// type, permissions, owner, symlink target, device numbers or (for non-directories) size,
/// modification time or content differ are [`ChangeKind::Changed`]. Every path under an
/// added or removed directory is listed too.
pub fn diff(a: &RootFs, b: &RootFs) -> Result<Vec<Change>> {
    let mut wa = a.walk();
    let mut wb = b.walk();
    let mut xa = wa.next().transpose()?;
    let mut xb = wb.next().transpose()?;
    let mut out = Vec::new();
    loop {
        let order = match (&xa, &xb) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => walk_order(&x.path, &y.path),
        };
        match order {
            std::cmp::Ordering::Less => {
                if let Some(x) = xa.take() {
                    out.push(Change {
                        path: x.path,
                        kind: ChangeKind::Removed,
                    });
                }
                xa = wa.next().transpose()?;
            }
            std::cmp::Ordering::Greater => {
                if let Some(y) = xb.take() {
                    out.push(Change {
                        path: y.path,
                        kind: ChangeKind::Added,
                    });
                }
                xb = wb.next().transpose()?;
            }
            std::cmp::Ordering::Equal => {
                if let (Some(x), Some(y)) = (xa.take(), xb.take()) {
                    if differs(a, &x.metadata, b, &y.metadata, &x.path)? {
                        out.push(Change {
                            path: x.path,
                            kind: ChangeKind::Changed,
                        });
                    }
                }
                xa = wa.next().transpose()?;
                xb = wb.next().transpose()?;
            }
        }
    }
    Ok(out)
}
