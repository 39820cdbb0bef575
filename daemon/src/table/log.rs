//! Per-VNI fan-out: how table changes reach the sessions that want them
//! (ADR 0011, which replaces the single shared log of ADR 0002).
//!
//! The table owner encodes each change once, as a ready UPDATE frame, into a
//! scratch arena, and remembers per VNI the runs of frames it appended and
//! which session caused each run. When it seals (after each batch of
//! commands, at most once per 20 ms while its readers are behind (ADR 0032);
//! before an UNSUBSCRIBE of that VNI, before a watch snapshot, or when the
//! arena is full) it copies each touched VNI's frames
//! into one buffer sized to its content, contiguous per VNI, and hands every
//! subscriber of that VNI a zero-copy slice of it through the subscriber's
//! [`Mailbox`]. So:
//! * an update costs work proportional to the subscribers of its VNI, not to
//!   all sessions; a session is woken only when something it wants arrived,
//!   and only once until it has taken its mail (coalesced wake-ups);
//! * fan-out to M subscribers costs one encoding and M `Bytes` clones per VNI
//!   and batch, never per route;
//! * the table never waits: delivering is pushing a slice onto a queue. A
//!   mailbox that holds more than its reader's lag limit is cleared and
//!   marked overflowed (its reader closes the session, the client resyncs),
//!   so memory stays bounded by the limit, per reader;
//! * a SUBSCRIBE's dump is pushed into the subscriber's mailbox at once, and
//!   the subscriber hears only the runs its VNI appends after that, so the
//!   dump sits exactly between the updates before it (contained in the dump,
//!   never delivered again) and after it. The VNI is not sealed for it: its
//!   other subscribers still get the whole batch in one mail (a reconnect
//!   storm's SUBSCRIBEs cut every popular VNI's batches into pieces);
//! * a session never hears its own updates: runs caused by it are skipped
//!   when its slices are cut.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;

use super::SessionId;
use crate::wire::{decode_updates, encode_update, Action, FrameMarks, Route, Update, Vni};

/// Seal everything once the arena holds this many bytes of frames: bounds
/// the latency of a long batch and the size of a sealed buffer.
const SEAL_BYTES: usize = 256 * 1024;

/// What a reader receives, in the order the table decided it.
#[derive(Debug)]
pub enum Mail {
    /// Live updates: whole UPDATE frames back to back, a zero-copy slice of a
    /// sealed buffer shared by every subscriber of the VNI.
    Updates {
        /// The frames.
        frames: Bytes,
        /// Their marks, if the slice is long enough to have any: computed
        /// once per seal and shared like the frames.
        marks: Option<FrameMarks>,
        /// How many frames.
        count: u32,
        /// When the oldest cause of these updates arrived (for the
        /// propagation latency metric).
        since: Option<CauseTime>,
    },
    /// The answer to a SUBSCRIBE: every route of the VNI at that point
    /// (except the subscriber's own), as UPDATE ADD frames.
    Dump {
        /// The VNI subscribed to.
        vni: Vni,
        /// Buffers of whole frames.
        frames: Vec<Bytes>,
        /// Number of routes.
        routes: usize,
        /// When the SUBSCRIBE arrived (for the dump duration metric).
        requested_at: Instant,
    },
}

/// When the cause of an update arrived, in 8 bytes rather than an
/// `Instant`'s 16: nanoseconds since a process-wide epoch. Every queued mail
/// carries one, and a mail of 56 bytes rather than 64 keeps an idle
/// session's queues (16 mails of room) and a busy one's (128) smaller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CauseTime(NonZeroU64);

/// The epoch of [`CauseTime`]: an hour before the first instant converted
/// (this module reads no clock), so that somewhat earlier instants are still
/// told apart.
static CAUSE_EPOCH: OnceLock<Instant> = OnceLock::new();

