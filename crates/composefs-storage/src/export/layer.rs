//! Rebuilding a layer's tar: bit for bit from its tar-split, verified, with zero-copy file
//! content where the output allows it.
//!
//! For each tar-split entry: segments are written as they are; a file's content is read from
//! the layer (see `FileGetter`), checked to have exactly the recorded size and (by default)
//! the recorded CRC-64/GO-ISO, and written. With [`Verify::Digest`] the sha256 of the whole
//! stream is also compared with the layer's `diff-digest`.
//!
//! Verification reads every byte into memory once (into the output buffer, then CRC and
//! sha256 run over it while it is in cache, then it is written), so the bytes checked are
//! the bytes written. With [`Verify::None`], large files move from the page cache to the
//! output without passing through user space: `copy_file_range(2)` to regular files,
//! `splice(2)` to pipes, `sendfile(2)` to anything else.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};

use crate::error::{Result, StorageError};
use crate::export::options::{ExportOptions, ExportReport, Progress, TargetWriter, Verify};
use crate::export::{naive_diff, native_diff};
use crate::store::layer::Layer;
use crate::store::manifest::hex_digest;
use crate::tar::tar_split::{
    FileGetter, LayerEntries, Raw, TarSplitReader, gz_reader, open_locked,
};

/// Size of the output buffer (file content is read straight into it).
const BUF: usize = 256 << 10;
/// Files at least this large are moved with zero-copy syscalls when nothing is verified.
const ZERO_COPY_MIN: u64 = 128 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FdKind {
    File,
    Pipe,
    Other,
}

enum Target<'a> {
    Write(&'a mut dyn Write),
    Fd(BorrowedFd<'a>, FdKind),
}

/// The output: a buffer in front of a writer or a file descriptor, hashing what passes.
struct Out<'a> {
    target: Target<'a>,
    name: PathBuf,
    buf: Vec<u8>,
    len: usize,
    written: u64,
    sha: Option<Sha256>,
    progress: Option<Progress>,
    zero_copy_ok: bool,
}

