//! Composefs images of stored images (feature `composefs`).
//!
//! [`build_filesystem`] builds an image's composefs tree from its layers' tar-split headers —
//! the "imported tar" view: names as bytes, modes, owners, mtimes (with PAX nanoseconds),
//! `SCHILY.xattr` extended attributes, hard links, devices, FIFOs and symlinks — with the
//! layers stacked by the OCI rules (whiteouts and opaque directories hide what lower layers
//! hold). Every regular file's content is read once through the layer's files (the same
//! fds [`crate::TarSplitFdStream`] gives), checked against the CRC-64 tar-split recorded for it,
//! and either inlined (up to [`INLINE_MAX`] bytes, as composefs does) or fs-verity hashed on
//! worker threads.
//!
//! The tree, the dumpfile, the EROFS writer and fs-verity are composefs-rs's own
//! ([`composefs`], re-exported here so that callers use the same version): [`erofs_image`]
//! writes the format version composefs-rs uses for OCI images (V1, the one
//! `mkcomposefs --min-version=1` writes), and [`image_digest`] is its fs-verity digest.
//!
//! # How the layers are stacked
//!
//! For each layer, base first:
//! 1. the layer's whiteouts (`.wh.NAME`) remove `NAME` from what the lower layers built, and
//!    its opaque markers (`.wh..wh..opq`) empty their directory of what the lower layers
//!    built — wherever the marker stands in the tar, so entries of the same layer are kept
//!    (c/storage and the OCI layer rules; composefs-oci 0.9 clears the directory where the
//!    marker appears, dropping the same layer's earlier entries);
//! 2. then the layer's entries are applied in tar order: a directory over a directory keeps
//!    the contents and takes the new metadata, anything else replaces what was there; hard
//!    links share the leaf of their target. A parent directory missing when a child comes
//!    (a layer whose directory entry follows its children) is created as `0755 0:0`, mtime 0,
//!    and takes the directory entry's metadata when that comes. Other `.wh..wh.*` entries
//!    (aufs metadata) are skipped.
//!
//! Then, with [`Transform::Oci`] (the default), composefs-rs's OCI transforms are applied as
//! its importer applies them: the root directory takes `/usr`'s metadata, `/run` is emptied,
//! and only the allowlisted xattrs (`security.capability`) are kept. An image without a `/usr`
//! directory (composefs-oci 0.9 refuses those) keeps the root metadata of its topmost layer's
//! root entry (`0755 0:0`, mtime 0 if no layer has one) and its `/run`; only the xattr
//! allowlist is applied.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

pub use ::composefs;
use ::composefs::fsverity::{FsVerityHashValue, FsVerityHasher};
use ::composefs::generic_tree::{LeafId, OciTransformOptions};
use ::composefs::tree::{Directory, FileSystem, Inode, LeafContent, RegularFile, Stat};

use crate::error::{Result, StorageError};
use crate::store::image::Image;
use crate::store::layer::Layer;
use crate::tar::header::{EntryType, TarHeader};
use crate::tar::stream::HeaderStream;
use crate::tar::tar_split::{FileGetter, Raw, TarSplitReader, gz_reader, open_locked};

/// Regular files of at most this many bytes are stored inline in the EROFS image; larger
/// ones are referenced by their fs-verity digest (composefs-rs's threshold).
pub const INLINE_MAX: usize = ::composefs::INLINE_CONTENT_MAX_V0;

/// The composefs EROFS format version written by [`erofs_image`]: composefs-rs's default for
/// OCI images (V1, as `mkcomposefs --min-version=1` writes).
pub const FORMAT_VERSION: ::composefs::erofs::format::FormatVersion =
    ::composefs::erofs::format::FormatVersion::V1;

/// What is done to the tree once the layers are stacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transform {
    /// composefs-rs's OCI transforms (see the [module documentation](self)).
    #[default]
    Oci,
    /// The layers as stacked, nothing changed.
    None,
}

/// Called once for every file whose content is not inlined, on a worker thread, with the
/// fs-verity digest, the open file (read-only, beneath the layer's diff directory; read it
/// with positioned reads, its offset is at the end) and its size. An error stops the build.
pub type ObjectSink<'a, H> = dyn Fn(&H, &File, u64) -> Result<()> + Sync + 'a;

