//! Where written output goes: the one set of rules every command that writes follows.
//!
//! - `-` is standard output, refused when it is a terminal.
//! - A symlink is followed; the rules apply to what it points to. A path that resolves to one
//!   of this process's open descriptors (`/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`) is
//!   that descriptor, written at its offset, as a shell redirection would be.
//! - A FIFO, character or block device, or socket is written into directly, never replaced.
//! - A regular file (or a new one) is written under a temporary name beside it, created with
//!   the final mode, and renamed over it only when the caller commits (after a complete,
//!   verified export); an existing file's mode and owner are kept. The other names of a file
//!   with several hard links keep the old content (the rename gives the name a new inode).
//! - Temporary names are recognisable and carry the PID: `.<name>.cstorage-tmp-<pid>-<hex>`.
//!   Writing into a directory first removes such leftovers of processes that are gone (a
//!   `kill -9`). Everything temporary, and everything an unfinished command created, is
//!   registered until it is committed or dropped, so that a signal handler can remove it
//!   with [`remove_pending`] before the process exits.
//!
//! This is hand-written rather than built on `tempfile` or `cap-std-ext`'s atomic writes:
//! those create a temporary file and rename it, but none keeps the replaced file's owner,
//! writes into FIFOs and devices instead of replacing them, names temporaries so that a later
//! run can tell a dead process's leftovers from a live one's, or registers them for removal
//! from a signal handler. Every writer in the crate (layer and image export, the OCI layout's
//! `index.json`, composefs images, unpack's tar output) goes through this module.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Result, StorageError};

/// The part of every temporary name that marks it as this tool's.
const TMP_MARK: &str = ".cstorage-tmp-";

/// Paths to remove if the process is interrupted: temporary files and directories, and what
/// an unfinished command created. `None` once [`remove_pending`] ran (no more are made).
static PENDING: Mutex<Option<Vec<PathBuf>>> = Mutex::new(Some(Vec::new()));

/// A temporary name for `base` in its directory: `.<base>.cstorage-tmp-<pid>-<random hex>`.
pub(crate) fn temp_name(base: &OsStr) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(".");
    s.push(base);
    s.push(format!("{TMP_MARK}{}-{:x}", std::process::id(), rand_u64()));
    s
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The PID a temporary name carries, if `name` is one of ours.
fn temp_pid(name: &[u8]) -> Option<u32> {
    if !name.starts_with(b".") {
        return None;
    }
    let at = memchr::memmem::rfind(name, TMP_MARK.as_bytes())?;
    let rest = &name[at + TMP_MARK.len()..];
    let dash = memchr::memchr(b'-', rest)?;
    let (pid, hex) = (&rest[..dash], &rest[dash + 1..]);
    if hex.is_empty() || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    std::str::from_utf8(pid).ok()?.parse().ok()
}

/// True if no process `pid` exists (in this PID namespace).
fn process_gone(pid: u32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Removes temporary files and directories left in `dir` by processes of this tool that are
/// gone (killed before they could clean up), if they belong to this user. Best effort: what
/// cannot be removed stays. Returns how many entries were removed.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let me = rustix::process::geteuid();
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = temp_pid(name.as_bytes()) else {
            continue;
        };
        if pid == std::process::id() || !process_gone(pid) {
            continue;
        }
        let Ok(md) = e.metadata() else { continue };
        if !me.is_root() && md.uid() != me.as_raw() {
            continue;
        }
        let p = e.path();
        let r = if md.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if r.is_ok() {
            log::info!("removed {} left by process {pid}", p.display());
            n += 1;
        }
    }
    n
}

/// Removes every registered temporary or unfinished path, and stops registering new ones.
/// Meant for a signal handler (run on an ordinary thread, e.g. by `signal-hook`'s iterator)
/// just before the process exits: after it, commands that create temporary files fail.
pub fn remove_pending() {
    let mut g = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    for p in g.take().unwrap_or_default().iter().rev() {
        remove_path(p);
    }
}

