//! The HTTP side: routing of OCI distribution (pull) requests, responses and streamed blobs.
//! HTTP itself is hyper's; this module only maps requests to registry answers.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use composefs_storage::{ExportOptions, Layer, Storage, Verify};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;

use crate::auth::Htpasswd;
use crate::registry::{self, Blob, Code, Error, Policy, View};

/// Response bodies: small ones in memory, layers streamed.
pub type ResBody = BoxBody<Bytes, std::io::Error>;

/// Messages (pieces of a layer blob) the channel from the exporting thread holds.
const CHANNEL_DEPTH: usize = 8;
/// Largest piece of a layer blob per message.
const CHUNK: usize = 64 << 10;
/// Piece buffers kept for reuse (8 MiB): more than 8 clients' channels hold at once.
const POOL_MAX: usize = 128;
/// A client that reads nothing of a blob for this long is dropped (its export holds the
/// store's shared lock).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// What every request handler shares.
pub struct State {
    /// The store.
    pub storage: Storage,
    /// Exposure and mirror settings.
    pub policy: Policy,
    /// Authentication, if required.
    pub auth: Option<Htpasswd>,
    /// What is checked while a whole layer blob is rebuilt.
    pub verify: Verify,
    /// The runtime, for blocking threads to wait on the channel.
    pub handle: tokio::runtime::Handle,
}

fn full(b: impl Into<Bytes>) -> ResBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn empty() -> ResBody {
    full(Bytes::new())
}

fn base(status: StatusCode) -> hyper::http::response::Builder {
    Response::builder()
        .status(status)
        .header("Docker-Distribution-API-Version", "registry/2.0")
}

fn json_response(status: StatusCode, v: &serde_json::Value, head: bool) -> Response<ResBody> {
    let b = serde_json::to_vec(v).unwrap_or_default();
    let len = b.len();
    base(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, len)
        .body(if head { empty() } else { full(b) })
        .unwrap_or_else(|_| Response::new(empty()))
}

fn error_response(code: Code, message: &str, head: bool) -> Response<ResBody> {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let v = json!({"errors": [{"code": code.as_str(), "message": message, "detail": null}]});
    let mut r = json_response(status, &v, head);
    match code {
        Code::Unauthorized => {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"cstorage\""),
            );
        }
        Code::Unsupported => {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        _ => {}
    }
    r
}

fn registry_error(e: Error, head: bool) -> Response<ResBody> {
    match e {
        Error::Spec(code, msg) => error_response(code, &msg, head),
        Error::Store(e) => {
            log::error!("reading the store: {e}");
            let v =
                json!({"errors": [{"code": "UNKNOWN", "message": e.to_string(), "detail": null}]});
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &v, head)
        }
    }
}

/// Decodes `%XX` escapes of a query value (`+` is a space).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(q: Option<&str>, key: &str) -> Option<String> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// The `Range` header's single range against a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeReq {
    /// No (usable) range: the whole blob.
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// Outside the blob: 416.
    Unsatisfiable,
}

fn parse_range(h: Option<&HeaderValue>, size: u64) -> RangeReq {
    let Some(spec) = h
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.trim().strip_prefix("bytes="))
    else {
        return RangeReq::Whole;
    };
    if spec.contains(',') {
        // Several ranges: answered with the whole blob, as the spec allows.
        return RangeReq::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = if a.is_empty() {
        // Suffix: the last b bytes.
        match b.parse::<u64>() {
            Ok(0) => return RangeReq::Unsatisfiable,
            Ok(n) if size > 0 => Some((size.saturating_sub(n), size - 1)),
            Ok(_) => return RangeReq::Unsatisfiable,
            Err(_) => None,
        }
    } else {
        match (a.parse::<u64>(), b) {
            (Ok(s), "") => Some((s, size.saturating_sub(1))),
            (Ok(s), b) => match b.parse::<u64>() {
                Ok(e) if e >= s => Some((s, e.min(size.saturating_sub(1)))),
                _ => None,
            },
            _ => None,
        }
    };
    match parsed {
        None => RangeReq::Whole,
        Some((s, _)) if s >= size => RangeReq::Unsatisfiable,
        Some((s, e)) => RangeReq::Part(s, e),
    }
}

