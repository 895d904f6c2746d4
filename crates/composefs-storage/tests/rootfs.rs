//! The merged root filesystem view ([`RootFs`]) of images copied by skopeo into native-overlay
//! and fuse-overlayfs stores, compared file by file with the rootfs `umoci unpack` makes of
//! the same OCI layout tags (an independent implementation of the layer rules), and symlink
//! resolution compared with the kernel's `openat2(RESOLVE_IN_ROOT)` on that unpacked tree.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use composefs_storage::Storage;
use composefs_storage::rootfs::{self, ChangeKind, FileKind, RootFs};
use std::process::Command;
use testutil::fixtures::{ROOTFS_TAGS as TAGS, Rootfs, rootfs as rootfs_fixture, rootfs_layer};
use testutil::{Blob, OciLayout, TestStore, go_arch, run, sha256_hex};

mod common;
use common::open;

fn fx() -> &'static Rootfs {
    static F: OnceLock<Rootfs> = OnceLock::new();
    F.get_or_init(|| rootfs_fixture(&testutil::fixture_dir(&std::env::temp_dir(), "cst-rf")))
}

fn stores() -> Vec<(&'static str, Storage)> {
    let fx = fx();
    vec![("native", open(&fx.native)), ("fuse", open(&fx.fuse))]
}

fn rootfs_of(s: &Storage, tag: &str) -> RootFs {
    s.find_image(&format!("localhost/{tag}:latest"))
        .unwrap()
        .rootfs()
        .unwrap()
}

/// What is compared for every path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Size of regular files and symlinks.
    size: Option<u64>,
    /// Modification time of non-directories.
    mtime: Option<(i64, u32)>,
    target: Option<PathBuf>,
    rdev: (u32, u32),
    sha256: Option<String>,
}

fn kind_of(ft: std::fs::FileType) -> FileKind {
    if ft.is_dir() {
        FileKind::Directory
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_file() {
        FileKind::Regular
    } else if ft.is_char_device() {
        FileKind::CharDevice
    } else if ft.is_block_device() {
        FileKind::BlockDevice
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else {
        FileKind::Socket
    }
}

/// The umoci tree: path → entry, and hard-link groups (paths sharing an inode).
fn umoci_tree(root: &Path) -> (BTreeMap<String, Entry>, BTreeSet<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    fn walk(
        root: &Path,
        rel: &str,
        out: &mut BTreeMap<String, Entry>,
        inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
    ) {
        let mut names: Vec<_> = std::fs::read_dir(root.join(rel.trim_start_matches('/')))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            let path = format!("{rel}/{}", n.to_str().unwrap());
            let full = root.join(path.trim_start_matches('/'));
            let md = std::fs::symlink_metadata(&full).unwrap();
            let kind = kind_of(md.file_type());
            let dev = matches!(kind, FileKind::CharDevice | FileKind::BlockDevice);
            let e = Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: matches!(kind, FileKind::Regular | FileKind::Symlink).then(|| md.size()),
                mtime: (kind != FileKind::Directory).then(|| (md.mtime(), md.mtime_nsec() as u32)),
                target: (kind == FileKind::Symlink).then(|| std::fs::read_link(&full).unwrap()),
                rdev: if dev {
                    (
                        rustix::fs::major(md.rdev()) as u32,
                        rustix::fs::minor(md.rdev()) as u32,
                    )
                } else {
                    (0, 0)
                },
                sha256: (kind == FileKind::Regular).then(|| testutil::sha256_file(&full)),
            };
            if kind == FileKind::Regular {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(path.clone());
            }
            out.insert(path.clone(), e);
            if kind == FileKind::Directory {
                walk(root, &path, out, inodes);
            }
        }
    }
    walk(root, "", &mut out, &mut inodes);
    let groups = inodes.into_values().filter(|g| g.len() > 1).collect();
    (out, groups)
}

