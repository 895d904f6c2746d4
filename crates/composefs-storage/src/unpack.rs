//! Writing an image's merged root filesystem ([`RootFs`]) into a directory, as `umoci unpack`
//! lays it out: regular files, directories, symlinks, hard links kept as links, devices and
//! FIFOs (where permitted), modes, owners, modification times (directories last) and
//! extended attributes.
//!
//! Every write is relative to a directory handle: parents are opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and each file is created by a single name
//! in its parent (`O_CREAT | O_EXCL | O_NOFOLLOW`, `mkdirat`, `symlinkat`, `mknodat`,
//! `linkat`), so a hostile image (a symlink `etc -> /tmp/outside` and then `etc/passwd`,
//! `..` in names, hard links pointing out) cannot make anything be written outside the
//! target. Hard links are found from the layers' inodes, never from names.
//!
//! Regular files are cloned from the store with `FICLONE` where both sides are on one
//! file system that supports it (btrfs, XFS), else copied with `copy_file_range`; with
//! [`UnpackOptions::verify`], each file's CRC-64 is checked against the layer's tar-split
//! as it is read.
//!
//! Owners: as root they are set; otherwise (or with [`Owners::Rootless`]) every file is
//! left owned by the caller and the image's owner, when not `0:0`, is recorded in the
//! `user.rootlesscontainers` extended attribute, the way `umoci unpack --rootless` does
//! (a protobuf message: field 1 = uid, field 2 = gid, `u32::MAX` for "unchanged").
//! Devices that cannot be made (not root) are skipped and counted.
//!
//! Not copied: the target directory's own metadata (it is the caller's directory), extended
//! attributes of symlinks and devices (they cannot carry `user.*` ones), and extended
//! attributes of layers stored flat (composefs-backed stores keep them in no form read
//! here). Internal attributes of the store (`trusted.overlay.*`, `user.overlay.*`,
//! `user.fuseoverlayfs.*`, `user.containers.*`) and `security.selinux` are never copied.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::{Result, StorageError};
use crate::rootfs::{FileKind, Metadata, RootFs, Source};
use crate::store::image::Image;
use crate::tar::names::content_path;
use crate::tar::tar_split::{Raw, TarSplitReader, gz_reader};

/// The extended attribute `umoci --rootless` records an unsettable owner in.
pub const ROOTLESS_XATTR: &str = "user.rootlesscontainers";

/// How file owners are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Owners {
    /// [`Owners::Set`] when running as root, else [`Owners::Rootless`].
    #[default]
    Auto,
    /// `chown` every file to the image's owner.
    Set,
    /// Leave files owned by the caller; record the image's owner, when not `0:0`, in
    /// `user.rootlesscontainers` (as `umoci unpack --rootless`).
    Rootless,
    /// Leave files owned by the caller and record nothing.
    Drop,
}

/// Progress callback: called with (files written, bytes written) from any thread.
pub type UnpackProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Options of [`unpack`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct UnpackOptions {
    /// Threads writing regular files (0 = number of CPUs).
    pub jobs: usize,
    /// How owners are written.
    pub owners: Owners,
    /// Check each regular file's size and CRC-64 against its layer's tar-split (layers with
    /// a tar-split only).
    pub verify: bool,
    /// Replace existing non-directories and merge into existing directories of the target
    /// (as `podman cp` does); otherwise any existing name is an error.
    pub overwrite: bool,
    /// Told about progress.
    pub progress: Option<UnpackProgress>,
    /// Set to stop early (the call then fails with `EINTR`).
    pub cancel: Option<Arc<AtomicBool>>,
    /// With [`Owners::Set`] (root): image UIDs are shifted by these ranges (as
    /// `umoci unpack --uid-map`); an owner no range covers is an error. Empty: unchanged.
    pub uid_map: Vec<crate::IdMapping>,
    /// As `uid_map`, for GIDs.
    pub gid_map: Vec<crate::IdMapping>,
}

impl std::fmt::Debug for UnpackOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnpackOptions")
            .field("jobs", &self.jobs)
            .field("owners", &self.owners)
            .field("verify", &self.verify)
            .field("overwrite", &self.overwrite)
            .field("uid_map", &self.uid_map)
            .field("gid_map", &self.gid_map)
            .finish()
    }
}