/// Serves one request; logs it at info level.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: Arc<str>,
) -> Result<Response<ResBody>, std::convert::Infallible> {
    let t0 = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = route(&state, req).await;
    log::info!(
        "{peer} {method} {uri} {} {} {:.1}ms",
        resp.status().as_u16(),
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    Ok(resp)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn route(state: &Arc<State>, req: Request<Incoming>) -> Response<ResBody> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return error_response(
            Code::Unsupported,
            "this registry is read-only: only GET and HEAD are served",
            false,
        );
    }
    if state.auth.is_some() {
        let value = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        let st = state.clone();
        let ok = blocking(move || st.auth.as_ref().is_some_and(|a| a.check(value.as_deref())))
            .await
            .unwrap_or(false);
        if !ok {
            return error_response(Code::Unauthorized, "authentication required", head);
        }
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let q = query.as_deref();
    if path == "/v2/" || path == "/v2" {
        return json_response(StatusCode::OK, &json!({}), head);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error_response(Code::NameUnknown, "not a registry path", head);
    };
    let n = match query_param(q, "n").map(|n| n.parse::<usize>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            let v = json!({"errors": [{"code": "PAGINATION_NUMBER_INVALID", "message": "invalid n", "detail": null}]});
            return json_response(StatusCode::BAD_REQUEST, &v, head);
        }
    };
    let last = query_param(q, "last");
    if rest == "_catalog" {
        let st = state.clone();
        let r = blocking(move || -> Result<(Vec<String>, bool), Error> {
            let view = View::load(&st.storage, &st.policy)?;
            Ok(registry::page(view.repositories(), last.as_deref(), n))
        })
        .await;
        return match r {
            Some(Ok((repos, more))) => {
                let mut resp = json_response(StatusCode::OK, &json!({"repositories": repos}), head);
                if more {
                    if let (Some(n), Some(l)) = (n, repos.last()) {
                        link_next(&mut resp, &format!("/v2/_catalog?n={n}&last={l}"));
                    }
                }
                resp
            }
            Some(Err(e)) => registry_error(e, head),
            None => internal(head),
        };
    }
    let ns = query_param(q, "ns");
    if let Some(name) = rest.strip_suffix("/tags/list") {
        let st = state.clone();
        let name = name.to_string();
        let r = blocking(move || -> Result<(Vec<String>, bool, String), Error> {
            let view = View::load(&st.storage, &st.policy)?;
            let repo = view.resolve(&name, ns.as_deref(), &st.policy)?;
            let tags = view.tags(&repo);
            let (page, more) = registry::page(tags.iter(), last.as_deref(), n);
            Ok((page, more, name))
        })
        .await;
        return match r {
            Some(Ok((tags, more, name))) => {
                let mut resp =
                    json_response(StatusCode::OK, &json!({"name": name, "tags": tags}), head);
                if more {
                    if let (Some(n), Some(l)) = (n, tags.last()) {
                        link_next(&mut resp, &format!("/v2/{name}/tags/list?n={n}&last={l}"));
                    }
                }
                resp
            }
            Some(Err(e)) => registry_error(e, head),
            None => internal(head),
        };
    }
    let (name, kind, reference) = if let Some((name, r)) = rest.rsplit_once("/manifests/") {
        (name, "manifests", r)
    } else if let Some((name, r)) = rest.rsplit_once("/blobs/") {
        (name, "blobs", r)
    } else {
        return error_response(Code::NameUnknown, "no such endpoint", head);
    };
    if reference.is_empty() || reference.contains('/') {
        return error_response(Code::NameUnknown, "no such endpoint", head);
    }
    let (name, reference) = (name.to_string(), reference.to_string());
    let st = state.clone();
    if kind == "manifests" {
        let r = blocking(move || {
            let view = View::load(&st.storage, &st.policy)?;
            let repo = view.resolve(&name, ns.as_deref(), &st.policy)?;
            view.manifest(&repo, &reference)
        })
        .await;
        return match r {
            Some(Ok(m)) => {
                let len = m.bytes.len();
                let digest = m.digest.to_string();
                base(StatusCode::OK)
                    .header(header::CONTENT_TYPE, m.media_type)
                    .header(header::CONTENT_LENGTH, len)
                    .header("Docker-Content-Digest", &digest)
                    .header(header::ETAG, format!("\"{digest}\""))
                    .body(if head { empty() } else { full(m.bytes) })
                    .unwrap_or_else(|_| Response::new(empty()))
            }
            Some(Err(e)) => registry_error(e, head),
            None => internal(head),
        };
    }
    let r = blocking(move || {
        let view = View::load(&st.storage, &st.policy)?;
        let repo = view.resolve(&name, ns.as_deref(), &st.policy)?;
        view.blob(&repo, &reference).map(|b| (b, reference))
    })
    .await;
    match r {
        Some(Ok((blob, digest))) => blob_response(state, blob, &digest, &req, head),
        Some(Err(e)) => registry_error(e, head),
        None => internal(head),
    }
}

