//! A rootless user reads their own rootless store: the store is written by `skopeo copy` run as
//! the unprivileged user `cstorage-rl` (created by `scripts/rootless-user.sh`, which
//! `scripts/install-deps.sh` runs), with a fresh podman-default setup (no storage.conf, only
//! `HOME` and `XDG_RUNTIME_DIR`), and `cstorage` is run as that user with no store flags.
//!
//! The layers hold files owned by container users with modes 0600, 0700 and 0000, which the
//! user cannot open outside the user namespace: those must come through the helper, and only
//! those.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use testutil::rootless::{RootlessStore, USER};
use testutil::{run, sha256_file, sha256_hex};

/// The rootless store and `cstorage` installed where the user can run it.
struct Fixture {
    store: RootlessStore,
    bin: PathBuf,
}

impl std::ops::Deref for Fixture {
    type Target = RootlessStore;
    fn deref(&self) -> &RootlessStore {
        &self.store
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let store = RootlessStore::new("cst-rl");
        let bin = store.install(Path::new(env!("CARGO_BIN_EXE_cstorage")), "cstorage");
        Fixture { store, bin }
    })
}

impl Fixture {
    fn cstorage(&self) -> Command {
        self.as_user(self.bin.to_str().unwrap())
    }

    fn layers(&self) -> Vec<Value> {
        let out = run(self.cstorage().args(["--format", "json", "layers"]));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The layer whose DiffID is `diff_id`.
    fn layer_id(&self, diff_id: &str) -> String {
        self.layers()
            .into_iter()
            .find(|l| l["diff_digest"] == diff_id)
            .unwrap_or_else(|| panic!("no layer with diff-digest {diff_id}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Of `paths`, those the test user cannot open directly (EACCES), asked of the kernel.
    fn denied_to_user(&self, paths: &[PathBuf]) -> BTreeSet<PathBuf> {
        let script = r#"
import os, sys
for p in sys.stdin.read().split("\0"):
    if not p: continue
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
    try:
        if os.path.isdir(p) and not os.path.islink(p): flags |= os.O_DIRECTORY
    except PermissionError: pass
    try: os.close(os.open(p, flags))
    except PermissionError: print(p)
    except OSError: pass
"#;
        let mut input = Vec::new();
        for p in paths {
            input.extend_from_slice(p.as_os_str().as_encoded_bytes());
            input.push(0);
        }
        let out = pipe_in(self.as_user("python3").args(["-c", script]), &input);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(PathBuf::from)
            .collect()
    }
}

fn pipe_in(c: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every path below `dir`, as root sees it.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), out);
        }
    }
}

/// The paths logged as opened through the helper, and whether it was started.
fn helper_log(stderr: &[u8]) -> (bool, BTreeSet<PathBuf>) {
    let s = String::from_utf8_lossy(stderr);
    let started = s.contains("started the user-namespace helper");
    let opened = s
        .lines()
        .filter_map(|l| {
            l.split_once("userns helper opened ")
                .map(|(_, p)| PathBuf::from(p))
        })
        .collect();
    (started, opened)
}

#[test]
fn finds_the_store_with_no_flags_and_lists_it_like_podman() {
    let f = fixture();
    let info = String::from_utf8(run(f.cstorage().arg("info")).stdout).unwrap();
    assert!(info.contains("rootless: true"), "{info}");
    let images: Vec<Value> =
        serde_json::from_slice(&run(f.cstorage().args(["--format", "json", "images"])).stdout)
            .unwrap();
    let mut ours: Vec<String> = images
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    ours.sort();
    // podman, as the same user, in its own user namespace.
    let out = run(f.as_user("podman").args(["images", "-q", "--no-trunc"]));
    let mut theirs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("sha256:").to_string())
        .collect();
    theirs.sort();
    theirs.dedup();
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 2);
}

