//! Exports one layer of an image as its original tar, rebuilt bit for bit from tar-split and
//! checked against the layer's DiffID, to a file (`-` for standard output).
//!
//! The output is written by [`composefs_storage::OutputFile`]'s rules: a regular file is
//! written under a temporary name and renamed over the destination only once the export is
//! complete and verified (nothing is left behind on failure); FIFOs and devices are written
//! into; standard output is refused when it is a terminal.
//!
//! ```sh
//! cargo run --example export_layer -- /var/lib/containers/storage alpine 0 layer.tar
//! ```

use std::os::fd::AsFd;
use std::path::Path;

use composefs_storage::{ExportOptions, OutputFile, Storage, Verify};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, image, index, output] = args.as_slice() else {
        eprintln!(
            "usage: export_layer STORE_ROOT IMAGE LAYER_INDEX OUTPUT   (index 0 = base layer)"
        );
        std::process::exit(2);
    };
    if let Err(e) = run(root, image, index, Path::new(output)) {
        eprintln!("export_layer: {e}");
        std::process::exit(1);
    }
}

fn run(
    root: &str,
    query: &str,
    index: &str,
    output: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let storage = Storage::open(root)?;
    let image = storage.find_image(query)?;
    let layers = image.layers()?; // base first, checked against the config's DiffIDs
    let layer = layers
        .get(index.parse::<usize>()?)
        .ok_or_else(|| format!("image {} has {} layers", image.id(), layers.len()))?;
    let out = OutputFile::create(output)?;
    // Digest: sha256 of the whole stream against the layer's diff-digest; on a mismatch the
    // temporary file is dropped, never renamed into place.
    let report =
        layer.export_to_fd(out.as_fd(), out.name(), &ExportOptions::new(Verify::Digest))?;
    out.commit()?;
    eprintln!(
        "layer {}: {} bytes, {} files, {}",
        layer.id(),
        report.bytes,
        report.files,
        report.digest.map(|d| d.to_string()).unwrap_or_default()
    );
    Ok(())
}
