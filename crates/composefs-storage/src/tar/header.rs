//! Tar headers: parsing the 512-byte blocks found in tar-split segments (v7, ustar, GNU, PAX),
//! and writing them (for layers that have to be generated from their `diff` directory).
//!
//! Parsing is sans-IO: [`TarHeader::from_bytes`] reads one block; [`HeaderStream`] consumes a
//! tar byte stream from which file contents have been removed (exactly what tar-split's
//! segments are) and yields complete entries with PAX and GNU long-name records applied.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Result, StorageError};

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Largest PAX or GNU long-name record accepted (Go's `maxSpecialFileSize`).
const MAX_SPECIAL: u64 = 1 << 20;

fn herr(msg: impl Into<String>) -> StorageError {
    StorageError::TarHeader(msg.into())
}

/// The type of a tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EntryType {
    /// A regular file (`0`, `\0`, `7`).
    Regular,
    /// A hard link to an earlier entry (`1`).
    HardLink,
    /// A symbolic link (`2`).
    Symlink,
    /// A character device (`3`).
    CharDevice,
    /// A block device (`4`).
    BlockDevice,
    /// A directory (`5`, or a v7 regular entry whose name ends in `/`).
    Directory,
    /// A FIFO (`6`).
    Fifo,
    /// A PAX extended header for the next entry (`x`).
    PaxLocal,
    /// A PAX global extended header (`g`).
    PaxGlobal,
    /// A GNU long name record (`L`).
    GnuLongName,
    /// A GNU long link record (`K`).
    GnuLongLink,
    /// A GNU sparse file (`S`).
    GnuSparse,
    /// Any other type flag.
    Other(u8),
}

impl EntryType {
    /// From the type flag byte.
    pub fn from_flag(f: u8) -> EntryType {
        match f {
            b'0' | b'\0' | b'7' => EntryType::Regular,
            b'1' => EntryType::HardLink,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::CharDevice,
            b'4' => EntryType::BlockDevice,
            b'5' => EntryType::Directory,
            b'6' => EntryType::Fifo,
            b'x' => EntryType::PaxLocal,
            b'g' => EntryType::PaxGlobal,
            b'L' => EntryType::GnuLongName,
            b'K' => EntryType::GnuLongLink,
            b'S' => EntryType::GnuSparse,
            o => EntryType::Other(o),
        }
    }

    /// The type flag byte written for this type.
    pub fn flag(&self) -> u8 {
        match self {
            EntryType::Regular => b'0',
            EntryType::HardLink => b'1',
            EntryType::Symlink => b'2',
            EntryType::CharDevice => b'3',
            EntryType::BlockDevice => b'4',
            EntryType::Directory => b'5',
            EntryType::Fifo => b'6',
            EntryType::PaxLocal => b'x',
            EntryType::PaxGlobal => b'g',
            EntryType::GnuLongName => b'L',
            EntryType::GnuLongLink => b'K',
            EntryType::GnuSparse => b'S',
            EntryType::Other(o) => *o,
        }
    }

    /// True for records that describe the next entry rather than being one.
    pub fn is_meta(&self) -> bool {
        matches!(
            self,
            EntryType::PaxLocal
                | EntryType::PaxGlobal
                | EntryType::GnuLongName
                | EntryType::GnuLongLink
        )
    }

    /// A one-letter `ls -l` style type character.
    pub fn ls_char(&self) -> char {
        match self {
            EntryType::Directory => 'd',
            EntryType::Symlink => 'l',
            EntryType::HardLink => 'h',
            EntryType::CharDevice => 'c',
            EntryType::BlockDevice => 'b',
            EntryType::Fifo => 'p',
            _ => '-',
        }
    }
}

/// The dialect a header block is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderFormat {
    /// Pre-POSIX (no magic).
    V7,
    /// POSIX ustar (`ustar\0` + `00`).
    Ustar,
    /// GNU (`ustar  \0`).
    Gnu,
}

