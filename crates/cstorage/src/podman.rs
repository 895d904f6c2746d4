//! What podman users type: the fields `--format` templates name (podman's, where the concept
//! is the same) and `images --filter`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};
use composefs_storage::{Image, Storage};
use serde_json::{Value, json};

use crate::fmt::{human_ago, human_size, rfc3339, short_id};

/// Go's `time.Time.String()` of a UTC time: `2024-01-02 03:04:05 +0000 UTC` (fractional
/// seconds, trailing zeros trimmed, when there are any).
pub fn go_time(t: SystemTime) -> String {
    // rfc3339 gives 2024-01-02T03:04:05.5Z
    let s = rfc3339(t);
    let s = s.trim_end_matches('Z').replacen('T', " ", 1);
    format!("{s} +0000 UTC")
}

/// `t` without its fraction of a second.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs())
}

/// Splits a stored name into podman's REPOSITORY and TAG columns.
pub fn split_name(n: &str) -> (String, String) {
    if let Some((repo, d)) = n.split_once('@') {
        return (repo.to_string(), d.get(..19).unwrap_or(d).to_string());
    }
    let slash = n.rfind('/').map(|i| i + 1).unwrap_or(0);
    match n[slash..].rfind(':') {
        Some(i) => (n[..slash + i].to_string(), n[slash + i + 1..].to_string()),
        None => (n.to_string(), "<none>".to_string()),
    }
}

/// `REPO@DIGEST` for each repository of the image's names and each of its digests, sorted
/// and each once, as libimage lists them.
fn repo_digests_of(i: &Image, names: &[String], out: &mut Vec<String>) {
    let digests = i.digests();
    for n in names {
        let repo = split_name(n).0;
        for d in &digests {
            out.push(format!("{repo}@{d}"));
        }
    }
    out.sort();
    out.dedup();
}

/// Headers of `images --format 'table ...'`: podman's for its fields (a name that is not a
/// field, such as `CreatedAt`, shows `<no value>`, as in podman).
pub const IMAGE_HEADERS: &[(&str, &str)] = &[
    ("ID", "IMAGE ID"),
    ("ParentId", "PARENT ID"),
    ("RepoTags", "REPO TAGS"),
    ("RepoDigests", "REPO DIGESTS"),
    ("Created", "CREATED"),
    ("Size", "SIZE"),
    ("SharedSize", "SHARED SIZE"),
    ("VirtualSize", "VIRTUAL SIZE"),
    ("Labels", "LABELS"),
    ("Containers", "CONTAINERS"),
    ("ReadOnly", "R/O"),
    ("Dangling", "DANGLING"),
    ("Names", "NAMES"),
    ("Digest", "DIGEST"),
    ("History", "HISTORY"),
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
];

/// What the image rows need besides each image: computed once per listing.
pub struct ImageContext {
    containers: HashMap<String, usize>,
    intermediate: BTreeSet<String>,
    parents: BTreeMap<String, String>,
}

impl ImageContext {
    pub fn new(storage: &Storage) -> Result<ImageContext> {
        let mut containers = HashMap::new();
        for c in storage.list_containers()? {
            if let Some(i) = &c.image {
                *containers.entry(i.clone()).or_insert(0) += 1;
            }
        }
        let lineage = storage.image_lineage()?;
        Ok(ImageContext {
            containers,
            intermediate: lineage.intermediate,
            parents: lineage.parents,
        })
    }

    /// Untagged and no child image (podman's `dangling`).
    pub fn is_dangling(&self, i: &Image) -> bool {
        i.names().is_empty() && !self.intermediate.contains(i.id())
    }

    /// Untagged with a child image (podman's `intermediate`).
    pub fn is_intermediate(&self, i: &Image) -> bool {
        self.intermediate.contains(i.id())
    }
}

/// The image's config labels (empty if it has no readable config).
pub fn labels(i: &Image) -> BTreeMap<String, String> {
    i.config()
        .ok()
        .and_then(|c| c.config().as_ref().and_then(|c| c.labels().clone()))
        .map(|l| l.into_iter().collect())
        .unwrap_or_default()
}