impl CauseTime {
    /// `at`, to the nanosecond (an instant before the epoch counts as the epoch).
    pub fn of(at: Instant) -> Self {
        let epoch =
            *CAUSE_EPOCH.get_or_init(|| at.checked_sub(Duration::from_secs(3600)).unwrap_or(at));
        let nanos = at.saturating_duration_since(epoch).as_nanos();
        Self(NonZeroU64::MIN.saturating_add(u64::try_from(nanos).unwrap_or(u64::MAX - 1)))
    }

    /// The instant it stands for.
    pub fn instant(self) -> Instant {
        let epoch = CAUSE_EPOCH
            .get()
            .expect("set by the `of` that made this value");
        *epoch + Duration::from_nanos(self.0.get() - 1)
    }
}

impl Mail {
    /// Bytes of frames this mail carries.
    pub fn len(&self) -> usize {
        match self {
            Mail::Updates { frames, .. } => frames.len(),
            Mail::Dump { frames, .. } => frames.iter().map(Bytes::len).sum(),
        }
    }

    /// True when it carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The updates this mail carries, decoded in order (a dump's are all
    /// ADDs). For readers that want routes rather than bytes to write, such
    /// as a route watch; sessions write the frames as they are.
    pub fn updates(&self) -> impl Iterator<Item = Update> + '_ {
        let buffers: &[Bytes] = match self {
            Mail::Updates { frames, .. } => std::slice::from_ref(frames),
            Mail::Dump { frames, .. } => frames,
        };
        buffers.iter().flat_map(|frames| decode_updates(frames))
    }
}

/// One reader's queue of mail: written by the table task, read by one
/// session task (or route watcher). The lock is held only to push one item
/// or to swap queues, never across routing work or I/O.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Queues>,
    /// Bytes of frames queued (what the reader has not taken yet).
    queued: AtomicU64,
    /// Items queued (written under the lock, read without it). The reader
    /// looks here before taking the lock, so that its turns with nothing to
    /// take (most turns of a session in churn: its echoes) do not take the
    /// line the table writes to; the table asks whether a reader is behind
    /// ([`Mailbox::is_behind`]).
    items: AtomicUsize,
    /// Set when a queue grew past [`SMALL_QUEUE`] items: only then has
    /// [`Mailbox::release_if_empty`] anything to release (it then takes
    /// the lock; churn's sessions never do).
    grown: AtomicBool,
    /// Queued bytes above which the mailbox overflows.
    limit: u64,
    /// Set once the limit was exceeded: nothing more is delivered.
    overflowed: AtomicBool,
    /// The queued bytes when it overflowed (for the close reason).
    overflowed_at: AtomicU64,
    /// Set when the reader is gone: the writer forgets the mailbox.
    closed: AtomicBool,
    /// Wakes the reader; notified once per transition from empty to not empty.
    wake: crate::signal::Signal,
}

/// Most items whose queue memory a mailbox keeps between bursts (in each of
/// its two queues, about 4 KiB): the queues do not grow again from nothing
/// for every burst, and [`Mailbox::release_if_empty`] gives it back once the
/// reader is idle.
const KEEP_QUEUE: usize = 64;
/// Items an empty queue makes room for at its first push, and the room an
/// idle reader's queues keep (512 bytes each): churn's single deliveries
/// then allocate nothing, and a new session's queue does not grow in steps.
const SMALL_QUEUE: usize = 8;

/// The queue the writer pushes onto, and the emptied one the reader swapped
/// out last time: the writer goes on with its memory while the reader works
/// outside the lock, so neither reallocates in a burst.
#[derive(Debug, Default)]
struct Queues {
    live: VecDeque<Mail>,
    spare: VecDeque<Mail>,
}