/// Options of [`build_filesystem`].
pub struct BuildOptions<'a, H: FsVerityHashValue> {
    /// The transforms applied at the end.
    pub transform: Transform,
    /// Worker threads hashing file contents (0: one per CPU).
    pub threads: usize,
    /// Receives every non-inline file (to store it as an object).
    pub sink: Option<&'a ObjectSink<'a, H>>,
    /// Told the number of content bytes read, as they are read (from any thread).
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl<H: FsVerityHashValue> Default for BuildOptions<'_, H> {
    fn default() -> Self {
        BuildOptions {
            transform: Transform::Oci,
            threads: 0,
            sink: None,
            progress: None,
        }
    }
}

/// Builds the composefs tree of `image` from its layers (base first).
pub fn build_filesystem<H: FsVerityHashValue>(
    image: &Image,
    options: &BuildOptions<'_, H>,
) -> Result<FileSystem<H>> {
    let layers = image.layers()?;
    build_from_layers(image.id(), &layers, options)
}

/// Builds the composefs tree of a stack of layers (base first); `name` names the result in
/// errors.
pub fn build_from_layers<H: FsVerityHashValue>(
    name: &str,
    layers: &[Layer],
    options: &BuildOptions<'_, H>,
) -> Result<FileSystem<H>> {
    let threads = crate::pool::threads(options.threads);
    let failed = AtomicBool::new(false);
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 8);
    let job_rx = Mutex::new(job_rx);
    let (res_tx, res_rx) = mpsc::channel::<(LeafId, u64, Result<H>)>();

    let mut fs: FileSystem<H> = FileSystem::new(implicit_dir_stat());
    let outcome = std::thread::scope(|s| {
        for _ in 0..threads {
            let res_tx = res_tx.clone();
            let (job_rx, failed) = (&job_rx, &failed);
            s.spawn(move || worker(job_rx, res_tx, failed, options));
        }
        drop(res_tx);
        let mut r = Ok(());
        for layer in layers {
            if let Err(e) = read_and_apply(&mut fs, layer, &job_tx, &failed, options) {
                r = Err(e);
                failed.store(true, Ordering::Relaxed);
                break;
            }
            if failed.load(Ordering::Relaxed) {
                break;
            }
        }
        drop(job_tx);
        r
    });
    // The scope joined the workers: every result is in the channel.
    let mut first_err = outcome.err();
    for (leaf, size, r) in res_rx.try_iter() {
        match r {
            Ok(digest) => {
                fs.leaf_mut(leaf).content =
                    LeafContent::Regular(RegularFile::External(digest, size))
            }
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    finish(&mut fs, name, options.transform)?;
    Ok(fs)
}

fn finish<H: FsVerityHashValue>(
    fs: &mut FileSystem<H>,
    name: &str,
    transform: Transform,
) -> Result<()> {
    let image_err = |m: String| StorageError::image(name, m);
    match transform {
        Transform::None => fs.compact(),
        Transform::Oci => {
            let has_usr = matches!(fs.root.get_directory_opt(OsStr::new("usr")), Ok(Some(_)));
            if has_usr {
                fs.transform_for_oci(&OciTransformOptions::default())
                    .map_err(|e| image_err(format!("composefs OCI transforms: {e}")))?;
            } else {
                fs.filter_xattrs(::composefs::generic_tree::is_allowed_container_xattr);
                fs.compact();
            }
        }
    }
    fs.fsck()
        .map_err(|e| image_err(format!("composefs tree is not consistent: {e}")))
}

/// Writes the EROFS image of `fs` in [`FORMAT_VERSION`].
pub fn erofs_image<H: FsVerityHashValue>(fs: FileSystem<H>) -> Result<Box<[u8]>> {
    let v = ::composefs::erofs::writer::ValidatedFileSystem::new(fs).map_err(|e| {
        StorageError::InvalidArgument(format!("composefs tree cannot be written: {e:#}"))
    })?;
    Ok(::composefs::erofs::writer::mkfs_erofs_versioned(
        &v,
        FORMAT_VERSION,
    ))
}

/// The composefs image digest: the fs-verity digest of the EROFS image.
pub fn image_digest<H: FsVerityHashValue>(erofs: &[u8]) -> H {
    ::composefs::fsverity::compute_verity(erofs)
}

/// Writes the composefs dumpfile of `fs` (the format `mkcomposefs --from-file` reads).
pub fn write_dumpfile<H: FsVerityHashValue>(
    out: &mut impl std::io::Write,
    fs: &FileSystem<H>,
) -> std::io::Result<()> {
    ::composefs::dumpfile::write_dumpfile(out, fs)
        .map_err(|e| std::io::Error::other(format!("{e:#}")))
}

/// The path of an object in a digest store (`mkcomposefs --digest-store`): `XX/REST` of the
/// digest's hex.
pub fn object_path<H: FsVerityHashValue>(digest: &H) -> std::path::PathBuf {
    let hex = digest.to_hex();
    std::path::PathBuf::from(&hex[..2]).join(&hex[2..])
}

/// The fs-verity digest of a whole stream.
pub fn verity_of_reader<H: FsVerityHashValue>(r: &mut impl Read) -> std::io::Result<H> {
    let mut hasher = FsVerityHasher::<H>::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut hasher, &buf[..n])?;
    }
    Ok(hasher.digest())
}

