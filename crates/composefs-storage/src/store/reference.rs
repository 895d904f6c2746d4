//! Image references (`[domain/]path[:tag][@digest]`) and their normalization.
//!
//! The grammar and the normalization rules are those of the Docker distribution reference
//! library that c/image uses (`ParseNormalizedNamed` + `TagNameOnly`):
//! the domain is `docker.io` unless the first component contains `.` or `:`, is `localhost`,
//! or has upper-case letters; `index.docker.io` becomes `docker.io`; a one-component docker.io
//! repository gets `library/`; `:latest` is added when there is neither tag nor digest.

use std::fmt;

use crate::error::{Result, StorageError};

/// The registry used when a reference names none.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

fn err(reference: &str, reason: impl Into<String>) -> StorageError {
    StorageError::InvalidReference {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `path-component := [a-z0-9]+ (separator [a-z0-9]+)*`, `separator := [_.] | __ | -+`.
fn valid_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run.
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `domain := host (":" port)?` with host a dotted list of `[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?`
/// labels or a bracketed IPv6 address.
fn valid_domain(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return false;
        };
        let ip = &rest[..end];
        if ip.is_empty() || !ip.bytes().all(|c| c.is_ascii_hexdigit() || c == b':') {
            return false;
        }
        let after = &rest[end + 1..];
        (
            None,
            if after.is_empty() {
                None
            } else {
                Some(after.strip_prefix(':'))
            },
        )
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(Some(p))),
            None => (Some(s), None),
        }
    };
    if let Some(port) = port {
        match port {
            Some(p) if !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) => {}
            _ => return false,
        }
    }
    if let Some(host) = host {
        if host.is_empty() {
            return false;
        }
        for label in host.split('.') {
            let b = label.as_bytes();
            if b.is_empty()
                || !b[0].is_ascii_alphanumeric()
                || !b[b.len() - 1].is_ascii_alphanumeric()
                || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            {
                return false;
            }
        }
    }
    true
}

/// `tag := [\w][\w.-]{0,127}`.
fn valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|c| word(*c) || *c == b'.' || *c == b'-')
}

/// `digest := algorithm ":" encoded`, algorithm components `[a-z0-9]+` joined by `[+._-]`,
/// encoded `[a-zA-Z0-9=_-]+`; sha256 must be 64 lower-case hex characters.
fn valid_digest(s: &str) -> bool {
    let Some((alg, enc)) = s.split_once(':') else {
        return false;
    };
    let alg_ok = !alg.is_empty()
        && alg.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    let enc_ok = !enc.is_empty()
        && enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-');
    if !(alg_ok && enc_ok) {
        return false;
    }
    match alg {
        "sha256" => enc.len() == 64 && enc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "sha512" => enc.len() == 128 && enc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        _ => true,
    }
}

