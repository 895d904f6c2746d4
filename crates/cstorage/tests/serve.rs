//! `cstorage serve` pulled from by real clients (skopeo, podman, containerd, curl) on
//! loopback. Every server is started on 127.0.0.1 with a port the kernel picks and stopped
//! (SIGTERM, then SIGKILL) when its test ends; every wait is bounded.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use testutil::fixtures::{Standard, standard};
use testutil::{TestStore, run, sha256_hex, stdout_of};

mod common;
use common::cstorage;

fn fixture() -> &'static Standard {
    static F: OnceLock<Standard> = OnceLock::new();
    F.get_or_init(|| standard(&testutil::fixture_dir(&std::env::temp_dir(), "cst-serve")))
}

/// A running `cstorage serve`, stopped when dropped.
struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
    /// Every `listening on` line (one per `--listen`).
    listening: Vec<String>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(store: &TestStore, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serve.log");
        let mut c = cstorage(store);
        c.args(["--log-level", "info", "serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = c.spawn().expect("starting cstorage serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let want = 1 + extra.iter().filter(|a| **a == "--listen").count();
        let mut listening = Vec::new();
        while listening.len() < want {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => listening.push(l),
                Err(_) => break,
            }
        }
        let line = listening.first().cloned().unwrap_or_default();
        let addr = line
            .trim()
            .rsplit("://")
            .next()
            .unwrap_or_default()
            .to_string();
        let mut s = Server {
            child,
            addr,
            listening,
            log,
            _dir: dir,
        };
        if !s.addr.starts_with("127.0.0.1:") || s.listening.len() < want {
            let _ = s.child.kill();
            panic!("cstorage serve did not start: {line:?}\n{}", s.log_text());
        }
        s
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// What curl got.
#[derive(Debug)]
struct Resp {
    /// curl's exit code (0: transfer complete).
    exit: i32,
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    stderr: String,
}

impl Resp {
    fn h(&self, k: &str) -> &str {
        self.headers.get(k).map(String::as_str).unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn curl(args: &[&str]) -> Resp {
    let dir = tempfile::tempdir().unwrap();
    let (hf, bf) = (dir.path().join("h"), dir.path().join("b"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D"])
        .arg(&hf)
        .arg("-o")
        .arg(&bf)
        .args(["-w", "%{http_code}"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    let htext = std::fs::read_to_string(&hf).unwrap_or_default();
    // The last response's headers (after any 100-continue or redirects).
    let block = htext
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("");
    let headers = block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        exit: out.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers,
        body: std::fs::read(&bf).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn skopeo_config(src: &str, extra: &[&str]) -> Vec<u8> {
    run(Command::new("skopeo")
        .args(["inspect", "--raw", "--config"])
        .args(extra)
        .arg(src))
    .stdout
}

/// The layer diff-digests of `name` in a store, base first, as containers-storage reports them.
fn go_diff_ids(store: &TestStore, name: &str) -> Vec<String> {
    let images = store.go_images();
    let img = images
        .iter()
        .find(|i| {
            i["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == name))
        })
        .unwrap_or_else(|| panic!("{name} not in the store: {images:?}"));
    let layers: BTreeMap<String, Value> = store
        .go_layers()
        .into_iter()
        .map(|l| (l["id"].as_str().unwrap().to_string(), l))
        .collect();
    let mut chain = Vec::new();
    let mut cur = img["layer"].as_str().map(String::from);
    while let Some(id) = cur {
        let l = &layers[&id];
        chain.push(l["diff-digest"].as_str().unwrap().to_string());
        cur = l.get("parent").and_then(|p| p.as_str()).map(String::from);
    }
    chain.reverse();
    chain
}

/// The manifest `cstorage image export` writes for `name` (its bytes).
fn exported_manifest(store: &TestStore, name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("oci");
    stdout_of(
        cstorage(store)
            .args(["image", "export", "-o"])
            .arg(&out)
            .arg(name),
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"][0]["digest"].as_str().unwrap();
    std::fs::read(out.join("blobs/sha256").join(&d[7..])).unwrap()
}

/// A store with one image, `localhost/big:latest`, whose layer holds a 16 MiB file; and
/// that layer's digest.
fn big_layer_store() -> (TestStore, String) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(tree.join("big.bin"), data).unwrap();
    let tar = testutil::gnu_tar(&tree, testutil::TarFormat::Posix, &["--mtime=@1700000000"]);
    let mut layout = testutil::OciLayout::create(&dir.path().join("layout"));
    let built = layout.add_image("big", &[tar], testutil::Blob::Plain, testutil::go_arch());
    let store = TestStore::new();
    store.copy_in(&layout.source("big"), "localhost/big:latest", &[]);
    (store, built.diff_ids[0].clone())
}

const PULLED: [&str; 4] = [
    "localhost/app1:latest",
    "localhost/app2:v2",
    "docker.io/library/dockerimg:latest",
    "localhost/multi:latest",
];

#[test]
fn skopeo_pulls_into_oci_layout_and_a_second_store() {
    let f = fixture();
    let srv = Server::start(&f.store, &[]);
    let dst = TestStore::new();
    let tmp = tempfile::tempdir().unwrap();
    for name in PULLED {
        let src = format!("docker://{}/{name}", srv.addr);
        // The manifest skopeo reads is the one `image export` writes, byte for byte:
        // uncompressed layers whose digests are the source's DiffIDs.
        let mbytes = run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(&src))
        .stdout;
        assert_eq!(
            mbytes,
            exported_manifest(&f.store, name),
            "{name}: manifest"
        );
        let m: Value = serde_json::from_slice(&mbytes).unwrap();
        let digests: Vec<&str> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar");
                l["digest"].as_str().unwrap()
            })
            .collect();
        assert_eq!(digests, f.built[name].diff_ids, "{name}: layers");
        // Into a `dir:` (blobs kept as sent): each blob's sha256 is its digest.
        let d = tmp.path().join(name.replace(['/', ':'], "_"));
        run(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(&src)
            .arg(format!("dir:{}", d.display())));
        for dg in &digests {
            let hex = &dg[7..];
            assert_eq!(testutil::sha256_file(&d.join(hex)), hex, "{name}");
        }
        assert_eq!(std::fs::read(d.join("manifest.json")).unwrap(), mbytes);
        // Into an OCI layout (skopeo compresses the layers there): the config is the stored
        // one, byte for byte.
        let layout = format!("oci:{}:x", d.with_extension("oci").display());
        run(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(&src)
            .arg(&layout));
        let stored = skopeo_config(&format!("{}{name}", f.store.spec()), &[]);
        assert_eq!(skopeo_config(&layout, &[]), stored, "{name}: config");
        // Into a second store: the same DiffIDs there.
        dst.copy_in(&src, name, &["--src-tls-verify=false"]);
        assert_eq!(go_diff_ids(&dst, name), f.built[name].diff_ids, "{name}");
    }
    // An image stored with uncompressed layers is served with its stored manifest: the
    // digest it was built (and pulled) with.
    let r = curl(&[&srv.url("/v2/localhost/app2/manifests/v2")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.h("docker-content-digest"),
        f.built["localhost/app2:v2"].manifest_digest
    );
    assert_eq!(r.body, f.built["localhost/app2:v2"].manifest);
}

#[test]
fn podman_pulls_into_a_second_store_and_through_a_docker_io_mirror() {
    let f = fixture();
    let srv = Server::start(&f.store, &["--mirror-of", "docker.io"]);
    // Node A (an empty store) pulls an image it lacks from node B's server.
    let a = TestStore::new();
    let name = format!("{}/localhost/app1:latest", srv.addr);
    run(a.podman().args(["pull", "-q", "--tls-verify=false", &name]));
    assert_eq!(
        go_diff_ids(&a, &name),
        f.built["localhost/app1:latest"].diff_ids
    );
    // Node A now serves what it pulled: the same manifest bytes (A stored B's uncompressed
    // manifest, and serves stored bytes), so the digest is the same on every node.
    let from_b = curl(&[&srv.url("/v2/localhost/app1/manifests/latest")]);
    let srv_a = Server::start(&a, &[]);
    let repo_a = format!("{}/localhost/app1", srv.addr);
    let from_a = curl(&[&srv_a.url(&format!("/v2/{repo_a}/manifests/latest"))]);
    assert_eq!(
        from_a.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&from_a.body)
    );
    assert_eq!(from_a.body, from_b.body);
    drop(srv_a);
    // As a registry mirror for docker.io: podman asks for library/dockerimg, with no other
    // network (docker.io itself is unreachable here, so only the mirror can answer).
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
            srv.addr
        ),
    )
    .unwrap();
    let b = TestStore::new();
    run(b.podman().env("CONTAINERS_REGISTRIES_CONF", &conf).args([
        "pull",
        "-q",
        "docker.io/library/dockerimg:latest",
    ]));
    assert_eq!(
        go_diff_ids(&b, "docker.io/library/dockerimg:latest"),
        f.built["docker.io/library/dockerimg:latest"].diff_ids
    );
    let log = srv.log_text();
    assert!(
        log.contains("GET /v2/library/dockerimg/manifests/latest 200"),
        "the pull went through the mirror:\n{log}"
    );
}

#[test]
fn endpoints_headers_ranges_and_errors() {
    let f = fixture();
    let srv = Server::start(&f.store, &[]);
    let u = |p: &str| srv.url(p);

    // Base.
    let r = curl(&[&u("/v2/")]);
    assert_eq!((r.status, r.json()), (200, serde_json::json!({})));
    assert_eq!(r.h("docker-distribution-api-version"), "registry/2.0");

    // Catalog: every stored repository, paginated.
    let r = curl(&[&u("/v2/_catalog")]);
    let all: Vec<String> = r.json()["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = f
        .built
        .keys()
        .filter(|n| *n != "localhost/ais-only:latest")
        .map(|n| n.rsplit_once(':').unwrap().0.to_string())
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(all, expected);
    let mut paged = Vec::new();
    let mut next = u("/v2/_catalog?n=2");
    for _ in 0..all.len() + 1 {
        let r = curl(&[&next]);
        assert_eq!(r.status, 200);
        let page: Vec<String> = r.json()["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert!(page.len() <= 2);
        paged.extend(page);
        let link = r.h("link");
        if link.is_empty() {
            break;
        }
        let path = link.trim_start_matches('<').split('>').next().unwrap();
        next = u(path);
    }
    assert_eq!(paged, all);

    // Tags.
    let r = curl(&[&u("/v2/localhost/app2/tags/list")]);
    assert_eq!(
        r.json(),
        serde_json::json!({"name": "localhost/app2", "tags": ["latest", "v2"]})
    );
    let r = curl(&[&u("/v2/localhost/app2/tags/list?n=1")]);
    assert_eq!(r.json()["tags"], serde_json::json!(["latest"]));
    assert_eq!(
        r.h("link"),
        "</v2/localhost/app2/tags/list?n=1&last=latest>; rel=\"next\""
    );
    let r = curl(&[&u("/v2/localhost/app2/tags/list?n=1&last=latest")]);
    assert_eq!(r.json()["tags"], serde_json::json!(["v2"]));
    assert_eq!(r.h("link"), "");

    // Manifest by tag, then by digest; HEAD gives the same headers and no body.
    let r = curl(&[&u("/v2/localhost/app1/manifests/latest")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.h("content-type"),
        "application/vnd.oci.image.manifest.v1+json"
    );
    let digest = format!("sha256:{}", sha256_hex(&r.body));
    assert_eq!(r.h("docker-content-digest"), digest);
    assert_eq!(r.h("etag"), format!("\"{digest}\""));
    assert_eq!(r.h("content-length"), r.body.len().to_string());
    let manifest = r.json();
    let by_digest = curl(&[&u(&format!("/v2/localhost/app1/manifests/{digest}"))]);
    assert_eq!((by_digest.status, &by_digest.body), (200, &r.body));
    let h = curl(&["-I", &u("/v2/localhost/app1/manifests/latest")]);
    assert_eq!(h.status, 200);
    for k in [
        "content-type",
        "content-length",
        "docker-content-digest",
        "etag",
    ] {
        assert_eq!(h.h(k), r.h(k), "{k}");
    }

    // Blobs: config and layers, GET/HEAD, digests right.
    let config = manifest["config"]["digest"].as_str().unwrap();
    let r = curl(&[&u(&format!("/v2/localhost/app1/blobs/{config}"))]);
    assert_eq!(r.status, 200);
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), config);
    assert_eq!(r.h("docker-content-digest"), config);
    for l in manifest["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        let size = l["size"].as_u64().unwrap();
        let r = curl(&[&u(&format!("/v2/localhost/app1/blobs/{d}"))]);
        assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
        assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), d);
        assert_eq!(r.body.len() as u64, size);
        assert_eq!(r.h("content-length"), size.to_string());
        let h = curl(&["-I", &u(&format!("/v2/localhost/app1/blobs/{d}"))]);
        assert_eq!(
            (h.status, h.h("content-length")),
            (200, size.to_string().as_str())
        );
        assert_eq!(h.h("docker-content-digest"), d);
        // Ranges: a middle part, an open end, a suffix, and one past the end.
        let whole = r.body;
        for (range, s, e) in [
            (format!("{}-{}", size / 3, size / 2), size / 3, size / 2),
            (format!("{}-", size - 700), size - 700, size - 1),
            ("-100".to_string(), size - 100, size - 1),
        ] {
            let p = curl(&[
                "-H",
                &format!("Range: bytes={range}"),
                &u(&format!("/v2/localhost/app1/blobs/{d}")),
            ]);
            assert_eq!((p.exit, p.status), (0, 206), "{range}: {}", p.stderr);
            assert_eq!(p.h("content-range"), format!("bytes {s}-{e}/{size}"));
            assert_eq!(p.body, whole[s as usize..=e as usize], "{range}");
        }
        let p = curl(&[
            "-H",
            &format!("Range: bytes={size}-"),
            &u(&format!("/v2/localhost/app1/blobs/{d}")),
        ]);
        assert_eq!(p.status, 416);
        assert_eq!(p.h("content-range"), format!("bytes */{size}"));
    }
    // A range of a config blob.
    let p = curl(&[
        "-H",
        "Range: bytes=0-9",
        &u(&format!("/v2/localhost/app1/blobs/{config}")),
    ]);
    assert_eq!((p.status, p.body.len()), (206, 10));

    // Errors, with the spec's codes.
    let zero = format!("sha256:{}", "0".repeat(64));
    for (path, status, code) in [
        (
            "/v2/localhost/nothere/manifests/latest",
            404,
            "NAME_UNKNOWN",
        ),
        ("/v2/localhost/nothere/tags/list", 404, "NAME_UNKNOWN"),
        (
            "/v2/localhost/app1/manifests/nosuchtag",
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            &format!("/v2/localhost/app1/manifests/{zero}") as &str,
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            &format!("/v2/localhost/app1/blobs/{zero}"),
            404,
            "BLOB_UNKNOWN",
        ),
        ("/v2/localhost/app1/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
        ("/v2/Localhost/App1/manifests/latest", 400, "NAME_INVALID"),
        // Traversal-shaped names never reach a path: refused as names.
        (
            "/v2/localhost/%2e%2e/%2e%2e/manifests/latest",
            400,
            "NAME_INVALID",
        ),
        ("/v2/localhost%2fapp1/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/../../etc/manifests/latest", 400, "NAME_INVALID"),
        (
            "/v2/localhost/app1/../app2/manifests/latest",
            400,
            "NAME_INVALID",
        ),
        ("/v2/localhost/./app1/manifests/latest", 400, "NAME_INVALID"),
        (
            "/v2/localhost/app1/blobs/..%2f..%2fetc%2fpasswd",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/localhost/app1/manifests/..%2f..",
            404,
            "MANIFEST_UNKNOWN",
        ),
    ] {
        let r = curl(&["--path-as-is", &u(path)]);
        assert_eq!(
            (r.status, r.error_code()),
            (status, code.to_string()),
            "{path}"
        );
        assert_eq!(r.h("content-type"), "application/json", "{path}");
    }
    // A blob of another repository is not served through this one.
    let other_config = &f.built["localhost/app2:v2"].config_digest;
    let r = curl(&[&u(&format!("/v2/localhost/app1/blobs/{other_config}"))]);
    assert_eq!((r.status, r.error_code().as_str()), (404, "BLOB_UNKNOWN"));
    // Write methods: 405 UNSUPPORTED.
    for (m, p) in [
        ("POST", "/v2/localhost/app1/blobs/uploads/"),
        ("PUT", "/v2/localhost/app1/manifests/latest"),
        ("PATCH", "/v2/localhost/app1/blobs/uploads/x"),
        ("DELETE", "/v2/localhost/app1/manifests/latest"),
        ("DELETE", &format!("/v2/localhost/app1/blobs/{config}")),
    ] {
        let r = curl(&["-X", m, "--data-binary", "x", &u(p)]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (405, "UNSUPPORTED"),
            "{m} {p}"
        );
        assert_eq!(r.h("allow"), "GET, HEAD");
    }
    // The store is untouched by all of this, and the server logged each request.
    let log = srv.log_text();
    assert!(log.contains("GET /v2/_catalog 200"), "{log}");
    assert!(
        log.contains("DELETE /v2/localhost/app1/manifests/latest 405"),
        "{log}"
    );
}

#[test]
fn mirror_lookups_and_image_patterns() {
    let f = fixture();
    let srv = Server::start(
        &f.store,
        &[
            "--images",
            "localhost/app*",
            "--images",
            "docker.io/*",
            "--mirror-of",
            "quay.io",
        ],
    );
    // containerd's ns parameter: library/dockerimg under docker.io.
    let r = curl(&[&srv.url("/v2/library/dockerimg/manifests/latest?ns=docker.io")]);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let direct = curl(&[&srv.url("/v2/docker.io/library/dockerimg/manifests/latest")]);
    assert_eq!(r.body, direct.body);
    // Without ns, and not a --mirror-of registry: unknown.
    let r = curl(&[&srv.url("/v2/library/dockerimg/manifests/latest")]);
    assert_eq!(r.status, 404);
    // Only the exposed images are listed and served.
    let r = curl(&[&srv.url("/v2/_catalog")]);
    assert_eq!(
        r.json()["repositories"],
        serde_json::json!([
            "docker.io/library/dockerimg",
            "localhost/app1",
            "localhost/app2"
        ])
    );
    for hidden in [
        "/v2/localhost/base/manifests/latest",
        "/v2/quay.io/test/fuzzy/manifests/1.0",
        "/v2/test/fuzzy/manifests/1.0",
    ] {
        let r = curl(&[&srv.url(hidden)]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "NAME_UNKNOWN"),
            "{hidden}"
        );
    }
    // base's layer is app1's first layer: reachable through app1, not through base.
    let base_layer = &f.built["localhost/base:latest"].diff_ids[0];
    let r = curl(&[
        "-I",
        &srv.url(&format!("/v2/localhost/app1/blobs/{base_layer}")),
    ]);
    assert_eq!(r.status, 200);
    let r = curl(&[
        "-I",
        &srv.url(&format!("/v2/localhost/base/blobs/{base_layer}")),
    ]);
    assert_eq!(r.status, 404);
}

fn htpasswd_file(dir: &Path) -> PathBuf {
    let p = dir.join("htpasswd");
    let out = stdout_of(Command::new("htpasswd").args(["-Bbn", "alice", "s3cret"]));
    std::fs::write(&p, out).unwrap();
    p
}

#[test]
fn tls_and_authentication() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let htpasswd = htpasswd_file(dir.path());
    let srv = Server::start(
        &f.store,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--htpasswd",
            htpasswd.to_str().unwrap(),
        ],
    );
    let url = |p: &str| format!("https://{}{p}", srv.addr);
    let ca = cert.to_str().unwrap();
    // Without credentials: 401 with a Basic challenge, also on /v2/.
    for p in ["/v2/", "/v2/localhost/app1/manifests/latest"] {
        let r = curl(&["--cacert", ca, &url(p)]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "UNAUTHORIZED"),
            "{p}"
        );
        assert_eq!(r.h("www-authenticate"), "Basic realm=\"cstorage\"");
    }
    let r = curl(&["--cacert", ca, "-u", "alice:wrong", &url("/v2/")]);
    assert_eq!(r.status, 401);
    let r = curl(&["--cacert", ca, "-u", "alice:s3cret", &url("/v2/")]);
    assert_eq!(r.status, 200);
    // Plain HTTP to the TLS port fails.
    let r = curl(&[&srv.url("/v2/")]);
    assert_ne!(r.status, 200);
    // skopeo over TLS with credentials, verifying the certificate (cert dir with ca.crt).
    let certs = dir.path().join("certs.d");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&cert, certs.join("ca.crt")).unwrap();
    let tmp = dir.path().join("pulled");
    run(Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--src-creds",
            "alice:s3cret",
            "--src-cert-dir",
        ])
        .arg(&certs)
        .arg(format!("docker://{}/localhost/app1:latest", srv.addr))
        .arg(format!("oci:{}:x", tmp.display())));
    assert_eq!(
        skopeo_config(&format!("oci:{}:x", tmp.display()), &[]),
        skopeo_config(&format!("{}localhost/app1:latest", f.store.spec()), &[])
    );
    // Without credentials, skopeo is refused.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--src-cert-dir"])
        .arg(&certs)
        .arg(format!("docker://{}/localhost/app1:latest", srv.addr))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn corrupted_layer_aborts_that_blob_only() {
    let f = fixture();
    let store = TestStore::new();
    store.copy_in(
        &format!("oci:{}:app2", f.layout.display()),
        "localhost/app2:latest",
        &[],
    );
    let built = &f.built["localhost/app2:latest"];
    // Flip a byte of app/two.bin in the top layer's diff (same size: only the CRC can tell).
    let top = store.go_images()[0]["layer"].as_str().unwrap().to_string();
    let file = store
        .root
        .join("overlay")
        .join(&top)
        .join("diff/app/two.bin");
    let mut b = std::fs::read(&file).unwrap();
    b[100_000] ^= 0xff;
    std::fs::write(&file, &b).unwrap();
    // Both verification modes check each file's CRC-64.
    for verify in ["crc", "digest"] {
        let srv = Server::start(&store, &["--verify", verify]);
        let blob = |d: &str| srv.url(&format!("/v2/localhost/app2/blobs/{d}"));
        let r = curl(&[&blob(&built.diff_ids[1])]);
        assert_ne!(
            r.exit, 0,
            "--verify {verify}: curl must see a failed transfer: {r:?}"
        );
        assert!(
            (r.body.len() as u64) < 200_000,
            "the body stopped before its end ({} bytes)",
            r.body.len()
        );
        let log = srv.log_text();
        assert!(
            log.contains(&top) && log.contains("two.bin"),
            "logged with layer and file:\n{log}"
        );
        // The other blobs are fine.
        let r = curl(&[&blob(&built.diff_ids[0])]);
        assert_eq!(
            (r.exit, format!("sha256:{}", sha256_hex(&r.body))),
            (0, built.diff_ids[0].clone())
        );
        let r = curl(&[&blob(&built.config_digest)]);
        assert_eq!((r.exit, r.status), (0, 200));
        // skopeo fails to pull it, rather than getting a wrong layer.
        let tmp = tempfile::tempdir().unwrap();
        let out = Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{}/localhost/app2:latest", srv.addr))
            .arg(format!("oci:{}:x", tmp.path().display()))
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}

#[test]
fn concurrent_pulls_and_clean_shutdown() {
    let f = fixture();
    let mut srv = Server::start(&f.store, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let addr = srv.addr.clone();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let name = PULLED[i % PULLED.len()];
                let dst = tmp.path().join(format!("p{i}"));
                let addr = addr.clone();
                s.spawn(move || {
                    // skopeo checks every blob's digest against the manifest.
                    run(Command::new("timeout")
                        .arg("120")
                        .arg("skopeo")
                        .args(["copy", "-q", "--src-tls-verify=false"])
                        .arg(format!("docker://{addr}/{name}"))
                        .arg(format!("oci:{}:x", dst.display())));
                    (name, dst)
                })
            })
            .collect();
        for h in handles {
            let (name, dst) = h.join().unwrap();
            let cfg = skopeo_config(&format!("oci:{}:x", dst.display()), &[]);
            let v: Value = serde_json::from_slice(&cfg).unwrap();
            assert_eq!(
                v["rootfs"]["diff_ids"],
                serde_json::json!(f.built[name].diff_ids)
            );
        }
    });
    // A client that goes away mid-blob leaves the server serving: a 16 MiB layer (more than
    // loopback socket buffers hold), read by a client with a small receive window.
    let big = big_layer_store();
    let mut bsrv = Server::start(&big.0, &[]);
    let layer = big.1.as_str();
    let (host, port) = bsrv.addr.split_once(':').unwrap();
    let script = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.settimeout(10)
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(("GET /v2/localhost/big/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n" % sys.argv[3]).encode())
s.recv(1000)
time.sleep(0.5)
s.close()
"#;
    run(Command::new("python3").args(["-c", script, host, port, layer]));
    let t0 = Instant::now();
    while !bsrv.log_text().contains("client went away") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        bsrv.log_text().contains("client went away"),
        "{}",
        bsrv.log_text()
    );
    assert_eq!(curl(&[&bsrv.url("/v2/")]).status, 200);
    assert!(bsrv.stop().is_some_and(|s| s.success()));
    assert_eq!(curl(&[&srv.url("/v2/")]).status, 200);
    let st = srv.stop().expect("exits on SIGTERM within 10 s");
    assert!(st.success(), "{st:?}\n{}", srv.log_text());
}