struct Job {
    leaf: LeafId,
    file: File,
    size: u64,
    name: Vec<u8>,
    crc: Option<u64>,
    layer: Arc<str>,
}

fn worker<H: FsVerityHashValue>(
    jobs: &Mutex<mpsc::Receiver<Job>>,
    results: mpsc::Sender<(LeafId, u64, Result<H>)>,
    failed: &AtomicBool,
    options: &BuildOptions<'_, H>,
) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        if failed.load(Ordering::Relaxed) {
            continue;
        }
        let r = hash_job(&job, &mut buf, options).and_then(|digest| {
            if let Some(sink) = options.sink {
                sink(&digest, &job.file, job.size)?;
            }
            Ok(digest)
        });
        if r.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        if results.send((job.leaf, job.size, r)).is_err() {
            return;
        }
    }
}

fn integrity(layer: &str, name: &[u8], message: impl Into<String>) -> StorageError {
    StorageError::Integrity {
        layer: layer.to_string(),
        file: String::from_utf8_lossy(name).into_owned(),
        message: message.into(),
    }
}

/// Reads the whole content of a job's file, checking its size and CRC, and hashes it.
fn hash_job<H: FsVerityHashValue>(
    job: &Job,
    buf: &mut [u8],
    options: &BuildOptions<'_, H>,
) -> Result<H> {
    let mut hasher = Blocks::<H>::new();
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
    read_content(job, buf, |chunk| {
        crc.update(chunk);
        hasher.feed(chunk);
        if let Some(p) = options.progress {
            p(chunk.len() as u64);
        }
        Ok(())
    })?;
    check_crc(job, crc.finalize())?;
    Ok(hasher.digest())
}

/// Feeds composefs-rs's fs-verity hasher whole 4 KiB blocks straight from the read buffer
/// (its `Write` implementation copies every block into a fresh buffer first).
struct Blocks<H: FsVerityHashValue> {
    hasher: FsVerityHasher<H>,
    tail: Vec<u8>,
}

impl<H: FsVerityHashValue> Blocks<H> {
    const BLOCK: usize = FsVerityHasher::<H>::BLOCK_SIZE;

