//! Which images use which layers, from the layer forest of one snapshot.

use std::collections::{BTreeMap, HashMap};

use super::Storage;
use crate::error::Result;
use crate::store::state::Snapshot;

impl Storage {
    /// For each layer ID, how many images have it in their layer chain: linear in the
    /// number of layers and images, whatever the depth of the chains.
    pub fn layer_user_counts(&self) -> Result<HashMap<String, usize>> {
        let snap = self.snapshot()?;
        let (_, tops) = snap.image_tops();
        let chains = snap.chains();
        let counts = chains.user_counts(&tops);
        Ok(chains.ids().iter().cloned().zip(counts).collect())
    }

    /// Which images use each layer, held compactly (4 bytes per layer-image pair), for
    /// callers that list them all (`layers --format json`).
    pub fn layer_users_index(&self) -> Result<LayerUsers> {
        let snap = self.snapshot()?;
        Ok(LayerUsers::new(&snap))
    }

    /// For each layer ID, the IDs of the images whose layer chain contains it.
    pub fn layer_users(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let snap = self.snapshot()?;
        Ok(layer_users(&snap))
    }
}

/// For each layer ID, the IDs of the images whose layer chain (top layer and mapped layers,
/// then parents) contains it.
pub(crate) fn layer_users(snap: &Snapshot) -> BTreeMap<String, Vec<String>> {
    let users = LayerUsers::new(snap);
    users
        .layers
        .iter()
        .map(|(id, &i)| {
            let ids = users.lists[i]
                .iter()
                .map(|&j| users.images[j as usize].clone());
            (id.clone(), ids.collect())
        })
        .collect()
}

/// Which images use each layer (their chain contains it), computed in one pass over the
/// records and held compactly: see [`Storage::layer_users_index`].
#[derive(Debug, Clone)]
pub struct LayerUsers {
    images: Vec<String>,
    layers: HashMap<String, usize>,
    lists: Vec<Vec<u32>>,
}

impl LayerUsers {
    fn new(snap: &Snapshot) -> LayerUsers {
        let (images, tops) = snap.image_tops();
        let chains = snap.chains();
        let lists = chains.users(&tops);
        LayerUsers {
            images: images.iter().map(|(_, m)| m.id.clone()).collect(),
            layers: chains
                .ids()
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect(),
            lists,
        }
    }

    /// The IDs of the images using layer `id`, in the order images are listed.
    pub fn image_ids(&self, id: &str) -> impl Iterator<Item = &str> {
        self.layers
            .get(id)
            .map(|&i| self.lists[i].as_slice())
            .unwrap_or_default()
            .iter()
            .map(|&j| self.images[j as usize].as_str())
    }

    /// How many images use layer `id`.
    pub fn count(&self, id: &str) -> usize {
        self.layers
            .get(id)
            .map(|&i| self.lists[i].len())
            .unwrap_or(0)
    }
}