/// Where [`unpack`] writes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The source (a directory) is written *into* this directory: its entries become the
    /// directory's entries; the directory's own metadata is left alone.
    Into(BorrowedFd<'a>),
    /// The source is written as the new entry `name` of the directory `parent`.
    As {
        /// The directory the entry is made in.
        parent: BorrowedFd<'a>,
        /// Its name (one component).
        name: &'a OsStr,
    },
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackReport {
    /// Regular files written (hard links not counted).
    pub files: u64,
    /// Directories made.
    pub dirs: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Extra names of hard-linked files.
    pub hardlinks: u64,
    /// Devices, FIFOs and sockets made.
    pub special: u64,
    /// Devices skipped because this process may not make them.
    pub devices_skipped: u64,
    /// Bytes of regular files written.
    pub bytes: u64,
    /// Regular files cloned (`FICLONE`) rather than copied.
    pub cloned: u64,
    /// Extended attributes that could not be set (`EPERM` without root, `ENOTSUP`).
    pub xattrs_skipped: u64,
    /// Entries of the source walked so far (all types).
    pub entries: u64,
}

/// The tar-split record of one file: size and CRC.
pub(crate) type CrcMap = HashMap<Vec<u8>, (u64, Option<u64>)>;

pub(crate) fn crc_map(layer: &crate::Layer) -> Result<Option<CrcMap>> {
    if !layer.has_tar_split()? {
        return Ok(None);
    }
    let (_locks, file) = crate::tar::tar_split::open_locked(layer)?;
    let Some(file) = file else { return Ok(None) };
    let mut r = TarSplitReader::new(gz_reader(file), layer.id());
    let mut map = HashMap::new();
    while let Some(raw) = r.next_raw()? {
        if let Raw::File { name, size, crc } = raw {
            if size == 0 {
                continue;
            }
            if let Ok(p) = content_path(name) {
                map.insert(p.as_os_str().as_bytes().to_vec(), (size, crc));
            }
        }
    }
    Ok(Some(map))
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Opens the directory `rel` beneath `base` with `flags` (plus `O_DIRECTORY`, `O_NOFOLLOW`
/// and `O_CLOEXEC`), following no symlink at all: every component must be a real directory
/// beneath `base`. Retried (a bounded number of times, as `fsutil::openat2_beneath`) on
/// `EAGAIN` from a concurrent rename and on `EINTR`.
fn open_target_dir(base: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            base,
            rel,
            flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::AGAIN) | Err(Errno::INTR) if tries < 64 => tries += 1,
            r => return r.map_err(Into::into),
        }
    }
}

/// The directory `rel` beneath `base` as a parent to create names in (`O_PATH`).
fn open_parent(base: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    open_target_dir(base, rel, OFlags::PATH)
}

/// The directory `rel` beneath `base`, for reading and changing its metadata.
fn open_dir_rw(base: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    open_target_dir(base, rel, OFlags::RDONLY)
}

/// Is this extended attribute the image's (copied), not the store's own bookkeeping?
fn keep_xattr(name: &[u8]) -> bool {
    !(name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
        || name.starts_with(b"user.containers.")
        || name == ROOTLESS_XATTR.as_bytes()
        || name == b"security.selinux"
        || name == b"system.nfs4_acl")
}

/// The extended attributes of an open file, cheaply when it has none (the common case).
pub(crate) fn read_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = [0u8; 1024];
    match rustix::fs::flistxattr(fd, &mut names[..]) {
        Ok(0) | Err(Errno::NOTSUP) => Ok(Vec::new()),
        Ok(n) => {
            let mut out = Vec::new();
            let mut value = vec![0u8; 4096];
            for name in names[..n].split(|&c| c == 0).filter(|n| !n.is_empty()) {
                if !keep_xattr(name) {
                    continue;
                }
                let cname = std::ffi::CString::new(name).map_err(|_| errno(libc::EINVAL))?;
                match rustix::fs::fgetxattr(fd, cname.as_c_str(), &mut value[..]) {
                    Ok(k) => out.push((name.to_vec(), value[..k].to_vec())),
                    Err(Errno::NODATA) | Err(Errno::PERM) => {}
                    // Long values, or denied reads: the full reader (with the rootless
                    // store's helper).
                    Err(Errno::RANGE) | Err(Errno::ACCESS) => return full_xattrs(fd),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(out)
        }
        Err(Errno::RANGE) | Err(Errno::ACCESS) => full_xattrs(fd),
        Err(e) => Err(e.into()),
    }
}

fn full_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut v = crate::fsutil::fd_xattrs(fd)?;
    v.retain(|(k, _)| keep_xattr(k));
    Ok(v)
}

/// The `user.rootlesscontainers` value for an owner (protobuf: uint32 uid = 1, uint32
/// gid = 2; an ID of 0 is written as `u32::MAX`, "unchanged"), or `None` for `0:0`.
pub fn rootless_xattr(uid: u32, gid: u32) -> Option<Vec<u8>> {
    if uid == 0 && gid == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(12);
    for (tag, id) in [(0x08u8, uid), (0x10u8, gid)] {
        let mut v = if id == 0 { u32::MAX } else { id };
        out.push(tag);
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    Some(out)
}

/// Shared state of one run.
struct Ctx<'a> {
    image: String,
    base: BorrowedFd<'a>,
    display: PathBuf,
    owners: Owners,
    verify: bool,
    overwrite: bool,
    crcs: Vec<Option<CrcMap>>,
    layer_ids: Vec<String>,
    failed: AtomicBool,
    error: Mutex<Option<StorageError>>,
    files: AtomicU64,
    bytes: AtomicU64,
    cloned: AtomicU64,
    xattrs_skipped: AtomicU64,
    progress: Option<UnpackProgress>,
    cancel: Option<Arc<AtomicBool>>,
    uid_map: Vec<crate::IdMapping>,
    gid_map: Vec<crate::IdMapping>,
}

/// `id` shifted by the first range of `map` holding it (`map` empty: unchanged).
fn map_id(map: &[crate::IdMapping], id: u32, what: &str) -> io::Result<u32> {
    if map.is_empty() {
        return Ok(id);
    }
    map.iter()
        .find(|m| id >= m.container_id && (id - m.container_id) < m.size)
        .and_then(|m| m.host_id.checked_add(id - m.container_id))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} {id} is not covered by the --{what}-map ranges"),
            )
        })
}

