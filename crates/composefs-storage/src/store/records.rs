//! The JSON records of a store: `layers.json`, `images.json`, `containers.json`.
//!
//! Field names are c/storage's JSON keys; unknown keys are ignored, `null` is accepted wherever
//! Go would accept it (Go decodes `null` into the zero value), and digests that do not parse are
//! dropped with a warning in the log rather than making the whole store unreadable.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use oci_spec::image::Digest;
use serde::{Deserialize, Deserializer, Serialize};

/// `null` or absent → `T::default()`, as Go's decoder does.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `null`, absent or `""` → `None`.
fn nonempty_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

fn parse_digest(s: &str) -> Option<Digest> {
    if s.is_empty() {
        return None;
    }
    match s.parse::<Digest>() {
        Ok(d) => Some(d),
        Err(e) => {
            log::warn!("ignoring invalid digest {s:?} in a record: {e}");
            None
        }
    }
}

/// A digest string; `""`/`null` and strings that are not digests → `None`.
fn lenient_digest<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Digest>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.and_then(|s| parse_digest(&s)))
}

/// A map of digests; entries whose value is not a digest are dropped.
fn lenient_digest_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Digest>, D::Error> {
    let m: Option<BTreeMap<String, Option<String>>> = Option::deserialize(d)?;
    Ok(m.unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.and_then(|v| parse_digest(&v)).map(|v| (k, v)))
        .collect())
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One ID mapping range (`uidmap` / `gidmap` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    /// First ID inside the container.
    pub container_id: u32,
    /// First ID on the host.
    pub host_id: u32,
    /// Number of IDs mapped.
    pub size: u32,
}

/// A layer record from `layers.json` or `volatile-layers.json` (format doc section 2.1).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct LayerMetadata {
    /// Layer ID (normally 64 hex characters).
    #[serde(deserialize_with = "null_default")]
    pub id: String,
    /// Optional names of the layer.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub names: Vec<String>,
    /// ID of the parent layer; `None` for base layers.
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub parent: Option<String>,
    /// Opaque caller-defined metadata.
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<String>,
    /// SELinux mount label.
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub mountlabel: Option<String>,
    /// Creation time, RFC 3339 as stored.
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub created: Option<String>,
    /// Digest of the blob the layer was created from (often the registry's compressed blob).
    #[serde(
        rename = "compressed-diff-digest",
        deserialize_with = "lenient_digest",
        skip_serializing_if = "Option::is_none"
    )]
    pub compressed_diff_digest: Option<Digest>,
    /// Size of that blob.
    #[serde(rename = "compressed-size", skip_serializing_if = "Option::is_none")]
    pub compressed_size: Option<i64>,
    /// Digest of the uncompressed layer tar: the OCI DiffID.
    #[serde(
        rename = "diff-digest",
        deserialize_with = "lenient_digest",
        skip_serializing_if = "Option::is_none"
    )]
    pub diff_digest: Option<Digest>,
    /// Length of the uncompressed layer tar (`-1` when only a TOC digest is known).
    #[serde(rename = "diff-size", skip_serializing_if = "Option::is_none")]
    pub diff_size: Option<i64>,
    /// Digest of the zstd:chunked / eStargz table of contents (partial pulls).
    #[serde(
        rename = "toc-digest",
        deserialize_with = "lenient_digest",
        skip_serializing_if = "Option::is_none"
    )]
    pub toc_digest: Option<Digest>,
    /// Compression of the input blob: 0 none, 1 bzip2, 2 gzip, 3 xz, 4 zstd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<i64>,
    /// Sorted UIDs used by the layer's files.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub uidset: Vec<u32>,
    /// Sorted GIDs used by the layer's files.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub gidset: Vec<u32>,
    /// Flags, e.g. `incomplete` or `expected-layer-diffid`.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub flags: BTreeMap<String, serde_json::Value>,
    /// UID mapping the files on disk were chowned with (usually absent).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub uidmap: Vec<IdMapping>,
    /// GID mapping the files on disk were chowned with (usually absent).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub gidmap: Vec<IdMapping>,
    /// Keys of the layer's big-data items.
    #[serde(
        rename = "big-data-names",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub big_data_names: Vec<String>,
    /// True for layers of a read-only (additional) store. Not stored in the file.
    #[serde(
        rename = "read-only",
        skip_deserializing,
        skip_serializing_if = "is_false"
    )]
    pub read_only: bool,
}

impl LayerMetadata {
    /// True if the record is flagged `incomplete` (being created or deleted).
    pub fn is_incomplete(&self) -> bool {
        matches!(
            self.flags.get("incomplete"),
            Some(serde_json::Value::Bool(true))
        )
    }

    /// The DiffID: `diff-digest`, or for layers pulled by TOC the
    /// `expected-layer-diffid` flag c/image records.
    pub fn diff_id(&self) -> Option<Digest> {
        self.diff_digest.clone().or_else(|| self.expected_diff_id())
    }