fn internal(head: bool) -> Response<ResBody> {
    let v = json!({"errors": [{"code": "UNKNOWN", "message": "internal error", "detail": null}]});
    json_response(StatusCode::INTERNAL_SERVER_ERROR, &v, head)
}

fn link_next(resp: &mut Response<ResBody>, url: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
        resp.headers_mut().insert(header::LINK, v);
    }
}

fn blob_response(
    state: &Arc<State>,
    blob: Blob,
    digest: &str,
    req: &Request<Incoming>,
    head: bool,
) -> Response<ResBody> {
    let size = match &blob {
        Blob::Config(b) => Some(b.len() as u64),
        Blob::Layer(_, s) => *s,
    };
    let range = match size {
        Some(size) => parse_range(req.headers().get(header::RANGE), size),
        None => RangeReq::Whole,
    };
    let builder = |status| {
        base(status)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header("Docker-Content-Digest", digest)
            .header(header::ETAG, format!("\"{digest}\""))
            .header(header::ACCEPT_RANGES, "bytes")
    };
    let (status, start, len) = match (range, size) {
        (RangeReq::Unsatisfiable, Some(size)) => {
            return builder(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .header(header::CONTENT_LENGTH, 0)
                .body(empty())
                .unwrap_or_else(|_| Response::new(empty()));
        }
        (RangeReq::Part(s, e), _) => (StatusCode::PARTIAL_CONTENT, s, Some(e - s + 1)),
        _ => (StatusCode::OK, 0, size),
    };
    let mut b = builder(status);
    if let Some(len) = len {
        b = b.header(header::CONTENT_LENGTH, len);
    }
    if let (StatusCode::PARTIAL_CONTENT, Some(size), Some(len)) = (status, size, len) {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    let body = if head {
        empty()
    } else {
        match blob {
            Blob::Config(bytes) => {
                let end = start + len.unwrap_or(bytes.len() as u64);
                full(bytes[start as usize..end as usize].to_vec())
            }
            Blob::Layer(layer, _) => {
                let ranged = status == StatusCode::PARTIAL_CONTENT;
                stream_layer(state, *layer, start, len, ranged, digest.to_string())
            }
        }
    };
    b.body(body).unwrap_or_else(|_| Response::new(empty()))
}

/// A body fed by a bounded channel.
struct ChannelBody {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    len: Option<u64>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        self.len.map(SizeHint::with_exact).unwrap_or_default()
    }
}

/// Buffers of CHUNK bytes for the pieces of layer blobs, reused by every stream. A piece is
/// filled on an exporting thread and freed on a runtime thread after it was sent; allocated
/// afresh each time, such cross-thread frees left pages in every exporting thread's heap:
/// 39 to 52 MiB resident with 8 clients, 25 to 29 MiB with the pool (both with the binary's
/// lazy arena commit; see bench/RESULTS.md).
static POOL: std::sync::Mutex<Vec<Box<[u8]>>> = std::sync::Mutex::new(Vec::new());

/// A piece of a layer blob in a pooled buffer; the buffer goes back to the pool when the
/// last `Bytes` referring to it is dropped.
struct Piece {
    buf: Box<[u8]>,
    len: usize,
}

impl Piece {
    fn new(data: &[u8]) -> Piece {
        let mut buf = POOL
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| vec![0u8; CHUNK].into_boxed_slice());
        buf[..data.len()].copy_from_slice(data);
        Piece {
            buf,
            len: data.len(),
        }
    }
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        if let Ok(mut p) = POOL.lock() {
            if p.len() < POOL_MAX {
                p.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// Why the exporting thread stopped writing on purpose.
#[derive(Debug)]
struct RangeDone;

impl std::fmt::Display for RangeDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("end of the requested range")
    }
}

impl std::error::Error for RangeDone {}

/// The exporting thread's writer: skips to the range's start, stops at its end, and holds
/// the last chunk back until the export succeeded (so a failed final check, e.g. the
/// digest, never lets a complete body out).
struct ChanWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    handle: tokio::runtime::Handle,
    skip: u64,
    /// Bytes still wanted (`None`: all).
    remaining: Option<u64>,
    pending: Option<Bytes>,
    client_gone: bool,
}

