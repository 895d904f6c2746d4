//! `cstorage` and the library on stores written by podman 5.4 / containers-storage 1.57
//! (issue 8), compared with what the Go tools of Debian 13 report on the same stores.
//!
//! The stores are made by `tests/trixie/ensure-stores.sh` (a cached Debian 13 chroot built
//! with debootstrap, then `make-stores.sh`): once per test process, under an exclusive
//! `flock` that is then kept shared while the tests read, so that another test process or a
//! CI step cannot remake the stores under them. If the chroot cannot be built (no mirror,
//! not root) every test here fails with the script's messages; nothing is skipped.
//!
//! Every expected value comes from the Go tools run inside the chroot on the same store
//! (`containers-storage`, `podman`, `skopeo`, `umoci`), never from constants.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use composefs_storage::{Storage, StorageConfig};
use serde_json::Value;
use testutil::{sha256_file, sha256_hex};

struct Env {
    scripts: PathBuf,
    work: PathBuf,
    /// The lock of `ensure-stores.sh`, held shared while the tests read the stores.
    _lock: File,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("CSTORAGE_TRIXIE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cstorage-trixie"))
}

fn setup() -> Result<Env, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the modern-store tests must run as root: they build a Debian 13 chroot \
                    (debootstrap) and run podman 5 in it"
                .into(),
        );
    }
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/trixie");
    let scripts = scripts
        .canonicalize()
        .map_err(|e| format!("{}: {e}", scripts.display()))?;
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let lock_path = cache.join(".ensure.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let t0 = std::time::Instant::now();
    let out = Command::new(scripts.join("ensure-stores.sh"))
        .env("CSTORAGE_TRIXIE_LOCK_HELD", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ensure-stores.sh: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = err.lines().rev().take(40).collect();
        return Err(format!(
            "THE TRIXIE CHROOT OR ITS STORES COULD NOT BE BUILT ({}), so the modern-store tests \
             cannot run. Last lines of tests/trixie/ensure-stores.sh:\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    eprintln!(
        "modern: ensure-stores.sh took {:.1} s ({})",
        t0.elapsed().as_secs_f64(),
        err.lines()
            .filter(|l| l.starts_with("ensure-stores:"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // SAFETY: as above; converts the exclusive lock to a shared one.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) } != 0 {
        return Err(format!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(Env {
        scripts,
        work: cache.join("work"),
        _lock: lock,
    })
}

fn env() -> &'static Env {
    static ENV: OnceLock<Result<Env, String>> = OnceLock::new();
    match ENV.get_or_init(setup) {
        Ok(e) => e,
        Err(m) => panic!("{m}"),
    }
}

/// Held by each test while it runs tools in the chroot: the first of a group of running
/// tests mounts the chroot, the last one to finish unmounts it, so a run (also a filtered
/// one) leaves nothing mounted.
struct InChroot;

static RUNNING: Mutex<usize> = Mutex::new(0);

fn trixie_env(arg: &str) -> Output {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/trixie");
    Command::new(scripts.join("trixie-env.sh"))
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

impl InChroot {
    fn new() -> InChroot {
        env();
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        if *n == 0 {
            let o = trixie_env("mount");
            assert!(
                o.status.success(),
                "trixie-env.sh mount failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        *n += 1;
        InChroot
    }
}

impl Drop for InChroot {
    fn drop(&mut self) {
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            let _ = trixie_env("teardown");
        }
    }
}

/// One store written by the trixie tools.
struct Store {
    name: &'static str,
    conf: PathBuf,
    /// Scratch dir for this test's outputs, inside the chroot's bind-mounted work dir.
    out: PathBuf,
}

impl Store {
    fn new(name: &'static str) -> Store {
        let e = env();
        let conf = e.work.join("stores").join(name).join("storage.conf");
        assert!(conf.is_file(), "{} missing", conf.display());
        let out = e.work.join("out").join(name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        Store { name, conf, out }
    }

    /// A command run in the trixie chroot with this store's storage.conf.
    fn go(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env().scripts.join("trixie-env.sh"));
        c.arg("run")
            .args(["env", "PODMAN_IGNORE_CGROUPSV1_WARNING=1"])
            .args(args)
            .env("CONTAINERS_STORAGE_CONF", &self.conf)
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    /// Like [`Store::go`], but the command must succeed; returns its stdout.
    fn go_ok(&self, args: &[&str]) -> Vec<u8> {
        self.ok("trixie", args, self.go(args))
    }

    fn go_json(&self, args: &[&str]) -> Value {
        self.json("trixie", args, self.go_ok(args))
    }

    /// The stdout of `o`, which must have succeeded (`what args` failed otherwise).
    fn ok(&self, what: &str, args: &[&str], o: Output) -> Vec<u8> {
        assert!(
            o.status.success(),
            "[{}] {what} {args:?} failed ({}): {}",
            self.name,
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    }

    /// `b` parsed as JSON (the output of `what args`).
    fn json(&self, what: &str, args: &[&str], b: Vec<u8>) -> Value {
        serde_json::from_slice(&b).unwrap_or_else(|e| {
            panic!(
                "[{}] {what} {args:?}: {e}: {}",
                self.name,
                String::from_utf8_lossy(&b)
            )
        })
    }

    /// `cstorage` with nothing but `CONTAINERS_STORAGE_CONF` to find the store.
    fn cst(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cstorage"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("CONTAINERS_STORAGE_CONF", &self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn cst_ok(&self, args: &[&str]) -> Vec<u8> {
        self.ok("cstorage", args, self.cst(args))
    }

    fn cst_json(&self, args: &[&str]) -> Value {
        self.json("cstorage", args, self.cst_ok(args))
    }

    fn storage(&self) -> Storage {
        let cfg = StorageConfig::from_file(&self.conf).unwrap();
        Storage::open_with_config(&cfg).unwrap()
    }
}

/// Lines of a command's output, sorted (podman sorts images by creation time; its order
/// among equal times is unspecified).
fn sorted_lines(b: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = String::from_utf8_lossy(b)
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// `--format` templates, `--filter` and `df` against podman 5 on the same store: the same
/// output for every template and filter podman users type (times as exact instants: the
/// human "N minutes ago" may tick between the two runs), and the same per-image disk usage.
fn check_podman_formats(st: &Store, errors: &mut Vec<String>) {
    let mut same = |what: &str, ours: Vec<String>, theirs: Vec<String>| {
        if ours != theirs {
            errors.push(format!(
                "[{}] {what}:\n podman:   {theirs:?}\n cstorage: {ours:?}",
                st.name
            ));
        }
    };
    let image_formats = [
        "{{.ID}} {{.Repository}}:{{.Tag}} {{.Digest}} {{.Size}} {{.VirtualSize}}",
        "{{.CreatedAt}}|{{.ReadOnly}}|{{.Dangling}}|{{.Labels}}|{{.Names}}|{{.History}}|{{.Containers}}",
        // (`json` of an empty list or map differs: for an image without names or labels
        // podman has a nil slice or map, `null`, where ours is `[]` or `{}`; see the README.)
        "{{.RepoTags}} {{.RepoDigests}} {{.ParentId}} {{json .Digest}} {{json .Containers}}",
        "table {{.ID}}\t{{.Repository}}\t{{.Tag}}\t{{.Size}}\t{{.Digest}}",
        "{{range .Names}}<{{.}}>{{end}} {{upper .Tag}} {{len .Names}}",
    ];
    for all in [false, true] {
        for f in image_formats {
            let mut args = vec!["images", "--format", f];
            if all {
                args.push("-a");
            }
            let mut p = vec!["podman"];
            p.extend(&args);
            same(
                &format!("images {args:?}"),
                sorted_lines(&st.cst_ok(&args)),
                sorted_lines(&st.go_ok(&p)),
            );
        }
    }
    let ids: Vec<String> = arr(&st.cst_json(&["images", "-a", "--format", "json"]))
        .iter()
        .map(|i| s(&i["id"]))
        .collect();
    let inspect = "{{.Id}}|{{.Digest}}|{{.RepoTags}}|{{.RepoDigests}}|{{.Created}}|{{.Architecture}}|{{.Os}}|{{.Size}}|{{.Labels}}|{{.User}}|{{.NamesHistory}}|{{.ManifestType}}|{{.RootFS.Layers}}|{{.Config.Cmd}}|{{.Config.Env}}|{{.Author}}|{{.Parent}}";
    for id in &ids {
        same(
            &format!("image inspect {id}"),
            sorted_lines(&st.cst_ok(&["image", "inspect", "--format", inspect, id])),
            sorted_lines(&st.go_ok(&["podman", "image", "inspect", "--format", inspect, id])),
        );
    }
    let ps = "{{.ID}}|{{.Names}}|{{.Image}}|{{.ImageID}}|{{.Labels}}";
    same(
        "containers",
        sorted_lines(&st.cst_ok(&["containers", "--format", ps])),
        sorted_lines(&st.go_ok(&["podman", "ps", "-a", "--format", ps])),
    );
    let first = ids.first().cloned().unwrap_or_default();
    let filters: Vec<Vec<String>> = [
        vec!["reference=localhost/*"],
        vec!["reference=test"],
        vec!["reference=*:v1"],
        vec!["reference=localhost/test", "reference=built"],
        vec!["dangling=true"],
        vec!["dangling=false"],
        vec!["intermediate=true"],
        vec!["label=org.opencontainers.image.title"],
        vec!["label=a", "label=b"],
        vec!["readonly=false"],
        vec!["until=1h"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .chain([
        vec![format!("id={}", &first[..first.len().min(8)])],
        vec![format!("since={first}")],
        vec![format!("before={first}")],
    ])
    .collect();
    for fs in &filters {
        for all in [false, true] {
            let mut args: Vec<&str> =
                vec!["images", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"];
            if all {
                args.push("-a");
            }
            for f in fs {
                args.push("--filter");
                args.push(f);
            }
            let mut p = vec!["podman"];
            p.extend(&args);
            same(
                &format!("images {args:?}"),
                sorted_lines(&st.cst_ok(&args)),
                sorted_lines(&st.go_ok(&p)),
            );
        }
    }
    // df: the per-image rows (CREATED left out: a human duration) and the images summary.
    let rows = |b: Vec<u8>| -> Vec<String> {
        let text = String::from_utf8_lossy(&b).into_owned();
        let mut out: Vec<String> = text
            .split("Containers space usage:")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("Images space usage"))
            .map(|l| {
                let cols: Vec<&str> = l
                    .split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect();
                cols.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 3)
                    .map(|(_, c)| *c)
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        out.sort();
        out
    };
    same(
        "df -v images",
        rows(st.cst_ok(&["df", "-v"])),
        rows(st.go_ok(&["podman", "system", "df", "-v"])),
    );
    let images_row = |b: Vec<u8>| -> Vec<String> {
        String::from_utf8_lossy(&b)
            .lines()
            .filter(|l| l.starts_with("Images"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    same(
        "df images summary",
        images_row(st.cst_ok(&["df"])),
        images_row(st.go_ok(&["podman", "system", "df"])),
    );
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {v}"))
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default()
}

/// Every image record, with its names, as `containers-storage images` and `cstorage images
/// --all` list them; and the images `podman images` shows with and without `-a` against
/// `cstorage images` with and without `--all`.
fn check_images(st: &Store, errors: &mut Vec<String>) {
    let go = st.go_json(&["containers-storage", "images", "-j"]);
    let go: BTreeMap<String, BTreeSet<String>> = arr(&go)
        .iter()
        .map(|i| (s(&i["id"]), names(&i["names"])))
        .collect();
    let ours = st.cst_json(&["images", "--all", "--format", "json"]);
    let ours: BTreeMap<String, BTreeSet<String>> = arr(&ours)
        .iter()
        .map(|i| (s(&i["id"]), names(&i["names"])))
        .collect();
    if go != ours {
        errors.push(format!(
            "images --all: containers-storage lists {go:?}, cstorage {ours:?}"
        ));
    }
    assert!(!go.is_empty(), "[{}] the store has no images", st.name);
    for (all, flag) in [(true, Some("-a")), (false, None)] {
        let mut pargs = vec!["podman", "--cgroup-manager=cgroupfs", "images"];
        let mut cargs = vec!["images", "--format", "json"];
        if let Some(f) = flag {
            pargs.push(f);
            cargs.push("--all");
        }
        pargs.extend(["--format", "json", "--no-trunc"]);
        let pod: BTreeSet<String> = arr(&st.go_json(&pargs))
            .iter()
            .map(|i| s(&i["Id"]))
            .collect();
        let ours: BTreeSet<String> = arr(&st.cst_json(&cargs))
            .iter()
            .map(|i| s(&i["id"]))
            .collect();
        if pod != ours {
            errors.push(format!(
                "images (all={all}): podman images shows {pod:?}, cstorage {ours:?}"
            ));
        }
    }
}

/// `image inspect` of every image: its config is the one skopeo reads from the store.
fn check_inspect(st: &Store, errors: &mut Vec<String>) {
    for img in arr(&st.go_json(&["containers-storage", "images", "-j"])) {
        let id = s(&img["id"]);
        let ours = st.cst_json(&["image", "inspect", &id, "--format", "json"]);
        let ours = &arr(&ours)[0];
        let go: Value = serde_json::from_slice(&st.go_ok(&[
            "skopeo",
            "inspect",
            "--raw",
            "--config",
            &format!("containers-storage:{id}"),
        ]))
        .unwrap();
        if ours["config"] != go {
            errors.push(format!(
                "image inspect {id}: config differs from skopeo's\nours {}\ngo   {go}",
                ours["config"]
            ));
        }
        let diff_ids: Vec<String> = arr(&go["rootfs"]["diff_ids"]).iter().map(s).collect();
        let layer_ids: Vec<String> = arr(&ours["layers"])
            .iter()
            .map(|l| s(&l["diff_id"]))
            .collect();
        if diff_ids != layer_ids {
            errors.push(format!(
                "image inspect {id}: layers' DiffIDs {layer_ids:?}, config says {diff_ids:?}"
            ));
        }
    }
}

/// Every layer `containers-storage layers` lists: with a diff-digest, `cstorage layer export`
/// gives that sha256 and the bytes of `containers-storage diff -u`; without one, the layer is
/// reported as not reproducible, with a reason, and a verified export is refused.
fn check_layers(st: &Store, errors: &mut Vec<String>) {
    let go = st.go_json(&["containers-storage", "layers", "-j"]);
    let ours = st.cst_json(&["layers", "--format", "json"]);
    let go_ids: BTreeSet<String> = arr(&go).iter().map(|l| s(&l["id"])).collect();
    let our_ids: BTreeSet<String> = arr(&ours).iter().map(|l| s(&l["id"])).collect();
    if go_ids != our_ids {
        errors.push(format!(
            "layers: containers-storage lists {go_ids:?}, cstorage {our_ids:?}"
        ));
    }
    let mut exported = 0;
    let mut refused = 0;
    for rec in arr(&go) {
        let id = s(&rec["id"]);
        let inspect = st.cst_json(&["layer", "inspect", &id, "--format", "json"]);
        let inspect = &arr(&inspect)[0];
        let ours_tar = st.out.join(format!("{id}.tar"));
        let go_tar = st.out.join(format!("{id}.go.tar"));
        if let Some(dd) = rec["diff-digest"].as_str().filter(|d| !d.is_empty()) {
            if inspect["reproducible"] != Value::Bool(true) {
                errors.push(format!(
                    "layer {id} has a diff-digest but is reported as {}: {}",
                    inspect["reproducible"], inspect["not_reproducible_reason"]
                ));
            }
            let o = st.cst(&[
                "layer",
                "export",
                &id,
                "--verify",
                "digest",
                "-o",
                ours_tar.to_str().unwrap(),
            ]);
            if !o.status.success() {
                errors.push(format!(
                    "layer export {id} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ));
                continue;
            }
            let got = format!("sha256:{}", sha256_file(&ours_tar));
            if got != dd {
                errors.push(format!("layer export {id}: sha256 {got}, diff-digest {dd}"));
            }
            st.go_ok(&[
                "sh",
                "-c",
                &format!(
                    "containers-storage diff -u {id} > {}",
                    go_tar.to_str().unwrap()
                ),
            ]);
            if std::fs::read(&go_tar).unwrap() != std::fs::read(&ours_tar).unwrap() {
                errors.push(format!(
                    "layer export {id}: bytes differ from containers-storage diff -u \
                     ({} vs {})",
                    ours_tar.display(),
                    go_tar.display()
                ));
            }
            exported += 1;
        } else {
            let reason = s(&inspect["not_reproducible_reason"]);
            if inspect["reproducible"] != Value::Bool(false) || reason.is_empty() {
                errors.push(format!(
                    "layer {id} has no diff-digest but inspect says reproducible={} reason={reason:?}",
                    inspect["reproducible"]
                ));
            }
            if let Some(want) = rec["flags"]["expected-layer-diffid"].as_str()
                && s(&inspect["expected_diff_id"]) != want
            {
                errors.push(format!(
                    "layer {id}: expected DiffID {} reported, the record says {want}",
                    inspect["expected_diff_id"]
                ));
            }
            let o = st.cst(&[
                "layer",
                "export",
                &id,
                "--verify",
                "digest",
                "-o",
                ours_tar.to_str().unwrap(),
            ]);
            let err = String::from_utf8_lossy(&o.stderr);
            if o.status.success() || !err.contains(&reason) {
                errors.push(format!(
                    "layer export --verify digest of {id} (no diff-digest) must fail with the \
                     reason {reason:?}; status {}, stderr {err}",
                    o.status
                ));
            }
            if ours_tar.exists() {
                errors.push(format!(
                    "a refused export of {id} left {}",
                    ours_tar.display()
                ));
            }
            if rec["toc-digest"].is_string() {
                // Known by its TOC only: refused whatever the verification asked for.
                let o = st.cst(&[
                    "layer",
                    "export",
                    &id,
                    "--verify",
                    "none",
                    "-o",
                    ours_tar.to_str().unwrap(),
                ]);
                if o.status.success() || ours_tar.exists() {
                    errors.push(format!(
                        "layer export --verify none of the TOC-only layer {id} must be refused"
                    ));
                }
                let o = st.cst(&["layer", "ls", &id]);
                if o.status.success() || !String::from_utf8_lossy(&o.stderr).contains(&reason) {
                    errors.push(format!(
                        "layer ls of the TOC-only layer {id} must fail with the reason: {}",
                        String::from_utf8_lossy(&o.stderr)
                    ));
                }
            }
            refused += 1;
        }
    }
    assert!(exported + refused > 0, "[{}] no layers", st.name);
}

/// A store whose layers are known by their TOC only: `verify --all` fails, naming each layer
/// and why; `image export` refuses rather than write layers that are not the originals.
fn check_toc_only_refusals(st: &Store, errors: &mut Vec<String>) {
    let go = st.go_json(&["containers-storage", "layers", "-j"]);
    let toc_only: Vec<String> = arr(&go)
        .iter()
        .filter(|l| l["toc-digest"].is_string() && l["diff-digest"].is_null())
        .map(|l| s(&l["id"]))
        .collect();
    assert!(!toc_only.is_empty(), "[{}] no TOC-only layers", st.name);
    let o = st.cst(&["verify", "--all"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if o.status.code() != Some(1) {
        errors.push(format!(
            "verify --all must exit 1 here: {}: {text}",
            o.status
        ));
    }
    for id in &toc_only {
        // verify's table shows 12-character IDs.
        if !text.contains(&id[..12]) {
            errors.push(format!(
                "verify --all does not name the TOC-only layer {id}: {text}"
            ));
        }
    }
    if !text.contains("table of contents") {
        errors.push(format!("verify --all gives no reason: {text}"));
    }
    for img in arr(&st.cst_json(&["images", "--all", "--format", "json"])) {
        let id = s(&img["id"]);
        let dir = st.out.join(format!("oci-{}", &id[..12]));
        let o = st.cst(&["image", "export", &id, "-o", dir.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.success() || !err.contains("table of contents") {
            errors.push(format!(
                "image export of {id} (TOC-only layers) must be refused with the reason: {}: {err}",
                o.status
            ));
        }
        if dir.join("index.json").exists() {
            errors.push(format!("a refused image export left {}", dir.display()));
        }
    }
}

fn check_verify(st: &Store, errors: &mut Vec<String>) {
    let o = st.cst(&["verify", "--all"]);
    if !o.status.success() {
        errors.push(format!(
            "verify --all failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
}

/// `verify --metadata --all`: every layer with tar-split compared, no difference. Then
/// `podman system check` (podman 5.4) on the same store: each complaint it makes must be one
/// of its known false positives (see docs/format-findings.md), on a layer we find intact.
fn check_metadata(st: &Store, errors: &mut Vec<String>) {
    // (Exit status 1 on the toconly store: its layers have no tar-split to rebuild.)
    let args = ["--format", "json", "verify", "--metadata", "--all"];
    let v = st.json("cstorage", &args, st.cst(&args).stdout);
    let mut intact = BTreeSet::new();
    let mut not_compared = BTreeSet::new();
    for c in arr(&v) {
        let subject = s(&c["subject"]);
        let Some(layer) = subject
            .strip_prefix("layer ")
            .and_then(|r| r.strip_suffix(" metadata"))
        else {
            continue;
        };
        if c["ok"] != true {
            errors.push(format!("verify --metadata: {subject}: {}", s(&c["detail"])));
        } else if s(&c["detail"]).starts_with("not compared") {
            not_compared.insert(layer.to_string());
        } else {
            intact.insert(layer.to_string());
        }
    }
    if intact.is_empty() && !matches!(st.name, "composefs" | "toconly") {
        errors.push("verify --metadata compared no layer".into());
    }
    let o = st.go(&["podman", "system", "check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Partial pulls create the directories a tar only implies with mode 0000
    // (docs/format-findings.md): the tar says nothing of them, the check expects the lower
    // layer's mode to show through.
    let partial = st.name == "chunked";
    let mut false_positives = BTreeSet::new();
    let mut unchecked = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("* layer ") else {
            continue;
        };
        let Some((layer, what)) = rest.split_once(": ") else {
            continue;
        };
        let short = format!("{}: {what}", &layer[..12.min(layer.len())]);
        // Times: c/storage's check compares mtimes, which extraction does not keep for
        // directories it creates for deeper entries, nor partial pulls for symlinks and
        // directories; the tar's times are not what is on disk, so verify --metadata does
        // not compare them.
        let explained = what
            .strip_suffix(", layer content modified")
            .is_some_and(|w| {
                w.split_once('(').is_some_and(|(_, attrs)| {
                    attrs.trim_end_matches(')').split(',').all(|a| {
                        a.starts_with("mtime:")
                            || (partial && a.starts_with("mode:") && a.ends_with("0000"))
                    })
                })
            });
        if explained && intact.contains(layer) {
            false_positives.insert(short);
        } else if not_compared.contains(layer) || matches!(st.name, "composefs" | "toconly") {
            // composefs keeps files by digest and TOC-only layers have no tar-split: we do
            // not compare their metadata (their merged views are checked in check_rootfs).
            unchecked.insert(short);
        } else {
            errors.push(format!(
                "podman system check reports something verify --metadata does not: layer {layer}: {what}"
            ));
        }
    }
    eprintln!(
        "modern: {}: podman system check false positives ({}): {:#?}\n\
         on layers verify --metadata does not compare ({}): {:#?}",
        st.name,
        false_positives.len(),
        false_positives,
        unchecked.len(),
        unchecked
    );
}

/// `image export` of every image, read back by trixie's skopeo: the copy checks every blob's
/// digest, the config is the store's, and the layers are the DiffIDs.
fn check_image_export(st: &Store, errors: &mut Vec<String>) {
    for img in arr(&st.cst_json(&["images", "--all", "--format", "json"])) {
        let id = s(&img["id"]);
        let dir = st.out.join(format!("oci-{}", &id[..12]));
        let o = st.cst(&[
            "image",
            "export",
            &id,
            "-o",
            dir.to_str().unwrap(),
            "--format",
            "oci",
        ]);
        if !o.status.success() {
            errors.push(format!(
                "image export {id}: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
            continue;
        }
        let src = format!("oci:{}", dir.display());
        let copy = st.out.join(format!("readback-{}", &id[..12]));
        let c = st.go(&[
            "skopeo",
            "copy",
            "--quiet",
            &src,
            &format!("dir:{}", copy.display()),
        ]);
        if !c.status.success() {
            errors.push(format!(
                "skopeo copy of the export of {id}: {}",
                String::from_utf8_lossy(&c.stderr)
            ));
            continue;
        }
        let cfg = st.go_ok(&["skopeo", "inspect", "--raw", "--config", &src]);
        let store_cfg = st.go_ok(&[
            "skopeo",
            "inspect",
            "--raw",
            "--config",
            &format!("containers-storage:{id}"),
        ]);
        if cfg != store_cfg {
            errors.push(format!(
                "image export {id}: config read back differs from the store's"
            ));
        }
        let man: Value =
            serde_json::from_slice(&st.go_ok(&["skopeo", "inspect", "--raw", &src])).unwrap();
        let cfg: Value = serde_json::from_slice(&cfg).unwrap();
        let layers: Vec<String> = arr(&man["layers"])
            .iter()
            .map(|l| s(&l["digest"]))
            .collect();
        let diff_ids: Vec<String> = arr(&cfg["rootfs"]["diff_ids"]).iter().map(s).collect();
        if layers != diff_ids {
            errors.push(format!(
                "image export {id}: layer blobs {layers:?}, DiffIDs {diff_ids:?}"
            ));
        }
    }
}

/// What is compared of a file in the merged tree.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Size and sha256 of regular files; target of symlinks; "MAJOR,MINOR" of devices.
    content: String,
    /// Modification time of non-directories (directories' change when entries are added).
    mtime: Option<i64>,
}

fn walk_host(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let (kind, content) = if ft.is_dir() {
            ("dir", String::new())
        } else if ft.is_symlink() {
            (
                "symlink",
                std::fs::read_link(&p).unwrap().display().to_string(),
            )
        } else if ft.is_file() {
            let b = std::fs::read(&p).unwrap();
            ("file", format!("{} {}", b.len(), sha256_hex(&b)))
        } else if ft.is_char_device() || ft.is_block_device() {
            let r = md.rdev();
            (
                if ft.is_char_device() { "char" } else { "block" },
                format!("{},{}", libc::major(r), libc::minor(r)),
            )
        } else if ft.is_fifo() {
            ("fifo", String::new())
        } else {
            ("socket", String::new())
        };
        let rel = Path::new("/").join(p.strip_prefix(root).unwrap());
        out.insert(
            rel,
            Node {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                content,
                mtime: (kind != "dir").then_some(md.mtime()),
            },
        );
        if ft.is_dir() {
            walk_host(root, &p, out);
        }
    }
}

/// The merged view as [`Node`]s, and the layer (0 = base) each path comes from.
fn walk_ours(
    storage: &Storage,
    image: &str,
) -> (BTreeMap<PathBuf, Node>, BTreeMap<PathBuf, usize>) {
    let img = storage.find_image(image).unwrap();
    let fs = img.rootfs().unwrap();
    let mut out = BTreeMap::new();
    let mut layers = BTreeMap::new();
    for e in fs.walk() {
        let e = e.unwrap();
        if e.path == Path::new("/") {
            continue;
        }
        let md = &e.metadata;
        let kind = md.kind.name();
        let content = match kind {
            "file" => {
                let mut b = Vec::new();
                fs.open(&e.path).unwrap().read_to_end(&mut b).unwrap();
                format!("{} {}", b.len(), sha256_hex(&b))
            }
            "symlink" => md.symlink_target.as_ref().unwrap().display().to_string(),
            "char" | "block" => format!("{},{}", md.rdev_major, md.rdev_minor),
            _ => String::new(),
        };
        layers.insert(e.path.clone(), md.layer);
        out.insert(
            e.path.clone(),
            Node {
                kind,
                mode: md.mode,
                uid: md.uid,
                gid: md.gid,
                content,
                mtime: (kind != "dir").then_some(md.mtime),
            },
        );
    }
    (out, layers)
}

/// For an image with partially pulled layers stored as directories (zstd:chunked without
/// composefs): for each layer (0 = base), every path its tar lists, with the tar's
/// modification time.
fn partial_pull_tar_entries(storage: &Storage, image: &str) -> Option<Vec<BTreeMap<PathBuf, i64>>> {
    let layers = storage.find_image(image).unwrap().layers().unwrap();
    if !layers
        .iter()
        .any(|l| l.toc_digest().is_some() && !l.is_flat().unwrap())
    {
        return None;
    }
    let mut out = Vec::new();
    for l in layers {
        let mut m = BTreeMap::new();
        let mut add = |p: &str, mtime: i64| {
            let p = p.trim_start_matches("./").trim_end_matches('/');
            m.insert(Path::new("/").join(p), mtime);
        };
        if l.has_tar_split().unwrap() {
            for h in l.entries().unwrap() {
                let h = h.unwrap();
                add(&h.path_lossy(), h.mtime);
            }
        } else {
            // Known by its TOC only: the TOC lists the tar's entries.
            let toc: Value =
                serde_json::from_slice(&l.read_big_data("zstd-chunked-manifest").unwrap()).unwrap();
            for e in arr(&toc["entries"]) {
                let t = chrono_free_secs(&s(&e["modtime"]));
                add(&s(&e["name"]), t);
            }
        }
        out.push(m);
    }
    Some(out)
}

/// Seconds since the epoch of a UTC RFC 3339 time `YYYY-MM-DDTHH:MM:SS[.frac]Z` (as the TOCs
/// write it), without a date library; -1 for anything else.
fn chrono_free_secs(t: &str) -> i64 {
    let n = |a: usize, b: usize| t.get(a..b).and_then(|x| x.parse::<i64>().ok());
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(se)) =
        (n(0, 4), n(5, 7), n(8, 10), n(11, 13), n(14, 16), n(17, 19))
    else {
        return -1;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + h * 3600 + mi * 60 + se
}

/// The two ways c/storage 1.57's partial pull (zstd:chunked into a directory) writes a layer
/// differently from its tar, which the merged view shows as they are on disk (they are what a
/// container of the image sees): symlinks get the time of the pull instead of the tar's
/// mtime, and directories the tar only implies (no entry of their own) get mode 0000, which
/// in the merged tree hides the mode of that directory in lower layers. Only those, and only
/// where the tar of the layer the path comes from says so, are accepted.
fn partial_pull_deviation(
    tars: Option<&Vec<BTreeMap<PathBuf, i64>>>,
    layer: Option<&usize>,
    p: &Path,
    umoci: &Node,
    ours: &Node,
) -> bool {
    let Some(tar) = tars.zip(layer).and_then(|(t, &l)| t.get(l)) else {
        return false;
    };
    let same_but = |mtime: bool, mode: bool| {
        umoci.kind == ours.kind
            && (mode || umoci.mode == ours.mode)
            && umoci.uid == ours.uid
            && umoci.gid == ours.gid
            && umoci.content == ours.content
            && (mtime || umoci.mtime == ours.mtime)
    };
    match umoci.kind {
        "symlink" => same_but(true, false) && tar.get(p) == umoci.mtime.as_ref(),
        "dir" => same_but(false, true) && !tar.contains_key(p) && ours.mode == 0,
        _ => false,
    }
}

/// The merged view of every image (intermediate and dangling ones too) against `umoci unpack`
/// of its source: the OCI layout the stores were made from, or (for images built in the
/// store) the image as skopeo copies it out of the store.
fn check_rootfs(st: &Store, errors: &mut Vec<String>) {
    let e = env();
    let layout = e.work.join("oci/test");
    let layout_cfg: Value = serde_json::from_slice(&st.go_ok(&[
        "skopeo",
        "inspect",
        "--raw",
        "--config",
        &format!("oci:{}:v1", layout.display()),
    ]))
    .unwrap();
    let storage = st.storage();
    for img in arr(&st.cst_json(&["images", "--all", "--format", "json"])) {
        let id = s(&img["id"]);
        let cfg: Value = serde_json::from_slice(&st.go_ok(&[
            "skopeo",
            "inspect",
            "--raw",
            "--config",
            &format!("containers-storage:{id}"),
        ]))
        .unwrap();
        // The eStargz copy of the layout has the same files (plus the stargz.index.json entry,
        // which is the TOC and not extracted): compare it with the layout too.
        let estargz_ids = std::fs::read(e.work.join("oci/estargz.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| v["diff_ids"].clone());
        let source =
            if cfg == layout_cfg || Some(&cfg["rootfs"]["diff_ids"]) == estargz_ids.as_ref() {
                format!("{}:v1", layout.display())
            } else {
                let d = st.out.join(format!("src-{}", &id[..12]));
                st.go_ok(&[
                    "skopeo",
                    "copy",
                    "--quiet",
                    &format!("containers-storage:{id}"),
                    &format!("oci:{}:src", d.display()),
                ]);
                format!("{}:src", d.display())
            };
        let bundle = st.out.join(format!("umoci-{}", &id[..12]));
        st.go_ok(&[
            "umoci",
            "unpack",
            "--image",
            &source,
            bundle.to_str().unwrap(),
        ]);
        let root = bundle.join("rootfs");
        let mut theirs = BTreeMap::new();
        walk_host(&root, &root, &mut theirs);
        let (ours, our_layers) = walk_ours(&storage, &id);
        let tar = partial_pull_tar_entries(&storage, &id);
        let mut diffs = Vec::new();
        let mut writer_deviations = Vec::new();
        for p in theirs.keys().chain(ours.keys()).collect::<BTreeSet<_>>() {
            match (theirs.get(p), ours.get(p)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b))
                    if partial_pull_deviation(tar.as_ref(), our_layers.get(p), p, a, b) =>
                {
                    writer_deviations.push(p.display().to_string())
                }
                (a, b) => diffs.push(format!("{}: umoci {a:?}, ours {b:?}", p.display())),
            }
        }
        if !writer_deviations.is_empty() {
            eprintln!(
                "modern: {}: {id}: on disk as c/storage's partial pull wrote it, not as in the \
                 tar: {writer_deviations:?}",
                st.name
            );
        }
        if !diffs.is_empty() {
            errors.push(format!(
                "rootfs of {id} differs from umoci unpack of {source} in {} paths:\n  {}",
                diffs.len(),
                diffs.into_iter().take(20).collect::<Vec<_>>().join("\n  ")
            ));
        }
        assert!(theirs.len() > 10, "umoci unpacked almost nothing");
        // `cstorage unpack` writes umoci's tree (where c/storage's partial pull wrote a path
        // otherwise than the tar says, the merged view's).
        let dir = st.out.join(format!("unpack-{}", &id[..12]));
        st.cst_ok(&["unpack", &id, dir.to_str().unwrap()]);
        let mut unpacked = BTreeMap::new();
        walk_host(&dir, &dir, &mut unpacked);
        for p in theirs
            .keys()
            .chain(unpacked.keys())
            .collect::<BTreeSet<_>>()
        {
            let want = if writer_deviations.contains(&p.display().to_string()) {
                ours.get(p)
            } else {
                theirs.get(p)
            };
            if want != unpacked.get(p) {
                errors.push(format!(
                    "cstorage unpack {id}: {}: umoci {want:?}, unpacked {:?}",
                    p.display(),
                    unpacked.get(p)
                ));
            }
        }
        // The same tree through the command line: `ls -R` names and `cat` contents.
        let listed: BTreeSet<PathBuf> = String::from_utf8(st.cst_ok(&["ls", &id, "/", "-R"]))
            .unwrap()
            .lines()
            .filter(|l| *l != "/")
            .map(PathBuf::from)
            .collect();
        let want: BTreeSet<PathBuf> = theirs.keys().cloned().collect();
        if listed != want {
            errors.push(format!(
                "cstorage ls {id} / -R: {} paths, umoci {}; only ours {:?}, only umoci {:?}",
                listed.len(),
                want.len(),
                listed.difference(&want).collect::<Vec<_>>(),
                want.difference(&listed).collect::<Vec<_>>()
            ));
        }
        for (p, n) in theirs.iter().filter(|(_, n)| n.kind == "file") {
            let b = st.cst_ok(&["cat", &id, p.to_str().unwrap()]);
            if format!("{} {}", b.len(), sha256_hex(&b)) != n.content {
                errors.push(format!(
                    "cstorage cat {id} {}: other bytes than umoci's",
                    p.display()
                ));
            }
        }
    }
}

fn run_store(name: &'static str, checks: &[fn(&Store, &mut Vec<String>)]) {
    let _c = InChroot::new();
    let st = Store::new(name);
    let t0 = std::time::Instant::now();
    let mut errors = Vec::new();
    for c in checks {
        c(&st, &mut errors);
    }
    eprintln!(
        "modern: store {name} checked in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        errors.is_empty(),
        "store {name} ({}):\n- {}",
        st.conf.display(),
        errors.join("\n- ")
    );
}

const ALL: [fn(&Store, &mut Vec<String>); 8] = [
    check_images,
    check_inspect,
    check_layers,
    check_verify,
    check_metadata,
    check_image_export,
    check_rootfs,
    check_podman_formats,
];

#[test]
fn plain() {
    run_store("plain", &ALL);
}

#[test]
fn chunked() {
    run_store("chunked", &ALL);
}

#[test]
fn composefs() {
    run_store("composefs", &ALL);
}

/// eStargz layers pulled partially with `insecure_allow_unpredictable_image_contents`: no
/// tar-split and no diff-digest, only the TOC digest and c/image's expected DiffID.
#[test]
fn toconly() {
    run_store(
        "toconly",
        &[
            check_images,
            check_inspect,
            check_layers,
            check_toc_only_refusals,
            check_metadata,
            check_rootfs,
        ],
    );
}

#[test]
fn imagestore() {
    run_store("imagestore", &ALL);
}

#[test]
fn transient() {
    run_store("transient", &ALL);
}

#[test]
fn built() {
    run_store("built", &ALL);
}

/// A copy of the plain store, damaged in six ways: `verify --metadata` reports exactly those;
/// `podman system check` (5.4) on the same copy misses the changed symlink target and the
/// removed xattr (it compares neither) and the chmod in the layer that also lost a file (it
/// stops at a layer whose tar it cannot rebuild), and adds its directory-mtime false
/// positives.
#[test]
fn damaged_copy_against_podman_system_check() {
    let _c = InChroot::new();
    // Its own output directory: the `plain` test may be using plain's.
    let dir = env().work.join("out").join("plain-damaged");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src_root = env().work.join("stores/plain/root");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&src_root)
        .arg(dir.join("root"))
        .status()
        .unwrap();
    assert!(ok.success());
    let conf = dir.join("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\n\
             [storage.options.overlay]\nmountopt = \"nodev\"\nskip_mount_home = \"true\"\n",
            dir.join("root").display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    let st = Store {
        name: "plain-damaged",
        conf,
        out: dir.clone(),
    };
    // The layers holding the files to damage.
    let overlay = dir.join("root/overlay");
    let find = |rel: &str| -> (String, PathBuf) {
        for e in std::fs::read_dir(&overlay).unwrap() {
            let e = e.unwrap();
            let d = e.path().join("diff");
            if d.join(rel).symlink_metadata().is_ok() {
                return (e.file_name().to_string_lossy().to_string(), d);
            }
        }
        panic!("no layer has {rel}")
    };
    let (top, dtop) = find("usr/share/doc/readme.txt");
    let (mid, dmid) = find("etc/hello");
    let sh = |args: &[&str]| {
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let p = |d: &Path, r: &str| d.join(r).to_str().unwrap().to_string();
    sh(&["chmod", "4777", &p(&dtop, "usr/share/doc/readme.txt")]);
    sh(&["ln", "-sfn", "/etc/shadow", &p(&dtop, "usr/share/doc/link")]);
    sh(&["rm", &p(&dtop, "usr/share/doc/run.sh")]);
    sh(&[
        "sh",
        "-c",
        &format!("echo planted > {}", p(&dmid, "etc/extra")),
    ]);
    sh(&["chown", "1234:1234", &p(&dmid, "etc/hello")]);
    sh(&["setfattr", "-x", "user.test", &p(&dmid, "etc/xattr-file")]);

    let args = ["--format", "json", "verify", "--metadata", "--all"];
    let v = st.json("cstorage", &args, st.cst(&args).stdout);
    let mut ours = BTreeSet::new();
    for c in arr(&v) {
        for d in c["differences"].as_array().into_iter().flatten() {
            let layer = s(&c["subject"]).split(' ').nth(1).unwrap().to_string();
            ours.insert(format!(
                "{} {} {}",
                &layer[..12],
                s(&d["path"]),
                s(&d["kind"])
            ));
        }
    }
    let want: BTreeSet<String> = [
        (&top, "usr/share/doc/readme.txt", "mode"),
        (&top, "usr/share/doc/link", "symlink-target"),
        (&top, "usr/share/doc/run.sh", "missing"),
        (&mid, "etc/extra", "extra"),
        (&mid, "etc/hello", "owner"),
        (&mid, "etc/xattr-file", "xattr"),
    ]
    .iter()
    .map(|(l, p, k)| format!("{} {p} {k}", &l[..12]))
    .collect();
    assert_eq!(ours, want, "{v:#}");

    let o = st.go(&["podman", "system", "check"]);
    let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success(),
        "podman system check finds the damage: {text}"
    );
    let said = |layer: &str, what: &str| {
        text.lines()
            .any(|l| l.contains(&format!("layer {layer}: ")) && l.contains(what))
    };
    // What both see: the missing file (podman: as a failure to rebuild the layer's tar),
    // the extra file, the owner.
    assert!(said(&top, "usr/share/doc/run.sh: no such file"), "{text}");
    assert!(said(&mid, "+/etc/extra"), "{text}");
    assert!(said(&mid, "/etc/hello(uid:0"), "{text}");
    // What only verify --metadata sees: podman compares neither symlink targets nor
    // xattrs, and stops at a layer whose tar it cannot rebuild, so the chmod beside the
    // missing file goes unreported.
    assert!(!text.contains("/usr/share/doc/link("), "{text}");
    assert!(!text.contains("xattr-file"), "{text}");
    assert!(!text.contains("readme.txt("), "{text}");
    eprintln!("modern: podman system check on the damaged copy:\n{text}");
}

/// Makes two generated tars comparable across c/storage versions: blanks the time of `.wh.`
/// entries (c/storage writes deletions found by its naive diff with the time of the export),
/// keeps only the permission bits of the mode field and drops owner names (c/storage before
/// 1.48 put the file type bits in the mode field, before 1.53 it looked owner names up; the
/// generated tar follows the 1.43 of `metacopy.rs`'s oracle), and blanks the checksum.
fn normalize_generated(tar: &mut [u8]) {
    let mut off = 0;
    while off + 512 <= tar.len() {
        let h = &mut tar[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let octal = |f: &[u8]| {
            u64::from_str_radix(
                String::from_utf8_lossy(f).trim_matches(|c: char| c == '\0' || c == ' '),
                8,
            )
            .unwrap_or(0)
        };
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let base = h[..name_end]
            .rsplit(|&c| c == b'/')
            .next()
            .unwrap()
            .to_vec();
        let size = octal(&h[124..136]);
        let mode = octal(&h[100..108]) & 0o7777;
        h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
        h[265..329].fill(0);
        h[148..156].fill(b'#');
        if base.starts_with(b".wh.") {
            h[136..148].fill(b'#');
        }
        off += 512 + size.div_ceil(512) as usize * 512;
    }
}

/// A container of a podman 5 store mounted with `metacopy=on`, changed through `podman
/// mount` (chmod, chown, a renamed directory, a renamed file, a deletion, a new file): its
/// layer export equals trixie's `containers-storage diff -u` (c/storage 1.57's naive diff)
/// but for the deletions' times and the two header fields 1.57 fills differently from 1.43
/// (file type bits in the mode field, owner names): the same entries, in the same order,
/// with the same contents and otherwise the same header bytes.
#[test]
fn metacopy_container_layer_matches_podman5_diff() {
    if !Path::new("/sys/module/overlay/parameters/metacopy").exists() {
        eprintln!("skipped: this kernel's overlay has no metacopy");
        return;
    }
    let _c = InChroot::new();
    let dir = env().work.join("out").join("metacopy5");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("base/bin")).unwrap();
    std::fs::create_dir_all(dir.join("base/etc")).unwrap();
    std::fs::create_dir_all(dir.join("base/dir/sub")).unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("base/bin/prog"), &big).unwrap();
    std::fs::write(dir.join("base/etc/conf"), b"conf\n").unwrap();
    std::fs::write(dir.join("base/etc/other"), b"other\n").unwrap();
    std::fs::write(dir.join("base/dir/g"), b"g content\n").unwrap();
    std::fs::write(dir.join("base/dir/sub/f"), b"deep\n").unwrap();
    let tar = dir.join("base.tar");
    let ok = Command::new("tar")
        .args(["--owner=0", "--group=0", "--mtime=@1700000000", "-C"])
        .arg(dir.join("base"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let conf = dir.join("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\n\
             [storage.options.overlay]\nmountopt = \"nodev,metacopy=on\"\nskip_mount_home = \"true\"\n",
            dir.join("root").display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    let st = Store {
        name: "metacopy5",
        conf,
        out: dir.clone(),
    };
    st.go_ok(&[
        "podman",
        "import",
        "-q",
        tar.to_str().unwrap(),
        "localhost/base:latest",
    ]);
    let ctr = String::from_utf8(st.go_ok(&[
        "podman",
        "create",
        "--cgroup-manager=cgroupfs",
        "localhost/base:latest",
        "/bin/prog",
    ]))
    .unwrap()
    .trim()
    .to_string();
    let m = String::from_utf8(st.go_ok(&["podman", "mount", &ctr]))
        .unwrap()
        .trim()
        .to_string();
    st.go_ok(&[
        "sh",
        "-c",
        &format!(
            "set -e; cd {m}; chmod 4777 bin/prog; chown 1:2 etc/conf; mv dir dir2; \
             chmod 600 dir2/g; rm etc/other; echo new > etc/new"
        ),
    ]);
    st.go_ok(&["podman", "umount", &ctr]);
    let upper = String::from_utf8(st.go_ok(&[
        "podman",
        "inspect",
        "-f",
        "{{.GraphDriver.Data.UpperDir}}",
        &ctr,
    ]))
    .unwrap();
    let layer = Path::new(upper.trim())
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let diff = dir.join("root/overlay").join(&layer).join("diff");
    let has = |p: &str, x: &str| {
        Command::new("getfattr")
            .args(["-h", "-n", x])
            .arg(diff.join(p))
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(has("bin/prog", "trusted.overlay.metacopy"));
    assert!(has("dir2", "trusted.overlay.redirect"));
    let mut go = st.go_ok(&["containers-storage", "diff", "-u", &layer]);
    let mut ours = st.cst_ok(&["layer", "export", &layer]);
    assert!(ours.windows(big.len()).any(|w| w == big.as_slice()));
    normalize_generated(&mut go);
    normalize_generated(&mut ours);
    assert!(
        ours == go,
        "layer export differs from trixie's containers-storage diff -u ({} vs {} bytes)",
        ours.len(),
        go.len()
    );
    let _ = st.go(&["podman", "rm", "-f", &ctr]);
}

/// The stores' paths come from their storage.conf alone: `cstorage info` reports the
/// configuration file, graph root, run root, driver, transient flag and counts that `podman
/// info` reports.
#[test]
fn discovery_matches_podman_info() {
    let _c = InChroot::new();
    let mut errors = Vec::new();
    for name in [
        "plain",
        "chunked",
        "composefs",
        "toconly",
        "imagestore",
        "transient",
        "built",
    ] {
        let e = env();
        let st = Store {
            name,
            conf: e.work.join("stores").join(name).join("storage.conf"),
            out: e.work.join("out").join(name),
        };
        let pod = st.go_json(&[
            "podman",
            "--cgroup-manager=cgroupfs",
            "info",
            "--format",
            "json",
        ]);
        let ours = st.cst_json(&["info", "--format", "json"]);
        let ps = &pod["store"];
        let pairs = [
            ("graphroot", s(&ps["graphRoot"]), s(&ours["graphroot"])),
            ("runroot", s(&ps["runRoot"]), s(&ours["runroot"])),
            ("driver", s(&ps["graphDriverName"]), s(&ours["driver"])),
            ("config_file", s(&ps["configFile"]), s(&ours["config_file"])),
            (
                "containers",
                ps["containerStore"]["number"].to_string(),
                ours["containers"].to_string(),
            ),
            (
                "transient_store",
                ps["transientStore"].to_string(),
                ours["transient_store"].to_string(),
            ),
            (
                "images",
                ps["imageStore"]["number"].to_string(),
                ours["images"].to_string(),
            ),
        ];
        for (what, p, o) in pairs {
            if p != o {
                errors.push(format!("{name}: {what}: podman info {p:?}, cstorage {o:?}"));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
