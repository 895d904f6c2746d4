//! `cstorage composefs`: an image's composefs digest, dumpfile and EROFS image, built from
//! its layers' tar-split and files (see `composefs_storage::composefs`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use clap::Subcommand;
use composefs_storage::composefs::composefs::fsverity::{
    FsVerityHashValue, Sha256HashValue, Sha512HashValue,
};
use composefs_storage::composefs::{self as cfs, BuildOptions};
use composefs_storage::composefs_import::ContentCopier;
use composefs_storage::{Image, Storage};

/// The fs-verity hash of `composefs digest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HashAlg {
    /// SHA-256 (what mkcomposefs and composefs-rs use by default).
    Sha256,
    /// SHA-512.
    Sha512,
}

#[derive(Subcommand, Debug)]
pub enum ComposefsCommand {
    /// Print the composefs image digest (the fs-verity digest of its EROFS image, format 1
    /// as composefs-rs writes for OCI images).
    Digest {
        /// Image ID, ID prefix, name, reference or digest.
        image: String,
        /// fs-verity hash algorithm.
        #[arg(long, value_enum, default_value = "sha256")]
        hash: HashAlg,
    },
    /// Write the composefs dumpfile of an image (what `mkcomposefs --from-file` reads).
    Dump {
        /// Image ID, ID prefix, name, reference or digest.
        image: String,
        /// Output file (`-` or none: standard output, refused on a terminal).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write the composefs EROFS image of an image and, with --digest-store, its content
    /// objects (DIR/XX/REST by fs-verity digest, as `mkcomposefs --digest-store` does).
    Mkfs {
        /// Image ID, ID prefix, name, reference or digest.
        image: String,
        /// The EROFS image file (`-`: standard output, refused on a terminal).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Also store every non-inline file here, named by its fs-verity digest.
        #[arg(long, value_name = "DIR")]
        digest_store: Option<PathBuf>,
    },
    /// Import an image into a composefs-rs repository as composefs-rs's OCI importer records
    /// it (objects, layer splitstreams, config, manifest, EROFS image, the image's ref);
    /// prints the composefs image digest.
    Import {
        /// Image ID, ID prefix, name, reference or digest.
        image: String,
        /// The repository (created if it has no meta.json; insecure, with a note, where its
        /// file system has no fs-verity).
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// The name the image gets in the repository (`streams/refs/oci/NAME`); default:
        /// IMAGE as given.
        #[arg(long, value_name = "NAME")]
        tag: Option<String>,
        /// fs-verity hash of a repository created here (an existing one keeps its own).
        #[arg(long, value_enum, default_value = "sha256")]
        hash: HashAlg,
    },
}

pub fn run(storage: &Storage, cmd: &ComposefsCommand, out: &mut impl Write) -> Result<()> {
    match cmd {
        ComposefsCommand::Digest { image, hash } => {
            let img = storage.find_image(image)?;
            let hex = match hash {
                HashAlg::Sha256 => digest::<Sha256HashValue>(&img)?,
                HashAlg::Sha512 => digest::<Sha512HashValue>(&img)?,
            };
            writeln!(out, "{hex}")?;
            out.flush().context("writing output")?;
        }
        ComposefsCommand::Dump { image, output } => {
            let img = storage.find_image(image)?;
            let fs = build::<Sha256HashValue>(&img, None)?;
            write_output(output.as_deref(), "a dumpfile", |w| {
                cfs::write_dumpfile(&mut { w }, &fs)?;
                Ok(())
            })?;
        }
        ComposefsCommand::Mkfs {
            image,
            output,
            digest_store,
        } => {
            let img = storage.find_image(image)?;
            let store = match digest_store {
                Some(d) => Some(DigestStore::open(d)?),
                None => None,
            };
            let sink = |d: &Sha256HashValue, f: &File, size: u64| {
                store
                    .as_ref()
                    .map_or(Ok(()), |s| s.put(d, f, size))
                    .map_err(|e| composefs_storage::StorageError::InvalidArgument(format!("{e:#}")))
            };
            let sink_ref: &cfs::ObjectSink<'_, Sha256HashValue> = &sink;
            let r =
                build::<Sha256HashValue>(&img, store.as_ref().map(|_| sink_ref)).and_then(|fs| {
                    // Objects of files the image does not show (overwritten or deleted by
                    // an upper layer) were stored while hashing: take them out now, as
                    // mkcomposefs stores only what the image references, and so that no
                    // list of objects is held while the EROFS image is built.
                    if let Some(s) = &store {
                        s.keep_only_referenced(&fs);
                    }
                    let erofs = cfs::erofs_image(fs)?;
                    write_output(Some(output), "an EROFS image", |w| {
                        w.write_all(&erofs)?;
                        Ok(())
                    })
                });
            if let (Some(s), Err(_)) = (&store, &r) {
                // On failure, nothing this run stored stays behind.
                s.remove_created();
            }
            r?;
            if let Some(s) = &store {
                log::info!(
                    "digest store {}: {} objects written, {} already there",
                    s.root.display(),
                    s.written.load(Ordering::Relaxed),
                    s.reused.load(Ordering::Relaxed)
                );
            }
        }
        ComposefsCommand::Import {
            image,
            repo,
            tag,
            hash,
        } => {
            let img = storage.find_image(image)?;
            let tag = tag.as_deref().unwrap_or(image);
            let hex = match repo_algorithm(repo, *hash)? {
                HashAlg::Sha256 => import::<Sha256HashValue>(&img, repo, tag)?,
                HashAlg::Sha512 => import::<Sha512HashValue>(&img, repo, tag)?,
            };
            writeln!(out, "{hex}")?;
            out.flush().context("writing output")?;
        }
    }
    Ok(())
}

/// The hash of the repository at `dir`: its own if it has a meta.json, else `new`.
fn repo_algorithm(dir: &Path, new: HashAlg) -> Result<HashAlg> {
    use cfs::composefs::fsverity::Algorithm;
    let fd = match File::open(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(new),
        Err(e) => return Err(e).with_context(|| format!("opening {}", dir.display())),
    };
    let alg = cfs::composefs::repository::read_repo_algorithm(&fd)
        .with_context(|| format!("composefs repository {}", dir.display()))?;
    Ok(match alg {
        None => new,
        Some(Algorithm::Sha256 { .. }) => HashAlg::Sha256,
        Some(Algorithm::Sha512 { .. }) => HashAlg::Sha512,
    })
}

/// Opens the repository at `dir`, creating it (secure where the file system supports
/// fs-verity, else insecure with a note) if it has no meta.json. Also says whether that
/// note was given.
fn open_repo<H: FsVerityHashValue>(
    dir: &Path,
) -> Result<(
    std::sync::Arc<cfs::composefs::repository::Repository<H>>,
    bool,
)> {
    use cfs::composefs::fsverity::Algorithm;
    use cfs::composefs::repository::{Repository, RepositoryConfig};
    let ctx = || format!("composefs repository {}", dir.display());
    if !dir.join("meta.json").exists() {
        std::fs::create_dir_all(dir).with_context(ctx)?;
        let mut config = RepositoryConfig::new(Algorithm::for_hash::<H>());
        let noted = !verity_supported::<H>(dir);
        if noted {
            eprintln!(
                "note: {}: the file system has no fs-verity; creating an insecure repository \
                 (objects without fs-verity)",
                dir.display()
            );
            config = config.set_insecure();
        }
        let (repo, _) =
            Repository::<H>::init_path(rustix::fs::CWD, dir, config).with_context(ctx)?;
        return Ok((std::sync::Arc::new(repo), noted));
    }
    let repo = Repository::<H>::open_path(rustix::fs::CWD, dir).with_context(ctx)?;
    Ok((std::sync::Arc::new(repo), false))
}

/// Whether fs-verity can be enabled on a file in `dir` (tried on an unnamed temporary file).
fn verity_supported<H: FsVerityHashValue>(dir: &Path) -> bool {
    use rustix::fs::{Mode, OFlags};
    let Ok(fd) = rustix::fs::open(
        dir,
        OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) else {
        return false;
    };
    let f = File::from(fd);
    if (&f).write_all(&[0u8; 4096]).is_err() {
        return false;
    }
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    let Ok(ro) = rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    drop(f);
    cfs::composefs::fsverity::enable_verity_with_retry::<H>(&ro).is_ok()
}

fn import<H: FsVerityHashValue>(img: &Image, dir: &Path, tag: &str) -> Result<String> {
    let (repo, noted) = open_repo::<H>(dir)?;
    let bar = LayerProgress::new(img, "composefs import")?;
    let progress = |n: u64| bar.add(n);
    let opts = composefs_storage::composefs_import::ImportOptions {
        tag: Some(tag),
        progress: Some(&progress),
        ..Default::default()
    };
    let r = composefs_storage::composefs_import::import_image(&repo, dir, img, &opts)
        .with_context(|| format!("image {}: importing into {}", img.id(), dir.display()));
    drop(bar);
    let r = r?;
    if !r.verity && r.objects_written > 0 && !noted {
        eprintln!(
            "note: {}: the file system has no fs-verity; objects were stored without it",
            dir.display()
        );
    }
    log::info!(
        "{}: {} layers written, {} present; {} objects written ({} reflinked), {} present",
        dir.display(),
        r.layers_written,
        r.layers_present,
        r.objects_written,
        r.objects_reflinked,
        r.objects_present
    );
    Ok(r.image.to_hex())
}

fn build<H: FsVerityHashValue>(
    img: &Image,
    sink: Option<&cfs::ObjectSink<'_, H>>,
) -> Result<cfs::composefs::tree::FileSystem<H>> {
    let bar = LayerProgress::new(img, "composefs")?;
    let progress = |n: u64| bar.add(n);
    let opts = BuildOptions {
        sink,
        progress: Some(&progress),
        ..BuildOptions::default()
    };
    let fs = cfs::build_filesystem(img, &opts)
        .with_context(|| format!("image {}: building its composefs tree", img.id()))?;
    drop(bar);
    Ok(fs)
}

/// A progress bar over the bytes of an image's layers (none unless stderr is a terminal),
/// cleared when dropped.
struct LayerProgress {
    pb: Option<indicatif::ProgressBar>,
    done: AtomicU64,
}

impl LayerProgress {
    fn new(img: &Image, what: &str) -> Result<Self> {
        let total: u64 = img
            .layers()?
            .iter()
            .map(|l| l.diff_size().unwrap_or(0))
            .sum();
        let pb = crate::export::progress_bar(
            Some(total),
            format!("{what} {}", crate::fmt::short_id(img.id())),
        );
        Ok(LayerProgress {
            pb,
            done: AtomicU64::new(0),
        })
    }

