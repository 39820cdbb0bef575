//! The shared update log: how table changes reach every session.
//!
//! The table owner encodes each change once, as a ready UPDATE frame, into an
//! append-only chain of chunks. Every session reads the chain at its own pace
//! through a [`LogCursor`], keeping only the entries it should see (its VNIs,
//! not its own routes). So:
//! * the table never waits for a session, and a slow subscriber loses nothing:
//!   it catches up from the log;
//! * fan-out to M subscribers costs one encoding, not M;
//! * memory is bounded by the slowest reader: chunks are freed as soon as
//!   every cursor has passed them (reference counting). A session whose lag
//!   exceeds a limit is closed by its own task so the client resyncs.
//!
//! SUBSCRIBE and UNSUBSCRIBE are markers in the same log, so a subscriber's
//! dump is ordered exactly between the updates before and after it.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::SessionId;
use crate::wire::{encode_update, Action, Route, Vni};

/// Seal the open chunk once it holds this many bytes of frames.
const CHUNK_BYTES: usize = 64 * 1024;
/// Capacity of a chunk buffer: the frame that crosses [`CHUNK_BYTES`] still
/// fits, so a chunk is one allocation and never grows.
const CHUNK_CAPACITY: usize = CHUNK_BYTES + crate::wire::HEADER_LEN + crate::wire::MAX_SEND_PAYLOAD;

/// One entry of the log.
#[derive(Debug)]
pub enum Entry {
    /// An UPDATE frame, the bytes up to `end` in the chunk's data.
    Update {
        /// End offset of the frame in [`Chunk::data`].
        end: u32,
        /// VNI of the route.
        vni: Vni,
        /// Session whose action caused it (it must not hear its own update).
        origin: SessionId,
    },
    /// `session` subscribed to `vni`; its dump, encoded, is attached.
    Subscribed(Box<SubscribedMarker>),
    /// `session` unsubscribed from `vni`.
    Unsubscribed {
        /// Who.
        session: SessionId,
        /// Which VNI.
        vni: Vni,
    },
}

/// A SUBSCRIBE that took effect at this point of the log.
#[derive(Debug)]
pub struct SubscribedMarker {
    /// Who subscribed.
    pub session: SessionId,
    /// To what.
    pub vni: Vni,
    /// Every route of the VNI at this point (except the session's own), as
    /// UPDATE ADD frames in buffers of whole frames.
    pub dump: Vec<Bytes>,
    /// Number of routes in `dump`.
    pub routes: usize,
    /// When the SUBSCRIBE arrived (for the dump duration metric).
    pub requested_at: Instant,
}

/// A sealed, immutable piece of the log.
#[derive(Debug)]
pub struct Chunk {
    /// Byte position of `data` in the whole log (for lag accounting).
    pub start: u64,
    /// UPDATE frames back to back.
    pub data: Bytes,
    /// Entries in order.
    pub entries: Vec<Entry>,
    /// When the cause of this chunk's first update arrived (an UPDATE read
    /// from a peer, an API call, a session's end): the oldest, as causes are
    /// applied in arrival order. For the propagation latency metric; `None`
    /// if the chunk has no updates.
    pub oldest_cause: Option<Instant>,
    next: OnceLock<Arc<Chunk>>,
}

impl Chunk {
    /// The chunk sealed after this one, once there is one.
    pub fn next(&self) -> Option<&Arc<Chunk>> {
        self.next.get()
    }

    /// Byte position just past this chunk.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

impl Drop for Chunk {
    /// Unlinks the chain iteratively: a long tail that nobody else holds
    /// would otherwise be dropped recursively and could overflow the stack.
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(chunk) = next {
            match Arc::try_unwrap(chunk) {
                Ok(mut chunk) => next = chunk.next.take(),
                Err(_) => break,
            }
        }
    }
}

/// The writing end, owned by the table task.
pub struct LogWriter {
    tail: Arc<Chunk>,
    data: BytesMut,
    entries: Vec<Entry>,
    /// When the cause of the updates being appended now arrived.
    cause: Option<Instant>,
    /// The cause time of the open chunk's first update.
    oldest_cause: Option<Instant>,
    published: tokio::sync::watch::Sender<Arc<Chunk>>,
}

/// The reading side handed to sessions: subscribe to get the newest sealed chunk.
pub type LogWatch = tokio::sync::watch::Receiver<Arc<Chunk>>;

impl LogWriter {
    /// A new, empty log.
    pub fn new() -> Self {
        let tail = Arc::new(Chunk {
            start: 0,
            data: Bytes::new(),
            entries: Vec::new(),
            oldest_cause: None,
            next: OnceLock::new(),
        });
        let (published, _) = tokio::sync::watch::channel(tail.clone());
        Self {
            tail,
            data: BytesMut::with_capacity(CHUNK_CAPACITY),
            entries: Vec::new(),
            cause: None,
            oldest_cause: None,
            published,
        }
    }

    /// A receiver of sealed chunks, for a new session's cursor.
    pub fn watch(&self) -> LogWatch {
        self.published.subscribe()
    }

    /// Records when the cause of the updates appended from now on arrived.
    pub fn set_cause_time(&mut self, at: Instant) {
        self.cause = Some(at);
    }

