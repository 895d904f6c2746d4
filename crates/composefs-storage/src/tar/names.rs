//! Tar member names as c/storage and Go see them: lexical cleaning with Go's `path.Clean`
//! rules, and the path beneath a layer's `diff/` directory a member's content is read from.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Lexical path cleaning with Go's `path.Clean` rules, on bytes.
pub(crate) fn clean_name(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 1);
    clean_name_into(name, &mut out);
    out
}

/// [`clean_name`] into a reused buffer.
pub(crate) fn clean_name_into(name: &[u8], out: &mut Vec<u8>) {
    out.clear();
    if name.is_empty() {
        out.push(b'.');
        return;
    }
    // Fast path: already clean (no empty, "." or ".." components, no trailing slash).
    if name[name.len() - 1] != b'/'
        && !name
            .split(|&c| c == b'/')
            .enumerate()
            .any(|(i, c)| (c.is_empty() && i > 0) || c == b"." || c == b"..")
    {
        out.extend_from_slice(name);
        return;
    }
    let rooted = name[0] == b'/';
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in name.split(|&c| c == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if matches!(parts.last(), Some(p) if *p != b"..") {
                    parts.pop();
                } else if !rooted {
                    parts.push(comp);
                }
            }
            c => parts.push(c),
        }
    }
    if rooted {
        out.push(b'/');
    }
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'.');
    }
}

/// The path, relative to a layer's diff directory, that holds the content of tar member
/// `name`; `Err` if the name climbs out of the directory. Absolute names are resolved inside
/// the layer, as c/storage's `filepath.Join(diffDir, name)` does when it extracts and reads
/// them.
pub(crate) fn content_path(name: &[u8]) -> std::result::Result<PathBuf, String> {
    let c = clean_name(name);
    let rel: &[u8] = if c[0] == b'/' { &c[1..] } else { &c };
    if rel == b".." || rel.starts_with(b"../") {
        return Err("the name climbs out of the layer directory".into());
    }
    if rel.contains(&0) {
        return Err("the name contains a NUL byte".into());
    }
    if rel.is_empty() || rel == b"." {
        return Ok(PathBuf::from("."));
    }
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(rel)))
}
