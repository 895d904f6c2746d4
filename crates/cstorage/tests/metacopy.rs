//! Container layers in a store mounted with `metacopy=on` (the Fedora/RHEL default): the
//! read-write layer holds metadata-only files and renamed directories, and c/storage exports
//! it with its naive diff (mounting the layer and its parent and comparing them). `cstorage
//! layer export` must give the same tar as `containers-storage diff -u`, never the stubs'
//! zeros. Runs as root (podman mounts the container).

use std::path::Path;
use std::process::Command;

use testutil::{
    Blob, OciLayout, TarFormat, TestStore, gnu_tar, go_arch, make_tree, run, stdout_of,
};

mod common;
use common::cstorage;

const MOUNTOPT: &str = "overlay.mountopt=nodev,metacopy=on";

fn kernel_has_metacopy() -> bool {
    Path::new("/sys/module/overlay/parameters/metacopy").exists()
}

/// Blanks the time and checksum of `.wh.` headers: c/storage writes the deletions it finds
/// with the time of the export (`time.Now()`), which no second run can reproduce.
fn blank_whiteout_times(tar: &mut [u8]) {
    let mut off = 0;
    while off + 512 <= tar.len() {
        let h = &tar[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = h[..name_end].to_vec();
        let size_field = String::from_utf8_lossy(&h[124..136]).to_string();
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .unwrap_or(0);
        let base = name.rsplit(|&c| c == b'/').next().unwrap();
        if base.starts_with(b".wh.") {
            tar[off + 136..off + 156].fill(b'#');
        }
        off += 512 + size.div_ceil(512) as usize * 512;
    }
}

/// A store with metacopy on, an image, and a container changed through `podman mount`;
/// returns the store and the container's layer ID.
fn store_with_changed_container() -> (TestStore, String) {
    let mut store = TestStore::new();
    let base = store.root.parent().unwrap().join("base");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    make_tree(
        &base,
        &[
            ("bin/", b""),
            ("bin/prog", &big),
            ("etc/", b""),
            ("etc/conf", b"setting=1\n"),
            ("etc/other", b"other\n"),
            ("dir/", b""),
            ("dir/g", b"g content\n"),
            ("dir/sub/", b""),
            ("dir/sub/f", b"deep file\n"),
            ("keep/", b""),
            ("keep/same", b"unchanged\n"),
            ("moveme", b"moved file\n"),
        ],
    );
    let tar = gnu_tar(&base, TarFormat::Posix, &["--owner=0", "--group=0"]);
    let mut l = OciLayout::create(&store.root.parent().unwrap().join("layout"));
    l.add_image("base", &[tar], Blob::Gzip, go_arch());
    // skopeo's store specification cannot carry a comma in an option: the image goes in
    // without the mount option (pulling does not mount), the container with it.
    store.copy_in(&l.source("base"), "localhost/base:latest", &[]);
    store.opts.push(MOUNTOPT.to_string());
    let ctr = stdout_of(
        store
            .podman()
            .args(["create", "localhost/base:latest", "/bin/prog"]),
    )
    .trim()
    .to_string();
    let m = std::path::PathBuf::from(stdout_of(store.podman().args(["mount", &ctr])).trim());
    // Metadata-only changes (metacopy stubs), a renamed directory (redirect), a renamed
    // file, a deletion and a new file, through the mounted overlay.
    run(Command::new("chmod").arg("4777").arg(m.join("bin/prog")));
    run(Command::new("chown").arg("1:2").arg(m.join("etc/conf")));
    run(Command::new("mv").arg(m.join("dir")).arg(m.join("dir2")));
    run(Command::new("chmod").arg("600").arg(m.join("dir2/g")));
    run(Command::new("chmod").arg("640").arg(m.join("moveme")));
    run(Command::new("mv")
        .arg(m.join("moveme"))
        .arg(m.join("etc/moved")));
    std::fs::remove_file(m.join("etc/other")).unwrap();
    std::fs::write(m.join("etc/new"), b"new file\n").unwrap();
    // A directory replaced by a new one (opaque), a deletion inside the renamed directory,
    // content and time changes, a new symlink and a new hard link.
    std::fs::remove_dir_all(m.join("keep")).unwrap();
    std::fs::create_dir(m.join("keep")).unwrap();
    std::fs::write(m.join("keep/fresh"), b"fresh\n").unwrap();
    std::fs::remove_file(m.join("dir2/sub/f")).unwrap();
    std::fs::write(m.join("etc/conf"), b"setting=2\n").unwrap();
    run(Command::new("touch")
        .args(["-d", "@1700000000"])
        .arg(m.join("etc/new")));
    std::os::unix::fs::symlink("../etc/new", m.join("bin/link")).unwrap();
    std::fs::hard_link(m.join("etc/new"), m.join("bin/hard")).unwrap();
    run(store.podman().args(["umount", &ctr]));
    let layer =
        stdout_of(
            store
                .podman()
                .args(["inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", &ctr]),
        );
    let layer = Path::new(layer.trim())
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    (store, layer)
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-h", "-n", name])
        .arg(path)
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

#[test]
fn container_layer_export_equals_c_storage_diff() {
    if !kernel_has_metacopy() {
        eprintln!("skipped: this kernel's overlay has no metacopy");
        return;
    }
    let (store, layer) = store_with_changed_container();
    let diff = store.root.join("overlay").join(&layer).join("diff");
    // The layer holds what the issue is about: stubs and a redirected directory.
    assert!(xattr(&diff.join("bin/prog"), "trusted.overlay.metacopy").is_some());
    assert!(xattr(&diff.join("moveme"), "trusted.overlay.metacopy").is_none());
    assert!(xattr(&diff.join("etc/moved"), "trusted.overlay.metacopy").is_some());
    assert!(xattr(&diff.join("dir2/g"), "trusted.overlay.metacopy").is_some());
    assert_eq!(
        xattr(&diff.join("dir2"), "trusted.overlay.redirect").as_deref(),
        Some(&b"dir"[..])
    );
    // The renamed directory's files stay below; the deletion inside it is a whiteout.
    assert!(!diff.join("dir2/sub/f").is_file());
    {
        use std::os::unix::fs::FileTypeExt;
        let ft = diff
            .join("dir2/sub/f")
            .symlink_metadata()
            .unwrap()
            .file_type();
        assert!(ft.is_char_device());
    }
    // c/storage took the naive-diff path for this mount option.
    assert!(
        store
            .runroot
            .join("overlay/native-diff(nodev,metacopy=on)-false")
            .exists()
    );

    let mut go = run(store.cs().args(["diff", "-u", &layer])).stdout;
    let mut ours = run(cstorage(&store).args(["layer", "export", &layer])).stdout;
    // The content is the real one, not the stubs' zeros.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert!(ours.windows(big.len()).any(|w| w == big.as_slice()));
    assert!(ours.windows(10).any(|w| w == b"g content\n"));
    blank_whiteout_times(&mut go);
    blank_whiteout_times(&mut ours);
    if ours != go {
        let show = |b: &[u8]| {
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), b).unwrap();
            stdout_of(Command::new("tar").arg("tvvf").arg(f.path()))
        };
        panic!(
            "the export differs from containers-storage diff -u\nours:\n{}\ngo:\n{}",
            show(&ours),
            show(&go)
        );
    }

    // Without the mount option in the configuration (a reader that does not know it), the
    // stubs and redirects in the layer still select the same diff.
    let plain = TestStore::at(store.root.parent().unwrap(), &[]);
    let mut ours2 = run(cstorage(&plain).args(["layer", "export", &layer])).stdout;
    blank_whiteout_times(&mut ours2);
    assert!(ours2 == go, "export without the mountopt differs");
}

#[test]
fn stub_without_lower_content_is_refused() {
    if !kernel_has_metacopy() {
        eprintln!("skipped: this kernel's overlay has no metacopy");
        return;
    }
    let (store, layer) = store_with_changed_container();
    // Remove the content the stub points to from the image layer: the export must fail,
    // naming the file, rather than write zeros.
    let parent = store
        .go_layers()
        .into_iter()
        .find(|l| l["id"] == layer.as_str())
        .unwrap()["parent"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(
        store
            .root
            .join("overlay")
            .join(&parent)
            .join("diff/bin/prog"),
    )
    .unwrap();
    let out = cstorage(&store)
        .args(["layer", "export", &layer])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bin/prog") && err.contains("metadata-only"),
        "{err}"
    );
}