impl ChanWriter {
    fn send(&mut self, item: std::io::Result<Bytes>) -> std::io::Result<()> {
        let tx = &self.tx;
        match self
            .handle
            .block_on(tokio::time::timeout(SEND_TIMEOUT, tx.send(item)))
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.client_gone = true;
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            Err(_) => {
                self.client_gone = true;
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client read nothing for 60 s",
                ))
            }
        }
    }
}

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        let mut b = buf;
        if self.skip > 0 {
            let k = self.skip.min(b.len() as u64) as usize;
            self.skip -= k as u64;
            b = &b[k..];
        }
        if let Some(r) = self.remaining {
            b = &b[..(r.min(b.len() as u64) as usize)];
        }
        if !b.is_empty() {
            if let Some(r) = &mut self.remaining {
                *r -= b.len() as u64;
            }
            // Pieces of at most CHUNK bytes in pooled buffers (see POOL).
            for piece in b.chunks(CHUNK) {
                if let Some(p) = self.pending.replace(Bytes::from_owner(Piece::new(piece))) {
                    self.send(Ok(p))?;
                }
            }
        }
        if self.remaining == Some(0) {
            return Err(std::io::Error::other(RangeDone));
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn stream_layer(
    state: &Arc<State>,
    layer: Layer,
    start: u64,
    len: Option<u64>,
    ranged: bool,
    digest: String,
) -> ResBody {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let verify = state.verify;
    let mut w = ChanWriter {
        tx,
        handle: state.handle.clone(),
        skip: start,
        remaining: if ranged { len } else { None },
        pending: None,
        client_gone: false,
    };
    tokio::task::spawn_blocking(move || {
        // The whole blob is checked file by file (CRC-64), and with --verify digest against
        // its DiffID; a range stops early, so only the files it passes are checked.
        let verify = if ranged { Verify::Crc } else { verify };
        let r = layer.export(&mut w, &ExportOptions::new(verify));
        let done = ranged && w.remaining == Some(0);
        match r {
            Ok(rep) if !ranged && len.is_some_and(|l| l != rep.bytes) => {
                log::error!(
                    "layer {} ({digest}): rebuilt {} bytes, expected {}; transfer aborted",
                    layer.id(),
                    rep.bytes,
                    len.unwrap_or(0)
                );
                let _ = w.send(Err(std::io::Error::other("size mismatch")));
            }
            Ok(_) => {
                if let Some(p) = w.pending.take() {
                    let _ = w.send(Ok(p));
                }
            }
            Err(_) if done => {
                if let Some(p) = w.pending.take() {
                    let _ = w.send(Ok(p));
                }
            }
            Err(e) if w.client_gone => {
                log::info!("layer {} ({digest}): client went away: {e}", layer.id());
            }
            Err(e) => {
                log::error!("layer {} ({digest}): transfer aborted: {e}", layer.id());
                w.pending = None;
                let _ = w.send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    ChannelBody { rx, len }.boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        let r = |s: &str, size| parse_range(Some(&h(s)), size);
        assert_eq!(parse_range(None, 10), RangeReq::Whole);
        assert_eq!(r("bytes=0-4", 10), RangeReq::Part(0, 4));
        assert_eq!(r("bytes=5-", 10), RangeReq::Part(5, 9));
        assert_eq!(r("bytes=5-100", 10), RangeReq::Part(5, 9));
        assert_eq!(r("bytes=-3", 10), RangeReq::Part(7, 9));
        assert_eq!(r("bytes=-30", 10), RangeReq::Part(0, 9));
        assert_eq!(r("bytes=10-", 10), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=4-2", 10), RangeReq::Whole);
        assert_eq!(r("bytes=0-1,3-4", 10), RangeReq::Whole);
        assert_eq!(r("items=0-1", 10), RangeReq::Whole);
        assert_eq!(r("bytes=x-1", 10), RangeReq::Whole);
    }

    #[test]
    fn query() {
        assert_eq!(
            query_param(Some("n=2&last=docker.io%2Flibrary%2Fa"), "last").as_deref(),
            Some("docker.io/library/a")
        );
        assert_eq!(query_param(Some("n=2"), "last"), None);
        assert_eq!(query_param(None, "n"), None);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41%"), "A%");
    }
}