#[test]
fn every_layer_exports_to_its_diff_digest_through_the_helper_only_where_needed() {
    let f = fixture();
    let layers = f.layers();
    assert_eq!(layers.len(), 3);
    let out_dir = f.home.join("exports");
    run(f.as_user("mkdir").arg("-p").arg(&out_dir));
    let mut helper_files = 0;
    for l in &layers {
        let id = l["id"].as_str().unwrap();
        let target = out_dir.join(format!("{id}.tar"));
        let out = run(f
            .cstorage()
            .args(["--log-level", "debug", "layer", "export", id, "-o"])
            .arg(&target));
        assert_eq!(
            format!("sha256:{}", sha256_file(&target)),
            l["diff_digest"].as_str().unwrap(),
            "layer {id}"
        );
        let (started, opened) = helper_log(&out.stderr);
        // Ground truth from the kernel: what the user cannot open directly in this layer.
        let diff = f.graphroot().join("overlay").join(id).join("diff");
        let mut all = Vec::new();
        walk(&diff, &mut all);
        let denied = f.denied_to_user(&all);
        let denied_files: BTreeSet<PathBuf> = denied
            .iter()
            .filter(|p| p.symlink_metadata().unwrap().is_file())
            .cloned()
            .collect();
        assert!(
            !denied_files.is_empty(),
            "layer {id}: the fixture should have files the user cannot read"
        );
        // Used for every file that needed it, and for nothing the user could open itself.
        assert!(
            opened.is_subset(&denied),
            "layer {id}: helper used for files the user can read: {:?}",
            opened.difference(&denied).collect::<Vec<_>>()
        );
        assert!(
            denied_files.is_subset(&opened),
            "layer {id}: not opened through the helper: {:?}",
            denied_files.difference(&opened).collect::<Vec<_>>()
        );
        assert!(started);
        helper_files += denied_files.len();
    }
    assert!(helper_files > 200, "{helper_files}");
}

#[test]
fn cat_ls_and_stat_see_container_owned_files() {
    let f = fixture();
    let cat = |p: &str| {
        let out = run(f
            .cstorage()
            .args(["--log-level", "debug", "cat", "localhost/rl", p]));
        (
            String::from_utf8(out.stdout).unwrap(),
            helper_log(&out.stderr),
        )
    };
    // A 0600 file of container user 1000 (a subordinate UID on the host).
    let (secret, (started, opened)) = cat("/home/u/secret");
    assert_eq!(secret, "the user's secret\n");
    assert!(started);
    assert!(
        opened.iter().any(|p| p.ends_with("home/u/secret")),
        "{opened:?}"
    );
    // Through a symlink in a closed directory; mode 000 file and directory.
    assert_eq!(cat("/home/u/link").0, "the user's secret\n");
    assert_eq!(cat("/zero").0, "mode 000 file\n");
    assert_eq!(cat("/srv/x").0, "below a mode 000 directory\n");
    assert_eq!(cat("/var/www").0, "www data\n");
    assert_eq!(cat("/etc/shadow").0, "changed in layer 2\n");
    assert_eq!(cat("/opt/locked/new").0, "new in layer 2\n");
    // World-readable files never start the helper.
    let (public, (started, opened)) = cat("/pub");
    assert_eq!(public, "public\n");
    assert!(!started && opened.is_empty(), "{opened:?}");

    // The merged tree: whiteout and opaque directory applied inside closed directories.
    let ls = |p: &str| {
        String::from_utf8(run(f.cstorage().args(["ls", "localhost/rl", p])).stdout).unwrap()
    };
    assert_eq!(
        ls("/home/u").lines().collect::<Vec<_>>(),
        ["link", "secret"]
    );
    assert_eq!(ls("/opt/locked").lines().collect::<Vec<_>>(), ["new"]);
    let top = ls("/");
    for name in ["etc", "home", "opt", "pub", "srv", "var", "zero"] {
        assert!(top.lines().any(|l| l == name), "{name} missing from {top}");
    }
    // The whole tree walks without a permission error.
    run(f.cstorage().args(["ls", "-R", "localhost/rl", "/"]));
}

