//! What the registry serves, read from the store (blocking; called on blocking threads).
//!
//! Request names only ever reach the store as keys compared with the store's own names,
//! and digests as values compared with the records' digests: no part of a request becomes a
//! path.

use std::collections::BTreeMap;

use composefs_storage::image_export::uncompressed_manifest;
use composefs_storage::manifest::{MEDIA_TYPE_OCI_MANIFEST, sha256_digest};
use composefs_storage::reference::Reference;
use composefs_storage::{Digest, Image, Layer, Storage, StorageError};

/// What the server exposes and how mirror requests are resolved.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Patterns (`*` and `?` wildcards) of the names exposed; all if empty.
    pub images: Vec<String>,
    /// Registries this server mirrors: a request name not found as is is looked up under
    /// each of them in turn.
    pub mirror_of: Vec<String>,
}

/// A spec error code with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 404: no such repository.
    NameUnknown,
    /// 400: not a repository name.
    NameInvalid,
    /// 404: no such manifest (tag or digest).
    ManifestUnknown,
    /// 404: no such blob.
    BlobUnknown,
    /// 400: not a digest.
    DigestInvalid,
    /// 405/404: not something this registry does.
    Unsupported,
    /// 401.
    Unauthorized,
}

impl Code {
    /// The spec's name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::Unsupported => "UNSUPPORTED",
            Code::Unauthorized => "UNAUTHORIZED",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> u16 {
        match self {
            Code::NameUnknown | Code::ManifestUnknown | Code::BlobUnknown => 404,
            Code::NameInvalid | Code::DigestInvalid => 400,
            Code::Unsupported => 405,
            Code::Unauthorized => 401,
        }
    }
}

/// A registry error: a spec code and a message, or a store failure (500).
#[derive(Debug)]
pub enum Error {
    /// An error the spec names.
    Spec(Code, String),
    /// The store could not be read.
    Store(StorageError),
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Store(e)
    }
}

type R<T> = std::result::Result<T, Error>;

fn spec<T>(code: Code, msg: impl Into<String>) -> R<T> {
    Err(Error::Spec(code, msg.into()))
}

/// `*` matches any run of characters (also `/`), `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with one backtrack point (linear in practice, no recursion).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// True if `name` is a repository name as the distribution spec allows it: lower-case
/// components of `[a-z0-9]` separated by `.`, `_`, `__` or dashes, joined by `/`. The
/// first component may also be a registry host with a port (`localhost:5000`), as stored
/// names can be. Never `.`/`..`, never `%`.
pub fn valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    name.split('/').enumerate().all(|(i, comp)| {
        let comp = if i == 0 {
            match comp.split_once(':') {
                Some((host, port)) => {
                    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                        return false;
                    }
                    host
                }
                None => comp,
            }
        } else {
            comp
        };
        let b = comp.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
            && !comp.contains("..")
            && !comp.contains("___")
    })
}

/// True if `tag` is a tag as the spec allows it.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

/// A served manifest.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Their sha256.
    pub digest: Digest,
    /// Its media type.
    pub media_type: &'static str,
    /// The image it is the manifest of.
    pub image_id: String,
}

/// A served blob.
pub enum Blob {
    /// A config blob, in memory.
    Config(Vec<u8>),
    /// A layer, rebuilt on demand; its size if known.
    Layer(Box<Layer>, Option<u64>),
}

/// The exposed repositories: name → tag → image ID, and the images by ID.
pub struct View {
    repos: BTreeMap<String, BTreeMap<String, String>>,
    images: BTreeMap<String, Image>,
}

impl View {
    /// Reads the store's images and keeps those whose names `policy` exposes.
    pub fn load(storage: &Storage, policy: &Policy) -> R<View> {
        let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut images = BTreeMap::new();
        for img in storage.list_images()? {
            for n in img.names() {
                if !policy.images.is_empty() && !policy.images.iter().any(|p| glob_match(p, n)) {
                    continue;
                }
                let Ok(r) = Reference::parse_normalized(n) else {
                    continue;
                };
                let repo = r.repository();
                if !valid_name(&repo) {
                    continue;
                }
                let tags = repos.entry(repo).or_default();
                if let Some(t) = r.tag() {
                    tags.insert(t.to_string(), img.id().to_string());
                }
                images.insert(img.id().to_string(), img.clone());
            }
        }
        Ok(View { repos, images })
    }

