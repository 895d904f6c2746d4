//! c/storage's "naive diff" of a layer, computed without mounting anything.
//!
//! c/storage's overlay driver does not tar a layer's `diff` directory when its native-diff
//! probe fails, which it does whenever the kernel writes redirects (`redirect_dir`, implied by
//! `metacopy=on`: the Fedora/RHEL default). It then mounts the layer and its parent, compares
//! the two merged trees (`archive.ChangesDirs`) and writes the changed paths from the layer's
//! merged tree, sorted by path (`archive.ExportChanges`). This module does the same on a model
//! of the two merged trees built from the `diff` directories:
//!
//! * a metadata-only file (`overlay.metacopy` xattr) takes its metadata from the layer and its
//!   content from the first lower file that is not metadata-only, at the path the file's
//!   `overlay.redirect` names (absolute) or at the same path;
//! * a directory with `overlay.redirect` (a renamed directory) merges with the lower
//!   directory the redirect names (absolute, or relative to the parent's lower directory), so
//!   a renamed directory's full content is in the diff, and the old name is a deletion;
//! * a path is changed if mode, owner (mapped to container IDs), device number, modification
//!   time (equal when one side has no nanoseconds), size (not for directories), symlink target,
//!   `security.capability` or `user.*` xattrs differ; a changed directory's whole subtree is
//!   compared; a directory with changes below it is itself listed; a path only in the parent
//!   is a deletion, written as a `.wh.<name>` entry with mode 0 and the time of the export.
//!
//! Lookups follow the kernel's rules for the layers involved (whiteouts are 0/0 character
//! devices, opaque directories carry `overlay.opaque=y`), with `trusted.` or `user.` xattr
//! names. Origin file handles (`overlay.origin`) are not used: content is found by path, as
//! the kernel does without `index=on`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use rustix::fs::{FileType, Stat};

use crate::error::{Result, StorageError};
use crate::export::options::{ExportOptions, ExportReport, TargetWriter};
use crate::fsutil::{self, Follow};
use crate::overlay::{OVERLAY_XATTR_PREFIXES, keep_xattr_in_diff, to_container};
use crate::store::layer::Layer;
use crate::store::records::IdMapping;
use crate::tar::header::{BLOCK, EntryType, TarHeader, padding};

fn os(b: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(b))
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

fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// The overlay xattrs of one directory or regular file that matter for lookups.
#[derive(Default)]
struct OvlAttrs {
    opaque: bool,
    redirect: Option<Vec<u8>>,
    metacopy: bool,
}

/// Where a redirect sends the lookup in the layers below the one that carries it.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Redirect {
    /// From the root of each lower layer.
    Absolute(Vec<u8>),
    /// A name in the parent's directory of each lower layer.
    Relative(Vec<u8>),
}

/// A merged directory: the layer directories it is made of, top first (layer index, path).
#[derive(Clone, PartialEq, Eq, Debug)]
struct MDir {
    srcs: Vec<(usize, Vec<u8>)>,
}

/// A merged entry: where its metadata comes from, where a regular file's content comes from,
/// and (directories) the merged directory.
#[derive(Clone, Debug)]
struct MEnt {
    meta: (usize, Vec<u8>),
    st: Stat,
    data: Option<(usize, Vec<u8>)>,
    dir: Option<MDir>,
}

impl PartialEq for MEnt {
    fn eq(&self, o: &MEnt) -> bool {
        self.meta == o.meta && self.data == o.data && self.dir == o.dir
    }
}

struct Tree<'a> {
    layer: &'a Layer,
    /// Layer 0 is the layer itself, then its lowers, top first.
    dirs: Vec<(Dir, PathBuf)>,
}

/// A change, as `archive.Change`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Modify,
    Delete,
}

