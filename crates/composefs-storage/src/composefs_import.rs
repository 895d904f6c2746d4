//! Importing a stored image into a composefs-rs repository (feature `composefs`).
//!
//! [`import_image`] records an image the way composefs-rs's OCI importer (`composefs-oci`
//! 0.9) does, with composefs-rs's own repository and splitstream code ([`Repository`],
//! [`SplitStreamWriter`](::composefs::splitstream::SplitStreamWriter)):
//!
//! - every regular file larger than [`INLINE_MAX`] as an
//!   object, `objects/XX/REST` by its fs-verity digest;
//! - each layer as a splitstream of its tar (content type `ocilayer`, named
//!   `oci-layer-<diff_id>`): the tar-split segments (headers, padding, the end marker) and
//!   the small files' contents inline, the other files as references to their objects;
//! - the config (`oci-config-<digest>`, content type `ociconfg`) with a named stream ref per
//!   diff_id and the `composefs.image*` refs to the committed EROFS images, its JSON stored
//!   as an object;
//! - the manifest (`oci-manifest-<digest>`, `ocimanif`) with `config:<digest>` and the
//!   diff_id refs, its JSON as an object, and the image's ref `streams/refs/oci/<tag>` (the
//!   tag with `%` and `/` percent-encoded).
//!
//! The tree committed as the EROFS image(s) is [`build_from_layers`]'s (the same one
//! `cstorage composefs digest` hashes), committed by composefs-rs for every format the
//! repository is configured for.
//!
//! Objects are written without ever linking a store file into the repository (enabling
//! fs-verity on such a link would change the store's file for good, and a writer to the
//! store would change the object): an `O_TMPFILE` in `objects/` gets the content by
//! `FICLONE` where the file systems allow reflinks, else `copy_file_range`, else read/write;
//! fs-verity is then enabled on it where the file system supports it (and its measured
//! digest must equal the one computed while reading), and it is linked in place. Objects
//! already present are reused. composefs-rs's own `ensure_object_from_file` cannot be used:
//! it falls back to hard-linking the source file, and the APIs that store a file under a
//! digest the caller already computed are private, so this module does those steps itself
//! with composefs-rs's public fs-verity functions.
//!
//! Nothing is named before every file of every layer has been read and checked against its
//! tar-split CRC: on any failure no stream, image or ref is written. Objects this run
//! stored before the failure are left as unreferenced objects (removing them could race
//! with another importer that found them present); composefs-rs's `gc` removes them.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ::composefs::erofs::format::FormatVersion;
use ::composefs::fsverity::{EnableVerityError, FsVerityHashValue};
use ::composefs::repository::Repository;
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::composefs::{BuildOptions, INLINE_MAX, Transform, build_from_layers};
use crate::error::{Result, StorageError};
use crate::store::image::Image;
use crate::tar::tar_split::{TarSplitFdStream, TarSplitItem, crc64_go_iso};

/// Content type of layer splitstreams (composefs-oci's `ocilayer`).
pub const LAYER_CONTENT_TYPE: u64 = u64::from_le_bytes(*b"ocilayer");
/// Content type of config splitstreams (composefs-oci's `ociconfg`).
pub const CONFIG_CONTENT_TYPE: u64 = u64::from_le_bytes(*b"ociconfg");
/// Content type of manifest splitstreams (composefs-oci's `ocimanif`).
pub const MANIFEST_CONTENT_TYPE: u64 = u64::from_le_bytes(*b"ocimanif");
/// The config's named ref to the EROFS image in format version 2.
pub const IMAGE_REF_KEY: &str = "composefs.image";
/// The config's named ref to the EROFS image in format version 1.
pub const IMAGE_REF_KEY_V1: &str = "composefs.image.v1";

/// The stream name of a layer (`oci-layer-<diff_id>`).
pub fn layer_stream_name(diff_id: &str) -> String {
    format!("oci-layer-{diff_id}")
}

/// The stream name of a config (`oci-config-<digest>`).
pub fn config_stream_name(digest: &str) -> String {
    format!("oci-config-{digest}")
}

