//! `cstorage layer ls`.

use std::io::Write;

use anyhow::Result;
use composefs_storage::Layer;
use composefs_storage::tar_header::EntryType;

/// `drwxr-xr-x`-style mode string.
pub fn mode_string(t: char, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(t);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (b, c)) in bits.iter().enumerate() {
        let mut ch = if mode & b != 0 { *c } else { '-' };
        if i == 2 && mode & 0o4000 != 0 {
            ch = if ch == 'x' { 's' } else { 'S' };
        }
        if i == 5 && mode & 0o2000 != 0 {
            ch = if ch == 'x' { 's' } else { 'S' };
        }
        if i == 8 && mode & 0o1000 != 0 {
            ch = if ch == 'x' { 't' } else { 'T' };
        }
        s.push(ch);
    }
    s
}

pub fn layer(l: &Layer, out: &mut impl Write, long: bool, json: bool) -> Result<()> {
    if json {
        // A JSON array, streamed entry by entry.
        writeln!(out, "[")?;
        let mut first = true;
        for h in l.entries()? {
            let h = h?;
            if !first {
                writeln!(out, ",")?;
            }
            first = false;
            serde_json::to_writer(&mut *out, &h)?;
        }
        writeln!(out, "\n]")?;
        return Ok(());
    }
    for h in l.entries()? {
        let h = h?;
        if !long {
            out.write_all(&h.path)?;
            out.write_all(b"\n")?;
            continue;
        }
        let size = match h.entry_type {
            EntryType::CharDevice | EntryType::BlockDevice => {
                format!("{},{}", h.dev_major, h.dev_minor)
            }
            _ => h.size.to_string(),
        };
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.mtime.max(0) as u64);
        write!(
            out,
            "{} {}:{} {:>10} {} {}",
            mode_string(h.entry_type.ls_char(), h.mode),
            h.uid,
            h.gid,
            size,
            &crate::fmt::rfc3339(t)[..19],
            h.path_lossy()
        )?;
        match h.entry_type {
            EntryType::Symlink => write!(out, " -> {}", h.link_target_lossy())?,
            EntryType::HardLink => write!(out, " link to {}", h.link_target_lossy())?,
            _ => {}
        }
        for (k, v) in &h.xattrs {
            write!(
                out,
                " [{}={}]",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v).escape_debug()
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}
