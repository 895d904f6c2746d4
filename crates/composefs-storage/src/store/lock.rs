//! Shared locks compatible with containers/storage, and its "last write" tokens.
//!
//! c/storage locks whole lock files with POSIX record locks (`fcntl(F_SETLKW)`, `F_RDLCK` /
//! `F_WRLCK`, start 0, length 0). We take the same kind of lock, shared, as an *open file
//! description* lock (`F_OFD_SETLKW`): per fcntl(2) OFD locks and classic record locks of other
//! processes conflict with each other, so a c/storage writer waits for us and we wait for it.
//! OFD locks belong to the open file description, not to the process, so another part of the
//! program closing its own descriptor of the same file cannot silently drop our lock (the
//! classic pitfall of POSIX record locks). On kernels without OFD locks (before 3.15) we fall
//! back to classic record locks. `flock(2)` is never used: it does not interact with either.
//!
//! Lock files are always opened read-only (a shared lock only needs a readable descriptor) and
//! never created or written. A lock file that does not exist means no c/storage process has
//! initialized that part of the store; reading proceeds without a lock and says so in the
//! debug log.
//!
//! Within this process, a [`LockFile`] counts its holders: the kernel lock is taken by the first
//! and released by the last, so nested holders (an operation running while the caller holds a
//! [`crate::store::storage::ReadGuard`]) do not release each other's lock.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use cap_std::fs::Dir;
use rustix::fs::OFlags;

use crate::error::{Result, StorageError};
use crate::fsutil;
use crate::sys::{OfdLock, ofd_lock};

/// Length of the last-write token at the start of each lock file.
pub(crate) const TOKEN_LEN: usize = 64;

#[derive(Debug)]
struct State {
    fd: Option<Arc<OwnedFd>>,
    holders: u32,
}

/// One c/storage lock file (e.g. `overlay-layers/layers.lock`).
#[derive(Debug)]
pub(crate) struct LockFile {
    dir: Dir,
    name: String,
    display: PathBuf,
    state: Mutex<State>,
}

/// A held shared lock; dropping it releases the lock when it was the last holder.
#[derive(Debug)]
#[must_use = "the lock is released when this is dropped"]
pub(crate) struct SharedLock {
    file: Arc<LockFile>,
}

/// The result of [`LockFile::lock_shared`]'s token check.
pub(crate) type Token = Option<Vec<u8>>;