/// The stream name of a manifest (`oci-manifest-<digest>`).
pub fn manifest_stream_name(digest: &str) -> String {
    format!("oci-manifest-{digest}")
}

/// The ref (below `streams/refs/`) composefs-oci gives an image tagged `tag`: `oci/` and
/// the tag with `%` and `/` percent-encoded.
pub fn image_ref_name(tag: &str) -> String {
    format!("oci/{}", tag.replace('%', "%25").replace('/', "%2F"))
}

/// Options of [`import_image`].
#[derive(Default)]
pub struct ImportOptions<'a> {
    /// The name the image is tagged with (`streams/refs/oci/<tag>`); none: not tagged.
    pub tag: Option<&'a str>,
    /// Worker threads reading and hashing file contents (0: one per CPU).
    pub threads: usize,
    /// Told the number of content bytes read, as they are read (from any thread).
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// What [`import_image`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImportOutcome<H> {
    /// The EROFS image of the repository's default format version (its fs-verity digest:
    /// the composefs image digest).
    pub image: H,
    /// Every EROFS image committed, by format version.
    pub images: Vec<(FormatVersion, H)>,
    /// The manifest's digest (`sha256:...`).
    pub manifest_digest: String,
    /// The config's digest (`sha256:...`).
    pub config_digest: String,
    /// The manifest splitstream's object ID.
    pub manifest_verity: H,
    /// Layer splitstreams written by this run.
    pub layers_written: usize,
    /// Layer splitstreams that were in the repository already.
    pub layers_present: usize,
    /// Content objects written (reflinked or copied).
    pub objects_written: u64,
    /// Of those, the ones made with a reflink.
    pub objects_reflinked: u64,
    /// Content objects that were in the repository already.
    pub objects_present: u64,
    /// Whether fs-verity was enabled on the objects written (false: the repository's file
    /// system does not support it, and the repository is insecure).
    pub verity: bool,
}

/// Maps an error of composefs-rs's repository code (shown with its causes) to ours.
fn re<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> StorageError + '_ {
    move |e| repo_err(path, format!("{e:#}"))
}

fn repo_err(path: &Path, message: impl std::fmt::Display) -> StorageError {
    StorageError::Output {
        path: path.to_path_buf(),
        message: format!("composefs repository: {message}"),
    }
}