/// The host owner of a file of the image under the ID maps.
fn host_owner(
    uid_map: &[crate::IdMapping],
    gid_map: &[crate::IdMapping],
    md: &Metadata,
) -> io::Result<(rustix::process::Uid, rustix::process::Gid)> {
    Ok((
        rustix::process::Uid::from_raw(map_id(uid_map, md.uid, "uid")?),
        rustix::process::Gid::from_raw(map_id(gid_map, md.gid, "gid")?),
    ))
}

/// A regular file to write.
struct Job {
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
    rel: PathBuf,
    /// Path in the image (for CRC lookup and messages).
    image_path: PathBuf,
    md: Metadata,
    src: Source,
}

impl Ctx<'_> {
    fn io_err(&self, rel: &Path, e: io::Error) -> StorageError {
        StorageError::io(self.display.join(rel), e)
    }

    fn fail(&self, e: StorageError) {
        if let Ok(mut g) = self.error.lock() {
            if g.is_none() {
                *g = Some(e);
            }
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
            || self
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Sets owner (or its rootless record), mode, extended attributes and times on `fd`
    /// (a regular file or directory opened for it).
    fn finish_fd(
        &self,
        fd: BorrowedFd<'_>,
        md: &Metadata,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<()> {
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattrs.to_vec();
        match self.owners {
            Owners::Set => {
                let (uid, gid) = host_owner(&self.uid_map, &self.gid_map, md)?;
                rustix::fs::fchown(fd, Some(uid), Some(gid))?
            }
            Owners::Rootless => {
                if let Some(v) = rootless_xattr(md.uid, md.gid) {
                    xattrs.push((ROOTLESS_XATTR.as_bytes().to_vec(), v));
                }
            }
            Owners::Drop | Owners::Auto => {}
        }
        for (k, v) in &xattrs {
            let name = std::ffi::CString::new(k.as_slice()).map_err(|_| errno(libc::EINVAL))?;
            match rustix::fs::fsetxattr(fd, name.as_c_str(), v, rustix::fs::XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOTSUP) => {
                    self.xattrs_skipped.fetch_add(1, Ordering::Relaxed);
                }
                Err(Errno::PERM) if self.owners != Owners::Set => {
                    self.xattrs_skipped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    return Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!(
                            "setting extended attribute {}: {}",
                            String::from_utf8_lossy(k),
                            io::Error::from(e)
                        ),
                    ));
                }
            }
        }
        // After chown, which clears set-user-ID bits.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(md.mode))?;
        rustix::fs::futimens(fd, &times(md))?;
        Ok(())
    }

    fn write_file(&self, job: &Job) -> Result<()> {
        let src = job.src.open_file().map_err(|e| StorageError::ImagePath {
            image: self.image.clone(),
            path: job.image_path.display().to_string(),
            error: e,
        })?;
        let name = Path::new(OsStr::from_bytes(&job.name));
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut again = self.overwrite;
        let dst = loop {
            match rustix::fs::openat(&*job.parent, name, flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => break fd,
                Err(Errno::EXIST) if again => {
                    remove_existing(&job.parent, name).map_err(|e| self.io_err(&job.rel, e))?;
                    again = false;
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(self.io_err(&job.rel, e.into())),
            }
        };
        let expect = self.expected(&job.md, &job.image_path);
        let (n, cloned) = copy_data(&src, dst.as_fd(), job.md.size, expect.is_some())
            .map_err(|e| self.io_err(&job.rel, e))?;
        if let (Some((layer, size, crc)), Some(got)) = (&expect, n.1) {
            if n.0 != *size {
                return Err(StorageError::Integrity {
                    layer: layer.clone(),
                    file: job.image_path.display().to_string(),
                    message: format!("file is {} bytes on disk, the tar records {size}", n.0),
                });
            }
            if let Some(want) = crc {
                if got != *want {
                    return Err(StorageError::Integrity {
                        layer: layer.clone(),
                        file: job.image_path.display().to_string(),
                        message: format!(
                            "content has CRC-64 {got:016x}, tar-split records {want:016x}: the layer file is corrupted"
                        ),
                    });
                }
            }
        }
        let xattrs = if job.src.on_disk() {
            read_xattrs(src.as_fd()).map_err(|e| self.io_err(&job.rel, e))?
        } else {
            Vec::new()
        };
        self.finish_fd(dst.as_fd(), &job.md, &xattrs)
            .map_err(|e| self.io_err(&job.rel, e))?;
        if cloned {
            self.cloned.fetch_add(1, Ordering::Relaxed);
        }
        let files = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes.fetch_add(n.0, Ordering::Relaxed) + n.0;
        if let Some(p) = &self.progress {
            p(files, bytes);
        }
        Ok(())
    }

    /// (layer ID, size, CRC) recorded for the file, if verifying and known.
    fn expected(&self, md: &Metadata, path: &Path) -> Option<(String, u64, Option<u64>)> {
        if !self.verify || md.size == 0 {
            return None;
        }
        let map = self.crcs.get(md.layer)?.as_ref()?;
        let rel = path.as_os_str().as_bytes();
        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
        let (size, crc) = map.get(rel)?;
        Some((self.layer_ids.get(md.layer)?.clone(), *size, *crc))
    }
}

