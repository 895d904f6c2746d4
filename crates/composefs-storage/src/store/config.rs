//! Finding the store: `storage.conf`, environment variables, root and rootless defaults.
//!
//! This follows c/storage's classic configuration code (format doc section 8.1, the code of
//! c/storage up to 1.62 and Debian's 1.43):
//!
//! * `CONTAINERS_STORAGE_CONF`, if set, names the only file read.
//! * Otherwise, for root (more exactly: when the "rootless UID" is 0), the first of
//!   `$XDG_CONFIG_HOME/containers/storage.conf` (only if `XDG_CONFIG_HOME` is set),
//!   `/etc/containers/storage.conf` and `/usr/share/containers/storage.conf` that exists.
//! * For a rootless user, `$XDG_CONFIG_HOME/containers/storage.conf` (or
//!   `~/.config/containers/storage.conf`) replaces the system file if it exists; otherwise the
//!   rootless defaults apply, taking only `driver`, `rootless_storage_path`, the overlay
//!   `ignore_chown_errors` option and `pull_options` from the system file.
//! * `STORAGE_DRIVER` overrides the driver, `STORAGE_OPTS` replaces the driver options
//!   (rootless without a user file: is appended to them), `overlay2` means `overlay`.
//! * `$UID` and then `$VAR`/`${VAR}` are expanded in `graphroot`, `runroot` and
//!   `rootless_storage_path`, and symlinks in them are resolved.
//!
//! Unknown keys are ignored (c/storage only warns about them); a file that is not valid TOML,
//! or whose known keys have the wrong type, is an error naming the file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, StorageError};

const SYSTEM_OVERRIDE_CONFIG: &str = "/etc/containers/storage.conf";
const SYSTEM_DEFAULT_CONFIG: &str = "/usr/share/containers/storage.conf";
const DEFAULT_GRAPHROOT: &str = "/var/lib/containers/storage";
const DEFAULT_RUNROOT: &str = "/run/containers/storage";

/// An additional layer store (`additionallayerstores` entry): a directory of ready-made layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdditionalLayerStore {
    /// Absolute path of the store.
    pub path: PathBuf,
    /// True if the store was configured with `:ref`: layers are then found under a directory
    /// named by the base64 of the image reference.
    pub with_reference: bool,
}

/// Options of the overlay driver that matter to a reader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OverlayOptions {
    /// `mount_program` (e.g. `/usr/bin/fuse-overlayfs`): the store uses `.wh.` whiteout files.
    pub mount_program: Option<PathBuf>,
    /// `mountopt`, e.g. `nodev,metacopy=on`.
    pub mountopt: Option<String>,
    /// `force_mask`: on-disk modes are forced and the real ones are kept in the
    /// `user.containers.override_stat` xattr.
    pub force_mask: Option<u32>,
    /// `use_composefs`.
    pub use_composefs: bool,
    /// `skip_mount_home`.
    pub skip_mount_home: bool,
    /// `ignore_chown_errors`.
    pub ignore_chown_errors: bool,
}

/// The resolved configuration of a store: where it is and how it is laid out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageConfig {
    /// The graph driver (`overlay`; empty if the configuration names none).
    pub driver: String,
    /// The graph root.
    pub graphroot: PathBuf,
    /// The run root, if known.
    pub runroot: Option<PathBuf>,
    /// The split image store (`imagestore`), if configured.
    pub imagestore: Option<PathBuf>,
    /// `rootless_storage_path` as configured (expanded).
    pub rootless_storage_path: Option<PathBuf>,
    /// `transient_store`: container records and volatile layers live in the run root.
    pub transient_store: bool,
    /// Driver options in c/storage's `name.key=value` form, after environment overrides.
    pub driver_options: Vec<String>,
    /// `pull_options`.
    pub pull_options: BTreeMap<String, String>,
    /// The configuration file the settings came from, if any.
    pub config_file: Option<PathBuf>,
    /// True if the configuration was resolved for a rootless user.
    pub rootless: bool,
}

/// The process environment that configuration discovery depends on. [`Environment::current`]
/// reads it from the process; tests build one by hand.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// Environment variables.
    pub vars: HashMap<String, String>,
    /// The real UID of the process.
    pub uid: u32,
    /// The system configuration files, in c/storage's order
    /// (`/etc/containers/storage.conf`, `/usr/share/containers/storage.conf`).
    pub system_files: Vec<PathBuf>,
}

impl Environment {
    /// The environment of this process.
    pub fn current() -> Self {
        Environment {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            uid: rustix::process::getuid().as_raw(),
            system_files: vec![SYSTEM_OVERRIDE_CONFIG.into(), SYSTEM_DEFAULT_CONFIG.into()],
        }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(|s| s.as_str())
    }