/// The rows `podman images` prints for an image: one per name (REPOSITORY and TAG split
/// from it), or one `<none>` row; each an object with podman's field names.
pub fn image_rows(i: &Image, ctx: &ImageContext) -> Vec<Value> {
    let created = i.created();
    let size = i.known_size();
    let labels = labels(i);
    let names = i.names().to_vec();
    let repo_tags: Vec<&String> = names.iter().filter(|n| !n.contains('@')).collect();
    let mut repo_digests = Vec::new();
    repo_digests_of(i, &names, &mut repo_digests);
    let base = json!({
        "ID": short_id(i.id()),
        "ParentId": ctx.parents.get(i.id()).cloned().unwrap_or_default(),
        "RepoTags": repo_tags,
        "RepoDigests": repo_digests,
        "Created": human_ago(created),
        // podman lists images with whole seconds.
        "CreatedAt": created.map(whole_seconds).map(go_time),
        "CreatedSince": human_ago(created),
        "CreatedTime": created.map(whole_seconds).map(go_time),
        "Size": size.map(human_size),
        "SharedSize": 0,
        "VirtualSize": size,
        "Labels": labels,
        "Containers": ctx.containers.get(i.id()).copied().unwrap_or(0),
        "ReadOnly": i.is_read_only(),
        "IsReadOnly": i.is_read_only(),
        "Dangling": ctx.is_dangling(i),
        "Names": names,
        "Digest": i.digest().map(|d| d.to_string()),
        "History": i.names_history().join(", "),
    });
    let with = |repo: String, tag: String| {
        let mut v = base.clone();
        v["Repository"] = repo.into();
        v["Tag"] = tag.into();
        v
    };
    let tagged: Vec<Value> = i
        .names()
        .iter()
        .map(|n| split_name(n))
        .map(|(r, t)| with(r, t))
        .collect();
    if tagged.is_empty() {
        vec![with("<none>".into(), "<none>".into())]
    } else {
        tagged
    }
}

/// Adds `extra` fields to the object `v` (which keeps its own).
fn merged(mut v: Value, extra: Value) -> Value {
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        for (k, x) in e {
            m.insert(k, x);
        }
    }
    v
}

/// `fixed` headers, then for every other field of `sample` (our JSON's snake_case fields) its
/// name in capitals with spaces (`diff_size` → `DIFF SIZE`).
pub fn headers_with_json(fixed: &[(&str, &str)], sample: Option<&Value>) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = fixed
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(Value::Object(m)) = sample {
        for k in m.keys() {
            if !h.iter().any(|(f, _)| f == k) {
                h.push((k.clone(), k.to_uppercase().replace('_', " ")));
            }
        }
    }
    h
}

/// Headers of `layers --format 'table ...'` for the fields named like the table's columns.
pub const LAYER_HEADERS: &[(&str, &str)] = &[
    ("ID", "LAYER ID"),
    ("Parent", "PARENT"),
    ("DiffDigest", "DIFF DIGEST"),
    ("Size", "SIZE"),
    ("Created", "CREATED"),
    ("Images", "IMAGES"),
];

/// A layer for templates: its JSON (`layers --format json`) plus the table's columns under
/// capitalized names (`ID` short, `Size` and `Created` human).
pub fn layer_row(summary: Value, l: &composefs_storage::Layer) -> Value {
    let images = summary
        .get("images")
        .and_then(Value::as_array)
        .map(|a| a.len())
        .unwrap_or(0);
    merged(
        summary,
        json!({
            "ID": short_id(l.id()),
            "Parent": l.parent_id().map(short_id).unwrap_or(""),
            "DiffDigest": l.diff_digest().map(|d| d.to_string()),
            "Size": l.diff_size().map(human_size).unwrap_or_else(|| "-".into()),
            "Created": human_ago(l.created()),
            "Images": images,
        }),
    )
}

