//! The standard fixture: a store with several images written by skopeo, an additional image
//! store, and a fuse-overlayfs store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Blob, BuiltImage, OciLayout, TarFormat, TestStore, gnu_tar, go_arch, make_tree};

/// What the standard fixture contains.
pub struct Standard {
    /// The primary, native-overlay store.
    pub store: TestStore,
    /// An additional image store (a store of its own, written by skopeo).
    pub ais: TestStore,
    /// A store written with `overlay.mount_program=/usr/bin/fuse-overlayfs`.
    pub fuse: TestStore,
    /// The OCI layout the images came from.
    pub layout: PathBuf,
    /// Image name in the store → what was built for it.
    pub built: BTreeMap<String, BuiltImage>,
    /// Digest of the multi-platform index `localhost/multi:latest` was copied from.
    pub multi_index_digest: String,
}

impl Standard {
    /// `--storage-opt` value that adds the additional image store.
    pub fn ais_opt(&self) -> String {
        format!("overlay.imagestore={}", self.ais.root.display())
    }
}

fn layer(dir: &Path, name: &str, entries: &[(&str, &[u8])], setup: impl FnOnce(&Path)) -> Vec<u8> {
    let d = dir.join(name);
    make_tree(&d, entries);
    setup(&d);
    gnu_tar(&d, TarFormat::Posix, &["--mtime=@1700000000"])
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds the standard fixture under `dir`.
pub fn standard(dir: &Path) -> Standard {
    let trees = dir.join("trees");
    let base = layer(
        &trees,
        "base",
        &[
            ("etc/hello", b"hello\n"),
            ("etc/os-release", b"ID=test\n"),
            ("etc/secret", b"s3cret\n"),
            ("usr/bin/tool", b"#!/bin/sh\necho tool\n"),
            ("usr/share/doc/", b""),
            ("usr/share/doc/readme", b"docs\n"),
            ("var/empty/", b""),
        ],
        |d| {
            chmod(&d.join("usr/bin/tool"), 0o755);
            chmod(&d.join("etc/secret"), 0o600);
            std::os::unix::fs::symlink("../bin/tool", d.join("usr/share/tool-link")).unwrap();
            std::fs::hard_link(d.join("etc/hello"), d.join("etc/hello-hard")).unwrap();
        },
    );
    // Deletes etc/os-release and makes usr/share/doc opaque.
    let app1 = layer(
        &trees,
        "app1",
        &[
            ("app/one.txt", b"one\n"),
            ("etc/.wh.os-release", b""),
            ("usr/share/doc/.wh..wh..opq", b""),
            ("usr/share/doc/new", b"new doc\n"),
        ],
        |_| {},
    );
    let big: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let app2 = layer(&trees, "app2", &[("app/two.bin", &big)], |_| {});
    let dock = layer(
        &trees,
        "dock",
        &[("docker/file", b"from a docker v2s2 image\n")],
        |_| {},
    );
    let aisl = layer(
        &trees,
        "ais",
        &[("ais/only", b"in the additional store\n")],
        |_| {},
    );

    let layout_dir = dir.join("layout");
    let mut l = OciLayout::create(&layout_dir);
    let arch = go_arch();
    let mut built = BTreeMap::new();
    built.insert(
        "localhost/base:latest".to_string(),
        l.add_image("base", std::slice::from_ref(&base), Blob::Gzip, arch),
    );
    built.insert(
        "localhost/app1:latest".to_string(),
        l.add_image("app1", &[base.clone(), app1.clone()], Blob::Gzip, arch),
    );
    let b_app2 = l.add_image("app2", &[base.clone(), app2], Blob::Plain, arch);
    built.insert("localhost/app2:latest".to_string(), b_app2.clone());
    built.insert("localhost/app2:v2".to_string(), b_app2);
    built.insert(
        "docker.io/library/dockerimg:latest".to_string(),
        l.add_image("dock", &[base.clone(), dock], Blob::Gzip, arch),
    );
    built.insert(
        "quay.io/test/fuzzy:1.0".to_string(),
        l.add_image(
            "fuzzy",
            &[base.clone(), app1.clone()],
            Blob::Gzip,
            "fuzzyarch",
        ),
    );
    let host = l.add_image("", std::slice::from_ref(&base), Blob::Gzip, arch);
    let other_arch = if arch == "arm64" { "amd64" } else { "arm64" };
    let other = l.add_image("", std::slice::from_ref(&base), Blob::Gzip, other_arch);
    let multi_index_digest = l.add_index("multi", &[(&host, arch), (&other, other_arch)]);
    built.insert("localhost/multi:latest".to_string(), host);
    // Images differing only in their config, until two IDs share a first hex digit (so that
    // prefix ambiguity can be tested on real IDs). Content is fixed, so the IDs are too.
    let mut first_chars = std::collections::HashSet::new();
    for (_, b) in built.iter() {
        first_chars.insert(b.config_digest[7..8].to_string());
    }
    let mut n = 0;
    loop {
        let b = l.add_image(
            &format!("many{n}"),
            std::slice::from_ref(&base),
            Blob::Gzip,
            &format!("arch{n}"),
        );
        let c = b.config_digest[7..8].to_string();
        built.insert(format!("localhost/many:{n}"), b);
        n += 1;
        if !first_chars.insert(c) {
            break;
        }
    }
    let b_ais = l.add_image("aisimg", &[base.clone(), aisl], Blob::Gzip, arch);

    let store = TestStore::at(&dir.join("primary"), &[]);
    for (name, _) in built.iter() {
        let tag = match name.as_str() {
            "localhost/base:latest" => "base".to_string(),
            "localhost/app1:latest" => "app1".to_string(),
            "localhost/app2:latest" | "localhost/app2:v2" => "app2".to_string(),
            "docker.io/library/dockerimg:latest" => "dock".to_string(),
            "quay.io/test/fuzzy:1.0" => "fuzzy".to_string(),
            "localhost/multi:latest" => "multi".to_string(),
            m => format!("many{}", m.rsplit(':').next().unwrap()),
        };
        let extra: &[&str] = if tag == "dock" {
            &["--format", "v2s2"]
        } else {
            &[]
        };
        store.copy_in(&l.source(&tag), name, extra);
    }
    // The docker image's manifest was converted, so record what the store has.
    let ais = TestStore::at(&dir.join("ais"), &[]);
    ais.copy_in(&l.source("aisimg"), "localhost/ais-only:latest", &[]);
    ais.copy_in(&l.source("base"), "localhost/base:latest", &[]);
    built.insert("localhost/ais-only:latest".to_string(), b_ais);

    let fuse = TestStore::at(
        &dir.join("fuse"),
        &["overlay.mount_program=/usr/bin/fuse-overlayfs"],
    );
    fuse.copy_in(&l.source("app1"), "localhost/app1:latest", &[]);

    Standard {
        store,
        ais,
        fuse,
        layout: layout_dir,
        built,
        multi_index_digest,
    }
}

/// A tar of every kind of entry, written by Python's tarfile in PAX format: non-UTF-8 names,
/// large UIDs/GIDs, fractional mtimes, xattrs, devices, fifos, links, empty and multi-MB
/// files, names longer than 100 and 255 bytes, and extra zero blocks after the end.
pub const PY_ZOO: &str = r##"
import io, sys, tarfile
out = io.BytesIO()
t = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
def add(name, kind=tarfile.REGTYPE, data=b"", **kw):
    i = tarfile.TarInfo(name)
    i.type = kind
    i.mtime = kw.pop("mtime", 1700000000)
    i.mode = kw.pop("mode", 0o644)
    for k, v in kw.items():
        setattr(i, k, v)
    i.size = len(data) if kind in (tarfile.REGTYPE,) else 0
    t.addfile(i, io.BytesIO(data) if data else None)
add("zoo/", tarfile.DIRTYPE, mode=0o755)
add("zoo/empty")
big = bytes((i * 7919 + (i >> 9)) % 251 for i in range(3 * 1024 * 1024 + 17))
add("zoo/big.bin", data=big, mode=0o600)
add("zoo/link", tarfile.SYMTYPE, linkname="big.bin", mode=0o777)
add("zoo/hard", tarfile.LNKTYPE, linkname="zoo/big.bin")
add("zoo/fifo", tarfile.FIFOTYPE)
add("zoo/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
add("zoo/loop", tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o660)
add("zoo/caf\udce9-latin1.txt", data=b"not utf-8 name\n")
add("zoo/big-ids", data=b"ids\n", uid=3000000, gid=4000000, uname="someone", gname="somegroup")
add("zoo/frac-time", data=b"t\n", mtime=1700000000.123456)
add("zoo/setuid", data=b"#!/bin/sh\n", mode=0o4755)
add("zoo/sticky/", tarfile.DIRTYPE, mode=0o1777)
add("zoo/xattr", data=b"x\n", pax_headers={"SCHILY.xattr.user.test": "value", "SCHILY.xattr.user.other": "v2"})
long_dir = "zoo/" + "d" * 150
add(long_dir + "/", tarfile.DIRTYPE, mode=0o755)
add(long_dir + "/" + "f" * 150, data=b"long name\n")
add("zoo/" + "n" * 99, data=b"99\n")
t.close()
b = out.getvalue() + b"\0" * 4096
sys.stdout.buffer.write(b)
"##;

/// Builds the directory tree the GNU tar layers are made of. `full` adds what ustar and v7
/// cannot hold (names over 100/255 bytes, fifos, devices, xattrs).
pub fn gnu_tree(dir: &Path, full: bool) {
    make_tree(
        dir,
        &[
            ("etc/", b""),
            ("etc/config", b"key=value\n"),
            ("etc/empty", b""),
            ("bin/", b""),
            ("bin/prog", b"\x7fELF fake program\n"),
            ("data/", b""),
        ],
    );
    let big: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 11)) as u8)
        .collect();
    std::fs::write(dir.join("data/big"), &big).unwrap();
    chmod(&dir.join("bin/prog"), 0o755);
    chmod(&dir.join("etc/config"), 0o640);
    std::os::unix::fs::symlink("../etc/config", dir.join("bin/config-link")).unwrap();
    std::fs::hard_link(dir.join("etc/config"), dir.join("etc/config-hard")).unwrap();
    if full {
        let long = dir.join("l".repeat(120)).join("m".repeat(140));
        std::fs::create_dir_all(&long).unwrap();
        std::fs::write(long.join("file"), b"deep\n").unwrap();
        std::fs::write(dir.join("x".repeat(180)), b"long single name\n").unwrap();
        crate::run(std::process::Command::new("mkfifo").arg(dir.join("etc/fifo")));
        crate::run(
            std::process::Command::new("mknod")
                .arg(dir.join("etc/zero"))
                .args(["c", "1", "5"]),
        );
        crate::run(
            std::process::Command::new("setfattr")
                .args(["-n", "user.comment", "-v", "hello xattr"])
                .arg(dir.join("etc/config")),
        );
    }
}

