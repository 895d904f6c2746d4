//! tar-split metadata (`overlay-layers/<id>.tar-split.gz`): parsing, file lookup, and
//! [`TarSplitFdStream`].
//!
//! The file is gzip'd NDJSON, one object per line in tar order (format doc section 4):
//! `{"type":2,"payload":"<base64>"}` are raw tar bytes (headers, padding, end marker) and
//! `{"type":1,"name":"etc/hello","size":6,"payload":"<base64 CRC-64>"}` mark where a file's
//! content goes. The reader here streams it line by line with a bounded line length, so memory
//! stays constant whatever the layer size (plus 16 bytes per file name for the duplicate-path
//! check that tar-split itself makes).

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use cap_std::fs::Dir;
use serde::Deserialize;

use crate::error::{Result, StorageError};
use crate::fsutil::{self, Follow};
use crate::store::layer::Layer;
use crate::store::lock::SharedLock;
use crate::tar::names::{clean_name_into, content_path};
use crate::tar::toc;

pub use crate::tar::header::{EntryType, TarHeader};
use crate::tar::stream::HeaderStream;

/// Longest line accepted (a segment payload is at most 1 MiB, 1.4 MB in base64).
const MAX_LINE: usize = 16 << 20;

/// One line of the tar-split stream, as tar-split's `storage.Entry` encodes it.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    ty: i64,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name_raw: Option<Cow<'a, str>>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default, borrow)]
    payload: Option<Cow<'a, str>>,
}

/// One raw entry, borrowing the reader's buffers.
#[derive(Debug)]
pub(crate) enum Raw<'a> {
    /// Raw tar bytes.
    Segment(&'a [u8]),
    /// A tar member; its content (if `size > 0`) comes from the layer's files.
    File {
        name: &'a [u8],
        size: u64,
        crc: Option<u64>,
    },
}

/// The CRC-64/GO-ISO checksum tar-split records for file contents (Go's `hash/crc64` with
/// the ISO table), computed with SIMD instructions where the CPU has them.
pub fn crc64_go_iso(data: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64GoIso, data)
}

/// Streaming reader of a tar-split file.
pub(crate) struct TarSplitReader<R> {
    input: R,
    line: Vec<u8>,
    payload: Vec<u8>,
    name: Vec<u8>,
    line_no: u64,
    cleaned: Vec<u8>,
    seen: HashSet<u128>,
    hashers: (std::hash::RandomState, std::hash::RandomState),
    layer: String,
    done: bool,
}

impl<R: BufRead> TarSplitReader<R> {
    pub(crate) fn new(input: R, layer: &str) -> Self {
        TarSplitReader {
            input,
            line: Vec::with_capacity(4096),
            payload: Vec::with_capacity(4096),
            name: Vec::with_capacity(256),
            line_no: 0,
            cleaned: Vec::with_capacity(256),
            seen: HashSet::new(),
            hashers: (std::hash::RandomState::new(), std::hash::RandomState::new()),
            layer: layer.to_string(),
            done: false,
        }
    }

    fn err(&self, msg: impl Into<String>) -> StorageError {
        StorageError::TarSplit {
            layer: self.layer.clone(),
            entry: Some(self.line_no.saturating_sub(1)),
            message: msg.into(),
        }
    }