fn read_all(fs: &RootFs, path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    fs.open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// Our tree, in walk order, with the same fields.
fn our_tree(fs: &RootFs) -> (Vec<(String, Entry)>, BTreeSet<Vec<String>>) {
    let mut out = Vec::new();
    let mut inodes: BTreeMap<(usize, u64, u64), Vec<String>> = BTreeMap::new();
    for e in fs.walk() {
        let e = e.unwrap();
        let p = e.path.to_str().unwrap().to_string();
        let m = &e.metadata;
        if p == "/" {
            assert_eq!(m.kind, FileKind::Directory);
            continue;
        }
        if m.kind == FileKind::Regular {
            inodes
                .entry((m.layer, m.dev, m.ino))
                .or_default()
                .push(p.clone());
        }
        let entry = Entry {
            kind: m.kind,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            size: matches!(m.kind, FileKind::Regular | FileKind::Symlink).then_some(m.size),
            mtime: (m.kind != FileKind::Directory).then_some((m.mtime, m.mtime_nsec)),
            target: m.symlink_target.clone(),
            rdev: (m.rdev_major, m.rdev_minor),
            sha256: (m.kind == FileKind::Regular).then(|| sha256_hex(&read_all(fs, &e.path))),
        };
        out.push((p, entry));
    }
    (out, inodes.into_values().filter(|g| g.len() > 1).collect())
}

/// The whole tree of every image, in both stores, equals umoci's: names, types, modes,
/// owners, sizes, times, symlink targets, device numbers, file contents and hard-link
/// groups; and the walk is depth-first in lexical order of each directory.
#[test]
fn whole_tree_matches_umoci() {
    for (store, s) in stores() {
        for tag in TAGS {
            assert_tree_matches(store, &rootfs_of(&s, tag), &fx().umoci[tag]);
        }
    }
}

fn assert_tree_matches(store: &str, fs: &RootFs, umoci_root: &Path) {
    assert_tree_matches_masked(store, fs, umoci_root, 0o7777)
}

/// Compares only the `mode_mask` bits of the modes.
fn assert_tree_matches_masked(store: &str, fs: &RootFs, umoci_root: &Path, mode_mask: u32) {
    let tag = umoci_root
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let (expected, exp_links) = umoci_tree(umoci_root);
    let (ours, our_links) = our_tree(fs);
    let mut sorted = ours.clone();
    sorted.sort_by(|a, b| {
        a.0.as_bytes()
            .split(|&c| c == b'/')
            .cmp(b.0.as_bytes().split(|&c| c == b'/'))
    });
    assert!(
        ours.iter().map(|e| &e.0).eq(sorted.iter().map(|e| &e.0)),
        "{store} {tag}: walk is not in depth-first lexical order"
    );
    // The names-only walk gives the same paths, types and order.
    let names: Vec<(String, FileKind)> = fs
        .walk_names("/")
        .unwrap()
        .skip(1)
        .map(|e| {
            let e = e.unwrap();
            (e.path.to_str().unwrap().to_string(), e.kind)
        })
        .collect();
    let full: Vec<(String, FileKind)> = ours.iter().map(|(p, e)| (p.clone(), e.kind)).collect();
    assert_eq!(names, full, "{store} {tag}: walk_names");
    let ours: BTreeMap<String, Entry> = ours.into_iter().collect();
    let only_ours: Vec<_> = ours.keys().filter(|k| !expected.contains_key(*k)).collect();
    let only_umoci: Vec<_> = expected.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_umoci.is_empty(),
        "{store} {tag}: only in ours: {only_ours:?}; only in umoci's: {only_umoci:?}"
    );
    for (p, e) in &expected {
        let (mut o, mut e) = (ours[p].clone(), e.clone());
        o.mode &= mode_mask;
        e.mode &= mode_mask;
        assert_eq!(o, e, "{store} {tag}: {p}");
    }
    assert_eq!(our_links, exp_links, "{store} {tag}: hard-link groups");
    assert!(expected.len() > 40, "{tag}: the fixture is too small");
}

