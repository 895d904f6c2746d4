//! Finding images and layers: by ID, prefix, name, reference, digest or DiffID.

use std::collections::HashMap;
use std::sync::Arc;

use oci_spec::image::Digest;

use super::Storage;
use crate::error::{Result, StorageError};
use crate::store::image::Image;
use crate::store::layer::Layer;
use crate::store::records::{ImageMetadata, LayerMetadata};
use crate::store::reference::{Reference, is_full_id};
use crate::store::state::Snapshot;

impl Storage {
    pub(crate) fn make_image(
        &self,
        snap: &Arc<Snapshot>,
        store: usize,
        meta: &Arc<ImageMetadata>,
    ) -> Image {
        Image::new(self.clone(), snap.clone(), store, meta.clone(), None)
    }

    pub(crate) fn make_layer(
        &self,
        snap: &Arc<Snapshot>,
        store: usize,
        meta: &Arc<LayerMetadata>,
    ) -> Layer {
        Layer::new(self.clone(), snap.clone(), store, meta.clone())
    }

    /// Every image in the store and in the additional image stores (primary first; an image
    /// an earlier store also has is listed once).
    pub fn list_images(&self) -> Result<Vec<Image>> {
        let snap = self.snapshot()?;
        Ok(snap
            .all_images()
            .into_iter()
            .map(|(si, m)| self.make_image(&snap, si, m))
            .collect())
    }

    /// Every layer (primary first), incomplete layers excluded.
    pub fn list_layers(&self) -> Result<Vec<Layer>> {
        let snap = self.snapshot()?;
        Ok(snap
            .all_layers()
            .into_iter()
            .map(|(si, m)| self.make_layer(&snap, si, m))
            .collect())
    }

