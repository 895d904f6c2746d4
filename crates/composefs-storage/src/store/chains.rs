//! The layer forest of a snapshot, computed in one pass over the records: each layer's depth
//! and the summed size of its chain, its children, and which images sit on it. Everything
//! that asks "which images use this layer" or "how big is this image" reads it instead of
//! walking parent chains per image (quadratic on deep chains with many images).

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::records::LayerMetadata;

/// Longest parent chain followed before giving up (c/storage itself has no limit, but the
/// kernel's overlayfs stacks at most a few hundred lowers).
pub(crate) const MAX_CHAIN: usize = 4096;

/// A layer's position in the forest.
#[derive(Debug, Clone, Copy)]
struct Node {
    parent: Option<u32>,
    /// Layers in the chain from the base to this one, or `None` if the chain is broken
    /// (a missing parent or a cycle).
    depth: Option<u32>,
    /// Sum of the known diff sizes of the chain (unknown sizes count as 0).
    size: u64,
}

/// The layer forest of one snapshot.
#[derive(Debug, Default)]
pub(crate) struct Chains {
    /// Layer IDs by position.
    ids: Vec<String>,
    index: HashMap<String, u32>,
    nodes: Vec<Node>,
    /// Children of each layer.
    children: Vec<Vec<u32>>,
}