    /// `n` more bytes done.
    fn add(&self, n: u64) {
        let v = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(pb) = &self.pb {
            pb.set_position(v);
        }
    }
}

impl Drop for LayerProgress {
    fn drop(&mut self) {
        if let Some(pb) = &self.pb {
            pb.finish_and_clear();
        }
    }
}

fn digest<H: FsVerityHashValue>(img: &Image) -> Result<String> {
    let fs = build::<H>(img, None)?;
    let erofs = cfs::erofs_image(fs)?;
    Ok(cfs::image_digest::<H>(&erofs).to_hex())
}

/// Writes an output by the project's output rules (`composefs_storage::output`): `-` or
/// `None` is standard output (refused on a terminal), FIFOs and devices are written into,
/// regular files are replaced atomically only when everything was written.
fn write_output(
    path: Option<&Path>,
    what: &str,
    f: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let out = composefs_storage::OutputFile::create(path.unwrap_or(Path::new("-")))
        .with_context(|| format!("writing {what}"))?;
    let name = out.name().to_path_buf();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
    f(&mut w).with_context(|| format!("writing {what} to {}", name.display()))?;
    let out = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {what} to {}", name.display()))?;
    out.commit()?;
    Ok(())
}

/// A `mkcomposefs --digest-store` directory: `XX/REST` files named by fs-verity digest.
struct DigestStore<H: FsVerityHashValue> {
    root: PathBuf,
    written: AtomicU64,
    reused: AtomicU64,
    seq: AtomicU64,
    /// Objects this run created (their digests, not hex strings: 32 bytes each).
    created: std::sync::Mutex<Vec<H>>,
    /// The `XX` directories known to exist.
    dirs: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
    /// How objects are copied (reflink, else `copy_file_range`, else read/write).
    copier: ContentCopier,
    pid: u32,
}

impl<H: FsVerityHashValue> DigestStore<H> {
    fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating digest store {}", root.display()))?;
        Ok(DigestStore {
            root: root.to_path_buf(),
            written: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            created: std::sync::Mutex::new(Vec::new()),
            dirs: std::sync::Mutex::new(std::collections::HashSet::new()),
            copier: ContentCopier::default(),
            pid: std::process::id(),
        })
    }

