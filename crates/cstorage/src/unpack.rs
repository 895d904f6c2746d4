//! `cstorage unpack`, `cstorage cp` and `image export --format rootfs-tar`: an image's files
//! written out (see `composefs_storage::unpack`).

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use composefs_storage::Storage;
use composefs_storage::unpack::{
    Owners, Target, UnpackOptions, UnpackReport, unpack as lib_unpack,
};

/// A flag set by SIGINT, SIGTERM or SIGHUP, which then no longer kill the process: the work
/// stops at the next file and what was written is cleaned up. A second signal exits at once.
fn cancel_on_signals() -> Result<Arc<std::sync::atomic::AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))
            .context("installing a signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&flag))
            .context("installing a signal handler")?;
    }
    Ok(flag)
}

/// Options shared by `unpack` and `cp`.
pub struct WriteOpts {
    pub jobs: usize,
    pub no_owners: bool,
    pub no_verify: bool,
    /// `unpack --uid-map` (root only).
    pub uid_map: Vec<composefs_storage::IdMapping>,
    /// `unpack --gid-map` (root only).
    pub gid_map: Vec<composefs_storage::IdMapping>,
}

/// Parses `CONTAINER:HOST:SIZE` (as `umoci unpack --uid-map`).
pub fn parse_id_map(s: &str) -> std::result::Result<composefs_storage::IdMapping, String> {
    let n: Vec<u32> = s
        .split(':')
        .map(|p| p.parse::<u32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{s:?}: {e}"))?;
    match n[..] {
        [container_id, host_id, size] if size > 0 => Ok(composefs_storage::IdMapping {
            container_id,
            host_id,
            size,
        }),
        _ => Err(format!("{s:?} is not CONTAINER:HOST:SIZE (SIZE > 0)")),
    }
}

fn options(o: &WriteOpts, overwrite: bool) -> UnpackOptions {
    let mut opts = UnpackOptions::default();
    opts.jobs = o.jobs;
    opts.owners = if o.no_owners {
        Owners::Drop
    } else {
        Owners::Auto
    };
    opts.verify = !o.no_verify;
    opts.overwrite = overwrite;
    opts.uid_map = o.uid_map.clone();
    opts.gid_map = o.gid_map.clone();
    opts
}

/// Counts for "how far it got", and the progress bar.
struct Progress {
    files: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    pb: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(total: Option<u64>, msg: String, opts: &mut UnpackOptions) -> Progress {
        let files = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let pb = crate::export::progress_bar(total, msg);
        let (f, b, p) = (Arc::clone(&files), Arc::clone(&bytes), pb.clone());
        opts.progress = Some(Arc::new(move |nf, nb| {
            f.fetch_max(nf, Ordering::Relaxed);
            b.fetch_max(nb, Ordering::Relaxed);
            if let Some(p) = &p {
                p.set_position(nb);
            }
        }));
        Progress { files, bytes, pb }
    }

    fn done(&self) {
        if let Some(pb) = &self.pb {
            pb.finish_and_clear();
        }
    }

    fn so_far(&self) -> String {
        format!(
            "{} regular files ({} bytes) were written",
            self.files.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed)
        )
    }
}

fn warn_report(r: &UnpackReport) {
    if r.devices_skipped > 0 {
        log::warn!(
            "skipped {} device file{}: only root can make devices",
            r.devices_skipped,
            if r.devices_skipped == 1 { "" } else { "s" }
        );
    }
    if r.xattrs_skipped > 0 {
        log::warn!(
            "{} extended attribute{} could not be set (not permitted without root, or not supported by the target file system)",
            r.xattrs_skipped,
            if r.xattrs_skipped == 1 { "" } else { "s" }
        );
    }
    log::info!(
        "{} files ({} bytes, {} cloned), {} directories, {} symlinks, {} hard links, {} special files",
        r.files,
        r.bytes,
        r.cloned,
        r.dirs,
        r.symlinks,
        r.hardlinks,
        r.special
    );
}

/// Removes a tree this process wrote, making directories searchable first (an image's mode
/// 0000 directories, as non-root).
fn remove_tree(p: &Path) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(p)?;
    if md.is_dir() {
        if md.permissions().mode() & 0o700 != 0o700 {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
        }
        for e in std::fs::read_dir(p)? {
            remove_tree(&e?.path())?;
        }
        std::fs::remove_dir(p)
    } else {
        std::fs::remove_file(p)
    }
}

fn open_dir(p: &Path) -> Result<std::fs::File> {
    let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    if !f.metadata()?.is_dir() {
        bail!("{} is not a directory", p.display());
    }
    Ok(f)
}