    fn new() -> Self {
        Blocks {
            hasher: FsVerityHasher::new(),
            tail: Vec::with_capacity(Self::BLOCK),
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        if !self.tail.is_empty() {
            let n = (Self::BLOCK - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.tail.len() < Self::BLOCK {
                return;
            }
            self.hasher.add_block(&self.tail);
            self.tail.clear();
        }
        let mut blocks = data.chunks_exact(Self::BLOCK);
        for b in &mut blocks {
            self.hasher.add_block(b);
        }
        self.tail.extend_from_slice(blocks.remainder());
    }

    fn digest(mut self) -> H {
        if !self.tail.is_empty() {
            self.hasher.add_block(&self.tail);
        }
        self.hasher.digest()
    }
}

fn check_crc(job: &Job, found: u64) -> Result<()> {
    match job.crc {
        Some(want) if want != found => Err(integrity(
            &job.layer,
            &job.name,
            format!("content has CRC-64 {found:016x}, the tar-split records {want:016x}"),
        )),
        _ => Ok(()),
    }
}

fn read_content(job: &Job, buf: &mut [u8], mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut left = job.size;
    let mut file = &job.file;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(integrity(
                    &job.layer,
                    &job.name,
                    format!(
                        "file ends after {} bytes, the tar records {}",
                        job.size - left,
                        job.size
                    ),
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(integrity(
                    &job.layer,
                    &job.name,
                    format!("reading the content: {e}"),
                ));
            }
        };
        f(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// The metadata of directories the layers imply but do not list.
fn implicit_dir_stat() -> Stat {
    Stat {
        st_mode: 0o755,
        st_uid: 0,
        st_gid: 0,
        st_mtim_sec: 0,
        st_mtim_nsec: 0,
        xattrs: Default::default(),
    }
}

fn stat_of(h: &TarHeader) -> Stat {
    Stat {
        st_mode: h.permissions(),
        st_uid: h.uid as u32,
        st_gid: h.gid as u32,
        st_mtim_sec: h.mtime,
        st_mtim_nsec: h.mtime_nsec,
        xattrs: h
            .xattrs
            .iter()
            .map(|(k, v)| {
                (
                    Box::from(OsStr::from_bytes(k)),
                    v.clone().into_boxed_slice(),
                )
            })
            .collect(),
    }
}

/// One member of a layer, as it is applied.
enum Kind {
    Root(Stat),
    Dir(Stat),
    Leaf(LeafId),
    HardLink(Vec<Box<[u8]>>),
    Whiteout,
    Opaque,
}

struct Entry {
    /// Path components of the parent directory.
    parent: Vec<Box<[u8]>>,
    /// Last component (empty for the root).
    name: Box<[u8]>,
    kind: Kind,
    /// The member's path as in the tar, for messages.
    path: Vec<u8>,
}

/// Splits a tar member name into components; `.` and empty components are dropped, `..` is
/// refused (it would leave the image's root).
fn components(path: &[u8]) -> std::result::Result<Vec<Box<[u8]>>, String> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a \"..\" component leaves the image's root".into()),
            c => out.push(Box::from(c)),
        }
    }
    Ok(out)
}