    /// Stores `src` (`size` bytes) as the object `digest` unless it is there already: a
    /// reflink (FICLONE) where the file system allows it, else a copy (`copy_file_range`);
    /// never a hard link to the store's file.
    fn put(&self, digest: &H, src: &File, size: u64) -> Result<()> {
        let rel = cfs::object_path(digest);
        let dest = self.root.join(&rel);
        if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == size) {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let dir = dest.parent().context("object path")?;
        let known = self.dirs.lock().is_ok_and(|d| d.contains(dir));
        if !known {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            if let Ok(mut d) = self.dirs.lock() {
                d.insert(dir.to_path_buf());
            }
        }
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            self.pid,
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let r = (|| -> Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            // 0644 as mkcomposefs makes them (the umask may only take away from it).
            let out = File::options()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            self.copier
                .copy(src, &out, size)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        self.written.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.created.lock() {
            c.push(digest.clone());
        }
        Ok(())
    }

    /// Removes the objects this run created that `fs` does not reference; only the others
    /// stay on the list of created objects.
    fn keep_only_referenced(&self, fs: &cfs::composefs::tree::FileSystem<H>) {
        use cfs::composefs::tree::{LeafContent, RegularFile};
        let Ok(mut created) = self.created.lock() else {
            return;
        };
        let used: std::collections::HashSet<&H> = fs
            .leaves
            .iter()
            .filter_map(|l| match &l.content {
                LeafContent::Regular(RegularFile::External(d, _)) => Some(d),
                _ => None,
            })
            .collect();
        created.retain(|d| used.contains(d) || !self.remove(d));
        created.shrink_to_fit();
    }

    /// Removes every object this run created.
    fn remove_created(&self) {
        if let Ok(mut created) = self.created.lock() {
            created.retain(|d| !self.remove(d));
        }
    }

    /// Removes one object (and its directory if now empty); whether it was removed.
    fn remove(&self, digest: &H) -> bool {
        let path = self.root.join(cfs::object_path(digest));
        if std::fs::remove_file(&path).is_err() {
            return false;
        }
        self.written.fetch_sub(1, Ordering::Relaxed);
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir); // only if now empty
        }
        true
    }
}
