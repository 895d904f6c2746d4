//! `cstorage ls`, `cat`, `stat` and `diff`: an image's merged root filesystem.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use composefs_storage::rootfs::{self, FileKind, Metadata, RootFs};
use composefs_storage::{Image, Storage};
use serde::Serialize;

use crate::ls::mode_string;

/// One file as printed by `ls --format json` and `stat --format json`.
#[derive(Serialize)]
struct FileView {
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    /// Permission bits as an octal string (`0755`).
    mode: String,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: String,
    nlink: u64,
    inode: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    symlink_target: Option<String>,
    layer: String,
    layer_index: usize,
}

impl FileView {
    fn new(fs: &RootFs, path: &Path, m: &Metadata) -> FileView {
        FileView {
            path: path.to_string_lossy().into_owned(),
            kind: m.kind.name(),
            mode: format!("{:04o}", m.mode),
            uid: m.uid,
            gid: m.gid,
            size: m.size,
            mtime: mtime_string(m, false),
            nlink: m.nlink,
            inode: m.ino,
            device: is_device(m).then(|| format!("{},{}", m.rdev_major, m.rdev_minor)),
            symlink_target: m
                .symlink_target
                .as_ref()
                .map(|t| t.to_string_lossy().into_owned()),
            layer: fs.layer_ids().get(m.layer).cloned().unwrap_or_default(),
            layer_index: m.layer,
        }
    }
}

fn is_device(m: &Metadata) -> bool {
    matches!(m.kind, FileKind::CharDevice | FileKind::BlockDevice)
}

fn mtime_string(m: &Metadata, short: bool) -> String {
    let t = if m.mtime >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::new(m.mtime as u64, m.mtime_nsec)
    } else {
        std::time::UNIX_EPOCH
    };
    let s = crate::fmt::rfc3339(t);
    if short {
        s.get(..19).unwrap_or(&s).to_string()
    } else {
        s
    }
}

/// Joins an image path and a name for display (`/` + `etc` = `/etc`).
fn join(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    let mut b = dir.as_os_str().as_bytes().to_vec();
    if !b.ends_with(b"/") {
        b.push(b'/');
    }
    b.extend_from_slice(name.as_bytes());
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(b))
}

/// Makes a user's path absolute in the image (`etc` → `/etc`).
fn image_path(p: &Path) -> PathBuf {
    if p.as_os_str().as_bytes().starts_with(b"/") {
        p.to_owned()
    } else {
        Path::new("/").join(p)
    }
}

fn long_line(out: &mut impl Write, name: &Path, m: &Metadata) -> std::io::Result<()> {
    let size = if is_device(m) {
        format!("{},{}", m.rdev_major, m.rdev_minor)
    } else {
        m.size.to_string()
    };
    write!(
        out,
        "{} {}:{} {:>10} {} ",
        mode_string(m.kind.ls_char(), m.mode),
        m.uid,
        m.gid,
        size,
        mtime_string(m, true)
    )?;
    out.write_all(name.as_os_str().as_bytes())?;
    if let Some(t) = &m.symlink_target {
        out.write_all(b" -> ")?;
        out.write_all(t.as_os_str().as_bytes())?;
    }
    out.write_all(b"\n")
}

fn open_image(storage: &Storage, image: &str) -> Result<(Image, RootFs)> {
    let img = storage.find_image(image)?;
    let fs = img.rootfs()?;
    Ok((img, fs))
}

/// `cstorage ls IMAGE [PATH] [-l] [-R]`.
pub fn ls(
    storage: &Storage,
    image: &str,
    path: Option<&Path>,
    long: bool,
    recursive: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let (_img, fs) = open_image(storage, image)?;
    let path = image_path(path.unwrap_or(Path::new("/")));
    let mut first = true;
    let mut emit = |out: &mut dyn Write, display: &Path, m: &Metadata| -> Result<()> {
        if json {
            out.write_all(if first { b"[\n" } else { b",\n" })?;
            first = false;
            serde_json::to_writer(&mut *out, &FileView::new(&fs, display, m))?;
        } else if long {
            long_line(&mut &mut *out, display, m)?;
        } else {
            out.write_all(display.as_os_str().as_bytes())?;
            out.write_all(b"\n")?;
        }
        Ok(())
    };
    if recursive && !long && !json {
        // Names only: no file needs a stat.
        for e in fs.walk_names(&path)? {
            let e = e?;
            out.write_all(e.path.as_os_str().as_bytes())?;
            out.write_all(b"\n")?;
        }
    } else if recursive {
        for e in fs.walk_from(&path)? {
            let e = e?;
            emit(&mut *out, &e.path, &e.metadata)?;
        }
    } else {
        let m = fs.stat(&path)?;
        if m.kind == FileKind::Directory {
            for d in fs.read_dir(&path)? {
                let full = join(&path, &d.name);
                if json || long {
                    let m = fs.lstat(&full)?;
                    let shown = if json {
                        full.clone()
                    } else {
                        PathBuf::from(&d.name)
                    };
                    emit(&mut *out, &shown, &m)?;
                } else {
                    out.write_all(d.name.as_bytes())?;
                    out.write_all(b"\n")?;
                }
            }
        } else {
            let m = fs.lstat(&path)?;
            emit(&mut *out, &path, &m)?;
        }
    }
    if json {
        out.write_all(if first { b"[]\n" } else { b"\n]\n" })?;
    }
    Ok(())
}

/// `cstorage cat IMAGE PATH...`.
pub fn cat(storage: &Storage, image: &str, paths: &[PathBuf], out: &mut impl Write) -> Result<()> {
    let (_img, fs) = open_image(storage, image)?;
    for p in paths {
        let mut f = fs.open(image_path(p))?;
        std::io::copy(&mut f, out)
            .with_context(|| format!("image {}: reading {}", fs.image_id(), p.to_string_lossy()))?;
    }
    Ok(())
}

/// `cstorage stat IMAGE PATH`.
pub fn stat(
    storage: &Storage,
    image: &str,
    path: &Path,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let (_img, fs) = open_image(storage, image)?;
    let path = image_path(path);
    let m = fs.lstat(&path)?;
    let v = FileView::new(&fs, &path, &m);
    if json {
        crate::fmt::json(out, &v)?;
        return Ok(());
    }
    let val = serde_json::to_value(&v)?;
    if let serde_json::Value::Object(map) = val {
        for (k, v) in map {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            writeln!(out, "{k}: {s}")?;
        }
    }
    writeln!(
        out,
        "permissions: {}",
        mode_string(m.kind.ls_char(), m.mode)
    )?;
    Ok(())
}

#[derive(Serialize)]
struct ChangeView {
    path: String,
    change: &'static str,
}

/// `cstorage diff IMAGE_A IMAGE_B`.
pub fn diff(storage: &Storage, a: &str, b: &str, json: bool, out: &mut impl Write) -> Result<()> {
    let (_ia, fa) = open_image(storage, a)?;
    let (_ib, fb) = open_image(storage, b)?;
    let changes = rootfs::diff(&fa, &fb)?;
    if json {
        let v: Vec<ChangeView> = changes
            .iter()
            .map(|c| ChangeView {
                path: c.path.to_string_lossy().into_owned(),
                change: c.kind.name(),
            })
            .collect();
        crate::fmt::json(out, &v)?;
        return Ok(());
    }
    for c in &changes {
        write!(out, "{} ", c.kind.letter())?;
        out.write_all(c.path.as_os_str().as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
