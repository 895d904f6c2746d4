//! The tree of a layer stored in the flat (composefs) format, built from its zstd:chunked
//! table of contents (format doc sections 5.2 and 10).
//!
//! In such a layer `diff/` holds only file contents, named by their sha256
//! (`diff/<2 hex>/<62 hex>`); names, types, owners, modes, times and link targets exist only
//! in the EROFS blob and in the TOC (layer big data `zstd-chunked-manifest`). Reading the
//! TOC needs no mount. Whiteouts are kept as the tar had them (`.wh.<name>` and
//! `.wh..wh..opq` regular files), and directories the tar implies without an entry of their
//! own get mode 0755, owner 0:0 and time 0, as composefs records them.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use cap_std::fs::Dir;
use rustix::fs::FileType;
use serde::Deserialize;

use crate::error::{Result, StorageError};
use crate::fsutil::{self, Follow};
use crate::store::layer::Layer;
use crate::tar::names::content_path;

/// Most entries accepted in one table of contents.
const MAX_ENTRIES: usize = 1 << 22;

#[derive(Deserialize)]
struct RawToc {
    #[serde(default)]
    entries: Vec<RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(rename = "type", default)]
    ty: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "linkName", default)]
    link_name: String,
    #[serde(default)]
    mode: i64,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    uid: i64,
    #[serde(default)]
    gid: i64,
    #[serde(default)]
    modtime: Option<String>,
    #[serde(rename = "devMajor", default)]
    dev_major: i64,
    #[serde(rename = "devMinor", default)]
    dev_minor: i64,
    #[serde(default)]
    digest: String,
}

/// One file of the layer.
#[derive(Debug, Clone)]
pub(crate) struct TocNode {
    pub(crate) kind: FileType,
    /// Permission bits (and setuid/setgid/sticky).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: u32,
    pub(crate) rdev_major: u32,
    pub(crate) rdev_minor: u32,
    /// Symlink target.
    pub(crate) target: Vec<u8>,
    /// Content digest (lower-case hex) of a regular file; `None` for empty files.
    pub(crate) digest: Option<String>,
    /// The node whose inode this one shares (hard links), else itself.
    pub(crate) ino: usize,
    pub(crate) nlink: u64,
    pub(crate) children: BTreeMap<Vec<u8>, usize>,
}

impl TocNode {
    fn implicit_dir() -> TocNode {
        TocNode {
            kind: FileType::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            rdev_major: 0,
            rdev_minor: 0,
            target: Vec::new(),
            digest: None,
            ino: 0,
            nlink: 1,
            children: BTreeMap::new(),
        }
    }
}

/// The file tree of a flat layer; node 0 is its root.
#[derive(Debug)]
pub(crate) struct TocTree {
    pub(crate) layer: String,
    pub(crate) nodes: Vec<TocNode>,
    /// The layer's `diff/` (content objects) and its path, for messages.
    diff: Dir,
    diff_path: PathBuf,
}

fn clean(name: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for c in name.as_bytes().split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(format!("name {name:?} climbs out with ..")),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn num<T: TryFrom<i64>>(v: i64, what: &str, name: &str) -> std::result::Result<T, String> {
    T::try_from(v).map_err(|_| format!("entry {name:?}: {what} {v} is out of range"))
}

/// Where the content of each regular file of a flat layer is: its sha256 (lowercase hex, the
/// name of `diff/<2>/<62>`) by the member's path beneath `diff/` ([`content_path`]).
pub(crate) fn content_digests(layer: &Layer) -> Result<HashMap<PathBuf, String>> {
    let raw = layer.read_big_data("zstd-chunked-manifest")?;
    let bad = |m: String| {
        StorageError::layer(
            layer.id(),
            format!("zstd-chunked-manifest (table of contents) is not valid: {m}"),
        )
    };
    let toc: RawToc = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
    let mut map = HashMap::new();
    for e in toc.entries {
        if e.ty != "reg" {
            continue;
        }
        let Some(hex) = e.digest.strip_prefix("sha256:") else {
            continue;
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("invalid digest {:?}", e.digest)));
        }
        if let Ok(p) = content_path(e.name.as_bytes()) {
            map.insert(p, hex.to_ascii_lowercase());
        }
    }
    Ok(map)
}