/// Every accepted on-disk form, mixed in one store: a native store whose opaque marker is
/// switched between `trusted.overlay.opaque`, `user.overlay.opaque`,
/// `user.fuseoverlayfs.opaque` and a `.wh..wh..opq` file, and whose char 0/0 whiteouts are
/// turned into `.wh.` files, still gives umoci's tree.
#[test]
fn every_whiteout_and_opaque_form() {
    let dir = fx().layout.parent().unwrap().join("x");
    let store = TestStore::at(&dir, &[]);
    store.copy_in(
        &format!("oci:{}:three", fx().layout.display()),
        "localhost/three:latest",
        &[],
    );
    let s = open(&store);
    let fs = rootfs_of(&s, "three");
    let layer1 = s
        .find_image("localhost/three:latest")
        .unwrap()
        .layers()
        .unwrap()[1]
        .clone();
    let d = layer1.diff_dir().unwrap();
    let opq = std::fs::File::open(format!("/proc/self/fd/{}/opq", d.as_raw_fd())).unwrap();
    let names = [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "user.fuseoverlayfs.opaque",
    ];
    assert_eq!(get_xattr(&opq, names[0]).as_deref(), Some(&b"y"[..]));
    for name in names {
        for other in names {
            let _ = rustix::fs::fremovexattr(&opq, other);
        }
        rustix::fs::fsetxattr(&opq, name, b"y", rustix::fs::XattrFlags::empty()).unwrap();
        assert_tree_matches(name, &fs, &fx().umoci["three"]);
    }
    // No xattr at all: the opaque marker is needed (the tree differs), then a file marker.
    let _ = rustix::fs::fremovexattr(&opq, names[2]);
    let (ours, _) = our_tree(&fs);
    assert!(
        ours.iter().any(|(p, _)| p == "/opq/old1"),
        "opaque marker removed"
    );
    std::fs::write(
        format!("/proc/self/fd/{}/opq/.wh..wh..opq", d.as_raw_fd()),
        b"",
    )
    .unwrap();
    assert_tree_matches("opq file", &fs, &fx().umoci["three"]);
    // Char 0/0 whiteouts → `.wh.` files, in every layer.
    let mut converted = 0;
    for l in s
        .find_image("localhost/three:latest")
        .unwrap()
        .layers()
        .unwrap()
    {
        let d = l.diff_dir().unwrap();
        let base = PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd()));
        for e in walkdir(&base) {
            let md = std::fs::symlink_metadata(&e).unwrap();
            if md.file_type().is_char_device() && md.rdev() == 0 {
                std::fs::remove_file(&e).unwrap();
                let name = e.file_name().unwrap().to_str().unwrap();
                std::fs::write(e.with_file_name(format!(".wh.{name}")), b"").unwrap();
                converted += 1;
            }
        }
    }
    assert!(converted >= 3, "{converted} whiteouts converted");
    assert_tree_matches("wh files", &fs, &fx().umoci["three"]);
}

fn get_xattr(f: &std::fs::File, name: &str) -> Option<Vec<u8>> {
    let mut v = vec![0u8; 64];
    let n = rustix::fs::fgetxattr(f, name, &mut v[..]).ok()?;
    v.truncate(n);
    Some(v)
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}

