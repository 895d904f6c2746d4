//! `cstorage serve`: a containers-storage store as a read-only OCI registry (distribution
//! spec v1.1, pull side) that skopeo, podman, CRI-O, containerd, crane and oras pull from.
//!
//! - Repositories are the store's image names without their tag
//!   (`docker.io/library/alpine`, `localhost/app`); a tag is the image stored under
//!   `repository:tag`. As a registry mirror, requests arrive without the upstream registry
//!   (`/v2/library/alpine/...`): they are looked up under containerd's `?ns=` registry, or
//!   under each `--mirror-of` registry (podman, CRI-O).
//! - A tag's manifest is the OCI manifest `cstorage image export` writes
//!   ([`composefs_storage::image_export::uncompressed_manifest`]): uncompressed layers whose
//!   digests are the DiffIDs, the stored config blob unchanged. A multi-platform image is
//!   stored per platform: its tag serves the manifest of the one platform in the store, never
//!   the list.
//! - Layer blobs are rebuilt from tar-split while they are sent, each file checked against
//!   its CRC-64 (with `--verify digest` also the whole blob against its DiffID); a failed
//!   check aborts the connection before the last bytes, so a client never receives a
//!   complete wrong blob.
//!
//! The HTTP stack is hyper on tokio, TLS is rustls; the store is read on blocking threads.

#![deny(missing_docs)]

mod auth;
mod http;
pub mod registry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use composefs_storage::Storage;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};

use crate::registry::Policy;

/// Command-line arguments of `cstorage serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on: IP:PORT (`[::1]:5000` for IPv6) or `unix:PATH`; repeatable
    /// (default: the sockets systemd passes by socket activation, else 127.0.0.1:5000).
    /// Port 0 picks a free port; every address listened on is printed on standard output.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// TLS certificate chain (PEM); serves HTTPS with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require HTTP Basic authentication against this htpasswd file (bcrypt entries, as
    /// `htpasswd -B` writes them).
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// Expose only images with a name matching PATTERN (`*` and `?` wildcards, matched
    /// against the full name, e.g. `docker.io/library/*`); repeatable.
    #[arg(long = "images", value_name = "PATTERN")]
    pub images: Vec<String>,
    /// Serve as a mirror of this registry: a repository not found as requested is looked
    /// up under it (`library/alpine` as `docker.io/library/alpine`); repeatable.
    #[arg(long, value_name = "DOMAIN")]
    pub mirror_of: Vec<String>,
    /// What is checked while a layer blob is rebuilt: `crc` (each file's size and CRC-64
    /// against the tar-split record) or `digest` (also the sha256 of the whole blob against
    /// its DiffID, which costs CPU time; clients check it too). A failed check aborts the
    /// transfer before its last bytes.
    #[arg(long, default_value = "crc", value_name = "MODE", value_parser = parse_verify)]
    pub verify: composefs_storage::Verify,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_connections: usize,
}

fn parse_verify(s: &str) -> Result<composefs_storage::Verify, String> {
    match s {
        "crc" => Ok(composefs_storage::Verify::Crc),
        "digest" => Ok(composefs_storage::Verify::Digest),
        o => Err(format!("{o:?} is not one of crc, digest")),
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An argument is wrong.
    #[error("{0}")]
    Config(String),
    /// Listening or serving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// A parsed `--listen` address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// A listening socket passed by systemd (socket activation).
    Inherited(std::os::fd::RawFd),
}

/// The listening sockets systemd passed (`LISTEN_PID` = this process, `LISTEN_FDS` = n:
/// descriptors 3 to 3+n-1), if any.
fn activation_fds() -> Vec<Addr> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let n = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !ours || !(1..=64).contains(&n) {
        return Vec::new();
    }
    (3..3 + n).map(Addr::Inherited).collect()
}

