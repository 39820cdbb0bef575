//! Interned next hops: most routes share a handful of next hops (one per
//! hypervisor), so a route stores a 4-byte [`HopId`] instead of the 32-byte hop.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::wire::NextHop;

/// Index of an interned next hop.
pub type HopId = u32;

struct Entry {
    hop: NextHop,
    /// Number of routes using this hop; 0 marks a free entry.
    refs: u32,
}

/// Reference-counted next-hop interner.
#[derive(Default)]
pub struct HopTable {
    entries: Vec<Entry>,
    free: Vec<HopId>,
    index: HashTable<HopId>,
    hasher: DefaultHashBuilder,
}

impl HopTable {
    /// The id of `hop`, adding one reference (interning it if new).
    pub fn intern(&mut self, hop: &NextHop) -> HopId {
        let hash = self.hasher.hash_one(hop);
        if let Some(&id) = self
            .index
            .find(hash, |&id| self.entries[id as usize].hop == *hop)
        {
            self.entries[id as usize].refs += 1;
            return id;
        }
        let entry = Entry { hop: *hop, refs: 1 };
        let id = super::slab_insert(&mut self.entries, &mut self.free, entry);
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index
            .insert_unique(hash, id, |&i| hasher.hash_one(entries[i as usize].hop));
        id
    }

    /// The id of `hop` if it is interned, without adding a reference.
    pub fn lookup(&self, hop: &NextHop) -> Option<HopId> {
        let hash = self.hasher.hash_one(hop);
        self.index
            .find(hash, |&id| self.entries[id as usize].hop == *hop)
            .copied()
    }

    /// The hop behind `id`.
    pub fn get(&self, id: HopId) -> &NextHop {
        &self.entries[id as usize].hop
    }

    /// Drops one reference; the hop is forgotten with its last reference.
    pub fn release(&mut self, id: HopId) {
        let entry = &mut self.entries[id as usize];
        debug_assert!(entry.refs > 0);
        entry.refs -= 1;
        if entry.refs == 0 {
            let hash = self.hasher.hash_one(entry.hop);
            if let Ok(e) = self.index.find_entry(hash, |&i| i == id) {
                e.remove();
            }
            self.free.push(id);
        }
    }

    /// Number of distinct hops in use.
    pub fn len(&self) -> usize {
        self.index.len()
    }
}