/// A store with `force_mask` (and fuse-overlayfs, which it needs): on-disk modes are forced,
/// the real owner and mode come from `user.containers.override_stat`; the tree is still
/// umoci's.
#[test]
fn force_mask_store() {
    let dir = fx().layout.parent().unwrap().join("m");
    let store = TestStore::at(
        &dir,
        &[
            "overlay.mount_program=/usr/bin/fuse-overlayfs",
            "overlay.force_mask=0700",
        ],
    );
    // The fixture's layers without devices and FIFOs, as images of their own.
    let layout = dir.join("layout");
    let mut l = OciLayout::create(&layout);
    let tars: Vec<Vec<u8>> = (0..3).map(|i| rootfs_layer(i, true)).collect();
    let mut bundles = BTreeMap::new();
    for (n, tag) in TAGS.iter().enumerate() {
        l.add_image(tag, &tars[..=n], Blob::Gzip, go_arch());
        store.copy_in(&l.source(tag), &format!("localhost/{tag}:latest"), &[]);
        let bundle = dir.join(format!("bundle-{tag}"));
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle));
        bundles.insert(*tag, bundle.join("rootfs"));
    }
    let s = open(&store);
    assert_eq!(s.overlay_options().force_mask, Some(0o700));
    // The store really forced the modes.
    let img = s.find_image("localhost/two:latest").unwrap();
    let d = img.layers().unwrap()[1].diff_dir().unwrap();
    let f = std::fs::File::open(format!("/proc/self/fd/{}/srv/app.conf", d.as_raw_fd())).unwrap();
    let ov = get_xattr(&f, "user.containers.override_stat").expect("override_stat xattr");
    assert!(
        String::from_utf8_lossy(&ov).starts_with("1234:5678:"),
        "{ov:?}"
    );
    for tag in TAGS {
        // c/storage 1.43 writes the mode into override_stat without the set-user-ID,
        // set-group-ID and sticky bits (`FileMode & 07777` in Go), so they are lost.
        assert_tree_matches_masked("force_mask", &rootfs_of(&s, tag), &bundles[tag], 0o777);
    }
}

/// The fixture exercises both on-disk whiteout forms: char 0/0 devices and opaque xattrs in
/// the native store, `.wh.` files in the fuse-overlayfs store.
#[test]
fn stores_use_both_whiteout_forms() {
    for (store, s) in stores() {
        let img = s.find_image("localhost/two:latest").unwrap();
        let layers = img.layers().unwrap();
        let d = layers[1].diff_dir().unwrap();
        let gone = d.symlink_metadata("etc/gone");
        let wh = d.symlink_metadata("etc/.wh.gone");
        let opq = d.symlink_metadata("opq/.wh..wh..opq");
        if store == "native" {
            let m = gone.unwrap();
            use cap_std::fs::{FileTypeExt as _, MetadataExt as _};
            assert!(m.file_type().is_char_device() && m.rdev() == 0);
            assert!(wh.is_err() && opq.is_err());
        } else {
            assert!(gone.is_err());
            assert!(wh.unwrap().is_file() && opq.unwrap().is_file());
        }
    }
}

/// `stat` (following symlinks inside the image) of every symlink and of paths through
/// them equals what the kernel finds with `openat2(RESOLVE_IN_ROOT)` in umoci's tree:
/// the same file, or the same errno (ENOENT, ENOTDIR, ELOOP).
#[test]
fn symlinks_resolve_like_resolve_in_root() {
    let fx = fx();
    for (store, s) in stores() {
        for tag in TAGS {
            let fs = rootfs_of(&s, tag);
            let root = std::fs::File::open(&fx.umoci[tag]).unwrap();
            let (expected, _) = umoci_tree(&fx.umoci[tag]);
            let mut paths: Vec<String> = expected
                .iter()
                .filter(|(_, e)| e.kind == FileKind::Symlink)
                .map(|(p, _)| p.clone())
                .collect();
            assert!(paths.len() > 40);
            for extra in [
                "/lib/real",
                "/lib/../etc/passwd",
                "/esc/dotdot/etc/passwd",
                "/esc/up/",
                "/esc/rootdir/usr/bin/a",
                "/esc/emptyish/abs",
                "/usr/bin/d",
                "/../../etc/passwd",
                "etc/../../etc/passwd",
                "/etc/passwd/",
                "/nonexistent",
                "/etc/.wh.gone",
                "/opq/.wh..wh..opq",
            ] {
                paths.push(extra.to_string());
            }
            for p in &paths {
                let kernel = rustix::fs::openat2(
                    &root,
                    p.as_str(),
                    rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                    rustix::fs::ResolveFlags::IN_ROOT,
                )
                .and_then(|fd| rustix::fs::fstat(&fd));
                let ours = fs.stat(p);
                match (kernel, ours) {
                    (Ok(st), Ok(m)) => {
                        let what = format!("{store} {tag}: stat {p}");
                        assert_eq!(m.kind, kind_of_mode(st.st_mode), "{what}: type");
                        // The image root is the top layer's diff directory, 0555 in c/storage
                        // stores (as containers see it); umoci makes it 0755.
                        if fs.canonicalize(p).unwrap() != Path::new("/") {
                            assert_eq!(m.mode, st.st_mode & 0o7777, "{what}: mode");
                        }
                        assert_eq!((m.uid, m.gid), (st.st_uid, st.st_gid), "{what}: owner");
                        if m.kind == FileKind::Regular {
                            assert_eq!(m.size, st.st_size as u64, "{what}: size");
                            let mut want = Vec::new();
                            std::fs::File::open(
                                fx.umoci[tag]
                                    .join(fs.canonicalize(p).unwrap().strip_prefix("/").unwrap()),
                            )
                            .unwrap()
                            .read_to_end(&mut want)
                            .unwrap();
                            assert_eq!(read_all(&fs, Path::new(p)), want, "{what}: content");
                        }
                    }
                    (Err(ke), Err(oe)) => {
                        assert_eq!(
                            oe.raw_os_error(),
                            Some(ke.raw_os_error()),
                            "{store} {tag}: stat {p}: kernel {ke}, ours {oe}"
                        );
                        assert!(oe.to_string().contains(fs.image_id()), "{oe}");
                    }
                    (k, o) => panic!("{store} {tag}: stat {p}: kernel {k:?}, ours {o:?}"),
                }
            }
        }
    }
}