/// Tars for the layer tests: name → uncompressed layer tar.
pub fn layer_tars(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let full = dir.join("full");
    gnu_tree(&full, true);
    let simple = dir.join("simple");
    gnu_tree(&simple, false);
    out.push(("gnu".to_string(), gnu_tar(&full, TarFormat::Gnu, &[])));
    out.push(("posix".to_string(), gnu_tar(&full, TarFormat::Posix, &[])));
    out.push(("ustar".to_string(), gnu_tar(&simple, TarFormat::Ustar, &[])));
    out.push(("v7".to_string(), gnu_tar(&simple, TarFormat::V7, &[])));
    out.push(("pyzoo".to_string(), crate::python_tar(PY_ZOO)));
    // A layer of whiteouts and an opaque directory, over the simple tree.
    let wh = dir.join("wh");
    make_tree(
        &wh,
        &[
            ("etc/.wh.config", b""),
            ("data/.wh..wh..opq", b""),
            ("data/replacement", b"new\n"),
            ("bin/.wh.prog", b""),
        ],
    );
    out.push((
        "whiteouts".to_string(),
        gnu_tar(&wh, TarFormat::Gnu, &["--owner=0", "--group=0"]),
    ));
    out
}

/// Layer tars for the merged-rootfs tests, written by Python's tarfile (`LAYER` selects
/// which; `NODEV` leaves out devices and FIFOs): deletions (`.wh.` files), opaque directories, a directory replaced by a file and
/// back, a file replaced by a directory, hard links, symlink chains, absolute and `../`
/// symlink escapes, loops, devices and a FIFO, modes 0600/0700/04755 and non-root owners.
pub const ROOTFS_LAYERS_PY: &str = r##"
import io, sys, tarfile
out = io.BytesIO()
t = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)
def add(name, kind=tarfile.REGTYPE, data=b"", **kw):
    i = tarfile.TarInfo(name)
    i.type = kind
    i.mtime = kw.pop("mtime", 1700000000)
    i.mode = kw.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    i.uname = ""
    i.gname = ""
    for k, v in kw.items():
        setattr(i, k, v)
    i.size = len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(i, io.BytesIO(data) if data else None)