impl TocTree {
    /// Reads the TOC of `layer` (which must be flat) and builds its tree.
    pub(crate) fn load(layer: &Layer) -> Result<TocTree> {
        let (diff, diff_path) = layer.diff_dir_with_path()?;
        let raw = layer.read_big_data("zstd-chunked-manifest")?;
        let nodes = build(&raw).map_err(|m| {
            StorageError::layer(
                layer.id(),
                format!("zstd-chunked-manifest (table of contents): {m}"),
            )
        })?;
        Ok(TocTree {
            layer: layer.id().to_string(),
            nodes,
            diff,
            diff_path,
        })
    }
}

/// The nodes of the tree a TOC describes; node 0 is the root. Any error is a message.
fn build(raw: &[u8]) -> std::result::Result<Vec<TocNode>, String> {
    {
        let toc: RawToc = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
        if toc.entries.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        let mut tree = Nodes {
            nodes: vec![TocNode::implicit_dir()],
        };
        let mut links = Vec::new();
        for e in &toc.entries {
            let kind = match e.ty.as_str() {
                "reg" => FileType::RegularFile,
                "dir" => FileType::Directory,
                "symlink" => FileType::Symlink,
                "hardlink" => FileType::RegularFile,
                "char" => FileType::CharacterDevice,
                "block" => FileType::BlockDevice,
                "fifo" => FileType::Fifo,
                // Further chunks of a file already listed.
                "chunk" => continue,
                other => return Err(format!("entry {:?} has type {other:?}", e.name)),
            };
            let parts = clean(&e.name)?;
            let digest = match e.digest.strip_prefix("sha256:") {
                Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(h.to_ascii_lowercase())
                }
                None if e.digest.is_empty() => None,
                _ => return Err(format!("entry {:?}: digest {:?}", e.name, e.digest)),
            };
            let (mtime, mtime_nsec) = match e.modtime.as_deref() {
                Some(t) => {
                    let t = crate::store::records::parse_rfc3339(t)
                        .ok_or_else(|| format!("entry {:?}: modtime {t:?}", e.name))?;
                    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                    (
                        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                        d.subsec_nanos(),
                    )
                }
                None => (0, 0),
            };
            let node = TocNode {
                kind,
                mode: num::<u32>(e.mode, "mode", &e.name)? & 0o7777,
                uid: num(e.uid, "uid", &e.name)?,
                gid: num(e.gid, "gid", &e.name)?,
                size: if kind == FileType::RegularFile {
                    num(e.size, "size", &e.name)?
                } else {
                    0
                },
                mtime,
                mtime_nsec,
                rdev_major: num(e.dev_major, "devMajor", &e.name)?,
                rdev_minor: num(e.dev_minor, "devMinor", &e.name)?,
                target: if kind == FileType::Symlink {
                    e.link_name.as_bytes().to_vec()
                } else {
                    Vec::new()
                },
                digest,
                ino: 0,
                nlink: 1,
                children: BTreeMap::new(),
            };
            let idx = tree.insert(&parts, node);
            if e.ty == "hardlink" {
                links.push((idx, clean(&e.link_name)?, e.name.clone()));
            }
        }
        for (i, n) in tree.nodes.iter_mut().enumerate() {
            n.ino = i;
        }
        for (idx, target, name) in links {
            let t = tree
                .find(&target)
                .filter(|&t| tree.nodes[t].kind != FileType::Directory)
                .ok_or_else(|| format!("hard link {name:?}: target not found"))?;
            let t = tree.nodes[t].ino;
            let mut n = tree.nodes[t].clone();
            n.children.clear();
            tree.nodes[t].nlink += 1;
            n.nlink = tree.nodes[t].nlink;
            tree.nodes[idx] = n;
        }
        // Every node sharing an inode reports the final link count.
        let counts: Vec<u64> = tree.nodes.iter().map(|n| n.nlink).collect();
        for n in &mut tree.nodes {
            n.nlink = counts[n.ino];
        }
        Ok(tree.nodes)
    }
}

