//! The daemon's crash-safe state store: operator intent that must survive a
//! restart, a `kill -9` and a power loss (ARCHITECTURE property 8).
//!
//! What lives here is what an operator asked for through the API: injected
//! routes, and (for later features) servers to connect to, subscriptions and
//! VNI-to-kernel-table mappings, as a namespaced string key/value set. Routes
//! learned from peers are soft state and never stored.
//!
//! The store is one [`redb`] file, `state.redb`, in the state directory.
//! Every mutating call is one redb write transaction committed with
//! [`Durability::Immediate`] (fsync before returning), so a call that returned
//! `Ok` is on disk and a call interrupted by a crash left either all or none of
//! its changes. redb also takes an exclusive `flock` on the file, which is how
//! a second daemon on the same directory is refused ([`StoreError::InUse`]).
//!
//! Commits use redb's quick-repair mode, so the allocator state is on disk
//! after every commit and closing the store writes nothing: an idle daemon
//! exits at once after SIGTERM.
//!
//! The API is synchronous: redb blocks on fsync. Async callers run it inside
//! `tokio::task::spawn_blocking` (the store is `Send + Sync`; share it with an
//! `Arc`).
//!
//! # Layout (schema version 1)
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` (`"schema_version"`) | `u64` |
//! | `injected_routes` | route key, see below (`&[u8]`) | `()` |
//! | `operator_state` | `(namespace: &str, key: &str)` | `&str` |
//! | `client_announcements` | owner (ASCII, at most 64 bytes), `0`, route key (`&[u8]`) | `()` |
//! | `shared_state_cache` | bucket (`u16`) | route keys (`&[u8]`), see [`shared_cache`] |
//!
//! `client_announcements` holds the client role's runtime announcements by
//! owner (ADR 0021): binary keys, so that storing 100,000 routes costs byte
//! comparisons, not text formatting and UTF-8 checks per comparison. It was
//! added to schema version 1 (older builds ignore it); the first build with it
//! moves the records an earlier build kept in `operator_state` (namespace
//! `client.announcements`) into it ([`Store::adopt_owner_routes`]).
//!
//! The `meta` table keeps this type forever, so any future version can be
//! recognised and refused ([`StoreError::NewerSchema`]) before its other
//! tables are touched.
//!
//! # Route key, format version 1 (52 bytes, big-endian integers)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | key format version, `1` |
//! | 1 | 4 | VNI, `u32` |
//! | 5 | 1 | destination address length, 4 or 16 |
//! | 6 | 16 | destination address; IPv4 uses the first 4 bytes, the rest are zero |
//! | 22 | 1 | destination prefix length, at most 8 x address length |
//! | 23 | 1 | next-hop address length, 4 or 16 |
//! | 24 | 16 | next-hop address, same padding rule |
//! | 40 | 4 | target VNI, `u32` |
//! | 44 | 4 | next-hop type, `i32` with the sign bit flipped |
//! | 48 | 2 | first NAT port, `u16` |
//! | 50 | 2 | last NAT port, `u16` |
//!
//! Flipping the sign bit of the type makes byte order equal signed order, so
//! the byte order of keys is exactly the derived [`Ord`] of [`Route`]: VNI,
//! then destination (address length, address bytes, prefix length), then next
//! hop (address length, address bytes, target VNI, type, NAT from, NAT to).
//! A listing of the table is therefore sorted the way the rest of the daemon
//! sorts routes.

use std::ffi::{CString, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, Durability, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::wire::{Address, Destination, NextHop, NextHopType, Route, Vni};

pub mod shared_cache;

/// Name of the database file inside the state directory.
pub const STATE_FILE: &str = "state.redb";

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u64 = 1;

/// First byte of every route key: the key format version.
pub const ROUTE_KEY_VERSION: u8 = 1;

/// Length of an encoded route key (format version 1).
pub const ROUTE_KEY_LEN: usize = 52;

const SCHEMA_KEY: &str = "schema_version";
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
// Keys are variable-width `&[u8]` rather than `[u8; 52]`: redb unwraps the
// length of fixed-width keys when reading them back, so a damaged key would
// panic inside redb; this way `decode_route_key` sees it and reports it.
const ROUTES: TableDefinition<&[u8], ()> = TableDefinition::new("injected_routes");
const KV: TableDefinition<(&str, &str), &str> = TableDefinition::new("operator_state");
const OWNER_ROUTES: TableDefinition<&[u8], ()> = TableDefinition::new("client_announcements");

/// The key of `route` owned by `owner` in `client_announcements`.
fn owner_route_key(owner: &str, route: &Route) -> Vec<u8> {
    let mut key = Vec::with_capacity(owner.len() + 1 + ROUTE_KEY_LEN);
    key.extend_from_slice(owner.as_bytes());
    key.push(0);
    key.extend_from_slice(&encode_route_key(route));
    key
}

/// Why a state-store operation failed. Every variant names the file or
/// directory involved, so the message alone tells an operator where to look.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created or inspected.
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The state directory belongs to another (non-root) user; using it
    /// would let that user rewrite our state (e.g. a squatted `/tmp` path).
    #[error("state directory {path} is owned by uid {owner}, not by this user (uid {uid}) or root; refusing to use it")]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        uid: u32,
    },
    /// The database file could not be created.
    #[error("cannot create state store {path}: {source}")]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another process (normally another metalbondd) holds the file lock.
    #[error("state store {path} is in use by another process (is another metalbondd running with the same state directory?)")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer metalbondd with a schema this build
    /// does not know. Nothing was changed.
    #[error("state store {path} has schema version {found}, but this metalbondd understands only up to {supported}; upgrade metalbondd or use another state directory")]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Version found in the file.
        found: u64,
        /// Highest version this build understands.
        supported: u64,
    },
    /// A stored entry is not valid; it is reported, never guessed at.
    #[error("state store {path}: corrupt entry in table {table}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The table holding the entry.
        table: &'static str,
        /// What is wrong, with the raw entry.
        detail: String,
    },
    /// A route that cannot be represented faithfully (prefix longer than the
    /// address) was refused before anything was written.
    #[error("state store {path}: refusing to store invalid route {route}: prefix length exceeds the address width")]
    InvalidRoute {
        /// The file.
        path: PathBuf,
        /// The route, in announcement text form.
        route: String,
    },
    /// redb failed (I/O error, damaged file, ...).
    #[error("state store {path}: {what} failed: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// The operation that failed.
        what: &'static str,
        /// redb's error (boxed: it is large and this is the cold path).
        source: Box<redb::Error>,
    },
}

/// The daemon's state store. See the module documentation.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`: the directory with mode
    /// 0700 and `dir/state.redb` with mode 0600. Fails with
    /// [`StoreError::InUse`] if another process has the file open, and with
    /// [`StoreError::NewerSchema`] if a newer metalbondd wrote it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let created = create_private_dir(dir)?;
        check_owner(dir)?;
        let path = dir.join(STATE_FILE);
        // Create the file ourselves so it gets 0600 whatever the umask; redb
        // initialises an existing empty file as a new database.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::CreateFile {
                path: path.clone(),
                source,
            })?;
        let db = match Database::builder().create(&path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse { path }),
            Err(e) => {
                return Err(StoreError::Db {
                    path,
                    what: "open",
                    source: Box::new(e.into()),
                })
            }
        };
        // redb fsyncs the file but not the directory entries naming it; without
        // this a power loss right after first start could lose the whole file.
        let sync = |d: &Path| {
            File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(|source| StoreError::CreateDir {
                    path: d.to_path_buf(),
                    source,
                })
        };
        sync(dir)?;
        if created {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync(parent)?;
            }
        }
        let store = Store { db, path };
        store.init_schema()?;
        Ok(store)
    }

    /// Path of the database file (`<dir>/state.redb`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores injected routes in one durable transaction. Returns, per route,
    /// true if it was newly stored and false if it was already there (also for
    /// the second copy of a route given twice). All or nothing: an invalid
    /// route fails the whole call before anything is written.
    pub fn add_routes(&self, routes: &[Route]) -> Result<Vec<bool>, StoreError> {
        if let Some(bad) = routes.iter().find(|r| !route_is_valid(r)) {
            return Err(StoreError::InvalidRoute {
                path: self.path.clone(),
                route: bad.to_string(),
            });
        }
        self.write_routes("add routes", routes, |table, key| {
            Ok(table.insert(key, ())?.is_none())
        })
    }

    /// Removes injected routes in one durable transaction. Returns, per route,
    /// true if it was there.
    pub fn remove_routes(&self, routes: &[Route]) -> Result<Vec<bool>, StoreError> {
        self.write_routes("remove routes", routes, |table, key| {
            Ok(table.remove(key)?.is_some())
        })
    }

    /// All injected routes, in key order (the derived order of [`Route`]).
    /// A stored key that does not decode is an error naming it.
    pub fn routes(&self) -> Result<Vec<Route>, StoreError> {
        let what = "read routes";
        let txn = self.db.begin_read().map_err(self.db_err(what))?;
        let table = txn.open_table(ROUTES).map_err(self.db_err(what))?;
        let mut out = Vec::with_capacity(table.len().map_err(self.db_err(what))? as usize);
        for entry in table.iter().map_err(self.db_err(what))? {
            let (key, _) = entry.map_err(self.db_err(what))?;
            let route =
                decode_route_key(key.value()).map_err(|e| self.corrupt("injected_routes", e))?;
            out.push(route);
        }
        Ok(out)
    }

    /// How many injected routes are stored (no decoding).
    pub fn route_count(&self) -> Result<u64, StoreError> {
        let what = "count routes";
        let txn = self.db.begin_read().map_err(self.db_err(what))?;
        let table = txn.open_table(ROUTES).map_err(self.db_err(what))?;
        table.len().map_err(self.db_err(what))
    }

    /// True if `route` is stored.
    pub fn contains_route(&self, route: &Route) -> Result<bool, StoreError> {
        let what = "look up route";
        let txn = self.db.begin_read().map_err(self.db_err(what))?;
        let table = txn.open_table(ROUTES).map_err(self.db_err(what))?;
        let key = encode_route_key(route);
        Ok(table
            .get(key.as_slice())
            .map_err(self.db_err(what))?
            .is_some())
    }

    /// Sets `key` to `value` in `namespace`, durably.
    pub fn put(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError> {
        let what = "put";
        let txn = self.begin_write(what)?;
        {
            let mut table = txn.open_table(KV).map_err(self.db_err(what))?;
            table
                .insert((namespace, key), value)
                .map_err(self.db_err(what))?;
        }
        txn.commit().map_err(self.db_err(what))
    }

    /// Sets every `(key, value)` of `puts` and deletes every key of
    /// `deletes` in `namespace`, in one durable transaction (all or
    /// nothing; nothing is written when both are empty).
    pub fn write_batch(
        &self,
        namespace: &str,
        puts: &[(String, String)],
        deletes: &[String],
    ) -> Result<(), StoreError> {
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let what = "write batch";
        let txn = self.begin_write(what)?;
        {
            let mut table = txn.open_table(KV).map_err(self.db_err(what))?;
            for key in deletes {
                table
                    .remove((namespace, key.as_str()))
                    .map_err(self.db_err(what))?;
            }
            for (key, value) in puts {
                table
                    .insert((namespace, key.as_str()), value.as_str())
                    .map_err(self.db_err(what))?;
            }
        }
        txn.commit().map_err(self.db_err(what))
    }

    /// `owner` announces `add` too and no longer `remove`, in one durable
    /// transaction (nothing is written when both are empty).
    pub fn write_owner_routes(
        &self,
        owner: &str,
        add: &[Route],
        remove: &[Route],
    ) -> Result<(), StoreError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let what = "write announcements";
        let txn = self.begin_write(what)?;
        {
            let mut table = txn.open_table(OWNER_ROUTES).map_err(self.db_err(what))?;
            for route in remove {
                table
                    .remove(owner_route_key(owner, route).as_slice())
                    .map_err(self.db_err(what))?;
            }
            for route in add {
                table
                    .insert(owner_route_key(owner, route).as_slice(), ())
                    .map_err(self.db_err(what))?;
            }
        }
        txn.commit().map_err(self.db_err(what))
    }

    /// Every (owner, route) of `client_announcements`, sorted by owner then
    /// route. A key that does not decode is an error naming it.
    pub fn owner_routes(&self) -> Result<Vec<(String, Route)>, StoreError> {
        let what = "read announcements";
        let txn = self.db.begin_read().map_err(self.db_err(what))?;
        let table = txn.open_table(OWNER_ROUTES).map_err(self.db_err(what))?;
        let mut out = Vec::with_capacity(table.len().map_err(self.db_err(what))? as usize);
        for entry in table.iter().map_err(self.db_err(what))? {
            let (key, _) = entry.map_err(self.db_err(what))?;
            let key = key.value();
            let decoded = key
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| "no owner separator".to_string())
                .and_then(|at| {
                    let owner = std::str::from_utf8(&key[..at])
                        .map_err(|_| "the owner is not UTF-8".to_string())?;
                    Ok((owner.to_string(), decode_route_key(&key[at + 1..])?))
                })
                .map_err(|e| self.corrupt("client_announcements", e))?;
            out.push(decoded);
        }
        Ok(out)
    }

    /// Moves records of an earlier layout into `client_announcements` in one
    /// durable transaction: `routes` are stored and the keys `legacy` of
    /// `namespace` in `operator_state` deleted.
    pub fn adopt_owner_routes(
        &self,
        namespace: &str,
        legacy: &[String],
        routes: &[(String, Route)],
    ) -> Result<(), StoreError> {
        let what = "move announcements";
        let txn = self.begin_write(what)?;
        {
            let mut kv = txn.open_table(KV).map_err(self.db_err(what))?;
            for key in legacy {
                kv.remove((namespace, key.as_str()))
                    .map_err(self.db_err(what))?;
            }
            let mut table = txn.open_table(OWNER_ROUTES).map_err(self.db_err(what))?;
            for (owner, route) in routes {
                table
                    .insert(owner_route_key(owner, route).as_slice(), ())
                    .map_err(self.db_err(what))?;
            }
        }
        txn.commit().map_err(self.db_err(what))
    }

    /// Deletes `key` from `namespace`, durably. Returns true if it was there.
    pub fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let what = "delete";
        let txn = self.begin_write(what)?;
        let existed = {
            let mut table = txn.open_table(KV).map_err(self.db_err(what))?;
            let old = table.remove((namespace, key)).map_err(self.db_err(what))?;
            old.is_some()
        };
        if existed {
            txn.commit().map_err(self.db_err(what))?;
        } else {
            // Nothing changed: skip the fsync.
            txn.abort().map_err(self.db_err(what))?;
        }
        Ok(existed)
    }

    /// All `(key, value)` pairs of `namespace`, sorted by key.
    pub fn list(&self, namespace: &str) -> Result<Vec<(String, String)>, StoreError> {
        let what = "list";
        let txn = self.db.begin_read().map_err(self.db_err(what))?;
        let table = txn.open_table(KV).map_err(self.db_err(what))?;
        let mut out = Vec::new();
        // Keys sort by namespace first, so a namespace is one contiguous run
        // starting at (namespace, "").
        for entry in table
            .range::<(&str, &str)>((namespace, "")..)
            .map_err(self.db_err(what))?
        {
            let (k, v) = entry.map_err(self.db_err(what))?;
            let (ns, key) = k.value();
            if ns != namespace {
                break;
            }
            out.push((key.to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }

    /// Shared body of `add_routes` / `remove_routes`: one write transaction,
    /// `op` applied to every encoded key, committed only if something changed.
    fn write_routes(
        &self,
        what: &'static str,
        routes: &[Route],
        op: impl Fn(&mut redb::Table<&[u8], ()>, &[u8]) -> Result<bool, redb::StorageError>,
    ) -> Result<Vec<bool>, StoreError> {
        if routes.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.begin_write(what)?;
        let mut out = Vec::with_capacity(routes.len());
        {
            let mut table = txn.open_table(ROUTES).map_err(self.db_err(what))?;
            for route in routes {
                let key = encode_route_key(route);
                out.push(op(&mut table, key.as_slice()).map_err(self.db_err(what))?);
            }
        }
        if out.iter().any(|&changed| changed) {
            txn.commit().map_err(self.db_err(what))?;
        } else {
            // Nothing changed: skip the fsync.
            txn.abort().map_err(self.db_err(what))?;
        }
        Ok(out)
    }

    /// Checks the schema version, writes it into a new file, and creates the
    /// tables so that read transactions always find them.
    fn init_schema(&self) -> Result<(), StoreError> {
        let what = "initialise schema";
        let txn = self.begin_write(what)?;
        {
            let mut meta = txn.open_table(META).map_err(self.db_err(what))?;
            let found = meta
                .get(SCHEMA_KEY)
                .map_err(self.db_err(what))?
                .map(|v| v.value());
            match found {
                Some(found) if found > SCHEMA_VERSION => {
                    // `txn` is dropped without commit: nothing is written.
                    return Err(StoreError::NewerSchema {
                        path: self.path.clone(),
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(0) => {
                    return Err(self.corrupt("meta", format!("{SCHEMA_KEY} is 0")));
                }
                Some(_) => {}
                None => {
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
                        .map_err(self.db_err(what))?;
                }
            }
        }
        txn.open_table(ROUTES).map_err(self.db_err(what))?;
        txn.open_table(KV).map_err(self.db_err(what))?;
        txn.open_table(OWNER_ROUTES).map_err(self.db_err(what))?;
        txn.commit().map_err(self.db_err(what))
    }

    fn begin_write(&self, what: &'static str) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(self.db_err(what))?;
        // Immediate is redb's default; set it anyway because durability on
        // return is this module's contract, not an accident of defaults.
        txn.set_durability(Durability::Immediate);
        // Every commit also saves redb's allocator state. Otherwise closing
        // the database makes one more commit to save it (several fsyncs,
        // on a slow disk the better part of 2 s between SIGTERM and exit),
        // and the start, whose schema check commits, always left it stale.
        txn.set_quick_repair(true);
        Ok(txn)
    }

    fn db_err<E: Into<redb::Error>>(
        &self,
        what: &'static str,
    ) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| StoreError::Db {
            path: self.path.clone(),
            what,
            source: Box::new(e.into()),
        }
    }

    fn corrupt(&self, table: &'static str, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            table,
            detail,
        }
    }
}

/// A route can be stored if its prefix fits its address. (Addresses are
/// always canonical: their fields are private to `metalbond_types::route`.)
fn route_is_valid(route: &Route) -> bool {
    route.dest.prefix_len <= route.dest.addr.bit_width()
}

fn put_addr(out: &mut [u8], addr: &Address) {
    let raw = addr.as_bytes();
    out[0] = raw.len() as u8;
    out[1..1 + raw.len()].copy_from_slice(raw);
}

/// Encodes a route as its key, format version 1 (see the module docs).
/// Byte order of keys equals the derived order of [`Route`].
pub fn encode_route_key(route: &Route) -> [u8; ROUTE_KEY_LEN] {
    let mut k = [0u8; ROUTE_KEY_LEN];
    k[0] = ROUTE_KEY_VERSION;
    k[1..5].copy_from_slice(&route.vni.0.to_be_bytes());
    put_addr(&mut k[5..22], &route.dest.addr);
    k[22] = route.dest.prefix_len;
    let nh = &route.next_hop;
    put_addr(&mut k[23..40], &nh.addr);
    k[40..44].copy_from_slice(&nh.target_vni.to_be_bytes());
    k[44..48].copy_from_slice(&((nh.kind.0 as u32) ^ 0x8000_0000).to_be_bytes());
    k[48..50].copy_from_slice(&nh.nat_from.to_be_bytes());
    k[50..52].copy_from_slice(&nh.nat_to.to_be_bytes());
    k
}

fn get_addr(raw: &[u8], field: &str) -> Result<Address, String> {
    let len = raw[0] as usize;
    if len != 4 && len != 16 {
        return Err(format!("{field} address length {len} (want 4 or 16)"));
    }
    // IPv4 padding must be zero: `Address` compares all 16 bytes, so a
    // non-zero pad would make a route that never equals the one announced.
    if raw[1 + len..].iter().any(|&b| b != 0) {
        return Err(format!("{field} address has non-zero padding"));
    }
    Address::from_slice(&raw[1..1 + len]).ok_or_else(|| format!("{field} address"))
}

fn be_u32(raw: &[u8]) -> u32 {
    u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]])
}

