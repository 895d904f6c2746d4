//! Every `unsafe` block of the crate, each behind a safe function: the rest of the crate is
//! compiled with `unsafe_code` denied.
//!
//! What needs it: OFD record locks (`F_OFD_SETLK[W]`, which rustix does not offer), creating a
//! user namespace (`unshare`, which rustix marks unsafe because it changes the calling thread's
//! view of shared state), borrowing a descriptor number the user named (`/dev/fd/N`), and an
//! all-zero `struct stat` to fill in.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::Stat;

/// An all-zero `struct stat`, to fill in field by field.
pub(crate) fn zeroed_stat() -> Stat {
    // SAFETY: `Stat` is a plain C struct of integers, for which all-zero bytes are a valid
    // value.
    unsafe { std::mem::zeroed() }
}

/// The OFD lock operations the crate uses.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OfdLock {
    /// A shared (read) lock over the whole file.
    Shared,
    /// Release the lock.
    Unlock,
}

/// Takes or drops an OFD lock over the whole file; `wait` selects `F_OFD_SETLKW`. Retried on
/// `EINTR`.
pub(crate) fn ofd_lock(fd: BorrowedFd<'_>, op: OfdLock, wait: bool) -> std::io::Result<()> {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match op {
        OfdLock::Shared => libc::F_RDLCK as libc::c_short,
        OfdLock::Unlock => libc::F_UNLCK as libc::c_short,
    };
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    // OFD locks require l_pid == 0 (already zeroed).
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: `fd` is an open descriptor borrowed for the whole call, and `fl` is a valid,
        // initialized `struct flock` that lives across the call.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
        if r == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return Err(err);
    }
}

/// Moves this process into a new user namespace. Refused (`EINVAL`) unless the process has a
/// single thread: the user-namespace helper calls it first thing after it starts.
pub(crate) fn unshare_user_namespace() -> std::io::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "unshare(CLONE_NEWUSER) needs a single-threaded process, this one has {threads} threads"
            ),
        ));
    }
    // SAFETY: only a new user namespace is requested, not `CLONE_FILES` or `CLONE_FS`, so no
    // state shared with other threads changes, and the process has been checked to have a
    // single thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER) }
        .map_err(Into::into)
}

/// Duplicates descriptor number `fd` of this process (close-on-exec, at 3 or above).
pub(crate) fn dup_raw_fd(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: `fd` is only borrowed for the duration of the `dup` call; `fcntl_dupfd_cloexec`
    // fails with EBADF if it is not open, so no invalid descriptor is used.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_dupfd_cloexec(borrowed, 3).map_err(Into::into)
}
