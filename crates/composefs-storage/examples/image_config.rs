//! Finds an image the way podman's users name it (name, reference, ID or prefix, digest) and
//! prints its config blob exactly as stored (the bytes its digest is computed over, as
//! `skopeo inspect --config --raw` prints them), then, on standard error, a summary read
//! from the parsed config.
//!
//! ```sh
//! cargo run --example image_config -- /var/lib/containers/storage alpine
//! ```

use std::io::Write;

use composefs_storage::Storage;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, image] = args.as_slice() else {
        eprintln!("usage: image_config STORE_ROOT IMAGE");
        std::process::exit(2);
    };
    if let Err(e) = run(root, image) {
        eprintln!("image_config: {e}");
        std::process::exit(1);
    }
}

fn run(root: &str, query: &str) -> Result<(), Box<dyn std::error::Error>> {
    let storage = Storage::open(root)?;
    let image = storage.find_image(query)?;
    // The exact bytes, found through the manifest's config digest and checked against it.
    let raw = image.config_bytes()?;
    std::io::stdout().write_all(&raw)?;
    // The same config as oci-spec types.
    let config = image.config()?;
    eprintln!(
        "image {} ({}/{}), config {}, {} layers",
        image.id(),
        config.os(),
        config.architecture(),
        image.config_digest()?,
        config.rootfs().diff_ids().len()
    );
    Ok(())
}
