//! Lists the images of a store: one line per image, its ID, a tab, and its names separated
//! by commas (empty for an image without names).
//!
//! ```sh
//! cargo run --example list_images -- /var/lib/containers/storage
//! ```

use composefs_storage::Storage;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, root] = args.as_slice() else {
        eprintln!("usage: list_images STORE_ROOT");
        std::process::exit(2);
    };
    if let Err(e) = run(root) {
        eprintln!("list_images: {e}");
        std::process::exit(1);
    }
}

fn run(root: &str) -> composefs_storage::Result<()> {
    let storage = Storage::open(root)?;
    for image in storage.list_images()? {
        println!("{}\t{}", image.id(), image.names().join(","));
    }
    Ok(())
}
