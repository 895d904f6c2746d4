//! [`RootFs`]: an image's merged root filesystem, read from its layers' `diff` directories
//! without mounting anything.
//!
//! The view follows the overlay rules (format doc section 7), accepting every on-disk form in
//! every layer:
//!
//! * a name is looked up from the top layer down; the first layer that has it decides what it
//!   is;
//! * a whiteout hides the name in lower layers: a character device 0/0, or a regular file
//!   `.wh.<name>` (AUFS form, kept by fuse-overlayfs stores);
//! * an opaque directory hides the lower layers' contents of that directory: xattr
//!   `trusted.overlay.opaque`, `user.overlay.opaque` or `user.fuseoverlayfs.opaque` = `y`, or
//!   a `.wh..wh..opq` file inside it;
//! * names starting with `.wh.` are never shown;
//! * a directory merges with the directories of the same name below it, down to the first
//!   layer where the name is not a directory (or is whited out, or the directory is opaque);
//!   a non-directory hides everything below it.
//!
//! Symlinks are resolved inside the image: the image root is `/` (like `chroot`), absolute
//! targets start there and `..` never climbs above it; more than 40 symlinks in one
//! resolution fail with `ELOOP`, as on Linux.
//!
//! Every file is reached through the layers' directory handles, one component at a time
//! (`fstatat`, `openat2(RESOLVE_BENEATH)` with `O_NOFOLLOW`); no absolute path is built and
//! no symlink is ever followed by the kernel.
//!
//! Layers stored flat by composefs-backed stores (`diff/` holding only file contents, named
//! by digest) are read through their zstd:chunked table of contents instead: names, types,
//! owners, modes, times and link targets come from the TOC, contents from `diff/<2>/<62>`.
//!
//! Metadata is the layers' own (owner, mode, times). In stores with `force_mask`, the real
//! owner, mode and type are read from the xattr `user.containers.override_stat` when present.
//! Layers with UID/GID mappings (rare for image layers) are reported as stored on disk.
//!
//! ```no_run
//! use std::io::Read;
//! # fn main() -> composefs_storage::Result<()> {
//! let storage = composefs_storage::Storage::discover()?;
//! let rootfs = storage.find_image("alpine")?.rootfs()?;
//! let mut release = String::new();
//! rootfs.open("/etc/os-release")?.read_to_string(&mut release).ok();
//! for entry in rootfs.read_dir("/etc")? {
//!     println!("{:?} {}", entry.name, entry.kind.name());
//! }
//! for entry in rootfs.walk() {
//!     let entry = entry?;
//!     println!("{} {:o} {}:{}", entry.path.display(), entry.metadata.mode,
//!              entry.metadata.uid, entry.metadata.gid);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::Dir;
use rustix::fs::{FileType, OFlags, Stat};

use crate::error::{Result, StorageError};
use crate::fsutil::{self, Follow};
use crate::image::Image;
use crate::toc::{TocRef, TocTree};

/// Most symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINKS: usize = 40;

const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
const OPAQUE_FILE: &str = ".wh..wh..opq";
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OVERRIDE_XATTR: &str = "user.containers.override_stat";
/// Buffer for `getdents64`.
const DIRENT_BUF: usize = 32 << 10;

/// The type of a file in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A FIFO (named pipe).
    Fifo,
    /// A Unix socket.
    Socket,
}

impl FileKind {
    fn from_file_type(ft: FileType) -> Option<FileKind> {
        Some(match ft {
            FileType::RegularFile => FileKind::Regular,
            FileType::Directory => FileKind::Directory,
            FileType::Symlink => FileKind::Symlink,
            FileType::CharacterDevice => FileKind::CharDevice,
            FileType::BlockDevice => FileKind::BlockDevice,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
            _ => return None,
        })
    }

    /// The character `ls -l` prints for this type (`-`, `d`, `l`, `c`, `b`, `p`, `s`).
    pub fn ls_char(self) -> char {
        match self {
            FileKind::Regular => '-',
            FileKind::Directory => 'd',
            FileKind::Symlink => 'l',
            FileKind::CharDevice => 'c',
            FileKind::BlockDevice => 'b',
            FileKind::Fifo => 'p',
            FileKind::Socket => 's',
        }
    }

    /// A lower-case name: `file`, `dir`, `symlink`, `char`, `block`, `fifo`, `socket`.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Regular => "file",
            FileKind::Directory => "dir",
            FileKind::Symlink => "symlink",
            FileKind::CharDevice => "char",
            FileKind::BlockDevice => "block",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
        }
    }
}

/// Metadata of a file in the image, as the image defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// The file type.
    pub kind: FileKind,
    /// Permission bits, including set-user-ID, set-group-ID and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner UID, as the image defines it. For a rootless store read by its user from outside
    /// podman's user namespace, the host's subordinate IDs are mapped back the way rootless
    /// podman maps them (the user is 0, the `/etc/subuid` ranges follow from 1).
    pub uid: u32,
    /// Owner GID (mapped back like `uid`).
    pub gid: u32,
    /// Size in bytes (for symlinks, the length of the target; 0 for devices).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Link count of the file in its layer.
    pub nlink: u64,
    /// Inode number of the file in its layer: hard links of one layer share `(dev, ino)`.
    pub ino: u64,
    /// Device of the file system holding the layer.
    pub dev: u64,
    /// Major number of a device file.
    pub rdev_major: u32,
    /// Minor number of a device file.
    pub rdev_minor: u32,
    /// The target of a symlink, as stored.
    pub symlink_target: Option<PathBuf>,
    /// The layer the file comes from, as an index into [`Image::layers`] (0 = base layer).
    /// For a directory merged from several layers, the top-most one.
    pub layer: usize,
}

/// An entry of a directory listing ([`RootFs::read_dir`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirEntry {
    /// The file name.
    pub name: OsString,
    /// The file type.
    pub kind: FileKind,
    /// The layer the entry comes from (index into [`Image::layers`], 0 = base).
    pub layer: usize,
}

/// One file found by [`RootFs::walk`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WalkEntry {
    /// Its path in the image, starting with `/`.
    pub path: PathBuf,
    /// Its metadata (symlinks are not followed).
    pub metadata: Metadata,
}

/// A directory of the merged view: the layer directories that make it up, top first, each
/// with its layer's index (0 = base).
type Merged = Vec<(usize, LDir)>;