fn remove_path(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// A path registered for removal: removed when dropped (and by [`remove_pending`]) unless
/// [`Pending::keep`] was called.
#[derive(Debug)]
pub(crate) struct Pending(Option<PathBuf>);

impl Pending {
    /// Registers `path` (not yet created) and runs `create` while holding the registry, so
    /// that a signal handler either sees the path or runs before it exists.
    pub(crate) fn create<T>(
        path: PathBuf,
        create: impl FnOnce(&Path) -> std::io::Result<T>,
    ) -> std::io::Result<(Pending, T)> {
        let mut g = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = g.as_mut() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted: not creating more files",
            ));
        };
        let t = create(&path)?;
        list.push(path.clone());
        Ok((Pending(Some(path)), t))
    }

    /// The registered path.
    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Keeps the path: it is no longer removed.
    pub(crate) fn keep(mut self) {
        if let Some(p) = self.0.take() {
            unregister(&p);
        }
    }

    /// Renames the path to `to` (same file system) and keeps it.
    pub(crate) fn rename_to(mut self, to: &Path) -> std::io::Result<()> {
        let Some(p) = self.0.take() else {
            return Ok(());
        };
        let g = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            drop(g);
            self.0 = Some(p);
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted",
            ));
        }
        let r = std::fs::rename(&p, to);
        drop(g);
        match r {
            Ok(()) => {
                unregister(&p);
                Ok(())
            }
            Err(e) => {
                self.0 = Some(p);
                Err(e)
            }
        }
    }
}

impl Pending {
    /// Renames the path to `to` (same file system); the new name stays registered for
    /// removal in its place.
    pub(crate) fn renamed(mut self, to: &Path) -> std::io::Result<Pending> {
        let Some(p) = self.0.take() else {
            return Err(std::io::Error::other("nothing to rename"));
        };
        let mut g = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let r = match g.as_mut() {
            None => Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted",
            )),
            Some(list) => std::fs::rename(&p, to).map(|()| {
                if let Some(i) = list.iter().rposition(|x| *x == p) {
                    list[i] = to.to_owned();
                }
            }),
        };
        drop(g);
        match r {
            Ok(()) => Ok(Pending(Some(to.to_owned()))),
            Err(e) => {
                self.0 = Some(p);
                Err(e)
            }
        }
    }
}

fn unregister(p: &Path) {
    let mut g = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(list) = g.as_mut() {
        if let Some(i) = list.iter().rposition(|x| x == p) {
            list.remove(i);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // Hold the registry while removing, so a signal handler does not race us.
            let mut g = PENDING.lock().unwrap_or_else(|e| e.into_inner());
            remove_path(&p);
            if let Some(list) = g.as_mut() {
                if let Some(i) = list.iter().rposition(|x| *x == p) {
                    list.remove(i);
                }
            }
        }
    }
}

/// Where an [`OutputFile`] writes.
#[derive(Debug)]
enum Kind {
    /// Written into directly: standard output, an open descriptor of this process, a FIFO,
    /// a device or a socket.
    Direct,
    /// A temporary file, renamed over `dest` on commit.
    Replace { tmp: Pending, dest: PathBuf },
}

/// What an output path turned out to be, before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// Standard output, or an open descriptor of this process.
    Stdout,
    /// A FIFO, device or socket: written into directly.
    Special,
    /// A regular file (existing or new), replaced atomically on commit.
    File,
}

/// An output opened by the rules of this module. Write to it (or to [`OutputFile::file`] or its `as_fd()`),
/// then [`OutputFile::commit`]; dropped without commit, nothing of it remains.
///
/// ```no_run
/// use std::io::Write;
/// use std::path::Path;
/// use composefs_storage::OutputFile;
/// # fn main() -> composefs_storage::Result<()> {
/// // `-` is standard output; a regular file is written under a temporary name.
/// let mut out = OutputFile::create(Path::new("report.txt"))?;
/// out.write_all(b"done\n").map_err(|e| composefs_storage::StorageError::Io {
///     path: out.name().to_path_buf(),
///     error: e,
/// })?;
/// out.commit()?; // renamed over report.txt (mode and owner of an old one kept)
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct OutputFile {
    file: File,
    kind: Kind,
    name: PathBuf,
}