impl Mailbox {
    /// A new mailbox that overflows when more than `limit` bytes are queued.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queues::default()),
            queued: AtomicU64::new(0),
            items: AtomicUsize::new(0),
            grown: AtomicBool::new(false),
            limit,
            overflowed: AtomicBool::new(false),
            overflowed_at: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            wake: crate::signal::Signal::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `mail` (writer side). Never blocks on the reader: if the reader
    /// is too far behind, the queue is dropped and the mailbox overflows.
    pub fn push(&self, mail: Mail) {
        let len = mail.len() as u64;
        let mut q = self.lock();
        if self.overflowed.load(Relaxed) || self.closed.load(Relaxed) {
            return;
        }
        let queued = self.queued.load(Relaxed) + len;
        if queued > self.limit {
            self.overflowed_at.store(queued, Relaxed);
            self.overflowed.store(true, Relaxed);
            self.queued.store(0, Relaxed);
            self.items.store(0, Relaxed);
            let dropped = std::mem::take(&mut *q);
            drop(q);
            drop(dropped);
            self.wake.notify();
            return;
        }
        if q.live.capacity() == 0 {
            // A new or idle reader's first mail: room for a burst (a
            // reconnect's dumps and updates) at once, not in four steps.
            q.live.reserve(SMALL_QUEUE);
        }
        q.live.push_back(mail);
        self.queued.store(queued, Relaxed);
        self.items.store(q.live.len(), Relaxed);
        if q.live.len() > SMALL_QUEUE {
            self.grown.store(true, Relaxed);
        }
        let was_empty = q.live.len() == 1;
        drop(q);
        // Told once until the reader has taken what is there.
        if was_empty {
            self.wake.notify();
        }
    }

    /// True when two or more mails are queued: the reader has not taken
    /// an earlier one yet, not only the last one just sent. A look without
    /// the lock, for heuristics (a push or a take may be racing with it).
    pub fn is_behind(&self) -> bool {
        self.items.load(Relaxed) >= 2
    }

    /// Takes mail in order while `take` accepts it (reader side). Returns the
    /// number of items taken.
    pub fn take_while(&self, mut take: impl FnMut(Mail) -> Result<(), Mail>) -> usize {
        self.take_while_counted(|mail, _| take(mail))
    }

    /// [`Mailbox::take_while`], telling `take` with each item how many more
    /// are queued behind it, so that the reader can make room for them at
    /// once.
    pub fn take_while_counted(
        &self,
        mut take: impl FnMut(Mail, usize) -> Result<(), Mail>,
    ) -> usize {
        // Nothing queued: no lock. A push racing with this look wakes the
        // reader, which then takes it in its next turn.
        if self.items.load(Relaxed) == 0 {
            return 0;
        }
        // The whole queue at once, so that the writer never waits for the
        // reader's work on it (the lock is held for a swap, not for `take`);
        // the writer goes on in the spare queue.
        let mut taken = {
            let mut q = self.lock();
            self.items.store(0, Relaxed);
            let spare = std::mem::take(&mut q.spare);
            std::mem::replace(&mut q.live, spare)
        };
        let mut n = 0;
        let mut bytes = 0u64;
        while let Some(mail) = taken.pop_front() {
            let len = mail.len() as u64;
            if let Err(mail) = take(mail, taken.len()) {
                taken.push_front(mail);
                break;
            }
            bytes += len;
            n += 1;
        }
        // Saturating: an overflow or a close meanwhile reset the count.
        let _ = self
            .queued
            .fetch_update(Relaxed, Relaxed, |q| Some(q.saturating_sub(bytes)));
        if taken.is_empty() {
            // Its memory is the next spare, unless it grew past what a
            // burst needs (then it is released).
            if taken.capacity() <= KEEP_QUEUE {
                self.lock().spare = taken;
            }
        } else {
            // What `take` refused goes back in front of what came meanwhile
            // (unless the mailbox overflowed or closed: then it is dropped).
            let mut q = self.lock();
            if !(self.overflowed.load(Relaxed) || self.closed.load(Relaxed)) {
                if q.live.is_empty() {
                    q.spare = std::mem::replace(&mut q.live, taken);
                } else {
                    while let Some(mail) = taken.pop_back() {
                        q.live.push_front(mail);
                    }
                }
                self.items.store(q.live.len(), Relaxed);
            }
        }
        n
    }