D, L, H = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
if LAYER == 0:
    for d in ["etc", "usr", "usr/bin", "usr/lib", "data", "data/sub", "opq", "repl", "esc", "dev", "chain"]:
        add(d + "/", D)
    add("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n")
    add("etc/gone", data=b"to be deleted\n")
    add("etc/hard1", data=b"hard linked\n", mode=0o640, uid=7, gid=8)
    # A hard link entry carries the same metadata as its target (c/storage applies the
    # link entry's owner and mode to the shared inode; umoci does not).
    add("etc/hard2", H, linkname="etc/hard1", mode=0o640, uid=7, gid=8)
    add("etc/setuid", data=b"#!/bin/sh\n", mode=0o4755)
    add("home/", D)
    add("home/user/", D, mode=0o700, uid=1000, gid=1000)
    add("home/user/secret", data=b"secret\n", mode=0o600, uid=1000, gid=1000)
    add("usr/lib/real", data=b"the real file\n", mode=0o755)
    add("usr/bin/a", L, linkname="b")
    add("usr/bin/b", L, linkname="c")
    add("usr/bin/c", L, linkname="../lib/real")
    add("lib", L, linkname="usr/lib")
    add("data/sub/file", data=b"in a deleted dir\n")
    add("data/keep", data=b"kept\n")
    add("opq/old1", data=b"hidden by opaque\n")
    add("opq/olddir/", D)
    add("opq/olddir/x", data=b"x\n")
    add("repl/inner", data=b"inner of a dir replaced by a file\n")
    add("f2d", data=b"a file replaced by a dir\n")
    add("esc/abs", L, linkname="/etc/passwd")
    add("esc/up", L, linkname="../../../../../etc/passwd")
    add("esc/dotdot", L, linkname="../../../..")
    add("esc/rootdir", L, linkname="/")
    add("esc/loop1", L, linkname="loop2")
    add("esc/loop2", L, linkname="loop1")
    add("esc/self", L, linkname="self")
    add("esc/dangling", L, linkname="/nonexistent/file")
    add("esc/viadir", L, linkname="../lib/../../../usr/bin/a")
    add("esc/notdir", L, linkname="/etc/passwd/x")
    add("esc/emptyish", L, linkname=".")
    add("chain/end", data=b"end of chain\n")
    # l0 needs 41 symlinks to reach a file, l1 needs 40.
    for i in range(41):
        add("chain/l%d" % i, L, linkname=("l%d" % (i + 1)) if i < 40 else "end")
    # (user.* xattrs cannot be set on devices and FIFOs, so force_mask stores refuse them.)
    if not NODEV:
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add("dev/loop0", tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o660)
        add("dev/fifo", tarfile.FIFOTYPE, mode=0o600)
    add("frac", data=b"t\n", mtime=1700000000.25)