    fn var_nonempty(&self, k: &str) -> Option<&str> {
        self.var(k).filter(|s| !s.is_empty())
    }

    /// c/storage's `GetRootlessUID`: `_CONTAINERS_ROOTLESS_UID` inside podman's user
    /// namespace, else the real UID.
    pub fn rootless_uid(&self) -> u32 {
        match self.var_nonempty("_CONTAINERS_ROOTLESS_UID") {
            Some(s) => s.parse().unwrap_or(0),
            None => self.uid,
        }
    }

    /// Whether per-user (rootless) storage is used: the rootless UID is not 0.
    pub fn per_user_storage(&self) -> bool {
        self.rootless_uid() != 0
    }

    fn home(&self) -> Option<PathBuf> {
        self.var_nonempty("HOME").map(PathBuf::from).or_else(|| {
            // Like Go's os.UserHomeDir fallback: the passwd entry.
            let uid = self.uid;
            let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| PathBuf::from(f[5]))
            })
        })
    }

    fn config_home(&self) -> Option<PathBuf> {
        self.var_nonempty("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| self.home().map(|h| h.join(".config")))
    }

    fn data_home(&self) -> Option<PathBuf> {
        self.var_nonempty("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| self.home().map(|h| h.join(".local/share")))
    }

    /// c/storage's `GetRuntimeDir` (without creating anything).
    fn runtime_dir(&self) -> PathBuf {
        if let Some(d) = self.var_nonempty("XDG_RUNTIME_DIR") {
            return eval_symlinks(Path::new(d));
        }
        let uid = self.rootless_uid();
        let run_user = PathBuf::from(format!("/run/user/{uid}"));
        let owned_private = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::symlink_metadata(p)
                .map(|m| m.uid() == self.uid && m.is_dir() && (m.mode() & 0o722) == 0o700)
                .unwrap_or(false)
        };
        if owned_private(&run_user) {
            return run_user;
        }
        let tmp = self.var_nonempty("TMPDIR").unwrap_or("/tmp");
        PathBuf::from(tmp).join(format!("storage-run-{uid}"))
    }

    /// Go's `os.ExpandEnv` after replacing `$UID`, then symlink resolution (c/storage's
    /// `expandEnvPath`).
    fn expand_path(&self, path: &str) -> PathBuf {
        let s = path.replace("$UID", &self.rootless_uid().to_string());
        let s = expand_env(&s, |k| self.var(k).unwrap_or("").to_string());
        eval_symlinks(Path::new(&s))
    }
}

/// `filepath.EvalSymlinks`, falling back to lexical cleaning when the path does not resolve.
fn eval_symlinks(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| clean_path(p))
}

/// Lexical path cleaning (`filepath.Clean`).
pub(crate) fn clean_path(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(c),
            },
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().collect()
}

/// Go's `os.Expand` rules: `$name` (letters, digits, `_`), `${name}`, and the one-character
/// shell specials; a `$` followed by anything else is dropped.
fn expand_env(s: &str, lookup: impl Fn(&str) -> String) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            out.push_str(&s[last..i]);
            let rest = &s[i + 1..];
            let (name, consumed) = if let Some(inner) = rest.strip_prefix('{') {
                match inner.find('}') {
                    Some(0) => ("", 2), // "${}": bad syntax, Go drops it
                    None => ("", 1),    // "${" without "}": Go drops "${"
                    Some(end) => (&inner[..end], end + 2),
                }
            } else if rest.starts_with(|c: char| "*#$@!?-0123456789".contains(c)) {
                (&rest[..1], 1)
            } else {
                let n = rest
                    .bytes()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    .count();
                if n == 0 {
                    // Go drops the '$' and the next byte; here the next whole character,
                    // so the result stays UTF-8 (found by fuzzing: "$°ME").
                    ("", rest.chars().next().map(char::len_utf8).unwrap_or(1))
                } else {
                    (&rest[..n], n)
                }
            };
            if !name.is_empty() {
                out.push_str(&lookup(name));
            }
            i += 1 + consumed;
            last = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[last.min(s.len())..]);
    out
}