    /// Reads one line (without its newline) into `self.line`; false at end of input.
    fn read_line(&mut self) -> Result<bool> {
        self.line.clear();
        loop {
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(StorageError::TarSplit {
                        layer: self.layer.clone(),
                        entry: Some(self.line_no),
                        message: format!("reading the gzip stream: {e}"),
                    });
                }
            };
            if buf.is_empty() {
                return Ok(!self.line.is_empty());
            }
            let (chunk, found) = match memchr_nl(buf) {
                Some(i) => (&buf[..i], Some(i)),
                None => (buf, None),
            };
            if self.line.len() + chunk.len() > MAX_LINE {
                return Err(StorageError::TarSplit {
                    layer: self.layer.clone(),
                    entry: Some(self.line_no),
                    message: format!("line longer than {MAX_LINE} bytes"),
                });
            }
            self.line.extend_from_slice(chunk);
            match found {
                Some(i) => {
                    self.input.consume(i + 1);
                    return Ok(true);
                }
                None => {
                    let n = buf.len();
                    self.input.consume(n);
                }
            }
        }
    }

    fn name_hash(&self, cleaned: &[u8]) -> u128 {
        let mut a = self.hashers.0.build_hasher();
        a.write(cleaned);
        let mut b = self.hashers.1.build_hasher();
        b.write(cleaned);
        (u128::from(a.finish()) << 64) | u128::from(b.finish())
    }

    /// The next entry, or `None` at the end.
    pub(crate) fn next_raw(&mut self) -> Result<Option<Raw<'_>>> {
        if self.done {
            return Ok(None);
        }
        loop {
            if !self.read_line()? {
                self.done = true;
                return Ok(None);
            }
            self.line_no += 1;
            // Lines start with '{'; only blank lines are skipped.
            if self.line.first() == Some(&b'{')
                || !self.line.iter().all(|c| c.is_ascii_whitespace())
            {
                break;
            }
        }
        let line: Line<'_> =
            serde_json::from_slice(&self.line).map_err(|e| StorageError::TarSplit {
                layer: self.layer.clone(),
                entry: Some(self.line_no - 1),
                message: format!("invalid JSON: {e}"),
            })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        match line.ty {
            2 => {
                self.payload.clear();
                if let Some(p) = &line.payload {
                    b64.decode_vec(p.as_bytes(), &mut self.payload)
                        .map_err(|e| self.err(format!("segment payload is not base64: {e}")))?;
                }
                Ok(Some(Raw::Segment(&self.payload)))
            }
            1 => {
                let size = line.size.unwrap_or(0);
                if size < 0 {
                    return Err(self.err(format!("negative size {size}")));
                }
                self.name.clear();
                match (&line.name_raw, &line.name) {
                    (Some(raw), _) if !raw.is_empty() => {
                        b64.decode_vec(raw.as_bytes(), &mut self.name)
                            .map_err(|e| self.err(format!("name_raw is not base64: {e}")))?;
                    }
                    (_, Some(n)) => self.name.extend_from_slice(n.as_bytes()),
                    _ => {}
                }
                let crc = match &line.payload {
                    None => None,
                    Some(p) => {
                        let mut buf = [0u8; 8];
                        let n = b64.decode_slice(p.as_bytes(), &mut buf).map_err(|e| {
                            self.err(format!("file checksum is not base64 of 8 bytes: {e}"))
                        })?;
                        if n == 0 {
                            None
                        } else if n != 8 {
                            return Err(self.err(format!("file checksum is {n} bytes, not 8")));
                        } else {
                            Some(u64::from_be_bytes(buf))
                        }
                    }
                };
                clean_name_into(&self.name, &mut self.cleaned);
                let h = self.name_hash(&self.cleaned);
                if !self.seen.insert(h) {
                    return Err(self.err(format!(
                        "duplicate path {:?} (tar-split refuses repeated paths)",
                        String::from_utf8_lossy(&self.name)
                    )));
                }
                Ok(Some(Raw::File {
                    name: &self.name,
                    size: size as u64,
                    crc,
                }))
            }
            other => Err(self.err(format!("unknown entry type {other}"))),
        }
    }

    /// The 0-based number of the last line read.
    pub(crate) fn entry_index(&self) -> u64 {
        self.line_no.saturating_sub(1)
    }
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

/// Opens a gzip'd tar-split file for reading (multi-member gzip accepted).
pub(crate) fn gz_reader(file: File) -> BufReader<flate2::read::MultiGzDecoder<BufReader<File>>> {
    BufReader::with_capacity(
        256 << 10,
        flate2::read::MultiGzDecoder::new(BufReader::with_capacity(128 << 10, file)),
    )
}