elif LAYER == 1:
    for d in ["etc", "data", "opq", "srv", "f2d", "usr", "usr/bin"]:
        add(d + "/", D)
    add("etc/.wh.gone")
    add("etc/passwd", data=b"root:x:0:0::/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n")
    add("data/.wh.sub")
    add("opq/.wh..wh..opq")
    add("opq/new", data=b"after opaque\n")
    add("repl", data=b"now a file\n", mode=0o600, uid=33, gid=44)
    add("f2d/x", data=b"inside a dir that was a file\n")
    add("srv/app.conf", data=b"port=8080\n", mode=0o600, uid=1234, gid=5678)
    add("srv/private/", D, mode=0o700, uid=1234, gid=5678)
    add("srv/h1", data=b"linked in layer 1\n")
    add("srv/h2", H, linkname="srv/h1")
    add("usr/bin/d", L, linkname="/usr/bin/a")
else:
    for d in ["etc", "usr", "usr/bin", "repl"]:
        add(d + "/", D)
    add("repl/again", data=b"a dir again\n")
    add("etc/.wh.hard2")
    add("etc/passwd", data=b"changed again\n", mode=0o600)
    add("usr/bin/.wh.b")
    add("usr/bin/b", data=b"b is a file now\n", mode=0o755)
    add("newdir/", D)
    add("newdir/.wh..wh..opq")
    add("newdir/file", data=b"new\n")
