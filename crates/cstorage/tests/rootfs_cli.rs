//! `cstorage ls`, `cat`, `stat` and `diff` on native-overlay and fuse-overlayfs stores,
//! compared with the trees `umoci unpack` makes of the same images.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use std::sync::OnceLock;

use serde_json::Value;
use testutil::TestStore;
use testutil::fixtures::{ROOTFS_TAGS, Rootfs, rootfs};

mod common;
use common::cst;

fn fx() -> &'static Rootfs {
    static F: OnceLock<Rootfs> = OnceLock::new();
    F.get_or_init(|| rootfs(&testutil::fixture_dir(&std::env::temp_dir(), "cst-rc")))
}

fn ok(store: &TestStore, args: &[&str]) -> Vec<u8> {
    let o = cst(store, args);
    assert!(
        o.status.success(),
        "cstorage {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn stores() -> [(&'static str, &'static TestStore); 2] {
    let fx = fx();
    [("native", &fx.native), ("fuse", &fx.fuse)]
}

/// Type char, mode, uid, gid, size of files and symlinks, symlink target.
type Entry = (char, u32, u32, u32, Option<u64>, Option<String>);

/// umoci's tree: path → entry.
fn umoci_tree(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(root.join(rel.trim_start_matches('/'))).unwrap() {
            let e = e.unwrap();
            let path = format!("{rel}/{}", e.file_name().to_str().unwrap());
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let ft = md.file_type();
            let t = if ft.is_dir() {
                todo.push(path.clone());
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_file() {
                '-'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else {
                'p'
            };
            let size = matches!(t, '-' | 'l').then(|| md.size());
            let target = (t == 'l').then(|| {
                std::fs::read_link(e.path())
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string()
            });
            out.insert(
                path,
                (t, md.mode() & 0o7777, md.uid(), md.gid(), size, target),
            );
        }
    }
    out
}

/// `ls -R` lists exactly umoci's paths; `ls -R -l` shows their type, mode, owner, size and
/// link target; `--format json` the same as fields.
#[test]
fn ls_recursive_matches_umoci() {
    let fx = fx();
    for (name, store) in stores() {
        for tag in ROOTFS_TAGS {
            let want = umoci_tree(&fx.umoci[tag]);
            let image = format!("localhost/{tag}:latest");
            let names = String::from_utf8(ok(store, &["ls", "-R", &image])).unwrap();
            let mut got: Vec<&str> = names.lines().collect();
            assert_eq!(got.first(), Some(&"/"), "{name} {tag}");
            got.remove(0);
            let mut sorted = got.clone();
            sorted.sort_by(|a, b| a.split('/').cmp(b.split('/')));
            assert_eq!(got, sorted, "{name} {tag}: walk order");
            let got_set: std::collections::BTreeSet<&str> = got.iter().copied().collect();
            let want_set: std::collections::BTreeSet<&str> =
                want.keys().map(|s| s.as_str()).collect();
            assert_eq!(got_set, want_set, "{name} {tag}: paths");

            // Long listing: every line agrees with umoci's tree.
            let long = String::from_utf8(ok(store, &["ls", "-R", "-l", &image])).unwrap();
            for line in long.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (t, m, owner, size, path) = (f[0], f[0], f[1], f[2], f[4]);
                let w = &want[path];
                assert_eq!(t.chars().next(), Some(w.0), "{name} {tag}: {line}");
                let perms: String = mode_chars(w.1);
                assert_eq!(&m[1..], perms, "{name} {tag}: {line}");
                assert_eq!(owner, format!("{}:{}", w.2, w.3), "{name} {tag}: {line}");
                if let Some(s) = w.4 {
                    assert_eq!(size, s.to_string(), "{name} {tag}: {line}");
                }
                if let Some(t) = &w.5 {
                    assert!(line.ends_with(&format!("{path} -> {t}")), "{line}");
                }
            }
            assert_eq!(long.lines().count(), want.len() + 1);

            let json: Vec<Value> =
                serde_json::from_slice(&ok(store, &["--format", "json", "ls", "-R", &image]))
                    .unwrap();
            assert_eq!(json.len(), want.len() + 1);
            for v in json.iter().skip(1) {
                let w = &want[v["path"].as_str().unwrap()];
                assert_eq!(v["mode"].as_str().unwrap(), format!("{:04o}", w.1));
                assert_eq!(v["uid"].as_u64().unwrap(), u64::from(w.2));
                assert_eq!(v["gid"].as_u64().unwrap(), u64::from(w.3));
                if let Some(s) = w.4 {
                    assert_eq!(v["size"].as_u64().unwrap(), s);
                }
                assert_eq!(v["symlink_target"].as_str().map(String::from), w.5);
            }
        }
    }
}

fn mode_chars(mode: u32) -> String {
    let mut s = String::new();
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        let bit = 0o400 >> i;
        let mut ch = if mode & bit != 0 { c } else { '-' };
        let special = match i {
            2 => Some((0o4000, 's')),
            5 => Some((0o2000, 's')),
            8 => Some((0o1000, 't')),
            _ => None,
        };
        if let Some((b, x)) = special
            && mode & b != 0
        {
            ch = if ch == c { x } else { x.to_ascii_uppercase() };
        }
        s.push(ch);
    }
    s
}