pub(crate) fn times(md: &Metadata) -> Timestamps {
    let t = Timespec {
        tv_sec: md.mtime,
        tv_nsec: md.mtime_nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Removes a non-directory `name` of `parent` (for overwriting); an existing directory is an
/// error (`EISDIR`).
fn remove_existing(parent: &OwnedFd, name: &Path) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM)
            if rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
                .unwrap_or(false) =>
        {
            Err(errno(libc::EISDIR))
        }
        Err(e) => Err(e.into()),
    }
}

/// Copies `size` bytes: `FICLONE` if possible, else `copy_file_range`, else read/write.
/// Returns ((bytes, CRC-64 if `crc`), cloned).
pub(crate) fn copy_data(
    src: &File,
    dst: BorrowedFd<'_>,
    size: u64,
    crc: bool,
) -> io::Result<((u64, Option<u64>), bool)> {
    if size > 0 && rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        // The clone shares the source's blocks: what is checked is what was cloned.
        let n = rustix::fs::fstat(dst)?.st_size as u64;
        let sum = if crc { Some(crc_of(dst, n)?) } else { None };
        return Ok(((n, sum), true));
    }
    if crc {
        // One pass: read, sum, write; through one buffer per thread (zeroed once, not per
        // file). Exactly `size` bytes (the file's size when it was looked up) are read, so a
        // small file takes one `read`; a file grown since is cut there, and the caller's
        // size and CRC check against the tar-split then judges exactly what was written.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        return BUF.with_borrow_mut(|buf| {
            if buf.len() < buf_len(size) {
                buf.resize(buf_len(size), 0);
            }
            let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
            let mut total = 0u64;
            let mut r = src;
            while total < size {
                let want = buf.len().min((size - total) as usize);
                let n = match r.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                digest.update(&buf[..n]);
                let mut w = &buf[..n];
                while !w.is_empty() {
                    let k = rustix::io::write(dst, w)?;
                    if k == 0 {
                        return Err(errno(libc::EIO));
                    }
                    w = &w[k..];
                }
                total += n as u64;
            }
            Ok(((total, Some(digest.finalize())), false))
        });
    }
    let mut total = 0u64;
    let mut cfr = true;
    loop {
        if cfr {
            match rustix::fs::copy_file_range(src, None, dst, None, 1 << 30) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    continue;
                }
                Err(Errno::XDEV)
                | Err(Errno::INVAL)
                | Err(Errno::NOSYS)
                | Err(Errno::OPNOTSUPP)
                    if total == 0 =>
                {
                    cfr = false;
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        } else {
            let mut buf = vec![0u8; buf_len(size)];
            let mut r = src;
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                let mut w = &buf[..n];
                while !w.is_empty() {
                    let k = rustix::io::write(dst, w)?;
                    w = &w[k..];
                }
                total += n as u64;
            }
            break;
        }
    }
    Ok(((total, None), false))
}

/// A copy buffer for a file of `size` bytes: most files are small, and zeroing 256 KiB for
/// each would cost more than copying them.
fn buf_len(size: u64) -> usize {
    (size.clamp(4096, 256 << 10)) as usize
}

/// The CRC-64 of the first `len` bytes of `f` (a file written here, opened read-write).
fn crc_of(f: BorrowedFd<'_>, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; buf_len(len)];
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
    let mut off = 0u64;
    while off < len {
        let want = buf.len().min((len - off) as usize);
        let n = match rustix::io::pread(f, &mut buf[..want], off) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        digest.update(&buf[..n]);
        off += n as u64;
    }
    Ok(digest.finalize())
}

/// The directories made (walk order) and the hard links to make (first name, other name).
type Made = (Vec<MadeDir>, Vec<(PathBuf, PathBuf)>);