impl Tree<'_> {
    fn err(&self, k: usize, rel: &[u8], e: std::io::Error) -> StorageError {
        StorageError::io(self.dirs[k].1.join(os(rel)), e)
    }

    fn open_dir(&self, k: usize, rel: &[u8]) -> Result<Dir> {
        if rel.is_empty() {
            return self.dirs[k].0.try_clone().map_err(|e| self.err(k, rel, e));
        }
        fsutil::open_dir_nofollow(&self.dirs[k].0, os(rel)).map_err(|e| self.err(k, rel, e))
    }

    fn lstat(&self, k: usize, rel: &[u8]) -> Result<Option<Stat>> {
        match fsutil::lstat_at(&self.dirs[k].0, os(rel)) {
            Ok(st) => Ok(Some(st)),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.err(k, rel, e)),
        }
    }

    fn ovl_attrs(&self, k: usize, rel: &[u8], st: &Stat) -> Result<OvlAttrs> {
        let ft = FileType::from_raw_mode(st.st_mode);
        let vals = match ft {
            FileType::Directory => {
                let d = self.open_dir(k, rel)?;
                fsutil::fd_xattrs(&d).map_err(|e| self.err(k, rel, e))?
            }
            FileType::RegularFile => {
                let (f, _) = fsutil::open_regular(&self.dirs[k].0, os(rel), Follow::No)
                    .map_err(|e| self.err(k, rel, e))?;
                fsutil::fd_xattrs(&f).map_err(|e| self.err(k, rel, e))?
            }
            _ => return Ok(OvlAttrs::default()),
        };
        let mut a = OvlAttrs::default();
        for (name, v) in vals {
            let Some(rest) = OVERLAY_XATTR_PREFIXES
                .iter()
                .find_map(|p| name.strip_prefix(p.as_bytes()))
            else {
                continue;
            };
            match rest {
                b"opaque" => a.opaque |= v == b"y",
                b"redirect" => a.redirect = Some(v),
                b"metacopy" => a.metacopy = true,
                _ => {}
            }
        }
        Ok(a)
    }

    /// The path of `rel` (absolute redirect) in layer `k`, if every component above it is a
    /// plain directory there; `Err(true)` if a whiteout or non-directory stops the lookup.
    fn walk_abs(&self, k: usize, rel: &[u8]) -> Result<std::result::Result<(), bool>> {
        let mut p: Vec<u8> = Vec::new();
        let comps: Vec<&[u8]> = rel
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if *c == b".." || *c == b"." {
                return Ok(Err(true));
            }
            p = join(&p, c);
            match self.lstat(k, &p)? {
                None => return Ok(Err(false)),
                Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                Some(_) => return Ok(Err(true)),
            }
        }
        Ok(Ok(()))
    }

    /// Looks `name` up in the merged directory `d`, as the kernel does.
    fn lookup(&self, d: &MDir, name: &[u8]) -> Result<Option<MEnt>> {
        let Some(first) = d.srcs.first().map(|s| s.0) else {
            return Ok(None);
        };
        let mut found: Option<MEnt> = None;
        let mut redirect: Option<Redirect> = None;
        let mut need_data = false;
        for k in first..self.dirs.len() {
            let path = match &redirect {
                Some(Redirect::Absolute(r)) => {
                    match self.walk_abs(k, r)? {
                        Ok(()) => {}
                        Err(false) => continue,
                        Err(true) => break,
                    }
                    r.clone()
                }
                _ => {
                    let Some((_, p)) = d.srcs.iter().find(|s| s.0 == k) else {
                        continue;
                    };
                    match &redirect {
                        Some(Redirect::Relative(r)) => join(p, r),
                        _ => join(p, name),
                    }
                }
            };
            let Some(st) = self.lstat(k, &path)? else {
                continue;
            };
            if is_whiteout(&st) {
                break;
            }
            let ft = FileType::from_raw_mode(st.st_mode);
            match &mut found {
                None => {
                    let attrs = self.ovl_attrs(k, &path, &st)?;
                    let mut e = MEnt {
                        meta: (k, path.clone()),
                        st,
                        data: None,
                        dir: None,
                    };
                    if let Some(r) = &attrs.redirect {
                        redirect = Some(match r.strip_prefix(b"/") {
                            Some(abs) => Redirect::Absolute(abs.to_vec()),
                            None => Redirect::Relative(r.clone()),
                        });
                    }
                    match ft {
                        FileType::Directory => {
                            e.dir = Some(MDir {
                                srcs: vec![(k, path)],
                            });
                            let stop = attrs.opaque;
                            found = Some(e);
                            if stop {
                                break;
                            }
                        }
                        FileType::RegularFile if attrs.metacopy => {
                            need_data = true;
                            found = Some(e);
                        }
                        FileType::RegularFile => {
                            e.data = Some((k, path));
                            found = Some(e);
                            break;
                        }
                        _ => {
                            found = Some(e);
                            break;
                        }
                    }
                }
                Some(e) if e.dir.is_some() => {
                    if ft != FileType::Directory {
                        break;
                    }
                    let attrs = self.ovl_attrs(k, &path, &st)?;
                    if let Some(md) = &mut e.dir {
                        md.srcs.push((k, path));
                    }
                    if let Some(r) = &attrs.redirect {
                        redirect = Some(match r.strip_prefix(b"/") {
                            Some(abs) => Redirect::Absolute(abs.to_vec()),
                            None => Redirect::Relative(r.clone()),
                        });
                    }
                    if attrs.opaque {
                        break;
                    }
                }
                Some(e) => {
                    // A metadata-only file: its data is the first lower regular file that
                    // is not metadata-only itself.
                    if ft != FileType::RegularFile {
                        break;
                    }
                    let attrs = self.ovl_attrs(k, &path, &st)?;
                    if attrs.metacopy {
                        if let Some(r) = &attrs.redirect {
                            redirect = Some(match r.strip_prefix(b"/") {
                                Some(abs) => Redirect::Absolute(abs.to_vec()),
                                None => Redirect::Relative(r.clone()),
                            });
                        }
                        continue;
                    }
                    e.data = Some((k, path));
                    need_data = false;
                    break;
                }
            }
        }
        if need_data {
            if let Some(e) = &found {
                return Err(StorageError::layer(
                    self.layer.id(),
                    format!(
                        "{} is a metadata-only file (overlay.metacopy) and no lower layer has its content",
                        String::from_utf8_lossy(&e.meta.1)
                    ),
                ));
            }
        }
        Ok(found)
    }

    /// The names in the merged directory `d` (before lookups remove whited-out ones).
    fn names(&self, d: &MDir) -> Result<Vec<Vec<u8>>> {
        let mut names = std::collections::BTreeSet::new();
        for (k, p) in &d.srcs {
            let dir = self.open_dir(*k, p)?;
            for e in dir.entries().map_err(|e| self.err(*k, p, e))? {
                use std::os::unix::ffi::OsStrExt;
                let e = e.map_err(|e| self.err(*k, p, e))?;
                names.insert(e.file_name().as_bytes().to_vec());
            }
        }
        Ok(names.into_iter().collect())
    }

    fn children(&self, d: &MDir) -> Result<BTreeMap<Vec<u8>, MEnt>> {
        let mut out = BTreeMap::new();
        for n in self.names(d)? {
            if let Some(e) = self.lookup(d, &n)? {
                out.insert(n, e);
            }
        }
        Ok(out)
    }

    /// `security.capability` and the `user.*` xattrs (without `user.overlay.*`, hidden by
    /// the kernel when they are overlay's) of an entry, as `ChangesDirs` compares them.
    fn cmp_xattrs(&self, e: &MEnt) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (k, p) = &e.meta;
        let ft = FileType::from_raw_mode(e.st.st_mode);
        let all = match ft {
            FileType::Directory => {
                let d = self.open_dir(*k, p)?;
                fsutil::fd_xattrs(&d).map_err(|er| self.err(*k, p, er))?
            }
            FileType::RegularFile => {
                let (f, _) = fsutil::open_regular(&self.dirs[*k].0, os(p), Follow::No)
                    .map_err(|er| self.err(*k, p, er))?;
                fsutil::fd_xattrs(&f).map_err(|er| self.err(*k, p, er))?
            }
            _ => Vec::new(),
        };
        let mut v: Vec<_> = all
            .into_iter()
            .filter(|(n, _)| {
                n == b"security.capability"
                    || (n.starts_with(b"user.") && !n.starts_with(b"user.overlay."))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    fn link_target(&self, e: &MEnt) -> Result<Vec<u8>> {
        if FileType::from_raw_mode(e.st.st_mode) != FileType::Symlink {
            return Ok(Vec::new());
        }
        let (k, p) = &e.meta;
        let (dir, name) = match p.iter().rposition(|&c| c == b'/') {
            Some(i) => (self.open_dir(*k, &p[..i])?, &p[i + 1..]),
            None => (self.open_dir(*k, b"")?, &p[..]),
        };
        use std::os::unix::ffi::OsStringExt;
        fsutil::read_link_at(&dir, os(name))
            .map(|t| t.into_vec())
            .map_err(|er| self.err(*k, p, er))
    }
}

fn same_time(a: &Stat, b: &Stat) -> bool {
    a.st_mtime == b.st_mtime
        && (a.st_mtime_nsec == b.st_mtime_nsec || a.st_mtime_nsec == 0 || b.st_mtime_nsec == 0)
}

struct Differ<'a, 'b> {
    tree: &'b Tree<'a>,
    new_map: &'b [IdMapping],
    new_gmap: &'b [IdMapping],
    old_map: &'b [IdMapping],
    old_gmap: &'b [IdMapping],
    changes: Vec<(Vec<u8>, Kind, Option<MEnt>)>,
}

impl Differ<'_, '_> {
    fn ids(map: &[IdMapping], gmap: &[IdMapping], st: &Stat) -> (u32, u32) {
        match (to_container(map, st.st_uid), to_container(gmap, st.st_gid)) {
            (Some(u), Some(g)) => (u, g),
            _ => (st.st_uid, st.st_gid),
        }
    }

    fn differs(&self, new: &MEnt, old: &MEnt) -> Result<bool> {
        let (a, b) = (&old.st, &new.st);
        let is_dir = FileType::from_raw_mode(a.st_mode) == FileType::Directory;
        if a.st_mode != b.st_mode
            || Self::ids(self.old_map, self.old_gmap, a)
                != Self::ids(self.new_map, self.new_gmap, b)
            || a.st_rdev != b.st_rdev
            || !same_time(a, b)
            || (!is_dir && a.st_size != b.st_size)
        {
            return Ok(true);
        }
        Ok(self.tree.link_target(new)? != self.tree.link_target(old)?
            || self.tree.cmp_xattrs(new)? != self.tree.cmp_xattrs(old)?)
    }

    /// `addChanges` for the directory at `path` (new side `new`, old side `old`); returns
    /// nothing, appends to `self.changes`.
    fn dir(
        &mut self,
        path: &[u8],
        this: Option<&MEnt>,
        new: &MDir,
        old: Option<&MDir>,
        added: bool,
    ) -> Result<()> {
        let at_entry = self.changes.len();
        let new_children = self.tree.children(new)?;
        let mut old_children = match old {
            Some(o) => self.tree.children(o)?,
            None => BTreeMap::new(),
        };
        for (name, nc) in new_children {
            let p = join(path, &name);
            let oc = old_children.remove(&name);
            let mut child_added = false;
            match &oc {
                None => {
                    self.changes.push((p.clone(), Kind::Add, Some(nc.clone())));
                    child_added = true;
                }
                Some(oc) => {
                    if nc == *oc {
                        // The same files on both sides: nothing below can differ.
                        continue;
                    }
                    if self.differs(&nc, oc)? {
                        self.changes
                            .push((p.clone(), Kind::Modify, Some(nc.clone())));
                        child_added = true;
                    }
                }
            }
            if let Some(nd) = &nc.dir {
                let od = oc.as_ref().and_then(|o| o.dir.as_ref());
                self.dir(&p, Some(&nc), nd, od, child_added)?;
            }
        }
        for (name, _) in old_children {
            self.changes.push((join(path, &name), Kind::Delete, None));
        }
        if let Some(this) = this.filter(|_| self.changes.len() > at_entry && !added) {
            // c/storage lists a directory with changes below it (its metadata).
            self.changes
                .push((path.to_vec(), Kind::Modify, Some(this.clone())));
        }
        Ok(())
    }
}

/// True if c/storage diffs this layer by comparing mounted trees: the store's native-diff
/// probe failed (recorded in the run root, or implied by `metacopy=on` / `redirect_dir=on`
/// in `mountopt`), or the layer's directory has redirects or metadata-only files (which a
/// tar of `diff/` cannot represent). Only for stores without a mount program, whose layers
/// have a parent.
pub(crate) fn wanted(layer: &Layer) -> Result<bool> {
    let storage = layer.storage();
    let ov = storage.overlay_options();
    if ov.mount_program.is_some() || layer.parent_id().is_none() {
        return Ok(false);
    }
    let mountopt = ov.mountopt.clone().unwrap_or_default();
    if let Some(run) = &storage.config().runroot {
        let f = run
            .join("overlay")
            .join(format!("native-diff({mountopt})-false"));
        if f.exists() {
            return Ok(true);
        }
        let t = run
            .join("overlay")
            .join(format!("native-diff({mountopt})-true"));
        if t.exists() {
            return has_overlay_redirects(layer);
        }
    }
    if mountopt
        .split(',')
        .any(|o| o == "metacopy=on" || o == "redirect_dir=on")
    {
        return Ok(true);
    }
    has_overlay_redirects(layer)
}

/// Does the layer's `diff` hold a metadata-only file or a redirect?
fn has_overlay_redirects(layer: &Layer) -> Result<bool> {
    let (diff, dpath) = layer.diff_dir_with_path()?;
    let tree = Tree {
        layer,
        dirs: vec![(diff, dpath)],
    };
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(p) = stack.pop() {
        let d = tree.open_dir(0, &p)?;
        for e in d.entries().map_err(|e| tree.err(0, &p, e))? {
            use std::os::unix::ffi::OsStrExt;
            let e = e.map_err(|e| tree.err(0, &p, e))?;
            let c = join(&p, e.file_name().as_bytes());
            let Some(st) = tree.lstat(0, &c)? else {
                continue;
            };
            let ft = FileType::from_raw_mode(st.st_mode);
            if ft != FileType::Directory && ft != FileType::RegularFile {
                continue;
            }
            let a = tree.ovl_attrs(0, &c, &st)?;
            if a.metacopy || a.redirect.is_some() {
                return Ok(true);
            }
            if ft == FileType::Directory {
                stack.push(c);
            }
        }
    }
    Ok(false)
}

/// `ID -> name` from an `/etc/passwd`-style file (first name for an ID wins); empty if the
/// file cannot be read.
fn id_names(file: &str) -> HashMap<u32, Vec<u8>> {
    let mut m = HashMap::new();
    let Ok(b) = std::fs::read(file) else {
        return m;
    };
    for line in b.split(|&c| c == b'\n') {
        let f: Vec<&[u8]> = line.split(|&c| c == b':').collect();
        if f.len() < 3 || f[0].is_empty() || f[0].starts_with(b"#") {
            continue;
        }
        if let Some(id) = std::str::from_utf8(f[2]).ok().and_then(|s| s.parse().ok()) {
            m.entry(id).or_insert_with(|| f[0].to_vec());
        }
    }
    m
}

/// Writes c/storage's naive diff of `layer` against its parent to `w`.
pub(crate) fn generate(
    layer: &Layer,
    w: TargetWriter<'_>,
    name: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    let mut dirs = vec![layer.diff_dir_with_path()?];
    dirs.extend(layer.lower_diff_dirs_with_paths()?);
    let tree = Tree { layer, dirs };
    let parent = layer.parent()?;
    let (old_map, old_gmap) = match &parent {
        Some(p) => (p.uid_map().to_vec(), p.gid_map().to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    let n = tree.dirs.len();
    let new_root = MDir {
        srcs: (0..n).map(|k| (k, Vec::new())).collect(),
    };
    let old_root = MDir {
        srcs: (1..n).map(|k| (k, Vec::new())).collect(),
    };
    let mut differ = Differ {
        tree: &tree,
        new_map: layer.uid_map(),
        new_gmap: layer.gid_map(),
        old_map: &old_map,
        old_gmap: &old_gmap,
        changes: Vec::new(),
    };
    differ.dir(b"", None, &new_root, (n > 1).then_some(&old_root), false)?;
    let mut changes = std::mem::take(&mut differ.changes);
    changes.sort_by(|a, b| a.0.cmp(&b.0));

    let mut out = BufWriter::with_capacity(256 << 10, w);
    let mut written = 0u64;
    let mut files = 0u64;
    let mut seen: HashMap<(usize, u64, u64), Vec<u8>> = HashMap::new();
    let mut buf = vec![0u8; 256 << 10];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let oerr = |e: std::io::Error| StorageError::io(name, e);
    let users = id_names("/etc/passwd");
    let groups = id_names("/etc/group");
    for (path, kind, ent) in changes {
        let Some(e) = ent.filter(|_| kind != Kind::Delete) else {
            let (dir, base) = match path.iter().rposition(|&c| c == b'/') {
                Some(i) => (&path[..i], &path[i + 1..]),
                None => (&b""[..], &path[..]),
            };
            let mut h = TarHeader::new(join(dir, &[b".wh.", base].concat()), EntryType::Regular);
            h.mtime = now;
            let b = h.to_bytes();
            out.write_all(&b).map_err(oerr)?;
            written += b.len() as u64;
            continue;
        };
        let st = &e.st;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Socket {
            continue;
        }
        let mut h = TarHeader::new(path.clone(), EntryType::Regular);
        h.mode = st.st_mode & 0o177777;
        h.mtime = st.st_mtime;
        let uid = to_container(layer.uid_map(), st.st_uid);
        let gid = to_container(layer.gid_map(), st.st_gid);
        let (Some(uid), Some(gid)) = (uid, gid) else {
            return Err(StorageError::layer(
                layer.id(),
                format!(
                    "generating its tar: {}: owner {}:{} is not in the layer's ID map",
                    String::from_utf8_lossy(&path),
                    st.st_uid,
                    st.st_gid
                ),
            ));
        };
        h.uid = u64::from(uid);
        h.gid = u64::from(gid);
        // Go's archive/tar names the owner of the file as stat(2) shows it (the host IDs),
        // from the host's user and group databases.
        h.uname = users.get(&st.st_uid).cloned().unwrap_or_default();
        h.gname = groups.get(&st.st_gid).cloned().unwrap_or_default();
        match ft {
            FileType::Directory => {
                h.entry_type = EntryType::Directory;
                h.path.push(b'/');
            }
            FileType::RegularFile => h.size = st.st_size as u64,
            FileType::Symlink => {
                h.entry_type = EntryType::Symlink;
                h.link_target = tree.link_target(&e)?;
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
        if matches!(ft, FileType::Directory | FileType::RegularFile) {
            let (k, p) = &e.meta;
            let all = if ft == FileType::Directory {
                let d = tree.open_dir(*k, p)?;
                fsutil::fd_xattrs(&d).map_err(|er| tree.err(*k, p, er))?
            } else {
                let (f, _) = fsutil::open_regular(&tree.dirs[*k].0, os(p), Follow::No)
                    .map_err(|er| tree.err(*k, p, er))?;
                fsutil::fd_xattrs(&f).map_err(|er| tree.err(*k, p, er))?
            };
            h.xattrs = all
                .into_iter()
                .filter(|(n, _)| keep_xattr_in_diff(n))
                .collect();
            h.xattrs.sort();
        }
        let mut data = None;
        if ft != FileType::Directory && st.st_nlink > 1 {
            let key = (e.meta.0, st.st_dev, st.st_ino);
            if let Some(first) = seen.get(&key) {
                h.entry_type = EntryType::HardLink;
                h.link_target = first.clone();
                h.size = 0;
            } else {
                seen.insert(key, path.clone());
            }
        }
        if h.entry_type == EntryType::Regular && h.size > 0 {
            let (k, p) = e.data.clone().ok_or_else(|| {
                StorageError::layer(
                    layer.id(),
                    format!("{}: no content found", String::from_utf8_lossy(&path)),
                )
            })?;
            let (f, size) = fsutil::open_regular(&tree.dirs[k].0, os(&p), Follow::No)
                .map_err(|er| tree.err(k, &p, er))?;
            if size != h.size {
                return Err(StorageError::layer(
                    layer.id(),
                    format!(
                        "{}: the layer records {} bytes, its content in {} has {size}",
                        String::from_utf8_lossy(&path),
                        h.size,
                        tree.dirs[k].1.join(os(&p)).display()
                    ),
                ));
            }
            data = Some((f, k, p));
        }
        let b = h.to_bytes();
        out.write_all(&b).map_err(oerr)?;
        written += b.len() as u64;
        if let Some((mut f, k, p)) = data {
            let mut left = h.size;
            while left > 0 {
                let want = (buf.len() as u64).min(left) as usize;
                let got = f.read(&mut buf[..want]).map_err(|er| tree.err(k, &p, er))?;
                if got == 0 {
                    return Err(tree.err(
                        k,
                        &p,
                        std::io::Error::other("file shrank while being read"),
                    ));
                }
                out.write_all(&buf[..got]).map_err(oerr)?;
                left -= got as u64;
            }
            let pad = padding(h.size) as usize;
            out.write_all(&[0u8; BLOCK][..pad]).map_err(oerr)?;
            written += h.size + pad as u64;
            files += 1;
            if let Some(pr) = &opts.progress {
                pr(written);
            }
        }
    }
    out.write_all(&[0u8; 2 * BLOCK]).map_err(oerr)?;
    written += 2 * BLOCK as u64;
    out.flush().map_err(oerr)?;
    Ok(ExportReport {
        layer: layer.id().to_string(),
        bytes: written,
        files,
        digest: None,
        reproducible: false,
        zero_copied_files: 0,
    })
}
