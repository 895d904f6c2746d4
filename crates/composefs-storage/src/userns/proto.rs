//! The wire format between the library and its user-namespace helper.
//!
//! One `SOCK_SEQPACKET` message per request and per reply, so message boundaries come from the
//! kernel. Integers are little-endian. File descriptors travel as `SCM_RIGHTS`; file content
//! never crosses the socket.
//!
//! Requests:
//! - `A` + an `SCM_RIGHTS` directory fd: add a root; the reply is `K` + its index (`u32`).
//! - `O` + root index (`u32`) + open flags (`u32`) + length of `dir` (`u16`) + `dir` + `path`:
//!   open `dir` beneath the root, then `path` beneath `dir`; the reply is `F` with the fd.
//!
//! - `X` + the same fields as `O` (flags ignored): the extended attributes of `path` beneath
//!   `dir` (a regular file or directory: the only kinds that carry `user.*` attributes); the
//!   reply is `L` + a list of (name length `u16`, name, value length `u32`, value).
//!
//! Any request may instead get `E` + errno (`i32`) + a UTF-8 message.
//!
//! The handshake before requests: the helper sends `R` once it is in its new user namespace,
//! the client writes the ID maps and answers `M`; the helper checks that it is root there.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Largest request: two paths of `PATH_MAX` plus headers.
pub(crate) const MAX_MSG: usize = 2 * 4096 + 64;
/// Largest reply (an attribute list); larger lists are refused with `E2BIG`.
pub(crate) const MAX_REPLY: usize = 128 << 10;

pub(crate) const OP_ADD_ROOT: u8 = b'A';
pub(crate) const OP_OPEN: u8 = b'O';
pub(crate) const OP_XATTRS: u8 = b'X';
pub(crate) const REPLY_XATTRS: u8 = b'L';
pub(crate) const REPLY_ROOT: u8 = b'K';
pub(crate) const REPLY_FD: u8 = b'F';
pub(crate) const REPLY_ERR: u8 = b'E';
pub(crate) const READY: u8 = b'R';
pub(crate) const MAPPED: u8 = b'M';

/// Sends one message, with at most one fd.
pub(crate) fn send(sock: BorrowedFd<'_>, msg: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    loop {
        match rustix::net::sendmsg(
            sock,
            &[io::IoSlice::new(msg)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A received message: its bytes and the fd that came with it, if any.
pub(crate) struct Msg {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fd: Option<OwnedFd>,
}

/// Receives one message into `buf` (reused across calls; a longer message is an error).
/// `Ok(None)` means the other side closed the socket.
pub(crate) fn recv(sock: impl AsFd, buf: &mut [u8]) -> io::Result<Option<Msg>> {
    recv_spin(sock, buf, std::time::Duration::ZERO)
}

/// Like [`recv`], but first polls without blocking for up to `spin`: a request and its reply
/// follow each other within microseconds, and waking a sleeping process costs more than that.
pub(crate) fn recv_spin(
    sock: impl AsFd,
    buf: &mut [u8],
    spin: std::time::Duration,
) -> io::Result<Option<Msg>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let start = std::time::Instant::now();
    let r = loop {
        let flags = if spin.is_zero() || start.elapsed() >= spin {
            RecvFlags::CMSG_CLOEXEC
        } else {
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT
        };
        match rustix::net::recvmsg(
            sock.as_fd(),
            &mut [io::IoSliceMut::new(buf)],
            &mut control,
            flags,
        ) {
            Ok(r) => break r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) if flags.contains(RecvFlags::DONTWAIT) => {
                std::hint::spin_loop();
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut fd = None;
    let mut extra = false;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                if fd.is_none() {
                    fd = Some(f);
                } else {
                    extra = true; // dropped (closed) here
                }
            }
        }
    }
    if r.flags.contains(ReturnFlags::TRUNC) || r.flags.contains(ReturnFlags::CTRUNC) || extra {
        return Err(protocol_error(
            "a message was too long or carried too many fds",
        ));
    }
    if r.bytes == 0 {
        return Ok(None);
    }
    Ok(Some(Msg {
        bytes: buf[..r.bytes].to_vec(),
        fd,
    }))
}

pub(crate) fn protocol_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("user-namespace helper protocol error: {what}"),
    )
}

/// Encodes an open request (`op` = [`OP_OPEN`] or [`OP_XATTRS`]).
pub(crate) fn open_request(
    op: u8,
    root: u32,
    flags: u32,
    dir: &[u8],
    path: &[u8],
) -> io::Result<Vec<u8>> {
    let dir_len = u16::try_from(dir.len())
        .ok()
        .filter(|_| dir.len() + path.len() + 11 <= MAX_MSG)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
    let mut m = Vec::with_capacity(11 + dir.len() + path.len());
    m.push(op);
    m.extend_from_slice(&root.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&dir_len.to_le_bytes());
    m.extend_from_slice(dir);
    m.extend_from_slice(path);
    Ok(m)
}

/// A decoded open request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OpenRequest<'a> {
    pub(crate) root: u32,
    pub(crate) flags: u32,
    pub(crate) dir: &'a [u8],
    pub(crate) path: &'a [u8],
}

/// Decodes the body of an open request (after the op byte).
pub(crate) fn parse_open(body: &[u8]) -> Option<OpenRequest<'_>> {
    let root = u32::from_le_bytes(body.get(0..4)?.try_into().ok()?);
    let flags = u32::from_le_bytes(body.get(4..8)?.try_into().ok()?);
    let dir_len = u16::from_le_bytes(body.get(8..10)?.try_into().ok()?) as usize;
    let dir = body.get(10..10 + dir_len)?;
    let path = body.get(10 + dir_len..)?;
    Some(OpenRequest {
        root,
        flags,
        dir,
        path,
    })
}