/// `cstorage unpack IMAGE DIR`.
pub fn unpack(storage: &Storage, image: &str, dir: &Path, o: &WriteOpts) -> Result<()> {
    let img = storage.find_image(image)?;
    let created = match std::fs::metadata(dir) {
        Ok(md) if md.is_dir() => {
            let mut rd = std::fs::read_dir(dir)
                .with_context(|| format!("reading directory {}", dir.display()))?;
            if rd.next().is_some() {
                bail!(
                    "{} is not empty: unpack writes into a new or empty directory",
                    dir.display()
                );
            }
            false
        }
        Ok(_) => bail!("{} exists and is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            true
        }
        Err(e) => return Err(e).with_context(|| format!("{}", dir.display())),
    };
    let mut opts = options(o, false);
    opts.cancel = Some(cancel_on_signals()?);
    let progress = Progress::new(
        Some(img.size()),
        format!("unpack {}", crate::fmt::short_id(img.id())),
        &mut opts,
    );
    let result = open_dir(dir).and_then(|d| {
        lib_unpack(&img, Path::new("/"), Target::Into(d.as_fd()), dir, &opts)
            .map_err(anyhow::Error::new)
    });
    progress.done();
    match result {
        Ok(r) => {
            warn_report(&r);
            Ok(())
        }
        Err(e) => {
            let far = progress.so_far();
            if created {
                let removed = match remove_tree(dir) {
                    Ok(()) => format!("removed {}", dir.display()),
                    Err(re) => format!("removing {} failed too: {re}", dir.display()),
                };
                bail!(
                    "unpacking image {} into {}: {e:#} ({far}; {removed})",
                    img.id(),
                    dir.display()
                )
            } else {
                bail!(
                    "unpacking image {} into {}: {e:#} ({far}; {} holds a partial tree)",
                    img.id(),
                    dir.display(),
                    dir.display()
                )
            }
        }
    }
}

/// Splits `IMAGE:PATH` at the right-most `:` whose left part names an image (image names
/// contain `:` themselves).
fn split_image_path(storage: &Storage, spec: &str) -> Result<(composefs_storage::Image, String)> {
    let mut last_err = None;
    for (i, _) in spec.rmatch_indices(':') {
        let (name, path) = (&spec[..i], &spec[i + 1..]);
        if name.is_empty() {
            continue;
        }
        match storage.find_image(name) {
            Ok(img) => return Ok((img, path.to_string())),
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(anyhow::Error::new(e).context(format!("{spec:?}: expected IMAGE:PATH"))),
        None => bail!("{spec:?}: expected IMAGE:PATH"),
    }
}

/// The last component of an image path, `None` for the root.
fn base_name(p: &str) -> Option<Vec<u8>> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.as_bytes().to_vec()),
            _ => None,
        })
        .next_back()
}