/// One layer's directory: on disk, or (for a layer stored flat, as composefs stores do) a
/// directory node of the tree read from the layer's table of contents.
#[derive(Debug, Clone)]
pub(crate) enum LDir {
    Disk(Arc<Dir>),
    Toc(TocRef, usize),
}

/// The `stat` of a node of a flat layer's tree. The inode number is the node's index plus
/// one (hard links share it); the device is 0.
fn toc_stat(t: &TocTree, n: usize) -> Stat {
    let node = &t.nodes[n];
    // SAFETY: `Stat` is a plain C struct of integers, for which all-zero bytes are a valid
    // value.
    let mut st: Stat = unsafe { std::mem::zeroed() };
    st.st_mode = (node.kind.as_raw_mode() | node.mode) as _;
    st.st_uid = node.uid as _;
    st.st_gid = node.gid as _;
    st.st_size = node.size as _;
    st.st_mtime = node.mtime as _;
    st.st_mtime_nsec = node.mtime_nsec as _;
    st.st_nlink = node.nlink as _;
    st.st_ino = (node.ino as u64 + 1) as _;
    st.st_rdev = rustix::fs::makedev(node.rdev_major, node.rdev_minor) as _;
    st
}

impl LDir {
    /// `lstat` of `name` in this directory; `None` if it does not exist.
    pub(crate) fn lstat(&self, name: &[u8]) -> io::Result<Option<Stat>> {
        match self {
            LDir::Disk(d) => lstat_at(d, name),
            LDir::Toc(t, n) => Ok(t.child(*n, name).map(|c| toc_stat(t, c))),
        }
    }

    /// `fstat` of the directory itself.
    pub(crate) fn fstat(&self) -> io::Result<Stat> {
        match self {
            LDir::Disk(d) => Ok(rustix::fs::fstat(&**d)?),
            LDir::Toc(t, n) => Ok(toc_stat(t, *n)),
        }
    }

    pub(crate) fn is_opaque(&self) -> io::Result<bool> {
        match self {
            LDir::Disk(d) => is_opaque(d),
            LDir::Toc(t, n) => Ok(t.child(*n, OPAQUE_FILE.as_bytes()).is_some()),
        }
    }

    /// The subdirectory `name` (never through a symlink).
    pub(crate) fn open_dir(&self, name: &[u8]) -> io::Result<LDir> {
        match self {
            LDir::Disk(d) => Ok(LDir::Disk(Arc::new(fsutil::open_dir_nofollow(
                &**d,
                Path::new(os(name)),
            )?))),
            LDir::Toc(t, n) => match t.child(*n, name) {
                Some(c) if t.nodes[c].kind == FileType::Directory => {
                    Ok(LDir::Toc(Arc::clone(t), c))
                }
                Some(_) => Err(errno(libc::ENOTDIR)),
                None => Err(errno(libc::ENOENT)),
            },
        }
    }

    pub(crate) fn read_link(&self, name: &[u8]) -> io::Result<OsString> {
        match self {
            LDir::Disk(d) => read_link_at(d, name),
            LDir::Toc(t, n) => match t.child(*n, name) {
                Some(c) if t.nodes[c].kind == FileType::Symlink => {
                    Ok(OsString::from_vec(t.nodes[c].target.clone()))
                }
                Some(_) => Err(errno(libc::EINVAL)),
                None => Err(errno(libc::ENOENT)),
            },
        }
    }

    /// Opens the regular file `name` for reading.
    pub(crate) fn open_file(&self, name: &[u8]) -> io::Result<File> {
        match self {
            LDir::Disk(d) => Ok(fsutil::open_regular(&**d, Path::new(os(name)), Follow::No)?.0),
            LDir::Toc(t, n) => match t.child(*n, name) {
                Some(c) if t.nodes[c].kind == FileType::RegularFile => t.open(c),
                Some(c) if t.nodes[c].kind == FileType::Directory => Err(errno(libc::EISDIR)),
                Some(_) => Err(errno(libc::ELOOP)),
                None => Err(errno(libc::ENOENT)),
            },
        }
    }

    /// The directory's own handle, for xattrs (disk only).
    pub(crate) fn disk(&self) -> Option<&Dir> {
        match self {
            LDir::Disk(d) => Some(d),
            LDir::Toc(..) => None,
        }
    }
}

/// A name in a merged directory: where it is, before opening anything.
struct Child {
    name: Vec<u8>,
    kind: FileKind,
    /// Position (in the parent's [`Merged`]) of the layer that decides what the name is.
    top: usize,
    /// Positions of the layers whose directories of that name merge (directories only).
    dirs: Vec<usize>,
}

enum Resolved {
    Dir {
        path: Vec<u8>,
        merged: Merged,
    },
    Other {
        path: Vec<u8>,
        parent: Merged,
        top: usize,
        name: Vec<u8>,
        st: Box<Stat>,
    },
}

/// The merged root filesystem of an image.
///
/// ```no_run
/// use std::io::Read;
/// # fn main() -> composefs_storage::Result<()> {
/// let storage = composefs_storage::Storage::discover()?;
/// let rootfs = storage.find_image("alpine")?.rootfs()?;
/// let md = rootfs.stat("/bin/sh")?;                 // symlinks followed inside the image
/// println!("{:o} {}:{} from layer {}", md.mode, md.uid, md.gid, rootfs.layer_ids()[md.layer]);
/// let mut motd = String::new();
/// rootfs.open("/etc/motd")?.read_to_string(&mut motd).ok();
/// for entry in rootfs.walk_from("/etc")? {
///     println!("{}", entry?.path.display());
/// }
/// # Ok(())
/// # }
/// ```
///
/// Created by [`Image::rootfs`]. It holds directory handles on the image's layers and, like
/// a layer export, the shared locks of the layer stores they belong to, taken after checking
/// the layers are still there: c/storage writers cannot delete the layers while a `RootFs`
/// exists (a `podman rmi` of the image waits), so drop it when done.
#[derive(Debug)]
pub struct RootFs {
    image: String,
    layer_ids: Vec<String>,
    root: Merged,
    rules: MetaRules,
    _locks: Vec<crate::lock::SharedLock>,
}

pub(crate) fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

pub(crate) fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