// ---------------------------------------------------------------------------------------------
// The TOML schema (only the keys c/storage reads; everything else is ignored).

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TomlFile {
    storage: TomlStorage,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TomlStorage {
    driver: String,
    driver_priority: Vec<String>,
    runroot: String,
    graphroot: String,
    imagestore: String,
    rootless_storage_path: String,
    transient_store: bool,
    options: TomlOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TomlOptions {
    additionalimagestores: Vec<String>,
    imagestore: String,
    additionallayerstores: Vec<String>,
    size: String,
    ignore_chown_errors: String,
    use_composefs: String,
    force_mask: Option<toml::Value>,
    skip_mount_home: String,
    mount_program: String,
    mountopt: String,
    pull_options: Option<BTreeMap<String, toml::Value>>,
    overlay: TomlOverlay,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TomlOverlay {
    ignore_chown_errors: String,
    mountopt: String,
    mount_program: String,
    size: String,
    inodes: String,
    skip_mount_home: String,
    use_composefs: String,
    force_mask: String,
}

/// What one configuration file says (c/storage's `StoreOptions` after `ReloadConfigurationFile`).
#[derive(Debug, Default, Clone)]
struct FileOptions {
    driver: String,
    runroot: String,
    graphroot: String,
    imagestore: String,
    rootless_storage_path: String,
    transient_store: bool,
    driver_options: Vec<String>,
    pull_options: Option<BTreeMap<String, String>>,
}

fn toml_scalar_string(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        _ => String::new(),
    }
}

fn parse_file(path: &Path, env: &Environment) -> Result<Option<FileOptions>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(path, e)),
    };
    let text = String::from_utf8(text).map_err(|_| StorageError::Config {
        path: path.to_owned(),
        message: "not valid UTF-8".into(),
    })?;
    parse_text(&text, path, env).map(Some)
}

/// Parses storage.conf text and resolves it as the only configuration file (fuzzing entry).
#[doc(hidden)]
pub fn parse_for_fuzzing(text: &str, env: &Environment) -> Result<StorageConfig> {
    let o = parse_text(text, Path::new("storage.conf"), env)?;
    StorageConfig::finish(env, o, None)
}

fn parse_text(text: &str, path: &Path, env: &Environment) -> Result<FileOptions> {
    let f: TomlFile = toml::from_str(text).map_err(|e| StorageError::Config {
        path: path.to_owned(),
        message: format!("invalid TOML: {}", e.to_string().trim_end()),
    })?;
    let s = f.storage;
    let mut o = FileOptions {
        driver: s.driver.clone(),
        runroot: s.runroot,
        graphroot: s.graphroot,
        imagestore: if s.imagestore.is_empty() {
            // Deprecated location of the same key.
            s.options.imagestore.clone()
        } else {
            s.imagestore
        },
        rootless_storage_path: s.rootless_storage_path,
        transient_store: s.transient_store,
        driver_options: Vec::new(),
        pull_options: s.options.pull_options.as_ref().map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), toml_scalar_string(v)))
                .collect()
        }),
    };
    if let Some(d) = env.var_nonempty("STORAGE_DRIVER") {
        o.driver = d.to_string();
    }
    if o.driver == "overlay2" {
        o.driver = "overlay".into();
    }
    let _ = &s.driver_priority;
    // The prefix c/storage uses is the driver name from the file (possibly empty: ".key=").
    let p = &s.driver;
    let opts = &s.options;
    let ov = &opts.overlay;
    let d = &mut o.driver_options;
    for st in &opts.additionalimagestores {
        d.push(format!("{p}.imagestore={st}"));
    }
    for st in &opts.additionallayerstores {
        d.push(format!("{p}.additionallayerstore={st}"));
    }
    let mut push = |key: &str, specific: &str, general: &str| {
        if !specific.is_empty() {
            d.push(format!("{p}.{key}={specific}"));
        } else if !general.is_empty() {
            d.push(format!("{p}.{key}={general}"));
        }
    };
    push(
        "ignore_chown_errors",
        &ov.ignore_chown_errors,
        &opts.ignore_chown_errors,
    );
    push("mount_program", &ov.mount_program, &opts.mount_program);
    push("mountopt", &ov.mountopt, &opts.mountopt);
    push("size", &ov.size, &opts.size);
    push("inodes", &ov.inodes, "");
    push(
        "skip_mount_home",
        &ov.skip_mount_home,
        &opts.skip_mount_home,
    );
    let general_mask = match &opts.force_mask {
        Some(toml::Value::Integer(i)) if *i != 0 => format!("{i:o}"),
        Some(toml::Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    push("force_mask", &ov.force_mask, &general_mask);
    push("use_composefs", &ov.use_composefs, &opts.use_composefs);
    if let Some(so) = env.var("STORAGE_OPTS") {
        o.driver_options = split_opts(so);
    }
    Ok(o)
}

fn split_opts(s: &str) -> Vec<String> {
    if s.is_empty() {
        return Vec::new();
    }
    s.split(',').map(|x| x.to_string()).collect()
}

/// Splits a driver option into its key (without the `overlay.`/`overlay2.`/`.` prefix,
/// lower-cased) and value.
fn split_driver_option(opt: &str) -> Option<(String, &str)> {
    let (k, v) = opt.split_once('=')?;
    let k = k.trim().to_ascii_lowercase();
    let k = k
        .strip_prefix("overlay.")
        .or_else(|| k.strip_prefix("overlay2."))
        .or_else(|| k.strip_prefix('.'))
        .unwrap_or(&k)
        .to_string();
    Some((k, v.trim()))
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    // Go's strconv.ParseBool.
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(StorageError::Config {
            path: PathBuf::from("driver options"),
            message: format!("{key}={v:?} is not a boolean"),
        }),
    }
}