fn parse_addr(s: &str) -> Result<Addr, ServeError> {
    if let Some(p) = s.strip_prefix("unix:") {
        return Ok(Addr::Unix(PathBuf::from(p)));
    }
    s.parse::<SocketAddr>().map(Addr::Tcp).map_err(|_| {
        ServeError::Config(format!(
            "--listen {s:?}: expected IP:PORT, [IPv6]:PORT or unix:PATH"
        ))
    })
}

fn tls_config(cert: &PathBuf, key: &PathBuf) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| ServeError::Config(format!("--tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Config(format!(
            "--tls-cert {}: no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Config(format!("--tls-key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Config(format!("TLS certificate and key: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Serves `storage` until SIGINT or SIGTERM.
pub fn run(storage: Storage, args: &ServeArgs) -> Result<(), ServeError> {
    let activated = if args.listen.is_empty() {
        activation_fds()
    } else {
        Vec::new()
    };
    let addrs = if !activated.is_empty() {
        activated
    } else if args.listen.is_empty() {
        vec![Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], 5000)))]
    } else {
        args.listen
            .iter()
            .map(|s| parse_addr(s))
            .collect::<Result<_, _>>()?
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls_config(c, k)?),
        _ => None,
    };
    let auth = match &args.htpasswd {
        Some(p) => Some(auth::load(p).map_err(ServeError::Config)?),
        None => None,
    };
    if args.max_connections == 0 {
        return Err(ServeError::Config(
            "--max-connections must be at least 1".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(args.max_connections.clamp(8, 512))
        .thread_name("cstorage-serve")
        .build()
        .map_err(io_err("starting the runtime"))?;
    let state = Arc::new(http::State {
        storage,
        policy: Policy {
            images: args.images.clone(),
            mirror_of: args.mirror_of.clone(),
        },
        auth,
        verify: args.verify,
        handle: rt.handle().clone(),
    });
    let r = rt.block_on(serve(state, addrs, tls, args.max_connections));
    // Threads still streaming a blob to a client that does not read are not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    r
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Removes a unix socket this server created.
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn serve(
    state: Arc<http::State>,
    addrs: Vec<Addr>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
) -> Result<(), ServeError> {
    use std::io::Write as _;
    let mut listeners = Vec::new();
    let mut guards = Vec::new();
    let scheme = if tls.is_some() { "https" } else { "http" };
    for a in &addrs {
        match a {
            Addr::Tcp(sa) => {
                let l = TcpListener::bind(sa)
                    .await
                    .map_err(io_err(format!("listening on {sa}")))?;
                let local = l.local_addr().map_err(io_err(format!("{sa}")))?;
                println!("listening on {scheme}://{local}");
                listeners.push(Listener::Tcp(l));
            }
            Addr::Inherited(fd) => {
                use std::os::fd::{FromRawFd, IntoRawFd};
                let what = || format!("the socket systemd passed as descriptor {fd}");
                // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is ours)
                // for it to own; each descriptor is taken once, here.
                let tcp = unsafe { std::net::TcpListener::from_raw_fd(*fd) };
                if let Ok(local) = tcp.local_addr() {
                    tcp.set_nonblocking(true).map_err(io_err(what()))?;
                    let l = TcpListener::from_std(tcp).map_err(io_err(what()))?;
                    println!("listening on {scheme}://{local} (socket activation)");
                    listeners.push(Listener::Tcp(l));
                } else {
                    // Not an IP socket: a unix one (getsockname gave no IP address).
                    let fd = tcp.into_raw_fd();
                    // SAFETY: the same descriptor, released by the TcpListener just above.
                    let unix = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
                    let path = unix
                        .local_addr()
                        .ok()
                        .and_then(|a| a.as_pathname().map(PathBuf::from))
                        .unwrap_or_default();
                    unix.set_nonblocking(true).map_err(io_err(what()))?;
                    let l = UnixListener::from_std(unix).map_err(io_err(what()))?;
                    println!("listening on unix:{} (socket activation)", path.display());
                    listeners.push(Listener::Unix(l, path));
                }
            }
            Addr::Unix(p) => {
                use std::os::unix::fs::FileTypeExt;
                // A socket left by an earlier run is replaced; anything else is not touched.
                if let Ok(md) = std::fs::symlink_metadata(p) {
                    if !md.file_type().is_socket() {
                        return Err(ServeError::Config(format!(
                            "--listen unix:{}: exists and is not a socket",
                            p.display()
                        )));
                    }
                    std::fs::remove_file(p).map_err(io_err(format!("{}", p.display())))?;
                }
                let l = UnixListener::bind(p)
                    .map_err(io_err(format!("listening on {}", p.display())))?;
                guards.push(SocketGuard(p.clone()));
                println!("listening on unix:{}", p.display());
                listeners.push(Listener::Unix(l, p.clone()));
            }
        }
    }
    let _ = std::io::stdout().flush();
    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let sem = Arc::new(Semaphore::new(max_connections));
    let mut tasks = Vec::new();
    for l in listeners {
        let (state, tls, sem, mut stop) =
            (state.clone(), tls.clone(), sem.clone(), stop_rx.clone());
        let graceful = graceful.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    _ = stop.changed() => break,
                };
                let accepted = tokio::select! {
                    a = accept(&l) => a,
                    _ = stop.changed() => break,
                };
                let (io, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        log::warn!("accepting a connection: {e}");
                        // E.g. out of file descriptors: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (state, tls, watcher) = (state.clone(), tls.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let _permit = permit;
                    match (io, tls) {
                        (Conn::Tcp(s), Some(acc)) => {
                            match tokio::time::timeout(Duration::from_secs(10), acc.accept(s)).await
                            {
                                Ok(Ok(s)) => serve_conn(s, state, peer, watcher).await,
                                Ok(Err(e)) => log::info!("{peer}: TLS handshake: {e}"),
                                Err(_) => log::info!("{peer}: TLS handshake timed out"),
                            }
                        }
                        (Conn::Tcp(s), None) => serve_conn(s, state, peer, watcher).await,
                        (Conn::Unix(s), _) => serve_conn(s, state, peer, watcher).await,
                    }
                });
            }
        }));
    }
    wait_for_signal().await?;
    log::info!("shutting down");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    drop(guards);
    // Requests in flight get a few seconds to finish.
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
            .await
            .is_err()
        {
            log::info!("connections still open after 5 s are closed");
        }
    }
    Ok(())
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Conn, Arc<str>)> {
    match l {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Conn::Tcp(s), peer.to_string().into()))
        }
        Listener::Unix(l, p) => {
            let (s, _) = l.accept().await?;
            Ok((Conn::Unix(s), format!("unix:{}", p.display()).into()))
        }
    }
}

async fn serve_conn<S>(
    io: S,
    state: Arc<http::State>,
    peer: Arc<str>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| http::handle(state.clone(), req, peer.clone()));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Limits from hyper: request heads larger than 64 KiB are refused, a connection
        // that sends no complete request head for 30 s is closed.
        .max_buf_size(64 << 10)
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn).await {
        log::debug!("connection: {e}");
    }
}

async fn wait_for_signal() -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).map_err(io_err("SIGINT handler"))?;
    let mut term = signal(SignalKind::terminate()).map_err(io_err("SIGTERM handler"))?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addrs() {
        assert_eq!(
            parse_addr("127.0.0.1:5000").unwrap(),
            Addr::Tcp("127.0.0.1:5000".parse().unwrap())
        );
        assert_eq!(
            parse_addr("[::1]:0").unwrap(),
            Addr::Tcp("[::1]:0".parse().unwrap())
        );
        assert_eq!(
            parse_addr("unix:/run/x.sock").unwrap(),
            Addr::Unix("/run/x.sock".into())
        );
        assert!(parse_addr("localhost:5000").is_err());
        assert!(parse_addr("5000").is_err());
    }
}