    /// Releases what a burst made the queues grow to if nothing is queued
    /// (reader side, when it is idle: a session calls it once per keepalive
    /// interval), so that an idle reader holds at most two small queues.
    pub fn release_if_empty(&self) {
        if !self.grown.load(Relaxed) {
            return;
        }
        let mut q = self.lock();
        if q.live.is_empty() && q.live.capacity() > SMALL_QUEUE {
            q.live = VecDeque::new();
        }
        if q.spare.capacity() > SMALL_QUEUE {
            q.spare = VecDeque::new();
        }
        self.grown.store(q.live.capacity() > SMALL_QUEUE, Relaxed);
    }

    /// Items the queues have room for (for tests).
    #[cfg(test)]
    fn queue_capacity(&self) -> usize {
        let q = self.lock();
        q.live.capacity() + q.spare.capacity()
    }

    /// True when mail is waiting.
    pub fn has_mail(&self) -> bool {
        !self.lock().live.is_empty()
    }

    /// Bytes queued and not taken yet.
    pub fn queued_bytes(&self) -> u64 {
        self.queued.load(Relaxed)
    }

    /// `Some(bytes queued when it happened)` once the mailbox overflowed.
    pub fn overflowed(&self) -> Option<u64> {
        self.overflowed
            .load(Relaxed)
            .then(|| self.overflowed_at.load(Relaxed))
    }

    /// Waits until mail may be waiting (or the mailbox overflowed).
    pub async fn notified(&self) {
        self.wake.wait().await;
    }

    /// The reader is gone: the writer stops delivering and forgets it.
    pub fn close(&self) {
        let mut q = self.lock();
        self.closed.store(true, Relaxed);
        self.queued.store(0, Relaxed);
        self.items.store(0, Relaxed);
        let dropped = std::mem::take(&mut *q);
        drop(q);
        drop(dropped);
    }

    /// Whether [`Mailbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }
}

/// A run of frames of one VNI caused by one session.
#[derive(Clone, Copy, Debug)]
struct Run {
    start: u32,
    end: u32,
    origin: SessionId,
    count: u32,
}

/// What a VNI has appended since it was last sealed.
#[derive(Debug, Default)]
struct Pending {
    /// Ranges of the arena, in order.
    runs: Vec<Run>,
    /// When the cause of the first of them arrived.
    since: Option<Instant>,
    /// Subscribers that joined after some of `runs` were appended, each
    /// with the index of the first run it hears (the earlier ones are in
    /// its dump). No run spans a join.
    joins: Vec<(SessionId, usize)>,
}

/// A subscriber of one VNI.
#[derive(Debug)]
struct Subscriber {
    session: SessionId,
    mailbox: Arc<Mailbox>,
}

/// An all-VNI reader (a route watch), optionally limited to one VNI.
#[derive(Debug)]
struct Watcher {
    vni: Option<Vni>,
    mailbox: Arc<Mailbox>,
}

/// The writing side, owned by the table task. See the module documentation.
#[derive(Debug, Default)]
pub struct FanOut {
    arena: BytesMut,
    pending: HashMap<Vni, Pending>,
    /// Touched VNIs in the order they were first touched since the last seal.
    touched: Vec<Vni>,
    subscribers: HashMap<Vni, Vec<Subscriber>>,
    watchers: Vec<Watcher>,
    /// When the cause of the updates being appended now arrived.
    cause: Option<Instant>,
    /// Bytes of frames sealed so far.
    sealed_bytes: u64,
    /// The VNIs of the last [`FanOut::seal`], to tell whether their readers
    /// have taken that mail yet ([`FanOut::readers_behind`]).
    last_sealed: Vec<Vni>,
}

impl FanOut {
    /// An empty fan-out.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records when the cause of the updates appended from now on arrived.
    pub fn set_cause_time(&mut self, at: Instant) {
        self.cause = Some(at);
    }

