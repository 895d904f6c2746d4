//! PAX extended-header records: parsing them (with Go's rules for times) and writing one.

use crate::error::{Result, StorageError};

fn herr(msg: impl Into<String>) -> StorageError {
    StorageError::TarHeader(msg.into())
}

/// Parses a PAX time (`1700000000.123456789`, possibly negative) into seconds and nanos.
pub(crate) fn parse_pax_time(v: &[u8]) -> Result<(i64, u32)> {
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

pub(crate) fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
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