#[test]
fn image_export_and_verify_work_as_the_user() {
    let f = fixture();
    run(f.cstorage().args(["verify", "--all"]));
    let out = f.home.join("rl-oci");
    run(f
        .cstorage()
        .args(["image", "export", "localhost/rl", "-o"])
        .arg(&out));
    // Read back by skopeo (as root: the layout belongs to the user, mode 0755 dirs).
    let cfg = run(Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci:{}", out.display())));
    let cfg: Value = serde_json::from_slice(&cfg.stdout).unwrap();
    let diff_ids: Vec<&str> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, f.rl_layers);
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}", out.display())));
    let manifest: Value = serde_json::from_slice(&raw.stdout).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), f.rl_layers.len(), "one blob per layer");
    for (l, want) in layers.iter().zip(&f.rl_layers) {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let blob = std::fs::read(out.join("blobs/sha256").join(hex)).unwrap();
        // Uncompressed export: the blob is the layer tar itself.
        assert_eq!(format!("sha256:{}", sha256_hex(&blob)), *want);
    }
}

#[test]
fn without_a_subuid_range_the_error_says_so() {
    let f = fixture();
    let id = f.layer_id(&f.rl_layers[0]);
    // The same user, in a mount namespace where /etc/subuid has no entry for them (newuidmap
    // reads the same file, so this is exactly a user without a range).
    let empty = f.dir.join("empty-subuid");
    std::fs::write(&empty, b"").unwrap();
    let inner = f
        .cstorage()
        .args(["layer", "export", &id, "-o", "/dev/null"])
        .get_args()
        .map(|a| a.to_owned())
        .collect::<Vec<_>>();
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/subuid && exec runuser "$@""#)
        .arg(&empty)
        .args(&inner)
        .current_dir(&f.dir);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("user {USER}"))
            && err.contains("no subordinate UID range in /etc/subuid"),
        "{err}"
    );
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// An export of the `many` layer to a pipe nobody reads yet: it has opened its first file
/// through the helper and then blocks writing the 2 MiB after it. Returns the export, its
/// stderr (read up to that open), what was read of it, and the helper's pid.
fn blocked_export(
    f: &Fixture,
    id: &str,
) -> (
    std::process::Child,
    BufReader<std::process::ChildStderr>,
    String,
    String,
) {
    let mut child = f
        .cstorage()
        .args(["--log-level", "debug", "layer", "export", id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut pid = None;
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the helper did not open a/first: {log}"
        );
        log.push_str(&line);
        if let Some(rest) = line.split_once("user-namespace helper (pid ") {
            pid = Some(rest.1.trim_end().trim_end_matches(')').to_string());
        }
        if line.contains("userns helper opened") && line.trim_end().ends_with("/a/first") {
            break;
        }
    }
    (child, stderr, log, pid.expect("helper pid logged"))
}

#[test]
fn a_killed_helper_is_a_clear_error_not_a_hang() {
    let f = fixture();
    let id = f.layer_id(&f.many_layer);
    let size = f
        .layers()
        .into_iter()
        .find(|l| l["id"] == id.as_str())
        .unwrap()["diff_size"]
        .as_u64()
        .unwrap();
    let (mut child, mut stderr, mut log, pid) = blocked_export(f, &id);
    run(Command::new("kill").args(["-KILL", &pid]));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    stderr.read_to_string(&mut log).unwrap();
    let status = child.wait().unwrap();
    let written = reader.join().unwrap();
    assert!(!status.success());
    assert!((written.len() as u64) < size, "{} of {size}", written.len());
    let err = log.lines().last().unwrap();
    assert!(
        err.starts_with("cstorage: error:")
            && err.contains(&format!("the user-namespace helper (pid {pid}) failed"))
            && err.contains("signal: 9"),
        "{log}"
    );
    assert!(err.contains("/c/s000"), "names the file: {err}");
}