/// Imports `image` into the composefs-rs repository `repo` (opened at `repo_path`, named in
/// errors). See the [module documentation](self).
pub fn import_image<H: FsVerityHashValue>(
    repo: &Arc<Repository<H>>,
    repo_path: &Path,
    image: &Image,
    options: &ImportOptions<'_>,
) -> Result<ImportOutcome<H>> {
    let manifest = image.manifest()?;
    let manifest_json = manifest.bytes().to_vec();
    let manifest_digest = manifest.digest().to_string();
    let config_json = image.config_bytes()?;
    let config_digest = image.config_digest()?.to_string();
    let diff_ids: Vec<String> = image
        .config()?
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.to_string())
        .collect();
    let layers = image.layers()?;
    if layers.len() != diff_ids.len() {
        return Err(StorageError::image(
            image.id(),
            format!(
                "{} layers, but the config lists {} diff_ids",
                layers.len(),
                diff_ids.len()
            ),
        ));
    }

    let objects = Objects::<H>::new(repo, repo_path)?;
    let sink = |d: &H, f: &File, size: u64| objects.put(d, f, size);
    let build = BuildOptions {
        transform: Transform::Oci,
        threads: options.threads,
        sink: Some(&sink),
        progress: options.progress,
    };
    // Every file is read, CRC-checked, hashed and stored here; nothing is named yet.
    let fs = build_from_layers(image.id(), &layers, &build)?;
    let by_inode = std::mem::take(&mut *objects.by_inode.lock().expect("not poisoned"));

    // The layer splitstreams.
    let mut layer_refs: Vec<(String, H)> = Vec::with_capacity(layers.len());
    let (mut layers_written, mut layers_present) = (0, 0);
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        let name = layer_stream_name(diff_id);
        if let Some(v) = repo.has_stream(&name).map_err(re(repo_path))? {
            layers_present += 1;
            layer_refs.push((diff_id.clone(), v));
            continue;
        }
        let mut w = repo
            .create_stream(LAYER_CONTENT_TYPE)
            .map_err(re(repo_path))?;
        let mut small = [0u8; INLINE_MAX];
        for item in TarSplitFdStream::new(layer)? {
            match item? {
                TarSplitItem::Segment(b) => w.write_inline(&b),
                TarSplitItem::FileContent {
                    fd,
                    size,
                    name,
                    crc,
                    layer: from,
                } => {
                    let integrity = |m: String| StorageError::Integrity {
                        layer: from.to_string(),
                        file: name.to_string_lossy().into_owned(),
                        message: m,
                    };
                    let file = File::from(fd);
                    if size as usize <= INLINE_MAX {
                        let buf = &mut small[..size as usize];
                        file.read_exact_at(buf, 0)
                            .map_err(|e| integrity(format!("reading the content: {e}")))?;
                        if let Some(want) = crc {
                            let found = crc64_go_iso(buf);
                            if found != want {
                                return Err(integrity(format!(
                                    "content has CRC-64 {found:016x}, the tar-split records {want:016x}"
                                )));
                            }
                        }
                        w.write_inline(buf);
                    } else {
                        let st = rustix::fs::fstat(&file)
                            .map_err(|e| integrity(format!("fstat: {e}")))?;
                        let id = by_inode.get(&(st.st_dev, st.st_ino)).ok_or_else(|| {
                            integrity("the file was not among those read for the image".into())
                        })?;
                        w.add_external_size(size);
                        w.write_reference(id.clone()).map_err(re(repo_path))?;
                    }
                }
            }
        }
        let v = repo.write_stream(w, &name, None).map_err(re(repo_path))?;
        layers_written += 1;
        layer_refs.push((diff_id.clone(), v));
    }

    // The EROFS image(s), in the formats the repository is configured for.
    let committed = fs.commit_images(repo, None).map_err(re(repo_path))?;
    let default = repo.format_config().default;
    let image_id = committed
        .get(&default)
        .cloned()
        .ok_or_else(|| repo_err(repo_path, "no EROFS image in the default format"))?;
    let mut images: Vec<(FormatVersion, H)> = committed.into_iter().collect();
    images.sort_by_key(|(v, _)| *v);

    // The config, with the layer and image refs (in composefs-oci's order: the diff_ids as
    // the config lists them, then V2, then V1).
    let mut w = repo
        .create_stream(CONFIG_CONTENT_TYPE)
        .map_err(re(repo_path))?;
    for (diff_id, v) in &layer_refs {
        w.add_named_stream_ref(diff_id, v);
    }
    for (version, key) in [
        (FormatVersion::V2, IMAGE_REF_KEY),
        (FormatVersion::V1, IMAGE_REF_KEY_V1),
    ] {
        if let Some((_, id)) = images.iter().find(|(v, _)| *v == version) {
            w.add_named_stream_ref(key, id);
        }
    }
    w.write_external(&config_json).map_err(re(repo_path))?;
    let config_verity = repo
        .write_stream(w, &config_stream_name(&config_digest), None)
        .map_err(re(repo_path))?;

    // The manifest, and the image's ref.
    let mut w = repo
        .create_stream(MANIFEST_CONTENT_TYPE)
        .map_err(re(repo_path))?;
    w.add_named_stream_ref(&format!("config:{config_digest}"), &config_verity);
    for (diff_id, v) in &layer_refs {
        w.add_named_stream_ref(diff_id, v);
    }
    w.write_external(&manifest_json).map_err(re(repo_path))?;
    let reference = options.tag.map(image_ref_name);
    let manifest_verity = repo
        .write_stream(
            w,
            &manifest_stream_name(&manifest_digest),
            reference.as_deref(),
        )
        .map_err(re(repo_path))?;

    Ok(ImportOutcome {
        image: image_id,
        images,
        manifest_digest,
        config_digest,
        manifest_verity,
        layers_written,
        layers_present,
        objects_written: objects.written.load(Ordering::Relaxed),
        objects_reflinked: objects.reflinked.load(Ordering::Relaxed),
        objects_present: objects.present.load(Ordering::Relaxed),
        verity: objects.verity.load(Ordering::Relaxed),
    })
}