pub(crate) fn is_whiteout_name(name: &[u8]) -> bool {
    name.starts_with(WHITEOUT_PREFIX)
}

fn lstat_at(dir: &Dir, name: &[u8]) -> io::Result<Option<Stat>> {
    match fsutil::lstat_at(dir, Path::new(os(name))) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn is_whiteout_dev(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Is this layer directory opaque (xattr or `.wh..wh..opq` inside)?
fn is_opaque(dir: &Dir) -> io::Result<bool> {
    if fsutil::fd_xattr_values(dir, &OPAQUE_XATTRS)?
        .iter()
        .any(|v| v.as_deref() == Some(b"y"))
    {
        return Ok(true);
    }
    Ok(lstat_at(dir, OPAQUE_FILE.as_bytes())?.is_some())
}

/// The `user.containers.override_stat` of a file or directory, if set.
fn read_override(fd: impl AsFd) -> io::Result<Option<Vec<u8>>> {
    Ok(fsutil::fd_xattr_values(fd, &[OVERRIDE_XATTR])?
        .pop()
        .flatten())
}

/// Applies `uid:gid:octalmode[:type]` to `md`. Malformed values are an error.
fn apply_override(md: &mut Metadata, value: &[u8]) -> std::result::Result<(), String> {
    let s = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_string())?;
    let bad = || format!("{OVERRIDE_XATTR}={s:?} is not uid:gid:mode[:type]");
    let mut parts = s.trim_end_matches('\0').splitn(4, ':');
    let uid = parts.next().and_then(|p| p.parse::<u32>().ok());
    let gid = parts.next().and_then(|p| p.parse::<u32>().ok());
    let mode = parts.next().and_then(|p| u32::from_str_radix(p, 8).ok());
    let (Some(uid), Some(gid), Some(mode)) = (uid, gid, mode) else {
        return Err(bad());
    };
    md.uid = uid;
    md.gid = gid;
    md.mode = mode & 0o7777;
    let mut kind = if mode & 0o170000 != 0 {
        FileKind::from_file_type(FileType::from_raw_mode(mode))
    } else {
        None
    };
    if let Some(t) = parts.next() {
        let dev = |rest: &str| -> Option<(u32, u32)> {
            let (a, b) = rest.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        kind = Some(match t {
            "file" => FileKind::Regular,
            "dir" => FileKind::Directory,
            "symlink" => FileKind::Symlink,
            "pipe" => FileKind::Fifo,
            "socket" => FileKind::Socket,
            _ => {
                let (k, rest) = if let Some(r) = t.strip_prefix("block-") {
                    (FileKind::BlockDevice, r)
                } else if let Some(r) = t.strip_prefix("char-") {
                    (FileKind::CharDevice, r)
                } else {
                    return Err(bad());
                };
                let (ma, mi) = dev(rest).ok_or_else(bad)?;
                md.rdev_major = ma;
                md.rdev_minor = mi;
                k
            }
        });
    }
    if let Some(k) = kind {
        // The on-disk file is what holds the data; only a regular file can stand in for
        // another type, never a directory for a non-directory or the reverse.
        let on_disk_dir = md.kind == FileKind::Directory;
        if (k == FileKind::Directory) == on_disk_dir {
            if k != md.kind && matches!(k, FileKind::CharDevice | FileKind::BlockDevice) {
                md.size = 0;
            }
            md.kind = k;
        }
    }
    Ok(())
}

pub(crate) fn split_path(path: &[u8]) -> VecDeque<Vec<u8>> {
    path.split(|&c| c == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| c.to_vec())
        .collect()
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    v.extend_from_slice(parent);
    if !parent.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn path_buf(b: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(b))
}

/// What a name read from one layer directory is ([`for_each_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameClass {
    /// A file of the layer, of this type.
    Entry(FileKind),
    /// A whiteout in overlay form: a character device 0/0 of that name.
    WhiteoutDevice,
    /// A whiteout in AUFS form: a `.wh.<name>` file; the name given is `<name>`.
    WhiteoutFile,
}

/// Calls `f` with each name of one layer directory, classified: files, and whiteouts in
/// both forms (an AUFS `.wh.<name>` file is given as `<name>`). `.` and `..` and the
/// `.wh..wh.*` markers (the opaque marker `.wh..wh..opq` and AUFS's own metadata) are left
/// out. For `fresh` and `buf`, see [`list_merged`].
pub(crate) fn for_each_name(
    ldir: &LDir,
    fresh: bool,
    buf: &mut Vec<MaybeUninit<u8>>,
    mut f: impl FnMut(&[u8], NameClass),
) -> io::Result<()> {
    let whiteout_name = |name: &[u8], f: &mut dyn FnMut(&[u8], NameClass)| {
        if !name.starts_with(b".wh..wh.") && name.len() > WHITEOUT_PREFIX.len() {
            f(&name[WHITEOUT_PREFIX.len()..], NameClass::WhiteoutFile);
        }
    };
    let dir = match ldir {
        LDir::Disk(d) => d,
        LDir::Toc(t, n) => {
            for (name, &c) in &t.nodes[*n].children {
                if is_whiteout_name(name) {
                    whiteout_name(name, &mut f);
                    continue;
                }
                if let Some(kind) = FileKind::from_file_type(t.nodes[c].kind) {
                    f(name, NameClass::Entry(kind));
                }
            }
            return Ok(());
        }
    };
    if buf.len() < DIRENT_BUF {
        buf.resize(DIRENT_BUF, MaybeUninit::uninit());
    }
    let own;
    let fd = if fresh {
        dir.as_fd()
    } else {
        own = fsutil::openat2_beneath(&**dir, Path::new("."), OFlags::RDONLY | OFlags::DIRECTORY)?;
        own.as_fd()
    };
    let mut rd = rustix::fs::RawDir::new(fd, &mut buf[..]);
    while let Some(e) = rd.next() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if is_whiteout_name(name) {
            whiteout_name(name, &mut f);
            continue;
        }
        let mut ft = e.file_type();
        let mut whiteout = false;
        if ft == FileType::Unknown || ft == FileType::CharacterDevice {
            match lstat_at(dir, name)? {
                Some(st) => {
                    ft = FileType::from_raw_mode(st.st_mode);
                    whiteout = is_whiteout_dev(&st);
                }
                None => continue, // removed meanwhile
            }
        }
        if whiteout {
            f(name, NameClass::WhiteoutDevice);
        } else if let Some(kind) = FileKind::from_file_type(ft) {
            f(name, NameClass::Entry(kind));
        }
    }
    Ok(())
}

