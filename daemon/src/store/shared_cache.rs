//! The local cache of the shared state (etcd backend, ADR 0031 addendum 2):
//! the routes this server last applied from etcd, so that a server
//! restarted while etcd is unreachable still announces them.
//!
//! The cache is written after every change, so its cost per route counts:
//! one B-tree entry per route cost about 2.5 µs of CPU per changed route
//! (a quarter of a following server's work during a 100,000-route
//! injection). The routes are therefore kept in [`BUCKETS`] buckets, each one
//! redb value holding the sorted 52-byte route keys of its bucket
//! concatenated. A change rewrites only the buckets it touches: a large
//! change costs about a memcpy per route, a single change one bucket (1/1024
//! of the set).
//!
//! | table | key | value |
//! |---|---|---|
//! | `shared_state_cache` | bucket, `u16` (0..1024) | sorted route keys (52 bytes each) |
//!
//! The bucket of a route is a fixed function of its key bytes (FNV-1a), so
//! it is the same in every build and process.

use hashbrown::HashMap;
use redb::{ReadableTable, TableDefinition};

use super::{decode_route_key, encode_route_key, Store, StoreError, ROUTE_KEY_LEN};
use crate::wire::Route;

/// The cache table (see the module documentation).
pub(super) const SHARED_CACHE: TableDefinition<u16, &[u8]> =
    TableDefinition::new("shared_state_cache");

/// Number of buckets (part of the table's format).
pub const BUCKETS: u16 = 1024;

type Key = [u8; ROUTE_KEY_LEN];

/// The bucket of an encoded route key.
fn bucket_of(key: &Key) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for &byte in key {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(BUCKETS)) as u16
}

/// The changes of one bucket.
#[derive(Default)]
struct BucketChange {
    add: Vec<Key>,
    remove: Vec<Key>,
}

/// Merges the sorted keys of `old` (a bucket's value) with `change`: the
/// new sorted, duplicate-free value.
fn merged(old: &[u8], mut change: BucketChange) -> Vec<u8> {
    change.add.sort_unstable();
    change.add.dedup();
    change.remove.sort_unstable();
    let mut out = Vec::with_capacity(old.len() + change.add.len() * ROUTE_KEY_LEN);
    let mut adds = change.add.iter().peekable();
    let mut removes = change.remove.iter().peekable();
    let mut push = |key: &[u8], out: &mut Vec<u8>| {
        // A removal wins over a presence (the caller nets out adds and
        // removes of one route before).
        while removes.next_if(|r| r.as_slice() < key).is_some() {}
        if removes.peek().is_some_and(|r| r.as_slice() == key) {
            return;
        }
        out.extend_from_slice(key);
    };
    for old_key in old.chunks_exact(ROUTE_KEY_LEN) {
        while let Some(add) = adds.next_if(|a| a.as_slice() < old_key) {
            push(add, &mut out);
        }
        if adds.peek().is_some_and(|a| a.as_slice() == old_key) {
            adds.next();
        }
        push(old_key, &mut out);
    }
    for add in adds {
        push(add, &mut out);
    }
    out
}

impl Store {
    /// Applies a change to the shared-state cache in one durable
    /// transaction: `add` and `remove` must not share a route.
    pub fn update_shared_cache(&self, add: &[Route], remove: &[Route]) -> Result<(), StoreError> {
        let what = "update shared-state cache";
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let mut buckets: HashMap<u16, BucketChange> = HashMap::new();
        for route in add {
            let key = encode_route_key(route);
            buckets.entry(bucket_of(&key)).or_default().add.push(key);
        }
        for route in remove {
            let key = encode_route_key(route);
            buckets.entry(bucket_of(&key)).or_default().remove.push(key);
        }
        let txn = self.begin_write(what)?;
        {
            let mut table = txn.open_table(SHARED_CACHE).map_err(self.db_err(what))?;
            for (bucket, change) in buckets {
                let new = {
                    let old = table.get(bucket).map_err(self.db_err(what))?;
                    merged(old.as_ref().map_or(&[][..], |v| v.value()), change)
                };
                if new.is_empty() {
                    table.remove(bucket).map_err(self.db_err(what))?;
                } else {
                    table
                        .insert(bucket, new.as_slice())
                        .map_err(self.db_err(what))?;
                }
            }
        }
        txn.commit().map_err(self.db_err(what))
    }

    /// Every route in the shared-state cache (unordered). A damaged entry
    /// is an error naming it.
    pub fn shared_cache_routes(&self) -> Result<Vec<Route>, StoreError> {
        let what = "read shared-state cache";
        let txn = self.db.begin_read().map_err(self.db_err(what))?;
        let table = match txn.open_table(SHARED_CACHE) {
            Ok(table) => table,
            // Written by a build without the cache: nothing cached.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.db_err(what)(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(self.db_err(what))? {
            let (bucket, value) = entry.map_err(self.db_err(what))?;
            let value = value.value();
            if value.len() % ROUTE_KEY_LEN != 0 {
                return Err(self.corrupt(
                    "shared_state_cache",
                    format!(
                        "bucket {}: {} bytes, not a multiple of {ROUTE_KEY_LEN}",
                        bucket.value(),
                        value.len()
                    ),
                ));
            }
            for key in value.chunks_exact(ROUTE_KEY_LEN) {
                out.push(decode_route_key(key).map_err(|e| self.corrupt("shared_state_cache", e))?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> Key {
        let mut k = [0u8; ROUTE_KEY_LEN];
        k[1] = n;
        k
    }

    fn keys(value: &[u8]) -> Vec<u8> {
        value.chunks_exact(ROUTE_KEY_LEN).map(|k| k[1]).collect()
    }

    #[test]
    fn merge_adds_removes_and_keeps_order() {
        let old: Vec<u8> = [key(2), key(4), key(6)].concat();
        let change = BucketChange {
            add: vec![key(5), key(1), key(4), key(5)],
            remove: vec![key(6), key(9)],
        };
        assert_eq!(keys(&merged(&old, change)), vec![1, 2, 4, 5]);
    }

    proptest! {
        /// The merge equals set arithmetic, whatever the inputs.
        #[test]
        fn merge_is_set_arithmetic(
            old in proptest::collection::btree_set(any::<u8>(), 0..40),
            add in proptest::collection::vec(any::<u8>(), 0..40),
            remove in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let remove_set: std::collections::BTreeSet<u8> = remove.iter().copied().collect();
            let add: Vec<u8> = add.into_iter().filter(|a| !remove_set.contains(a)).collect();
            let old_value: Vec<u8> = old.iter().flat_map(|&n| key(n)).collect();
            let change = BucketChange {
                add: add.iter().map(|&n| key(n)).collect(),
                remove: remove.iter().map(|&n| key(n)).collect(),
            };
            let mut want: std::collections::BTreeSet<u8> = old.clone();
            want.extend(add);
            want.retain(|n| !remove_set.contains(n));
            prop_assert_eq!(keys(&merged(&old_value, change)), want.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_bucket_of_a_key_is_fixed() {
        // Part of the on-disk format: a change here strands cached routes.
        assert_eq!(bucket_of(&key(0)), 725);
        assert_eq!(bucket_of(&key(7)), 8);
        let spread: hashbrown::HashSet<u16> = (0..=255).map(|n| bucket_of(&key(n))).collect();
        assert!(spread.len() > 200, "FNV-1a spreads keys: {}", spread.len());
    }
}
