//! The helper process: it enters a new user namespace that maps the user's subordinate IDs
//! (as rootless podman does), where it holds `CAP_DAC_OVERRIDE` over every file of the store,
//! and opens files for the client, handing back only file descriptors.
//!
//! It only ever opens read-only, and only beneath the root directories the client handed to it
//! as fds: every lookup is `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so `..`,
//! absolute names and symlinks out of the root fail in the kernel. It exits when the client
//! closes the socket, which the kernel does when the client process dies.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::proto;

/// Flags a client may ask for; everything else (writing, creating, truncating) is refused.
fn allowed_flags() -> OFlags {
    OFlags::RDONLY
        | OFlags::NONBLOCK
        | OFlags::DIRECTORY
        | OFlags::NOFOLLOW
        | OFlags::PATH
        | OFlags::CLOEXEC
        | OFlags::NOCTTY
}

fn fail(msg: &str) -> ! {
    let _ = writeln!(io::stderr(), "composefs-storage userns helper: {msg}");
    std::process::exit(1)
}

/// Runs the helper on stdin (the socket) and never returns.
pub(crate) fn serve(parent: &str) -> ! {
    // The helper dies with its parent through its socket: the parent's end is close-on-exec
    // and held by no other process, so when the parent exits (however it dies) the kernel
    // closes it and the next `recv` here returns end-of-file. (`PR_SET_PDEATHSIG` would fire
    // when the *thread* that started the helper exits, e.g. a worker of a parallel export.)
    let ppid = rustix::process::getppid().map(|p| p.as_raw_nonzero().get().to_string());
    if ppid.as_deref() != Some(parent) {
        std::process::exit(0);
    }
    let _ = rustix::thread::set_name(c"cstorage-userns");
    let stdin = io::stdin();
    let sock = stdin.as_fd();

    if let Err(e) = crate::sys::unshare_user_namespace() {
        let _ = proto::send(
            sock,
            &proto::error_reply(
                e.raw_os_error().unwrap_or(libc::EINVAL),
                "cannot create a user namespace",
            ),
            None,
        );
        std::process::exit(1);
    }
    if proto::send(sock, &[proto::READY], None).is_err() {
        std::process::exit(1);
    }
    let mut buf = vec![0u8; proto::MAX_MSG];
    match proto::recv(sock, &mut buf) {
        Ok(Some(m)) if m.bytes == [proto::MAPPED] => {}
        _ => std::process::exit(1),
    }
    if !rustix::process::getuid().is_root() {
        let _ = proto::send(
            sock,
            &proto::error_reply(libc::EPERM, "the ID maps were not applied"),
            None,
        );
        std::process::exit(1);
    }
    let mut roots: Vec<OwnedFd> = Vec::new();
    loop {
        // Requests come in bursts (one per denied file of an export): poll a little before
        // sleeping.
        let msg = match proto::recv_spin(sock, &mut buf, std::time::Duration::from_micros(200)) {
            Ok(Some(m)) => m,
            Ok(None) => std::process::exit(0),
            Err(e) => fail(&format!("receiving a request: {e}")),
        };
        let reply = handle(&msg, &mut roots);
        let sent = match &reply {
            Ok(Reply::Root(i)) => {
                let mut m = vec![proto::REPLY_ROOT];
                m.extend_from_slice(&i.to_le_bytes());
                proto::send(sock, &m, None)
            }
            Ok(Reply::Fd(fd)) => proto::send(sock, &[proto::REPLY_FD], Some(fd.as_fd())),
            Ok(Reply::Xattrs(m)) => proto::send(sock, m, None),
            Err((errno, text)) => proto::send(sock, &proto::error_reply(*errno, text), None),
        };
        if sent.is_err() {
            std::process::exit(0);
        }
    }
}

enum Reply {
    Root(u32),
    Fd(OwnedFd),
    Xattrs(Vec<u8>),
}

fn handle(msg: &proto::Msg, roots: &mut Vec<OwnedFd>) -> Result<Reply, (i32, String)> {
    let bad = |what: &str| (libc::EPROTO, format!("bad request: {what}"));
    match msg.bytes.first() {
        Some(&proto::OP_ADD_ROOT) => {
            let fd = msg.fd.as_ref().ok_or_else(|| bad("root without an fd"))?;
            let st = rustix::fs::fstat(fd).map_err(|e| (e.raw_os_error(), String::new()))?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
                return Err(bad("root is not a directory"));
            }
            let fd = fd
                .try_clone()
                .map_err(|e| (e.raw_os_error().unwrap_or(0), String::new()))?;
            roots.push(fd);
            Ok(Reply::Root((roots.len() - 1) as u32))
        }
        Some(&proto::OP_OPEN) => {
            let req = proto::parse_open(&msg.bytes[1..]).ok_or_else(|| bad("malformed open"))?;
            let root = roots
                .get(req.root as usize)
                .ok_or_else(|| bad("unknown root"))?;
            let flags = OFlags::from_bits(req.flags).ok_or_else(|| bad("unknown open flags"))?;
            if !allowed_flags().contains(flags) {
                return Err(bad("only read-only opens are served"));
            }
            open_beneath(root.as_fd(), req.dir, req.path, flags)
                .map(Reply::Fd)
                .map_err(|e| (e.raw_os_error(), String::new()))
        }
        Some(&proto::OP_XATTRS) => {
            let req = proto::parse_open(&msg.bytes[1..]).ok_or_else(|| bad("malformed request"))?;
            let root = roots
                .get(req.root as usize)
                .ok_or_else(|| bad("unknown root"))?;
            let fd = open_beneath(
                root.as_fd(),
                req.dir,
                req.path,
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW,
            )
            .map_err(|e| (e.raw_os_error(), String::new()))?;
            let list = crate::fsutil::fd_xattrs(&fd)
                .map_err(|e| (e.raw_os_error().unwrap_or(libc::EIO), e.to_string()))?;
            proto::xattrs_reply(&list)
                .map(Reply::Xattrs)
                .ok_or((libc::E2BIG, "extended attributes too large".into()))
        }
        _ => Err(bad("unknown operation")),
    }
}