/// Lists the names of a merged directory, sorted by bytes, with whiteouts and opaque
/// directories applied.
///
/// With `fresh`, the directory fds were just opened by the caller and are not shared: they
/// are read directly (their offset moves). Otherwise each is reopened (`openat(".")`) so that
/// shared handles are never read concurrently. `buf` is a reusable buffer.
fn list_merged(
    merged: &Merged,
    fresh: bool,
    buf: &mut Vec<MaybeUninit<u8>>,
) -> io::Result<Vec<Child>> {
    // name → (child, closed); a `None` child is a deleted name.
    let mut map: BTreeMap<Vec<u8>, (Option<Child>, bool)> = BTreeMap::new();
    let mut whiteouts: Vec<Vec<u8>> = Vec::new();
    let add = |map: &mut BTreeMap<Vec<u8>, (Option<Child>, bool)>,
               name: &[u8],
               kind: FileKind,
               whiteout: bool,
               pos: usize| {
        match map.get_mut(name) {
            None => {
                let child = (!whiteout).then(|| Child {
                    name: name.to_vec(),
                    kind,
                    top: pos,
                    dirs: if kind == FileKind::Directory {
                        vec![pos]
                    } else {
                        Vec::new()
                    },
                });
                let closed = whiteout || kind != FileKind::Directory;
                map.insert(name.to_vec(), (child, closed));
            }
            Some((child, closed)) => {
                if !*closed {
                    if kind == FileKind::Directory && !whiteout {
                        if let Some(c) = child {
                            c.dirs.push(pos);
                        }
                    } else {
                        *closed = true;
                    }
                }
            }
        }
    };
    for (pos, (_, ldir)) in merged.iter().enumerate() {
        whiteouts.clear();
        for_each_name(ldir, fresh, buf, |name, class| match class {
            NameClass::Entry(kind) => add(&mut map, name, kind, false, pos),
            NameClass::WhiteoutDevice => add(&mut map, name, FileKind::CharDevice, true, pos),
            NameClass::WhiteoutFile => whiteouts.push(name.to_vec()),
        })?;
        // AUFS whiteouts apply after the whole directory is read: a name both present and
        // whited out in one layer is this layer's, hiding the layers below.
        for w in &whiteouts {
            match map.get_mut(w.as_slice()) {
                None => {
                    map.insert(w.clone(), (None, true));
                }
                Some((_, closed)) => *closed = true,
            }
        }
    }
    Ok(map.into_values().filter_map(|(c, _)| c).collect())
}

/// Looks `name` up in a merged directory, layer by layer.
fn lookup(merged: &Merged, name: &[u8]) -> io::Result<Option<(Child, Stat)>> {
    if is_whiteout_name(name) {
        return Ok(None);
    }
    let mut found: Option<(Child, Stat)> = None;
    let wh_name = [WHITEOUT_PREFIX, name].concat();
    for (pos, (_, dir)) in merged.iter().enumerate() {
        if let Some(st) = dir.lstat(name)? {
            let kind = FileKind::from_file_type(FileType::from_raw_mode(st.st_mode));
            match &mut found {
                None => {
                    let Some(kind) = kind else { return Ok(None) };
                    if is_whiteout_dev(&st) {
                        return Ok(None);
                    }
                    let dir_here = kind == FileKind::Directory;
                    found = Some((
                        Child {
                            name: name.to_vec(),
                            kind,
                            top: pos,
                            dirs: if dir_here { vec![pos] } else { Vec::new() },
                        },
                        st,
                    ));
                    if !dir_here {
                        break;
                    }
                }
                Some((c, _)) => {
                    if kind == Some(FileKind::Directory) {
                        c.dirs.push(pos);
                    } else {
                        break;
                    }
                }
            }
        }
        if pos + 1 < merged.len() && dir.lstat(&wh_name)?.is_some() {
            break;
        }
    }
    Ok(found)
}

/// Opens the layer directories that make up the merged directory `child` of `parent`,
/// stopping below an opaque one.
fn open_child_dirs(parent: &Merged, child: &Child) -> io::Result<Merged> {
    let mut out = Vec::with_capacity(child.dirs.len());
    for (i, &pos) in child.dirs.iter().enumerate() {
        let (layer, dir) = &parent[pos];
        let sub = dir.open_dir(&child.name)?;
        let more = i + 1 < child.dirs.len();
        let opaque = more && sub.is_opaque()?;
        out.push((*layer, sub));
        if opaque {
            break;
        }
    }
    Ok(out)
}

/// How the metadata of a layer's files is read in a store: owners mapped back for a
/// rootless store read from outside its user namespace, `force_mask` overrides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetaRules {
    pub(crate) force_mask: bool,
    /// For a rootless store read from outside its user namespace: host → image IDs.
    id_maps: Option<&'static (crate::userns::IdMap, crate::userns::IdMap)>,
}

impl MetaRules {
    pub(crate) fn of(storage: &crate::Storage) -> MetaRules {
        MetaRules {
            force_mask: storage.overlay_options().force_mask.is_some(),
            id_maps: if storage.config().rootless {
                crate::userns::rootless_id_maps()
            } else {
                None
            },
        }
    }

    /// Metadata of the non-directory `name` in the layer directory `dir`.
    pub(crate) fn entry_metadata(
        &self,
        layer: usize,
        ldir: &LDir,
        name: &[u8],
        st: &Stat,
    ) -> io::Result<Metadata> {
        let ft = FileType::from_raw_mode(st.st_mode);
        let target = if ft == FileType::Symlink {
            Some(ldir.read_link(name)?)
        } else {
            None
        };
        let Some(dir) = ldir.disk() else {
            return self.metadata_from(layer, st, target, false, None::<&File>);
        };
        if self.force_mask && ft == FileType::RegularFile {
            // Only regular files (and directories) can carry user.* xattrs.
            match fsutil::openat2_beneath(
                dir,
                Path::new(os(name)),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            ) {
                Ok(fd) => return self.metadata_from(layer, st, target, true, Some(&fd)),
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
                Err(e) => return Err(e),
            }
        }
        self.metadata_from(layer, st, target, true, None::<&File>)
    }