impl Chains {
    /// Builds the forest from every layer of a snapshot (`Snapshot::all_layers`: the first
    /// occurrence of each ID, with the index of its store).
    pub(crate) fn new(layers: &[(usize, &Arc<LayerMetadata>)]) -> Chains {
        let mut index = HashMap::with_capacity(layers.len());
        for (i, (_, l)) in layers.iter().enumerate() {
            index.insert(l.id.clone(), i as u32);
        }
        let parents: Vec<Option<u32>> = layers
            .iter()
            .map(|(_, l)| l.parent.as_ref().and_then(|p| index.get(p).copied()))
            .collect();
        let broken: Vec<bool> = layers
            .iter()
            .zip(&parents)
            .map(|((_, l), p)| l.parent.is_some() && p.is_none())
            .collect();
        let sizes: Vec<u64> = layers
            .iter()
            .map(|(_, l)| l.known_diff_size().unwrap_or(0))
            .collect();
        // Depth and chain size, each layer once: walk up to a layer already done, then down.
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            New,
            Visiting,
            Done,
        }
        let n = layers.len();
        let mut state = vec![State::New; n];
        let mut nodes = vec![
            Node {
                parent: None,
                depth: None,
                size: 0,
            };
            n
        ];
        let mut stack = Vec::new();
        for start in 0..n {
            let mut cur = Some(start as u32);
            // Up: until a finished layer, the base, or a cycle.
            let mut base: Option<(Option<u32>, u64)> = Some((Some(0), 0));
            while let Some(c) = cur {
                match state[c as usize] {
                    State::Done => {
                        let d = nodes[c as usize];
                        base = Some((d.depth, d.size));
                        break;
                    }
                    State::Visiting => {
                        base = None; // a cycle
                        break;
                    }
                    State::New => {
                        state[c as usize] = State::Visiting;
                        stack.push(c);
                        if broken[c as usize] {
                            base = None;
                            break;
                        }
                        cur = parents[c as usize];
                    }
                }
            }
            // Down: each layer's depth and size from its parent's.
            let (mut depth, mut size) = match base {
                Some((d, s)) => (d, s),
                None => (None, 0),
            };
            while let Some(c) = stack.pop() {
                let i = c as usize;
                depth = depth.and_then(|d| d.checked_add(1));
                size = size.saturating_add(sizes[i]);
                nodes[i] = Node {
                    parent: parents[i],
                    depth,
                    size,
                };
                state[i] = State::Done;
            }
        }
        let mut children = vec![Vec::new(); n];
        for (i, p) in parents.iter().enumerate() {
            if let Some(p) = p {
                children[*p as usize].push(i as u32);
            }
        }
        Chains {
            ids: layers.iter().map(|(_, l)| l.id.clone()).collect(),
            index,
            nodes,
            children,
        }
    }

    /// The number of layers in `id`'s chain (base to it), if the chain is complete.
    pub(crate) fn depth(&self, id: &str) -> Option<usize> {
        let i = *self.index.get(id)?;
        self.nodes[i as usize].depth.map(|d| d as usize)
    }

    /// The summed known diff sizes of `id`'s chain, if it is complete and not longer than
    /// the longest chain this crate follows.
    pub(crate) fn chain_size(&self, id: &str) -> Option<u64> {
        let i = *self.index.get(id)?;
        let n = self.nodes[i as usize];
        n.depth
            .filter(|d| (*d as usize) <= MAX_CHAIN)
            .map(|_| n.size)
    }

    /// The layers whose chain contains `id` (it and its descendants), in no set order.
    fn subtree(&self, id: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut todo = vec![id];
        let mut seen = vec![false; self.nodes.len()];
        while let Some(c) = todo.pop() {
            if std::mem::replace(&mut seen[c as usize], true) {
                continue;
            }
            out.push(c);
            todo.extend_from_slice(&self.children[c as usize]);
        }
        out
    }

    /// The positions in `tops` (each image's top layers) of the images whose chain contains
    /// layer `id`: linear in the layers and images.
    pub(crate) fn users_of(&self, id: &str, tops: &[Vec<&str>]) -> Vec<usize> {
        let Some(&l) = self.index.get(id) else {
            return Vec::new();
        };
        // The layers whose chain contains `l` are exactly those reached from it through
        // children (parent links reversed).
        let mut above = vec![false; self.nodes.len()];
        for c in self.subtree(l) {
            above[c as usize] = true;
        }
        tops.iter()
            .enumerate()
            .filter(|(_, ts)| {
                ts.iter()
                    .any(|t| self.index.get(*t).is_some_and(|&t| above[t as usize]))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// For every layer (by [`Chains::position`]), how many images (given by their top
    /// layers) have it in their chain: one pass over the layers for images with one top, a
    /// walk for the rare images with several (ID-mapped copies).
    pub(crate) fn user_counts(&self, tops: &[Vec<&str>]) -> Vec<usize> {
        let n = self.nodes.len();
        let mut own = vec![0usize; n];
        let mut walked = vec![0usize; n];
        let mut last_seen = vec![u32::MAX; n];
        for (img, ts) in tops.iter().enumerate() {
            let idx: Vec<u32> = ts
                .iter()
                .filter_map(|t| self.index.get(*t).copied())
                .collect();
            if let [t] = idx[..] {
                own[t as usize] += 1;
                continue;
            }
            for t in idx {
                let mut cur = Some(t);
                while let Some(c) = cur {
                    if last_seen[c as usize] == img as u32 {
                        break;
                    }
                    last_seen[c as usize] = img as u32;
                    walked[c as usize] += 1;
                    cur = self.nodes[c as usize].parent;
                }
            }
        }
        // Single-top images: each layer counts the tops at or above it, accumulated from
        // children to parents, deepest first. Layers of broken or cyclic chains are not
        // ordered by depth: their counts are walked instead.
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by_key(|&i| std::cmp::Reverse(self.nodes[i as usize].depth));
        let mut acc = own.clone();
        for &i in &order {
            if self.nodes[i as usize].depth.is_none() {
                continue;
            }
            if let Some(p) = self.nodes[i as usize].parent {
                acc[p as usize] += acc[i as usize];
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.depth.is_none() && own[i] > 0 {
                // A broken chain (missing parent or cycle): walk it, each layer once.
                let mut seen = std::collections::HashSet::from([i as u32]);
                let mut cur = node.parent;
                while let Some(c) = cur {
                    if !seen.insert(c) {
                        break;
                    }
                    acc[c as usize] += own[i];
                    cur = self.nodes[c as usize].parent;
                }
            }
        }
        acc.iter().zip(&walked).map(|(a, w)| a + w).collect()
    }

    /// For every layer, (by [`Chains::position`]), the positions in `tops` of the
    /// images whose chain contains it, in image order (4-byte entries: the lists themselves
    /// are the only part that grows with depth × images).
    pub(crate) fn users(&self, tops: &[Vec<&str>]) -> Vec<Vec<u32>> {
        let mut users: Vec<Vec<u32>> = vec![Vec::new(); self.nodes.len()];
        let mut last_seen: Vec<u32> = vec![u32::MAX; self.nodes.len()];
        for (img, ts) in tops.iter().enumerate() {
            let img = img as u32;
            for t in ts {
                let mut cur = self.index.get(*t).copied();
                while let Some(c) = cur {
                    if last_seen[c as usize] == img {
                        break;
                    }
                    last_seen[c as usize] = img;
                    users[c as usize].push(img);
                    cur = self.nodes[c as usize].parent;
                }
            }
        }
        users
    }

    /// Layer IDs by position.
    pub(crate) fn ids(&self) -> &[String] {
        &self.ids
    }
}