/// Writes content objects into a repository's `objects/` directory.
struct Objects<'r, H: FsVerityHashValue> {
    path: PathBuf,
    dir: OwnedFd,
    insecure: bool,
    /// The fs-verity digest of every file stored, by (device, inode) of the store's file.
    by_inode: Mutex<std::collections::HashMap<(u64, u64), H>>,
    copier: ContentCopier,
    /// Whether fs-verity still looks possible (the first refusal turns it off for the rest
    /// of the run).
    verity: AtomicBool,
    written: AtomicU64,
    reflinked: AtomicU64,
    present: AtomicU64,
    _repo: std::marker::PhantomData<&'r Repository<H>>,
}

impl<'r, H: FsVerityHashValue> Objects<'r, H> {
    fn new(repo: &'r Repository<H>, path: &Path) -> Result<Self> {
        let objects = path.join("objects");
        let dir = repo
            .objects_dir()
            .map_err(std::io::Error::from)
            .and_then(|d| d.try_clone())
            .map_err(|e| repo_err(&objects, e))?;
        Ok(Objects {
            path: objects,
            dir,
            insecure: repo.is_insecure(),
            by_inode: Mutex::new(std::collections::HashMap::new()),
            copier: ContentCopier::default(),
            verity: AtomicBool::new(true),
            written: AtomicU64::new(0),
            reflinked: AtomicU64::new(0),
            present: AtomicU64::new(0),
            _repo: std::marker::PhantomData,
        })
    }

    fn err(&self, rel: &str, message: impl std::fmt::Display) -> StorageError {
        repo_err(&self.path.join(rel), message)
    }

