//! [`LayerFiles`]: the files of ONE layer (its own `diff/`), not the merged view of an image.
//!
//! A layer's `diff/` holds what the layer changes: new and changed files, and markers that
//! delete or hide what the layers below it have. Those markers are reported as such instead
//! of as files, in every on-disk form (the same rules [`crate::RootFs`] applies when it merges
//! layers; format doc section 7):
//!
//! * a **whiteout** deletes a name from the layers below: a character device 0/0 of that
//!   name (overlay form), or a regular file `.wh.<name>` (AUFS form, kept by fuse-overlayfs
//!   stores and in the tables of contents of composefs layers); both are reported as
//!   [`LayerEntryKind::Whiteout`] under `<name>`;
//! * an **opaque directory** hides the lower layers' contents of that directory: xattr
//!   `trusted.overlay.opaque`, `user.overlay.opaque` or `user.fuseoverlayfs.opaque` = `y`,
//!   or a `.wh..wh..opq` file inside it; reported by [`LayerStat::opaque`];
//! * the `.wh.` marker files themselves are never listed or opened as files.
//!
//! Paths are names inside the layer as its tar has them (`etc/passwd` or `/etc/passwd`; `.`
//! and `..` are applied lexically and never climb above the layer). No symlink is followed,
//! not even in the middle of a path (one layer alone does not know what a symlink's target
//! is in the image): a symlink where a directory is needed fails (`ENOTDIR` or `ELOOP`). To
//! resolve paths as the container sees them, use [`crate::RootFs`].
//!
//! Every file is reached through the layer's directory handle one component at a time with
//! `openat2(RESOLVE_BENEATH)` and `O_NOFOLLOW`. Layers stored flat by composefs stores are
//! read through their table of contents, as [`crate::RootFs`] reads them.
//!
//! ```no_run
//! use std::io::Read;
//! use composefs_storage::layer_files::LayerEntryKind;
//! # fn main() -> composefs_storage::Result<()> {
//! let storage = composefs_storage::Storage::discover()?;
//! let layer = storage.find_image("alpine")?.layers()?.pop().expect("a layer");
//! let files = layer.files()?;
//! for entry in files.read_dir("/etc")? {
//!     match entry.kind {
//!         LayerEntryKind::Whiteout(_) => println!("deletes {:?}", entry.name),
//!         LayerEntryKind::File(kind) => println!("{:?} {}", entry.name, kind.name()),
//!         _ => {}
//!     }
//! }
//! if files.stat("/etc")?.opaque {
//!     println!("/etc hides the lower layers' /etc");
//! }
//! let mut passwd = String::new();
//! files.open("/etc/passwd")?.read_to_string(&mut passwd).ok();
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{FileType, Stat};

use crate::error::{Result, StorageError};
use crate::overlay::{WHITEOUT_PREFIX, is_whiteout_device};
use crate::rootfs::{
    FileKind, LDir, MetaRules, Metadata, NameClass, errno, for_each_name, is_whiteout_name,
    layer_root, split_path,
};
use crate::store::layer::Layer;

/// The on-disk form of a whiteout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhiteoutForm {
    /// A character device 0/0 with the deleted name (native overlay).
    CharDevice,
    /// A regular file `.wh.<name>` beside where the deleted name was (AUFS form).
    AufsFile,
}

/// What a name is in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LayerEntryKind {
    /// A file of the layer (of any type), which the layer adds or changes.
    File(FileKind),
    /// A whiteout: the layer deletes the name from the layers below it.
    Whiteout(WhiteoutForm),
}

/// An entry of [`LayerFiles::read_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerDirEntry {
    /// The name (for an AUFS whiteout, the deleted name, without `.wh.`).
    pub name: OsString,
    /// What the name is in this layer.
    pub kind: LayerEntryKind,
}

/// What [`LayerFiles::stat`] reports about a path of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerStat {
    /// What the name is in this layer.
    pub kind: LayerEntryKind,
    /// For a directory: true if it is opaque, hiding the contents the layers below have
    /// under its name (an opaque xattr, a `.wh..wh..opq` inside, or a `.wh.<name>` beside
    /// it). False for everything else.
    pub opaque: bool,
    /// The metadata of the entry on disk (for a whiteout, of the device or of the `.wh.`
    /// file), with owners as the image defines them (see [`Metadata`]). Its `layer` is this
    /// layer's position in its chain (0 = a base layer), the index images using it give it.
    pub metadata: Metadata,
}

/// The files of one layer's `diff/` directory, with whiteout and opaque markers reported
/// as such: see the [module documentation](self). Created by [`Layer::files`].
///
/// Like [`crate::RootFs`], it holds the layer store's shared locks while it exists (a
/// `podman rmi` of the layer waits), so drop it when done.
#[derive(Debug)]
pub struct LayerFiles {
    layer: String,
    root: LDir,
    depth: usize,
    rules: MetaRules,
    _locks: Vec<crate::store::lock::SharedLock>,
}

