//! [`RootFs`]: an image's merged root filesystem, read from its layers' `diff` directories
//! without mounting anything.
//!
//! The view follows the overlay rules (format doc section 7), accepting every on-disk form in
//! every layer:
//!
//! * a name is looked up from the top layer down; the first layer that has it decides what it
//!   is;
//! * a whiteout hides the name in lower layers: a character device 0/0, or a regular file
//!   `.wh.<name>` (AUFS form, kept by fuse-overlayfs stores);
//! * an opaque directory hides the lower layers' contents of that directory: xattr
//!   `trusted.overlay.opaque`, `user.overlay.opaque` or `user.fuseoverlayfs.opaque` = `y`, or
//!   a `.wh..wh..opq` file inside it;
//! * names starting with `.wh.` are never shown;
//! * a directory merges with the directories of the same name below it, down to the first
//!   layer where the name is not a directory (or is whited out, or the directory is opaque);
//!   a non-directory hides everything below it.
//!
//! Symlinks are resolved inside the image: the image root is `/` (like `chroot`), absolute
//! targets start there and `..` never climbs above it; more than 40 symlinks in one
//! resolution fail with `ELOOP`, as on Linux.
//!
//! Every file is reached through the layers' directory handles, one component at a time
//! (`fstatat`, `openat2(RESOLVE_BENEATH)` with `O_NOFOLLOW`); no absolute path is built and
//! no symlink is ever followed by the kernel.
//!
//! Layers stored flat by composefs-backed stores (`diff/` holding only file contents, named
//! by digest) are read through their zstd:chunked table of contents instead: names, types,
//! owners, modes, times and link targets come from the TOC, contents from `diff/<2>/<62>`.
//!
//! Metadata is the layers' own (owner, mode, times). In stores with `force_mask`, the real
//! owner, mode and type are read from the xattr `user.containers.override_stat` when present.
//! Layers with UID/GID mappings (rare for image layers) are reported as stored on disk.
//!
//! ```no_run
//! use std::io::Read;
//! # fn main() -> composefs_storage::Result<()> {
//! let storage = composefs_storage::Storage::discover()?;
//! let rootfs = storage.find_image("alpine")?.rootfs()?;
//! let mut release = String::new();
//! rootfs.open("/etc/os-release")?.read_to_string(&mut release).ok();
//! for entry in rootfs.read_dir("/etc")? {
//!     println!("{:?} {}", entry.name, entry.kind.name());
//! }
//! for entry in rootfs.walk() {
//!     let entry = entry?;
//!     println!("{} {:o} {}:{}", entry.path.display(), entry.metadata.mode,
//!              entry.metadata.uid, entry.metadata.gid);
//! }
//! # Ok(())
//! # }
//! ```
pub mod layer_files;

mod diff;
pub mod hidden_opaque;
mod merge;
mod node;
mod tree;

pub use diff::{Change, ChangeKind, diff};
pub(crate) use merge::{LDir, MetaRules, NameClass, for_each_name, layer_root};
pub use node::{DirEntry, FileKind, MAX_SYMLINKS, Metadata, WalkEntry};
pub(crate) use node::{errno, is_whiteout_name, split_path};
pub(crate) use tree::Source;
pub use tree::{NameEntry, RootFs, Walk, WalkNames};

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use cap_std::fs::Dir;

    use super::merge::*;
    use super::node::*;

    use crate::fsutil;

    #[test]
    fn names_of_one_layer_directory() {
        let td = tempfile::tempdir().unwrap();
        for f in [
            "file",
            ".wh.gone",
            ".wh..wh..opq",
            ".wh..wh.plnk",
            ".wh.",
            "both",
            ".wh.both",
        ] {
            std::fs::write(td.path().join(f), b"").unwrap();
        }
        std::fs::create_dir(td.path().join("dir")).unwrap();
        std::os::unix::fs::symlink("file", td.path().join("link")).unwrap();
        let dir = Dir::open_ambient_dir(td.path(), cap_std::ambient_authority()).unwrap();
        // Opened for reading, as layer directories are (cap-std's own handle is O_PATH).
        let ldir = LDir::Disk(Arc::new(fsutil::open_dir(&dir, Path::new(".")).unwrap()));
        let mut got = Vec::new();
        for fresh in [false, true] {
            got.clear();
            for_each_name(&ldir, fresh, &mut Vec::new(), |n, c| {
                got.push((String::from_utf8(n.to_vec()).unwrap(), c))
            })
            .unwrap();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(
                got,
                [
                    ("both".to_string(), NameClass::Entry(FileKind::Regular)),
                    ("both".to_string(), NameClass::WhiteoutFile),
                    ("dir".to_string(), NameClass::Entry(FileKind::Directory)),
                    ("file".to_string(), NameClass::Entry(FileKind::Regular)),
                    ("gone".to_string(), NameClass::WhiteoutFile),
                    ("link".to_string(), NameClass::Entry(FileKind::Symlink)),
                ]
            );
        }
        assert!(ldir.is_opaque().unwrap());
    }

    fn md() -> Metadata {
        Metadata {
            kind: FileKind::Regular,
            mode: 0o700,
            uid: 0,
            gid: 0,
            size: 5,
            mtime: 0,
            mtime_nsec: 0,
            nlink: 1,
            ino: 1,
            dev: 1,
            rdev_major: 0,
            rdev_minor: 0,
            symlink_target: None,
            layer: 0,
        }
    }

    #[test]
    fn override_stat() {
        let mut m = md();
        apply_override(&mut m, b"1000:100:0644").unwrap();
        assert_eq!(
            (m.uid, m.gid, m.mode, m.kind),
            (1000, 100, 0o644, FileKind::Regular)
        );
        let mut m = md();
        apply_override(&mut m, b"0:0:020666:char-1-3").unwrap();
        assert_eq!(m.kind, FileKind::CharDevice);
        assert_eq!((m.rdev_major, m.rdev_minor, m.size), (1, 3, 0));
        let mut m = md();
        apply_override(&mut m, b"5:6:0755:pipe").unwrap();
        assert_eq!((m.kind, m.mode), (FileKind::Fifo, 0o755));
        // A regular file never becomes a directory.
        let mut m = md();
        apply_override(&mut m, b"0:0:0755:dir").unwrap();
        assert_eq!(m.kind, FileKind::Regular);
        for bad in [
            &b"x:0:0644"[..],
            b"0:0",
            b"0:0:9",
            b"0:0:0644:char-x",
            b"\xff",
        ] {
            assert!(apply_override(&mut md(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(
            split_path(b"//a/./b//"),
            [b"a".to_vec(), b".".to_vec(), b"b".to_vec()]
        );
        assert_eq!(join(b"/", b"a"), b"/a");
        assert_eq!(join(b"/a", b"b"), b"/a/b");
    }
}