/// Finds the files of a layer's tar members: `diff/<name>`, then (only if it is missing
/// there) in the diff directories of the layer's overlay lowers, as c/storage's overlay
/// DiffGetter does. Every open is beneath one of those directories; the last component must
/// not be a symlink.
pub(crate) struct FileGetter {
    layer: Layer,
    diff: Dir,
    diff_path: PathBuf,
    /// The layer's own ID, shared with the items handed out.
    own_id: Arc<str>,
    /// The overlay lowers (top-most first) with their layer IDs, loaded when first needed.
    lowers: Option<Vec<(Dir, PathBuf, Arc<str>)>>,
    /// The parent directory of the last file opened in `diff` (tar members come grouped by
    /// directory, so this saves most path walks).
    parent: Option<(PathBuf, Dir)>,
    /// For layers stored in the flat (composefs) format: member path → content digest hex,
    /// from the zstd:chunked table of contents; `diff/` then holds `xx/yyyy...` objects.
    flat: Option<std::collections::HashMap<PathBuf, String>>,
    /// The lower (index into `lowers`) the last file opened came from (`None`: the
    /// layer's own `diff/`).
    from_lower: Option<usize>,
}

/// For a layer stored flat (`zstd-chunked-layer-data` big data `{"format":1}`, as
/// composefs-backed stores write it): where each regular file's content is, from the table of
/// contents ([`toc::content_digests`]). `None` for other layers.
fn flat_map(layer: &Layer) -> Result<Option<HashMap<PathBuf, String>>> {
    if !layer.is_flat()? {
        return Ok(None);
    }
    toc::content_digests(layer).map(Some)
}

impl FileGetter {
    pub(crate) fn new(layer: &Layer) -> Result<FileGetter> {
        let (diff, diff_path) = layer.diff_dir_with_path()?;
        Ok(FileGetter {
            layer: layer.clone(),
            diff,
            diff_path,
            own_id: Arc::from(layer.id()),
            lowers: None,
            parent: None,
            flat: flat_map(layer)?,
            from_lower: None,
        })
    }

    fn integrity(&self, name: &[u8], msg: impl Into<String>) -> StorageError {
        StorageError::Integrity {
            layer: self.layer.id().to_string(),
            file: String::from_utf8_lossy(name).into_owned(),
            message: msg.into(),
        }
    }

    /// Opens `rel` beneath the diff directory, through a cached handle of its parent
    /// directory (itself opened beneath the diff directory, so the result is the same as
    /// opening the whole path beneath it).
    fn open_in_diff(&mut self, rel: &Path) -> std::io::Result<(File, u64)> {
        let (Some(parent), Some(file_name)) = (rel.parent(), rel.file_name()) else {
            return fsutil::open_regular(&self.diff, rel, Follow::No);
        };
        if parent.as_os_str().is_empty() {
            return fsutil::open_regular(&self.diff, rel, Follow::No);
        }
        if self.parent.as_ref().map(|(p, _)| p.as_path()) != Some(parent) {
            self.parent = None;
            let d = fsutil::open_dir(&self.diff, parent)?;
            self.parent = Some((parent.to_owned(), d));
        }
        let dir = &self.parent.as_ref().map(|(_, d)| d).unwrap_or(&self.diff);
        fsutil::open_regular(dir, Path::new(file_name), Follow::No)
    }

    /// The error for member `name` whose file last opened is `on_disk` bytes where the tar
    /// records `size`, saying which layer's file it was.
    pub(crate) fn size_mismatch(&self, name: &[u8], on_disk: u64, size: u64) -> StorageError {
        let whose = match self.lower_dir_used() {
            None => String::new(),
            Some(dir) => format!(
                " ({}: missing from this layer's diff, found in a lower layer's)",
                dir.join(content_path(name).unwrap_or_default()).display()
            ),
        };
        self.integrity(
            name,
            format!("file is {on_disk} bytes on disk{whose}, but the tar records {size} bytes"),
        )
    }

