//! Walks an image's merged root filesystem (the layers with whiteouts and opaque directories
//! applied, as the container sees it) without mounting anything, and prints one line per
//! path, depth-first in byte order:
//!
//! ```text
//! PATH TYPE MODE UID GID SIZE [-> TARGET]
//! ```
//!
//! TYPE is `file`, `dir`, `symlink`, `char`, `block`, `fifo` or `socket`; MODE the
//! permission bits in octal; SIZE the size of regular files (`-` otherwise); symlinks end
//! with their target.
//!
//! ```sh
//! cargo run --example walk_image -- /var/lib/containers/storage alpine
//! ```

use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use composefs_storage::Storage;
use composefs_storage::rootfs::FileKind;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, image] = args.as_slice() else {
        eprintln!("usage: walk_image STORE_ROOT IMAGE");
        std::process::exit(2);
    };
    if let Err(e) = run(root, image) {
        eprintln!("walk_image: {e}");
        std::process::exit(1);
    }
}

fn run(root: &str, query: &str) -> Result<(), Box<dyn std::error::Error>> {
    let storage = Storage::open(root)?;
    let rootfs = storage.find_image(query)?.rootfs()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for entry in rootfs.walk() {
        let entry = entry?;
        let md = &entry.metadata;
        out.write_all(entry.path.as_os_str().as_bytes())?;
        write!(
            out,
            " {} {:04o} {} {} ",
            md.kind.name(),
            md.mode,
            md.uid,
            md.gid
        )?;
        match md.kind {
            FileKind::Regular => write!(out, "{}", md.size)?,
            _ => write!(out, "-")?,
        }
        if let Some(target) = &md.symlink_target {
            out.write_all(b" -> ")?;
            out.write_all(target.as_os_str().as_bytes())?;
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