    /// Appends an UPDATE for `route`, caused by `origin`. It reaches the
    /// subscribers of its VNI (but `origin`) and the watchers at the next seal.
    pub fn append_update(&mut self, action: Action, route: &Route, origin: SessionId) {
        if self.subscribers.get(&route.vni).is_none_or(Vec::is_empty) && self.watchers.is_empty() {
            // Nobody listens: nothing to encode.
            return;
        }
        let start = self.arena.len() as u32;
        encode_update(action, route, &mut self.arena);
        let end = self.arena.len() as u32;
        let pending = self.pending.entry(route.vni).or_insert_with(|| {
            self.touched.push(route.vni);
            Pending::default()
        });
        if pending.since.is_none() {
            pending.since = self.cause;
        }
        let joined_since_last = pending
            .joins
            .last()
            .is_some_and(|&(_, at)| at == pending.runs.len());
        match pending.runs.last_mut() {
            Some(run) if run.origin == origin && run.end == start && !joined_since_last => {
                run.end = end;
                run.count += 1;
            }
            _ => pending.runs.push(Run {
                start,
                end,
                origin,
                count: 1,
            }),
        }
        if self.arena.len() >= SEAL_BYTES {
            self.seal();
        }
    }

    /// True when something was appended and not sealed yet.
    pub fn has_pending(&self) -> bool {
        !self.touched.is_empty()
    }

    /// True while a subscriber of the last seal's VNIs is behind: it has
    /// not taken a mail from before that seal ([`Mailbox::is_behind`]). A
    /// seal now would queue one more small mail behind those instead of
    /// reaching a reader that keeps up (the table task then waits to seal;
    /// ADR 0032). Stops at the first.
    pub fn readers_behind(&self) -> bool {
        self.last_sealed.iter().any(|vni| {
            self.subscribers
                .get(vni)
                .is_some_and(|subs| subs.iter().any(|s| s.mailbox.is_behind()))
        })
    }

    /// Delivers everything appended so far to its readers.
    pub fn seal(&mut self) {
        if self.touched.is_empty() {
            return;
        }
        self.prune_watchers();
        let touched = std::mem::take(&mut self.touched);
        self.last_sealed.clear();
        self.last_sealed.extend_from_slice(&touched);
        let total: usize = touched
            .iter()
            .filter_map(|v| self.pending.get(v))
            .flat_map(|p| p.runs.iter())
            .map(|r| (r.end - r.start) as usize)
            .sum();
        // One buffer, sized to its content, each VNI's frames contiguous.
        let mut out = BytesMut::with_capacity(total);
        let mut placed = Vec::with_capacity(touched.len());
        for vni in touched {
            let Some(pending) = self.pending.remove(&vni) else {
                continue;
            };
            let runs = self.place(&mut out, pending.runs, pending.joins.is_empty());
            placed.push((vni, runs, pending.since, pending.joins));
        }
        let out = out.freeze();
        for (vni, runs, since, joins) in placed {
            self.deliver(vni, &out, &runs, since, &joins);
        }
        self.arena.clear();
        if self.arena.capacity() > 4 * SEAL_BYTES {
            self.arena = BytesMut::new();
        }
    }

    /// Delivers what `vni` has appended so far (before its subscriber set
    /// changes, so a dump sits exactly between the updates before and after it).
    pub fn seal_vni(&mut self, vni: Vni) {
        let Some(pending) = self.pending.remove(&vni) else {
            return;
        };
        self.touched.retain(|v| *v != vni);
        self.prune_watchers();
        let total = pending
            .runs
            .iter()
            .map(|r| (r.end - r.start) as usize)
            .sum();
        let mut out = BytesMut::with_capacity(total);
        let runs = self.place(&mut out, pending.runs, pending.joins.is_empty());
        self.deliver(vni, &out.freeze(), &runs, pending.since, &pending.joins);
        if self.touched.is_empty() {
            self.arena.clear();
        }
    }

