//! HTTP Basic authentication against an htpasswd file with bcrypt entries (as distribution's
//! registry reads it: `user:$2y$...`, one per line, `#` comments).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

/// Users and their bcrypt hashes, and the credentials already checked.
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// sha256 of `Authorization` values already verified (bcrypt is slow on purpose; a client
    /// sends the same header with every request).
    ok: Mutex<HashSet<[u8; 32]>>,
}

/// Reads an htpasswd file; lines that are not `user:bcrypt-hash` are an error naming the line.
pub fn load(path: &Path) -> Result<Htpasswd, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(text: &str) -> Result<Htpasswd, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("line {}: expected user:hash", i + 1));
        };
        if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            return Err(format!(
                "line {}: the entry for {user:?} is not a bcrypt hash (htpasswd -B)",
                i + 1
            ));
        }
        users.insert(user.to_string(), hash.to_string());
    }
    if users.is_empty() {
        return Err("no users".into());
    }
    Ok(Htpasswd {
        users,
        ok: Mutex::new(HashSet::new()),
    })
}

impl Htpasswd {
    /// True if the `Authorization` header value names a user with the right password.
    /// Blocking (bcrypt): call on a blocking thread.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let key: [u8; 32] = Sha256::digest(value).into();
        if self.ok.lock().is_ok_and(|s| s.contains(&key)) {
            return true;
        }
        let Some(b64) = value
            .strip_prefix(b"Basic ")
            .or_else(|| value.strip_prefix(b"basic "))
        else {
            return false;
        };
        let Some(decoded) = base64_decode(b64.trim_ascii()) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return false;
        };
        let good = self
            .users
            .get(user)
            .is_some_and(|h| bcrypt::verify(password, h).unwrap_or(false));
        if good {
            if let Ok(mut s) = self.ok.lock() {
                // Bounded: a few distinct credentials are normal, thousands are not kept.
                if s.len() > 1024 {
                    s.clear();
                }
                s.insert(key);
            }
        }
        good
    }
}

/// Standard base64 (with or without padding).
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.strip_suffix(b"==").or(s.strip_suffix(b"=")).unwrap_or(s);
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | val(c)?;
        }
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode(b"dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
        assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode(b"YWI").unwrap(), b"ab");
        assert!(base64_decode(b"Y").is_none());
        assert!(base64_decode(b"a*b=").is_none());
    }

    #[test]
    fn htpasswd() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let h = parse(&format!("# comment\n\nalice:{hash}\n")).unwrap();
        assert!(h.check(Some(b"Basic YWxpY2U6c2VjcmV0"))); // alice:secret
        assert!(h.check(Some(b"Basic YWxpY2U6c2VjcmV0"))); // cached
        assert!(!h.check(Some(b"Basic YWxpY2U6d3Jvbmc="))); // alice:wrong
        assert!(!h.check(Some(b"Basic Ym9iOnNlY3JldA=="))); // bob:secret
        assert!(!h.check(Some(b"Bearer x")));
        assert!(!h.check(None));
        assert!(parse("alice:{SHA}abc").is_err());
        assert!(parse("nocolon").is_err());
        assert!(parse("# only comments\n").is_err());
    }
}