/// A directory made, for its metadata at the end.
struct MadeDir {
    rel: PathBuf,
    md: Metadata,
    /// Read while walking: the layer directory's handle is not kept open until the end.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Writes the tree of `image` under `from` (`/` for the whole root filesystem) to `target`.
///
/// Parents are written before their entries; regular files are written by
/// [`UnpackOptions::jobs`] threads; hard links are made once their file is complete;
/// directories get their metadata last, deepest first. On error, what was written stays
/// (the caller decides what to remove) and the error names the path concerned; the
/// returned report is then lost, so a caller wanting "how far" should count through
/// [`UnpackOptions::progress`].
pub fn unpack(
    image: &Image,
    from: &Path,
    target: Target<'_>,
    target_display: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport> {
    let rootfs = image.rootfs()?;
    let layers = image.layers()?;
    let mut crcs = Vec::with_capacity(layers.len());
    for l in &layers {
        crcs.push(if opts.verify { crc_map(l)? } else { None });
    }
    let owners = match opts.owners {
        Owners::Auto if rustix::process::geteuid().is_root() => Owners::Set,
        Owners::Auto => Owners::Rootless,
        o => o,
    };
    if owners != Owners::Set && !(opts.uid_map.is_empty() && opts.gid_map.is_empty()) {
        return Err(StorageError::io(
            target_display,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "--uid-map and --gid-map apply only when owners are set (as root, without --no-owners)",
            ),
        ));
    }
    let (base, prefix): (BorrowedFd<'_>, PathBuf) = match target {
        Target::Into(d) => (d, PathBuf::new()),
        Target::As { parent, name } => {
            if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
                return Err(StorageError::io(
                    target_display,
                    io::Error::new(io::ErrorKind::InvalidInput, "not a single file name"),
                ));
            }
            (parent, PathBuf::from(name))
        }
    };
    let ctx = Ctx {
        image: image.id().to_string(),
        base,
        display: match target {
            Target::Into(_) => target_display.to_path_buf(),
            Target::As { .. } => target_display
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        },
        owners,
        verify: opts.verify,
        overwrite: opts.overwrite,
        crcs,
        layer_ids: rootfs.layer_ids().to_vec(),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        cloned: AtomicU64::new(0),
        xattrs_skipped: AtomicU64::new(0),
        progress: opts.progress.clone(),
        cancel: opts.cancel.clone(),
        uid_map: opts.uid_map.clone(),
        gid_map: opts.gid_map.clone(),
    };
    let jobs = crate::pool::threads(opts.jobs);
    let mut report = UnpackReport::default();
    let walked = std::thread::scope(|s| -> Result<Made> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(256);
        let rx = Arc::new(Mutex::new(rx));
        let ctx = &ctx;
        let mut workers = Vec::new();
        if jobs > 1 {
            for _ in 0..jobs {
                let rx = Arc::clone(&rx);
                workers.push(s.spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(g) => g.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        if ctx.stopped() {
                            continue;
                        }
                        if let Err(e) = ctx.write_file(&job) {
                            ctx.fail(e);
                        }
                    }
                }));
            }
        }
        let r = walk_and_make(ctx, &rootfs, from, &prefix, &mut report, |job| {
            if jobs > 1 {
                tx.send(job)
                    .map_err(|_| StorageError::io(&ctx.display, errno(libc::EPIPE)))
            } else {
                ctx.write_file(&job)
            }
        });
        drop(tx);
        for w in workers {
            let _ = w.join();
        }
        r
    });
    if let Some(e) = ctx.error.lock().ok().and_then(|mut g| g.take()) {
        return Err(e);
    }
    let (dirs, links) = walked?;
    if ctx.stopped() {
        return Err(StorageError::io(target_display, errno(libc::EINTR)));
    }
    // Hard links, now that their files are complete.
    for (first, link) in &links {
        let (fp, fname) = split_rel(first);
        let (lp, lname) = split_rel(link);
        let fpd = open_parent(base, fp).map_err(|e| ctx.io_err(first, e))?;
        let lpd = open_parent(base, lp).map_err(|e| ctx.io_err(link, e))?;
        let mut tried_remove = false;
        loop {
            match rustix::fs::linkat(&fpd, fname, &lpd, lname, AtFlags::empty()) {
                Ok(()) => break,
                Err(Errno::EXIST) if ctx.overwrite && !tried_remove => {
                    remove_existing(&lpd, lname).map_err(|e| ctx.io_err(link, e))?;
                    tried_remove = true;
                }
                Err(e) => return Err(ctx.io_err(link, e.into())),
            }
        }
        report.hardlinks += 1;
    }
    // Directories last, deepest first, so that writing into them changes nothing after.
    for d in dirs.iter().rev() {
        if ctx.stopped() {
            return Err(StorageError::io(target_display, errno(libc::EINTR)));
        }
        let fd = open_dir_rw(base, &d.rel).map_err(|e| ctx.io_err(&d.rel, e))?;
        ctx.finish_fd(fd.as_fd(), &d.md, &d.xattrs)
            .map_err(|e| ctx.io_err(&d.rel, e))?;
    }
    report.files = ctx.files.load(Ordering::Relaxed);
    report.bytes = ctx.bytes.load(Ordering::Relaxed);
    report.cloned = ctx.cloned.load(Ordering::Relaxed);
    report.xattrs_skipped = ctx.xattrs_skipped.load(Ordering::Relaxed);
    Ok(report)
}

fn split_rel(rel: &Path) -> (&Path, &Path) {
    (
        rel.parent().unwrap_or(Path::new("")),
        Path::new(rel.file_name().unwrap_or(OsStr::new("."))),
    )
}