/// A parsed tar header, with PAX and GNU extension records applied when it came from a
/// [`HeaderStream`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TarHeader {
    /// The entry's path, as bytes (not necessarily UTF-8).
    #[serde(serialize_with = "ser_bytes")]
    pub path: Vec<u8>,
    /// The link target of symlinks and hard links (empty otherwise).
    #[serde(serialize_with = "ser_bytes")]
    pub link_target: Vec<u8>,
    /// The entry type.
    pub entry_type: EntryType,
    /// The mode field as stored: permission bits (`0o7777`), and with some writers (Go's
    /// `archive/tar` via c/storage) the file type bits too (`0o040000` for directories).
    pub mode: u32,
    /// Owner UID.
    pub uid: u64,
    /// Owner GID.
    pub gid: u64,
    /// Owner user name.
    #[serde(serialize_with = "ser_bytes")]
    pub uname: Vec<u8>,
    /// Owner group name.
    #[serde(serialize_with = "ser_bytes")]
    pub gname: Vec<u8>,
    /// Content size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch (may be negative).
    pub mtime: i64,
    /// Nanoseconds of the modification time (PAX only).
    pub mtime_nsec: u32,
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Extended attributes from PAX `SCHILY.xattr.*` records, in archive order.
    #[serde(serialize_with = "ser_xattrs")]
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The dialect of the header block.
    pub format: HeaderFormat,
    /// True if PAX records applied to this entry.
    pub pax: bool,
}

fn ser_bytes<S: serde::Serializer>(b: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

fn ser_xattrs<S: serde::Serializer>(
    x: &[(Vec<u8>, Vec<u8>)],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(x.len()))?;
    for (k, v) in x {
        m.serialize_entry(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v))?;
    }
    m.end()
}

/// Parses an octal field as Go's `parseOctal` does: leading/trailing spaces and NULs are
/// ignored, an empty field is 0.
fn parse_octal(f: &[u8]) -> Result<u64> {
    let s = trim(f);
    if s.is_empty() {
        return Ok(0);
    }
    let mut v: u64 = 0;
    for &c in s {
        if !(b'0'..=b'7').contains(&c) {
            return Err(herr(format!(
                "invalid octal number {:?}",
                String::from_utf8_lossy(f)
            )));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .ok_or_else(|| herr("octal number overflows"))?;
    }
    Ok(v)
}

fn trim(f: &[u8]) -> &[u8] {
    let is_pad = |c: &u8| *c == b' ' || *c == 0;
    let start = f.iter().position(|c| !is_pad(c)).unwrap_or(f.len());
    let end = f
        .iter()
        .rposition(|c| !is_pad(c))
        .map(|i| i + 1)
        .unwrap_or(start);
    &f[start..end.max(start)]
}

/// Parses a numeric field: base-256 (GNU/star, two's complement, high bit of the first byte
/// set) or octal.
fn parse_numeric(f: &[u8]) -> Result<i64> {
    if !f.is_empty() && f[0] & 0x80 != 0 {
        let negative = f[0] & 0x40 != 0;
        let inv: u8 = if negative { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in f.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f; // drop the base-256 marker bit
            }
            if x >> 56 > 0 {
                return Err(herr("base-256 number overflows"));
            }
            x = (x << 8) | u64::from(c);
        }
        if x >> 63 > 0 {
            return Err(herr("base-256 number overflows"));
        }
        let v = x as i64;
        return Ok(if negative { !v } else { v });
    }
    let v = parse_octal(f)?;
    i64::try_from(v).map_err(|_| herr("number overflows"))
}

fn parse_unsigned(f: &[u8], what: &str) -> Result<u64> {
    let v = parse_numeric(f)?;
    u64::try_from(v).map_err(|_| herr(format!("negative {what}")))
}

