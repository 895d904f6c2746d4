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