impl StorageConfig {
    /// The configuration podman would use in this process's environment.
    pub fn discover() -> Result<Self> {
        Self::discover_in(&Environment::current())
    }

    /// The configuration podman would use in the given environment.
    pub fn discover_in(env: &Environment) -> Result<Self> {
        let per_user = env.per_user_storage();
        // 1. The file c/storage would read.
        let explicit = env.var("CONTAINERS_STORAGE_CONF").map(PathBuf::from);
        if let Some(path) = explicit {
            let opts = parse_file(&path, env)?.ok_or_else(|| StorageError::Config {
                path: path.clone(),
                message: "CONTAINERS_STORAGE_CONF names a file that does not exist".into(),
            })?;
            let base = if per_user {
                rootless_defaults(env, &opts)?
            } else {
                FileOptions::default()
            };
            return Self::finish(env, merge_user_file(opts, &base, per_user), Some(path));
        }
        if !per_user {
            let mut candidates = Vec::new();
            if let Some(x) = env.var("XDG_CONFIG_HOME") {
                candidates.push(PathBuf::from(x).join("containers/storage.conf"));
            }
            candidates.extend(env.system_files.iter().cloned());
            for path in candidates {
                if let Some(opts) = parse_file(&path, env)? {
                    return Self::finish(env, opts, Some(path));
                }
            }
            // No file at all: built-in defaults.
            let mut o = FileOptions::default();
            if let Some(d) = env.var_nonempty("STORAGE_DRIVER") {
                o.driver = d.into();
            }
            if let Some(so) = env.var("STORAGE_OPTS") {
                o.driver_options = split_opts(so);
            }
            return Self::finish(env, o, None);
        }
        // Rootless.
        let system = {
            let mut found = None;
            for path in &env.system_files {
                if let Some(o) = parse_file(path, env)? {
                    found = Some(o);
                    break;
                }
            }
            found.unwrap_or_default()
        };
        let defaults = rootless_defaults(env, &system)?;
        let user_file = env
            .config_home()
            .map(|h| h.join("containers/storage.conf"))
            .ok_or_else(|| StorageError::Config {
                path: PathBuf::from("$HOME"),
                message: "cannot determine the user's home directory".into(),
            })?;
        match parse_file(&user_file, env)? {
            Some(opts) => {
                Self::finish(env, merge_user_file(opts, &defaults, true), Some(user_file))
            }
            None => Self::finish(env, defaults, None),
        }
    }