    /// The `expected-layer-diffid` flag, if set and valid.
    pub fn expected_diff_id(&self) -> Option<Digest> {
        match self.flags.get("expected-layer-diffid") {
            Some(serde_json::Value::String(s)) => parse_digest(s),
            _ => None,
        }
    }

    /// The uncompressed size, if c/storage's "size known" rule says it is valid
    /// (a `diff-digest` or `toc-digest` is set and the size is not negative).
    pub fn known_diff_size(&self) -> Option<u64> {
        if self.diff_digest.is_none() && self.toc_digest.is_none() {
            return None;
        }
        self.diff_size.and_then(|s| u64::try_from(s).ok())
    }

    /// The creation time, if recorded and parseable.
    pub fn created_time(&self) -> Option<SystemTime> {
        self.created.as_deref().and_then(parse_rfc3339)
    }
}

/// An image record from `images.json` (format doc section 2.2).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ImageMetadata {
    /// Image ID.
    #[serde(deserialize_with = "null_default")]
    pub id: String,
    /// The image's digest (for images pulled through a manifest list, the list's digest).
    #[serde(
        deserialize_with = "lenient_digest",
        skip_serializing_if = "Option::is_none"
    )]
    pub digest: Option<Digest>,
    /// Names (full normalized references).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub names: Vec<String>,
    /// Every name the image ever had, newest first.
    #[serde(
        rename = "names-history",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub names_history: Vec<String>,
    /// Top layer ID; `None` for images without layers (e.g. podman manifest lists).
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub layer: Option<String>,
    /// Copies of the top layer with other ID mappings.
    #[serde(
        rename = "mapped-layers",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub mapped_layers: Vec<String>,
    /// Opaque metadata (c/image writes signature sizes here).
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<String>,
    /// Keys of the big-data items.
    #[serde(
        rename = "big-data-names",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub big_data_names: Vec<String>,
    /// Sizes of the big-data items.
    #[serde(
        rename = "big-data-sizes",
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub big_data_sizes: BTreeMap<String, i64>,
    /// Digests of the big-data items (manifest digests for `manifest*` keys).
    #[serde(
        rename = "big-data-digests",
        deserialize_with = "lenient_digest_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub big_data_digests: BTreeMap<String, Digest>,
    /// Creation time, RFC 3339 as stored.
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub created: Option<String>,
    /// Opaque flags.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub flags: BTreeMap<String, serde_json::Value>,
    /// True for images of a read-only (additional) store. Not stored in the file.
    #[serde(
        rename = "read-only",
        skip_deserializing,
        skip_serializing_if = "is_false"
    )]
    pub read_only: bool,
}

impl ImageMetadata {
    /// c/storage's computed `Digests`: `digest`, then every `big-data-digests` value whose
    /// key starts with `manifest`, without duplicates.
    pub fn digests(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = Vec::new();
        let mut push = |d: &Digest| {
            if !out.contains(d) {
                out.push(d.clone());
            }
        };
        if let Some(d) = &self.digest {
            push(d);
        }
        for name in &self.big_data_names {
            if name.starts_with("manifest") {
                if let Some(d) = self.big_data_digests.get(name) {
                    push(d);
                }
            }
        }
        // Keys in the digest map but missing from big-data-names (inconsistent records).
        for (k, d) in &self.big_data_digests {
            if k.starts_with("manifest") {
                push(d);
            }
        }
        out
    }

    /// The creation time, if recorded and parseable.
    pub fn created_time(&self) -> Option<SystemTime> {
        self.created.as_deref().and_then(parse_rfc3339)
    }
}

/// A container record from `containers.json` or `volatile-containers.json` (section 2.3).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ContainerMetadata {
    /// Container ID.
    #[serde(deserialize_with = "null_default")]
    pub id: String,
    /// Names.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub names: Vec<String>,
    /// Image ID the container was created from (may be empty).
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub image: Option<String>,
    /// The container's read-write layer.
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub layer: Option<String>,
    /// podman/buildah metadata (JSON text).
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<String>,
    /// Keys of the big-data items.
    #[serde(
        rename = "big-data-names",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub big_data_names: Vec<String>,
    /// Sizes of the big-data items.
    #[serde(
        rename = "big-data-sizes",
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub big_data_sizes: BTreeMap<String, i64>,
    /// Digests of the big-data items.
    #[serde(
        rename = "big-data-digests",
        deserialize_with = "lenient_digest_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub big_data_digests: BTreeMap<String, Digest>,
    /// Creation time, RFC 3339 as stored.
    #[serde(
        deserialize_with = "nonempty_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub created: Option<String>,
    /// The container's UID mapping.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub uidmap: Vec<IdMapping>,
    /// The container's GID mapping.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub gidmap: Vec<IdMapping>,
    /// Flags (`MountLabel`, `ProcessLabel`, `MountOpts`, `Volatile`).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub flags: BTreeMap<String, serde_json::Value>,
}

impl ContainerMetadata {
    /// The creation time, if recorded and parseable.
    pub fn created_time(&self) -> Option<SystemTime> {
        self.created.as_deref().and_then(parse_rfc3339)
    }
}

