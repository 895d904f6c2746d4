//! A tar generated from a layer's `diff` directory, for layers without tar-split (container
//! layers, layers filled through a mount). This follows c/storage's overlay "native diff"
//! (`archive.TarWithOptions` with the overlay whiteout converter; format doc section 5.3):
//!
//! * lexical walk order, no entry for the root, names without `./`, directories end in `/`;
//! * hard links to an inode already written become type `1` entries; sockets are skipped;
//! * xattrs `security.capability`, `security.ima` and `user.*` (except `user.overlay.*`)
//!   become PAX `SCHILY.xattr.*` records;
//! * UIDs/GIDs are mapped back through the layer's ID mappings (not for `.wh.` names);
//! * modification times are truncated to whole seconds;
//! * in stores without a mount program (overlay whiteout format): a 0/0 character device
//!   `x` becomes an empty file `.wh.x` with mode 0, and an opaque directory (xattr
//!   `trusted.overlay.opaque` or `user.overlay.opaque` = `y`) gets a `.wh..wh..opq` entry if
//!   a lower layer has that directory and does not white out one of its parents.
//!
//! The result is not byte-identical to any original blob (c/storage's is not either), so
//! [`crate::export::ExportReport::reproducible`] is false.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FileType};

use crate::error::{Result, StorageError};
use crate::export::options::{ExportOptions, ExportReport, TargetWriter};
use crate::fsutil::{self, Follow};
use crate::overlay::{KERNEL_OPAQUE_XATTRS, is_whiteout_device, keep_xattr_in_diff, to_container};
use crate::store::layer::Layer;
use crate::store::records::IdMapping;
use crate::tar::header::{BLOCK, EntryType, TarHeader, padding};

struct Gen<'a, W: Write> {
    layer: &'a Layer,
    out: W,
    /// What the output is called, for errors writing it.
    name: &'a Path,
    uidmap: &'a [IdMapping],
    gidmap: &'a [IdMapping],
    overlay_format: bool,
    lowers: Vec<(Dir, PathBuf)>,
    seen_inodes: HashMap<(u64, u64), Vec<u8>>,
    written: u64,
    files: u64,
    opts: &'a ExportOptions,
    buf: Vec<u8>,
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut v = dir.to_vec();
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

fn os(b: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(b))
}