/// The Debian 13 chroot of `tests/trixie` (skopeo 1.18, crane, oras), set up (idempotent)
/// under the lock `ensure-stores.sh` uses; unmounted at the end if this test mounted it.
struct Trixie {
    script: PathBuf,
    work: PathBuf,
    teardown: bool,
    _lock: std::fs::File,
}

impl Trixie {
    fn new() -> Trixie {
        use std::os::fd::AsRawFd;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the chroot tests must run as root (they use the Debian 13 chroot of tests/trixie)"
        );
        let cache = std::env::var_os("CSTORAGE_TRIXIE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/cstorage-trixie"));
        std::fs::create_dir_all(&cache).unwrap();
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cache.join(".ensure.lock"))
            .unwrap();
        // SAFETY: flock on a file descriptor we own.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/trixie/trixie-env.sh");
        let root = cache.join("root");
        let was_mounted = Command::new("mountpoint")
            .arg("-q")
            .arg(&root)
            .status()
            .is_ok_and(|s| s.success());
        let out = Command::new(&script)
            .arg("setup")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "THE TRIXIE CHROOT COULD NOT BE SET UP: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: as above; shared while the tools run.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) }, 0);
        let work = cache
            .join("work")
            .join(format!("serve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        Trixie {
            script,
            work,
            teardown: !was_mounted,
            _lock: lock,
        }
    }

    /// Runs a command in the chroot (bounded to 120 s); returns its stdout, or fails.
    fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new(&self.script)
            .args(["run", "timeout", "120"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "in the chroot: {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        out.stdout
    }
}

