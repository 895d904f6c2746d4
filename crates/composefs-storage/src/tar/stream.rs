//! The header stream: a tar byte stream without file contents (tar-split's segments, one after
//! another) turned into complete entry headers, with PAX (local and global) and GNU long
//! name/link records applied.

use crate::error::Result;
use crate::tar::header::*;
use crate::tar::pax::*;

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
pub(crate) struct HeaderStream {
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

    #[cfg(test)]
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