/// Walks the source, making directories, symlinks and special files and handing regular
/// files to `send`. Returns the directories made (walk order) and the hard links to make
/// (first name, other name), relative to the base.
fn walk_and_make(
    ctx: &Ctx<'_>,
    rootfs: &RootFs,
    from: &Path,
    prefix: &Path,
    report: &mut UnpackReport,
    mut send: impl FnMut(Job) -> Result<()>,
) -> Result<Made> {
    // A symlink named as the source is written as a symlink (intermediate ones are followed
    // inside the image).
    let top = rootfs.lstat(from)?;
    let mut single = (top.kind == FileKind::Symlink).then(|| (from.to_path_buf(), top));
    let mut walk = match single {
        Some(_) => None,
        None => Some(rootfs.walk_from(from)?),
    };
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    // (layer, dev, ino) → the first name written.
    let mut inodes: HashMap<(usize, u64, u64), PathBuf> = HashMap::new();
    let mut start: Option<PathBuf> = None;
    // The last parent opened, reused for its siblings.
    let mut cached: Option<(PathBuf, Arc<OwnedFd>)> = None;
    loop {
        if ctx.stopped() {
            break;
        }
        let (entry, src) = match single.take() {
            Some((path, metadata)) => (WalkEntryLite { path, metadata }, None),
            None => match walk.as_mut().and_then(|w| w.next_with_source()) {
                None => break,
                Some(r) => {
                    let (e, s) = r?;
                    (
                        WalkEntryLite {
                            path: e.path,
                            metadata: e.metadata,
                        },
                        s,
                    )
                }
            },
        };
        report.entries += 1;
        let rel_in_src = match &start {
            None => {
                start = Some(entry.path.clone());
                PathBuf::new()
            }
            Some(s) => entry
                .path
                .strip_prefix(s)
                .map(Path::to_path_buf)
                .map_err(|_| StorageError::io(&entry.path, errno(libc::EINVAL)))?,
        };
        let rel = prefix.join(&rel_in_src);
        if rel.as_os_str().is_empty() {
            // The source directory itself, written into the target: nothing to make.
            if entry.metadata.kind != FileKind::Directory {
                return Err(ctx.io_err(&rel, errno(libc::ENOTDIR)));
            }
            continue;
        }
        let (pdir, name) = split_rel(&rel);
        let parent = match &cached {
            Some((p, fd)) if p == pdir => Arc::clone(fd),
            _ => {
                let fd = Arc::new(open_parent(ctx.base, pdir).map_err(|e| ctx.io_err(&rel, e))?);
                cached = Some((pdir.to_path_buf(), Arc::clone(&fd)));
                fd
            }
        };
        let md = entry.metadata;
        match md.kind {
            FileKind::Directory => {
                match rustix::fs::mkdirat(&*parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST)
                        if ctx.overwrite
                            && rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW)
                                .map(|st| {
                                    FileType::from_raw_mode(st.st_mode) == FileType::Directory
                                })
                                .unwrap_or(false) => {}
                    Err(e) => return Err(ctx.io_err(&rel, e.into())),
                }
                report.dirs += 1;
                let xattrs = match src.as_ref().and_then(|s| s.dir_fd()) {
                    Some(fd) => read_xattrs(fd).map_err(|e| ctx.io_err(&rel, e))?,
                    None => Vec::new(),
                };
                dirs.push(MadeDir { rel, md, xattrs });
            }
            FileKind::Regular => {
                if md.nlink > 1 {
                    let key = (md.layer, md.dev, md.ino);
                    if let Some(first) = inodes.get(&key) {
                        links.push((first.clone(), rel));
                        continue;
                    }
                    inodes.insert(key, rel.clone());
                }
                let Some(src) = src else {
                    return Err(ctx.io_err(&rel, errno(libc::EIO)));
                };
                send(Job {
                    parent,
                    name: name.as_os_str().as_bytes().to_vec(),
                    rel,
                    image_path: entry.path,
                    md,
                    src,
                })?;
            }
            FileKind::Symlink => {
                let target = md.symlink_target.clone().unwrap_or_default();
                let mut again = ctx.overwrite;
                loop {
                    match rustix::fs::symlinkat(&target, &*parent, name) {
                        Ok(()) => break,
                        Err(Errno::EXIST) if again => {
                            remove_existing(&parent, name).map_err(|e| ctx.io_err(&rel, e))?;
                            again = false;
                        }
                        Err(e) => return Err(ctx.io_err(&rel, e.into())),
                    }
                }
                set_meta_at(ctx, &parent, name, &md, false).map_err(|e| ctx.io_err(&rel, e))?;
                report.symlinks += 1;
            }
            FileKind::CharDevice | FileKind::BlockDevice | FileKind::Fifo | FileKind::Socket => {
                let ft = match md.kind {
                    FileKind::CharDevice => FileType::CharacterDevice,
                    FileKind::BlockDevice => FileType::BlockDevice,
                    FileKind::Fifo => FileType::Fifo,
                    _ => FileType::Socket,
                };
                let dev = rustix::fs::makedev(md.rdev_major, md.rdev_minor);
                let mut again = ctx.overwrite;
                loop {
                    match rustix::fs::mknodat(&*parent, name, ft, Mode::from_raw_mode(0o600), dev) {
                        Ok(()) => break,
                        Err(Errno::EXIST) if again => {
                            remove_existing(&parent, name).map_err(|e| ctx.io_err(&rel, e))?;
                            again = false;
                        }
                        // Not root (or root of a user namespace): devices cannot be made.
                        Err(Errno::PERM)
                            if matches!(md.kind, FileKind::CharDevice | FileKind::BlockDevice) =>
                        {
                            report.devices_skipped += 1;
                            break;
                        }
                        Err(e) => return Err(ctx.io_err(&rel, e.into())),
                    }
                }
                if rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                    set_meta_at(ctx, &parent, name, &md, true).map_err(|e| ctx.io_err(&rel, e))?;
                    report.special += 1;
                }
            }
        }
    }
    Ok((dirs, links))
}