    fn lower_dir_used(&self) -> Option<&Path> {
        let i = self.from_lower?;
        self.lowers.as_ref()?.get(i).map(|l| l.1.as_path())
    }

    /// The ID of the layer whose directory held the file last opened.
    pub(crate) fn last_layer(&self) -> &Arc<str> {
        match (self.from_lower, &self.lowers) {
            (Some(i), Some(l)) if i < l.len() => &l[i].2,
            _ => &self.own_id,
        }
    }

    fn load_lowers(&mut self) -> Result<()> {
        if self.lowers.is_none() {
            self.lowers = Some(
                self.layer
                    .lower_layers()?
                    .into_iter()
                    .map(|l| (l.dir, l.path, Arc::from(l.id)))
                    .collect(),
            );
        }
        Ok(())
    }

    /// The layers this getter reads from: the layer itself, then its overlay lowers
    /// top-most first (none for a flat layer, whose contents are all its own).
    pub(crate) fn chain(&mut self) -> Result<Vec<String>> {
        let mut out = vec![self.own_id.to_string()];
        if self.flat.is_none() {
            self.load_lowers()?;
            out.extend(
                self.lowers
                    .iter()
                    .flatten()
                    .map(|(_, _, id)| id.to_string()),
            );
        }
        Ok(out)
    }

    /// Opens the content of tar member `name`; returns the file and its size on disk.
    pub(crate) fn open(&mut self, name: &[u8]) -> Result<(File, u64)> {
        self.from_lower = None;
        let rel = content_path(name).map_err(|m| self.integrity(name, m))?;
        if let Some(map) = &self.flat {
            let hex = map.get(&rel).ok_or_else(|| {
                self.integrity(
                    name,
                    "not in the layer's table of contents (flat/composefs layer)",
                )
            })?;
            let obj = PathBuf::from(&hex[..2]).join(&hex[2..]);
            return fsutil::open_regular(&self.diff, &obj, Follow::No).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    self.integrity(
                        name,
                        format!(
                            "content object {} is missing",
                            self.diff_path.join(&obj).display()
                        ),
                    )
                } else {
                    StorageError::io(self.diff_path.join(&obj), e)
                }
            });
        }
        let id = self.layer.id().to_string();
        let describe = move |e: std::io::Error, dir: &Path, rel: &Path| -> StorageError {
            let integrity = |m: String| StorageError::Integrity {
                layer: id.clone(),
                file: String::from_utf8_lossy(name).into_owned(),
                message: m,
            };
            match e.raw_os_error() {
                Some(libc::EXDEV) => integrity(format!(
                    "{} resolves outside the layer directory (symlink escape); refused",
                    dir.join(rel).display()
                )),
                Some(libc::ELOOP) => integrity(format!(
                    "{} is a symlink where the tar has a regular file; refused",
                    dir.join(rel).display()
                )),
                _ => StorageError::io(dir.join(rel), e),
            }
        };
        match self.open_in_diff(&rel) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(describe(e, &self.diff_path, &rel)),
        }
        self.load_lowers()?;
        for (i, (dir, path, _)) in self
            .lowers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match fsutil::open_regular(dir, &rel, Follow::No) {
                Ok(f) => {
                    self.from_lower = Some(i);
                    return Ok(f);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(describe(e, path, &rel)),
            }
        }
        Err(self.integrity(
            name,
            format!(
                "missing from {} (and the layer's lowers)",
                self.diff_path.join(&rel).display()
            ),
        ))
    }
}

/// Opens a layer's tar-split under the layer store's shared lock, after checking that the
/// layer is still in the store. The lock is held by the returned guard.
pub(crate) fn open_locked(layer: &Layer) -> Result<(SharedLocks, Option<File>)> {
    let locks = layer.lock_and_check()?;
    let f = layer.open_tar_split()?;
    Ok((locks, f))
}

/// Shared locks held while a layer's files are read.
pub(crate) type SharedLocks = Vec<SharedLock>;

