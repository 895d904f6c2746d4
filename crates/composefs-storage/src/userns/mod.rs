//! User namespaces and file permissions.
//!
//! A rootless store's layer files belong to the user's subordinate UIDs (format doc section 11);
//! outside podman's user namespace even the store's owner cannot read some of them (`/etc/shadow`
//! owned by container root with mode 0600 is fine, but a 0600 file or a 0700 directory owned by
//! a container user is not).
//!
//! The library can read those through a helper process. The helper runs in a new user
//! namespace that maps the user's `/etc/subuid` and `/etc/subgid` ranges exactly as rootless
//! podman does (written with `newuidmap`/`newgidmap`), where it may open every file of the
//! store; it hands back file descriptors over a Unix socket (`SCM_RIGHTS`), so content is never
//! copied through it. It is started the first time an open beneath a store root fails with
//! `EACCES`, and asked only for what failed: world-readable files are opened directly. It opens
//! read-only and only beneath the store roots (fd-relative, `RESOLVE_BENEATH`), and exits as
//! soon as its socket to the program closes, which the kernel does when the program dies.
//!
//! The helper is this same program, re-executed: a program opts in by calling [`init`] first
//! thing in `main`. Without that call, `EACCES` is reported as it is.
//!
//! ```no_run
//! // First thing in `main`:
//! composefs_storage::userns::init();
//! // ... then parse arguments, open the store, read it ...
//! ```

mod client;
mod helper;
mod ids;
mod proto;

use std::sync::atomic::Ordering;

pub(crate) use client::{open_denied, register_root, xattrs_denied};
pub(crate) use ids::{IdMap, rootless_id_maps};
pub use ids::{can_bypass_file_permissions, can_read_trusted_xattrs, in_initial_user_namespace};

/// Opts this program in to the user-namespace helper, and runs the helper if this process was
/// started as one. Call it first thing in `main`, before any thread is started: when the
/// helper is needed, the library re-executes the program (`/proc/self/exe`), and in that
/// process this call serves requests and exits instead of returning.
///
/// Has no effect on what the program can read when it already bypasses file permissions
/// (see [`can_bypass_file_permissions`]).
pub fn init() {
    if let Some(parent) = std::env::var_os(client::HELPER_ENV) {
        helper::serve(&parent.to_string_lossy());
    }
    client::ENABLED.store(true, Ordering::Relaxed);
}
