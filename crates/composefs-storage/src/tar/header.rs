//! Tar headers: parsing the 512-byte blocks found in tar-split segments (v7, ustar, GNU, PAX),
//! and writing them (for layers that have to be generated from their `diff` directory).
//!
//! Parsing is sans-IO: [`TarHeader::from_bytes`] reads one block; the stream parser (the
//! `stream` module) consumes a tar byte stream from which file contents have been removed
//! (exactly what tar-split's segments are) and yields complete entries with PAX and GNU
//! long-name records applied.
//!
//! Writing stays hand-written rather than going through a tar crate: a generated diff must
//! equal `containers-storage diff -u` byte for byte, which takes Go's `archive/tar` choices
//! (when PAX records are written and in which order, GNU vs ustar fields, the checksum's
//! format), not just a valid tar.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Result, StorageError};
use crate::tar::pax::{parse_pax_time, pax_record};

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Largest PAX or GNU long-name record accepted (Go's `maxSpecialFileSize`).
pub(crate) const MAX_SPECIAL: u64 = 1 << 20;

pub(crate) fn herr(msg: impl Into<String>) -> StorageError {
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

/// A parsed tar header, with PAX and GNU extension records applied when it came from the
/// header stream of tar-split segments.
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
pub(crate) fn parse_octal(f: &[u8]) -> Result<u64> {
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

pub(crate) fn trim(f: &[u8]) -> &[u8] {
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
pub(crate) fn parse_numeric(f: &[u8]) -> Result<i64> {
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

pub(crate) fn parse_unsigned(f: &[u8], what: &str) -> Result<u64> {
    let v = parse_numeric(f)?;
    u64::try_from(v).map_err(|_| herr(format!("negative {what}")))
}

pub(crate) fn cstr(f: &[u8]) -> &[u8] {
    match f.iter().position(|&c| c == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

impl TarHeader {
    /// Parses one 512-byte header block (v7, ustar or GNU). PAX and GNU long-name records are
    /// not applied here (the header stream applies them). Fails on a short block, a bad checksum or
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

    pub(crate) fn apply_pax(&mut self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Writing headers (for tars generated from a diff directory).

pub(crate) fn put_octal(field: &mut [u8], v: u64) -> bool {
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

pub(crate) fn put_str(field: &mut [u8], v: &[u8]) -> bool {
    if v.len() > field.len() {
        return false;
    }
    field[..v.len()].copy_from_slice(v);
    true
}

pub(crate) fn finish_checksum(b: &mut [u8; BLOCK]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

pub(crate) fn ustar_block(
    h: &TarHeader,
    name: &[u8],
    prefix: &[u8],
    link: &[u8],
    flag: u8,
) -> [u8; BLOCK] {
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
pub(crate) fn split_ustar(p: &[u8]) -> Option<(&[u8], &[u8])> {
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