fn be_u16(raw: &[u8]) -> u16 {
    u16::from_be_bytes([raw[0], raw[1]])
}

/// Decodes a route key, checking every field. The error says what is wrong
/// and shows the raw key in hex.
pub fn decode_route_key(raw: &[u8]) -> Result<Route, String> {
    decode_route_key_inner(raw).map_err(|why| format!("route key {}: {why}", hex(raw)))
}

fn decode_route_key_inner(k: &[u8]) -> Result<Route, String> {
    if k.len() != ROUTE_KEY_LEN {
        return Err(format!("length {} (want {ROUTE_KEY_LEN})", k.len()));
    }
    if k[0] != ROUTE_KEY_VERSION {
        return Err(format!(
            "unknown key format version {} (want {ROUTE_KEY_VERSION})",
            k[0]
        ));
    }
    let dest_addr = get_addr(&k[5..22], "destination")?;
    let dest = Destination::new(dest_addr, k[22]).ok_or_else(|| {
        format!(
            "prefix length {} exceeds {} bits",
            k[22],
            dest_addr.bit_width()
        )
    })?;
    let next_hop = NextHop {
        addr: get_addr(&k[23..40], "next-hop")?,
        target_vni: be_u32(&k[40..44]),
        kind: NextHopType((be_u32(&k[44..48]) ^ 0x8000_0000) as i32),
        nat_from: be_u16(&k[48..50]),
        nat_to: be_u16(&k[50..52]),
    };
    Ok(Route {
        vni: Vni(be_u32(&k[1..5])),
        dest,
        next_hop,
    })
}