/// An item of [`TarSplitFdStream`].
#[derive(Debug)]
pub enum TarSplitItem {
    /// Raw tar bytes (headers, padding, the end-of-archive marker, trailing bytes).
    Segment(Vec<u8>),
    /// The content of a regular file with `size > 0`: an fd opened read-only beneath the
    /// layer's diff directory (or a lower's), its size as recorded in the tar, its name as
    /// in the tar, the CRC-64/GO-ISO tar-split recorded for it (if any), and the layer whose
    /// directory supplied it. Its on-disk size has been checked to equal `size`; the CRC is
    /// not checked here.
    FileContent {
        /// The open file.
        fd: OwnedFd,
        /// Content size in bytes.
        size: u64,
        /// The member name as recorded in the tar (not necessarily UTF-8).
        name: PathBuf,
        /// The recorded CRC-64 (`None` if tar-split recorded none).
        crc: Option<u64>,
        /// The ID of the layer whose `diff/` the content was read from: the stream's own
        /// layer, or, for a file missing from its `diff/` (c/storage's overlay driver looks
        /// there next, as the kernel's overlay would), one of its overlay lowers (see
        /// [`TarSplitFdStream::layer_chain`]).
        layer: Arc<str>,
    },
}

/// Iterates a layer's tar-split, yielding raw segments and open file descriptors for file
/// contents. Concatenating the segments and the files' contents in order gives the original
/// layer tar. Members without content (directories, links, devices, empty files) produce no
/// item of their own: their headers are in the segments.
///
/// The layer store's shared lock is held until the stream is dropped, so cooperating
/// c/storage writers cannot delete the layer meanwhile.
///
/// ```no_run
/// use std::io::Write;
/// use composefs_storage::{TarSplitFdStream, TarSplitItem};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let storage = composefs_storage::Storage::discover()?;
/// let layer = storage.find_image("alpine")?.layers()?.remove(0);
/// let mut stream = TarSplitFdStream::new(&layer)?;
/// println!("reading from layers {:?}", stream.layer_chain()?);
/// let mut tar = std::fs::File::create("layer.tar")?;
/// for item in stream {
///     match item? {
///         TarSplitItem::Segment(bytes) => tar.write_all(&bytes)?,
///         TarSplitItem::FileContent { fd, size, name, layer, .. } => {
///             eprintln!("{} ({size} bytes) from layer {layer}", name.display());
///             std::io::copy(&mut std::fs::File::from(fd), &mut tar)?;
///         }
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct TarSplitFdStream {
    reader: TarSplitReader<BufReader<flate2::read::MultiGzDecoder<BufReader<File>>>>,
    getter: FileGetter,
    _locks: SharedLocks,
    failed: bool,
}

impl TarSplitFdStream {
    /// Opens the stream for `layer`. Fails if the layer has no tar-split (see
    /// `Layer::has_tar_split`).
    pub fn new(layer: &Layer) -> Result<TarSplitFdStream> {
        let (locks, file) = open_locked(layer)?;
        let file = file.ok_or_else(|| layer.no_tar_split_error())?;
        Ok(TarSplitFdStream {
            reader: TarSplitReader::new(gz_reader(file), layer.id()),
            getter: FileGetter::new(layer)?,
            _locks: locks,
            failed: false,
        })
    }

    /// The layers this stream reads file contents from: the stream's own layer first, then
    /// its overlay lowers top-most first (the layers named by `overlay/<id>/lower`), as the
    /// `layer` of [`TarSplitItem::FileContent`] can name them. A layer stored flat
    /// (composefs) reads only its own.
    pub fn layer_chain(&mut self) -> Result<Vec<String>> {
        self.getter.chain()
    }

