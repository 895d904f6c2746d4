//! Which images podman calls *intermediate* (hidden by `podman images` without `-a`).
//!
//! The rule is containers/common's `libimage` (read for the facts, not copied): an image is
//! intermediate when it has no names and at least one *child* image. A child of image P is
//! another image C
//!
//! * whose top layer is P's top layer, or a layer whose parent is P's top layer (images
//!   without layers are compared with the other images without layers, and a manifest list
//!   has no children);
//! * whose config starts with all of P's DiffIDs, in order;
//! * whose config history has exactly one entry more than P's, the first ones equal to P's
//!   (`created` as a time, `created_by`, `author`, `comment`, `empty_layer`).
//!
//! An image whose config cannot be read has no parent or child relation (libimage skips
//! images it cannot read).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::error::Result;
use crate::store::image::Image;
use crate::store::storage::Storage;

/// What of an image config the rule compares.
struct Lineage {
    diff_ids: Vec<String>,
    history: Vec<Value>,
}

fn lineage(image: &Image) -> Option<Lineage> {
    let cfg: Value = serde_json::from_slice(&image.config_bytes().ok()?).ok()?;
    let diff_ids = cfg
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|d| d.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let history = cfg
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Some(Lineage { diff_ids, history })
}

/// Two history entries are the same if their times are the same instant and their other
/// fields are equal (a missing field counts as its zero value, as in Go).
fn same_entry(a: &Value, b: &Value) -> bool {
    let created = |v: &Value| v.get("created").and_then(Value::as_str).map(str::to_string);
    let time = |s: &Option<String>| s.as_deref().map(crate::store::records::parse_rfc3339);
    let (ca, cb) = (created(a), created(b));
    if ca.is_some() != cb.is_some() {
        return false;
    }
    if ca != cb && (time(&ca).flatten().is_none() || time(&ca) != time(&cb)) {
        return false;
    }
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let empty = |v: &Value| {
        v.get("empty_layer")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    ["created_by", "author", "comment"]
        .iter()
        .all(|k| text(a, k) == text(b, k))
        && empty(a) == empty(b)
}

fn parent_and_child(parent: &Lineage, child: &Lineage) -> bool {
    child.diff_ids.starts_with(&parent.diff_ids)
        && parent.history.len() + 1 == child.history.len()
        && parent
            .history
            .iter()
            .zip(&child.history)
            .all(|(a, b)| same_entry(a, b))
}

/// A manifest-list image (`podman manifest create`): its manifest is a list.
fn is_list(image: &Image) -> bool {
    image.manifest().is_ok_and(|m| m.kind().is_list())
}

/// For each image (by position in `images`), the positions of its child images.
fn children(images: &[Image], parents: &HashMap<String, Option<String>>) -> Vec<Vec<usize>> {
    // Images by top layer, and by the parent of their top layer.
    let mut on_layer: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut above_layer: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut layerless = Vec::new();
    for (i, img) in images.iter().enumerate() {
        match img.top_layer_id() {
            Some(top) => {
                on_layer.entry(top).or_default().push(i);
                if let Some(Some(p)) = parents.get(top) {
                    above_layer.entry(p.as_str()).or_default().push(i);
                }
            }
            None => layerless.push(i),
        }
    }
    let mut cache: HashMap<usize, Option<Lineage>> = HashMap::new();
    let mut out = vec![Vec::new(); images.len()];
    for (i, img) in images.iter().enumerate() {
        let candidates: Vec<usize> = match img.top_layer_id() {
            Some(top) => above_layer
                .get(top)
                .into_iter()
                .chain(on_layer.get(top))
                .flatten()
                .copied()
                .collect(),
            None if is_list(img) => continue,
            None => layerless
                .iter()
                .copied()
                .filter(|&c| !is_list(&images[c]))
                .collect(),
        };
        let candidates: Vec<usize> = candidates.into_iter().filter(|&c| c != i).collect();
        if candidates.is_empty() {
            continue;
        }
        cache.entry(i).or_insert_with(|| lineage(img));
        for c in candidates {
            cache.entry(c).or_insert_with(|| lineage(&images[c]));
            if let (Some(Some(p)), Some(Some(ch))) = (cache.get(&i), cache.get(&c)) {
                if parent_and_child(p, ch) {
                    out[i].push(c);
                }
            }
        }
    }
    out
}

impl Storage {
    /// Every image, and for each (by position) the positions of its child images.
    pub(crate) fn image_children(&self) -> Result<(Vec<Image>, Vec<Vec<usize>>)> {
        let images = self.list_images()?;
        let parents: HashMap<String, Option<String>> = self
            .list_layers()?
            .iter()
            .map(|l| (l.id().to_string(), l.parent_id().map(str::to_string)))
            .collect();
        let children = children(&images, &parents);
        Ok((images, children))
    }

    /// podman's parent and child relation between the images of the store (see the module
    /// documentation for the exact rule), computed in one pass: which images are
    /// intermediate, and each image's parent.
    pub fn image_lineage(&self) -> Result<ImageLineage> {
        let (images, children) = self.image_children()?;
        let mut lineage = ImageLineage::default();
        for (p, ch) in children.iter().enumerate() {
            if images[p].names().is_empty() && !ch.is_empty() {
                lineage.intermediate.insert(images[p].id().to_string());
            }
            for &c in ch {
                lineage
                    .parents
                    .entry(images[c].id().to_string())
                    .or_insert_with(|| images[p].id().to_string());
            }
        }
        Ok(lineage)
    }

    /// The IDs of the images podman calls intermediate: no names, and a child image built
    /// on them (see the module documentation for the exact rule). `podman images` hides
    /// them unless `-a` is given.
    pub fn intermediate_image_ids(&self) -> Result<BTreeSet<String>> {
        Ok(self.image_lineage()?.intermediate)
    }

    /// For each image that has one, the ID of its parent image by podman's rule (the image
    /// it is a child of, see the module documentation): what `podman images` shows as
    /// `ParentId`. Several candidates (images with the same content): the first listed.
    pub fn image_parents(&self) -> Result<BTreeMap<String, String>> {
        Ok(self.image_lineage()?.parents)
    }
}

/// podman's parent and child relation between the images of a store
/// ([`Storage::image_lineage`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ImageLineage {
    /// The IDs of the intermediate images: no names, and a child image.
    pub intermediate: BTreeSet<String>,
    /// Image ID → the ID of its parent image, for the images that have one.
    pub parents: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lin(ids: &[&str], hist: Value) -> Lineage {
        Lineage {
            diff_ids: ids.iter().map(|s| s.to_string()).collect(),
            history: hist.as_array().unwrap().clone(),
        }
    }

    #[test]
    fn history_rule() {
        let p = lin(
            &["a"],
            serde_json::json!([{"created":"2024-01-01T00:00:00Z","created_by":"x"}]),
        );
        let c = lin(
            &["a", "b"],
            serde_json::json!([
                {"created":"2024-01-01T00:00:00.000Z","created_by":"x"},
                {"created_by":"y"}
            ]),
        );
        assert!(parent_and_child(&p, &c));
        assert!(!parent_and_child(&c, &p));
        // Same layers, but two more history entries: not a direct child.
        let g = lin(
            &["a", "b"],
            serde_json::json!([
                {"created":"2024-01-01T00:00:00Z","created_by":"x"},
                {"created_by":"y"},
                {"created_by":"z","empty_layer":true}
            ]),
        );
        assert!(!parent_and_child(&p, &g));
        assert!(parent_and_child(&c, &g));
        // A different first entry.
        let o = lin(
            &["a", "b"],
            serde_json::json!([{"created_by":"other"}, {"created_by":"y"}]),
        );
        assert!(!parent_and_child(&p, &o));
        // Another base layer.
        let d = lin(&["q", "b"], c.history.clone().into());
        assert!(!parent_and_child(&p, &d));
    }
}