/// Headers of `containers --format 'table ...'` (podman ps's, for its fields).
pub const CONTAINER_HEADERS: &[(&str, &str)] = &[
    ("ID", "CONTAINER ID"),
    ("Names", "NAMES"),
    ("Image", "IMAGE"),
    ("ImageID", "IMAGE ID"),
    ("Created", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("CreatedHuman", "CREATED"),
    ("RunningFor", "RUNNING FOR"),
    ("Labels", "LABELS"),
];

/// A container for templates: its JSON plus `podman ps` fields that c/storage's record
/// holds (the image name podman recorded in its metadata; the creation time of the storage
/// record, which is milliseconds after podman's own).
pub fn container_row(
    summary: Value,
    c: &composefs_storage::ContainerMetadata,
    storage: &Storage,
) -> Value {
    let meta: Value = c
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or(Value::Null);
    let labels = c
        .image
        .as_deref()
        .and_then(|i| storage.find_image(i).ok())
        .map(|i| labels(&i))
        .unwrap_or_default();
    let created = c.created_time();
    merged(
        summary,
        json!({
            "ID": short_id(&c.id),
            "Names": c.names.first().cloned().unwrap_or_default(),
            "Image": meta.get("image-name").cloned().unwrap_or(Value::from("")),
            "ImageID": c.image.as_deref().map(short_id).unwrap_or(""),
            "Created": created.map(go_time),
            "CreatedAt": created.map(go_time),
            "CreatedHuman": human_ago(created),
            "RunningFor": human_ago(created),
            "Labels": labels,
        }),
    )
}

/// An image for `image inspect --format`: its JSON plus `podman image inspect`'s fields.
pub fn inspect_row(detail: Value, i: &Image, parents: &BTreeMap<String, String>) -> Value {
    let cfg = detail.get("config").cloned().unwrap_or(Value::Null);
    let mut config = cfg.get("config").cloned().unwrap_or_else(|| json!({}));
    // Go's zero values for what podman's ImageConfig always has.
    for (k, zero) in [
        ("Cmd", json!([])),
        ("Entrypoint", json!([])),
        ("Env", json!([])),
        ("Labels", json!({})),
        ("ExposedPorts", json!({})),
        ("Volumes", json!({})),
        ("User", json!("")),
        ("WorkingDir", json!("")),
        ("StopSignal", json!("")),
    ] {
        if config.get(k).is_none_or(Value::is_null) {
            config[k] = zero;
        }
    }
    let names = i.names().to_vec();
    let mut repo_digests = Vec::new();
    repo_digests_of(i, &names, &mut repo_digests);
    let text = |k: &str| cfg.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let diff_ids = cfg
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .cloned()
        .unwrap_or_else(|| json!([]));
    merged(
        detail.clone(),
        json!({
            "Id": i.id(),
            "Digest": i.digest().map(|d| d.to_string()),
            "RepoTags": names.iter().filter(|n| !n.contains('@')).collect::<Vec<_>>(),
            "RepoDigests": repo_digests,
            "Parent": parents.get(i.id()).cloned().unwrap_or_default(),
            "Comment": text("comment"),
            "Created": i.created().map(go_time),
            "Config": config.clone(),
            "Version": text("docker_version"),
            "Author": text("author"),
            "Architecture": text("architecture"),
            "Os": text("os"),
            "Size": i.known_size(),
            "VirtualSize": i.known_size(),
            "Labels": config.get("Labels").cloned(),
            "Annotations": detail.get("manifest").and_then(|m| m.get("annotations")).cloned().unwrap_or_else(|| json!({})),
            "ManifestType": detail.get("manifest_type").cloned(),
            "User": config.get("User").cloned(),
            "RootFS": {"Type": "layers", "Layers": diff_ids},
            "History": cfg.get("history").cloned().unwrap_or_else(|| json!([])),
            "NamesHistory": i.names_history(),
        }),
    )
}

/// One `--filter KEY=VALUE` of `images`.
#[derive(Debug, Clone)]
pub enum ImageFilter {
    /// `reference=PATTERN`: a name matches the pattern (`*` and `?` wildcards; without a
    /// tag, any tag; without a domain, as podman normalizes).
    Reference(String),
    /// `dangling=true|false`.
    Dangling(bool),
    /// `intermediate=true|false`.
    Intermediate(bool),
    /// `label=KEY` or `label=KEY=VALUE`; `label!=...` negated.
    Label(String, Option<String>, bool),
    /// `before=IMAGE`: created before that image.
    Before(String),
    /// `since=IMAGE` (also `after=`): created after that image.
    Since(String),
    /// `id=PREFIX` (as podman 5; podman 4 wanted the whole ID).
    Id(String),
    /// `readonly=true|false`.
    ReadOnly(bool),
    /// `until=TIMESTAMP|DURATION`: created before that time.
    Until(SystemTime),
}

fn parse_bool(k: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => bail!("--filter {k}={v}: expected true or false"),
    }
}

/// `until=`: an RFC 3339 time, a Unix time, or a Go duration ago (`10m`, `2h`, `24h30m`).
fn parse_until(v: &str) -> Result<SystemTime> {
    if let Ok(secs) = v.parse::<f64>() {
        return Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)));
    }
    if let Some(t) = parse_rfc3339(v) {
        return Ok(t);
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut rest = v;
    while !rest.is_empty() {
        let c = rest.chars().next().unwrap_or('x');
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            rest = &rest[1..];
            continue;
        }
        let (unit, secs) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .into_iter()
        .find(|(u, _)| rest.starts_with(u))
        .ok_or_else(|| anyhow::anyhow!("--filter until={v}: not a time or a duration"))?;
        let n: f64 = num
            .parse()
            .map_err(|_| anyhow::anyhow!("--filter until={v}: not a time or a duration"))?;
        total += n * secs;
        num.clear();
        rest = &rest[unit.len()..];
    }
    if !num.is_empty() {
        bail!("--filter until={v}: a duration needs a unit (s, m, h)");
    }
    Ok(SystemTime::now() - Duration::from_secs_f64(total))
}