/// Classic POSIX record lock fallback for kernels without OFD locks.
fn classic_lock(fd: &OwnedFd, op: OfdLock, wait: bool) -> std::io::Result<()> {
    use rustix::fs::FlockOperation;
    // rustix's fcntl_lock maps these onto F_SETLK(W) with F_RDLCK/F_UNLCK over the whole file.
    let op = match (op, wait) {
        (OfdLock::Shared, true) => FlockOperation::LockShared,
        (OfdLock::Shared, false) => FlockOperation::NonBlockingLockShared,
        (OfdLock::Unlock, _) => FlockOperation::Unlock,
    };
    loop {
        match rustix::fs::fcntl_lock(fd, op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn set_lock(fd: &OwnedFd, op: OfdLock, wait: bool) -> std::io::Result<()> {
    match ofd_lock(fd.as_fd(), op, wait) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => classic_lock(fd, op, wait),
        r => r,
    }
}

impl LockFile {
    /// Describes the lock file `name` in `dir`; nothing is opened yet.
    pub(crate) fn new(dir: Dir, name: &str, display: PathBuf) -> Arc<LockFile> {
        Arc::new(LockFile {
            dir,
            name: name.to_string(),
            display,
            state: Mutex::new(State {
                fd: None,
                holders: 0,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this mutex cannot leave the counter inconsistent in a way
        // that matters more than refusing to work, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_fd(&self) -> Result<Option<Arc<OwnedFd>>> {
        match fsutil::openat2_beneath(
            &self.dir,
            Path::new(&self.name),
            OFlags::RDONLY | OFlags::NONBLOCK,
        ) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd)
                    .map_err(|e| StorageError::io(&self.display, e.into()))?;
                let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
                if ft != rustix::fs::FileType::RegularFile {
                    return Err(StorageError::corrupt(
                        &self.display,
                        format!("lock file: {}", fsutil::not_regular(ft)),
                    ));
                }
                Ok(Some(Arc::new(fd)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log::debug!(
                    "{}: lock file does not exist; reading without a lock",
                    self.display.display()
                );
                Ok(None)
            }
            Err(e) => Err(StorageError::io(&self.display, e)),
        }
    }

    /// Takes the shared lock (waiting for writers), or joins it if this process holds it.
    pub(crate) fn lock_shared(self: &Arc<Self>) -> Result<SharedLock> {
        let mut st = self.state();
        if st.holders == 0 {
            if st.fd.is_none() {
                st.fd = self.open_fd()?;
            }
            if let Some(fd) = &st.fd {
                match set_lock(fd, OfdLock::Shared, false) {
                    Ok(()) => {}
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) =>
                    {
                        log::info!("waiting for a writer to release {}", self.display.display());
                        set_lock(fd, OfdLock::Shared, true)
                            .map_err(|e| StorageError::io(&self.display, e))?;
                    }
                    Err(e) => return Err(StorageError::io(&self.display, e)),
                }
            }
        }
        st.holders += 1;
        Ok(SharedLock { file: self.clone() })
    }

    /// Reads the last-write token (up to 64 bytes at offset 0). `None` if the file does not
    /// exist. Only meaningful while a shared lock is held.
    pub(crate) fn token(&self) -> Result<Token> {
        let fd = {
            let mut st = self.state();
            if st.fd.is_none() {
                st.fd = self.open_fd()?;
            }
            st.fd.clone()
        };
        let Some(fd) = fd else { return Ok(None) };
        let mut buf = vec![0u8; TOKEN_LEN];
        let mut n = 0;
        while n < TOKEN_LEN {
            match rustix::io::pread(fd.as_fd(), &mut buf[n..], n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(StorageError::io(&self.display, e.into())),
            }
        }
        buf.truncate(n);
        Ok(Some(buf))
    }

    /// Whether this process currently holds the lock.
    #[cfg(test)]
    pub(crate) fn is_held(&self) -> bool {
        self.state().holders > 0
    }
}

impl Drop for SharedLock {
    fn drop(&mut self) {
        let mut st = self.file.state();
        st.holders = st.holders.saturating_sub(1);
        if st.holders == 0 {
            if let Some(fd) = &st.fd {
                if let Err(e) = set_lock(fd, OfdLock::Unlock, false) {
                    log::warn!("{}: unlocking failed: {e}", self.file.display.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    /// A shared lock held here must make a classic write lock of another process fail, and
    /// dropping the last holder must release it.
    #[test]
    fn conflicts_with_classic_write_lock_of_another_process() {
        let td = tempfile::tempdir().unwrap();
        std::fs::write(td.path().join("layers.lock"), b"").unwrap();
        let dir = Dir::open_ambient_dir(td.path(), ambient_authority()).unwrap();
        let lf = LockFile::new(dir, "layers.lock", td.path().join("layers.lock"));
        let probe = |path: &Path| -> bool {
            // A child process tries a non-blocking classic write lock; exit 0 = got it.
            let script = format!(
                "import fcntl,sys\nf=open('{}','r+')\ntry:\n fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(1)\nsys.exit(0)",
                path.display()
            );
            std::process::Command::new("python3")
                .arg("-c")
                .arg(script)
                .status()
                .unwrap()
                .success()
        };
        let path = td.path().join("layers.lock");
        assert!(probe(&path), "nothing holds the lock yet");
        let g1 = lf.lock_shared().unwrap();
        let g2 = lf.lock_shared().unwrap();
        assert!(
            !probe(&path),
            "writer must be blocked while we hold a shared lock"
        );
        drop(g1);
        assert!(lf.is_held());
        assert!(!probe(&path), "still held by the second holder");
        drop(g2);
        assert!(!lf.is_held());
        assert!(probe(&path), "released after the last holder");
    }

    #[test]
    fn token_and_missing_file() {
        let td = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(td.path(), ambient_authority()).unwrap();
        let lf = LockFile::new(dir, "x.lock", td.path().join("x.lock"));
        assert_eq!(lf.token().unwrap(), None);
        let _g = lf.lock_shared().unwrap();
        drop(_g);
        std::fs::write(td.path().join("x.lock"), [7u8; 80]).unwrap();
        assert_eq!(lf.token().unwrap(), Some(vec![7u8; 64]));
    }

    #[test]
    fn fifo_lock_file_is_refused() {
        let td = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            td.path().join("f.lock"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let dir = Dir::open_ambient_dir(td.path(), ambient_authority()).unwrap();
        let lf = LockFile::new(dir, "f.lock", td.path().join("f.lock"));
        let e = lf.lock_shared().unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }
}