fn cstr(f: &[u8]) -> &[u8] {
    match f.iter().position(|&c| c == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

impl TarHeader {
    /// Parses one 512-byte header block (v7, ustar or GNU). PAX and GNU long-name records are
    /// not applied here (see [`HeaderStream`]). Fails on a short block, a bad checksum or
    /// malformed numbers; an all-zero block is an error too (it ends an archive).
    pub fn from_bytes(block: &[u8]) -> Result<TarHeader> {
        if block.len() < BLOCK {
            return Err(herr(format!("header is {} bytes, not 512", block.len())));
        }
        let b = &block[..BLOCK];
        if b.iter().all(|&c| c == 0) {
            return Err(herr("all-zero block (end of archive)"));
        }
        // Checksum: sum of all bytes with the checksum field counted as spaces; Go accepts
        // the unsigned or the signed sum.
        let stored = parse_octal(&b[148..156])?;
        let (mut unsigned, mut signed): (i64, i64) = (0, 0);
        for (i, &c) in b.iter().enumerate() {
            let c = if (148..156).contains(&i) { b' ' } else { c };
            unsigned += i64::from(c);
            signed += i64::from(c as i8);
        }
        if stored as i64 != unsigned && stored as i64 != signed {
            return Err(herr(format!(
                "checksum mismatch: header says {stored}, computed {unsigned}"
            )));
        }
        let magic = &b[257..263];
        let version = &b[263..265];
        let format = if magic == b"ustar\0" && version == b"00" {
            HeaderFormat::Ustar
        } else if magic == b"ustar " && version == b" \0" {
            HeaderFormat::Gnu
        } else if magic == b"ustar\0" {
            // Some writers leave the version empty.
            HeaderFormat::Ustar
        } else {
            HeaderFormat::V7
        };
        let mut path = cstr(&b[0..100]).to_vec();
        if format == HeaderFormat::Ustar {
            let prefix = cstr(&b[345..500]);
            if !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(&path);
                path = p;
            }
        }
        let flag = b[156];
        let mut entry_type = EntryType::from_flag(flag);
        if (flag == b'0' || flag == 0) && path.ends_with(b"/") {
            // Old archives mark directories only by a trailing slash.
            entry_type = EntryType::Directory;
        }
        let (uname, gname, dev_major, dev_minor) = if format == HeaderFormat::V7 {
            (Vec::new(), Vec::new(), 0, 0)
        } else {
            (
                cstr(&b[265..297]).to_vec(),
                cstr(&b[297..329]).to_vec(),
                u32::try_from(parse_unsigned(&b[329..337], "device major")?)
                    .map_err(|_| herr("device major too large"))?,
                u32::try_from(parse_unsigned(&b[337..345], "device minor")?)
                    .map_err(|_| herr("device minor too large"))?,
            )
        };
        Ok(TarHeader {
            path,
            link_target: cstr(&b[157..257]).to_vec(),
            entry_type,
            mode: (parse_unsigned(&b[100..108], "mode")? & 0o7777_7777) as u32,
            uid: parse_unsigned(&b[108..116], "uid")?,
            gid: parse_unsigned(&b[116..124], "gid")?,
            uname,
            gname,
            size: parse_unsigned(&b[124..136], "size")?,
            mtime: parse_numeric(&b[136..148])?,
            mtime_nsec: 0,
            dev_major,
            dev_minor,
            xattrs: Vec::new(),
            format,
            pax: false,
        })
    }

    /// The path as an `OsStr` (the bytes as they are).
    pub fn path_os(&self) -> &OsStr {
        OsStr::from_bytes(&self.path)
    }

    /// The path, with invalid UTF-8 replaced.
    pub fn path_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.path)
    }

    /// The link target, with invalid UTF-8 replaced.
    pub fn link_target_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.link_target)
    }

    /// Permission bits only (`0o7777`).
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Number of padding bytes after this entry's content.
    pub fn padding(&self) -> u64 {
        padding(self.size)
    }

    /// True if the content of this entry is stored in the archive (regular files; hard links
    /// and others carry no data even if a size is set, except in odd archives).
    pub fn has_content(&self) -> bool {
        matches!(
            self.entry_type,
            EntryType::Regular | EntryType::Other(_) | EntryType::GnuSparse
        ) && self.size > 0
    }

    fn apply_pax(&mut self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        for (k, v) in records {
            let vs = || String::from_utf8_lossy(v);
            let num = |what: &str| -> Result<u64> {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| herr(format!("invalid PAX {what} {:?}", vs())))
            };
            match k.as_slice() {
                b"path" => self.path = v.clone(),
                b"linkpath" => self.link_target = v.clone(),
                b"size" => self.size = num("size")?,
                b"uid" => self.uid = num("uid")?,
                b"gid" => self.gid = num("gid")?,
                b"uname" => self.uname = v.clone(),
                b"gname" => self.gname = v.clone(),
                b"mtime" => {
                    let (s, n) = parse_pax_time(v)?;
                    self.mtime = s;
                    self.mtime_nsec = n;
                }
                k if k.starts_with(b"SCHILY.xattr.") => {
                    self.xattrs
                        .push((k[b"SCHILY.xattr.".len()..].to_vec(), v.clone()));
                }
                k if k.starts_with(b"GNU.sparse.") => {
                    return Err(herr(
                        "sparse files (GNU.sparse PAX records) are not supported",
                    ));
                }
                _ => {}
            }
        }
        if !records.is_empty() {
            self.pax = true;
        }
        Ok(())
    }
}

