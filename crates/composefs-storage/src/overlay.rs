//! What overlayfs and c/storage leave in a layer's `diff/` directory, in one place: the
//! whiteout and opaque markers (kernel overlayfs, its `userxattr` variant, fuse-overlayfs, and
//! the AUFS-style names tar layers use), the attributes that are overlay's own bookkeeping
//! rather than the file's, and the ID maps of layers created in a user namespace.
//!
//! Uses only [`crate::store::records`] (for [`IdMapping`]).

use rustix::fs::{FileType, Stat};

use crate::store::records::IdMapping;

/// Prefix of a whiteout file in a tar layer (`.wh.NAME` deletes `NAME`).
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Prefix of the tar format's own marker files (`.wh..wh.*`), which are not whiteouts.
pub(crate) const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// The opaque-directory marker of tar layers (and of `diff/` directories written by
/// c/storage's AUFS-style whiteout format).
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Opaque-directory attributes the kernel's overlayfs writes: `trusted.*` as root,
/// `user.*` with the `userxattr` mount option (rootless).
pub(crate) const KERNEL_OPAQUE_XATTRS: [&str; 2] =
    ["trusted.overlay.opaque", "user.overlay.opaque"];
/// [`KERNEL_OPAQUE_XATTRS`] and fuse-overlayfs's own: every opaque marker a layer directory
/// can carry when read as a merged tree.
pub(crate) const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
/// Prefixes of overlayfs's bookkeeping attributes (`opaque`, `redirect`, `metacopy`,
/// `origin`, ...), never part of a file's content.
pub(crate) const OVERLAY_XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];
/// The attribute rootless stores use to record a file's owner and mode (c/storage's
/// `force_mask`, fuse-overlayfs's `xattr_permissions`).
pub(crate) const OVERRIDE_STAT_XATTR: &str = "user.containers.override_stat";

/// Is this an overlay whiteout: a character device with device number 0/0?
pub(crate) fn is_whiteout_device(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Whether c/storage's native diff (a tar generated from a container layer's `diff/`) keeps
/// the extended attribute `name`: capabilities, IMA and `user.*`, but not overlay's own.
pub(crate) fn keep_xattr_in_diff(name: &[u8]) -> bool {
    name == b"security.capability"
        || name == b"security.ima"
        || (name.starts_with(b"user.") && !name.starts_with(b"user.overlay."))
}

/// The container ID of host ID `id` under `map` (a layer's `uidmap`/`gidmap`); an empty map
/// is the identity. `None` if `id` is outside every range.
pub(crate) fn to_container(map: &[IdMapping], id: u32) -> Option<u32> {
    if map.is_empty() {
        return Some(id);
    }
    map.iter().find_map(|m| {
        (id >= m.host_id && u64::from(id) < u64::from(m.host_id) + u64::from(m.size))
            .then(|| m.container_id + (id - m.host_id))
    })
}