fn hex(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates `dir` (and missing parents) with mode 0700. Returns true if it
/// had to be created. An existing directory keeps its mode: the operator
/// may have chosen it.
fn create_private_dir(dir: &Path) -> Result<bool, StoreError> {
    if dir.is_dir() {
        return Ok(false);
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    Ok(true)
}

/// Refuses a directory owned by another non-root user: the `/tmp` fallback
/// path is predictable, and someone else could have created it first.
fn check_owner(dir: &Path) -> Result<(), StoreError> {
    let meta = fs::metadata(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let uid = effective_uid();
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(StoreError::NotOwned {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Picks the first candidate directory that `usable` accepts, else
/// `fallback`. Pure: the probe is passed in, so the decision is testable.
pub fn choose_dir(
    candidates: &[PathBuf],
    fallback: PathBuf,
    usable: impl Fn(&Path) -> bool,
) -> PathBuf {
    candidates
        .iter()
        .find(|c| usable(c))
        .cloned()
        .unwrap_or(fallback)
}

/// An environment variable naming a base directory: unset, empty and
/// relative values are ignored (the XDG base directory rules).
fn env_base(value: Option<OsString>) -> Option<PathBuf> {
    value
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// Whose default paths: a route server (also a daemon that runs both
/// roles) or the client (hypervisor) role alone, so that both can run on
/// one host with their defaults. The names match the systemd units'
/// `StateDirectory=` and `RuntimeDirectory=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRole {
    /// `metalbondd` (`/var/lib/metalbondd`, `/run/metalbondd/api.sock`).
    Server,
    /// `metalbondd-client` (`/var/lib/metalbondd-client`,
    /// `/run/metalbondd-client/api.sock`).
    Client,
}

impl PathRole {
    /// The directory name under `/var/lib`, `/run` and the XDG bases.
    pub fn dir_name(self) -> &'static str {
        match self {
            PathRole::Server => "metalbondd",
            PathRole::Client => "metalbondd-client",
        }
    }
}

fn state_dir_candidates(
    role: PathRole,
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
) -> Vec<PathBuf> {
    let name = role.dir_name();
    let mut out = vec![Path::new("/var/lib").join(name)];
    out.extend(env_base(xdg_state_home).map(|d| d.join(name)));
    out.extend(env_base(home).map(|h| h.join(".local/state").join(name)));
    out
}

fn runtime_dir_candidates(role: PathRole, xdg_runtime_dir: Option<OsString>) -> Vec<PathBuf> {
    let name = role.dir_name();
    let mut out = vec![Path::new("/run").join(name)];
    out.extend(env_base(xdg_runtime_dir).map(|d| d.join(name)));
    out
}

fn tmp_fallback(role: PathRole, uid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/{}-{uid}", role.dir_name()))
}

/// True if `dir` exists and we may create files in it, or does not exist
/// and its nearest existing ancestor lets us create it. Creates nothing.
fn dir_usable(dir: &Path) -> bool {
    let mut p = dir;
    loop {
        match fs::metadata(p) {
            Ok(m) => return m.is_dir() && writable(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => return false,
            },
            Err(_) => return false,
        }
    }
}

/// Write and search permission for the effective uid (`AT_EACCESS`), which
/// also says no on a read-only file system.
fn writable(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        ) == 0
    }
}

/// Default state directory of `role` (here for the server,
/// `metalbondd-client` instead of `metalbondd` for the client role):
/// `/var/lib/metalbondd` if it is writable or can be created (normally:
/// running as root), else `$XDG_STATE_HOME/metalbondd`, else
/// `$HOME/.local/state/metalbondd`, else `/tmp/metalbondd-<uid>` (which may
/// not survive a reboot).
pub fn default_state_dir(role: PathRole) -> PathBuf {
    let candidates = state_dir_candidates(
        role,
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
    );
    choose_dir(&candidates, tmp_fallback(role, effective_uid()), dir_usable)
}

/// Default control API socket of `role` (see [`default_state_dir`] for
/// the client role's names): `/run/metalbondd/api.sock` if
/// `/run/metalbondd` is writable or can be created, else
/// `$XDG_RUNTIME_DIR/metalbondd/api.sock`, else
/// `/tmp/metalbondd-<uid>/api.sock`.
pub fn default_api_socket(role: PathRole) -> PathBuf {
    let candidates = runtime_dir_candidates(role, std::env::var_os("XDG_RUNTIME_DIR"));
    choose_dir(&candidates, tmp_fallback(role, effective_uid()), dir_usable).join("api.sock")
}

#[cfg(test)]
mod tests;