/// Owner, mode (if `chmod`) and times of a symlink or special file, by name (they cannot be
/// opened for writing). The name was just made by this process in a parent that has no
/// symlink on its path.
fn set_meta_at(
    ctx: &Ctx<'_>,
    parent: &OwnedFd,
    name: &Path,
    md: &Metadata,
    chmod: bool,
) -> io::Result<()> {
    if ctx.owners == Owners::Set {
        let (uid, gid) = host_owner(&ctx.uid_map, &ctx.gid_map, md)?;
        rustix::fs::chownat(
            parent,
            name,
            Some(uid),
            Some(gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if chmod {
        // A FIFO or device: check it is still what was made before following the name.
        let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(errno(libc::ELOOP));
        }
        rustix::fs::chmodat(parent, name, Mode::from_raw_mode(md.mode), AtFlags::empty())?;
    }
    rustix::fs::utimensat(parent, name, &times(md), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// What [`write_tar`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TarReport {
    /// Tar entries written.
    pub entries: u64,
    /// Bytes of file content written.
    pub content_bytes: u64,
    /// Bytes written in all.
    pub bytes: u64,
    /// Sockets left out (tar cannot hold them).
    pub sockets_skipped: u64,
}

/// Writes the tree of `image` under `from` as one tar to `out`, in walk order (byte order
/// of names, depth first, parents first): `docker export` / `crane export` of the merged
/// root filesystem when `from` is `/` and `name` is `None`. Entry names are relative
/// (`etc/`, `etc/passwd`), under `name` when given (`podman cp IMAGE:/etc -` names them
/// `etc/...`); the starting directory itself is an entry only when `name` is given.
/// Hard links of one layer's inode are written as hard-link entries to the first name.
/// Owners are numeric (no user or group names), times are whole seconds, and extended
/// attributes become PAX `SCHILY.xattr.*` records. With `verify`, each file's size and
/// CRC-64 are checked against its layer's tar-split while it is written. Setting `cancel`
/// stops it (with `EINTR`) before the next entry. Write errors name `out_name` (the
/// user's path, or "standard output").
pub fn write_tar(
    image: &Image,
    from: &Path,
    name: Option<&[u8]>,
    out: &mut dyn Write,
    out_name: &Path,
    verify: bool,
    cancel: Option<&AtomicBool>,
) -> Result<TarReport> {
    use crate::tar::header::{EntryType, TarHeader};
    let rootfs = image.rootfs()?;
    let layers = image.layers()?;
    let mut crcs = Vec::with_capacity(layers.len());
    for l in &layers {
        crcs.push(if verify { crc_map(l)? } else { None });
    }
    let layer_ids = rootfs.layer_ids().to_vec();
    let wr = |e: io::Error| StorageError::io(out_name, e);
    let mut rep = TarReport::default();
    let mut inodes: HashMap<(usize, u64, u64), Vec<u8>> = HashMap::new();
    let mut start: Option<PathBuf> = None;
    let mut buf = vec![0u8; 256 << 10];
    // A single non-directory source.
    let top = rootfs.lstat(from)?;
    let mut walk = if top.kind == FileKind::Symlink {
        None
    } else {
        Some(rootfs.walk_from(from)?)
    };
    let mut single = if top.kind == FileKind::Symlink {
        Some((
            WalkEntryLite {
                path: from.to_path_buf(),
                metadata: top,
            },
            None,
        ))
    } else {
        None
    };
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(StorageError::io(out_name, errno(libc::EINTR)));
        }
        let (entry, src) = if let Some(s) = single.take() {
            s
        } else {
            match walk.as_mut().and_then(|w| w.next_with_source()) {
                None => break,
                Some(r) => {
                    let (e, s) = r?;
                    (
                        WalkEntryLite {
                            path: e.path,
                            metadata: e.metadata,
                        },
                        s,
                    )
                }
            }
        };
        let rel = match &start {
            None => {
                start = Some(entry.path.clone());
                Vec::new()
            }
            Some(s) => entry
                .path
                .strip_prefix(s)
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .unwrap_or_default(),
        };
        let mut tname = match name {
            Some(n) if rel.is_empty() => n.to_vec(),
            Some(n) => [n, b"/", &rel].concat(),
            None if rel.is_empty() => continue,
            None => rel,
        };
        let md = &entry.metadata;
        let et = match md.kind {
            FileKind::Regular => EntryType::Regular,
            FileKind::Directory => EntryType::Directory,
            FileKind::Symlink => EntryType::Symlink,
            FileKind::CharDevice => EntryType::CharDevice,
            FileKind::BlockDevice => EntryType::BlockDevice,
            FileKind::Fifo => EntryType::Fifo,
            FileKind::Socket => {
                rep.sockets_skipped += 1;
                continue;
            }
        };
        if et == EntryType::Directory {
            tname.push(b'/');
        }
        let mut h = TarHeader::new(tname.clone(), et);
        h.mode = md.mode;
        h.uid = md.uid.into();
        h.gid = md.gid.into();
        h.mtime = md.mtime;
        h.dev_major = md.rdev_major;
        h.dev_minor = md.rdev_minor;
        if let Some(t) = &md.symlink_target {
            h.link_target = t.as_os_str().as_bytes().to_vec();
        }
        let mut file = None;
        if et == EntryType::Regular {
            if md.nlink > 1 {
                let key = (md.layer, md.dev, md.ino);
                if let Some(first) = inodes.get(&key) {
                    h.entry_type = EntryType::HardLink;
                    h.link_target = first.clone();
                } else {
                    inodes.insert(key, tname.clone());
                }
            }
            if h.entry_type == EntryType::Regular {
                let s = src
                    .as_ref()
                    .ok_or_else(|| StorageError::io(&entry.path, errno(libc::EIO)))?;
                let f = s.open_file().map_err(|e| StorageError::ImagePath {
                    image: image.id().to_string(),
                    path: entry.path.display().to_string(),
                    error: e,
                })?;
                h.size = rustix::fs::fstat(&f)
                    .map_err(|e| StorageError::io(&entry.path, e.into()))?
                    .st_size as u64;
                if s.on_disk() {
                    h.xattrs =
                        read_xattrs(f.as_fd()).map_err(|e| StorageError::io(&entry.path, e))?;
                }
                file = Some(f);
            }
        } else if et == EntryType::Directory {
            if let Some(fd) = src.as_ref().and_then(|s| s.dir_fd()) {
                h.xattrs = read_xattrs(fd).map_err(|e| StorageError::io(&entry.path, e))?;
            }
        }
        h.xattrs.sort();
        let hb = h.to_bytes();
        out.write_all(&hb).map_err(wr)?;
        rep.bytes += hb.len() as u64;
        rep.entries += 1;
        if let Some(mut f) = file {
            let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
            let mut left = h.size;
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = match f.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(StorageError::io(
                            &entry.path,
                            io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while read"),
                        ));
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(StorageError::io(&entry.path, e)),
                };
                if verify {
                    digest.update(&buf[..n]);
                }
                out.write_all(&buf[..n]).map_err(wr)?;
                left -= n as u64;
            }
            let pad = crate::tar::header::padding(h.size) as usize;
            out.write_all(&[0u8; 512][..pad]).map_err(wr)?;
            rep.bytes += h.size + pad as u64;
            rep.content_bytes += h.size;
            if verify && md.size > 0 {
                let rel = entry.path.as_os_str().as_bytes();
                let rel = rel.strip_prefix(b"/").unwrap_or(rel);
                if let Some((size, crc)) = crcs
                    .get(md.layer)
                    .and_then(|m| m.as_ref())
                    .and_then(|m| m.get(rel))
                {
                    let layer = layer_ids.get(md.layer).cloned().unwrap_or_default();
                    if *size != h.size {
                        return Err(StorageError::Integrity {
                            layer,
                            file: entry.path.display().to_string(),
                            message: format!(
                                "file is {} bytes on disk, the tar records {size}",
                                h.size
                            ),
                        });
                    }
                    let got = digest.finalize();
                    if crc.is_some_and(|c| c != got) {
                        return Err(StorageError::Integrity {
                            layer,
                            file: entry.path.display().to_string(),
                            message: format!(
                                "content has CRC-64 {got:016x}, tar-split records {:016x}: the layer file is corrupted",
                                crc.unwrap_or_default()
                            ),
                        });
                    }
                }
            }
        }
    }
    out.write_all(&[0u8; 1024]).map_err(wr)?;
    rep.bytes += 1024;
    out.flush().map_err(wr)?;
    Ok(rep)
}