/// The state letter of a process (`Z` for a zombie), `None` once it is gone.
fn proc_state(pid: &str) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

#[test]
fn the_helper_dies_with_its_program() {
    let f = fixture();
    let id = f.layer_id(&f.many_layer);
    let (mut child, _stderr, _log, helper) = blocked_export(f, &id);
    // The program is blocked writing to the pipe we do not read; kill it (not runuser).
    let status = std::fs::read_to_string(format!("/proc/{helper}/status")).unwrap();
    let parent = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(proc_state(&helper).is_some(), "the helper runs");
    run(Command::new("kill").args(["-KILL", &parent]));
    let _ = child.wait();
    let t = std::time::Instant::now();
    while matches!(proc_state(&helper), Some(s) if s != 'Z') {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "helper {helper} still running after its program {parent} was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The merged tree the user sees equals `umoci unpack` (run as root) of the source layout:
/// names, types, modes, owners as the image defines them (mapped back from the host's
/// subordinate IDs), sizes, link targets and every file's content.
#[test]
fn the_rootfs_view_matches_umoci_with_image_owners() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    let bundle = f.dir.join("umoci-rl");
    if !bundle.exists() {
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:rl", f.dir.join("oci").display()))
            .arg(&bundle));
    }
    let rootfs = bundle.join("rootfs");
    let mut all = Vec::new();
    walk(&rootfs, &mut all);
    all.sort();
    let mut theirs = Vec::new();
    let mut files = Vec::new();
    for p in &all {
        let md = p.symlink_metadata().unwrap();
        let rel = format!("/{}", p.strip_prefix(&rootfs).unwrap().display());
        let kind = if md.is_dir() {
            "dir"
        } else if md.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let size = if md.is_dir() { None } else { Some(md.size()) };
        theirs.push((
            rel.clone(),
            kind.to_string(),
            format!("{:04o}", md.mode() & 0o7777),
            md.uid(),
            md.gid(),
            size,
        ));
        if md.is_file() {
            files.push((rel, std::fs::read(p).unwrap()));
        }
    }
    let out = run(f
        .cstorage()
        .args(["--format", "json", "ls", "-R", "localhost/rl", "/"]));
    let ours: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<_> = ours
        .iter()
        .filter(|e| e["path"] != "/")
        .map(|e| {
            let kind = e["type"].as_str().unwrap().to_string();
            (
                e["path"].as_str().unwrap().to_string(),
                kind.clone(),
                e["mode"].as_str().unwrap().to_string(),
                e["uid"].as_u64().unwrap() as u32,
                e["gid"].as_u64().unwrap() as u32,
                (kind != "dir").then(|| e["size"].as_u64().unwrap()),
            )
        })
        .collect();
    assert_eq!(ours, theirs);
    assert!(
        ours.iter().any(|e| e.3 == 1000),
        "container-owned files present"
    );
    // Every file's content, in one `cat` of all of them.
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    let out = run(f.cstorage().args(["cat", "localhost/rl"]).args(&paths));
    let want: Vec<u8> = files.iter().flat_map(|(_, c)| c.clone()).collect();
    assert_eq!(out.stdout, want);
}