/// `cat` of all regular files at once writes exactly the bytes of umoci's files, in order.
#[test]
fn cat_matches_umoci() {
    let fx = fx();
    for (name, store) in stores() {
        for tag in ROOTFS_TAGS {
            let want = umoci_tree(&fx.umoci[tag]);
            let files: Vec<&String> = want
                .iter()
                .filter(|(_, w)| w.0 == '-')
                .map(|(p, _)| p)
                .collect();
            let mut expected = Vec::new();
            for p in &files {
                expected.extend(std::fs::read(fx.umoci[tag].join(&p[1..])).unwrap());
            }
            let mut args = vec!["cat".to_string(), format!("localhost/{tag}:latest")];
            args.extend(files.iter().map(|p| p.to_string()));
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            assert_eq!(ok(store, &args), expected, "{name} {tag}");
            // Through symlinks that point out of the image, and without a leading slash.
            let via = ok(
                store,
                &[
                    "cat",
                    &format!("localhost/{tag}:latest"),
                    "esc/up",
                    "/esc/abs",
                ],
            );
            let passwd = std::fs::read(fx.umoci[tag].join("etc/passwd")).unwrap();
            assert_eq!(via, [passwd.clone(), passwd].concat());
        }
    }
}

/// `diff` (table and JSON) equals the differences between umoci's trees.
#[test]
fn diff_matches_umoci() {
    let fx = fx();
    for (name, store) in stores() {
        for (a, b) in [("base", "two"), ("two", "three"), ("three", "base")] {
            let ta = umoci_tree(&fx.umoci[a]);
            let tb = umoci_tree(&fx.umoci[b]);
            let mut want = BTreeMap::new();
            for (p, e) in &ta {
                match tb.get(p) {
                    None => {
                        want.insert(p.clone(), "removed");
                    }
                    Some(f) => {
                        let content_differs = e.0 == '-'
                            && f.0 == '-'
                            && std::fs::read(fx.umoci[a].join(&p[1..])).unwrap()
                                != std::fs::read(fx.umoci[b].join(&p[1..])).unwrap();
                        let (mut e, mut f) = (e.clone(), f.clone());
                        if e.0 == 'd' {
                            e.4 = None;
                            f.4 = None;
                        }
                        if e != f || content_differs {
                            want.insert(p.clone(), "changed");
                        }
                    }
                }
            }
            for p in tb.keys().filter(|p| !ta.contains_key(*p)) {
                want.insert(p.clone(), "added");
            }
            let (ia, ib) = (
                format!("localhost/{a}:latest"),
                format!("localhost/{b}:latest"),
            );
            let json: Vec<Value> =
                serde_json::from_slice(&ok(store, &["--format", "json", "diff", &ia, &ib]))
                    .unwrap();
            let got: BTreeMap<String, &str> = json
                .iter()
                .map(|v| {
                    (
                        v["path"].as_str().unwrap().to_string(),
                        v["change"].as_str().unwrap(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{name}: diff {a} {b}");
            let table = String::from_utf8(ok(store, &["diff", &ia, &ib])).unwrap();
            let lines: Vec<String> = want
                .iter()
                .map(|(p, c)| {
                    let letter = match *c {
                        "added" => 'A',
                        "removed" => 'D',
                        _ => 'C',
                    };
                    format!("{letter} {p}")
                })
                .collect();
            let mut got_lines: Vec<String> = table.lines().map(String::from).collect();
            got_lines.sort();
            let mut lines = lines;
            lines.sort();
            assert_eq!(got_lines, lines, "{name}: diff {a} {b}");
        }
    }
}

/// `stat` shows a symlink's own metadata; errors are one line naming the image and path.
#[test]
fn stat_and_errors() {
    let fx = fx();
    for (name, store) in stores() {
        let want = umoci_tree(&fx.umoci["three"]);
        let v: Value = serde_json::from_slice(&ok(
            store,
            &[
                "--format",
                "json",
                "stat",
                "localhost/three:latest",
                "/srv/app.conf",
            ],
        ))
        .unwrap();
        let w = &want["/srv/app.conf"];
        assert_eq!(v["type"], "file", "{name}");
        assert_eq!(v["mode"].as_str().unwrap(), format!("{:04o}", w.1));
        assert_eq!(
            (v["uid"].as_u64(), v["gid"].as_u64()),
            (Some(1234), Some(5678))
        );
        let t = String::from_utf8(ok(store, &["stat", "three", "usr/bin/d"])).unwrap();
        assert!(
            t.contains("type: symlink") && t.contains("symlink_target: /usr/bin/a"),
            "{t}"
        );
        for (args, errno_text) in [
            (vec!["cat", "three", "/etc/gone"], "No such file"),
            (vec!["cat", "three", "/esc/loop1"], "symbolic links"),
            (vec!["cat", "three", "/dev/fifo"], "FIFO"),
            (vec!["cat", "three", "/usr"], "directory"),
            (vec!["ls", "three", "/nonexistent"], "No such file"),
            (vec!["stat", "three", "/esc/notdir/x"], "Not a directory"),
        ] {
            let o = cst(store, &args);
            assert_eq!(o.status.code(), Some(1), "{args:?}");
            let err = String::from_utf8(o.stderr).unwrap();
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.contains(errno_text) && err.contains(args[2]),
                "{args:?}: {err}"
            );
            assert!(o.stdout.is_empty());
        }
    }
}