    fn next_item(&mut self) -> Result<Option<TarSplitItem>> {
        loop {
            let raw = self.reader.next_raw()?;
            match raw {
                None => return Ok(None),
                Some(Raw::Segment(b)) => return Ok(Some(TarSplitItem::Segment(b.to_vec()))),
                Some(Raw::File { size: 0, .. }) => continue,
                Some(Raw::File { name, size, crc }) => {
                    let name = name.to_vec();
                    let (file, on_disk) = self.getter.open(&name)?;
                    if on_disk != size {
                        return Err(self.getter.size_mismatch(&name, on_disk, size));
                    }
                    return Ok(Some(TarSplitItem::FileContent {
                        fd: file.into(),
                        size,
                        name: PathBuf::from(std::ffi::OsString::from(std::ffi::OsStr::from_bytes(
                            &name,
                        ))),
                        crc,
                        layer: Arc::clone(self.getter.last_layer()),
                    }));
                }
            }
        }
    }
}

impl Iterator for TarSplitFdStream {
    type Item = Result<TarSplitItem>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_item() {
            Ok(Some(i)) => Some(Ok(i)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Iterates the headers of a layer's tar members from its tar-split alone, without opening
/// any content file.
pub struct LayerEntries {
    reader: TarSplitReader<BufReader<flate2::read::MultiGzDecoder<BufReader<File>>>>,
    headers: HeaderStream,
    layer: String,
    _locks: SharedLocks,
    failed: bool,
}

impl LayerEntries {
    pub(crate) fn new(layer: &Layer) -> Result<LayerEntries> {
        let (locks, file) = open_locked(layer)?;
        let file = file.ok_or_else(|| layer.no_tar_split_error())?;
        Ok(LayerEntries {
            reader: TarSplitReader::new(gz_reader(file), layer.id()),
            headers: HeaderStream::new(),
            layer: layer.id().to_string(),
            _locks: locks,
            failed: false,
        })
    }

    fn next_entry(&mut self) -> Result<Option<TarHeader>> {
        let layer = self.layer.clone();
        let wrap = move |e: StorageError, idx: u64| match e {
            StorageError::TarHeader(m) => StorageError::TarSplit {
                layer: layer.clone(),
                entry: Some(idx),
                message: m,
            },
            e => e,
        };
        loop {
            match self.reader.next_raw()? {
                None => {
                    if self.headers.peek().is_some() {
                        return Err(StorageError::TarSplit {
                            layer: self.layer.clone(),
                            entry: None,
                            message: "a header at the end has no file entry".into(),
                        });
                    }
                    return Ok(None);
                }
                Some(Raw::Segment(b)) => {
                    let b = b.to_vec();
                    let i = self.reader.entry_index();
                    self.headers.push(&b).map_err(|e| wrap(e, i))?;
                }
                Some(Raw::File { name, size, .. }) => {
                    let name = name.to_vec();
                    let i = self.reader.entry_index();
                    let h = self
                        .headers
                        .take(size)
                        .ok_or_else(|| StorageError::TarSplit {
                            layer: self.layer.clone(),
                            entry: Some(i),
                            message: format!(
                                "file entry {:?} without a tar header before it",
                                String::from_utf8_lossy(&name)
                            ),
                        })?;
                    if h.has_content() && h.size != size {
                        return Err(StorageError::TarSplit {
                            layer: self.layer.clone(),
                            entry: Some(i),
                            message: format!(
                                "entry {:?}: the tar header says {} bytes, tar-split {size}",
                                String::from_utf8_lossy(&name),
                                h.size
                            ),
                        });
                    }
                    if h.path != name {
                        log::warn!(
                            "layer {}: tar-split entry {:?} has header path {:?}",
                            self.layer,
                            String::from_utf8_lossy(&name),
                            h.path_lossy()
                        );
                    }
                    return Ok(Some(h));
                }
            }
        }
    }
}

impl Iterator for LayerEntries {
    type Item = Result<TarHeader>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_entry() {
            Ok(Some(h)) => Some(Ok(h)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::names::clean_name;
    use std::io::Cursor;

    fn reader(s: &str) -> TarSplitReader<Cursor<Vec<u8>>> {
        TarSplitReader::new(Cursor::new(s.as_bytes().to_vec()), "L")
    }

    fn collect(s: &str) -> Result<Vec<String>> {
        let mut r = reader(s);
        let mut out = Vec::new();
        while let Some(e) = r.next_raw()? {
            out.push(match e {
                Raw::Segment(b) => format!("S{}", b.len()),
                Raw::File { name, size, crc } => {
                    format!("F{}:{size}:{crc:?}", String::from_utf8_lossy(name))
                }
            });
        }
        Ok(out)
    }

    #[test]
    fn parses_real_lines() {
        let s = r#"{"type":2,"payload":"AAAA","position":0}
{"type":1,"name":"./","payload":null,"position":1}
{"type":1,"name":"etc/hello","size":6,"payload":"YUw+7uLYEAA=","position":2}

{"type":1,"name_raw":"/w==","size":0,"position":3}
{"type":2,"payload":"","position":4}
{"type":2,"position":5}"#;
        let v = collect(s).unwrap();
        assert_eq!(
            v,
            [
                "S3",
                "F./:0:None",
                format!("Fetc/hello:6:Some({})", 0x614c3eeee2d81000u64).as_str(),
                "F\u{FFFD}:0:None",
                "S0",
                "S0"
            ]
        );
    }

    #[test]
    fn rejects_bad_input() {
        let cases = [
            (r#"{"type":3}"#, "unknown entry type 3"),
            (r#"{"type":1,"name":"a","size":-1}"#, "negative size"),
            (r#"{"type":2,"payload":"!!"}"#, "not base64"),
            (
                r#"{"type":1,"name":"a","size":1,"payload":"AAAA"}"#,
                "not 8",
            ),
            (
                r#"{"type":1,"name":"a","size":1,"payload":"AAAAAAAAAAAAAAAA"}"#,
                "checksum",
            ),
            (r#"{"type":1,"name"#, "invalid JSON"),
            (r#"{"type":"1"}"#, "invalid JSON"),
            (
                "{\"type\":1,\"name\":\"a/b\"}\n{\"type\":1,\"name\":\"./a//b/\"}",
                "duplicate path",
            ),
            (
                "{\"type\":1,\"name\":\"x\"}\n{\"type\":1,\"name\":\"y/../x\"}",
                "duplicate path",
            ),
        ];
        for (input, want) in cases {
            let e = collect(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input}: {e}");
            assert!(e.contains("layer L"), "{e}");
        }
    }

    #[test]
    fn huge_line_is_refused() {
        let s = format!(
            "{{\"type\":2,\"payload\":\"{}\"}}",
            "A".repeat(MAX_LINE + 8)
        );
        assert!(collect(&s).unwrap_err().to_string().contains("longer than"));
    }

    #[test]
    fn crc_check_values() {
        assert_eq!(crc64_go_iso(b"123456789"), 0xb90956c775a41001);
        assert_eq!(crc64_go_iso(b"hello\n"), 0x614c3eeee2d81000);
    }

    #[test]
    fn cleaning_like_go() {
        for (i, o) in [
            ("", "."),
            ("./", "."),
            ("a/b/", "a/b"),
            ("./a//b/./c", "a/b/c"),
            ("a/../../b", "../b"),
            ("/../a", "/a"),
            ("/", "/"),
            ("..", ".."),
            ("a/..", "."),
        ] {
            assert_eq!(
                String::from_utf8(clean_name(i.as_bytes())).unwrap(),
                o,
                "{i:?}"
            );
        }
    }

    #[test]
    fn content_paths_stay_inside() {
        assert_eq!(
            content_path(b"./etc/hello").unwrap(),
            PathBuf::from("etc/hello")
        );
        assert_eq!(
            content_path(b"/etc/passwd").unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            content_path(b"/../../etc/passwd").unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert!(content_path(b"../etc/passwd").is_err());
        assert!(content_path(b"a/../../x").is_err());
        assert!(content_path(b"a\0b").is_err());
    }
}