    /// Appends an UPDATE for `route`, caused by `origin`.
    pub fn append_update(&mut self, action: Action, route: &Route, origin: SessionId) {
        if self.oldest_cause.is_none() {
            self.oldest_cause = self.cause;
        }
        encode_update(action, route, &mut self.data);
        self.entries.push(Entry::Update {
            end: self.data.len() as u32,
            vni: route.vni,
            origin,
        });
        if self.data.len() >= CHUNK_BYTES {
            self.seal();
        }
    }

    /// Appends a marker entry.
    pub fn append_marker(&mut self, entry: Entry) {
        debug_assert!(!matches!(entry, Entry::Update { .. }));
        self.entries.push(entry);
    }

    /// Publishes everything appended so far to the readers.
    pub fn seal(&mut self) {
        if self.entries.is_empty() {
            return;
        }
        let data = self.data.split().freeze();
        // Small chunks (one update on a quiet server) share one buffer; a new
        // one is allocated only when the rest of this one is nearly used up.
        if self.data.capacity() < 4 * (crate::wire::HEADER_LEN + crate::wire::MAX_SEND_PAYLOAD) {
            self.data = BytesMut::with_capacity(CHUNK_CAPACITY);
        }
        let chunk = Arc::new(Chunk {
            start: self.tail.end(),
            data,
            entries: std::mem::take(&mut self.entries),
            oldest_cause: self.oldest_cause.take(),
            next: OnceLock::new(),
        });
        let linked = self.tail.next.set(chunk.clone());
        debug_assert!(linked.is_ok());
        self.tail = chunk.clone();
        // Sent after linking, so a reader woken by it always finds the link.
        self.published.send_replace(chunk);
    }

    /// Byte position of the end of the sealed log.
    pub fn end(&self) -> u64 {
        self.tail.end()
    }
}

impl Default for LogWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// A session's reading position in the log.
#[derive(Debug)]
pub struct LogCursor {
    chunk: Arc<Chunk>,
    /// Next entry to read in `chunk`.
    index: usize,
    /// Byte offset in `chunk.data` where the next UPDATE frame starts.
    offset: usize,
    watch: LogWatch,
}

/// What a cursor yields.
pub enum Item<'a> {
    /// An UPDATE frame of `vni` caused by `origin`.
    Update {
        /// The whole frame.
        frame: &'a Bytes,
        /// Byte range of the frame in `frame` (a slice of the chunk's data).
        range: std::ops::Range<usize>,
        /// Route VNI.
        vni: Vni,
        /// Cause.
        origin: SessionId,
        /// When the oldest cause of the updates of this frame's chunk arrived.
        since: Option<Instant>,
    },
    /// A marker entry.
    Marker(&'a Entry),
}

impl LogCursor {
    /// A cursor positioned at the end of the sealed log: it sees only what is
    /// appended after this call.
    pub fn new(mut watch: LogWatch) -> Self {
        let chunk = watch.borrow_and_update().clone();
        let index = chunk.entries.len();
        let offset = chunk.data.len();
        Self {
            chunk,
            index,
            offset,
            watch,
        }
    }

    /// Calls `f` for each available entry, in order, until `f` returns false
    /// or the sealed log ends. Returns the number of entries consumed.
    pub fn drain(&mut self, mut f: impl FnMut(Item<'_>) -> bool) -> usize {
        let mut consumed = 0;
        loop {
            while self.index < self.chunk.entries.len() {
                let item = match &self.chunk.entries[self.index] {
                    Entry::Update { end, vni, origin } => Item::Update {
                        frame: &self.chunk.data,
                        range: self.offset..*end as usize,
                        vni: *vni,
                        origin: *origin,
                        since: self.chunk.oldest_cause,
                    },
                    marker => Item::Marker(marker),
                };
                let end = match item {
                    Item::Update { ref range, .. } => Some(range.end),
                    Item::Marker(_) => None,
                };
                if !f(item) {
                    return consumed;
                }
                if let Some(end) = end {
                    self.offset = end;
                }
                self.index += 1;
                consumed += 1;
            }
            match self.chunk.next() {
                Some(next) => {
                    self.chunk = next.clone();
                    self.index = 0;
                    self.offset = 0;
                }
                None => return consumed,
            }
        }
    }

    /// Waits until there is something new to read.
    pub async fn readable(&mut self) {
        loop {
            self.watch.borrow_and_update();
            if self.index < self.chunk.entries.len() || self.chunk.next().is_some() {
                return;
            }
            if self.watch.changed().await.is_err() {
                // The writer is gone (shutdown): nothing will ever come.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until there is something new to read (`readable`), or else
    /// until the log grows at all: that lets a session that cannot send
    /// re-check how far it has fallen behind.
    pub async fn wait(&mut self, readable: bool) {
        if readable {
            self.readable().await;
        } else if self.watch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// How many bytes of the sealed log this cursor has not read yet.
    pub fn lag_bytes(&self) -> u64 {
        let newest = self.watch.borrow().end();
        newest.saturating_sub(self.chunk.start + self.offset as u64)
    }
}
