//! Entry points for the fuzz targets in `fuzz/` (not a stable API). Each takes arbitrary
//! bytes and must never panic, hang or use unbounded memory.

use std::io::Cursor;

use crate::store::records::{ContainerMetadata, ImageMetadata, LayerMetadata};
use crate::tar::tar_split::{Raw, TarSplitReader};

/// Parses bytes as an (uncompressed) tar-split stream, entry by entry, and feeds its segments
/// to a tar header parser as the listing does.
pub fn tar_split_stream(data: &[u8]) {
    let mut r = TarSplitReader::new(Cursor::new(data), "fuzz");
    let mut headers = crate::tar::stream::HeaderStream::new();
    for _ in 0..100_000 {
        match r.next_raw() {
            Ok(Some(Raw::Segment(b))) => {
                let b = b.to_vec();
                if headers.push(&b).is_err() {
                    return;
                }
            }
            Ok(Some(Raw::File { name, size, .. })) => {
                let _ = crate::tar::names::content_path(name);
                let _ = headers.take(size);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Parses bytes as one tar header block, and as a header stream.
pub fn tar_header(data: &[u8]) {
    if let Ok(h) = crate::tar::header::TarHeader::from_bytes(data) {
        // Whatever parses must encode and parse back to the same path.
        let b = h.to_bytes();
        let mut s = crate::tar::stream::HeaderStream::new();
        if s.push(&b).is_ok() {
            if let Some(back) = s.take(0) {
                assert_eq!(back.path, h.path, "header path round trip");
            }
        }
    }
    let mut s = crate::tar::stream::HeaderStream::new();
    for chunk in data.chunks(97) {
        if s.push(chunk).is_err() {
            return;
        }
        let _ = s.take(0);
    }
}

/// Parses bytes as a storage.conf and resolves it as root would.
pub fn storage_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = crate::store::config::Environment::default();
    if let Ok(c) = crate::store::config::parse_for_fuzzing(text, &env) {
        let _ = c.overlay_options();
        let _ = c.additional_image_stores();
        let _ = c.additional_layer_stores();
    }
}

/// Parses bytes as each kind of record file and uses the records.
pub fn records(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<Vec<LayerMetadata>>(data) {
        for l in v {
            let _ = (
                l.diff_id(),
                l.known_diff_size(),
                l.created_time(),
                l.is_incomplete(),
            );
        }
    }
    if let Ok(v) = serde_json::from_slice::<Vec<ImageMetadata>>(data) {
        for i in v {
            let _ = (i.digests(), i.created_time());
            for k in &i.big_data_names {
                let _ = crate::store::big_data::file_name(k);
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<Vec<ContainerMetadata>>(data) {
        for c in v {
            let _ = c.created_time();
        }
    }
}

/// Parses bytes as an image reference.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = crate::store::reference::Reference::parse_normalized(s) {
        let shown = r.clone().with_default_tag().to_string();
        // A normalized reference is stable under normalization.
        let again = crate::store::reference::Reference::parse_normalized(&shown)
            .unwrap_or_else(|e| panic!("{shown:?} from {s:?} does not parse again: {e}"));
        assert_eq!(again.to_string(), shown);
    }
    let _ = crate::store::reference::Reference::is_short_name(s);
}