/// Parses an RFC 3339 time as Go writes it (`2024-01-02T03:04:05.123456789Z`, or with a
/// `+hh:mm` offset): the times in c/storage's records and in image configs. Returns `None`
/// for anything else; times before 1970 are clamped to it.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let mut n: u32 = 0;
        for (k, c) in frac.bytes().take(9).enumerate() {
            n += u32::from(c - b'0') * 10u32.pow(8 - k as u32);
        }
        nanos = n;
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            let o = h * 3600 + m * 60;
            if sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    // Days from civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + hour * 3600 + min * 60 + sec - offset_secs;
    if secs < 0 {
        return Some(SystemTime::UNIX_EPOCH);
    }
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_record_from_a_real_store() {
        let j = r#"[{"id":"fd45","created":"2026-11-28T00:34:09.715903045Z","compressed-diff-digest":"sha256:9239929c6ac0cfe2653399c922f448154cffd3a60d92e817be651057f582fe90","compressed-size":156,"diff-digest":"sha256:fd458a798dbf6a3c0a4b4b6b73af0fc6379309cd79f43b1caecb2193b2ff93ac","diff-size":3072,"compression":2,"uidset":[0],"gidset":[0],"future-key":{"x":1}}]"#;
        let v: Vec<LayerMetadata> = serde_json::from_str(j).unwrap();
        let l = &v[0];
        assert_eq!(l.id, "fd45");
        assert_eq!(l.diff_size, Some(3072));
        assert_eq!(l.compression, Some(2));
        assert_eq!(l.known_diff_size(), Some(3072));
        assert!(l.parent.is_none());
        assert!(!l.is_incomplete());
        assert_eq!(
            l.diff_id().unwrap().to_string(),
            "sha256:fd458a798dbf6a3c0a4b4b6b73af0fc6379309cd79f43b1caecb2193b2ff93ac"
        );
    }

    #[test]
    fn nulls_and_empty_strings_are_go_zero_values() {
        let j = r#"{"id":"a","names":null,"parent":"","diff-digest":"","uidset":null,"flags":null,"big-data-names":null}"#;
        let l: LayerMetadata = serde_json::from_str(j).unwrap();
        assert!(l.names.is_empty() && l.parent.is_none() && l.diff_digest.is_none());
        let j = r#"{"id":"a","digest":"not-a-digest","big-data-digests":{"manifest":"junk","x":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#;
        let i: ImageMetadata = serde_json::from_str(j).unwrap();
        assert!(i.digest.is_none());
        assert_eq!(i.big_data_digests.len(), 1);
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(serde_json::from_str::<LayerMetadata>(r#"{"id":5}"#).is_err());
        assert!(serde_json::from_str::<LayerMetadata>(r#"{"id":"a","diff-size":"x"}"#).is_err());
        assert!(serde_json::from_str::<ImageMetadata>(r#"{"id":"a","names":"x"}"#).is_err());
    }

    #[test]
    fn flags() {
        let l: LayerMetadata = serde_json::from_str(
            r#"{"id":"a","flags":{"incomplete":true,"expected-layer-diffid":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#,
        )
        .unwrap();
        assert!(l.is_incomplete());
        assert_eq!(l.diff_id(), l.expected_diff_id());
        assert!(l.diff_id().is_some());
        assert_eq!(l.known_diff_size(), None);
    }

    #[test]
    fn image_digests_are_computed_like_c_storage() {
        let j = r#"{"id":"a","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111",
            "big-data-names":["sha256:3333333333333333333333333333333333333333333333333333333333333333","manifest-sha256:2222222222222222222222222222222222222222222222222222222222222222","manifest"],
            "big-data-digests":{"manifest":"sha256:2222222222222222222222222222222222222222222222222222222222222222",
              "manifest-sha256:2222222222222222222222222222222222222222222222222222222222222222":"sha256:2222222222222222222222222222222222222222222222222222222222222222",
              "sha256:3333333333333333333333333333333333333333333333333333333333333333":"sha256:3333333333333333333333333333333333333333333333333333333333333333"}}"#;
        let i: ImageMetadata = serde_json::from_str(j).unwrap();
        let d: Vec<String> = i.digests().iter().map(|d| d.to_string()).collect();
        assert_eq!(
            d,
            [
                "sha256:1111111111111111111111111111111111111111111111111111111111111111",
                "sha256:2222222222222222222222222222222222222222222222222222222222222222"
            ]
        );
    }

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339("2026-11-28T00:34:09.715903045Z").unwrap();
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1795826049);
        assert_eq!(d.subsec_nanos(), 715903045);
        let t2 = parse_rfc3339("2026-11-28T01:34:09.715903045+01:00").unwrap();
        assert_eq!(t, t2);
        assert_eq!(
            parse_rfc3339("0001-01-01T00:00:00Z"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:01.5Z").unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1500)
        );
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-28 00:34:09",
            "2026-11-28T00:34:09.Z",
            "2026-11-28T00:34:09Zx",
            "२०२६-11-28T00:34:09Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