/// The nodes while they are built.
struct Nodes {
    nodes: Vec<TocNode>,
}

impl Nodes {
    /// Adds (or replaces) the node at `parts`, creating implicit parent directories.
    fn insert(&mut self, parts: &[Vec<u8>], node: TocNode) -> usize {
        let Some((last, parents)) = parts.split_last() else {
            // The root itself: keep its children, take its metadata.
            let children = std::mem::take(&mut self.nodes[0].children);
            self.nodes[0] = TocNode { children, ..node };
            self.nodes[0].kind = FileType::Directory;
            return 0;
        };
        let mut cur = 0;
        for p in parents {
            cur = match self.nodes[cur].children.get(p) {
                Some(&c) if self.nodes[c].kind == FileType::Directory => c,
                _ => {
                    self.nodes.push(TocNode::implicit_dir());
                    let c = self.nodes.len() - 1;
                    self.nodes[cur].children.insert(p.clone(), c);
                    c
                }
            };
        }
        match self.nodes[cur].children.get(last) {
            Some(&c) => {
                // A later entry for the same name wins; a directory keeps its children.
                let keep = if node.kind == FileType::Directory
                    && self.nodes[c].kind == FileType::Directory
                {
                    std::mem::take(&mut self.nodes[c].children)
                } else {
                    BTreeMap::new()
                };
                self.nodes[c] = TocNode {
                    children: keep,
                    ..node
                };
                c
            }
            None => {
                self.nodes.push(node);
                let c = self.nodes.len() - 1;
                self.nodes[cur].children.insert(last.clone(), c);
                c
            }
        }
    }

    fn find(&self, parts: &[Vec<u8>]) -> Option<usize> {
        let mut cur = 0;
        for p in parts {
            cur = *self.nodes[cur].children.get(p)?;
        }
        Some(cur)
    }
}

impl TocTree {
    /// The child `name` of directory node `dir`.
    pub(crate) fn child(&self, dir: usize, name: &[u8]) -> Option<usize> {
        self.nodes.get(dir)?.children.get(name).copied()
    }

    /// Opens the content of regular-file node `n`: its object in `diff/`, or an empty
    /// in-memory file for an empty file without one.
    pub(crate) fn open(&self, n: usize) -> std::io::Result<File> {
        let node = &self.nodes[n];
        match &node.digest {
            Some(hex) => {
                let obj = Path::new(&hex[..2]).join(&hex[2..]);
                let (f, size) =
                    fsutil::open_regular(&self.diff, &obj, Follow::No).map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!(
                                "content object {} of layer {}: {e}",
                                self.diff_path.join(&obj).display(),
                                self.layer
                            ),
                        )
                    })?;
                if size != node.size {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "content object {} is {size} bytes, the table of contents says {}",
                            self.diff_path.join(&obj).display(),
                            node.size
                        ),
                    ));
                }
                Ok(f)
            }
            None if node.size == 0 => {
                let fd = rustix::fs::memfd_create("empty", rustix::fs::MemfdFlags::CLOEXEC)?;
                Ok(File::from(fd))
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "layer {}: a {}-byte file has no digest in the table of contents",
                    self.layer, node.size
                ),
            )),
        }
    }
}