fn write_fd(fd: BorrowedFd<'_>, mut b: &[u8]) -> std::io::Result<()> {
    while !b.is_empty() {
        match rustix::io::write(fd, b) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => b = &b[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl<'a> Out<'a> {
    fn new(target: Target<'a>, name: PathBuf, digest: bool, progress: Option<Progress>) -> Self {
        Out {
            target,
            name,
            buf: vec![0u8; BUF],
            len: 0,
            written: 0,
            sha: digest.then(Sha256::new),
            progress,
            zero_copy_ok: true,
        }
    }

    fn io_err(&self, e: std::io::Error) -> StorageError {
        StorageError::io(&self.name, e)
    }

    fn flush_buf(&mut self) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let r = match &mut self.target {
            Target::Write(w) => w.write_all(&self.buf[..self.len]),
            Target::Fd(fd, _) => write_fd(*fd, &self.buf[..self.len]),
        };
        r.map_err(|e| self.io_err(e))?;
        self.len = 0;
        if let Some(p) = &self.progress {
            p(self.written);
        }
        Ok(())
    }

    /// Appends bytes (hashing them).
    fn put(&mut self, mut b: &[u8]) -> Result<()> {
        if let Some(s) = &mut self.sha {
            s.update(b);
        }
        self.written += b.len() as u64;
        while !b.is_empty() {
            if self.len == self.buf.len() {
                self.flush_buf()?;
            }
            let k = (self.buf.len() - self.len).min(b.len());
            self.buf[self.len..self.len + k].copy_from_slice(&b[..k]);
            self.len += k;
            b = &b[k..];
        }
        Ok(())
    }

    /// Reads exactly `size` bytes of `file` into the buffer, CRCing and hashing them as they
    /// arrive. `Err(Ok(n))`-style short reads are reported through `short`.
    fn copy_file(
        &mut self,
        file: &File,
        size: u64,
        mut crc: Option<&mut crc_fast::Digest>,
    ) -> std::result::Result<(), CopyError> {
        let mut left = size;
        while left > 0 {
            if self.len == self.buf.len() {
                self.flush_buf().map_err(CopyError::Out)?;
            }
            let want = ((self.buf.len() - self.len) as u64).min(left) as usize;
            let dst = &mut self.buf[self.len..self.len + want];
            let n = match rustix::io::read(file, &mut *dst) {
                Ok(0) => return Err(CopyError::Short(size - left)),
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(CopyError::Read(e.into())),
            };
            let chunk = &dst[..n];
            if let Some(c) = crc.as_deref_mut() {
                c.update(chunk);
            }
            if let Some(s) = &mut self.sha {
                s.update(chunk);
            }
            self.len += n;
            self.written += n as u64;
            left -= n as u64;
        }
        Ok(())
    }

    /// Moves `size` bytes of `file` to an fd target without copying them through user space.
    /// Returns false (having moved nothing) if the target or the kernel does not allow it.
    fn zero_copy(&mut self, file: &File, size: u64) -> std::result::Result<bool, CopyError> {
        let (fd, kind) = match &self.target {
            Target::Fd(fd, k) if self.zero_copy_ok && self.sha.is_none() => (*fd, *k),
            _ => return Ok(false),
        };
        self.flush_buf().map_err(CopyError::Out)?;
        let mut off: u64 = 0;
        while off < size {
            let want = (size - off).min(1 << 30) as usize;
            let r = match kind {
                FdKind::File => rustix::fs::copy_file_range(file, Some(&mut off), fd, None, want),
                FdKind::Pipe => rustix::pipe::splice(
                    file,
                    Some(&mut off),
                    fd,
                    None,
                    want,
                    rustix::pipe::SpliceFlags::MOVE | rustix::pipe::SpliceFlags::MORE,
                ),
                FdKind::Other => rustix::fs::sendfile(fd, file, Some(&mut off), want),
            };
            match r {
                Ok(0) => return Err(CopyError::Short(off)),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => continue,
                Err(
                    e @ (rustix::io::Errno::XDEV
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::OPNOTSUPP),
                ) if off == 0 => {
                    log::debug!(
                        "zero-copy to {} not possible ({e}); copying",
                        self.name.display()
                    );
                    self.zero_copy_ok = false;
                    return Ok(false);
                }
                Err(e) => return Err(CopyError::Out(self.io_err(e.into()))),
            }
        }
        self.written += size;
        if let Some(p) = &self.progress {
            p(self.written);
        }
        Ok(true)
    }

    fn finish(mut self) -> Result<(u64, Option<Digest>)> {
        self.flush_buf()?;
        if let Target::Write(w) = &mut self.target {
            w.flush().map_err(|e| StorageError::io(&self.name, e))?;
        }
        let digest = self.sha.take().map(|s| hex_digest(&s.finalize()));
        Ok((self.written, digest))
    }
}

enum CopyError {
    /// The file ended after this many bytes.
    Short(u64),
    Read(std::io::Error),
    Out(StorageError),
}

fn fd_kind(fd: BorrowedFd<'_>) -> FdKind {
    match rustix::fs::fstat(fd) {
        Ok(st) => match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::RegularFile => FdKind::File,
            rustix::fs::FileType::Fifo => FdKind::Pipe,
            _ => FdKind::Other,
        },
        Err(_) => FdKind::Other,
    }
}

impl Layer {
    /// The headers of the layer's tar members, from its tar-split alone (no content file is
    /// opened). Fails if the layer has no tar-split.
    pub fn entries(&self) -> Result<LayerEntries> {
        LayerEntries::new(self)
    }

    /// Writes the layer's tar to `out`.
    pub fn export(&self, out: &mut dyn Write, opts: &ExportOptions) -> Result<ExportReport> {
        self.export_to(Target::Write(out), PathBuf::from("output"), opts)
    }

    /// Writes the layer's tar to `out`; errors writing it name `name`.
    pub(crate) fn export_named(
        &self,
        out: &mut dyn Write,
        name: &Path,
        opts: &ExportOptions,
    ) -> Result<ExportReport> {
        self.export_to(Target::Write(out), name.to_owned(), opts)
    }

    /// Writes the layer's tar to the file descriptor `fd` (a file, pipe or socket), using
    /// zero-copy syscalls for file content when nothing has to be verified. The descriptor's
    /// offset advances; it is not closed.
    pub fn export_to_fd(
        &self,
        fd: BorrowedFd<'_>,
        name: &Path,
        opts: &ExportOptions,
    ) -> Result<ExportReport> {
        let kind = fd_kind(fd);
        if kind == FdKind::Pipe {
            // Fewer wake-ups with a larger pipe (best effort; the kernel may cap it).
            let _ = rustix::pipe::fcntl_setpipe_size(fd, 1 << 20);
        }
        self.export_to(Target::Fd(fd, kind), name.to_owned(), opts)
    }

    /// Writes the layer's tar to `path` by the rules of [`crate::output`]: `-` is standard
    /// output, symlinks are followed, a FIFO or device is written into, and a regular file is
    /// replaced (keeping its mode and owner) only when the export succeeded and verified; on
    /// any error the temporary file is removed and `path` is left as it was.
    pub fn export_to_path(&self, path: &Path, opts: &ExportOptions) -> Result<ExportReport> {
        let out = crate::output::OutputFile::create(path)?;
        let rep = self.export_to_fd(out.as_fd(), out.name(), opts)?;
        out.commit()?;
        Ok(rep)
    }

    fn export_to(
        &self,
        target: Target<'_>,
        name: PathBuf,
        opts: &ExportOptions,
    ) -> Result<ExportReport> {
        let (locks, tar_split) = open_locked(self)?;
        let Some(tar_split) = tar_split else {
            drop(locks);
            // A layer known by its table of contents, or stored flat (composefs), has no
            // meaningful tar to generate from its diff directory: refuse. Other layers
            // (container layers) get a generated tar, but never as a verified original.
            if opts.verify == Verify::Digest || self.toc_digest().is_some() || self.is_flat()? {
                return Err(self.no_tar_split_error());
            }
            return generate_diff(self, target_writer(target), &name, opts);
        };
        let expected = match opts.verify {
            Verify::Digest => Some(self.diff_id().ok_or_else(|| {
                StorageError::layer(self.id(), "has no diff-digest to verify against")
            })?),
            _ => None,
        };
        let mut out = Out::new(target, name, expected.is_some(), opts.progress.clone());
        let mut reader = TarSplitReader::new(gz_reader(tar_split), self.id());
        let mut getter = FileGetter::new(self)?;
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
        let mut files = 0u64;
        let mut zero_copied = 0u64;
        let verify_crc = opts.verify != Verify::None;
        loop {
            let entry = reader.next_raw()?;
            match entry {
                None => break,
                Some(Raw::Segment(b)) => out.put(b)?,
                Some(Raw::File { size: 0, .. }) => {}
                Some(Raw::File {
                    name,
                    size,
                    crc: want,
                }) => {
                    let (file, on_disk) = getter.open(name)?;
                    let integrity = |m: String| StorageError::Integrity {
                        layer: self.id().to_string(),
                        file: String::from_utf8_lossy(name).into_owned(),
                        message: m,
                    };
                    if on_disk != size {
                        return Err(getter.size_mismatch(name, on_disk, size));
                    }
                    files += 1;
                    let moved = if !verify_crc && size >= ZERO_COPY_MIN {
                        out.zero_copy(&file, size)
                    } else {
                        Ok(false)
                    };
                    let r = match moved {
                        Ok(true) => {
                            zero_copied += 1;
                            Ok(())
                        }
                        Ok(false) => {
                            if verify_crc {
                                crc.reset();
                                out.copy_file(&file, size, Some(&mut crc))
                            } else {
                                out.copy_file(&file, size, None)
                            }
                        }
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(()) => {}
                        Err(CopyError::Short(n)) => {
                            return Err(integrity(format!(
                                "file ended after {n} of its {size} bytes"
                            )));
                        }
                        Err(CopyError::Read(e)) => return Err(integrity(format!("reading: {e}"))),
                        Err(CopyError::Out(e)) => return Err(e),
                    }
                    if verify_crc {
                        let got = crc.finalize();
                        match want {
                            Some(w) if w == got => {}
                            Some(w) => {
                                return Err(integrity(format!(
                                    "CRC-64 is {got:016x}, but tar-split records {w:016x} (the file's content changed)"
                                )));
                            }
                            None => {
                                return Err(integrity(
                                    "tar-split records no checksum for it".into(),
                                ));
                            }
                        }
                    }
                }
            }
        }
        let (bytes, digest) = out.finish()?;
        drop(locks);
        if opts.verify != Verify::None {
            if let Some(expected_size) = self.diff_size() {
                if expected_size != bytes {
                    return Err(StorageError::layer(
                        self.id(),
                        format!(
                            "rebuilt tar is {bytes} bytes, but the store records diff-size {expected_size}"
                        ),
                    ));
                }
            }
        }
        if let (Some(exp), Some(got)) = (&expected, &digest) {
            if exp != got {
                return Err(StorageError::DigestMismatch {
                    layer: self.id().to_string(),
                    expected: exp.to_string(),
                    found: got.to_string(),
                });
            }
        }
        Ok(ExportReport {
            layer: self.id().to_string(),
            bytes,
            files,
            zero_copied_files: zero_copied,
            digest,
            reproducible: true,
        })
    }
}

fn target_writer(t: Target<'_>) -> TargetWriter<'_> {
    match t {
        Target::Write(w) => TargetWriter::Write(w),
        Target::Fd(fd, _) => TargetWriter::Fd(fd),
    }
}

/// A container layer's tar generated from its `diff/` directory the way c/storage's diff does
/// it: the naive diff against its parent where c/storage would use that (metacopy or
/// redirect_dir), else the native one.
fn generate_diff(
    layer: &Layer,
    w: TargetWriter<'_>,
    name: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    let _locks = layer.lock_and_check()?;
    if naive_diff::wanted(layer)? {
        log::debug!(
            "layer {}: c/storage diffs it against its parent (naive diff), so does this export",
            layer.id()
        );
        return naive_diff::generate(layer, w, name, opts);
    }
    native_diff::generate(layer, w, name, opts)
}
