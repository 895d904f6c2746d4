//! The library side of the user-namespace helper: started on the first `EACCES` under a
//! registered store root, asked only for what failed.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustix::fs::OFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::proto;

/// Environment variable that turns a re-executed program into the helper.
pub(super) const HELPER_ENV: &str = "_COMPOSEFS_STORAGE_USERNS_HELPER";

/// Set by [`super::init`]: the program agreed to be re-executed as the helper.
pub(super) static ENABLED: AtomicBool = AtomicBool::new(false);

/// How long to poll for a reply before sleeping (see [`proto::recv_spin`]).
const SPIN: Duration = Duration::from_micros(200);

/// How long a reply may take before the helper is declared stuck.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A store root the helper may be asked to open files beneath.
struct Root {
    /// Where the root is, as the kernel names it (`/proc/self/fd/N`).
    path: PathBuf,
    fd: OwnedFd,
    /// Its index in the running helper, once added there.
    helper_index: Option<u32>,
}

enum State {
    NotStarted,
    Running {
        sock: Arc<OwnedFd>,
        child: Child,
    },
    /// The helper could not be started or died; every later request fails with this.
    Failed(String),
}

struct Client {
    roots: Vec<Root>,
    state: State,
    /// Receive buffer, allocated once.
    buf: Vec<u8>,
}

fn client() -> &'static Mutex<Client> {
    static C: OnceLock<Mutex<Client>> = OnceLock::new();
    C.get_or_init(|| {
        Mutex::new(Client {
            roots: Vec::new(),
            state: State::NotStarted,
            buf: Vec::new(),
        })
    })
}