fn kind_of_mode(mode: u32) -> FileKind {
    match rustix::fs::FileType::from_raw_mode(mode) {
        rustix::fs::FileType::Directory => FileKind::Directory,
        rustix::fs::FileType::Symlink => FileKind::Symlink,
        rustix::fs::FileType::RegularFile => FileKind::Regular,
        rustix::fs::FileType::CharacterDevice => FileKind::CharDevice,
        rustix::fs::FileType::BlockDevice => FileKind::BlockDevice,
        rustix::fs::FileType::Fifo => FileKind::Fifo,
        _ => FileKind::Socket,
    }
}

/// `read_dir`, `lstat`, `read_link` and `open` agree with umoci's tree; FIFOs, devices and
/// directories are refused by `open`.
#[test]
fn read_dir_lstat_read_link_open() {
    let fx = fx();
    for (store, s) in stores() {
        for tag in TAGS {
            let fs = rootfs_of(&s, tag);
            let (expected, _) = umoci_tree(&fx.umoci[tag]);
            for (p, e) in expected
                .iter()
                .filter(|(_, e)| e.kind == FileKind::Directory)
            {
                let mut want: Vec<(String, FileKind)> = expected
                    .iter()
                    .filter(|(q, _)| {
                        q.strip_prefix(p.as_str())
                            .and_then(|r| r.strip_prefix('/'))
                            .is_some_and(|r| !r.contains('/'))
                    })
                    .map(|(q, e)| (q.rsplit('/').next().unwrap().to_string(), e.kind))
                    .collect();
                want.sort();
                let got: Vec<(String, FileKind)> = fs
                    .read_dir(p)
                    .unwrap()
                    .into_iter()
                    .map(|d| (d.name.to_str().unwrap().to_string(), d.kind))
                    .collect();
                assert_eq!(got, want, "{store} {tag}: read_dir {p}");
                assert_eq!(fs.lstat(p).unwrap().mode, e.mode);
            }
            for (p, e) in &expected {
                let m = fs.lstat(p).unwrap();
                assert_eq!(
                    (m.kind, m.mode, m.uid, m.gid),
                    (e.kind, e.mode, e.uid, e.gid)
                );
                if e.kind == FileKind::Symlink {
                    assert_eq!(Some(fs.read_link(p).unwrap()), e.target, "{p}");
                } else {
                    let err = fs.read_link(p).unwrap_err();
                    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{p}");
                }
                match e.kind {
                    FileKind::Regular => {}
                    FileKind::Symlink => {}
                    _ => {
                        let err = fs.open(p).unwrap_err();
                        assert!(err.to_string().contains(p.as_str()), "{err}");
                    }
                }
            }
        }
    }
}