impl<W: Write> Gen<'_, W> {
    fn err(&self, rel: &[u8], e: std::io::Error) -> StorageError {
        StorageError::layer(
            self.layer.id(),
            format!("generating its tar: {}: {e}", String::from_utf8_lossy(rel)),
        )
    }

    fn emit(&mut self, h: &TarHeader) -> Result<()> {
        let b = h.to_bytes();
        self.out
            .write_all(&b)
            .map_err(|e| StorageError::io(self.name, e))?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// Is `rel` (a directory) present in a lower layer, and not under a whited-out parent?
    fn lower_has_dir(&self, rel: &[u8]) -> Result<bool> {
        for (dir, path) in &self.lowers {
            match dir.metadata(os(rel)) {
                Ok(md) => {
                    use cap_std::fs::FileTypeExt;
                    if md.file_type().is_char_device() && is_whiteout_rdev(dir, rel) {
                        return Ok(false);
                    }
                    return Ok(true);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) => {}
                Err(e) => return Err(StorageError::io(path.join(os(rel)), e)),
            }
            // A parent whited out in this lower: the directory was not inherited.
            let mut p = rel;
            while let Some(i) = p.iter().rposition(|&c| c == b'/') {
                p = &p[..i];
                if is_whiteout_rdev(dir, p) {
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }

    fn walk(&mut self, dir: &Dir, rel: &[u8]) -> Result<()> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for e in dir.entries().map_err(|e| self.err(rel, e))? {
            use std::os::unix::ffi::OsStrExt;
            let e = e.map_err(|e| self.err(rel, e))?;
            names.push(e.file_name().as_bytes().to_vec());
        }
        names.sort();
        for name in names {
            let path = join(rel, &name);
            let st = fsutil::lstat_at(dir, os(&name)).map_err(|e| self.err(&path, e))?;
            let ft = FileType::from_raw_mode(st.st_mode);
            if ft == FileType::Socket {
                continue;
            }
            let mut h = TarHeader::new(path.clone(), EntryType::Regular);
            // c/storage's FileInfoHeader keeps the file type bits in the mode field; whiteout
            // files get plain permission bits, as in the whiteouts c/storage synthesizes.
            h.mode = if name.starts_with(b".wh.") {
                st.st_mode & 0o7777
            } else {
                st.st_mode & 0o177777
            };
            h.mtime = st.st_mtime;
            let is_wh_name = name.starts_with(b".wh.");
            let (uid, gid) = if is_wh_name {
                (st.st_uid, st.st_gid)
            } else {
                (
                    to_container(self.uidmap, st.st_uid).ok_or_else(|| {
                        self.err(
                            &path,
                            std::io::Error::other(format!(
                                "UID {} is not in the layer's ID map",
                                st.st_uid
                            )),
                        )
                    })?,
                    to_container(self.gidmap, st.st_gid).ok_or_else(|| {
                        self.err(
                            &path,
                            std::io::Error::other(format!(
                                "GID {} is not in the layer's ID map",
                                st.st_gid
                            )),
                        )
                    })?,
                )
            };
            h.uid = u64::from(uid);
            h.gid = u64::from(gid);
            let mut opened: Option<std::fs::File> = None;
            let mut subdir: Option<Dir> = None;
            match ft {
                FileType::Directory => {
                    h.entry_type = EntryType::Directory;
                    h.path.push(b'/');
                    let d = fsutil::open_dir_nofollow(dir, os(&name))
                        .map_err(|e| self.err(&path, e))?;
                    subdir = Some(d);
                }
                FileType::RegularFile => {
                    h.size = st.st_size as u64;
                    let (f, _) = fsutil::open_regular(dir, os(&name), Follow::No)
                        .map_err(|e| self.err(&path, e))?;
                    opened = Some(f);
                }
                FileType::Symlink => {
                    h.entry_type = EntryType::Symlink;
                    h.link_target = fsutil::read_link_at(dir, os(&name))
                        .map(|t| {
                            use std::os::unix::ffi::OsStringExt;
                            t.into_vec()
                        })
                        .map_err(|e| self.err(&path, e))?;
                }
                FileType::CharacterDevice | FileType::BlockDevice => {
                    h.entry_type = if ft == FileType::CharacterDevice {
                        EntryType::CharDevice
                    } else {
                        EntryType::BlockDevice
                    };
                    h.dev_major = rustix::fs::major(st.st_rdev);
                    h.dev_minor = rustix::fs::minor(st.st_rdev);
                }
                FileType::Fifo => h.entry_type = EntryType::Fifo,
                _ => continue,
            }
            // xattrs (files and directories carry them; symlinks and devices cannot hold user.*).
            let xattr_fd = opened
                .as_ref()
                .map(|f| f.try_clone())
                .transpose()
                .map_err(|e| self.err(&path, e))?;
            let mut opaque = false;
            let xattrs = match (&xattr_fd, &subdir) {
                (Some(f), _) => fsutil::fd_xattrs(f).map_err(|e| self.err(&path, e))?,
                (None, Some(d)) => fsutil::fd_xattrs(d).map_err(|e| self.err(&path, e))?,
                _ => Vec::new(),
            };
            for (k, v) in &xattrs {
                if KERNEL_OPAQUE_XATTRS
                    .iter()
                    .any(|o| o.as_bytes() == k.as_slice())
                    && v.as_slice() == b"y"
                {
                    opaque = true;
                }
                if keep_xattr_in_diff(k) {
                    h.xattrs.push((k.clone(), v.clone()));
                }
            }
            h.xattrs.sort();
            // Hard links.
            if ft != FileType::Directory && st.st_nlink > 1 {
                let key = (st.st_dev, st.st_ino);
                if let Some(first) = self.seen_inodes.get(&key) {
                    h.entry_type = EntryType::HardLink;
                    h.link_target = first.clone();
                    h.size = 0;
                    opened = None;
                } else {
                    self.seen_inodes.insert(key, h.path.clone());
                }
            }
            // Overlay whiteouts → AUFS form.
            let mut extra: Option<TarHeader> = None;
            if self.overlay_format {
                if ft == FileType::CharacterDevice && st.st_rdev == 0 {
                    h.path = join(rel, &[b".wh.".as_slice(), &name].concat());
                    h.entry_type = EntryType::Regular;
                    h.mode = 0;
                    h.size = 0;
                    h.dev_major = 0;
                    h.dev_minor = 0;
                }
                if ft == FileType::Directory && opaque && self.lower_has_dir(&path)? {
                    let mut wo = TarHeader::new(join(&path, b".wh..wh..opq"), EntryType::Regular);
                    wo.mode = h.mode & 0o777;
                    wo.uid = h.uid;
                    wo.gid = h.gid;
                    extra = Some(wo);
                }
            }
            self.emit(&h)?;
            if let Some(wo) = extra {
                self.emit(&wo)?;
            }
            if let (Some(mut f), EntryType::Regular) = (opened, h.entry_type) {
                if h.size > 0 {
                    self.copy(&mut f, h.size, &path)?;
                }
            }
            if let Some(d) = subdir {
                self.walk(&d, &path)?;
            }
        }
        Ok(())
    }

    fn copy(&mut self, f: &mut std::fs::File, size: u64, path: &[u8]) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let k = (self.buf.len() as u64).min(left) as usize;
            let n = f.read(&mut self.buf[..k]).map_err(|e| self.err(path, e))?;
            if n == 0 {
                return Err(self.err(
                    path,
                    std::io::Error::other(format!(
                        "file shrank while being read ({} of {size} bytes)",
                        size - left
                    )),
                ));
            }
            self.out
                .write_all(&self.buf[..n])
                .map_err(|e| StorageError::io(self.name, e))?;
            left -= n as u64;
        }
        let pad = padding(size) as usize;
        self.out
            .write_all(&[0u8; BLOCK][..pad])
            .map_err(|e| StorageError::io(self.name, e))?;
        self.written += size + pad as u64;
        self.files += 1;
        if let Some(p) = &self.opts.progress {
            p(self.written);
        }
        Ok(())
    }
}

