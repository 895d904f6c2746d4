//! What an export is asked for and what it reports: [`Verify`], [`ExportOptions`],
//! [`ExportReport`], and the writer the generated diffs write into.

use std::io::Write;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use oci_spec::image::Digest;

/// How much of a layer export is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Nothing beyond each file's size; file content may be moved with zero-copy syscalls.
    None,
    /// Each file's exact size and CRC-64 against the tar-split record, as tar-split does, and
    /// the total size against `diff-size`.
    #[default]
    Crc,
    /// As `Crc`, and the sha256 of the whole stream against the layer's DiffID.
    Digest,
}

impl std::str::FromStr for Verify {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "none" => Ok(Verify::None),
            "crc" => Ok(Verify::Crc),
            "digest" => Ok(Verify::Digest),
            o => Err(format!("{o:?} is not one of none, crc, digest")),
        }
    }
}

/// A callback receiving the number of bytes written so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Options of a layer export.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ExportOptions {
    /// What to verify.
    pub verify: Verify,
    /// Called with the running byte count after each buffer written.
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportOptions")
            .field("verify", &self.verify)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl ExportOptions {
    /// Options with the given verification.
    pub fn new(verify: Verify) -> Self {
        ExportOptions {
            verify,
            progress: None,
        }
    }

    /// Adds a progress callback.
    pub fn with_progress(mut self, p: Progress) -> Self {
        self.progress = Some(p);
        self
    }
}

/// What an export produced.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExportReport {
    /// The layer ID.
    pub layer: String,
    /// Bytes written.
    pub bytes: u64,
    /// Files whose content was copied.
    pub files: u64,
    /// Of those, files moved without passing through user space (`copy_file_range`,
    /// `splice`, `sendfile`): only with [`Verify::None`], for files of 128 KiB or more, to
    /// a file descriptor that takes them.
    pub zero_copied_files: u64,
    /// The sha256 of the stream, when it was computed ([`Verify::Digest`]).
    pub digest: Option<Digest>,
    /// True if the tar was rebuilt from tar-split (byte-identical to the original layer);
    /// false if it was generated from the `diff` directory because the layer has no
    /// tar-split (container layers): then its digest matches no original.
    pub reproducible: bool,
}

/// A `Write` over an export target, for the generated-tar path.
pub(crate) enum TargetWriter<'a> {
    Write(&'a mut dyn Write),
    Fd(BorrowedFd<'a>),
}

impl Write for TargetWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            TargetWriter::Write(w) => w.write(buf),
            TargetWriter::Fd(fd) => loop {
                match rustix::io::write(*fd, buf) {
                    Ok(n) => return Ok(n),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            TargetWriter::Write(w) => w.flush(),
            TargetWriter::Fd(_) => Ok(()),
        }
    }
}