/// `diff` of every pair of images equals the differences of umoci's trees (same rule:
/// type, mode, owner, target, device; for non-directories size, mtime and content).
#[test]
fn diff_matches_umoci_trees() {
    let fx = fx();
    for (store, s) in stores() {
        for a in TAGS {
            for b in TAGS {
                let fa = rootfs_of(&s, a);
                let fb = rootfs_of(&s, b);
                let got: Vec<(String, ChangeKind)> = rootfs::diff(&fa, &fb)
                    .unwrap()
                    .into_iter()
                    .map(|c| (c.path.to_str().unwrap().to_string(), c.kind))
                    .collect();
                let (ta, _) = umoci_tree(&fx.umoci[a]);
                let (tb, _) = umoci_tree(&fx.umoci[b]);
                let mut want = BTreeMap::new();
                for (p, e) in &ta {
                    match tb.get(p) {
                        None => {
                            want.insert(p.clone(), ChangeKind::Removed);
                        }
                        Some(f) => {
                            let mut e = e.clone();
                            let mut f = f.clone();
                            if e.kind == FileKind::Directory {
                                // Directory sizes and times are not compared.
                                e.size = None;
                                f.size = None;
                            }
                            if e != f {
                                want.insert(p.clone(), ChangeKind::Changed);
                            }
                        }
                    }
                }
                for p in tb.keys().filter(|p| !ta.contains_key(*p)) {
                    want.insert(p.clone(), ChangeKind::Added);
                }
                let got_map: BTreeMap<String, ChangeKind> = got.iter().cloned().collect();
                assert_eq!(got_map.len(), got.len(), "{store} {a} {b}: duplicates");
                assert_eq!(got_map, want, "{store}: diff {a} {b}");
                if a == b {
                    assert!(got.is_empty());
                } else {
                    assert!(!got.is_empty());
                }
            }
        }
    }
}

/// Errors name the image and the path and carry the errno; `..` above the root and
/// absolute links stay inside the image.
#[test]
fn errors_and_escapes() {
    for (store, s) in stores() {
        let fs = rootfs_of(&s, "three");
        let e = fs.stat("/esc/loop1").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{store}");
        let msg = e.to_string();
        assert!(
            msg.contains(fs.image_id()) && msg.contains("/esc/loop1"),
            "{msg}"
        );
        assert_eq!(
            fs.stat("/chain/l0").unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert_eq!(fs.stat("/chain/l1").unwrap().kind, FileKind::Regular);
        assert_eq!(fs.lstat("/chain/l0").unwrap().kind, FileKind::Symlink);
        assert_eq!(fs.canonicalize("/esc/dotdot").unwrap(), Path::new("/"));
        assert_eq!(
            fs.canonicalize("/esc/up").unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(read_all(&fs, Path::new("esc/up")), b"changed again\n");
        assert_eq!(read_all(&fs, Path::new("/esc/abs")), b"changed again\n");
        assert_eq!(
            fs.open("/etc/gone").unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert_eq!(
            fs.open("/usr/lib").unwrap_err().raw_os_error(),
            Some(libc::EISDIR)
        );
        assert_eq!(
            fs.read_dir("/etc/passwd").unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR)
        );
        let e = fs.open("/dev/fifo").unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        // Paths with NUL bytes or odd shapes fail cleanly.
        assert!(fs.stat("/etc/pa\0sswd").is_err());
        assert!(fs.stat("").unwrap().kind == FileKind::Directory);
        assert!(fs.stat("////").unwrap().kind == FileKind::Directory);
        // The image's layers are the ones the metadata points to.
        let m = fs.lstat("/repl/again").unwrap();
        assert_eq!(fs.layer_ids().len(), 3);
        assert_eq!(m.layer, 2);
        assert_eq!(fs.lstat("/etc/hard1").unwrap().layer, 0);
    }
}