/// Encodes an attribute list reply; `None` if it would be longer than [`MAX_REPLY`].
pub(crate) fn xattrs_reply(list: &[(Vec<u8>, Vec<u8>)]) -> Option<Vec<u8>> {
    let mut m = vec![REPLY_XATTRS];
    for (name, value) in list {
        m.extend_from_slice(&u16::try_from(name.len()).ok()?.to_le_bytes());
        m.extend_from_slice(name);
        m.extend_from_slice(&u32::try_from(value.len()).ok()?.to_le_bytes());
        m.extend_from_slice(value);
    }
    (m.len() <= MAX_REPLY).then_some(m)
}

/// Decodes the body of an attribute list reply.
pub(crate) fn parse_xattrs(mut body: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let n = u16::from_le_bytes(body.get(0..2)?.try_into().ok()?) as usize;
        let name = body.get(2..2 + n)?.to_vec();
        body = &body[2 + n..];
        let v = u32::from_le_bytes(body.get(0..4)?.try_into().ok()?) as usize;
        let value = body.get(4..4 + v)?.to_vec();
        body = &body[4 + v..];
        out.push((name, value));
    }
    Some(out)
}

/// Encodes an error reply.
pub(crate) fn error_reply(errno: i32, msg: &str) -> Vec<u8> {
    let mut m = vec![REPLY_ERR];
    m.extend_from_slice(&errno.to_le_bytes());
    m.extend_from_slice(msg.as_bytes());
    m
}

/// Decodes an error reply body into an `io::Error` (the errno, with the message if any).
pub(crate) fn parse_error(body: &[u8]) -> io::Error {
    let Some(errno) = body.get(0..4).and_then(|b| b.try_into().ok()) else {
        return protocol_error("short error reply");
    };
    let errno = i32::from_le_bytes(errno);
    let msg = String::from_utf8_lossy(&body[4..]);
    if msg.is_empty() {
        io::Error::from_raw_os_error(errno)
    } else {
        let kind = io::Error::from_raw_os_error(errno).kind();
        io::Error::new(kind, msg.into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_request_round_trip() {
        let m = open_request(OP_OPEN, 3, 0o4000, b"overlay/x/diff", b"etc/shadow").unwrap();
        assert_eq!(m[0], OP_OPEN);
        let r = parse_open(&m[1..]).unwrap();
        assert_eq!(
            r,
            OpenRequest {
                root: 3,
                flags: 0o4000,
                dir: b"overlay/x/diff",
                path: b"etc/shadow"
            }
        );
        // Empty dir and path are representable.
        let m = open_request(OP_XATTRS, 0, 0, b"", b"").unwrap();
        assert_eq!(m[0], OP_XATTRS);
        assert_eq!(parse_open(&m[1..]).unwrap().dir, b"");
    }

    #[test]
    fn short_or_lying_requests_are_rejected() {
        assert!(parse_open(b"").is_none());
        assert!(parse_open(&[0; 9]).is_none());
        // dir length larger than the message
        let mut m = open_request(OP_OPEN, 0, 0, b"ab", b"").unwrap();
        m[9] = 200;
        assert!(parse_open(&m[1..]).is_none());
        assert!(open_request(OP_OPEN, 0, 0, &[b'a'; 5000], &[b'b'; 5000]).is_err());
    }

    #[test]
    fn xattr_lists_round_trip_and_truncation_is_caught() {
        let list = vec![
            (b"user.overlay.opaque".to_vec(), b"y".to_vec()),
            (b"user.empty".to_vec(), Vec::new()),
        ];
        let m = xattrs_reply(&list).unwrap();
        assert_eq!(m[0], REPLY_XATTRS);
        assert_eq!(parse_xattrs(&m[1..]).unwrap(), list);
        assert_eq!(parse_xattrs(b"").unwrap(), vec![]);
        assert!(parse_xattrs(&m[1..m.len() - 1]).is_none());
        assert!(xattrs_reply(&[(b"user.big".to_vec(), vec![0; MAX_REPLY])]).is_none());
    }

    #[test]
    fn errors_keep_errno_and_message() {
        let e = parse_error(&error_reply(libc::ENOENT, "")[1..]);
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let e = parse_error(&error_reply(libc::EXDEV, "escapes the root")[1..]);
        assert_eq!(e.to_string(), "escapes the root");
        assert_eq!(e.kind(), io::ErrorKind::CrossesDevices);
        assert!(parse_error(b"\x01").to_string().contains("protocol error"));
    }

    #[test]
    fn fds_travel_over_a_seqpacket_pair() {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let f = tempfile::tempfile().unwrap();
        send(a.as_fd(), b"F", Some(f.as_fd())).unwrap();
        let mut buf = vec![0; MAX_MSG];
        let m = recv(&b, &mut buf).unwrap().unwrap();
        assert_eq!(m.bytes, b"F");
        let got = rustix::fs::fstat(m.fd.unwrap()).unwrap();
        let want = rustix::fs::fstat(&f).unwrap();
        assert_eq!((got.st_dev, got.st_ino), (want.st_dev, want.st_ino));
        drop(a);
        assert!(recv(&b, &mut buf).unwrap().is_none());
    }
}