/// Shared handle on a flat layer's tree.
pub(crate) type TocRef = Arc<TocTree>;

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(entries: serde_json::Value) -> std::result::Result<Vec<TocNode>, String> {
        build(&serde_json::to_vec(&serde_json::json!({"version": 1, "entries": entries})).unwrap())
    }

    fn at(nodes: &[TocNode], path: &str) -> Option<usize> {
        let mut cur = 0;
        for p in path.split('/').filter(|p| !p.is_empty()) {
            cur = *nodes[cur].children.get(p.as_bytes())?;
        }
        Some(cur)
    }

    #[test]
    fn implicit_parents_hard_links_and_replacements() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let n = tree(serde_json::json!([
            {"type": "reg", "name": "a/b/f", "mode": 0o100644, "size": 3, "uid": 7,
             "modtime": "2023-11-14T22:13:20Z", "digest": d},
            {"type": "hardlink", "name": "./a/h", "linkName": "a/b/f"},
            {"type": "dir", "name": "a/", "mode": 0o700, "modtime": "2023-11-14T22:13:20Z"},
            {"type": "symlink", "name": "/l", "linkName": "../x"},
            {"type": "chunk", "name": "a/b/f", "offset": 5},
            {"type": "reg", "name": "a/.wh.gone"},
        ]))
        .unwrap();
        let a = at(&n, "a").unwrap();
        assert_eq!((n[a].mode, n[a].mtime), (0o700, 1_700_000_000));
        assert_eq!(n[a].children.len(), 3, "b, h and the whiteout stay under a");
        let b = at(&n, "a/b").unwrap();
        assert_eq!(
            (n[b].kind, n[b].mode, n[b].mtime),
            (FileType::Directory, 0o755, 0)
        );
        let f = at(&n, "a/b/f").unwrap();
        let h = at(&n, "a/h").unwrap();
        assert_eq!(n[f].mode, 0o644, "type bits are dropped");
        assert_eq!((n[h].ino, n[h].nlink, n[f].nlink), (n[f].ino, 2, 2));
        assert_eq!(n[h].digest, n[f].digest);
        let l = at(&n, "l").unwrap();
        assert_eq!(
            (n[l].kind, n[l].target.as_slice()),
            (FileType::Symlink, &b"../x"[..])
        );
        assert!(n[at(&n, "a/.wh.gone").unwrap()].digest.is_none());
    }

    #[test]
    fn bad_tables_of_contents_are_errors() {
        for bad in [
            serde_json::json!([{"type": "reg", "name": "../etc/passwd"}]),
            serde_json::json!([{"type": "socket", "name": "s"}]),
            serde_json::json!([{"type": "reg", "name": "f", "mode": -1}]),
            serde_json::json!([{"type": "reg", "name": "f", "size": -5}]),
            serde_json::json!([{"type": "reg", "name": "f", "uid": 1_i64 << 40}]),
            serde_json::json!([{"type": "reg", "name": "f", "digest": "sha256:zz"}]),
            serde_json::json!([{"type": "reg", "name": "f", "modtime": "yesterday"}]),
            serde_json::json!([{"type": "hardlink", "name": "h", "linkName": "missing"}]),
            serde_json::json!([{"type": "dir", "name": "d"},
                               {"type": "hardlink", "name": "h", "linkName": "d"}]),
        ] {
            assert!(tree(bad.clone()).is_err(), "{bad}");
        }
        assert!(build(b"not json").is_err());
        assert!(build(b"{\"entries\": 5}").is_err());
    }

    #[test]
    fn a_file_replaced_by_a_directory_and_back() {
        let n = tree(serde_json::json!([
            {"type": "reg", "name": "x/y"},
            {"type": "reg", "name": "x"},
            {"type": "reg", "name": "x/z"},
        ]))
        .unwrap();
        let x = at(&n, "x").unwrap();
        assert_eq!(n[x].kind, FileType::Directory);
        assert!(at(&n, "x/z").is_some());
        assert!(
            at(&n, "x/y").is_none(),
            "the file x dropped the old directory's children"
        );
    }
}
