//! File-descriptor-relative file access that never leaves a directory.
//!
//! Every open below goes through `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`
//! relative to a directory handle: absolute names, `..` that climbs out, and symlinks whose
//! target leaves the directory all fail with `EXDEV` in the kernel, not in a check of ours that
//! could race. Files are opened with `O_NONBLOCK | O_NOCTTY` and checked with `fstat` so that a
//! FIFO or a device planted where a regular file is expected is refused instead of blocking.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use cap_std::fs::Dir;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// How symlinks in the last component are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Follow {
    /// Follow a symlink in the last component (still only beneath the directory).
    Yes,
    /// Refuse a symlink in the last component (`O_NOFOLLOW`, fails with `ELOOP`).
    No,
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// `openat2(dir, path, flags, RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS)`, retried on `EAGAIN`
/// (which openat2 returns when a concurrent rename raced the lookup) and `EINTR`.
pub(crate) fn openat2_beneath(dir: impl AsFd, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            dir.as_fd(),
            path,
            with_safe_flags(flags),
            Mode::empty(),
            resolve_flags(),
        ) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) if tries < 64 => {
                tries += 1
            }
            // A rootless store's file owned by a container user: the user-namespace helper
            // may open it (if the program opted in and `dir` is beneath a store root).
            Err(rustix::io::Errno::ACCESS) => {
                return crate::userns::open_denied(
                    dir.as_fd(),
                    path,
                    flags,
                    rustix::io::Errno::ACCESS.into(),
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `flags` plus `O_CLOEXEC`, and `O_NOCTTY` unless `O_PATH` (which `openat2` accepts only with
/// `O_CLOEXEC`, `O_DIRECTORY` and `O_NOFOLLOW`).
pub(crate) fn with_safe_flags(flags: OFlags) -> OFlags {
    if flags.contains(OFlags::PATH) {
        flags | OFlags::CLOEXEC
    } else {
        flags | OFlags::CLOEXEC | OFlags::NOCTTY
    }
}

pub(crate) fn not_regular(ft: FileType) -> io::Error {
    let what = match ft {
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        FileType::Symlink => "a symlink",
        _ => "not a regular file",
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("expected a regular file, found {what}"),
    )
}

/// Opens the regular file `path` beneath `dir` for reading and returns it with its size.
pub(crate) fn open_regular(dir: impl AsFd, path: &Path, follow: Follow) -> io::Result<(File, u64)> {
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK;
    if follow == Follow::No {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = openat2_beneath(dir, path, flags)?;
    let st = rustix::fs::fstat(&fd)?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(not_regular(ft));
    }
    // O_NONBLOCK has no effect on regular files; leave it set.
    Ok((File::from(fd), st.st_size as u64))
}

/// Opens the directory `path` beneath `dir`.
pub(crate) fn open_dir(dir: impl AsFd, path: &Path) -> io::Result<Dir> {
    let fd = openat2_beneath(dir, path, OFlags::RDONLY | OFlags::DIRECTORY)?;
    Ok(Dir::from_std_file(File::from(fd)))
}

/// Opens the directory `path` beneath `dir`, refusing a symlink in the last component.
pub(crate) fn open_dir_nofollow(dir: impl AsFd, path: &Path) -> io::Result<Dir> {
    let fd = openat2_beneath(
        dir,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
    )?;
    Ok(Dir::from_std_file(File::from(fd)))
}

/// Reads a whole regular file beneath `dir`, refusing files larger than `limit` bytes.
pub(crate) fn read_file(dir: impl AsFd, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let (file, size) = open_regular(dir, path, Follow::Yes)?;
    if size > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {size} bytes, more than the {limit} bytes accepted"),
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    // The file may grow while being read; never read past the limit.
    file.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file grew beyond the {limit} bytes accepted while being read"),
        ));
    }
    Ok(buf)
}