/// Stores elsewhere, found as rootless podman finds them: a user storage.conf with
/// `rootless_storage_path` (through `XDG_CONFIG_HOME`), and `XDG_DATA_HOME`. Each store gets
/// written by skopeo with that environment and read by cstorage with the same one, no flags.
#[test]
fn rootless_discovery_follows_the_user_environment() {
    let f = fixture();
    let src = format!("oci:{}:rl", f.dir.join("oci").display());
    let conf_dir = f.home.join("alt-config");
    let alt_root = f.home.join("alt/storage");
    run(f
        .as_user("mkdir")
        .arg("-p")
        .arg(conf_dir.join("containers")));
    run(f.as_user("sh").arg("-c").arg(format!(
        "printf '[storage]\\ndriver = \"overlay\"\\nrootless_storage_path = \"$HOME/alt/storage\"\\n' > {}",
        conf_dir.join("containers/storage.conf").display()
    )));
    let data_home = f.home.join("data");
    let cases = [
        (
            format!("XDG_CONFIG_HOME={}", conf_dir.display()),
            alt_root.clone(),
        ),
        (
            format!("XDG_DATA_HOME={}", data_home.display()),
            data_home.join("containers/storage"),
        ),
    ];
    for (var, root) in cases {
        let with = |prog: &str| {
            let mut c = f.as_user("env");
            c.arg(&var).arg(prog);
            c
        };
        run(with("skopeo")
            .args(["copy", "--quiet", &src])
            .arg("containers-storage:localhost/elsewhere:latest"));
        assert!(
            root.join("overlay-images/images.json").exists(),
            "{var}: {}",
            root.display()
        );
        let info =
            String::from_utf8(run(with(f.bin.to_str().unwrap()).arg("info")).stdout).unwrap();
        assert!(
            info.lines()
                .any(|l| l == format!("graphroot: {}", root.display())),
            "{var}: {info}"
        );
        let names = String::from_utf8(
            run(with(f.bin.to_str().unwrap()).args(["images", "--format", "json"])).stdout,
        )
        .unwrap();
        assert!(
            names.contains("localhost/elsewhere:latest"),
            "{var}: {names}"
        );
        // Reading it needs the helper as in the default store.
        let out = run(with(f.bin.to_str().unwrap()).args([
            "cat",
            "localhost/elsewhere",
            "/home/u/secret",
        ]));
        assert_eq!(out.stdout, b"the user's secret\n");
    }
    // The default store does not have it.
    let names =
        String::from_utf8(run(f.cstorage().args(["images", "--format", "json"])).stdout).unwrap();
    assert!(!names.contains("elsewhere"), "{names}");
}

/// The output rules as a user without privileges (issue 12): a file of another user that
/// the user may replace (its directory is theirs) is not replaced, since its owner could not
/// be kept; the user's own file keeps its mode; `-o -` writes to standard output and never
/// creates a file named `-`; a failed layout export leaves nothing.
#[test]
fn output_rules_hold_for_the_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let f = fixture();
    let layer = f.layer_id(&f.rl_layers[0]);
    let dir = f.home.join("out-rules");
    let _ = std::fs::remove_dir_all(&dir);
    run(f.as_user("mkdir").arg(&dir));
    // Root's file in the user's directory: refused before anything is written.
    let theirs = dir.join("root-owned.tar");
    std::fs::write(&theirs, b"root's").unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = f
        .cstorage()
        .args(["layer", "export", &layer, "-o"])
        .arg(&theirs)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot keep its owner"), "{err}");
    assert_eq!(std::fs::read(&theirs).unwrap(), b"root's");
    assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 0);
    // The user's own 0600 file: replaced, still 0600 and theirs.
    let mine = dir.join("mine.tar");
    run(f
        .as_user("sh")
        .arg("-c")
        .arg(format!("umask 077 && echo old > {}", mine.display())));
    run(f
        .cstorage()
        .args(["layer", "export", &layer, "-o"])
        .arg(&mine));
    let md = std::fs::metadata(&mine).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600);
    assert_ne!(md.uid(), 0);
    assert_eq!(
        format!("sha256:{}", sha256_hex(&std::fs::read(&mine).unwrap())),
        f.rl_layers[0]
    );
    // `-o -`: standard output, run in the directory; no file named `-`.
    let o = f
        .cstorage()
        .current_dir(&dir)
        .args(["layer", "export", &layer, "-o", "-"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(format!("sha256:{}", sha256_hex(&o.stdout)), f.rl_layers[0]);
    assert!(!dir.join("-").exists());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["mine.tar", "root-owned.tar"]);
}