    /// Copies `runs` of the arena into `out`, merging neighbours of the same
    /// origin if `merge` (not when joins refer to runs by index); returns
    /// the runs as ranges of `out`.
    fn place(&self, out: &mut BytesMut, runs: Vec<Run>, merge: bool) -> Vec<Run> {
        let mut placed: Vec<Run> = Vec::with_capacity(runs.len());
        for run in runs {
            let start = out.len() as u32;
            out.extend_from_slice(&self.arena[run.start as usize..run.end as usize]);
            let end = out.len() as u32;
            match placed.last_mut() {
                Some(last) if merge && last.origin == run.origin => {
                    last.end = end;
                    last.count += run.count;
                }
                _ => placed.push(Run {
                    start,
                    end,
                    origin: run.origin,
                    count: run.count,
                }),
            }
        }
        placed
    }

    /// Hands `runs` (ranges of `out`, all of `vni`) to the subscribers of
    /// `vni`, each from its join on and without its own, and to the watchers.
    fn deliver(
        &mut self,
        vni: Vni,
        out: &Bytes,
        runs: &[Run],
        since: Option<Instant>,
        joins: &[(SessionId, usize)],
    ) {
        let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
            return;
        };

        let since = since.map(CauseTime::of);
        let whole = out.slice(first.start as usize..last.end as usize);
        // Once for every reader of the slice (a paced session walked it
        // frame by frame otherwise: see `wire::marks`).
        let marks = FrameMarks::of(&whole);
        let count: u32 = runs.iter().map(|r| r.count).sum();
        self.sealed_bytes += whole.len() as u64;
        // Many joins in one batch (a storm's SUBSCRIBEs to a popular VNI):
        // looked up by hash rather than by a scan per subscriber.
        let many: Option<HashMap<SessionId, usize>> =
            (joins.len() > 16).then(|| joins.iter().copied().collect());
        if let Some(subs) = self.subscribers.get(&vni) {
            for sub in subs {
                let from = match &many {
                    Some(joins) => joins.get(&sub.session).copied(),
                    None => joins
                        .iter()
                        .find(|&&(session, _)| session == sub.session)
                        .map(|&(_, at)| at),
                }
                .unwrap_or(0);
                if from == 0 && runs.iter().all(|r| r.origin != sub.session) {
                    sub.mailbox.push(Mail::Updates {
                        frames: whole.clone(),
                        marks: marks.clone(),
                        count,
                        since,
                    });
                } else {
                    push_heard(&sub.mailbox, out, &runs[from..], sub.session, since);
                }
            }
        }
        for w in &self.watchers {
            if w.vni.is_none_or(|v| v == vni) {
                w.mailbox.push(Mail::Updates {
                    frames: whole.clone(),
                    marks: marks.clone(),
                    count,
                    since,
                });
            }
        }
    }

    fn prune_watchers(&mut self) {
        self.watchers.retain(|w| !w.mailbox.is_closed());
    }

    /// `session` hears the updates of `vni` appended from now on (those
    /// appended before and not sealed yet go to the earlier subscribers
    /// only: they are in its dump).
    pub fn subscribe(&mut self, vni: Vni, session: SessionId, mailbox: Arc<Mailbox>) {
        if let Some(pending) = self.pending.get_mut(&vni) {
            pending.joins.push((session, pending.runs.len()));
        }
        self.subscribers
            .entry(vni)
            .or_default()
            .push(Subscriber { session, mailbox });
    }

    /// `session` no longer hears `vni`. Call [`FanOut::seal_vni`] first if it
    /// must still hear what was appended before.
    pub fn unsubscribe(&mut self, vni: Vni, session: SessionId) {
        if let hashbrown::hash_map::Entry::Occupied(mut subs) = self.subscribers.entry(vni) {
            if let Some(i) = subs.get().iter().position(|s| s.session == session) {
                subs.get_mut().swap_remove(i);
            }
            if subs.get().is_empty() {
                subs.remove();
            }
        }
    }

    /// A watcher hears every update (of `vni`, if given) sealed from now on.
    /// Call [`FanOut::seal`] first.
    pub fn watch(&mut self, vni: Option<Vni>, mailbox: Arc<Mailbox>) {
        self.watchers.push(Watcher { vni, mailbox });
    }

    /// Subscribers of `vni`.
    pub fn subscriber_count(&self, vni: Vni) -> usize {
        self.subscribers.get(&vni).map_or(0, Vec::len)
    }

    /// Bytes of update frames sealed so far (each counted once, however many
    /// subscribers share it).
    pub fn sealed_bytes(&self) -> u64 {
        self.sealed_bytes
    }
}