/// The result of following `path` to what it names.
enum Resolved {
    /// One of this process's descriptors.
    Fd(i32),
    /// A path that exists (not a symlink) or not.
    Path(PathBuf, Option<std::fs::Metadata>),
}

/// The descriptor `path` names if it is `/proc/self/fd/N`, `/proc/<own pid>/fd/N` or
/// `/dev/fd/N` (with its parent already resolved).
fn own_fd(parent: &Path, name: &OsStr) -> Option<i32> {
    let own = Path::new("/proc")
        .join(std::process::id().to_string())
        .join("fd");
    if parent != own && parent != Path::new("/proc/self/fd") && parent != Path::new("/dev/fd") {
        return None;
    }
    std::str::from_utf8(name.as_bytes()).ok()?.parse().ok()
}

/// Follows symlinks (40 at most, as the kernel) from `path` to what it names.
fn resolve(path: &Path) -> Result<Resolved> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        let name = match p.file_name() {
            Some(n) => n.to_owned(),
            None => {
                // `/`, `..`, `.`: a directory, or an error, either way not followed further.
                let md = std::fs::metadata(&p).ok();
                return Ok(Resolved::Path(p, md));
            }
        };
        let parent = match p.parent().filter(|q| !q.as_os_str().is_empty()) {
            Some(q) => std::fs::canonicalize(q).map_err(|e| {
                StorageError::io(
                    path,
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot use its directory {}: {e}", q.display()),
                    ),
                )
            })?,
            None => std::env::current_dir().map_err(|e| StorageError::io(path, e))?,
        };
        if let Some(fd) = own_fd(&parent, &name) {
            return Ok(Resolved::Fd(fd));
        }
        let full = parent.join(&name);
        match std::fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_symlink() => {
                let target = std::fs::read_link(&full).map_err(|e| StorageError::io(&full, e))?;
                p = parent.join(target);
            }
            Ok(md) => return Ok(Resolved::Path(full, Some(md))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Resolved::Path(full, None));
            }
            Err(e) => return Err(StorageError::io(path, e)),
        }
    }
    Err(StorageError::io(
        path,
        std::io::Error::from_raw_os_error(libc::ELOOP),
    ))
}

