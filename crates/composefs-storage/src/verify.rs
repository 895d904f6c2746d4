//! Checking a store's images against the digests it records: every layer rebuilt from
//! tar-split with each file's CRC and the stream's sha256 compared with `diff-digest`, the
//! big-data items (manifests, config) against `big-data-digests`, and the layers against the
//! config's DiffIDs.

use std::collections::HashSet;
use std::sync::Mutex;

use serde::Serialize;

use crate::error::StorageError;
use crate::export::{ExportOptions, Verify};
use crate::image::Image;
use crate::layer::Layer;
use crate::manifest::{ManifestKind, guess_kind, sha256_digest};

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Check {
    /// What was checked: `layer <id>`, `image <id> big-data <key>`, `image <id> layers`.
    pub subject: String,
    /// True if it is fine.
    pub ok: bool,
    /// What was found (the error when not fine).
    pub detail: String,
}

/// Callback told when a layer check starts (layer ID, its size if known) and ends.
pub type VerifyProgress = std::sync::Arc<dyn Fn(&str, Option<u64>, bool) + Send + Sync>;

fn check(subject: String, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            subject,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            subject,
            ok: false,
            detail,
        },
    }
}

/// Checks the images' metadata and (once each) their layers, `jobs` layers at a time.
pub fn verify_images(
    images: &[Image],
    jobs: usize,
    progress: Option<VerifyProgress>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let mut layers: Vec<Layer> = Vec::new();
    let mut seen = HashSet::new();
    for img in images {
        let id = img.id();
        // Big-data items against their recorded digests.
        for key in img.big_data_names() {
            let Some(want) = img.metadata().big_data_digests.get(key) else {
                continue;
            };
            let subject = format!("image {id} big-data {key}");
            let r = match img.read_big_data(key) {
                Ok(b) => {
                    let got = sha256_digest(&b);
                    // Manifest digests of schema 1 manifests ignore their signatures.
                    let schema1 = key.starts_with("manifest")
                        && guess_kind(&b) == ManifestKind::DockerV2Schema1;
                    if got == *want || schema1 || want.algorithm().as_ref() != "sha256" {
                        Ok(format!("{got}"))
                    } else {
                        Err(format!("content has digest {got}, the record says {want}"))
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            out.push(check(subject, r));
        }
        // The layer chain against the config's DiffIDs.
        let r = match img.layers() {
            Ok(ls) => {
                for l in &ls {
                    if seen.insert(l.id().to_string()) {
                        layers.push(l.clone());
                    }
                }
                Ok(format!("{} layers match the config's DiffIDs", ls.len()))
            }
            Err(e) => {
                // Still verify whatever layers the chain has.
                if let Ok(ls) = img.storage_layers() {
                    for l in ls {
                        if seen.insert(l.id().to_string()) {
                            layers.push(l);
                        }
                    }
                }
                Err(e.to_string())
            }
        };
        out.push(check(format!("image {id} layers"), r));
    }
    out.extend(verify_layers(&layers, jobs, progress));
    out
}

/// Rebuilds each layer's tar from tar-split, verifying CRCs, size and sha256.
pub fn verify_layers(
    layers: &[Layer],
    jobs: usize,
    progress: Option<VerifyProgress>,
) -> Vec<Check> {
    let queue = Mutex::new(layers.iter().rev().cloned().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    let jobs = if jobs == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        jobs
    }
    .clamp(1, layers.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while let Some(l) = queue.lock().ok().and_then(|mut q| q.pop()) {
                    if let Some(p) = &progress {
                        p(l.id(), l.diff_size(), false);
                    }
                    let r = verify_layer(&l);
                    if let Some(p) = &progress {
                        p(l.id(), l.diff_size(), true);
                    }
                    if let Ok(mut v) = results.lock() {
                        v.push((l.id().to_string(), r));
                    }
                }
            });
        }
    });
    let mut v = results.into_inner().unwrap_or_else(|e| e.into_inner());
    // Report in the order given.
    let order: std::collections::HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.id(), i))
        .collect();
    v.sort_by_key(|(id, _)| order.get(id.as_str()).copied().unwrap_or(usize::MAX));
    v.into_iter()
        .map(|(id, r)| check(format!("layer {id}"), r))
        .collect()
}

fn verify_layer(l: &Layer) -> Result<String, String> {
    match l.has_tar_split() {
        Ok(false) => return Err(l.no_tar_split_reason()),
        Err(e) => return Err(e.to_string()),
        Ok(true) => {}
    }
    if l.diff_id().is_none() {
        return Err("no diff-digest recorded: nothing to verify against".into());
    }
    let mut sink = std::io::sink();
    match l.export(&mut sink, &ExportOptions::new(Verify::Digest)) {
        Ok(rep) => Ok(format!(
            "{} bytes, {} files, {}",
            rep.bytes,
            rep.files,
            rep.digest.map(|d| d.to_string()).unwrap_or_default()
        )),
        Err(StorageError::DigestMismatch {
            expected, found, ..
        }) => Err(format!(
            "rebuilt tar has digest {found}, the store records {expected}"
        )),
        Err(e) => Err(e.to_string()),
    }
}