    /// Finds an image the way podman's users name them:
    ///
    /// 1. a full ID, optionally prefixed by `sha256:`;
    /// 2. an exact name as stored;
    /// 3. a reference, normalized (`alpine` → `localhost/alpine:latest`, then
    ///    `docker.io/library/alpine:latest`); `name@sha256:<digest>` matches an image with that
    ///    digest and a name in the same repository; a short name finally matches a stored name
    ///    whose repository ends in `/<name>` with the same tag, if only one does;
    /// 4. a digest (`sha256:...`) of one of the image's manifests;
    /// 5. a unique prefix of an ID (an ambiguous one is an error listing the candidates).
    ///
    /// Registries from registries.conf short-name aliases and search lists are not consulted.
    pub fn find_image(&self, query: &str) -> Result<Image> {
        let snap = self.snapshot()?;
        let all = snap.all_images();
        let found = |si: usize, m: &Arc<ImageMetadata>, digest: Option<Digest>| {
            Image::new(self.clone(), snap.clone(), si, m.clone(), digest)
        };
        let q = query.trim();
        if q.is_empty() {
            return Err(StorageError::ImageNotFound(query.into()));
        }
        // 1. Full ID.
        let hex = q.strip_prefix("sha256:").unwrap_or(q);
        if is_full_id(hex) {
            if let Some((si, m)) = all.iter().find(|(_, m)| m.id == hex) {
                return Ok(found(*si, m, None));
            }
        }
        // 2. Exact name.
        if let Some((si, m)) = all.iter().find(|(_, m)| m.names.iter().any(|n| n == q)) {
            return Ok(found(*si, m, None));
        }
        // 3. References.
        if let Ok(r) = Reference::parse_normalized(q) {
            let short = Reference::is_short_name(q);
            let mut candidates: Vec<Reference> = Vec::new();
            if short {
                if let Ok(l) = Reference::parse_normalized(&format!("localhost/{q}")) {
                    candidates.push(l);
                }
            }
            candidates.push(r.clone());
            for c in &candidates {
                if let Some(d) = c.digest() {
                    let Ok(digest) = d.parse::<Digest>() else {
                        continue;
                    };
                    let repo = c.repository();
                    let hits: Vec<_> = all
                        .iter()
                        .filter(|(_, m)| {
                            m.digests().contains(&digest)
                                && m.names
                                    .iter()
                                    .any(|n| repository_of(n).as_deref() == Some(&repo))
                        })
                        .collect();
                    if let Some((si, m)) = hits.first() {
                        return Ok(found(*si, m, Some(digest)));
                    }
                } else {
                    let name = c.clone().with_default_tag().to_string();
                    if let Some((si, m)) = all.iter().find(|(_, m)| m.names.contains(&name)) {
                        return Ok(found(*si, m, None));
                    }
                }
            }
            if short && r.digest().is_none() {
                // Fuzzy: a stored name whose repository ends in "/<name>" with the same tag.
                let typed = q.split(':').next().unwrap_or(q);
                let tag = r.tag().unwrap_or("latest");
                let suffix = format!("/{typed}");
                let hits: Vec<_> = all
                    .iter()
                    .filter(|(_, m)| {
                        m.names.iter().any(|n| {
                            Reference::parse_normalized(n).is_ok_and(|nr| {
                                nr.repository().ends_with(&suffix) && nr.tag() == Some(tag)
                            })
                        })
                    })
                    .collect();
                if let Some((si, m)) = unique(&hits, "image", query)? {
                    return Ok(found(*si, m, None));
                }
            }
        }
        // 4. A manifest digest.
        if let Ok(digest) = q.parse::<Digest>() {
            let hits: Vec<_> = all
                .iter()
                .filter(|(_, m)| m.digests().contains(&digest))
                .collect();
            if let Some((si, m)) = unique(&hits, "image", query)? {
                return Ok(found(*si, m, Some(digest)));
            }
        }
        // 5. Unique ID prefix.
        if !hex.is_empty() && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let hits: Vec<_> = all.iter().filter(|(_, m)| m.id.starts_with(hex)).collect();
            if let Some((si, m)) = unique(&hits, "image", query)? {
                return Ok(found(*si, m, None));
            }
        }
        Err(StorageError::ImageNotFound(query.into()))
    }

    /// Every image whose digests (c/storage's computed `Digests`) contain `digest`.
    pub fn images_by_digest(&self, digest: &Digest) -> Result<Vec<Image>> {
        let snap = self.snapshot()?;
        Ok(snap
            .all_images()
            .into_iter()
            .filter(|(_, m)| m.digests().contains(digest))
            .map(|(si, m)| {
                Image::new(
                    self.clone(),
                    snap.clone(),
                    si,
                    m.clone(),
                    Some(digest.clone()),
                )
            })
            .collect())
    }

    /// Finds a layer by full ID, name, digest (`diff-digest`, then `compressed-diff-digest`,
    /// then `toc-digest`) or unique ID prefix.
    pub fn find_layer(&self, query: &str) -> Result<Layer> {
        let snap = self.snapshot()?;
        let all = snap.all_layers();
        let q = query.trim();
        let mk = |si: usize, m: &Arc<LayerMetadata>| self.make_layer(&snap, si, m);
        if q.is_empty() {
            return Err(StorageError::LayerNotFound(query.into()));
        }
        let hex = q.strip_prefix("sha256:").unwrap_or(q);
        if let Some((si, m)) = all.iter().find(|(_, m)| m.id == q || m.id == hex) {
            return Ok(mk(*si, m));
        }
        if let Some((si, m)) = all.iter().find(|(_, m)| m.names.iter().any(|n| n == q)) {
            return Ok(mk(*si, m));
        }
        if let Ok(d) = q.parse::<Digest>() {
            type Pick = fn(&LayerMetadata) -> Option<Digest>;
            let picks: [Pick; 3] = [
                |l| l.diff_id(),
                |l| l.compressed_diff_digest.clone(),
                |l| l.toc_digest.clone(),
            ];
            for pick in picks {
                if let Some((si, m)) = all.iter().find(|(_, m)| pick(m).as_ref() == Some(&d)) {
                    return Ok(mk(*si, m));
                }
            }
        }
        if !hex.is_empty() && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let hits: Vec<_> = all.iter().filter(|(_, m)| m.id.starts_with(hex)).collect();
            if let Some((si, m)) = unique(&hits, "layer", query)? {
                return Ok(mk(*si, m));
            }
        }
        Err(StorageError::LayerNotFound(query.into()))
    }

    /// Finds the layer of each DiffID (uncompressed layer digest, as in an image config's
    /// `rootfs.diff_ids`) in one pass over the layer records: the answer has one entry per
    /// digest asked, in the same order, `None` where no layer has that DiffID. A layer's
    /// DiffID is its `diff-digest`, or for a layer known only by its table of contents the
    /// DiffID c/image expects of it (as [`Layer::diff_id`]). Where several layers share a
    /// DiffID (the same tar applied on different parents), the first is given, in the order
    /// of [`Storage::list_layers`] (primary store first), as [`Storage::find_layer`] does; to
    /// resolve an image's layers along its chain, use [`Image::layers`].
    ///
    /// ```no_run
    /// use composefs_storage::Digest;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let storage = composefs_storage::Storage::open("/var/lib/containers/storage")?;
    /// let config = storage.find_image("alpine")?.config()?;
    /// let diff_ids = config.rootfs().diff_ids().iter()
    ///     .map(|d| d.parse::<Digest>())
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let layers = storage.resolve_diff_ids(&diff_ids)?;
    /// for (diff_id, layer) in diff_ids.iter().zip(&layers) {
    ///     println!("{diff_id} {:?}", layer.as_ref().map(|l| l.id()));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn resolve_diff_ids(&self, diff_ids: &[Digest]) -> Result<Vec<Option<Layer>>> {
        let snap = self.snapshot()?;
        let wanted: HashMap<&Digest, Vec<usize>> =
            diff_ids
                .iter()
                .enumerate()
                .fold(HashMap::new(), |mut m, (i, d)| {
                    m.entry(d).or_default().push(i);
                    m
                });
        let mut out: Vec<Option<Layer>> = vec![None; diff_ids.len()];
        let mut left = wanted.len();
        for (si, m) in snap.all_layers() {
            if left == 0 {
                break;
            }
            let Some(d) = m.diff_id() else { continue };
            let Some(positions) = wanted.get(&d) else {
                continue;
            };
            if out[positions[0]].is_some() {
                continue;
            }
            let layer = self.make_layer(&snap, si, m);
            for &p in positions {
                out[p] = Some(layer.clone());
            }
            left -= 1;
        }
        Ok(out)
    }
}

/// The repository (`domain/path`) of a stored name, if it parses.
fn repository_of(name: &str) -> Option<String> {
    Reference::parse_normalized(name)
        .ok()
        .map(|r| r.repository())
}

/// A record with an ID (images and layers), for [`unique`].
trait Record {
    fn id(&self) -> &str;
}

impl Record for ImageMetadata {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for LayerMetadata {
    fn id(&self) -> &str {
        &self.id
    }
}

/// The one match among `hits`, `None` if there is none, or [`StorageError::Ambiguous`]
/// listing them all (`what` is "image" or "layer").
fn unique<'a, M: Record>(
    hits: &[&'a (usize, &'a Arc<M>)],
    what: &'static str,
    query: &str,
) -> Result<Option<&'a (usize, &'a Arc<M>)>> {
    match hits {
        [one] => Ok(Some(one)),
        [] => Ok(None),
        many => Err(StorageError::Ambiguous {
            what,
            query: query.into(),
            candidates: many.iter().map(|(_, m)| m.id().to_string()).collect(),
        }),
    }
}
