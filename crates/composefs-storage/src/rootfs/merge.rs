//! Merging the layers' directories by the overlay rules: listing a merged directory, looking
//! a name up from the top layer down, whiteouts and opaque directories, and the metadata rules
//! of the store (ID maps, override xattr).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::Dir;
use rustix::fs::{FileType, OFlags, Stat};

use crate::error::Result;
use crate::fsutil::{self, Follow};
use crate::overlay::{
    OPAQUE_MARKER, OPAQUE_XATTRS, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX, is_whiteout_device,
};
use crate::tar::toc::{TocRef, TocTree};

use super::node::*;

/// Buffer for `getdents64`.
pub(crate) const DIRENT_BUF: usize = 32 << 10;

/// A directory of the merged view: the layer directories that make it up, top first, each
/// with its layer's index (0 = base).
pub(crate) type Merged = Vec<(usize, LDir)>;

/// One layer's directory: on disk, or (for a layer stored flat, as composefs stores do) a
/// directory node of the tree read from the layer's table of contents.
#[derive(Debug, Clone)]
pub(crate) enum LDir {
    Disk(Arc<Dir>),
    Toc(TocRef, usize),
}

/// The `stat` of a node of a flat layer's tree. The inode number is the node's index plus
/// one (hard links share it); the device is 0.
pub(crate) fn toc_stat(t: &TocTree, n: usize) -> Stat {
    let node = &t.nodes[n];
    let mut st = crate::sys::zeroed_stat();
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
            LDir::Toc(t, n) => Ok(t.child(*n, OPAQUE_MARKER).is_some()),
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
pub(crate) struct Child {
    pub(crate) name: Vec<u8>,
    pub(crate) kind: FileKind,
    /// Position (in the parent's [`Merged`]) of the layer that decides what the name is.
    pub(crate) top: usize,
    /// Positions of the layers whose directories of that name merge (directories only).
    pub(crate) dirs: Vec<usize>,
}

pub(crate) fn lstat_at(dir: &Dir, name: &[u8]) -> io::Result<Option<Stat>> {
    match fsutil::lstat_at(dir, Path::new(os(name))) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Is this layer directory opaque (xattr or `.wh..wh..opq` inside)?
pub(crate) fn is_opaque(dir: &Dir) -> io::Result<bool> {
    if fsutil::fd_xattr_values(dir, &OPAQUE_XATTRS)?
        .iter()
        .any(|v| v.as_deref() == Some(b"y"))
    {
        return Ok(true);
    }
    Ok(lstat_at(dir, OPAQUE_MARKER)?.is_some())
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
        if !name.starts_with(WHITEOUT_META_PREFIX) && name.len() > WHITEOUT_PREFIX.len() {
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
                    whiteout = is_whiteout_device(&st);
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
pub(crate) fn list_merged(
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
pub(crate) fn lookup(merged: &Merged, name: &[u8]) -> io::Result<Option<(Child, Stat)>> {
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
                    if is_whiteout_device(&st) {
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
pub(crate) fn open_child_dirs(parent: &Merged, child: &Child) -> io::Result<Merged> {
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

pub(crate) fn read_link_at(dir: &Dir, name: &[u8]) -> io::Result<OsString> {
    fsutil::read_link_at(dir, Path::new(os(name)))
}