    /// Every exposed repository, sorted.
    pub fn repositories(&self) -> impl Iterator<Item = &String> {
        self.repos.keys()
    }

    /// The stored repository a request name means: the name itself; with `ns` (containerd's
    /// mirror parameter) `ns/name`; else under each `--mirror-of` registry. For docker.io,
    /// a one-component name also under `library/`.
    pub fn resolve(&self, name: &str, ns: Option<&str>, policy: &Policy) -> R<String> {
        if !valid_name(name) {
            return spec(
                Code::NameInvalid,
                format!("invalid repository name {name:?}"),
            );
        }
        if self.repos.contains_key(name) {
            return Ok(name.to_string());
        }
        let domains: Vec<&str> = match ns {
            Some(ns) => vec![ns],
            None => policy.mirror_of.iter().map(String::as_str).collect(),
        };
        for d in domains {
            let mut candidates = vec![format!("{d}/{name}")];
            if (d == "docker.io" || d == "registry-1.docker.io") && !name.contains('/') {
                candidates.push(format!("docker.io/library/{name}"));
            }
            if d == "registry-1.docker.io" {
                candidates.push(format!("docker.io/{name}"));
            }
            if let Some(c) = candidates.into_iter().find(|c| self.repos.contains_key(c)) {
                return Ok(c);
            }
        }
        spec(
            Code::NameUnknown,
            format!("repository {name:?} is not known"),
        )
    }

    /// The tags of a repository, sorted.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        self.repos
            .get(repo)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The images with a name in `repo`.
    fn images_of(&self, repo: &str) -> Vec<&Image> {
        let mut ids: Vec<&String> = self
            .repos
            .get(repo)
            .map(|t| t.values().collect())
            .unwrap_or_default();
        // Images named only by digest in this repository.
        for (id, img) in &self.images {
            if img
                .names()
                .iter()
                .any(|n| Reference::parse_normalized(n).is_ok_and(|r| r.repository() == repo))
            {
                ids.push(id);
            }
        }
        ids.sort();
        ids.dedup();
        ids.iter().filter_map(|id| self.images.get(*id)).collect()
    }

    /// The manifest for a tag or a digest in `repo`.
    pub fn manifest(&self, repo: &str, reference: &str) -> R<ServedManifest> {
        if reference.contains(':') {
            let Ok(digest) = reference.parse::<Digest>() else {
                return spec(Code::DigestInvalid, format!("invalid digest {reference:?}"));
            };
            for img in self.images_of(repo) {
                // Images whose manifest cannot be served (lists, odd layers) are skipped.
                match served_manifest(img) {
                    Ok(m) if m.digest == digest => return Ok(m),
                    Ok(_) => {}
                    Err(e) => log::debug!("image {}: {e:?}", img.id()),
                }
            }
            return spec(
                Code::ManifestUnknown,
                format!("no manifest {digest} in {repo}"),
            );
        }
        if !valid_tag(reference) {
            return spec(
                Code::ManifestUnknown,
                format!("invalid tag {reference:?} in {repo}"),
            );
        }
        let Some(id) = self.repos.get(repo).and_then(|t| t.get(reference)) else {
            return spec(
                Code::ManifestUnknown,
                format!("no tag {reference:?} in {repo}"),
            );
        };
        let img = &self.images[id];
        match served_manifest(img) {
            Ok(m) => Ok(m),
            Err(Error::Store(e)) => spec(
                Code::ManifestUnknown,
                format!("{repo}:{reference} cannot be served: {e}"),
            ),
            Err(e) => Err(e),
        }
    }