/// True if `s` is 64 lower-case hex characters (an image or layer ID).
pub fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Reference {
    /// Parses a reference as the user would type it and normalizes it
    /// (`alpine` → `docker.io/library/alpine`; no tag is added, see [`Reference::with_default_tag`]).
    pub fn parse_normalized(s: &str) -> Result<Reference> {
        if is_full_id(s) {
            return Err(err(s, "cannot specify 64-byte hexadecimal strings"));
        }
        if s.is_empty() {
            return Err(err(s, "empty reference"));
        }
        // Split off the digest, then the tag (a ':' after the last '/').
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !valid_digest(d) {
                    return Err(err(s, format!("invalid digest {d:?}")));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name_tag[last_slash..].find(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(name_tag[last_slash + i + 1..].to_string()),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(err(s, format!("invalid tag {t:?}")));
            }
        }
        // splitDockerDomain.
        let (mut domain, mut path) = match name.find('/') {
            Some(i) => {
                let first = &name[..i];
                if !first.contains(['.', ':'])
                    && first != "localhost"
                    && first.to_ascii_lowercase() == first
                {
                    (DEFAULT_DOMAIN.to_string(), name.to_string())
                } else {
                    (first.to_string(), name[i + 1..].to_string())
                }
            }
            None => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if domain == LEGACY_DEFAULT_DOMAIN {
            domain = DEFAULT_DOMAIN.into();
        }
        if domain == DEFAULT_DOMAIN && !path.contains('/') {
            path = format!("{OFFICIAL_REPO_PREFIX}{path}");
        }
        if path.to_ascii_lowercase() != path {
            return Err(err(
                s,
                format!("repository name ({path}) must be lowercase"),
            ));
        }
        if !valid_domain(&domain) {
            return Err(err(s, format!("invalid domain {domain:?}")));
        }
        if path.split('/').any(|c| !valid_path_component(c)) {
            return Err(err(s, "invalid reference format"));
        }
        if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(err(
                s,
                "repository name must not be more than 255 characters",
            ));
        }
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// Adds the `latest` tag if the reference has neither a tag nor a digest.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".into());
        }
        self
    }

    /// The registry (`docker.io`, `quay.io`, `localhost`, `host:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry (`library/alpine`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The repository name: `domain/path`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`sha256:...`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// True if `s`, as the user typed it, named no registry (a "short name"), so that podman
    /// would also try `localhost/` and search registries.
    pub fn is_short_name(s: &str) -> bool {
        let name = s.split('@').next().unwrap_or(s);
        match name.find('/') {
            None => true,
            Some(i) => {
                let first = &name[..i];
                !first.contains(['.', ':'])
                    && first != "localhost"
                    && first.to_ascii_lowercase() == first
            }
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse_normalized(s)
            .unwrap()
            .with_default_tag()
            .to_string()
    }

    #[test]
    fn normalization() {
        assert_eq!(norm("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("alpine:3.19"), "docker.io/library/alpine:3.19");
        assert_eq!(norm("library/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("user/repo"), "docker.io/user/repo:latest");
        assert_eq!(
            norm("index.docker.io/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(norm("quay.io/fedora/fedora:40"), "quay.io/fedora/fedora:40");
        assert_eq!(norm("localhost/base"), "localhost/base:latest");
        assert_eq!(norm("localhost:5000/a/b:c"), "localhost:5000/a/b:c");
        assert_eq!(norm("Registry/a"), "Registry/a:latest");
        assert_eq!(norm("[::1]:5000/x"), "[::1]:5000/x:latest");
        let d = "sha256:095125f5d59791f9b97dd2e3857fb2bcf87b83f72d6a890afa68bc590e26fac7";
        assert_eq!(
            norm(&format!("alpine@{d}")),
            format!("docker.io/library/alpine@{d}")
        );
        assert_eq!(
            norm(&format!("alpine:1@{d}")),
            format!("docker.io/library/alpine:1@{d}")
        );
        let r = Reference::parse_normalized(&format!("quay.io/a/b@{d}")).unwrap();
        assert_eq!(r.repository(), "quay.io/a/b");
        assert_eq!(r.digest(), Some(d));
        assert_eq!(r.tag(), None);
    }

    #[test]
    fn invalid() {
        for bad in [
            "",
            "Alpine",
            "a/B",
            "alpine:",
            "alpine:-x",
            "alpine@sha256:abc",
            "a//b",
            "a/b/",
            "-a",
            "a..b",
            "095125f5d59791f9b97dd2e3857fb2bcf87b83f72d6a890afa68bc590e26fac7",
            "host:port/x",
        ] {
            assert!(
                Reference::parse_normalized(bad).is_err(),
                "{bad:?} must be rejected"
            );
        }
        let long = format!("quay.io/{}", "a".repeat(250));
        assert!(Reference::parse_normalized(&long).is_err());
    }

    #[test]
    fn separators() {
        assert!(valid_path_component("a_b"));
        assert!(valid_path_component("a__b"));
        assert!(valid_path_component("a---b"));
        assert!(valid_path_component("a.b"));
        assert!(!valid_path_component("a___b"));
        assert!(!valid_path_component("a._b"));
        assert!(!valid_path_component("a_"));
    }

    #[test]
    fn short_names() {
        assert!(Reference::is_short_name("alpine"));
        assert!(Reference::is_short_name("user/repo:1"));
        assert!(!Reference::is_short_name("localhost/x"));
        assert!(!Reference::is_short_name("quay.io/x"));
    }
}