t.close()
sys.stdout.buffer.write(out.getvalue())
"##;

/// Layer `i` (0, 1 or 2) of the rootfs fixture, without devices and FIFOs if `nodev`.
pub fn rootfs_layer(i: usize, nodev: bool) -> Vec<u8> {
    let nodev = if nodev { "True" } else { "False" };
    crate::python_tar(&format!("LAYER = {i}\nNODEV = {nodev}\n{ROOTFS_LAYERS_PY}"))
}

/// The images of the rootfs fixture (tags in the layout; `localhost/TAG:latest` in the
/// stores): 1, 2 and 3 layers of [`ROOTFS_LAYERS_PY`].
pub const ROOTFS_TAGS: [&str; 3] = ["base", "two", "three"];

/// The rootfs fixture: the same images in a native-overlay and a fuse-overlayfs store, and
/// what `umoci unpack` makes of each.
pub struct Rootfs {
    /// Native-overlay store.
    pub native: TestStore,
    /// fuse-overlayfs (AUFS whiteouts) store.
    pub fuse: TestStore,
    /// The OCI layout.
    pub layout: PathBuf,
    /// Tag → the rootfs directory `umoci unpack` made of it.
    pub umoci: BTreeMap<String, PathBuf>,
}

/// Builds the rootfs fixture under `dir` (keep it short: podman limits run root lengths).
pub fn rootfs(dir: &Path) -> Rootfs {
    crate::require_tool("umoci");
    let tars: Vec<Vec<u8>> = (0..3).map(|i| rootfs_layer(i, false)).collect();
    let layout = dir.join("layout");
    let mut l = OciLayout::create(&layout);
    for (n, tag) in ROOTFS_TAGS.iter().enumerate() {
        l.add_image(tag, &tars[..=n], Blob::Gzip, go_arch());
    }
    let native = TestStore::at(&dir.join("n"), &[]);
    let fuse = TestStore::at(
        &dir.join("f"),
        &["overlay.mount_program=/usr/bin/fuse-overlayfs"],
    );
    let mut umoci = BTreeMap::new();
    for tag in ROOTFS_TAGS {
        native.copy_in(&l.source(tag), &format!("localhost/{tag}:latest"), &[]);
        fuse.copy_in(&l.source(tag), &format!("localhost/{tag}:latest"), &[]);
        let bundle = dir.join(format!("bundle-{tag}"));
        crate::run(
            std::process::Command::new("umoci")
                .arg("unpack")
                .arg("--image")
                .arg(format!("{}:{tag}", layout.display()))
                .arg(&bundle),
        );
        umoci.insert(tag.to_string(), bundle.join("rootfs"));
    }
    Rootfs {
        native,
        fuse,
        layout,
        umoci,
    }
}