    /// A blob of `repo`'s images by digest: a config or a layer (by DiffID).
    pub fn blob(&self, repo: &str, digest: &str) -> R<Blob> {
        let Ok(digest) = digest.parse::<Digest>() else {
            return spec(Code::DigestInvalid, format!("invalid digest {digest:?}"));
        };
        let images = self.images_of(repo);
        for img in &images {
            if img.config_digest().ok().as_ref() == Some(&digest) {
                return Ok(Blob::Config(img.config_bytes()?));
            }
        }
        for img in &images {
            let Ok(layers) = img.layers() else { continue };
            if let Some(l) = layers
                .into_iter()
                .find(|l| l.diff_id() == Some(digest.clone()))
            {
                if let Some(reason) = l.not_reproducible_reason()? {
                    return spec(Code::BlobUnknown, format!("layer {}: {reason}", l.id()));
                }
                let size = l.diff_size();
                return Ok(Blob::Layer(Box::new(l), size));
            }
        }
        spec(Code::BlobUnknown, format!("no blob {digest} in {repo}"))
    }
}

/// The manifest served for an image (see [`uncompressed_manifest`]). An image with a layer
/// whose tar cannot be rebuilt (a partial pull known by its table of contents) is not served,
/// so that a client falls back to another mirror or the registry instead of failing halfway.
pub fn served_manifest(img: &Image) -> R<ServedManifest> {
    let bytes = uncompressed_manifest(img)?;
    for l in img.layers()? {
        if let Some(reason) = l.not_reproducible_reason()? {
            return spec(
                Code::ManifestUnknown,
                format!("image {}: layer {}: {reason}", img.id(), l.id()),
            );
        }
    }
    Ok(ServedManifest {
        digest: sha256_digest(&bytes),
        bytes,
        media_type: MEDIA_TYPE_OCI_MANIFEST,
        image_id: img.id().to_string(),
    })
}

/// One page of a sorted list: the entries after `last`, at most `n`; and whether more follow.
pub fn page<'a>(
    all: impl Iterator<Item = &'a String>,
    last: Option<&str>,
    n: Option<usize>,
) -> (Vec<String>, bool) {
    let mut it = all
        .filter(|s| last.is_none_or(|l| s.as_str() > l))
        .peekable();
    let mut out = Vec::new();
    while let Some(s) = it.peek() {
        if n.is_some_and(|n| out.len() >= n) {
            break;
        }
        out.push((*s).clone());
        it.next();
    }
    let more = it.peek().is_some();
    (out, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "docker.io/library/alpine:latest"));
        assert!(glob_match("localhost/*", "localhost/app:v1"));
        assert!(!glob_match(
            "localhost/*",
            "docker.io/library/alpine:latest"
        ));
        assert!(glob_match("*alpine:3.?", "docker.io/library/alpine:3.9"));
        assert!(!glob_match("*alpine:3.?", "docker.io/library/alpine:3.19"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn names() {
        for ok in [
            "docker.io/library/alpine",
            "localhost/app",
            "localhost:5000/a/b",
            "quay.io/a_b/c__d/e--f",
            "x",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            "a/../b",
            "a/./b",
            "%2e%2e/x",
            "a%2fb",
            "a//b",
            "/a",
            "a/",
            "A/b",
            "a/b:1",
            "localhost:/a",
            "-a",
            "a-",
            "a/b\0",
            "a\\b",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_tag("latest") && valid_tag("v1.2-rc_3") && valid_tag("_x"));
        assert!(!valid_tag("") && !valid_tag(".x") && !valid_tag("a/b") && !valid_tag("a:b"));
        assert!(!valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn pages() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(page(all.iter(), None, None), (all.clone(), false));
        assert_eq!(
            page(all.iter(), None, Some(2)),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            page(all.iter(), Some("b"), Some(2)),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(page(all.iter(), Some("d"), Some(2)), (vec![], false));
        assert_eq!(page(all.iter(), None, Some(0)), (vec![], true));
        assert_eq!(
            page(all.iter(), Some("bb"), None),
            (vec!["c".into(), "d".into()], false)
        );
    }
}
