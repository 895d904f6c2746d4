//! User namespaces and file permissions.
//!
//! A rootless store's layer files belong to the user's subordinate UIDs (format doc section 11);
//! outside podman's user namespace even the store's owner cannot read some of them.

/// Capability numbers from `linux/capability.h`.
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;

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

#[cfg(test)]
mod tests {
    use super::*;

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