/// Opens `dir` beneath `root`, then `path` beneath that directory, neither ever leaving it.
fn open_beneath(
    root: BorrowedFd<'_>,
    dir: &[u8],
    path: &[u8],
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let at = |base: BorrowedFd<'_>, p: &[u8], flags: OFlags| {
        let p = if p.is_empty() { b"." as &[u8] } else { p };
        if p.first() == Some(&b'/') {
            return Err(rustix::io::Errno::XDEV);
        }
        let p = Path::new(std::ffi::OsStr::from_bytes(p));
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                base,
                p,
                crate::fsutil::with_safe_flags(flags),
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) if tries < 64 => {
                    tries += 1
                }
                r => return r,
            }
        }
    };
    let d = at(root, dir, OFlags::PATH | OFlags::DIRECTORY)?;
    at(d.as_fd(), path, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(bytes: Vec<u8>, fd: Option<OwnedFd>) -> proto::Msg {
        proto::Msg { bytes, fd }
    }

    /// A root with a file, a subdirectory and symlinks that point out of it, next to a file
    /// that must never be served.
    fn setup() -> (tempfile::TempDir, Vec<OwnedFd>) {
        let td = tempfile::tempdir().unwrap();
        let root = td.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"inside").unwrap();
        std::fs::write(td.path().join("outside"), b"outside").unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("d/up")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("d/abs")).unwrap();
        std::os::unix::fs::symlink("f", root.join("d/rel")).unwrap();
        let fd: OwnedFd = std::fs::File::open(&root).unwrap().into();
        let mut roots = Vec::new();
        match handle(&msg(vec![proto::OP_ADD_ROOT], Some(fd)), &mut roots) {
            Ok(Reply::Root(0)) => {}
            _ => panic!("root not added"),
        }
        (td, roots)
    }

    fn open(
        roots: &mut Vec<OwnedFd>,
        dir: &str,
        path: &str,
        flags: OFlags,
    ) -> Result<Reply, (i32, String)> {
        let m = proto::open_request(
            proto::OP_OPEN,
            0,
            flags.bits(),
            dir.as_bytes(),
            path.as_bytes(),
        )
        .unwrap();
        handle(&msg(m, None), roots)
    }

    #[test]
    fn serves_files_beneath_the_root_only() {
        let (_td, mut roots) = setup();
        let read = |r: Result<Reply, (i32, String)>| match r {
            Ok(Reply::Fd(fd)) => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
                s
            }
            Ok(_) => panic!("not an fd"),
            Err((e, m)) => format!("errno {e} {m}"),
        };
        assert_eq!(read(open(&mut roots, "d", "f", OFlags::RDONLY)), "inside");
        assert_eq!(
            read(open(&mut roots, "", "d/rel", OFlags::RDONLY)),
            "inside"
        );
        let exdev = format!("errno {} ", libc::EXDEV);
        for (dir, path) in [
            ("d", "up"),
            ("d", "abs"),
            ("d", "../../outside"),
            ("..", "outside"),
            ("", "/etc/passwd"),
            ("/etc", "passwd"),
        ] {
            assert_eq!(
                read(open(&mut roots, dir, path, OFlags::RDONLY)),
                exdev,
                "{dir} {path}"
            );
        }
        // A symlink is refused under O_NOFOLLOW; a missing file is ENOENT.
        assert_eq!(
            read(open(
                &mut roots,
                "d",
                "rel",
                OFlags::RDONLY | OFlags::NOFOLLOW
            )),
            format!("errno {} ", libc::ELOOP)
        );
        assert_eq!(
            read(open(&mut roots, "d", "nope", OFlags::RDONLY)),
            format!("errno {} ", libc::ENOENT)
        );
    }

    #[test]
    fn refuses_writes_unknown_roots_and_garbage() {
        let (_td, mut roots) = setup();
        for flags in [
            OFlags::WRONLY,
            OFlags::RDWR,
            OFlags::CREATE,
            OFlags::TRUNC,
            OFlags::APPEND,
        ] {
            match open(&mut roots, "d", "f", flags) {
                Err((e, m)) => assert!(e == libc::EPROTO && m.contains("read-only"), "{m}"),
                Ok(_) => panic!("{flags:?} served"),
            }
        }
        let m = proto::open_request(proto::OP_OPEN, 7, 0, b"d", b"f").unwrap();
        assert!(matches!(
            handle(&msg(m, None), &mut roots),
            Err((libc::EPROTO, _))
        ));
        assert!(matches!(
            handle(&msg(b"Zjunk".to_vec(), None), &mut roots),
            Err((libc::EPROTO, _))
        ));
        assert!(matches!(
            handle(&msg(b"O\x01".to_vec(), None), &mut roots),
            Err((libc::EPROTO, _))
        ));
        // A root must come with a directory fd.
        assert!(matches!(
            handle(&msg(vec![proto::OP_ADD_ROOT], None), &mut roots),
            Err((libc::EPROTO, _))
        ));
        let f: OwnedFd = tempfile::tempfile().unwrap().into();
        assert!(matches!(
            handle(&msg(vec![proto::OP_ADD_ROOT], Some(f)), &mut roots),
            Err((libc::EPROTO, _))
        ));
    }
}