fn output_error(path: &Path, message: impl Into<String>) -> StorageError {
    StorageError::Output {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Duplicates descriptor `fd` of this process as a `File`.
fn dup_fd(fd: i32, name: &Path) -> Result<File> {
    let owned = crate::sys::dup_raw_fd(fd).map_err(|e| StorageError::io(name, e))?;
    Ok(File::from(owned))
}

impl OutputFile {
    /// Opens standard output for binary output; refused if it is a terminal.
    pub fn stdout() -> Result<OutputFile> {
        let name = PathBuf::from("standard output");
        if std::io::stdout().is_terminal() {
            return Err(output_error(
                &name,
                "is a terminal: refusing to write binary data to a terminal (use -o FILE or redirect it)",
            ));
        }
        Ok(OutputFile {
            file: dup_fd(1, &name)?,
            kind: Kind::Direct,
            name,
        })
    }

    /// What `path` names under the rules of this module (`-` is standard output), without
    /// opening or creating anything.
    pub fn kind_of(path: &Path) -> Result<OutputKind> {
        if path == Path::new("-") {
            return Ok(OutputKind::Stdout);
        }
        Ok(match resolve(path)? {
            Resolved::Fd(_) => OutputKind::Stdout,
            Resolved::Path(_, Some(md)) if md.is_dir() => {
                return Err(StorageError::io(
                    path,
                    std::io::Error::from(std::io::ErrorKind::IsADirectory),
                ));
            }
            Resolved::Path(_, Some(md)) if !md.is_file() => OutputKind::Special,
            Resolved::Path(..) => OutputKind::File,
        })
    }

    /// Opens `path` for output by the rules of this module (`-` is standard output).
    pub fn create(path: &Path) -> Result<OutputFile> {
        if path == Path::new("-") {
            return OutputFile::stdout();
        }
        let name = path.to_path_buf();
        let (dest, md) = match resolve(path)? {
            Resolved::Fd(fd) => {
                let file = dup_fd(fd, path)?;
                if fd == 1 && std::io::stdout().is_terminal() {
                    return Err(output_error(
                        path,
                        "is a terminal: refusing to write binary data to a terminal",
                    ));
                }
                return Ok(OutputFile {
                    file,
                    kind: Kind::Direct,
                    name,
                });
            }
            Resolved::Path(p, md) => (p, md),
        };
        if let Some(md) = &md {
            if md.is_dir() {
                return Err(StorageError::io(
                    path,
                    std::io::Error::from(std::io::ErrorKind::IsADirectory),
                ));
            }
            if !md.is_file() {
                return Ok(OutputFile {
                    file: open_special(&dest, md, path)?,
                    kind: Kind::Direct,
                    name,
                });
            }
        }
        let (Some(dir), Some(base)) = (dest.parent(), dest.file_name()) else {
            return Err(output_error(path, "is not a file name"));
        };
        remove_stale_temporaries(dir);
        // Created with the final permission bits (the umask may narrow them, never widen).
        let perm = md.as_ref().map(|m| m.mode() & 0o7777).unwrap_or(0o666);
        let tmp_path = dir.join(temp_name(base));
        let (tmp, file) = Pending::create(tmp_path, |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(perm & 0o777)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
        })
        .map_err(|e| {
            StorageError::io(
                path,
                std::io::Error::new(
                    e.kind(),
                    format!("cannot create a temporary file in {}: {e}", dir.display()),
                ),
            )
        })?;
        if let Some(md) = &md {
            // Owner first (a change of owner clears set-ID bits), then the exact mode.
            if md.uid() != rustix::process::geteuid().as_raw()
                || md.gid() != rustix::process::getegid().as_raw()
            {
                std::os::unix::fs::fchown(&file, Some(md.uid()), Some(md.gid())).map_err(|e| {
                    StorageError::io(
                        path,
                        std::io::Error::new(
                            e.kind(),
                            format!(
                                "cannot keep its owner {}:{} on the replacement: {e}",
                                md.uid(),
                                md.gid()
                            ),
                        ),
                    )
                })?;
            }
            file.set_permissions(std::fs::Permissions::from_mode(perm))
                .map_err(|e| StorageError::io(tmp.path(), e))?;
        }
        Ok(OutputFile {
            file,
            kind: Kind::Replace { tmp, dest },
            name,
        })
    }

    /// The path as given (or "standard output"), for messages.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// True if the output is written in place (standard output, a FIFO, device or socket)
    /// rather than through a temporary file: nothing written can be taken back.
    pub fn is_direct(&self) -> bool {
        matches!(self.kind, Kind::Direct)
    }

    /// True if the output is a regular file (so it can be seeked and read back).
    pub fn is_regular_file(&self) -> bool {
        self.file.metadata().map(|m| m.is_file()).unwrap_or(false)
    }

    /// The directory a regular-file output is written in (for temporary work beside it).
    pub fn directory(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Replace { dest, .. } => dest.parent(),
            Kind::Direct => None,
        }
    }

    /// The open file written to.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Makes the output final: a temporary file is renamed over its destination.
    pub fn commit(self) -> Result<()> {
        let OutputFile { file, kind, name } = self;
        match kind {
            Kind::Direct => {
                let mut file = file;
                file.flush().map_err(|e| StorageError::io(&name, e))?;
                Ok(())
            }
            Kind::Replace { tmp, dest } => {
                drop(file);
                tmp.rename_to(&dest).map_err(|e| StorageError::io(&name, e))
            }
        }
    }
}