    /// Stores `src` (`size` bytes, fs-verity digest `digest`) unless it is there already.
    fn put(&self, digest: &H, src: &File, size: u64) -> Result<()> {
        let rel = digest.to_object_pathname();
        let st = rustix::fs::fstat(src).map_err(|e| self.err(&rel, format!("fstat: {e}")))?;
        self.by_inode
            .lock()
            .map_err(|_| self.err(&rel, "a worker panicked"))?
            .insert((st.st_dev, st.st_ino), digest.clone());
        if let Ok(s) = rustix::fs::statat(&self.dir, rel.as_str(), AtFlags::empty()) {
            if rustix::fs::FileType::from_raw_mode(s.st_mode).is_file() && s.st_size as u64 == size
            {
                self.present.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let tmp = rustix::fs::openat(
            &self.dir,
            ".",
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| self.err(".", format!("creating an O_TMPFILE: {e}")))?;
        let tmp = File::from(tmp);
        let reflinked = self
            .copier
            .copy(src, &tmp, size)
            .map_err(|e| self.err(&rel, format!("writing the object: {e}")))?;
        // fs-verity is enabled on a read-only descriptor, with no writable one left open.
        let ro = rustix::fs::open(
            proc_fd(&tmp),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err(&rel, format!("reopening the object read-only: {e}")))?;
        drop(tmp);
        if self.verity.load(Ordering::Relaxed) {
            match ::composefs::fsverity::enable_verity_with_retry::<H>(&ro) {
                Ok(()) | Err(EnableVerityError::AlreadyEnabled) => {
                    let measured: H = ::composefs::fsverity::measure_verity(&ro)
                        .map_err(|e| self.err(&rel, format!("measuring fs-verity: {e}")))?;
                    if &measured != digest {
                        return Err(self.err(
                            &rel,
                            format!(
                                "fs-verity measures {}, the content read hashed to {} (the \
                                 store's file changed while it was read?)",
                                measured.to_hex(),
                                digest.to_hex()
                            ),
                        ));
                    }
                }
                Err(EnableVerityError::FilesystemNotSupported) if self.insecure => {
                    self.verity.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(self.err(&rel, format!("enabling fs-verity: {e}"))),
            }
        }
        match rustix::fs::mkdirat(
            &self.dir,
            digest.to_object_dir().as_str(),
            Mode::from_raw_mode(0o755),
        ) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(self.err(&digest.to_object_dir(), format!("mkdir: {e}"))),
        }
        match rustix::fs::linkat(
            rustix::fs::CWD,
            proc_fd(&ro),
            &self.dir,
            rel.as_str(),
            AtFlags::SYMLINK_FOLLOW,
        ) {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
                if reflinked {
                    self.reflinked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(rustix::io::Errno::EXIST) => {
                self.present.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.err(&rel, format!("linking the object: {e}"))),
        }
    }
}

fn proc_fd(f: &impl AsFd) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", f.as_fd().as_raw_fd())
}

/// Copies file contents into new files the cheapest way the file systems allow: a reflink
/// (FICLONE), else `copy_file_range`, else read/write; never a hard link. The first refusal
/// of a reflink or of `copy_file_range` turns that method off for the rest of the run (the
/// objects of one import or digest store all go to one file system). Shared by the import
/// and by `cstorage composefs mkfs --digest-store`.
#[derive(Debug)]
pub struct ContentCopier {
    reflink: AtomicBool,
    copy_range: AtomicBool,
}

impl Default for ContentCopier {
    fn default() -> Self {
        ContentCopier {
            reflink: AtomicBool::new(true),
            copy_range: AtomicBool::new(true),
        }
    }
}

impl ContentCopier {
    /// Copies `size` bytes of `src` from offset 0 into the empty `out`: FICLONE, else
    /// `copy_file_range`, else read/write. Returns whether it was a reflink.
    pub fn copy(&self, src: &File, out: &File, size: u64) -> std::io::Result<bool> {
        if self.reflink.load(Ordering::Relaxed) {
            match rustix::fs::ioctl_ficlone(out, src) {
                Ok(()) => return Ok(true),
                Err(_) => self.reflink.store(false, Ordering::Relaxed),
            }
        }
        if self.copy_range.load(Ordering::Relaxed) {
            let (mut off_in, mut off_out) = (0u64, 0u64);
            while off_in < size {
                let want = usize::try_from(size - off_in)
                    .unwrap_or(usize::MAX)
                    .min(1 << 30);
                match rustix::fs::copy_file_range(
                    src,
                    Some(&mut off_in),
                    out,
                    Some(&mut off_out),
                    want,
                ) {
                    Ok(0) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the source ended early",
                        ));
                    }
                    Ok(_) => {}
                    Err(
                        rustix::io::Errno::XDEV
                        | rustix::io::Errno::NOSYS
                        | rustix::io::Errno::INVAL
                        | rustix::io::Errno::OPNOTSUPP,
                    ) if off_in == 0 => {
                        self.copy_range.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if off_in == size {
                return Ok(false);
            }
        }
        copy_plain(src, out, size)?;
        Ok(false)
    }
}

fn copy_plain(src: &File, out: &File, size: u64) -> std::io::Result<()> {
    thread_local! {
        // One copy buffer per worker thread, not one per object.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 256 << 10]);
    }
    BUF.with_borrow_mut(|buf| {
        let mut off = 0u64;
        while off < size {
            let want = buf
                .len()
                .min(usize::try_from(size - off).unwrap_or(usize::MAX));
            let n = src.read_at(&mut buf[..want], off)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the source ended early",
                ));
            }
            out.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_composefs_oci() {
        assert_eq!(image_ref_name("localhost/a%b:1"), "oci/localhost%2Fa%25b:1");
        assert_eq!(layer_stream_name("sha256:ab"), "oci-layer-sha256:ab");
        assert_eq!(LAYER_CONTENT_TYPE.to_le_bytes(), *b"ocilayer");
    }
}