/// Padding after `size` bytes of content, to the next 512-byte boundary.
pub fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Parses a PAX time (`1700000000.123456789`, possibly negative) into seconds and nanos.
fn parse_pax_time(v: &[u8]) -> Result<(i64, u32)> {
    let s = std::str::from_utf8(v).map_err(|_| herr("PAX time is not ASCII"))?;
    let bad = || herr(format!("invalid PAX time {s:?}"));
    let (neg, s2) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = match s2.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s2, ""),
    };
    if secs.is_empty()
        || !secs.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let mut nanos: u32 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        // -1.5 means 1.5 seconds before the epoch.
        if nanos > 0 {
            Ok((-secs - 1, 1_000_000_000 - nanos))
        } else {
            Ok((-secs, 0))
        }
    } else {
        Ok((secs, nanos))
    }
}

/// Parses PAX extended header data: `"<len> <key>=<value>\n"` records.
pub fn parse_pax_records(mut data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    // Trailing NULs pad some writers' records.
    while let Some(&0) = data.last() {
        data = &data[..data.len() - 1];
    }
    while !data.is_empty() {
        let sp = data
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| herr("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| herr("invalid PAX record length"))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(herr("malformed PAX record"));
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| herr("PAX record without '='"))?;
        if eq == 0 {
            return Err(herr("PAX record with an empty key"));
        }
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

#[derive(Debug)]
enum State {
    /// Expecting a header block.
    Header,
    /// Collecting the data of a meta record (PAX or GNU long name/link).
    Meta {
        kind: EntryType,
        remaining: u64,
        pad: u64,
        data: Vec<u8>,
    },
    /// Skipping the padding after an entry's content.
    Skip(u64),
    /// Saw one zero block.
    OneZero,
    /// After the end-of-archive marker: everything else is trailing bytes.
    End,
}

/// Consumes a tar stream whose file contents were cut out (the concatenated segments of a
/// tar-split) and produces each entry's complete header.
#[derive(Debug)]
pub struct HeaderStream {
    state: State,
    buf: Vec<u8>,
    pax_local: Vec<(Vec<u8>, Vec<u8>)>,
    pax_global: Vec<(Vec<u8>, Vec<u8>)>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    ready: Option<TarHeader>,
}

impl Default for HeaderStream {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderStream {
    /// A parser at the start of an archive.
    pub fn new() -> Self {
        HeaderStream {
            state: State::Header,
            buf: Vec::with_capacity(BLOCK),
            pax_local: Vec::new(),
            pax_global: Vec::new(),
            long_name: None,
            long_link: None,
            ready: None,
        }
    }

    /// True once the end-of-archive marker (two zero blocks) was seen.
    pub fn at_end(&self) -> bool {
        matches!(self.state, State::End)
    }

    /// Feeds stream bytes. Fails if a second entry header completes before the previous one
    /// was taken with [`HeaderStream::take`], or on malformed headers.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Skip(n) => {
                    let k = (*n).min(bytes.len() as u64) as usize;
                    bytes = &bytes[k..];
                    *n -= k as u64;
                    if *n == 0 {
                        self.state = State::Header;
                    }
                }
                State::Meta {
                    kind,
                    remaining,
                    pad,
                    data,
                } => {
                    if *remaining > 0 {
                        let k = (*remaining).min(bytes.len() as u64) as usize;
                        data.extend_from_slice(&bytes[..k]);
                        bytes = &bytes[k..];
                        *remaining -= k as u64;
                        continue;
                    }
                    if *pad > 0 {
                        let k = (*pad).min(bytes.len() as u64) as usize;
                        bytes = &bytes[k..];
                        *pad -= k as u64;
                        continue;
                    }
                    let kind = *kind;
                    let data = std::mem::take(data);
                    self.state = State::Header;
                    self.finish_meta(kind, data)?;
                }
                State::Header | State::OneZero => {
                    let need = BLOCK - self.buf.len();
                    let k = need.min(bytes.len());
                    self.buf.extend_from_slice(&bytes[..k]);
                    bytes = &bytes[k..];
                    if self.buf.len() == BLOCK {
                        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
                        self.header_block(&block)?;
                    }
                }
            }
        }
        // A meta record whose data and padding ended exactly at the end of these bytes.
        if let State::Meta {
            remaining: 0,
            pad: 0,
            ..
        } = self.state
        {
            if let State::Meta { kind, data, .. } =
                std::mem::replace(&mut self.state, State::Header)
            {
                self.finish_meta(kind, data)?;
            }
        }
        Ok(())
    }

    fn finish_meta(&mut self, kind: EntryType, data: Vec<u8>) -> Result<()> {
        match kind {
            EntryType::PaxLocal => self.pax_local.extend(parse_pax_records(&data)?),
            EntryType::PaxGlobal => self.pax_global.extend(parse_pax_records(&data)?),
            EntryType::GnuLongName => self.long_name = Some(cstr(&data).to_vec()),
            EntryType::GnuLongLink => self.long_link = Some(cstr(&data).to_vec()),
            _ => {}
        }
        Ok(())
    }

    fn header_block(&mut self, block: &[u8]) -> Result<()> {
        if block.iter().all(|&c| c == 0) {
            self.state = match self.state {
                State::OneZero => State::End,
                _ => State::OneZero,
            };
            return Ok(());
        }
        if matches!(self.state, State::OneZero) {
            return Err(herr("a single zero block in the middle of the archive"));
        }
        let mut h = TarHeader::from_bytes(block)?;
        if h.entry_type.is_meta() {
            if h.size > MAX_SPECIAL {
                return Err(herr(format!(
                    "extension record of {} bytes is too large",
                    h.size
                )));
            }
            self.state = State::Meta {
                kind: h.entry_type,
                remaining: h.size,
                pad: padding(h.size),
                data: Vec::with_capacity(h.size as usize),
            };
            return Ok(());
        }
        if self.ready.is_some() {
            return Err(herr("two entry headers without a file entry between them"));
        }
        if !self.pax_global.is_empty() {
            let g = self.pax_global.clone();
            h.apply_pax(&g)?;
        }
        if let Some(n) = self.long_name.take() {
            h.path = n;
        }
        if let Some(l) = self.long_link.take() {
            h.link_target = l;
        }
        let local = std::mem::take(&mut self.pax_local);
        h.apply_pax(&local)?;
        if h.entry_type == EntryType::Regular
            && h.path.ends_with(b"/")
            && h.format == HeaderFormat::V7
        {
            h.entry_type = EntryType::Directory;
        }
        self.ready = Some(h);
        Ok(())
    }

    /// Takes the header of the entry whose content comes next; the parser then skips the
    /// padding that follows `content_len` bytes of content (which are not in the stream).
    pub fn take(&mut self, content_len: u64) -> Option<TarHeader> {
        let h = self.ready.take()?;
        let pad = padding(content_len);
        if pad > 0 {
            self.state = State::Skip(pad);
        }
        Some(h)
    }

    /// The header parsed so far but not yet taken.
    pub fn peek(&self) -> Option<&TarHeader> {
        self.ready.as_ref()
    }
}