fn read_and_apply<H: FsVerityHashValue>(
    fs: &mut FileSystem<H>,
    layer: &Layer,
    jobs: &mpsc::SyncSender<Job>,
    failed: &AtomicBool,
    options: &BuildOptions<'_, H>,
) -> Result<()> {
    let (_locks, file) = open_locked(layer)?;
    let file = file.ok_or_else(|| layer.no_tar_split_error())?;
    let mut reader = TarSplitReader::new(gz_reader(file), layer.id());
    let mut getter = FileGetter::new(layer)?;
    let mut headers = HeaderStream::new();
    let layer_id: Arc<str> = Arc::from(layer.id());
    let tar_err = |idx: u64, message: String| StorageError::TarSplit {
        layer: layer.id().to_string(),
        entry: Some(idx),
        message,
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut inline_buf = [0u8; INLINE_MAX];
    loop {
        let idx = reader.entry_index();
        let (h, name, crc) = match reader.next_raw()? {
            None => {
                if headers.peek().is_some() {
                    return Err(StorageError::TarSplit {
                        layer: layer.id().to_string(),
                        entry: None,
                        message: "a header at the end has no file entry".into(),
                    });
                }
                break;
            }
            Some(Raw::Segment(b)) => {
                headers.push(b).map_err(|e| match e {
                    StorageError::TarHeader(m) => tar_err(idx, m),
                    e => e,
                })?;
                continue;
            }
            Some(Raw::File { name, size, crc }) => {
                let name = name.to_vec();
                let h = headers.take(size).ok_or_else(|| {
                    tar_err(
                        idx,
                        format!(
                            "file entry {:?} without a tar header before it",
                            String::from_utf8_lossy(&name)
                        ),
                    )
                })?;
                if h.has_content() && h.size != size {
                    return Err(tar_err(
                        idx,
                        format!(
                            "entry {:?}: the tar header says {} bytes, tar-split {size}",
                            h.path_lossy(),
                            h.size
                        ),
                    ));
                }
                (h, name, crc)
            }
        };
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let bad = |m: String| tar_err(idx, format!("entry {:?}: {m}", h.path_lossy()));
        let mut comps = components(&h.path).map_err(bad)?;
        let Some(last) = comps.pop() else {
            if h.entry_type != EntryType::Directory {
                return Err(bad("the image's root is not a directory".into()));
            }
            entries.push(Entry {
                parent: Vec::new(),
                name: Box::from(&b""[..]),
                kind: Kind::Root(stat_of(&h)),
                path: h.path.clone(),
            });
            continue;
        };
        let kind = if let Some(rest) = last.strip_prefix(b".wh.") {
            if rest == b".wh..opq" {
                Kind::Opaque
            } else if rest.starts_with(b".wh.") {
                continue; // aufs metadata (.wh..wh.plnk, .wh..wh.aufs)
            } else if rest.is_empty() {
                return Err(bad("a whiteout without a name".into()));
            } else {
                Kind::Whiteout
            }
        } else {
            let stat = stat_of(&h);
            let content = match h.entry_type {
                EntryType::Directory => {
                    entries.push(Entry {
                        parent: comps,
                        name: last,
                        kind: Kind::Dir(stat),
                        path: h.path.clone(),
                    });
                    continue;
                }
                EntryType::HardLink => {
                    let target = components(&h.link_target).map_err(bad)?;
                    if target.is_empty() {
                        return Err(bad("a hard link to the root".into()));
                    }
                    entries.push(Entry {
                        parent: comps,
                        name: last,
                        kind: Kind::HardLink(target),
                        path: h.path.clone(),
                    });
                    continue;
                }
                EntryType::Regular => LeafContent::Regular(RegularFile::Inline(Box::default())),
                EntryType::Symlink => {
                    LeafContent::Symlink(Box::from(OsStr::from_bytes(&h.link_target)))
                }
                EntryType::CharDevice => {
                    LeafContent::CharacterDevice(rustix::fs::makedev(h.dev_major, h.dev_minor))
                }
                EntryType::BlockDevice => {
                    LeafContent::BlockDevice(rustix::fs::makedev(h.dev_major, h.dev_minor))
                }
                EntryType::Fifo => LeafContent::Fifo,
                other => {
                    return Err(bad(format!(
                        "unsupported tar entry type {:?}",
                        char::from(other.flag())
                    )));
                }
            };
            let is_regular = h.entry_type == EntryType::Regular;
            let id = fs.push_leaf(stat, content);
            if is_regular && h.size > 0 {
                let (file, on_disk) = getter.open(&name)?;
                if on_disk != h.size {
                    return Err(integrity(
                        layer.id(),
                        &name,
                        format!(
                            "file is {on_disk} bytes on disk, the tar records {}",
                            h.size
                        ),
                    ));
                }
                let job = Job {
                    leaf: id,
                    file,
                    size: h.size,
                    name,
                    crc,
                    layer: layer_id.clone(),
                };
                if h.size as usize <= INLINE_MAX {
                    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
                    let mut data = Vec::with_capacity(h.size as usize);
                    read_content(&job, &mut inline_buf, |c| {
                        crc.update(c);
                        data.extend_from_slice(c);
                        Ok(())
                    })?;
                    check_crc(&job, crc.finalize())?;
                    if let Some(p) = options.progress {
                        p(h.size);
                    }
                    fs.leaf_mut(id).content =
                        LeafContent::Regular(RegularFile::Inline(data.into_boxed_slice()));
                } else if jobs.send(job).is_err() {
                    return Ok(()); // the workers are gone: they failed
                }
            }
            Kind::Leaf(id)
        };
        entries.push(Entry {
            parent: comps,
            name: last,
            kind,
            path: h.path.clone(),
        });
    }
    apply_layer(fs, layer.id(), entries)
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// The directory at `comps`, if it exists (no directory is created).
fn existing_dir<'d, H: FsVerityHashValue>(
    mut dir: &'d mut Directory<H>,
    comps: &[Box<[u8]>],
) -> Option<&'d mut Directory<H>> {
    for c in comps {
        dir = match dir.get_directory_mut(os(c)) {
            Ok(d) => d,
            Err(_) => return None,
        };
    }
    Some(dir)
}

