//! Who this process is: its user namespace, its capabilities, and the subordinate ID ranges
//! (`/etc/subuid`, `/etc/subgid`) a rootless store's files are owned by.

use std::io;
use std::path::Path;
use std::sync::OnceLock;

pub(super) fn bypass_cached() -> bool {
    static B: OnceLock<bool> = OnceLock::new();
    *B.get_or_init(can_bypass_file_permissions)
}

/// A mapping of IDs between a user namespace and the host: `(inside, host, count)` ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdMap(Vec<(u32, u32, u32)>);

/// What the kernel shows for an ID that has no mapping (`/proc/sys/kernel/overflowuid`).
const OVERFLOW_ID: u32 = 65534;

impl IdMap {
    /// Rootless podman's mapping for the user `id`: `id` is 0 inside, and the subordinate
    /// ranges follow from 1.
    fn rootless(id: u32, ranges: &[(u32, u32)]) -> IdMap {
        let mut m = vec![(0, id, 1)];
        let mut next: u64 = 1;
        for &(start, count) in ranges {
            let Ok(inside) = u32::try_from(next) else {
                break;
            };
            m.push((inside, start, count));
            next += u64::from(count);
        }
        IdMap(m)
    }

    /// The ID inside the namespace of the host ID `host`; unmapped IDs show as the overflow ID,
    /// as the kernel shows them.
    pub(crate) fn to_inside(&self, host: u32) -> u32 {
        self.0
            .iter()
            .find(|&&(_, h, n)| host >= h && u64::from(host) < u64::from(h) + u64::from(n))
            .map_or(OVERFLOW_ID, |&(i, h, _)| i + (host - h))
    }
}

/// The UID and GID maps of rootless podman's user namespace for this user, when this process
/// is outside it (in the initial user namespace and not root). Files of a rootless store are
/// owned by the host side of these maps; the image's IDs are the inside.
pub(crate) fn rootless_id_maps() -> Option<&'static (IdMap, IdMap)> {
    static M: OnceLock<Option<(IdMap, IdMap)>> = OnceLock::new();
    M.get_or_init(|| {
        let uid = rustix::process::getuid().as_raw();
        if uid == 0 || !in_initial_user_namespace() {
            return None;
        }
        let gid = rustix::process::getgid().as_raw();
        let user = user_name(uid);
        let subuid = sub_ids(Path::new("/etc/subuid"), uid, user.as_deref()).unwrap_or_default();
        let subgid = sub_ids(Path::new("/etc/subgid"), uid, user.as_deref()).unwrap_or_default();
        Some((IdMap::rootless(uid, &subuid), IdMap::rootless(gid, &subgid)))
    })
    .as_ref()
}

/// The login name of `uid` from `/etc/passwd` (no NSS lookup: `newuidmap` reads `/etc/subuid`
/// by name or number, and so do we).
pub(super) fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    parse_user_name(&passwd, uid)
}

fn parse_user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// The subordinate ID ranges `(start, count)` of `uid`/`user` in `file` (`/etc/subuid` or
/// `/etc/subgid`), in file order. A missing file means no ranges.
pub(super) fn sub_ids(file: &Path, uid: u32, user: Option<&str>) -> io::Result<Vec<(u32, u32)>> {
    match std::fs::read_to_string(file) {
        Ok(s) => Ok(parse_sub_ids(&s, uid, user)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
    }
}

fn parse_sub_ids(text: &str, uid: u32, user: Option<&str>) -> Vec<(u32, u32)> {
    let uid = uid.to_string();
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let who = f.next()?;
            let start = f.next()?.trim().parse::<u32>().ok()?;
            let count = f.next()?.trim().parse::<u32>().ok()?;
            (f.next().is_none()
                && count > 0
                && (who == uid || Some(who) == user)
                && start.checked_add(count - 1).is_some())
            .then_some((start, count))
        })
        .collect()
}

/// Capability numbers from `linux/capability.h`.
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_ADMIN: u32 = 21;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// True if this process is in the initial user namespace (its UID map is the identity over
/// the whole 32-bit range).
pub fn in_initial_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(m) => {
            let f: Vec<&str> = m.split_whitespace().collect();
            f == ["0", "0", "4294967295"]
        }
        // Without /proc we cannot tell; assume the common case.
        Err(_) => true,
    }
}

/// True when this process can read every file of a store regardless of owner and mode:
/// it is in the initial user namespace and has `CAP_DAC_OVERRIDE` or `CAP_DAC_READ_SEARCH`
/// in its effective set (as root normally has). Inside a user namespace, capabilities only
/// apply to files owned by mapped IDs, so they do not count.
pub fn can_bypass_file_permissions() -> bool {
    if !in_initial_user_namespace() {
        return false;
    }
    match effective_caps() {
        Some(caps) => caps & ((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) != 0,
        None => rustix::process::geteuid().is_root(),
    }
}

/// True if this process can read `trusted.*` extended attributes (where a root-owned native
/// store marks opaque directories): `CAP_SYS_ADMIN` in its effective set while in the initial
/// user namespace (the kernel checks the capability there).
pub fn can_read_trusted_xattrs() -> bool {
    static R: OnceLock<bool> = OnceLock::new();
    *R.get_or_init(|| {
        effective_caps().is_some_and(|eff| eff & (1 << CAP_SYS_ADMIN) != 0)
            && in_initial_user_namespace()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_id_ranges_by_name_or_number() {
        let text = "alice:100000:65536\n1001:300000:10\nbob:200000:65536\n# comment\n\
                    alice:500000:0\nalice:x:1\nalice:4294967295:2\nalice:700000:5:extra\n";
        assert_eq!(
            parse_sub_ids(text, 1001, Some("alice")),
            vec![(100000, 65536), (300000, 10)]
        );
        assert_eq!(
            parse_sub_ids(text, 1002, Some("bob")),
            vec![(200000, 65536)]
        );
        assert!(parse_sub_ids(text, 1003, Some("carol")).is_empty());
        assert!(parse_sub_ids(text, 1003, None).is_empty());
    }

    #[test]
    fn rootless_maps_put_the_user_at_0_and_ranges_after() {
        let m = IdMap::rootless(1001, &[(100000, 65536), (300000, 10)]);
        assert_eq!(m.to_inside(1001), 0);
        assert_eq!(m.to_inside(100000), 1);
        assert_eq!(m.to_inside(100999), 1000);
        assert_eq!(m.to_inside(165535), 65536);
        assert_eq!(m.to_inside(300000), 65537);
        assert_eq!(m.to_inside(300009), 65546);
        // Not mapped: the overflow ID, as the kernel shows it.
        for host in [0, 1000, 165536, 300010, u32::MAX] {
            assert_eq!(m.to_inside(host), OVERFLOW_ID, "{host}");
        }
        assert_eq!(IdMap::rootless(5, &[]).to_inside(5), 0);
    }

    #[test]
    fn user_names_from_passwd() {
        let p = "root:x:0:0:root:/root:/bin/bash\nalice:x:1001:1001::/home/alice:/bin/sh\nbad\n";
        assert_eq!(parse_user_name(p, 1001).as_deref(), Some("alice"));
        assert_eq!(parse_user_name(p, 0).as_deref(), Some("root"));
        assert_eq!(parse_user_name(p, 7), None);
    }

    #[test]
    fn matches_what_the_kernel_allows() {
        // Whatever the answer, it must agree with an actual attempt to read a file that only
        // capabilities can open: mode 000, owned by someone else when we are not root.
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("secret");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        let readable = std::fs::read(&p).is_ok();
        assert_eq!(can_bypass_file_permissions(), readable);
    }
}