struct WalkEntryLite {
    path: PathBuf,
    metadata: Metadata,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootless_payload() {
        assert_eq!(rootless_xattr(0, 0), None);
        // uid 1000, gid "unchanged".
        assert_eq!(
            rootless_xattr(1000, 0).unwrap(),
            [0x08, 0xe8, 0x07, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f]
        );
        assert_eq!(rootless_xattr(1, 2).unwrap(), [0x08, 0x01, 0x10, 0x02]);
    }

    #[test]
    fn id_maps() {
        let m = |c, h, s| crate::IdMapping {
            container_id: c,
            host_id: h,
            size: s,
        };
        let map = [m(0, 100_000, 1000), m(1000, 300_000, 10)];
        assert_eq!(map_id(&[], 7, "uid").unwrap(), 7);
        assert_eq!(map_id(&map, 0, "uid").unwrap(), 100_000);
        assert_eq!(map_id(&map, 999, "uid").unwrap(), 100_999);
        assert_eq!(map_id(&map, 1000, "uid").unwrap(), 300_000);
        assert_eq!(map_id(&map, 1009, "uid").unwrap(), 300_009);
        let e = map_id(&map, 1010, "gid").unwrap_err().to_string();
        assert_eq!(e, "gid 1010 is not covered by the --gid-map ranges");
        // A range reaching past u32::MAX on the host side is an error, not a wrap.
        assert!(map_id(&[m(0, u32::MAX, 2)], 1, "uid").is_err());
    }

    #[test]
    fn xattr_filter() {
        for k in [
            "user.foo",
            "security.capability",
            "trusted.x",
            "security.ima",
        ] {
            assert!(keep_xattr(k.as_bytes()), "{k}");
        }
        for k in [
            "trusted.overlay.opaque",
            "user.overlay.opaque",
            "user.fuseoverlayfs.opaque",
            "user.containers.override_stat",
            "security.selinux",
            ROOTLESS_XATTR,
        ] {
            assert!(!keep_xattr(k.as_bytes()), "{k}");
        }
    }
}