impl AsFd for OutputFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Opens an existing FIFO, device or socket for writing.
fn open_special(dest: &Path, md: &std::fs::Metadata, name: &Path) -> Result<File> {
    use std::os::unix::fs::FileTypeExt;
    if md.file_type().is_socket() {
        let s =
            std::os::unix::net::UnixStream::connect(dest).map_err(|e| StorageError::io(name, e))?;
        return Ok(File::from(OwnedFd::from(s)));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(dest)
        .map_err(|e| StorageError::io(name, e))
}

/// Creates the directory `path` (its parent must exist), registered for removal until
/// [`Pending::keep`]: an interrupted or failed command leaves no new directory behind.
pub(crate) fn create_dir_pending(path: &Path) -> std::io::Result<Pending> {
    Pending::create(path.to_owned(), |p| std::fs::create_dir(p)).map(|(g, ())| g)
}

/// Creates a file `name` in `dir` under a temporary name with mode 0644, registered for
/// removal until renamed with [`Pending::rename_to`].
pub(crate) fn create_temp_in(dir: &Path, name: &str) -> std::io::Result<(Pending, File)> {
    Pending::create(dir.join(temp_name(OsStr::new(name))), |p| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn temp_names_carry_the_pid_and_are_recognised() {
        let n = temp_name(OsStr::new("out.tar"));
        assert_eq!(temp_pid(n.as_bytes()), Some(std::process::id()));
        assert!(n.as_bytes().starts_with(b".out.tar.cstorage-tmp-"));
        assert_eq!(temp_pid(b"out.tar"), None);
        assert_eq!(temp_pid(b".x.cstorage-tmp-12-"), None);
        assert_eq!(temp_pid(b".x.cstorage-tmp-12-zz"), None);
        assert_eq!(temp_pid(b".x.cstorage-tmp-12-a1"), Some(12));
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        // A child that has exited: its PID is gone (reaped by wait).
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let dead = c.id();
        c.wait().unwrap();
        let stale = d.path().join(format!(".a.cstorage-tmp-{dead}-abc"));
        let stale_dir = d.path().join(format!(".b.d.cstorage-tmp-{dead}-abd"));
        let live = d
            .path()
            .join(format!(".c.cstorage-tmp-{}-abe", std::process::id()));
        let other = d.path().join(".d.tmp-1-abc");
        std::fs::write(&stale, b"x").unwrap();
        std::fs::create_dir(&stale_dir).unwrap();
        std::fs::write(stale_dir.join("f"), b"x").unwrap();
        std::fs::write(&live, b"x").unwrap();
        std::fs::write(&other, b"x").unwrap();
        assert_eq!(remove_stale_temporaries(d.path()), 2);
        assert!(!stale.exists() && !stale_dir.exists());
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn a_dropped_output_leaves_nothing_and_a_committed_one_keeps_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut o = OutputFile::create(&p).unwrap();
        o.write_all(b"new").unwrap();
        drop(o);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let mut o = OutputFile::create(&p).unwrap();
        o.write_all(b"new").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_are_followed_and_fifos_written_into() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("real");
        std::fs::write(&target, b"old").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        let mut o = OutputFile::create(&link).unwrap();
        o.write_all(b"new").unwrap();
        o.commit().unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let fifo = d.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert_eq!(OutputFile::kind_of(&fifo).unwrap(), OutputKind::Special);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let mut o = OutputFile::create(&fifo).unwrap();
        o.write_all(b"through").unwrap();
        o.commit().unwrap();
        assert_eq!(reader.join().unwrap(), b"through");
        assert!(
            std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }
}
