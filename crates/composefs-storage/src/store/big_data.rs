//! Big-data items: the files c/storage keeps beside an image or layer record (manifests,
//! configs, signatures, a layer's zstd:chunked manifest), named by key.

use std::path::Path;

use base64::Engine as _;

use crate::error::{Result, StorageError};
use crate::fsutil;
use crate::store::state::NamedDir;

/// Largest big-data item read into memory (manifests, configs, signatures).
const MAX_BIG_DATA: u64 = 256 << 20;

/// The file name c/storage stores a big-data item under: the key itself if it consists only
/// of `.`, `0-9` and `a-z`, otherwise `=` followed by the standard base64 of the key.
pub(crate) fn file_name(key: &str) -> std::result::Result<String, String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    let plain = key
        .bytes()
        .all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase());
    let name = if plain {
        key.to_string()
    } else {
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    };
    fsutil::check_component(&name)?;
    Ok(name)
}

/// Reads the item stored as `fname` ([`file_name`]) of record `id` from `dir`
/// (`overlay-images` or `overlay-layers`); `None` if there is no such file. The caller holds
/// the store's lock.
pub(crate) fn read(dir: &NamedDir, id: &str, fname: &str) -> Result<Option<Vec<u8>>> {
    let rel = Path::new(id).join(fname);
    match fsutil::read_file(&dir.dir, &rel, MAX_BIG_DATA) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(dir.path.join(rel), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_data_names_like_c_storage() {
        assert_eq!(file_name("manifest").unwrap(), "manifest");
        assert_eq!(file_name("instances.json").unwrap(), "instances.json");
        assert_eq!(
            file_name("sha256:ebbdcbc37bcdb4dabbeb0c42982b950e84d45f62ef940a26dbcefc494ce524f1")
                .unwrap(),
            "=c2hhMjU2OmViYmRjYmMzN2JjZGI0ZGFiYmViMGM0Mjk4MmI5NTBlODRkNDVmNjJlZjk0MGEyNmRiY2VmYzQ5NGNlNTI0ZjE="
        );
        assert_eq!(
            file_name(
                "manifest-sha256:095125f5d59791f9b97dd2e3857fb2bcf87b83f72d6a890afa68bc590e26fac7"
            )
            .unwrap(),
            "=bWFuaWZlc3Qtc2hhMjU2OjA5NTEyNWY1ZDU5NzkxZjliOTdkZDJlMzg1N2ZiMmJjZjg3YjgzZjcyZDZhODkwYWZhNjhiYzU5MGUyNmZhYzc="
        );
        // Hostile keys: '..' is all-plain characters, a '/' can come out of base64.
        assert!(file_name("..").is_err());
        assert!(file_name(".").is_err());
        assert!(file_name("").is_err());
        assert_eq!(file_name("??>").unwrap(), "=Pz8+");
        assert!(file_name("???").is_err()); // base64 "Pz8/" has a slash
    }
}