    /// `on_disk`: `st` is the `stat` of a file in a `diff/` directory (whose owners are host
    /// IDs), not metadata from a table of contents (whose owners are the image's already).
    pub(crate) fn metadata_from(
        &self,
        layer: usize,
        st: &Stat,
        target: Option<OsString>,
        on_disk: bool,
        fd: Option<impl AsFd>,
    ) -> io::Result<Metadata> {
        let ft = FileType::from_raw_mode(st.st_mode);
        let kind = FileKind::from_file_type(ft)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "file of an unknown type"))?;
        let dev = matches!(kind, FileKind::CharDevice | FileKind::BlockDevice);
        let mut md = Metadata {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: if dev { 0 } else { st.st_size as u64 },
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            nlink: st.st_nlink,
            ino: st.st_ino,
            dev: st.st_dev,
            rdev_major: if dev {
                rustix::fs::major(st.st_rdev)
            } else {
                0
            },
            rdev_minor: if dev {
                rustix::fs::minor(st.st_rdev)
            } else {
                0
            },
            symlink_target: target.map(PathBuf::from),
            layer,
        };
        if let Some((uids, gids)) = self.id_maps.filter(|_| on_disk) {
            md.uid = uids.to_inside(md.uid);
            md.gid = gids.to_inside(md.gid);
        }
        if self.force_mask {
            if let Some(fd) = fd {
                if let Some(v) = read_override(fd)? {
                    apply_override(&mut md, &v)
                        .map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))?;
                }
            }
        }
        Ok(md)
    }
}

/// The root directory of one layer: its `diff/` on disk, or for a layer stored flat
/// (composefs) the tree of its table of contents; with the `diff/` path for messages.
pub(crate) fn layer_root(l: &crate::Layer) -> Result<(LDir, PathBuf)> {
    if l.is_flat()? {
        // composefs: names and metadata from the table of contents.
        let t = Arc::new(TocTree::load(l)?);
        let path = l.diff_dir_with_path()?.1;
        Ok((LDir::Toc(t, 0), path))
    } else {
        let (d, path) = l.diff_dir_with_path()?;
        Ok((LDir::Disk(Arc::new(d)), path))
    }
}

impl RootFs {
    /// Opens the merged root filesystem of `image` (its layers' `diff` directories).
    pub fn new(image: &Image) -> Result<RootFs> {
        let layers = image.layers()?;
        crate::hidden_opaque::warn_once(image.id(), &layers);
        // The shared locks of each layer store involved (once each), with the layers checked
        // to be still present under them.
        let mut locks = Vec::new();
        let mut stores = std::collections::HashSet::new();
        for l in &layers {
            if stores.insert(l.store_root().to_path_buf()) {
                locks.extend(l.lock_and_check()?);
            } else {
                l.lock_and_check()?;
            }
        }
        let mut root: Merged = Vec::with_capacity(layers.len());
        let mut layer_ids = Vec::with_capacity(layers.len());
        for l in &layers {
            layer_ids.push(l.id().to_string());
        }
        for (i, l) in layers.iter().enumerate().rev() {
            let (dir, path) = layer_root(l)?;
            let more = i > 0;
            let opaque = more && dir.is_opaque().map_err(|e| StorageError::io(&path, e))?;
            root.push((i, dir));
            if opaque {
                break;
            }
        }
        Ok(RootFs {
            image: image.id().to_string(),
            layer_ids,
            root,
            rules: MetaRules::of(image.storage()),
            _locks: locks,
        })
    }

    /// The image ID.
    pub fn image_id(&self) -> &str {
        &self.image
    }

    /// The IDs of the image's layers, base first (what [`Metadata::layer`] indexes).
    pub fn layer_ids(&self) -> &[String] {
        &self.layer_ids
    }

    fn err(&self, path: &[u8], source: io::Error) -> StorageError {
        StorageError::ImagePath {
            image: self.image.clone(),
            path: String::from_utf8_lossy(path).into_owned(),
            source,
        }
    }