/// Like [`read_file`], but a missing file (`ENOENT`) gives `None`.
pub(crate) fn read_file_optional(
    dir: impl AsFd,
    path: &Path,
    limit: u64,
) -> io::Result<Option<Vec<u8>>> {
    match read_file(dir, path, limit) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `fstatat(dir, path, AT_SYMLINK_NOFOLLOW)`; `None` if it does not exist. The path must be a
/// single component (no `/`), so no resolution happens outside `dir`.
pub(crate) fn lstat_name(dir: impl AsFd, name: &str) -> io::Result<Option<rustix::fs::Stat>> {
    debug_assert!(!name.contains('/'));
    match lstat_at(dir, Path::new(name)) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `fstatat(dir, path, AT_SYMLINK_NOFOLLOW)` for a path that is already confined to `dir` (a
/// single component, or checked by the caller). Where `dir` cannot be searched (`EACCES`),
/// the entry is opened `O_PATH` beneath `dir` (through the user-namespace helper, see
/// [`crate::userns`]) and `fstat`ed.
pub(crate) fn lstat_at(dir: impl AsFd, path: &Path) -> io::Result<rustix::fs::Stat> {
    match rustix::fs::statat(dir.as_fd(), path, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(st),
        Err(rustix::io::Errno::ACCESS) => {
            let fd = openat2_beneath(dir, path, OFlags::PATH | OFlags::NOFOLLOW)?;
            Ok(rustix::fs::fstat(fd)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the target of the symlink `name` (a single component, any bytes) in `dir`; where
/// `dir` cannot be searched, through an `O_PATH` fd as [`lstat_at`] does.
pub(crate) fn read_link_at(dir: impl AsFd, name: &Path) -> io::Result<std::ffi::OsString> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    debug_assert!(!name.as_os_str().as_bytes().contains(&b'/'));
    let target = match rustix::fs::readlinkat(dir.as_fd(), name, Vec::new()) {
        Ok(t) => t,
        Err(rustix::io::Errno::ACCESS) => {
            let fd = openat2_beneath(dir, name, OFlags::PATH | OFlags::NOFOLLOW)?;
            rustix::fs::readlinkat(&fd, "", Vec::new())?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(std::ffi::OsString::from_vec(target.into_bytes()))
}

/// Checks that `s` is usable as one path component taken from a record (an ID, a link name,
/// a big-data file name): not empty, not `.` or `..`, no `/` and no NUL.
pub(crate) fn check_component(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty name".into());
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not a valid name"));
    }
    if s.contains('/') {
        return Err(format!("{s:?} contains '/'"));
    }
    if s.contains('\0') {
        return Err(format!("{s:?} contains a NUL byte"));
    }
    if s.len() > 255 {
        return Err(format!("name of {} bytes is too long", s.len()));
    }
    Ok(())
}

/// Lists the extended attributes of an open file (names and values), with `ENOTSUP` meaning
/// none. Values are read into a bounded buffer (64 KiB, the kernel's limit).
///
/// Where reading them is denied (`user.*` attributes of a rootless store's file owned by a
/// container user), they are read through the user-namespace helper ([`crate::userns`]).
pub(crate) fn fd_xattrs(fd: impl AsFd) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    match fd_xattrs_direct(fd.as_fd()) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            crate::userns::xattrs_denied(fd.as_fd(), e)
        }
        r => r,
    }
}

/// The values of the extended attributes `names` of an open file, in order, `None` where
/// one is absent (or the file system has no attributes, or it is not readable by us as
/// `trusted.*` is not). A value too long for a small buffer, or a denied read, is answered
/// from the full list ([`fd_xattrs`], which goes through the user-namespace helper when
/// denied), read once for all the names.
pub(crate) fn fd_xattr_values(fd: impl AsFd, names: &[&str]) -> io::Result<Vec<Option<Vec<u8>>>> {
    let mut buf = [0u8; 256];
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match rustix::fs::fgetxattr(fd.as_fd(), *name, &mut buf[..]) {
            Ok(n) => out.push(Some(buf[..n].to_vec())),
            Err(rustix::io::Errno::NODATA)
            | Err(rustix::io::Errno::NOTSUP)
            | Err(rustix::io::Errno::PERM) => out.push(None),
            Err(rustix::io::Errno::RANGE) | Err(rustix::io::Errno::ACCESS) => {
                let all = fd_xattrs(fd)?;
                return Ok(names
                    .iter()
                    .map(|n| {
                        all.iter()
                            .find(|(k, _)| k == n.as_bytes())
                            .map(|(_, v)| v.clone())
                    })
                    .collect());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn fd_xattrs_direct(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 64 << 10];
    let n = match rustix::fs::flistxattr(fd.as_fd(), &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; 64 << 10];
    for name in names[..n].split(|&c| c == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CStr::from_bytes_with_nul(&[name, &[0]].concat())
            .map(|c| c.to_owned())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "xattr name with a NUL"))?;
        match rustix::fs::fgetxattr(fd.as_fd(), cname.as_c_str(), &mut value[..]) {
            Ok(k) => out.push((name.to_vec(), value[..k].to_vec())),
            // Removed meanwhile, or not readable by us (e.g. trusted.* as non-root).
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    #[test]
    fn refuses_escapes() {
        let td = tempfile::tempdir().unwrap();
        std::fs::create_dir(td.path().join("d")).unwrap();
        std::fs::write(td.path().join("outside"), b"secret").unwrap();
        std::fs::write(td.path().join("d/inside"), b"ok").unwrap();
        std::os::unix::fs::symlink("../outside", td.path().join("d/up")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", td.path().join("d/abs")).unwrap();
        std::os::unix::fs::symlink("inside", td.path().join("d/rel")).unwrap();
        let d = Dir::open_ambient_dir(td.path().join("d"), ambient_authority()).unwrap();
        assert_eq!(read_file(&d, Path::new("inside"), 100).unwrap(), b"ok");
        assert_eq!(read_file(&d, Path::new("rel"), 100).unwrap(), b"ok");
        for bad in ["up", "abs", "../outside", "/etc/passwd"] {
            let e = read_file(&d, Path::new(bad), 100).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{bad}: {e}");
        }
        let e = open_regular(&d, Path::new("rel"), Follow::No).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn refuses_fifo_without_blocking() {
        let td = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            td.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let d = Dir::open_ambient_dir(td.path(), ambient_authority()).unwrap();
        let e = read_file(&d, Path::new("fifo"), 100).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }

    #[test]
    fn size_limit() {
        let td = tempfile::tempdir().unwrap();
        std::fs::write(td.path().join("big"), vec![0u8; 1000]).unwrap();
        let d = Dir::open_ambient_dir(td.path(), ambient_authority()).unwrap();
        assert!(read_file(&d, Path::new("big"), 999).is_err());
        assert_eq!(read_file(&d, Path::new("big"), 1000).unwrap().len(), 1000);
    }

    #[test]
    fn components() {
        assert!(check_component("abc").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_component(bad).is_err(), "{bad:?}");
        }
    }
}