/// Where a path of the layer is: the directory holding its last component and that name
/// (`None` for the layer root).
struct Found {
    parent: LDir,
    name: Option<Vec<u8>>,
}

impl LayerFiles {
    /// Opens the files of `layer` (checking, under the layer store's shared lock, that the
    /// layer is still there).
    pub fn new(layer: &Layer) -> Result<LayerFiles> {
        let locks = layer.lock_and_check()?;
        let depth = layer.chain()?.len() - 1;
        let (root, _) = layer_root(layer)?;
        Ok(LayerFiles {
            layer: layer.id().to_string(),
            root,
            depth,
            rules: MetaRules::of(layer.storage()),
            _locks: locks,
        })
    }

    /// The layer ID.
    pub fn layer_id(&self) -> &str {
        &self.layer
    }

    fn err(&self, path: &[u8], source: io::Error) -> StorageError {
        StorageError::LayerPath {
            layer: self.layer.clone(),
            path: String::from_utf8_lossy(path).into_owned(),
            error: source,
        }
    }

    /// Finds the directory holding `path`'s last component, one directory at a time, never
    /// through a symlink or a whited-out name.
    fn locate(&self, path: &[u8]) -> io::Result<Found> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for c in split_path(path) {
            match c.as_slice() {
                b"." => {}
                b".." => {
                    names.pop();
                }
                _ => names.push(c),
            }
        }
        let Some(last) = names.pop() else {
            return Ok(Found {
                parent: self.root.clone(),
                name: None,
            });
        };
        let mut dir = self.root.clone();
        for n in &names {
            if is_whiteout_name(n) {
                return Err(errno(libc::ENOENT));
            }
            match dir.lstat(n)? {
                None => return Err(errno(libc::ENOENT)),
                Some(st) if is_whiteout_device(&st) && dir.disk().is_some() => {
                    return Err(errno(libc::ENOENT));
                }
                Some(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                    return Err(errno(libc::ENOTDIR));
                }
                Some(_) => dir = dir.open_dir(n)?,
            }
        }
        Ok(Found {
            parent: dir,
            name: Some(last),
        })
    }

    /// What `path` is in this layer: a file of the layer (opaque or not, for a directory)
    /// or a whiteout. `ENOENT` if the layer has neither (the path may still exist in the
    /// image, from a lower layer). A symlink is reported, not followed.
    pub fn stat(&self, path: impl AsRef<Path>) -> Result<LayerStat> {
        let p = path.as_ref().as_os_str().as_bytes();
        self.stat_bytes(p).map_err(|e| self.err(p, e))
    }

    fn stat_bytes(&self, p: &[u8]) -> io::Result<LayerStat> {
        let found = self.locate(p)?;
        let Some(name) = found.name else {
            let st = self.root.fstat()?;
            let metadata = self.metadata_of_dir(&self.root, &st)?;
            return Ok(LayerStat {
                kind: LayerEntryKind::File(FileKind::Directory),
                opaque: self.root.is_opaque()?,
                metadata,
            });
        };
        if is_whiteout_name(&name) {
            return Err(errno(libc::ENOENT));
        }
        let wh_name = [WHITEOUT_PREFIX, &name].concat();
        match found.parent.lstat(&name)? {
            Some(st) if is_whiteout_device(&st) && found.parent.disk().is_some() => Ok(LayerStat {
                kind: LayerEntryKind::Whiteout(WhiteoutForm::CharDevice),
                opaque: false,
                metadata: self.entry_metadata(&found.parent, &name, &st)?,
            }),
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let sub = found.parent.open_dir(&name)?;
                let st = sub.fstat()?;
                let opaque = sub.is_opaque()? || found.parent.lstat(&wh_name)?.is_some();
                Ok(LayerStat {
                    kind: LayerEntryKind::File(FileKind::Directory),
                    opaque,
                    metadata: self.metadata_of_dir(&sub, &st)?,
                })
            }
            Some(st) => {
                let metadata = self.entry_metadata(&found.parent, &name, &st)?;
                Ok(LayerStat {
                    kind: LayerEntryKind::File(metadata.kind),
                    opaque: false,
                    metadata,
                })
            }
            None => match found.parent.lstat(&wh_name)? {
                Some(st) => Ok(LayerStat {
                    kind: LayerEntryKind::Whiteout(WhiteoutForm::AufsFile),
                    opaque: false,
                    metadata: self.entry_metadata(&found.parent, &wh_name, &st)?,
                }),
                None => Err(errno(libc::ENOENT)),
            },
        }
    }

    fn metadata_of_dir(&self, dir: &LDir, st: &Stat) -> io::Result<Metadata> {
        self.rules
            .metadata_from(self.depth, st, None, dir.disk().is_some(), dir.disk())
    }

    fn entry_metadata(&self, dir: &LDir, name: &[u8], st: &Stat) -> io::Result<Metadata> {
        self.rules.entry_metadata(self.depth, dir, name, st)
    }

    /// The entries of the directory `path` of this layer, sorted by name (bytes), without
    /// `.`, `..` and the `.wh..wh.*` markers; whiteouts are entries of kind
    /// [`LayerEntryKind::Whiteout`] under the name they delete (a name both present and
    /// whited out in the layer is given once, as the file, which replaces what the layers
    /// below have). `ENOENT` if the layer has no such directory.
    pub fn read_dir(&self, path: impl AsRef<Path>) -> Result<Vec<LayerDirEntry>> {
        let p = path.as_ref().as_os_str().as_bytes();
        self.read_dir_bytes(p).map_err(|e| self.err(p, e))
    }

    fn read_dir_bytes(&self, p: &[u8]) -> io::Result<Vec<LayerDirEntry>> {
        let found = self.locate(p)?;
        let dir = match &found.name {
            None => found.parent,
            Some(name) => {
                if is_whiteout_name(name) {
                    return Err(errno(libc::ENOENT));
                }
                match found.parent.lstat(name)? {
                    None => return Err(errno(libc::ENOENT)),
                    Some(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                        return Err(errno(libc::ENOTDIR));
                    }
                    Some(_) => found.parent.open_dir(name)?,
                }
            }
        };
        let mut files: std::collections::BTreeMap<Vec<u8>, LayerEntryKind> = Default::default();
        let mut whiteouts: Vec<(Vec<u8>, WhiteoutForm)> = Vec::new();
        for_each_name(&dir, false, &mut Vec::new(), |name, class| match class {
            NameClass::Entry(kind) => {
                files.insert(name.to_vec(), LayerEntryKind::File(kind));
            }
            NameClass::WhiteoutDevice => whiteouts.push((name.to_vec(), WhiteoutForm::CharDevice)),
            NameClass::WhiteoutFile => whiteouts.push((name.to_vec(), WhiteoutForm::AufsFile)),
        })?;
        for (name, form) in whiteouts {
            files.entry(name).or_insert(LayerEntryKind::Whiteout(form));
        }
        let mut out = Vec::with_capacity(files.len());
        for (name, mut kind) in files {
            if self.rules.force_mask && kind == LayerEntryKind::File(FileKind::Regular) {
                // The real type may be recorded in user.containers.override_stat.
                if let Some(st) = dir.lstat(&name)? {
                    kind = LayerEntryKind::File(self.entry_metadata(&dir, &name, &st)?.kind);
                }
            }
            out.push(LayerDirEntry {
                name: OsString::from_vec(name),
                kind,
            });
        }
        Ok(out)
    }

    /// Opens the regular file `path` of this layer for reading. A whiteout, or a name the
    /// layer does not have, is `ENOENT`; a directory `EISDIR`; a symlink (never followed)
    /// `ELOOP`; devices, FIFOs and sockets are refused.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<File> {
        let p = path.as_ref().as_os_str().as_bytes();
        self.open_bytes(p).map_err(|e| self.err(p, e))
    }

    fn open_bytes(&self, p: &[u8]) -> io::Result<File> {
        let found = self.locate(p)?;
        let Some(name) = found.name else {
            return Err(errno(libc::EISDIR));
        };
        if is_whiteout_name(&name) {
            return Err(errno(libc::ENOENT));
        }
        match found.parent.lstat(&name)? {
            None => Err(errno(libc::ENOENT)),
            Some(st) if is_whiteout_device(&st) && found.parent.disk().is_some() => {
                Err(errno(libc::ENOENT))
            }
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Err(errno(libc::EISDIR))
            }
            Some(_) => found.parent.open_file(&name),
        }
    }
}

impl Layer {
    /// The files of this layer alone (its own `diff/`), with whiteouts and opaque
    /// directories reported as such: see [`LayerFiles`]. Open it once to read many paths.
    pub fn files(&self) -> Result<LayerFiles> {
        LayerFiles::new(self)
    }

    /// Opens the regular file `path` of this layer alone ([`LayerFiles::open`]).
    pub fn open_file(&self, path: impl AsRef<Path>) -> Result<File> {
        self.files()?.open(path)
    }

    /// What `path` is in this layer alone ([`LayerFiles::stat`]).
    pub fn stat(&self, path: impl AsRef<Path>) -> Result<LayerStat> {
        self.files()?.stat(path)
    }

    /// The entries of the directory `path` of this layer alone ([`LayerFiles::read_dir`]).
    pub fn read_dir(&self, path: impl AsRef<Path>) -> Result<Vec<LayerDirEntry>> {
        self.files()?.read_dir(path)
    }
}