    /// Resolves `path` from the image root; intermediate symlinks are always followed, the
    /// last one only if `follow`.
    fn resolve(&self, path: &[u8], follow: bool) -> io::Result<Resolved> {
        let mut todo = split_path(path);
        let must_dir = path.ends_with(b"/") && !todo.is_empty();
        let follow = follow || must_dir;
        let mut stack: Vec<(Vec<u8>, Merged)> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            if c == b"." {
                continue;
            }
            if c == b".." {
                stack.pop();
                continue;
            }
            let cur = stack.last().map(|s| &s.1).unwrap_or(&self.root);
            let (child, st) = lookup(cur, &c)?.ok_or_else(|| errno(libc::ENOENT))?;
            let last = todo.is_empty();
            match child.kind {
                FileKind::Directory => {
                    let merged = open_child_dirs(cur, &child)?;
                    stack.push((c, merged));
                }
                FileKind::Symlink if !last || follow => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(errno(libc::ELOOP));
                    }
                    let target = cur[child.top].1.read_link(&c)?;
                    let target = target.as_bytes();
                    if target.is_empty() {
                        return Err(errno(libc::ENOENT));
                    }
                    if target.starts_with(b"/") {
                        stack.clear();
                    }
                    for t in split_path(target).into_iter().rev() {
                        todo.push_front(t);
                    }
                }
                _ if !last => return Err(errno(libc::ENOTDIR)),
                _ if must_dir => return Err(errno(libc::ENOTDIR)),
                _ => {
                    let mut p = Vec::new();
                    for (n, _) in &stack {
                        p = join(&p, n);
                    }
                    p = join(&p, &c);
                    return Ok(Resolved::Other {
                        path: p,
                        parent: cur.clone(),
                        top: child.top,
                        name: c,
                        st: Box::new(st),
                    });
                }
            }
        }
        let mut p = b"/".to_vec();
        for (n, _) in &stack {
            p = join(&p, n);
        }
        let merged = stack
            .pop()
            .map(|s| s.1)
            .unwrap_or_else(|| self.root.clone());
        Ok(Resolved::Dir { path: p, merged })
    }

    fn metadata_of(&self, r: &Resolved) -> io::Result<Metadata> {
        match r {
            Resolved::Dir { merged, .. } => {
                let Some((layer, dir)) = merged.first() else {
                    return Err(errno(libc::ENOENT));
                };
                let st = dir.fstat()?;
                self.metadata_from(*layer, &st, None, dir.disk().is_some(), dir.disk())
            }
            Resolved::Other {
                parent,
                top,
                name,
                st,
                ..
            } => {
                let (layer, dir) = &parent[*top];
                self.entry_metadata(*layer, dir, name, st)
            }
        }
    }

    fn entry_metadata(
        &self,
        layer: usize,
        ldir: &LDir,
        name: &[u8],
        st: &Stat,
    ) -> io::Result<Metadata> {
        self.rules.entry_metadata(layer, ldir, name, st)
    }

    fn metadata_from(
        &self,
        layer: usize,
        st: &Stat,
        target: Option<OsString>,
        on_disk: bool,
        fd: Option<impl AsFd>,
    ) -> io::Result<Metadata> {
        self.rules.metadata_from(layer, st, target, on_disk, fd)
    }

    /// Metadata of `path`, not following a symlink in the last component (`lstat`).
    pub fn lstat(&self, path: impl AsRef<Path>) -> Result<Metadata> {
        let p = path.as_ref().as_os_str().as_bytes();
        self.resolve(p, false)
            .and_then(|r| self.metadata_of(&r))
            .map_err(|e| self.err(p, e))
    }

    /// Metadata of `path`, following symlinks inside the image (`stat`).
    pub fn stat(&self, path: impl AsRef<Path>) -> Result<Metadata> {
        let p = path.as_ref().as_os_str().as_bytes();
        self.resolve(p, true)
            .and_then(|r| self.metadata_of(&r))
            .map_err(|e| self.err(p, e))
    }

    /// The absolute image path `path` resolves to, with every symlink followed
    /// (`realpath` inside the image).
    pub fn canonicalize(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        let p = path.as_ref().as_os_str().as_bytes();
        match self.resolve(p, true).map_err(|e| self.err(p, e))? {
            Resolved::Dir { path, .. } | Resolved::Other { path, .. } => Ok(path_buf(path)),
        }
    }

    /// The target of the symlink `path` (`readlink`); `EINVAL` if it is not a symlink.
    pub fn read_link(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        let p = path.as_ref().as_os_str().as_bytes();
        match self.resolve(p, false).map_err(|e| self.err(p, e))? {
            Resolved::Other {
                parent,
                top,
                name,
                st,
                ..
            } if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => parent[top]
                .1
                .read_link(&name)
                .map(PathBuf::from)
                .map_err(|e| self.err(p, e)),
            _ => Err(self.err(p, errno(libc::EINVAL))),
        }
    }

    /// The entries of the directory `path` (symlinks followed), sorted by name (bytes),
    /// without `.` and `..`.
    pub fn read_dir(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>> {
        let p = path.as_ref().as_os_str().as_bytes();
        let merged = match self.resolve(p, true).map_err(|e| self.err(p, e))? {
            Resolved::Dir { merged, .. } => merged,
            Resolved::Other { .. } => return Err(self.err(p, errno(libc::ENOTDIR))),
        };
        let children = list_merged(&merged, false, &mut Vec::new()).map_err(|e| self.err(p, e))?;
        let mut out = Vec::with_capacity(children.len());
        for c in children {
            let (layer, dir) = &merged[c.top];
            let mut kind = c.kind;
            if self.rules.force_mask && kind == FileKind::Regular {
                let Some(st) = dir.lstat(&c.name).map_err(|e| self.err(p, e))? else {
                    continue;
                };
                kind = self
                    .entry_metadata(*layer, dir, &c.name, &st)
                    .map_err(|e| self.err(&join(p, &c.name), e))?
                    .kind;
            }
            out.push(DirEntry {
                name: OsString::from_vec(c.name),
                kind,
                layer: *layer,
            });
        }
        Ok(out)
    }

    /// Opens the regular file `path` (symlinks followed inside the image) for reading: the
    /// file of the top-most layer that has it. Directories, devices, FIFOs and sockets are
    /// refused.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<File> {
        let p = path.as_ref().as_os_str().as_bytes();
        match self.resolve(p, true).map_err(|e| self.err(p, e))? {
            Resolved::Dir { .. } => Err(self.err(p, errno(libc::EISDIR))),
            Resolved::Other {
                parent, top, name, ..
            } => {
                let f = parent[top].1.open_file(&name).map_err(|e| self.err(p, e))?;
                Ok(f)
            }
        }
    }

    /// Walks the whole image, depth-first in lexical (byte) order of each directory's names,
    /// starting with `/` itself.
    pub fn walk(&self) -> Walk<'_> {
        match self.walk_from("/") {
            Ok(w) => w,
            Err(e) => Walk {
                tree: Tree::empty(self),
                first: Some(Err(e)),
                first_source: None,
            },
        }
    }

    /// Walks the tree under `path` (symlinks in `path` followed), starting with `path` itself
    /// (reported under its canonical name).
    pub fn walk_from(&self, path: impl AsRef<Path>) -> Result<Walk<'_>> {
        let p = path.as_ref().as_os_str().as_bytes();
        let r = self.resolve(p, true).map_err(|e| self.err(p, e))?;
        let md = self.metadata_of(&r).map_err(|e| self.err(p, e))?;
        let first_source = match &r {
            Resolved::Dir { merged, .. } => merged.first().map(|(_, d)| Source {
                dir: d.clone(),
                name: None,
            }),
            Resolved::Other {
                parent, top, name, ..
            } => Some(Source {
                dir: parent[*top].1.clone(),
                name: Some(name.clone()),
            }),
        };
        let (tree, path) = Tree::start(self, r, p)?;
        Ok(Walk {
            tree,
            first: Some(Ok(WalkEntry {
                path: path_buf(path),
                metadata: md,
            })),
            first_source,
        })
    }

    /// Like [`RootFs::walk_from`], but yields only each path's type and layer: no file is
    /// `stat`ed and no symlink read (only directories are opened), which is what listing
    /// names needs.
    pub fn walk_names(&self, path: impl AsRef<Path>) -> Result<WalkNames<'_>> {
        let p = path.as_ref().as_os_str().as_bytes();
        let r = self.resolve(p, true).map_err(|e| self.err(p, e))?;
        let (kind, layer) = match &r {
            Resolved::Dir { merged, .. } => (
                FileKind::Directory,
                merged.first().map(|m| m.0).unwrap_or_default(),
            ),
            Resolved::Other { .. } => {
                let md = self.metadata_of(&r).map_err(|e| self.err(p, e))?;
                (md.kind, md.layer)
            }
        };
        let (tree, path) = Tree::start(self, r, p)?;
        Ok(WalkNames {
            tree,
            first: Some(Ok(NameEntry {
                path: path_buf(path),
                kind,
                layer,
            })),
        })
    }
}