/// `2024-01-02T03:04:05(.frac)(Z|+hh:mm|-hh:mm)` (the library's parser, as for the
/// records' times), or a date alone (midnight UTC), as podman's `until=` takes them.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    if s.len() == 10 {
        composefs_storage::parse_rfc3339(&format!("{s}T00:00:00Z"))
    } else {
        composefs_storage::parse_rfc3339(s)
    }
}

impl ImageFilter {
    /// Parses `KEY=VALUE` with podman's keys.
    pub fn parse(s: &str) -> Result<ImageFilter> {
        if let Some(v) = s.strip_prefix("label!=") {
            let (k, val) = split_label(v);
            return Ok(ImageFilter::Label(k, val, true));
        }
        let Some((k, v)) = s.split_once('=') else {
            bail!("--filter {s:?}: expected KEY=VALUE");
        };
        Ok(match k {
            "reference" => ImageFilter::Reference(v.to_string()),
            "dangling" => ImageFilter::Dangling(parse_bool(k, v)?),
            "intermediate" => ImageFilter::Intermediate(parse_bool(k, v)?),
            "readonly" => ImageFilter::ReadOnly(parse_bool(k, v)?),
            "label" => {
                let (k, val) = split_label(v);
                ImageFilter::Label(k, val, false)
            }
            "before" => ImageFilter::Before(v.to_string()),
            "since" | "after" => ImageFilter::Since(v.to_string()),
            "id" => ImageFilter::Id(v.trim_start_matches("sha256:").to_string()),
            "until" => ImageFilter::Until(parse_until(v)?),
            other => bail!(
                "--filter {other}: unknown key (reference, dangling, intermediate, label, before, since, id, readonly, until)"
            ),
        })
    }

    fn key(&self) -> &'static str {
        match self {
            ImageFilter::Reference(_) => "reference",
            ImageFilter::Dangling(_) => "dangling",
            ImageFilter::Intermediate(_) => "intermediate",
            ImageFilter::Label(_, _, false) => "label",
            ImageFilter::Label(_, _, true) => "label!",
            ImageFilter::Before(_) => "before",
            ImageFilter::Since(_) => "since",
            ImageFilter::Id(_) => "id",
            ImageFilter::ReadOnly(_) => "readonly",
            ImageFilter::Until(_) => "until",
        }
    }
}

fn split_label(v: &str) -> (String, Option<String>) {
    match v.split_once('=') {
        Some((k, val)) => (k.to_string(), Some(val.to_string())),
        None => (v.to_string(), None),
    }
}