/// `cstorage cp IMAGE:PATH DEST` with `podman cp`'s rules:
///
/// * a file (or symlink) to a missing DEST is written as DEST (a DEST ending in `/` must be
///   an existing directory), to an existing file replaces it, to a directory goes into it
///   under its own name;
/// * a directory to a missing DEST is written as DEST; to an existing directory goes into it
///   under its own name, or, when PATH ends in `/.`, its contents go into it; to an existing
///   file is an error;
/// * DEST `-` writes a tar of PATH (named by its last component; for `DIR/.`, its
///   contents) to standard output;
/// * a symlink named as PATH is followed inside the image; symlinks below it are copied as
///   symlinks; files are left owned by the caller (as `podman cp` leaves them).
pub fn cp(storage: &Storage, src: &str, dest: &Path, o: &WriteOpts) -> Result<()> {
    let (img, path) = split_image_path(storage, src)?;
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    let abs = if path.starts_with('/') {
        path.clone()
    } else {
        format!("/{path}")
    };
    let contents = abs.ends_with("/.") || abs == "/";
    // As `podman cp`, a symlink named as the source is followed (inside the image).
    let rootfs = img.rootfs()?;
    let real = rootfs.canonicalize(&abs)?;
    let kind = rootfs.lstat(&real)?.kind;
    let is_dir = kind == composefs_storage::rootfs::FileKind::Directory;
    drop(rootfs);
    let abs = real.to_string_lossy().into_owned();
    // Named, as by `podman cp`, after what the path resolves to.
    let name = base_name(&abs).unwrap_or_else(|| b".".to_vec());
    if dest == Path::new("-") {
        let out = composefs_storage::OutputFile::stdout()?;
        let out_name = out.name().to_owned();
        let mut out = std::io::BufWriter::with_capacity(256 << 10, out);
        let prefix = (!(contents && is_dir)).then_some(name.as_slice());
        composefs_storage::unpack::write_tar(
            &img,
            &real,
            prefix,
            &mut out,
            &out_name,
            !o.no_verify,
            None,
        )?;
        out.flush()
            .with_context(|| format!("writing {}", out_name.display()))?;
        return Ok(());
    }
    let dest_s = dest.as_os_str().as_bytes();
    let trailing = dest_s.ends_with(b"/");
    let existing = std::fs::metadata(dest).ok();
    if kind == composefs_storage::rootfs::FileKind::Regular {
        // One file: written by the output rules, not unlinked and recreated.
        let target = match &existing {
            Some(m) if m.is_dir() => dest.join(OsStr::from_bytes(&name)),
            _ if trailing => bail!(
                "{}: no such directory (a destination ending in / must be an existing directory)",
                dest.display()
            ),
            _ => dest.to_path_buf(),
        };
        return cp_file(&img, &real, &target, o);
    }
    // As `podman cp`, files are left owned by the caller.
    let mut opts = options(o, true);
    opts.owners = Owners::Drop;
    opts.cancel = Some(cancel_on_signals()?);
    let progress = Progress::new(
        None,
        format!("cp {}", crate::fmt::short_id(img.id())),
        &mut opts,
    );
    let run = |target: Target<'_>, shown: &Path| -> Result<UnpackReport> {
        let r = lib_unpack(&img, Path::new(&abs), target, shown, &opts)?;
        Ok(r)
    };
    let report = match (is_dir, existing) {
        (_, Some(m)) if m.is_dir() => {
            let d = open_dir(dest)?;
            if is_dir && contents {
                run(Target::Into(d.as_fd()), dest)?
            } else {
                let n = OsStr::from_bytes(&name);
                run(
                    Target::As {
                        parent: d.as_fd(),
                        name: n,
                    },
                    &dest.join(n),
                )?
            }
        }
        (true, Some(_)) => bail!(
            "cannot copy directory {abs} of image {} to {}: it is a file",
            img.id(),
            dest.display()
        ),
        (false, Some(_)) | (_, None) => {
            if trailing {
                bail!(
                    "{}: no such directory (a destination ending in / must be an existing directory)",
                    dest.display()
                );
            }
            let parent = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let Some(fname) = dest.file_name() else {
                bail!("{}: not a file name", dest.display());
            };
            let d = open_dir(&parent)?;
            run(
                Target::As {
                    parent: d.as_fd(),
                    name: fname,
                },
                dest,
            )?
        }
    };
    progress.done();
    warn_report(&report);
    Ok(())
}

/// `cp` of one regular file to `target` under the output rules
/// (`composefs_storage::output`): an existing regular file is replaced atomically keeping
/// its mode and owner (it gets the image's content and modification time), a FIFO or
/// device is written into, a symlink is followed, a new file gets the image's mode, time
/// and extended attributes. On failure or a signal, the temporary file is removed and an
/// existing file keeps its old content.
fn cp_file(
    img: &composefs_storage::Image,
    path: &Path,
    target: &Path,
    o: &WriteOpts,
) -> Result<()> {
    crate::remove_temporaries_on_signals();
    let existed = matches!(
        composefs_storage::OutputFile::kind_of(target),
        Ok(composefs_storage::output::OutputKind::File)
    ) && std::fs::metadata(target).is_ok();
    let out = composefs_storage::OutputFile::create(target)?;
    let mut opts = composefs_storage::copy_file::CopyFileOptions::default();
    opts.verify = !o.no_verify;
    opts.mode = !existed;
    opts.xattrs = !existed;
    opts.times = true;
    let r = composefs_storage::copy_file::copy_file(img, path, out.as_fd(), out.name(), &opts)
        .with_context(|| {
            format!(
                "copying {} of image {} to {}",
                path.display(),
                img.id(),
                target.display()
            )
        })?;
    out.commit()?;
    if r.xattrs_skipped > 0 {
        log::warn!(
            "{} extended attribute{} could not be set on {}",
            r.xattrs_skipped,
            if r.xattrs_skipped == 1 { "" } else { "s" },
            target.display()
        );
    }
    Ok(())
}

/// `cstorage image export IMAGE --format rootfs-tar -o FILE|-`.
pub fn rootfs_tar(
    storage: &Storage,
    images: &[String],
    output: &Path,
    no_verify: bool,
) -> Result<()> {
    let [image] = images else {
        bail!(
            "--format rootfs-tar exports one image, not {}",
            images.len()
        );
    };
    let img = storage.find_image(image)?;
    // The output rules (composefs_storage::output): `-` is standard output, a regular file
    // is replaced when the tar is complete; a signal removes the temporary file.
    let out = composefs_storage::OutputFile::create(output)?;
    let name = out.name().to_owned();
    let mut w = std::io::BufWriter::with_capacity(256 << 10, out);
    composefs_storage::unpack::write_tar(
        &img,
        Path::new("/"),
        None,
        &mut w,
        &name,
        !no_verify,
        None,
    )?;
    let out = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", name.display()))?;
    out.commit()?;
    Ok(())
}
