//! [`RootFs`]: resolving paths in the merged tree (symlinks inside the image) and walking it.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};

use crate::error::{Result, StorageError};
use crate::store::image::Image;

use super::merge::*;
use super::node::*;

pub(crate) enum Resolved {
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
    pub(crate) image: String,
    pub(crate) layer_ids: Vec<String>,
    pub(crate) root: Merged,
    pub(crate) rules: MetaRules,
    pub(crate) _locks: Vec<crate::store::lock::SharedLock>,
}

impl RootFs {
    /// Opens the merged root filesystem of `image` (its layers' `diff` directories).
    pub fn new(image: &Image) -> Result<RootFs> {
        let layers = image.layers()?;
        super::hidden_opaque::warn_once(image.id(), &layers);
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

    pub(crate) fn err(&self, path: &[u8], source: io::Error) -> StorageError {
        StorageError::ImagePath {
            image: self.image.clone(),
            path: String::from_utf8_lossy(path).into_owned(),
            error: source,
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

pub(crate) struct Frame {
    path: Vec<u8>,
    merged: Merged,
    children: std::vec::IntoIter<Child>,
}

/// The depth-first walk both [`Walk`] and [`WalkNames`] are made of.
pub(crate) struct Tree<'a> {
    fs: &'a RootFs,
    stack: Vec<Frame>,
    buf: Vec<MaybeUninit<u8>>,
}

/// One name reached by [`Tree::step`].
pub(crate) struct Step {
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

impl Image {
    /// The image's merged root filesystem ([`RootFs`]), read from its layers without
    /// mounting.
    pub fn rootfs(&self) -> Result<RootFs> {
        RootFs::new(self)
    }
}