/// The directory at `comps`, creating missing ones (and replacing non-directories) with
/// [`implicit_dir_stat`].
fn ensure_dir<'d, H: FsVerityHashValue>(
    mut dir: &'d mut Directory<H>,
    comps: &[Box<[u8]>],
) -> std::result::Result<&'d mut Directory<H>, String> {
    for c in comps {
        // A missing parent is created; a non-directory in its place (a symlink of a lower
        // layer, say) is replaced, as the directory the layer's extraction creates hides it
        // in the overlay mount.
        if !matches!(dir.lookup(os(c)), Some(Inode::Directory(_))) {
            dir.insert(
                os(c),
                Inode::Directory(Box::new(Directory::new(implicit_dir_stat()))),
            );
        }
        dir = dir
            .get_directory_mut(os(c))
            .map_err(|e| format!("{:?}: {e}", String::from_utf8_lossy(c)))?;
    }
    Ok(dir)
}

fn apply_layer<H: FsVerityHashValue>(
    fs: &mut FileSystem<H>,
    layer: &str,
    entries: Vec<Entry>,
) -> Result<()> {
    // Whiteouts and opaque markers act on what the lower layers built, wherever they stand.
    for e in &entries {
        match e.kind {
            Kind::Opaque => {
                if let Some(d) = existing_dir(&mut fs.root, &e.parent) {
                    d.clear();
                }
            }
            Kind::Whiteout => {
                if let Some(d) = existing_dir(&mut fs.root, &e.parent) {
                    d.remove(os(&e.name[4..]));
                }
            }
            _ => {}
        }
    }
    let err = |e: &Entry, m: String| StorageError::TarSplit {
        layer: layer.to_string(),
        entry: None,
        message: format!("entry {:?}: {m}", String::from_utf8_lossy(&e.path)),
    };
    for e in entries {
        let inode = match &e.kind {
            Kind::Opaque | Kind::Whiteout => continue,
            Kind::Root(stat) => {
                fs.set_root_stat(stat.clone());
                continue;
            }
            Kind::Dir(stat) => Inode::Directory(Box::new(Directory::new(stat.clone()))),
            Kind::Leaf(id) => Inode::leaf(*id),
            Kind::HardLink(target) => {
                let (tname, tparent) = target.split_last().expect("checked non-empty");
                let id = existing_dir(&mut fs.root, tparent)
                    .and_then(|d| d.leaf_id(os(tname)).ok())
                    .ok_or_else(|| {
                        err(
                            &e,
                            format!(
                                "hard link to {:?}, which is not a file of the image so far",
                                String::from_utf8_lossy(&target.join(&b'/'))
                            ),
                        )
                    })?;
                Inode::leaf(id)
            }
        };
        let dir = ensure_dir(&mut fs.root, &e.parent).map_err(|m| err(&e, m))?;
        dir.merge(os(&e.name), inode);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::composefs::fsverity::Sha256HashValue;

    fn leaf(fs: &mut FileSystem<Sha256HashValue>, data: &[u8]) -> Kind {
        Kind::Leaf(fs.push_leaf(
            implicit_dir_stat(),
            LeafContent::Regular(RegularFile::Inline(Box::from(data))),
        ))
    }

    fn entry(path: &str, kind: Kind) -> Entry {
        let mut comps = components(path.as_bytes()).unwrap();
        let name = comps.pop().unwrap_or_default();
        Entry {
            parent: comps,
            name,
            kind,
            path: path.as_bytes().to_vec(),
        }
    }

    fn names(fs: &FileSystem<Sha256HashValue>) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(d: &Directory<Sha256HashValue>, p: &str, out: &mut Vec<String>) {
            for (n, i) in d.sorted_entries() {
                let p = format!("{p}/{}", n.to_string_lossy());
                out.push(p.clone());
                if let Inode::Directory(sub) = i {
                    walk(sub, &p, out);
                }
            }
        }
        walk(&fs.root, "", &mut out);
        out
    }

    #[test]
    fn block_feeder_gives_the_hashers_digest_for_any_chunking() {
        let data: Vec<u8> = (0..3 * 4096 + 1234).map(|i| (i * 7 % 251) as u8).collect();
        for len in [0, 1, 64, 4095, 4096, 4097, 8192, data.len()] {
            let want: Sha256HashValue = ::composefs::fsverity::compute_verity(&data[..len]);
            for chunk in [1, 100, 4096, 5000, 1 << 20] {
                let mut b = Blocks::<Sha256HashValue>::new();
                for c in data[..len].chunks(chunk) {
                    b.feed(c);
                }
                assert_eq!(b.digest(), want, "len {len} chunk {chunk}");
            }
        }
    }

    #[test]
    fn components_drop_dots_and_refuse_parent() {
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![
                Box::from(&b"a"[..]),
                Box::from(&b"b"[..]),
                Box::from(&b"c"[..])
            ]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"a/../b").is_err());
    }

    #[test]
    fn opaque_marker_after_same_layer_entries_keeps_them() {
        let mut fs = FileSystem::<Sha256HashValue>::new(implicit_dir_stat());
        let lower = vec![
            entry("d", Kind::Dir(implicit_dir_stat())),
            entry("d/old", leaf(&mut fs, b"1")),
        ];
        apply_layer(&mut fs, "L0", lower).unwrap();
        let upper = vec![
            entry("d", Kind::Dir(implicit_dir_stat())),
            entry("d/new", leaf(&mut fs, b"2")),
            entry("d/.wh..wh..opq", Kind::Opaque),
        ];
        apply_layer(&mut fs, "L1", upper).unwrap();
        assert_eq!(names(&fs), ["/d", "/d/new"]);
    }

    #[test]
    fn whiteout_hides_lower_only_and_children_before_parent() {
        let mut fs = FileSystem::<Sha256HashValue>::new(implicit_dir_stat());
        let lower = vec![
            entry("a", leaf(&mut fs, b"1")),
            entry("b", leaf(&mut fs, b"1")),
        ];
        apply_layer(&mut fs, "L0", lower).unwrap();
        let mut st = implicit_dir_stat();
        st.st_mode = 0o700;
        st.st_mtim_sec = 42;
        let upper = vec![
            entry("x/y/f", leaf(&mut fs, b"3")),
            entry("x/y", Kind::Dir(st.clone())),
            entry(".wh.a", Kind::Whiteout),
            entry("c", Kind::HardLink(components(b"x/y/f").unwrap())),
        ];
        apply_layer(&mut fs, "L1", upper).unwrap();
        assert_eq!(names(&fs), ["/b", "/c", "/x", "/x/y", "/x/y/f"]);
        let y = fs.root.get_directory(OsStr::new("x/y")).unwrap();
        assert_eq!((y.stat.st_mode, y.stat.st_mtim_sec), (0o700, 42));
        assert_eq!(fs.nlinks().iter().filter(|&&n| n == 2).count(), 1);
    }

    #[test]
    fn a_child_under_a_lower_symlink_replaces_it_with_a_directory() {
        let mut fs = FileSystem::<Sha256HashValue>::new(implicit_dir_stat());
        let link = Kind::Leaf(fs.push_leaf(
            implicit_dir_stat(),
            LeafContent::Symlink(Box::from(OsStr::new("usr/lib"))),
        ));
        apply_layer(&mut fs, "L0", vec![entry("lib", link)]).unwrap();
        let upper = vec![entry("lib/x", leaf(&mut fs, b"x"))];
        apply_layer(&mut fs, "L1", upper).unwrap();
        assert_eq!(names(&fs), ["/lib", "/lib/x"]);
    }

    #[test]
    fn hard_link_to_missing_target_is_an_error() {
        let mut fs = FileSystem::<Sha256HashValue>::new(implicit_dir_stat());
        let e = apply_layer(
            &mut fs,
            "L0",
            vec![entry("c", Kind::HardLink(components(b"nope").unwrap()))],
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