/// Shell-style match of `pat` (`*` any run, `?` one character; `*` does not cross `/`
/// as in Go's `path.Match`).
fn glob(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pat[1..], s) || (!s.is_empty() && s[0] != b'/' && glob(pat, &s[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&pat[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pat[1..], &s[1..]),
        _ => false,
    }
}

/// podman's `reference=` rule (libimage): the pattern is matched (Go's `path.Match`)
/// against each name in several forms: the full name, its path without the domain, its last
/// component, and, for a tagged or digested name, the same three without the tag or digest
/// and the path with it.
fn reference_matches(pattern: &str, name: &str) -> bool {
    let last = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    // The repository part ends where the tag or digest starts.
    let repo_end = match name.find('@') {
        Some(at) => at,
        None => {
            let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
            name[slash..]
                .rfind(':')
                .map(|i| slash + i)
                .unwrap_or(name.len())
        }
    };
    let (trimmed, suffix) = name.split_at(repo_end);
    // Stored names always carry their domain.
    let path = trimmed.split_once('/').map(|x| x.1).unwrap_or(trimmed);
    let mut candidates = vec![name.to_string(), path.to_string(), last(name)];
    if !suffix.is_empty() {
        candidates.push(trimmed.to_string());
        candidates.push(format!("{path}{suffix}"));
        candidates.push(last(trimmed));
    }
    candidates
        .iter()
        .any(|c| glob(pattern.as_bytes(), c.as_bytes()))
}

/// Images filtered as `podman images --filter` does: filters with the same key are
/// alternatives (any may match), different keys must all match.
pub fn filter_images(
    storage: &Storage,
    images: Vec<Image>,
    filters: &[ImageFilter],
    ctx: &ImageContext,
) -> Result<Vec<Image>> {
    if filters.is_empty() {
        return Ok(images);
    }
    // Reference times of before=/since= images.
    let mut times: HashMap<String, Option<SystemTime>> = HashMap::new();
    for f in filters {
        if let ImageFilter::Before(q) | ImageFilter::Since(q) = f {
            let img = storage.find_image(q)?;
            times.insert(q.clone(), img.created());
        }
    }
    let mut by_key: BTreeMap<&str, Vec<&ImageFilter>> = BTreeMap::new();
    for f in filters {
        by_key.entry(f.key()).or_default().push(f);
    }
    for (k, fs) in &by_key {
        let values: BTreeSet<String> = fs
            .iter()
            .filter_map(|f| match f {
                ImageFilter::Dangling(b)
                | ImageFilter::Intermediate(b)
                | ImageFilter::ReadOnly(b) => Some(b.to_string()),
                _ => None,
            })
            .collect();
        if values.len() > 1 {
            bail!("specifying {k:?} filter more than once with different values is not supported");
        }
    }
    let one = |i: &Image, f: &ImageFilter| -> bool {
        match f {
            ImageFilter::Reference(p) => i.names().iter().any(|n| reference_matches(p, n)),
            ImageFilter::Dangling(b) => ctx.is_dangling(i) == *b,
            ImageFilter::Intermediate(b) => ctx.is_intermediate(i) == *b,
            ImageFilter::ReadOnly(b) => i.is_read_only() == *b,
            ImageFilter::Label(k, v, negate) => {
                let l = labels(i);
                let m = match v {
                    Some(v) => l.get(k) == Some(v),
                    None => l.contains_key(k),
                };
                m != *negate
            }
            ImageFilter::Before(q) => match (i.created(), times.get(q).copied().flatten()) {
                (Some(a), Some(b)) => a < b,
                _ => false,
            },
            ImageFilter::Since(q) => match (i.created(), times.get(q).copied().flatten()) {
                (Some(a), Some(b)) => a > b,
                _ => false,
            },
            // podman 5 takes a prefix (podman 4 wanted the whole ID).
            ImageFilter::Id(p) => i.id().starts_with(p.as_str()),
            ImageFilter::Until(t) => i.created().is_some_and(|c| c < *t),
        }
    };
    Ok(images
        .into_iter()
        .filter(|i| {
            by_key.iter().all(|(k, fs)| {
                if *k == "label" || *k == "label!" {
                    // Every label filter must hold, as in podman 5 (podman 4 took any).
                    fs.iter().all(|f| one(i, f))
                } else {
                    fs.iter().any(|f| one(i, f))
                }
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_strings() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1704164645);
        assert_eq!(go_time(t), "2024-01-02 03:04:05 +0000 UTC");
        let t = t + Duration::from_millis(500);
        assert_eq!(go_time(t), "2024-01-02 03:04:05.5 +0000 UTC");
    }

    #[test]
    fn references_match_like_podman() {
        let n = "docker.io/library/alpine:3.19";
        assert!(reference_matches("alpine", n));
        assert!(reference_matches("alpine:3.19", n));
        assert!(!reference_matches("alpine:3.20", n));
        assert!(reference_matches("docker.io/library/alpine", n));
        assert!(reference_matches("library/alpine", n));
        assert!(reference_matches("library/alpine:3.19", n));
        assert!(reference_matches("alp*", n));
        assert!(reference_matches("*", "localhost/app:v1"));
        assert!(reference_matches("localhost/*", "localhost/app:v1"));
        assert!(!reference_matches("*/app", "quay.io/a/b/app:v1"));
        assert!(reference_matches("a/b/app", "quay.io/a/b/app@sha256:00"));
        assert!(!reference_matches("b/app", "quay.io/a/b/app@sha256:00"));
    }

    #[test]
    fn until_takes_times_and_durations() {
        let now = SystemTime::now();
        let t = parse_until("2h").unwrap();
        let d = now.duration_since(t).unwrap().as_secs();
        assert!((7199..=7201).contains(&d));
        assert_eq!(
            parse_until("1704164645").unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1704164645)
        );
        assert!(parse_until("2x").is_err());
        assert_eq!(
            parse_until("2024-01-02T04:04:05+01:00").unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1704164645)
        );
        assert_eq!(
            parse_until("2024-01-02").unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1704153600)
        );
    }
}