    /// The configuration from one file (as with `CONTAINERS_STORAGE_CONF=path`), with the
    /// environment overrides of this process applied.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut env = Environment::current();
        env.vars.insert(
            "CONTAINERS_STORAGE_CONF".into(),
            path.as_ref().to_string_lossy().into_owned(),
        );
        Self::discover_in(&env)
    }

    /// A configuration for an explicit graph root and nothing else.
    pub fn for_graphroot(graphroot: impl Into<PathBuf>) -> Self {
        StorageConfig {
            driver: "overlay".into(),
            graphroot: graphroot.into(),
            ..Default::default()
        }
    }

    fn finish(env: &Environment, o: FileOptions, file: Option<PathBuf>) -> Result<Self> {
        let per_user = env.per_user_storage();
        let graphroot = if o.graphroot.is_empty() {
            DEFAULT_GRAPHROOT.to_string()
        } else {
            o.graphroot
        };
        let runroot = if o.runroot.is_empty() {
            DEFAULT_RUNROOT.to_string()
        } else {
            o.runroot
        };
        let mut driver = o.driver;
        if driver == "overlay2" {
            driver = "overlay".into();
        }
        let graphroot = env.expand_path(&graphroot);
        if driver.is_empty() {
            // c/storage would pick a driver; a store that has `<driver>-images` tells which.
            driver = detect_driver(&graphroot).unwrap_or_default();
        }
        let imagestore = (!o.imagestore.is_empty()).then(|| PathBuf::from(&o.imagestore));
        if imagestore.as_deref() == Some(graphroot.as_path()) {
            return Err(StorageError::Config {
                path: file.unwrap_or_default(),
                message: format!(
                    "imagestore {} must either be not set or be different from graphroot",
                    graphroot.display()
                ),
            });
        }
        Ok(StorageConfig {
            driver,
            runroot: Some(env.expand_path(&runroot)),
            graphroot,
            imagestore,
            rootless_storage_path: (!o.rootless_storage_path.is_empty())
                .then(|| env.expand_path(&o.rootless_storage_path)),
            transient_store: o.transient_store,
            driver_options: o.driver_options,
            pull_options: o.pull_options.unwrap_or_default(),
            config_file: file,
            rootless: per_user,
        })
    }

    /// Sets the graph root (podman's `--root`).
    pub fn set_graphroot(&mut self, p: impl Into<PathBuf>) {
        self.graphroot = p.into();
    }

    /// Sets the run root (podman's `--runroot`).
    pub fn set_runroot(&mut self, p: impl Into<PathBuf>) {
        self.runroot = Some(p.into());
    }

    /// Sets the driver (podman's `--storage-driver`); `overlay2` means `overlay`.
    pub fn set_driver(&mut self, d: &str) {
        self.driver = if d == "overlay2" {
            "overlay".into()
        } else {
            d.into()
        };
    }

    /// Replaces the driver options (podman's `--storage-opt`, which replaces the configured
    /// options when given at least once).
    pub fn set_driver_options(&mut self, opts: Vec<String>) {
        self.driver_options = opts;
    }

    /// Fails unless the driver is overlay (or unset, meaning the store decides).
    pub fn check_driver(&self) -> Result<()> {
        match self.driver.as_str() {
            "" | "overlay" | "overlay2" => Ok(()),
            other => Err(StorageError::UnsupportedDriver {
                driver: other.into(),
                path: Some(self.graphroot.clone()),
            }),
        }
    }

    fn driver_option_values(&self, wanted: &str) -> impl Iterator<Item = &str> {
        self.driver_options.iter().filter_map(move |o| {
            let (k, v) = split_driver_option(o)?;
            (k == wanted).then_some(v)
        })
    }

    /// Additional (read-only) image stores, in configured order: the
    /// `overlay.imagestore=` and `overlay.additionalimagestore=` driver options (which
    /// `additionalimagestores` in storage.conf becomes), comma-separated paths each.
    pub fn additional_image_stores(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for o in &self.driver_options {
            let Some((k, v)) = split_driver_option(o) else {
                continue;
            };
            if k != "imagestore" && k != "additionalimagestore" {
                continue;
            }
            for p in v.split(',').filter(|p| !p.is_empty()) {
                let p = clean_path(Path::new(p));
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Additional layer stores (`overlay.additionallayerstore=` options).
    pub fn additional_layer_stores(&self) -> Result<Vec<AdditionalLayerStore>> {
        let mut out = Vec::new();
        for v in self.driver_option_values("additionallayerstore") {
            for entry in v.split(',').filter(|p| !p.is_empty()) {
                let mut parts = entry.split(':');
                let path = clean_path(Path::new(parts.next().unwrap_or("")));
                if !path.is_absolute() {
                    return Err(StorageError::Config {
                        path: PathBuf::from("additionallayerstores"),
                        message: format!("path {} is not absolute", path.display()),
                    });
                }
                let mut with_reference = false;
                for opt in parts {
                    match opt {
                        "ref" if !with_reference => with_reference = true,
                        other => {
                            return Err(StorageError::Config {
                                path: PathBuf::from("additionallayerstores"),
                                message: format!(
                                    "entry {entry:?} has an unknown or repeated option {other:?}"
                                ),
                            });
                        }
                    }
                }
                out.push(AdditionalLayerStore {
                    path,
                    with_reference,
                });
            }
        }
        Ok(out)
    }

    /// The overlay driver options that matter to a reader. Unknown options are ignored.
    pub fn overlay_options(&self) -> Result<OverlayOptions> {
        let mut o = OverlayOptions::default();
        for opt in &self.driver_options {
            let Some((k, v)) = split_driver_option(opt) else {
                if !opt.is_empty() {
                    log::debug!("ignoring driver option {opt:?} without '='");
                }
                continue;
            };
            match k.as_str() {
                "mount_program" => o.mount_program = (!v.is_empty()).then(|| PathBuf::from(v)),
                "mountopt" => o.mountopt = Some(v.to_string()),
                "use_composefs" => o.use_composefs = parse_bool(&k, v)?,
                "skip_mount_home" => o.skip_mount_home = parse_bool(&k, v)?,
                "ignore_chown_errors" => o.ignore_chown_errors = parse_bool(&k, v)?,
                "force_mask" => {
                    o.force_mask = Some(match v {
                        "shared" => 0o755,
                        "private" => 0o700,
                        _ => u32::from_str_radix(v, 8).map_err(|_| StorageError::Config {
                            path: PathBuf::from("driver options"),
                            message: format!("force_mask={v:?} is not shared, private or octal"),
                        })?,
                    })
                }
                "imagestore"
                | "additionalimagestore"
                | "additionallayerstore"
                | "size"
                | "inodes"
                | "override_kernel_check"
                | "sync" => {}
                other => log::debug!("ignoring unknown overlay option {other:?}"),
            }
        }
        Ok(o)
    }
}

/// The driver whose `<driver>-images` or `<driver>-layers` directory exists in `graphroot`.
pub(crate) fn detect_driver(graphroot: &Path) -> Option<String> {
    let rd = std::fs::read_dir(graphroot).ok()?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.iter().find_map(|n| {
        n.strip_suffix("-images")
            .or_else(|| n.strip_suffix("-layers"))
            .map(|d| d.to_string())
    })
}

/// c/storage's `getRootlessStorageOpts`: the rootless defaults derived from the system file.
fn rootless_defaults(env: &Environment, system: &FileOptions) -> Result<FileOptions> {
    let mut o = FileOptions {
        runroot: env
            .runtime_dir()
            .join("containers")
            .to_string_lossy()
            .into_owned(),
        pull_options: system.pull_options.clone(),
        ..Default::default()
    };
    if !system.rootless_storage_path.is_empty() {
        o.graphroot = env
            .expand_path(&system.rootless_storage_path)
            .to_string_lossy()
            .into_owned();
    } else {
        let data = env.data_home().ok_or_else(|| StorageError::Config {
            path: PathBuf::from("$HOME"),
            message: "could not get either XDG_DATA_HOME or HOME".into(),
        })?;
        o.graphroot = data
            .join("containers/storage")
            .to_string_lossy()
            .into_owned();
    }
    if matches!(
        system.driver.as_str(),
        "btrfs" | "overlay" | "overlay2" | "vfs"
    ) {
        o.driver = system.driver.clone();
    }
    if let Some(d) = env.var_nonempty("STORAGE_DRIVER") {
        o.driver = d.into();
    }
    if o.driver == "overlay2" {
        o.driver = "overlay".into();
    }
    if o.driver == "overlay" {
        if let Some(opt) = system
            .driver_options
            .iter()
            .find(|x| x.contains("ignore_chown_errors"))
        {
            o.driver_options.push(opt.clone());
        }
    }
    if o.driver.is_empty() {
        o.driver = detect_driver(Path::new(&o.graphroot)).unwrap_or_else(|| "overlay".into());
    }
    if let Some(so) = env.var_nonempty("STORAGE_OPTS") {
        o.driver_options.extend(split_opts(so));
    }
    Ok(o)
}

/// c/storage's rule for a rootless user file: its settings replace everything, with the
/// rootless defaults filling an empty `runroot` and `graphroot` (`rootless_storage_path`
/// first).
fn merge_user_file(mut file: FileOptions, defaults: &FileOptions, per_user: bool) -> FileOptions {
    if !per_user {
        return file;
    }
    if file.runroot.is_empty() {
        file.runroot = defaults.runroot.clone();
    }
    if file.graphroot.is_empty() {
        file.graphroot = if !file.rootless_storage_path.is_empty() {
            file.rootless_storage_path.clone()
        } else {
            defaults.graphroot.clone()
        };
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(uid: u32, vars: &[(&str, &str)], system: &[&Path]) -> Environment {
        Environment {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            uid,
            system_files: system.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    const FULL: &str = r#"
[storage]
driver = "overlay"
runroot = "/run/x"
graphroot = "/var/lib/x"
imagestore = "/var/lib/imgs"
transient_store = true
some_future_key = "ignored"

[storage.options]
additionalimagestores = ["/ais1", "/ais2"]
additionallayerstores = ["/als:ref"]
pull_options = {enable_partial_images = "true", use_hard_links = "false"}

[storage.options.overlay]
mount_program = "/usr/bin/fuse-overlayfs"
mountopt = "nodev,metacopy=on"
force_mask = "shared"
use_composefs = "true"
unknown_overlay_key = 1

[storage.options.thinpool]
autoextend_percent = "20"
"#;

    #[test]
    fn full_schema() {
        let td = tempfile::tempdir().unwrap();
        let f = td.path().join("storage.conf");
        std::fs::write(&f, FULL).unwrap();
        let e = env(0, &[("CONTAINERS_STORAGE_CONF", f.to_str().unwrap())], &[]);
        let c = StorageConfig::discover_in(&e).unwrap();
        assert_eq!(c.driver, "overlay");
        assert_eq!(c.graphroot, PathBuf::from("/var/lib/x"));
        assert_eq!(c.runroot, Some(PathBuf::from("/run/x")));
        assert_eq!(c.imagestore, Some(PathBuf::from("/var/lib/imgs")));
        assert!(c.transient_store);
        assert_eq!(
            c.additional_image_stores(),
            vec![PathBuf::from("/ais1"), PathBuf::from("/ais2")]
        );
        assert_eq!(
            c.additional_layer_stores().unwrap(),
            vec![AdditionalLayerStore {
                path: "/als".into(),
                with_reference: true
            }]
        );
        assert_eq!(c.pull_options.get("enable_partial_images").unwrap(), "true");
        let o = c.overlay_options().unwrap();
        assert_eq!(
            o.mount_program,
            Some(PathBuf::from("/usr/bin/fuse-overlayfs"))
        );
        assert_eq!(o.force_mask, Some(0o755));
        assert!(o.use_composefs);
        assert_eq!(o.mountopt.as_deref(), Some("nodev,metacopy=on"));
        assert_eq!(c.config_file, Some(f));
    }

    #[test]
    fn bad_toml_names_the_file() {
        let td = tempfile::tempdir().unwrap();
        let f = td.path().join("broken.conf");
        std::fs::write(&f, "[storage\ndriver=").unwrap();
        let e = env(0, &[("CONTAINERS_STORAGE_CONF", f.to_str().unwrap())], &[]);
        let err = StorageConfig::discover_in(&e).unwrap_err().to_string();
        assert!(
            err.contains("broken.conf") && err.contains("invalid TOML"),
            "{err}"
        );
        // A known key with the wrong type is an error too.
        std::fs::write(&f, "[storage]\ngraphroot = 5\n").unwrap();
        let err = StorageConfig::discover_in(&e).unwrap_err().to_string();
        assert!(err.contains("broken.conf"), "{err}");
    }

    #[test]
    fn root_search_order() {
        let td = tempfile::tempdir().unwrap();
        let etc = td.path().join("etc.conf");
        let usr = td.path().join("usr.conf");
        std::fs::write(
            &usr,
            "[storage]\ndriver=\"overlay\"\ngraphroot=\"/from/usr\"\n",
        )
        .unwrap();
        let e = env(0, &[], &[&etc, &usr]);
        let c = StorageConfig::discover_in(&e).unwrap();
        assert_eq!(c.graphroot, PathBuf::from("/from/usr"));
        assert_eq!(c.runroot, Some(PathBuf::from(DEFAULT_RUNROOT)));
        std::fs::write(
            &etc,
            "[storage]\ndriver=\"overlay\"\ngraphroot=\"/from/etc\"\n",
        )
        .unwrap();
        let c = StorageConfig::discover_in(&e).unwrap();
        assert_eq!(c.graphroot, PathBuf::from("/from/etc"));
        assert_eq!(c.config_file, Some(etc.clone()));
        // No file at all: built-in defaults.
        let e = env(
            0,
            &[],
            &[&td.path().join("none1"), &td.path().join("none2")],
        );
        let c = StorageConfig::discover_in(&e).unwrap();
        assert_eq!(c.graphroot, PathBuf::from(DEFAULT_GRAPHROOT));
        assert_eq!(c.config_file, None);
    }

    #[test]
    fn env_overrides() {
        let td = tempfile::tempdir().unwrap();
        let f = td.path().join("s.conf");
        std::fs::write(
            &f,
            "[storage]\ndriver=\"vfs\"\ngraphroot=\"$HOME/g-$UID\"\nrunroot=\"${HOME}/r\"\n[storage.options.overlay]\nmount_program=\"/x\"\n",
        )
        .unwrap();
        let e = env(
            0,
            &[
                ("CONTAINERS_STORAGE_CONF", f.to_str().unwrap()),
                ("HOME", "/home/u"),
                ("STORAGE_DRIVER", "overlay2"),
                (
                    "STORAGE_OPTS",
                    "overlay.imagestore=/a,overlay.force_mask=private",
                ),
            ],
            &[],
        );
        let c = StorageConfig::discover_in(&e).unwrap();
        assert_eq!(c.driver, "overlay");
        assert_eq!(c.graphroot, PathBuf::from("/home/u/g-0"));
        assert_eq!(c.runroot, Some(PathBuf::from("/home/u/r")));
        // STORAGE_OPTS replaced the file's options.
        let o = c.overlay_options().unwrap();
        assert_eq!(o.mount_program, None);
        assert_eq!(o.force_mask, Some(0o700));
        assert_eq!(c.additional_image_stores(), vec![PathBuf::from("/a")]);
    }

    #[test]
    fn other_driver_is_a_clear_error() {
        let c = StorageConfig {
            driver: "vfs".into(),
            graphroot: "/g".into(),
            ..Default::default()
        };
        let e = c.check_driver().unwrap_err().to_string();
        assert!(e.contains("vfs") && e.contains("overlay"), "{e}");
    }

    #[test]
    fn rootless_defaults_and_user_file() {
        let td = tempfile::tempdir().unwrap();
        let home = td.path().join("home");
        std::fs::create_dir_all(home.join(".config/containers")).unwrap();
        let sys = td.path().join("sys.conf");
        std::fs::write(
            &sys,
            "[storage]\ndriver=\"overlay\"\ngraphroot=\"/var/lib/containers/storage\"\n[storage.options]\npull_options={enable_partial_images=\"true\"}\n[storage.options.overlay]\nmount_program=\"/usr/bin/fuse-overlayfs\"\nignore_chown_errors=\"true\"\n",
        )
        .unwrap();
        let vars = [
            ("HOME", home.to_str().unwrap()),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ];
        let e = env(1000, &vars, &[&sys]);
        let c = StorageConfig::discover_in(&e).unwrap();
        assert!(c.rootless);
        assert_eq!(c.graphroot, home.join(".local/share/containers/storage"));
        assert_eq!(c.runroot, Some(PathBuf::from("/run/user/1000/containers")));
        assert_eq!(c.driver, "overlay");
        // Only ignore_chown_errors is inherited from the system file, and pull options.
        let o = c.overlay_options().unwrap();
        assert!(o.ignore_chown_errors);
        assert_eq!(o.mount_program, None);
        assert_eq!(c.pull_options.get("enable_partial_images").unwrap(), "true");

        // XDG_DATA_HOME moves the graph root.
        let mut e2 = e.clone();
        e2.vars.insert("XDG_DATA_HOME".into(), "/data".into());
        assert_eq!(
            StorageConfig::discover_in(&e2).unwrap().graphroot,
            PathBuf::from("/data/containers/storage")
        );

        // rootless_storage_path in the system file becomes the graph root.
        std::fs::write(
            &sys,
            "[storage]\ndriver=\"overlay\"\nrootless_storage_path=\"/srv/$UID/storage\"\n",
        )
        .unwrap();
        assert_eq!(
            StorageConfig::discover_in(&e).unwrap().graphroot,
            PathBuf::from("/srv/1000/storage")
        );

        // A user file replaces the system file entirely.
        let user = home.join(".config/containers/storage.conf");
        std::fs::write(
            &user,
            "[storage]\ndriver=\"overlay\"\nrootless_storage_path=\"/mine\"\n",
        )
        .unwrap();
        let c = StorageConfig::discover_in(&e).unwrap();
        assert_eq!(c.graphroot, PathBuf::from("/mine"));
        assert_eq!(c.runroot, Some(PathBuf::from("/run/user/1000/containers")));
        assert_eq!(c.config_file, Some(user.clone()));
    }

    #[test]
    fn expand() {
        let look = |k: &str| match k {
            "A" => "x".to_string(),
            "HOME" => "/h".to_string(),
            _ => String::new(),
        };
        assert_eq!(expand_env("$A/${A}/$B/$HOME", look), "x/x///h");
        assert_eq!(expand_env("a$", look), "a$");
        assert_eq!(expand_env("${}z", look), "z");
        assert_eq!(expand_env("${A", look), "A");
        assert_eq!(expand_env("$-x", look), "x");
        // Regression (fuzzing): a '$' before a multi-byte character must not split it.
        assert_eq!(expand_env("$\u{b0}ME/x", look), "ME/x");
        assert_eq!(expand_env("a$\u{e9}", look), "a");
    }

    #[test]
    fn clean() {
        assert_eq!(clean_path(Path::new("/a/./b/../c/")), PathBuf::from("/a/c"));
        assert_eq!(clean_path(Path::new("/../a")), PathBuf::from("/a"));
        assert_eq!(clean_path(Path::new("a/../..")), PathBuf::from(".."));
    }
}