/// Pushes the frames of `runs` but those of `own` (the reader's own
/// updates) onto `mailbox`: neighbouring runs stay one slice.
fn push_heard(
    mailbox: &Mailbox,
    out: &Bytes,
    runs: &[Run],
    own: SessionId,
    since: Option<CauseTime>,
) {
    let mut heard: Option<(u32, u32, u32)> = None;
    let push = |(start, end, count): (u32, u32, u32)| {
        mailbox.push(Mail::Updates {
            frames: out.slice(start as usize..end as usize),
            marks: None,
            count,
            since,
        });
    };
    for run in runs {
        if run.origin == own {
            if let Some(slice) = heard.take() {
                push(slice);
            }
        } else {
            heard = Some(match heard {
                Some((start, _, count)) => (start, run.end, count + run.count),
                None => (run.start, run.end, run.count),
            });
        }
    }
    if let Some(slice) = heard {
        push(slice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(tag: u8) -> Mail {
        Mail::Updates {
            frames: Bytes::from(vec![tag; 4]),
            marks: None,
            count: 1,
            since: None,
        }
    }

    fn tag(mail: &Mail) -> u8 {
        match mail {
            Mail::Updates { frames, .. } => frames[0],
            Mail::Dump { .. } => unreachable!(),
        }
    }

    #[test]
    fn a_mail_is_no_larger_than_before_it_carried_marks() {
        // Every session's queues keep room for mails (ADR 0034).
        assert!(std::mem::size_of::<Mail>() <= 56);
    }

    #[test]
    fn a_cause_time_stands_for_its_instant() {
        let now = Instant::now();
        for at in [
            now,
            now + Duration::from_nanos(1),
            now + Duration::from_secs(3600),
        ] {
            assert_eq!(CauseTime::of(at).instant(), at);
        }
        assert!(CauseTime::of(now) < CauseTime::of(now + Duration::from_nanos(1)));
        let long_ago = now.checked_sub(Duration::from_secs(10)).unwrap_or(now);
        assert!(CauseTime::of(long_ago).instant() <= now);
    }

    #[test]
    fn a_long_sealed_slice_carries_its_frame_marks_and_a_short_one_none() {
        let mut fan_out = FanOut::new();
        let mailbox = Mailbox::new(u64::MAX);
        fan_out.subscribe(Vni(7), 2, mailbox.clone());
        let route = |i: u32| -> Route {
            format!("7#10.{}.{}.0/24@2001:db8::1", i >> 8, i & 255)
                .parse()
                .unwrap()
        };
        let mut sealed = Vec::new();
        for updates in [2_000, 3] {
            for i in 0..updates {
                fan_out.append_update(Action::Add, &route(i), 1);
            }
            fan_out.seal();
            mailbox.take_while(|mail| {
                sealed.push(mail);
                Ok(())
            });
        }
        let [Mail::Updates {
            frames: long,
            marks: long_marks,
            ..
        }, Mail::Updates {
            marks: short_marks, ..
        }] = &sealed[..]
        else {
            panic!("{sealed:?}")
        };
        assert!(long_marks.is_some());
        assert_eq!(*long_marks, FrameMarks::of(long));
        assert_eq!(*short_marks, None);
    }

    #[test]
    fn refused_mail_goes_back_before_mail_pushed_while_taking() {
        let mailbox = Mailbox::new(u64::MAX);
        mailbox.push(mail(1));
        mailbox.push(mail(2));
        let mut got = vec![];
        let taken = mailbox.take_while_counted(|m, behind| {
            if tag(&m) == 2 {
                return Err(m);
            }
            assert_eq!(behind, 1);
            // The writer pushes while the reader takes: it does not wait.
            mailbox.push(mail(3));
            got.push(tag(&m));
            Ok(())
        });
        assert_eq!((taken, &got[..]), (1, &[1][..]));
        assert_eq!(mailbox.queued_bytes(), 8);
        mailbox.take_while(|m| {
            got.push(tag(&m));
            Ok(())
        });
        assert_eq!(got, [1, 2, 3], "per-route order across a refused take");
        assert_eq!(mailbox.queued_bytes(), 0);
        assert!(!mailbox.has_mail());
    }

    #[test]
    fn refused_mail_is_taken_next_time_with_nothing_pushed_between() {
        let mailbox = Mailbox::new(u64::MAX);
        assert_eq!(mailbox.take_while(|_| Ok(())), 0);
        mailbox.push(mail(1));
        mailbox.push(mail(2));
        assert_eq!(
            mailbox.take_while(|m| if tag(&m) == 2 { Err(m) } else { Ok(()) }),
            1
        );
        assert!(mailbox.has_mail());
        let mut got = vec![];
        mailbox.take_while(|m| {
            got.push(tag(&m));
            Ok(())
        });
        assert_eq!(got, [2]);
        assert_eq!(mailbox.take_while(|_| Ok(())), 0);
    }

    #[test]
    fn queue_memory_is_kept_across_bursts_and_released_when_idle() {
        let mailbox = Mailbox::new(u64::MAX);
        let burst = |mailbox: &Mailbox| {
            for t in 0..10 {
                mailbox.push(mail(t));
            }
        };
        for _ in 0..2 {
            burst(&mailbox);
            assert_eq!(mailbox.take_while(|_| Ok(())), 10);
        }
        let kept = mailbox.queue_capacity();
        assert!(kept >= 20, "both queues keep room for a burst");
        // A burst fills the spare while the reader drains the other: no
        // queue grows again from nothing.
        burst(&mailbox);
        assert_eq!(mailbox.queue_capacity(), kept);
        let mut pushed_while_taking = false;
        mailbox.take_while(|_| {
            if !pushed_while_taking {
                burst(&mailbox);
                pushed_while_taking = true;
            }
            Ok(())
        });
        assert_eq!(mailbox.queue_capacity(), kept);
        assert_eq!(mailbox.take_while(|_| Ok(())), 10);
        assert_eq!(mailbox.queue_capacity(), kept);
        // Idle: released down to two small queues. With mail queued: the
        // queue holding it is kept.
        mailbox.push(mail(1));
        mailbox.release_if_empty();
        assert!(mailbox.has_mail());
        assert!(mailbox.queue_capacity() >= 10);
        assert_eq!(mailbox.take_while(|_| Ok(())), 1);
        mailbox.release_if_empty();
        assert!(mailbox.queue_capacity() <= 2 * SMALL_QUEUE);
        // Single deliveries then allocate nothing (once both small queues
        // exist).
        let single = |t| {
            mailbox.push(mail(t));
            assert_eq!(mailbox.take_while(|_| Ok(())), 1);
            mailbox.release_if_empty();
            mailbox.queue_capacity()
        };
        single(0);
        let small = single(1);
        assert_eq!(small, 2 * SMALL_QUEUE);
        for t in 0..3 {
            assert_eq!(single(t), small);
        }
    }

    #[test]
    fn an_overflow_while_taking_drops_what_was_refused() {
        let mailbox = Mailbox::new(10);
        mailbox.push(mail(1));
        mailbox.push(mail(2));
        mailbox.take_while(|m| {
            if tag(&m) == 2 {
                return Err(m);
            }
            // 8 bytes queued (the refused one counts until taken) + 4 > 10.
            mailbox.push(mail(3));
            mailbox.push(mail(4));
            Ok(())
        });
        assert_eq!(mailbox.overflowed(), Some(12));
        assert!(!mailbox.has_mail(), "an overflowed mailbox holds nothing");
        assert_eq!(mailbox.queued_bytes(), 0, "the count did not wrap");
    }
}
