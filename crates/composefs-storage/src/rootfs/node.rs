//! What a name in the merged view is: its kind and metadata (with the override xattr of
//! `force_mask` stores applied), and the byte-path helpers the other parts share.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use rustix::fs::FileType;

use crate::fsutil::{self};
use crate::overlay::{OVERRIDE_STAT_XATTR, WHITEOUT_PREFIX};

/// Most symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINKS: usize = 40;

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
    pub(crate) fn from_file_type(ft: FileType) -> Option<FileKind> {
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
    /// The layer the file comes from, as an index into [`Image::layers`](crate::Image::layers) (0 = base layer).
    /// For a directory merged from several layers, the top-most one.
    pub layer: usize,
}

/// An entry of a directory listing ([`RootFs::read_dir`](crate::RootFs::read_dir)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirEntry {
    /// The file name.
    pub name: OsString,
    /// The file type.
    pub kind: FileKind,
    /// The layer the entry comes from (index into [`Image::layers`](crate::Image::layers), 0 = base).
    pub layer: usize,
}

/// One file found by [`RootFs::walk`](crate::RootFs::walk).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WalkEntry {
    /// Its path in the image, starting with `/`.
    pub path: PathBuf,
    /// Its metadata (symlinks are not followed).
    pub metadata: Metadata,
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

/// The `user.containers.override_stat` of a file or directory, if set.
pub(crate) fn read_override(fd: impl AsFd) -> io::Result<Option<Vec<u8>>> {
    Ok(fsutil::fd_xattr_values(fd, &[OVERRIDE_STAT_XATTR])?
        .pop()
        .flatten())
}

/// Applies `uid:gid:octalmode[:type]` to `md`. Malformed values are an error.
pub(crate) fn apply_override(md: &mut Metadata, value: &[u8]) -> std::result::Result<(), String> {
    let s = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_string())?;
    let bad = || format!("{OVERRIDE_STAT_XATTR}={s:?} is not uid:gid:mode[:type]");
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

pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    v.extend_from_slice(parent);
    if !parent.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

pub(crate) fn path_buf(b: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(b))
}