fn read_link_at(dir: &Dir, name: &[u8]) -> io::Result<OsString> {
    fsutil::read_link_at(dir, Path::new(os(name)))
}

struct Frame {
    path: Vec<u8>,
    merged: Merged,
    children: std::vec::IntoIter<Child>,
}

/// The depth-first walk both [`Walk`] and [`WalkNames`] are made of.
struct Tree<'a> {
    fs: &'a RootFs,
    stack: Vec<Frame>,
    buf: Vec<MaybeUninit<u8>>,
}

/// One name reached by [`Tree::step`].
struct Step {
    path: Vec<u8>,
    layer: usize,
    kind: FileKind,
    /// The layer directory holding it, and its name there.
    dir: LDir,
    name: Vec<u8>,
    /// Its `lstat`, if asked for.
    st: Option<Stat>,
    /// For a directory: its top-most layer directory.
    top_dir: Option<LDir>,
}

impl<'a> Tree<'a> {
    fn empty(fs: &'a RootFs) -> Tree<'a> {
        Tree {
            fs,
            stack: Vec::new(),
            buf: Vec::new(),
        }
    }

    fn start(fs: &'a RootFs, r: Resolved, p: &[u8]) -> Result<(Tree<'a>, Vec<u8>)> {
        let mut tree = Tree::empty(fs);
        let path = match r {
            Resolved::Dir { path, merged } => {
                let children =
                    list_merged(&merged, false, &mut tree.buf).map_err(|e| fs.err(p, e))?;
                tree.stack.push(Frame {
                    path: path.clone(),
                    merged,
                    children: children.into_iter(),
                });
                path
            }
            Resolved::Other { path, .. } => path,
        };
        Ok((tree, path))
    }

    fn step(&mut self, stat: bool) -> Option<Result<Step>> {
        loop {
            let frame = self.stack.last_mut()?;
            let Some(child) = frame.children.next() else {
                self.stack.pop();
                continue;
            };
            let path = join(&frame.path, &child.name);
            let (layer, dir) = &frame.merged[child.top];
            let (layer, dir) = (*layer, dir.clone());
            if child.kind == FileKind::Directory {
                let merged = match open_child_dirs(&frame.merged, &child) {
                    Ok(m) => m,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(e) => return Some(Err(self.fs.err(&path, e))),
                };
                let top_dir = merged.first().map(|m| m.1.clone());
                let st = match (&top_dir, stat) {
                    (Some(d), true) => match d.fstat() {
                        Ok(st) => Some(st),
                        Err(e) => return Some(Err(self.fs.err(&path, e))),
                    },
                    _ => None,
                };
                // The directories were just opened: read them through their own fds.
                let children = match list_merged(&merged, true, &mut self.buf) {
                    Ok(c) => c,
                    Err(e) => return Some(Err(self.fs.err(&path, e))),
                };
                self.stack.push(Frame {
                    path: path.clone(),
                    merged,
                    children: children.into_iter(),
                });
                return Some(Ok(Step {
                    path,
                    layer,
                    kind: child.kind,
                    dir,
                    name: child.name,
                    st,
                    top_dir,
                }));
            }
            let st = if stat {
                match dir.lstat(&child.name) {
                    Ok(Some(st)) => Some(st),
                    Ok(None) => continue, // removed meanwhile
                    Err(e) => return Some(Err(self.fs.err(&path, e))),
                }
            } else {
                None
            };
            return Some(Ok(Step {
                path,
                layer,
                kind: child.kind,
                dir,
                name: child.name,
                st,
                top_dir: None,
            }));
        }
    }
}

/// Iterator over a tree of the image with each file's metadata ([`RootFs::walk`]). An error
/// about one file or directory is returned in its place; the walk then goes on with the next
/// name.
pub struct Walk<'a> {
    tree: Tree<'a>,
    first: Option<Result<WalkEntry>>,
    first_source: Option<Source>,
}

impl std::fmt::Debug for Walk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walk")
            .field("image", &self.tree.fs.image)
            .field("depth", &self.tree.stack.len())
            .finish()
    }
}

impl Iterator for Walk<'_> {
    type Item = Result<WalkEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_source().map(|r| r.map(|(entry, _)| entry))
    }
}

/// Where a file found by a walk lives: its layer directory and its name there (or, for a
/// directory, its top-most layer directory itself). Crate-internal, for unpacking.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    dir: LDir,
    name: Option<Vec<u8>>,
}

impl Source {
    /// True if the file is in a layer stored on disk (not a flat layer's table of contents).
    pub(crate) fn on_disk(&self) -> bool {
        self.dir.disk().is_some()
    }

    /// Opens the regular file for reading (never through a symlink).
    pub(crate) fn open_file(&self) -> io::Result<File> {
        match &self.name {
            Some(n) => self.dir.open_file(n),
            None => Err(errno(libc::EISDIR)),
        }
    }

    /// For a directory of a layer stored on disk: its open handle.
    pub(crate) fn dir_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match (&self.name, self.dir.disk()) {
            (None, Some(d)) => Some(d.as_fd()),
            _ => None,
        }
    }
}

impl Walk<'_> {
    /// The next entry with where it lives in its layer.
    pub(crate) fn next_with_source(&mut self) -> Option<Result<(WalkEntry, Option<Source>)>> {
        if let Some(first) = self.first.take() {
            let src = self.first_source.take();
            return Some(first.map(|e| (e, src)));
        }
        let step = match self.tree.step(true)? {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let fs = self.tree.fs;
        let Some(st) = &step.st else {
            return Some(Err(fs.err(&step.path, errno(libc::EIO))));
        };
        let md = match &step.top_dir {
            Some(d) => fs.metadata_from(step.layer, st, None, d.disk().is_some(), d.disk()),
            None => fs.entry_metadata(step.layer, &step.dir, &step.name, st),
        };
        let source = match step.top_dir {
            Some(d) => Source { dir: d, name: None },
            None => Source {
                dir: step.dir,
                name: Some(step.name),
            },
        };
        Some(match md {
            Ok(metadata) => Ok((
                WalkEntry {
                    path: path_buf(step.path),
                    metadata,
                },
                Some(source),
            )),
            Err(e) => Err(fs.err(&step.path, e)),
        })
    }
}