fn fd_path(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

/// Registers `dir` as a root the helper may open beneath. A no-op unless the program opted in.
pub(crate) fn register_root(dir: BorrowedFd<'_>) {
    if !ENABLED.load(Ordering::Relaxed) || super::ids::bypass_cached() {
        return;
    }
    let Some(path) = fd_path(dir) else { return };
    let Ok(fd) = dir.try_clone_to_owned() else {
        return;
    };
    let mut c = client().lock().unwrap_or_else(|p| p.into_inner());
    if c.roots.iter().any(|r| r.path == path) {
        return;
    }
    c.roots.push(Root {
        path,
        fd,
        helper_index: None,
    });
}

/// Called when opening `path` beneath `dir` failed with `EACCES`: if `dir` is beneath a
/// registered root, asks the helper to open it. Otherwise returns `denied` unchanged.
pub(crate) fn open_denied(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    denied: io::Error,
) -> io::Result<OwnedFd> {
    let Some(dir_path) = usable(dir) else {
        return Err(denied);
    };
    let reply = match request(proto::OP_OPEN, &dir_path, path, flags, &denied) {
        Some(r) => r?,
        None => return Err(denied),
    };
    let mut c = client().lock().unwrap_or_else(|p| p.into_inner());
    match reply.bytes.first() {
        Some(&proto::REPLY_FD) => {
            let fd = reply
                .fd
                .ok_or_else(|| c.broken(proto::protocol_error("an fd reply without an fd")))?;
            log::debug!("userns helper opened {}", dir_path.join(path).display());
            Ok(fd)
        }
        Some(&proto::REPLY_ERR) => Err(proto::parse_error(&reply.bytes[1..])),
        _ => Err(c.broken(proto::protocol_error("unexpected reply to an open"))),
    }
}

/// Called when reading the extended attributes of `fd` failed with `EACCES`: asks the helper
/// for them if `fd` is beneath a registered root. Otherwise returns `denied` unchanged.
pub(crate) fn xattrs_denied(
    fd: BorrowedFd<'_>,
    denied: io::Error,
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let Some(path) = usable(fd) else {
        return Err(denied);
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(denied);
    };
    let reply = match request(
        proto::OP_XATTRS,
        parent,
        Path::new(name),
        OFlags::empty(),
        &denied,
    ) {
        Some(r) => r?,
        None => return Err(denied),
    };
    let mut c = client().lock().unwrap_or_else(|p| p.into_inner());
    match reply.bytes.split_first() {
        Some((&proto::REPLY_XATTRS, body)) => {
            let list = proto::parse_xattrs(body)
                .ok_or_else(|| c.broken(proto::protocol_error("malformed attribute list")))?;
            log::debug!(
                "userns helper read the extended attributes of {}",
                path.display()
            );
            Ok(list)
        }
        Some((&proto::REPLY_ERR, body)) => Err(proto::parse_error(body)),
        _ => Err(c.broken(proto::protocol_error(
            "unexpected reply to an attribute request",
        ))),
    }
}

/// The path of `fd` if the helper may be used at all.
fn usable(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    if !ENABLED.load(Ordering::Relaxed) || super::ids::bypass_cached() {
        return None;
    }
    fd_path(fd)
}

/// Sends `op` for `path` beneath the directory `dir_path`, starting the helper if needed.
/// `None` if `dir_path` is not beneath a registered root (the helper must not be asked).
fn request(
    op: u8,
    dir_path: &Path,
    path: &Path,
    flags: OFlags,
    denied: &io::Error,
) -> Option<io::Result<proto::Msg>> {
    let mut guard = client().lock().unwrap_or_else(|p| p.into_inner());
    let c = &mut *guard;
    // The innermost registered root that contains `dir_path`.
    let (ri, rel) = c
        .roots
        .iter()
        .enumerate()
        .filter_map(|(i, r)| dir_path.strip_prefix(&r.path).ok().map(|rel| (i, rel)))
        .max_by_key(|(i, _)| c.roots[*i].path.as_os_str().len())?;
    let rel = rel.as_os_str().as_bytes().to_vec();
    Some((|| {
        let sock = c.running(denied)?;
        let index = match c.roots[ri].helper_index {
            Some(i) => i,
            None => {
                let i = c.call_add_root(&sock, ri)?;
                c.roots[ri].helper_index = Some(i);
                i
            }
        };
        let req = proto::open_request(op, index, flags.bits(), &rel, path.as_os_str().as_bytes())?;
        c.call(&sock, &req, None)
    })())
}

impl Client {
    /// The running helper, started now if needed.
    fn running(&mut self, denied: &io::Error) -> io::Result<Arc<OwnedFd>> {
        if let State::NotStarted = self.state {
            self.state = match start() {
                Ok((sock, child)) => {
                    log::debug!("started the user-namespace helper (pid {})", child.id());
                    State::Running {
                        sock: Arc::new(sock),
                        child,
                    }
                }
                Err(e) => State::Failed(format!(
                    "{denied}, and the user-namespace helper that would read it as the \
                     store's container users could not be started: {e}"
                )),
            };
        }
        match &self.state {
            State::Running { sock, .. } => Ok(sock.clone()),
            State::Failed(msg) => Err(io::Error::new(io::ErrorKind::PermissionDenied, msg.clone())),
            State::NotStarted => unreachable!("started above"),
        }
    }

    fn call_add_root(&mut self, sock: &OwnedFd, ri: usize) -> io::Result<u32> {
        let root_fd = self.roots[ri].fd.try_clone()?;
        let reply = self.call(sock, &[proto::OP_ADD_ROOT], Some(root_fd.as_fd()))?;
        match reply.bytes.split_first() {
            Some((&proto::REPLY_ROOT, idx)) if idx.len() == 4 => {
                Ok(u32::from_le_bytes(idx.try_into().expect("4 bytes")))
            }
            Some((&proto::REPLY_ERR, body)) => Err(proto::parse_error(body)),
            _ => Err(self.broken(proto::protocol_error("unexpected reply to adding a root"))),
        }
    }

    /// One request and its reply. A dead or silent helper marks the client failed.
    fn call(
        &mut self,
        sock: &OwnedFd,
        msg: &[u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> io::Result<proto::Msg> {
        if let Err(e) = proto::send(sock.as_fd(), msg, fd) {
            return Err(self.broken(e));
        }
        if self.buf.len() < proto::MAX_REPLY {
            self.buf = vec![0; proto::MAX_REPLY];
        }
        match proto::recv_spin(sock, &mut self.buf, SPIN) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(self.broken(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "it closed the connection",
            ))),
            Err(e) => Err(self.broken(e)),
        }
    }

    /// Records that the helper is unusable and returns the error to report.
    fn broken(&mut self, cause: io::Error) -> io::Error {
        let msg = match std::mem::replace(&mut self.state, State::NotStarted) {
            State::Running { mut child, .. } => {
                let pid = child.id();
                // Give an exiting helper a moment to be reaped so the status can be told.
                let mut status = None;
                for _ in 0..20 {
                    if let Ok(Some(s)) = child.try_wait() {
                        status = Some(s);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let how = match status {
                    Some(s) => format!("it exited ({s})"),
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        format!("{cause}; it was stopped")
                    }
                };
                let cause = if status.is_some() && cause.kind() != io::ErrorKind::UnexpectedEof {
                    format!("{cause}; ")
                } else {
                    String::new()
                };
                format!("the user-namespace helper (pid {pid}) failed: {cause}{how}")
            }
            State::Failed(m) => m,
            State::NotStarted => format!("the user-namespace helper failed: {cause}"),
        };
        self.state = State::Failed(msg.clone());
        io::Error::other(msg)
    }
}

/// Starts the helper: re-executes this program with [`HELPER_ENV`] set and the socket as its
/// stdin, waits until it is in its own user namespace, and writes its ID maps with
/// `newuidmap`/`newgidmap` from the user's `/etc/subuid` and `/etc/subgid` ranges.
fn start() -> io::Result<(OwnedFd, Child)> {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let user = super::ids::user_name(uid);
    let uid_ranges = super::ids::sub_ids(Path::new("/etc/subuid"), uid, user.as_deref())?;
    let gid_ranges = super::ids::sub_ids(Path::new("/etc/subgid"), uid, user.as_deref())?;
    let who = match &user {
        Some(n) => format!("user {n} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    if uid_ranges.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{who} has no subordinate UID range in /etc/subuid (add one with \
                 `usermod --add-subuids`, or run as root or under `podman unshare`)"
            ),
        ));
    }
    if gid_ranges.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{who} has no subordinate GID range in /etc/subgid (add one with `usermod --add-subgids`)"
            ),
        ));
    }
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::sockopt::set_socket_timeout(
        &ours,
        rustix::net::sockopt::Timeout::Recv,
        Some(REPLY_TIMEOUT),
    )?;
    let mut child = Command::new("/proc/self/exe")
        .env(HELPER_ENV, std::process::id().to_string())
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot re-execute this program: {e}")))?;
    let fail = |child: &mut Child, e: io::Error| {
        let _ = child.kill();
        let _ = child.wait();
        e
    };
    let mut buf = vec![0; proto::MAX_MSG];
    match proto::recv(&ours, &mut buf) {
        Ok(Some(m)) if m.bytes == [proto::READY] => {}
        Ok(Some(m)) if m.bytes.first() == Some(&proto::REPLY_ERR) => {
            return Err(fail(&mut child, proto::parse_error(&m.bytes[1..])));
        }
        Ok(_) => {
            let e = io::Error::other(
                "it did not start (does this program call composefs_storage::userns::init() \
                 at the top of main?)",
            );
            return Err(fail(&mut child, e));
        }
        Err(e) => return Err(fail(&mut child, e)),
    }
    let pid = child.id().to_string();
    for (tool, first, ranges) in [
        ("newuidmap", uid, &uid_ranges),
        ("newgidmap", gid, &gid_ranges),
    ] {
        if let Err(e) = write_map(tool, &pid, first, ranges) {
            return Err(fail(&mut child, e));
        }
    }
    if let Err(e) = proto::send(ours.as_fd(), &[proto::MAPPED], None) {
        return Err(fail(&mut child, e));
    }
    Ok((ours, child))
}

/// Runs `newuidmap`/`newgidmap PID 0 ID 1 START COUNT ...`: the user is root in the namespace
/// and the subordinate ranges follow from 1, as rootless podman maps them.
fn write_map(tool: &str, pid: &str, id: u32, ranges: &[(u32, u32)]) -> io::Result<()> {
    let mut args = vec![pid.to_string(), "0".into(), id.to_string(), "1".into()];
    let mut next: u64 = 1;
    for &(start, count) in ranges {
        args.extend([next.to_string(), start.to_string(), count.to_string()]);
        next += u64::from(count);
    }
    let out = Command::new(tool)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {tool}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{tool} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}
