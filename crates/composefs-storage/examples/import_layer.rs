//! Imports one layer of an image into a content-addressed object store, the way composefs-rs
//! imports a layer into its repository: every file's content becomes an object named by its
//! digest (reflinked from the layer's `diff/` with `FICLONE` where the file system can,
//! copied otherwise), and the tar's other bytes (headers, padding, end marker) are kept
//! inline in a small split stream that refers to the objects. Nothing is decompressed or
//! re-tarred: the items come from [`composefs_storage::TarSplitFdStream`].
//!
//! ```sh
//! cargo run --example import_layer -- /var/lib/containers/storage alpine 0 /srv/repo
//! ```
//!
//! # The object store (`REPO`)
//!
//! ```text
//! REPO/objects/<2 hex>/<62 hex>   a file's content, named by its sha256
//! REPO/streams/<64 hex>           the split stream of the layer whose DiffID is sha256:<64 hex>
//! ```
//!
//! (composefs-rs names objects by their fs-verity digest and compresses its split streams;
//! this example keeps to sha256 and an uncompressed stream so that it needs nothing more.)
//!
//! # The split stream
//!
//! All integers are little-endian. The file starts with the 8 bytes `CSSPLIT1`, then holds
//! records up to its end, in tar order:
//!
//! ```text
//! b'I', u64 LEN, LEN bytes        inline tar bytes
//! b'X', u64 SIZE, 32-byte sha256  the SIZE bytes of object objects/<hex of sha256>
//! ```
//!
//! Concatenating the inline bytes and the objects in record order gives the layer tar, byte
//! for byte (its sha256 is the layer's DiffID).
//!
//! Objects are written under a temporary name in their directory and renamed into place; an
//! object already present is reused. The stream file is written with
//! [`composefs_storage::OutputFile`] (a temporary name, renamed over `streams/<hex>` once
//! complete), so a failed import leaves no stream, only objects (which are content-addressed
//! and harmless). The summary goes to standard error.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use composefs_storage::{OutputFile, Storage, TarSplitFdStream, TarSplitItem};
use sha2::{Digest as _, Sha256};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, image, index, repo] = args.as_slice() else {
        eprintln!("usage: import_layer STORE_ROOT IMAGE LAYER_INDEX REPO   (index 0 = base layer)");
        std::process::exit(2);
    };
    if let Err(e) = run(root, image, index, Path::new(repo)) {
        eprintln!("import_layer: {e}");
        std::process::exit(1);
    }
}

#[derive(Default)]
struct Counts {
    reflinked: u64,
    copied: u64,
    reused: u64,
    inline: u64,
}

fn run(
    root: &str,
    query: &str,
    index: &str,
    repo: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let storage = Storage::open(root)?;
    let image = storage.find_image(query)?;
    let layers = image.layers()?;
    let layer = layers
        .get(index.parse::<usize>()?)
        .ok_or_else(|| format!("image {} has {} layers", image.id(), layers.len()))?;
    let diff_id = layer
        .diff_digest()
        .ok_or_else(|| format!("layer {} has no diff-digest", layer.id()))?;
    let streams = repo.join("streams");
    std::fs::create_dir_all(&streams)?;
    std::fs::create_dir_all(repo.join("objects"))?;

    let out = OutputFile::create(&streams.join(diff_id.digest()))?;
    let mut stream_bytes = std::io::BufWriter::with_capacity(256 << 10, out);
    stream_bytes.write_all(b"CSSPLIT1")?;
    let mut counts = Counts::default();
    let mut tar = Sha256::new();
    for item in TarSplitFdStream::new(layer)? {
        match item? {
            TarSplitItem::Segment(bytes) => {
                tar.update(&bytes);
                stream_bytes.write_all(b"I")?;
                stream_bytes.write_all(&(bytes.len() as u64).to_le_bytes())?;
                stream_bytes.write_all(&bytes)?;
                counts.inline += bytes.len() as u64;
            }
            TarSplitItem::FileContent { fd, size, .. } => {
                let mut file = File::from(fd);
                let digest = store_object(repo, &mut file, size, &mut tar, &mut counts)?;
                stream_bytes.write_all(b"X")?;
                stream_bytes.write_all(&size.to_le_bytes())?;
                stream_bytes.write_all(&digest)?;
            }
        }
    }
    // The whole tar went through the hash: it must be the layer's DiffID.
    let got = hex(&tar.finalize());
    if got != diff_id.digest() {
        return Err(format!(
            "layer {}: rebuilt tar is sha256:{got}, not {diff_id}",
            layer.id()
        )
        .into());
    }
    stream_bytes.into_inner()?.commit()?;
    eprintln!(
        "layer {} ({diff_id}): {} objects reflinked, {} copied, {} already present; {} bytes inline",
        layer.id(),
        counts.reflinked,
        counts.copied,
        counts.reused,
        counts.inline
    );
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hashes `file` (also into `tar`), and makes it the object of that digest: reflinked where
/// possible, else copied. Returns the digest.
fn store_object(
    repo: &Path,
    file: &mut File,
    size: u64,
    tar: &mut Sha256,
    counts: &mut Counts,
) -> Result<[u8; 32], Box<dyn std::error::Error>> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        let k = file.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        tar.update(&buf[..k]);
        n += k as u64;
    }
    if n != size {
        return Err(format!("a file changed size while read ({n} bytes, {size} expected)").into());
    }
    let digest: [u8; 32] = h.finalize().into();
    let hex = hex(&digest);
    let dir = repo.join("objects").join(&hex[..2]);
    let dest = dir.join(&hex[2..]);
    if dest.exists() {
        counts.reused += 1;
        return Ok(digest);
    }
    std::fs::create_dir_all(&dir)?;
    let tmp: PathBuf = dir.join(format!(".tmp-{}-{}", std::process::id(), &hex[2..18]));
    let result = (|| -> std::io::Result<bool> {
        let mut obj = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        // FICLONE shares the extents (btrfs, XFS with reflink): no data is copied.
        match rustix::fs::ioctl_ficlone(&obj, &*file) {
            Ok(()) => Ok(true),
            Err(_) => {
                file.rewind()?;
                std::io::copy(file, &mut obj)?;
                Ok(false)
            }
        }
    })();
    match result {
        Ok(reflinked) => {
            std::fs::rename(&tmp, &dest)?;
            if reflinked {
                counts.reflinked += 1;
            } else {
                counts.copied += 1;
            }
            Ok(digest)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.into())
        }
    }
}