/// A path found by [`RootFs::walk_names`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NameEntry {
    /// Its path in the image, starting with `/`.
    pub path: PathBuf,
    /// Its type.
    pub kind: FileKind,
    /// The layer it comes from (index into [`Image::layers`], 0 = base).
    pub layer: usize,
}

/// Iterator over the paths of a tree of the image ([`RootFs::walk_names`]), in the same
/// order as [`Walk`].
pub struct WalkNames<'a> {
    tree: Tree<'a>,
    first: Option<Result<NameEntry>>,
}

impl std::fmt::Debug for WalkNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalkNames")
            .field("image", &self.tree.fs.image)
            .field("depth", &self.tree.stack.len())
            .finish()
    }
}

impl Iterator for WalkNames<'_> {
    type Item = Result<NameEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let step = match self.tree.step(false)? {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let fs = self.tree.fs;
        let mut kind = step.kind;
        if fs.rules.force_mask && kind == FileKind::Regular {
            // The stored type may stand in for another one (override_stat).
            let md = step
                .dir
                .lstat(&step.name)
                .and_then(|st| st.ok_or_else(|| errno(libc::ENOENT)))
                .and_then(|st| fs.entry_metadata(step.layer, &step.dir, &step.name, &st));
            match md {
                Ok(m) => kind = m.kind,
                Err(e) => return Some(Err(fs.err(&step.path, e))),
            }
        }
        Some(Ok(NameEntry {
            path: path_buf(step.path),
            kind,
            layer: step.layer,
        }))
    }
}

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
fn walk_order(a: &Path, b: &Path) -> std::cmp::Ordering {
    let ca = a.as_os_str().as_bytes().split(|&c| c == b'/');
    let cb = b.as_os_str().as_bytes().split(|&c| c == b'/');
    ca.cmp(cb)
}

/// True if the regular files `path` of `a` and `b` have different bytes.
fn content_differs(a: &RootFs, b: &RootFs, path: &Path) -> Result<bool> {
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
fn differs(a: &RootFs, ma: &Metadata, b: &RootFs, mb: &Metadata, path: &Path) -> Result<bool> {
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

impl Image {
    /// The image's merged root filesystem ([`RootFs`]), read from its layers without
    /// mounting.
    pub fn rootfs(&self) -> Result<RootFs> {
        RootFs::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_one_layer_directory() {
        let td = tempfile::tempdir().unwrap();
        for f in [
            "file",
            ".wh.gone",
            ".wh..wh..opq",
            ".wh..wh.plnk",
            ".wh.",
            "both",
            ".wh.both",
        ] {
            std::fs::write(td.path().join(f), b"").unwrap();
        }
        std::fs::create_dir(td.path().join("dir")).unwrap();
        std::os::unix::fs::symlink("file", td.path().join("link")).unwrap();
        let dir = Dir::open_ambient_dir(td.path(), cap_std::ambient_authority()).unwrap();
        // Opened for reading, as layer directories are (cap-std's own handle is O_PATH).
        let ldir = LDir::Disk(Arc::new(fsutil::open_dir(&dir, Path::new(".")).unwrap()));
        let mut got = Vec::new();
        for fresh in [false, true] {
            got.clear();
            for_each_name(&ldir, fresh, &mut Vec::new(), |n, c| {
                got.push((String::from_utf8(n.to_vec()).unwrap(), c))
            })
            .unwrap();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(
                got,
                [
                    ("both".to_string(), NameClass::Entry(FileKind::Regular)),
                    ("both".to_string(), NameClass::WhiteoutFile),
                    ("dir".to_string(), NameClass::Entry(FileKind::Directory)),
                    ("file".to_string(), NameClass::Entry(FileKind::Regular)),
                    ("gone".to_string(), NameClass::WhiteoutFile),
                    ("link".to_string(), NameClass::Entry(FileKind::Symlink)),
                ]
            );
        }
        assert!(ldir.is_opaque().unwrap());
    }

    fn md() -> Metadata {
        Metadata {
            kind: FileKind::Regular,
            mode: 0o700,
            uid: 0,
            gid: 0,
            size: 5,
            mtime: 0,
            mtime_nsec: 0,
            nlink: 1,
            ino: 1,
            dev: 1,
            rdev_major: 0,
            rdev_minor: 0,
            symlink_target: None,
            layer: 0,
        }
    }

    #[test]
    fn override_stat() {
        let mut m = md();
        apply_override(&mut m, b"1000:100:0644").unwrap();
        assert_eq!(
            (m.uid, m.gid, m.mode, m.kind),
            (1000, 100, 0o644, FileKind::Regular)
        );
        let mut m = md();
        apply_override(&mut m, b"0:0:020666:char-1-3").unwrap();
        assert_eq!(m.kind, FileKind::CharDevice);
        assert_eq!((m.rdev_major, m.rdev_minor, m.size), (1, 3, 0));
        let mut m = md();
        apply_override(&mut m, b"5:6:0755:pipe").unwrap();
        assert_eq!((m.kind, m.mode), (FileKind::Fifo, 0o755));
        // A regular file never becomes a directory.
        let mut m = md();
        apply_override(&mut m, b"0:0:0755:dir").unwrap();
        assert_eq!(m.kind, FileKind::Regular);
        for bad in [
            &b"x:0:0644"[..],
            b"0:0",
            b"0:0:9",
            b"0:0:0644:char-x",
            b"\xff",
        ] {
            assert!(apply_override(&mut md(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(
            split_path(b"//a/./b//"),
            [b"a".to_vec(), b".".to_vec(), b"b".to_vec()]
        );
        assert_eq!(join(b"/", b"a"), b"/a");
        assert_eq!(join(b"/a", b"b"), b"/a/b");
    }
}