// ---------------------------------------------------------------------------------------------
// Writing headers (for tars generated from a diff directory).

fn put_octal(field: &mut [u8], v: u64) -> bool {
    // Width-1 digits plus a NUL.
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn put_str(field: &mut [u8], v: &[u8]) -> bool {
    if v.len() > field.len() {
        return false;
    }
    field[..v.len()].copy_from_slice(v);
    true
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // The length counts itself.
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + base.to_string().len();
    if len.to_string().len() != base.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn finish_checksum(b: &mut [u8; BLOCK]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

fn ustar_block(h: &TarHeader, name: &[u8], prefix: &[u8], link: &[u8], flag: u8) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    put_str(&mut b[0..100], name);
    put_octal(&mut b[100..108], u64::from(h.mode & 0o7777777));
    // Values that do not fit are carried by PAX records; the fields then hold zero.
    if !put_octal(&mut b[108..116], h.uid) {
        put_octal(&mut b[108..116], 0);
    }
    if !put_octal(&mut b[116..124], h.gid) {
        put_octal(&mut b[116..124], 0);
    }
    if !put_octal(&mut b[124..136], h.size) {
        put_octal(&mut b[124..136], 0);
    }
    if !put_octal(&mut b[136..148], u64::try_from(h.mtime).unwrap_or(0)) {
        put_octal(&mut b[136..148], 0);
    }
    b[156] = flag;
    put_str(&mut b[157..257], link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    put_str(&mut b[265..297], &h.uname);
    put_str(&mut b[297..329], &h.gname);
    put_octal(&mut b[329..337], u64::from(h.dev_major));
    put_octal(&mut b[337..345], u64::from(h.dev_minor));
    put_str(&mut b[345..500], prefix);
    finish_checksum(&mut b);
    b
}

/// Splits a path into ustar prefix and name fields, if it fits.
fn split_ustar(p: &[u8]) -> Option<(&[u8], &[u8])> {
    if p.len() <= 100 {
        return Some((&[], p));
    }
    // The prefix ends at a '/', which is not stored.
    let max_prefix = p.len().min(156);
    for i in (1..max_prefix).rev() {
        if p[i] == b'/' && i <= 155 && p.len() - i - 1 <= 100 && p.len() - i - 1 > 0 {
            return Some((&p[..i], &p[i + 1..]));
        }
    }
    None
}

impl TarHeader {
    /// A header for a new entry with everything zero or empty.
    pub fn new(path: impl Into<Vec<u8>>, entry_type: EntryType) -> TarHeader {
        TarHeader {
            path: path.into(),
            link_target: Vec::new(),
            entry_type,
            mode: 0,
            uid: 0,
            gid: 0,
            uname: Vec::new(),
            gname: Vec::new(),
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
            format: HeaderFormat::Ustar,
            pax: false,
        }
    }

    /// Encodes this header as ustar, preceded by a PAX extended header when something does
    /// not fit ustar (long names, large IDs or sizes, negative times, xattrs, non-ASCII
    /// user names). The result is a multiple of 512 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut pax = Vec::new();
        let split = split_ustar(&self.path);
        if split.is_none() {
            pax_record(&mut pax, b"path", &self.path);
        }
        if self.link_target.len() > 100 {
            pax_record(&mut pax, b"linkpath", &self.link_target);
        }
        const MAX8: u64 = 0o7777777;
        const MAX12: u64 = 0o77777777777;
        if self.uid > MAX8 {
            pax_record(&mut pax, b"uid", self.uid.to_string().as_bytes());
        }
        if self.gid > MAX8 {
            pax_record(&mut pax, b"gid", self.gid.to_string().as_bytes());
        }
        if self.size > MAX12 {
            pax_record(&mut pax, b"size", self.size.to_string().as_bytes());
        }
        if self.mtime < 0 || self.mtime as u64 > MAX12 {
            pax_record(&mut pax, b"mtime", self.mtime.to_string().as_bytes());
        }
        if self.uname.len() > 32 {
            pax_record(&mut pax, b"uname", &self.uname);
        }
        if self.gname.len() > 32 {
            pax_record(&mut pax, b"gname", &self.gname);
        }
        for (k, v) in &self.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax_record(&mut pax, &key, v);
        }
        let mut out = Vec::with_capacity(BLOCK * 2);
        let (prefix, name) =
            split.unwrap_or((&[], &self.path[self.path.len().saturating_sub(100)..]));
        let link: &[u8] = if self.link_target.len() > 100 {
            &[]
        } else {
            &self.link_target
        };
        if !pax.is_empty() {
            let mut ph = TarHeader::new(b"PaxHeader".to_vec(), EntryType::PaxLocal);
            ph.size = pax.len() as u64;
            ph.mode = 0o644;
            out.extend_from_slice(&ustar_block(&ph, b"PaxHeader", &[], &[], b'x'));
            out.extend_from_slice(&pax);
            out.resize(out.len() + padding(pax.len() as u64) as usize, 0);
        }
        out.extend_from_slice(&ustar_block(
            self,
            name,
            prefix,
            link,
            self.entry_type.flag(),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(f: impl FnOnce(&mut [u8; 512])) -> [u8; 512] {
        let mut b = [0u8; 512];
        f(&mut b);
        finish_checksum(&mut b);
        b
    }

    #[test]
    fn ustar_roundtrip_and_prefix() {
        let mut h = TarHeader::new(
            format!("{}/{}", "d".repeat(120), "f".repeat(90)),
            EntryType::Regular,
        );
        h.mode = 0o644;
        h.uid = 1000;
        h.gid = 100;
        h.size = 12345;
        h.mtime = 1_700_000_000;
        h.uname = b"user".to_vec();
        let bytes = h.to_bytes();
        assert_eq!(bytes.len(), 512, "fits ustar with a prefix");
        let p = TarHeader::from_bytes(&bytes).unwrap();
        assert_eq!(p.path, h.path);
        assert_eq!(
            (p.mode, p.uid, p.gid, p.size, p.mtime),
            (0o644, 1000, 100, 12345, 1_700_000_000)
        );
        assert_eq!(p.format, HeaderFormat::Ustar);
    }

    #[test]
    fn pax_for_what_ustar_cannot_hold() {
        let mut h = TarHeader::new(vec![b'x'; 300], EntryType::Symlink);
        h.link_target = vec![b'y'; 200];
        h.uid = 1 << 32;
        h.mtime = -5;
        h.xattrs.push((b"user.k".to_vec(), b"v\0w".to_vec()));
        let bytes = h.to_bytes();
        let mut s = HeaderStream::new();
        s.push(&bytes).unwrap();
        let p = s.take(0).unwrap();
        assert_eq!(p.path, h.path);
        assert_eq!(p.link_target, h.link_target);
        assert_eq!(p.uid, 1 << 32);
        assert_eq!(p.mtime, -5);
        assert_eq!(p.xattrs, h.xattrs);
        assert!(p.pax);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_numeric(b"0000644\0").unwrap(), 0o644);
        assert_eq!(parse_numeric(b"  644 \0").unwrap(), 0o644);
        assert_eq!(parse_numeric(b"\0\0\0").unwrap(), 0);
        // base-256
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1]).unwrap(), 1);
        assert_eq!(
            parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap(),
            1 << 32
        );
        assert_eq!(parse_numeric(&[0xff; 12]).unwrap(), -1);
        assert!(
            parse_numeric(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err()
        );
        assert!(parse_numeric(b"0009").is_err());
        assert!(parse_octal(b"77777777777777777777777").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.5").unwrap(),
            (1_700_000_000, 500_000_000)
        );
        assert_eq!(
            parse_pax_time(b"1700000000.123456789123").unwrap(),
            (1_700_000_000, 123_456_789)
        );
        assert_eq!(parse_pax_time(b"-1.5").unwrap(), (-2, 500_000_000));
        assert!(parse_pax_time(b"1.2.3").is_err());
        assert!(parse_pax_time(b"").is_err());
    }

    #[test]
    fn pax_records() {
        let r = parse_pax_records(b"18 path=some/path\n13 uid=12345\n").unwrap();
        assert_eq!(r[0], (b"path".to_vec(), b"some/path".to_vec()));
        assert_eq!(r[1], (b"uid".to_vec(), b"12345".to_vec()));
        for bad in [
            &b"5 a=b\n"[..],
            b"x path=a\n",
            b"100 path=a\n",
            b"7 path\n",
            b"6 =ab\n",
        ] {
            assert!(
                parse_pax_records(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn checksum_and_garbage() {
        let mut b = block(|b| {
            b[..4].copy_from_slice(b"name");
            b[156] = b'0';
        });
        assert!(TarHeader::from_bytes(&b).is_ok());
        b[0] = b'N';
        assert!(
            TarHeader::from_bytes(&b)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        assert!(TarHeader::from_bytes(&[0u8; 100]).is_err());
        assert!(TarHeader::from_bytes(&[0u8; 512]).is_err());
        assert!(TarHeader::from_bytes(&[0xffu8; 512]).is_err());
    }

    #[test]
    fn gnu_long_name_split_across_pushes() {
        let long = vec![b'n'; 700];
        let mut ln = TarHeader::new(b"././@LongLink".to_vec(), EntryType::GnuLongName);
        ln.size = long.len() as u64 + 1;
        let mut stream = ustar_block(&ln, b"././@LongLink", &[], &[], b'L').to_vec();
        stream.extend_from_slice(&long);
        stream.push(0);
        stream.resize(stream.len() + padding(ln.size) as usize, 0);
        let mut h = TarHeader::new(b"short".to_vec(), EntryType::Regular);
        h.size = 3;
        stream.extend_from_slice(&h.to_bytes());
        let mut s = HeaderStream::new();
        for chunk in stream.chunks(7) {
            s.push(chunk).unwrap();
        }
        let got = s.take(3).unwrap();
        assert_eq!(got.path, long);
        assert_eq!(got.size, 3);
        // Padding of the 3-byte content, then the end marker.
        s.push(&[0u8; 509]).unwrap();
        s.push(&[0u8; 1024]).unwrap();
        assert!(s.at_end());
        s.push(b"trailing garbage is ignored").unwrap();
    }

    #[test]
    fn two_headers_without_file_entry_is_an_error() {
        let h = TarHeader::new(b"a".to_vec(), EntryType::Directory).to_bytes();
        let mut s = HeaderStream::new();
        s.push(&h).unwrap();
        assert!(s.push(&h).is_err());
    }

    #[test]
    fn v7_directory_by_slash() {
        let b = block(|b| {
            b[..4].copy_from_slice(b"dir/");
            b[100..107].copy_from_slice(b"0000755");
        });
        let h = TarHeader::from_bytes(&b).unwrap();
        assert_eq!(h.format, HeaderFormat::V7);
        assert_eq!(h.entry_type, EntryType::Directory);
    }
}