fn is_whiteout_rdev(dir: &Dir, rel: &[u8]) -> bool {
    match rustix::fs::statat(dir, os(rel), AtFlags::empty()) {
        Ok(st) => is_whiteout_device(&st),
        Err(_) => false,
    }
}

/// Writes a tar generated from `layer`'s diff directory to `w`. The caller holds the layer's
/// locks ([`Layer::lock_and_check`]) and has ruled out the naive diff.
pub(crate) fn generate(
    layer: &Layer,
    w: TargetWriter<'_>,
    name: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    log::debug!(
        "layer {} has no tar-split: generating a tar from its diff directory; it is not the original layer blob and its digest will differ",
        layer.id()
    );
    let diff = layer.diff_dir()?;
    let overlay_format = layer.storage().overlay_options().mount_program.is_none();
    let lowers = if overlay_format {
        layer.lower_diff_dirs_with_paths()?
    } else {
        Vec::new()
    };
    let mut g = Gen {
        layer,
        out: BufWriter::with_capacity(256 << 10, w),
        name,
        uidmap: layer.uid_map(),
        gidmap: layer.gid_map(),
        overlay_format,
        lowers,
        seen_inodes: HashMap::new(),
        written: 0,
        files: 0,
        opts,
        buf: vec![0u8; 256 << 10],
    };
    g.walk(&diff, b"")?;
    g.out
        .write_all(&[0u8; 2 * BLOCK])
        .map_err(|e| StorageError::io(name, e))?;
    g.written += 2 * BLOCK as u64;
    g.out.flush().map_err(|e| StorageError::io(name, e))?;
    Ok(ExportReport {
        layer: layer.id().to_string(),
        bytes: g.written,
        files: g.files,
        zero_copied_files: 0,
        digest: None,
        reproducible: false,
    })
}