impl Drop for Trixie {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
        if self.teardown {
            let _ = Command::new(&self.script)
                .arg("teardown")
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// The config blob of the image tagged `tag` in an OCI layout.
fn layout_config(dir: &Path) -> Vec<u8> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| std::fs::read(dir.join("blobs/sha256").join(&d[7..])).unwrap();
    let m: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    blob(m["config"]["digest"].as_str().unwrap())
}

#[test]
fn crane_oras_and_skopeo_1_18_from_debian_13() {
    let f = fixture();
    let t = Trixie::new();
    let srv = Server::start(&f.store, &[]);
    let a = &srv.addr;
    let app1 = format!("{a}/localhost/app1:latest");
    let stored_config = skopeo_config(&format!("{}localhost/app1:latest", f.store.spec()), &[]);
    let served = curl(&[&srv.url("/v2/localhost/app1/manifests/latest")]);

    // crane. Its full `validate` gunzips every layer whatever its media type, so it cannot
    // validate uncompressed layers (go-containerregistry issue 1826, open in 0.20.7): with
    // --fast it checks that the manifest parses and every blob it names exists; the layers'
    // content is checked below, from `crane pull`.
    t.ok(&[
        "crane",
        "validate",
        "--insecure",
        "--fast",
        "--remote",
        &app1,
    ]);
    let digest = t.ok(&["crane", "digest", "--insecure", &app1]);
    assert_eq!(
        String::from_utf8_lossy(&digest).trim(),
        served.h("docker-content-digest")
    );
    let tags = t.ok(&["crane", "ls", "--insecure", &format!("{a}/localhost/app2")]);
    assert_eq!(String::from_utf8_lossy(&tags), "latest\nv2\n");
    let catalog = t.ok(&["crane", "catalog", "--insecure", a]);
    assert!(
        String::from_utf8_lossy(&catalog)
            .lines()
            .any(|l| l == "docker.io/library/dockerimg")
    );
    let crane_dir = t.work.join("crane");
    t.ok(&[
        "crane",
        "pull",
        "--insecure",
        "--format",
        "oci",
        &app1,
        crane_dir.to_str().unwrap(),
    ]);
    assert_eq!(layout_config(&crane_dir), stored_config);
    for d in &f.built["localhost/app1:latest"].diff_ids {
        let hex = &d[7..];
        assert_eq!(
            testutil::sha256_file(&crane_dir.join("blobs/sha256").join(hex)),
            hex
        );
    }

    // oras: the manifest, the tags, and a copy of the whole image into an OCI layout.
    let m = t.ok(&["oras", "manifest", "fetch", "--plain-http", &app1]);
    assert_eq!(m, served.body);
    let tags = t.ok(&[
        "oras",
        "repo",
        "tags",
        "--plain-http",
        &format!("{a}/localhost/app2"),
    ]);
    assert_eq!(String::from_utf8_lossy(&tags), "latest\nv2\n");
    let oras_dir = t.work.join("oras");
    t.ok(&[
        "oras",
        "cp",
        "--from-plain-http",
        &app1,
        "--to-oci-layout",
        &format!("{}:x", oras_dir.display()),
    ]);
    assert_eq!(layout_config(&oras_dir), stored_config);
    for d in &f.built["localhost/app1:latest"].diff_ids {
        let hex = &d[7..];
        assert_eq!(
            testutil::sha256_file(&oras_dir.join("blobs/sha256").join(hex)),
            hex
        );
    }

    // skopeo 1.18.
    let sk = t.work.join("skopeo");
    t.ok(&[
        "skopeo",
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{app1}"),
        &format!("oci:{}:x", sk.display()),
    ]);
    assert_eq!(layout_config(&sk), stored_config);
}

#[test]
fn ipv6_unix_socket_limits_and_removed_images() {
    let f = fixture();
    let store = TestStore::new();
    store.copy_in(
        &format!("oci:{}:app2", f.layout.display()),
        "localhost/app2:latest",
        &[],
    );
    store.copy_in(
        &format!("oci:{}:base", f.layout.display()),
        "localhost/base:latest",
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("registry.sock");
    let sock_arg = format!("unix:{}", sock.display());
    let srv = Server::start(&store, &["--listen", "[::1]:0", "--listen", &sock_arg]);
    assert!(
        srv.listening[1].starts_with("listening on http://[::1]:"),
        "{:?}",
        srv.listening
    );
    assert_eq!(srv.listening[2], format!("listening on {sock_arg}"));
    let v6 = srv.listening[1].rsplit("://").next().unwrap().to_string();
    let r = curl(&["-g", &format!("http://{v6}/v2/localhost/app2/tags/list")]);
    assert_eq!(
        (r.status, r.json()["tags"].clone()),
        (200, serde_json::json!(["latest"]))
    );
    let r = curl(&[
        "--unix-socket",
        sock.to_str().unwrap(),
        "http://localhost/v2/_catalog",
    ]);
    assert_eq!(
        r.json()["repositories"],
        serde_json::json!(["localhost/app2", "localhost/base"])
    );
    // A request head far larger than the limit (64 KiB) is refused by hyper. (hyper checks
    // the limit when a read leaves the head incomplete, so a head arriving in one read can
    // exceed it by up to one read: hyper issue 4081.)
    let hfile = dir.path().join("big-header");
    std::fs::write(&hfile, format!("X-Big: {}\n", "a".repeat(1 << 20))).unwrap();
    let r = curl(&["-H", &format!("@{}", hfile.display()), &srv.url("/v2/")]);
    assert!(r.status == 431 || r.exit != 0, "{r:?}");
    assert_eq!(curl(&[&srv.url("/v2/")]).status, 200);
    // An image removed while the server runs is unknown to the next request; the others
    // are still served.
    let m = curl(&[&srv.url("/v2/localhost/app2/manifests/latest")]);
    assert_eq!(m.status, 200);
    run(store.podman().args(["rmi", "localhost/app2:latest"]));
    let r = curl(&[&srv.url("/v2/localhost/app2/manifests/latest")]);
    assert_eq!((r.status, r.error_code().as_str()), (404, "NAME_UNKNOWN"));
    let config = serde_json::from_slice::<Value>(&m.body).unwrap()["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let r = curl(&[&srv.url(&format!("/v2/localhost/app2/blobs/{config}"))]);
    assert_eq!(r.status, 404);
    assert_eq!(
        curl(&[&srv.url("/v2/localhost/base/manifests/latest")]).status,
        200
    );
    drop(srv);
    assert!(!sock.exists(), "the socket is removed at shutdown");
}

#[test]
fn systemd_socket_activation() {
    let f = fixture();
    testutil::require_tool("systemd-socket-activate");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // systemd-socket-activate listens, and on the first connection execs cstorage with the
    // socket as descriptor 3 (LISTEN_FDS=1, LISTEN_PID = its own PID, kept across exec).
    let mut c = cstorage(&f.store);
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let envs: Vec<(String, String)> = c
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
        .collect();
    c = Command::new("systemd-socket-activate");
    c.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(env!("CARGO_BIN_EXE_cstorage"))
        .args(args)
        .args(["--log-level", "info", "serve"])
        .envs(envs)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let url = format!("http://127.0.0.1:{port}/v2/localhost/app2/tags/list");
    let mut r = curl(&[&url]);
    for _ in 0..50 {
        if r.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        r = curl(&[&url]);
    }
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    let mut status = None;
    while t0.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Reaps it in every case (the kill does nothing if it exited by itself).
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        r.json()["tags"],
        serde_json::json!(["latest", "v2"]),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("listening on http://127.0.0.1:{port} (socket activation)\n")
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// A containerd of its own: root, state, config and sockets under a temporary directory,
/// CRI and the other snapshotters off, no network but what `ctr` asks of the mirror.
/// Killed (SIGTERM, then SIGKILL) when dropped; every `ctr` call is bounded to 120 s.
struct Containerd {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the containerd test runs containerd itself, as root"
        );
        testutil::require_tool("containerd");
        testutil::require_tool("ctr");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sock = d.join("containerd.sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = sock.display(),
                opt = d.join("opt").display(),
            ),
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("containerd.log")).unwrap())
            .spawn()
            .expect("starting containerd");
        let c = Containerd { child, sock, dir };
        let t0 = Instant::now();
        loop {
            let up = Command::new("timeout")
                .args(["10", "ctr", "--address"])
                .arg(&c.sock)
                .arg("version")
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if up {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "containerd did not start:\n{}",
                std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr` in namespace `test`; returns its stdout, or fails.
    fn ctr(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("timeout")
            .args(["120", "ctr", "--address"])
            .arg(&self.sock)
            .args(["--namespace", "test"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        out.stdout
    }

    /// A `hosts.toml` directory making `addr` (plain HTTP) the mirror of docker.io, as the
    /// README shows it.
    fn hosts_dir(&self, addr: &str) -> PathBuf {
        let hosts = self.dir.path().join("certs.d");
        std::fs::create_dir_all(hosts.join("docker.io")).unwrap();
        std::fs::write(
            hosts.join("docker.io/hosts.toml"),
            format!(
                "server = \"https://registry-1.docker.io\"\n\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
        hosts
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chain ID of a list of DiffIDs (OCI image spec: ChainID(L0|L1) = sha256(ChainID(L0) +
/// " " + DiffID(L1))).
fn chain_id(diff_ids: &[String]) -> String {
    let mut chain = diff_ids[0].clone();
    for d in &diff_ids[1..] {
        chain = format!("sha256:{}", sha256_hex(format!("{chain} {d}").as_bytes()));
    }
    chain
}

#[test]
fn containerd_pulls_through_a_hosts_toml_mirror() {
    let f = fixture();
    let name = "docker.io/library/dockerimg:latest";
    let want_config = skopeo_config(&format!("{}{name}", f.store.spec()), &[]);
    let diff_ids = go_diff_ids(&f.store, name);
    assert_eq!(diff_ids, f.built[name].diff_ids);
    // containerd sends `?ns=docker.io` to a mirror: the first server resolves with it alone,
    // the second is also a --mirror-of docker.io server. A containerd of its own for each
    // pull, so that the second fetches every blob again.
    for extra in [&[][..], &["--mirror-of", "docker.io"][..]] {
        let srv = Server::start(&f.store, extra);
        let ctd = Containerd::start();
        let hosts = ctd.hosts_dir(&srv.addr);
        let hosts = hosts.to_str().unwrap();
        // Pulled and unpacked (the default snapshotter): unpacking checks each layer's
        // uncompressed digest against the config's DiffIDs.
        let out = ctd.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts,
            "--print-chainid",
            name,
        ]);
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.contains(&format!("image chain ID: {}", chain_id(&diff_ids))),
            "{extra:?}: {out}"
        );
        let images = String::from_utf8(ctd.ctr(&["images", "ls", "-q"])).unwrap();
        assert_eq!(images.trim(), name, "{extra:?}");
        // The manifest containerd stored is the one served (`image export`'s, layers =
        // DiffIDs); the config is the stored one, byte for byte.
        let manifest = exported_manifest(&f.store, name);
        let mdigest = format!("sha256:{}", sha256_hex(&manifest));
        assert_eq!(
            ctd.ctr(&["content", "get", &mdigest]),
            manifest,
            "{extra:?}"
        );
        let m: Value = serde_json::from_slice(&manifest).unwrap();
        let config = m["config"]["digest"].as_str().unwrap();
        assert_eq!(
            ctd.ctr(&["content", "get", config]),
            want_config,
            "{extra:?}"
        );
        for d in &diff_ids {
            let blob = ctd.ctr(&["content", "get", d]);
            assert_eq!(format!("sha256:{}", sha256_hex(&blob)), *d, "{extra:?}");
        }
        // Every request came through the mirror, with containerd's ns parameter.
        let log = srv.log_text();
        for path in [
            "/v2/library/dockerimg/manifests/latest?ns=docker.io 200".to_string(),
            format!("/v2/library/dockerimg/blobs/{config}?ns=docker.io 200"),
            format!(
                "/v2/library/dockerimg/blobs/{}?ns=docker.io 200",
                diff_ids[0]
            ),
            format!(
                "/v2/library/dockerimg/blobs/{}?ns=docker.io 200",
                diff_ids[1]
            ),
        ] {
            assert!(log.contains(&path), "{extra:?}: no {path} in\n{log}");
        }
    }
}

/// The server's peak resident memory (VmHWM) in KiB.
fn peak_rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn peak_memory_with_8_clients() {
    // 8 clients pull a 16 MiB layer at once, four rounds (512 MiB sent). The issue's bound is
    // 64 MiB on the 1.3 GB image (bench/serve.sh); mimalloc's eager arena commit, which
    // `cstorage` turns off at startup, made this run peak at 118 MiB (debug build).
    let (store, layer) = big_layer_store();
    let srv = Server::start(&store, &[]);
    let url = srv.url(&format!("/v2/localhost/big/blobs/{layer}"));
    for _ in 0..4 {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let out = run(Command::new("curl").args(["-sf", "--max-time", "60", &url]));
                        assert_eq!(format!("sha256:{}", sha256_hex(&out.stdout)), layer);
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
    }
    let kib = peak_rss_kib(&srv.child);
    eprintln!("peak RSS of cstorage serve: {} MiB", kib >> 10);
    assert!(kib < 64 << 10, "peak RSS {} MiB", kib >> 10);
}
