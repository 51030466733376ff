//! The multi-version store: a B-tree from key to [`KeyIndex`], the current and compacted
//! revisions, and the value store the index points into.
//!
//! Semantics are etcd's `mvcc` package: revision 1 is the empty store; each write transaction
//! that changes anything takes the next main revision, and its changes take sub revisions 0, 1,
//! ... in order. Reads inside a write transaction see the transaction's own earlier changes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;

use bytes::Bytes;

use super::index::Index;
use super::key::Key;
use super::key_index::{KeyIndex, RevEntry, ValueRef};
use super::{MvccError, Revision};
use crate::proto::mvccpb::KeyValue;

/// Where the index's values live. The in-memory implementation serves until the durable log
/// (values read from the log's mapping) replaces it.
pub trait ValueStore {
    /// Stores a value written at `rev`; returns its handle.
    fn append(&mut self, rev: Revision, key: &[u8], value: &[u8]) -> ValueRef;
    /// The value behind a handle the index still references.
    fn get(&self, r: ValueRef) -> Bytes;
    /// The index no longer references `r` (compaction).
    fn release(&mut self, r: ValueRef);
    /// Bytes of values still referenced.
    fn live_bytes(&self) -> u64;
    /// Bytes held in all, referenced or not (what the backend occupies).
    fn total_bytes(&self) -> u64;
}

/// Values on the heap, in a slab. Values are copied in so that the index never pins a request
/// buffer (a small key must not keep a large decoded request alive).
#[derive(Default)]
pub struct MemValues {
    slots: Vec<Option<Bytes>>,
    free: Vec<u32>,
    live_bytes: u64,
}

impl MemValues {
    /// The segment number heap values report in their [`ValueRef`].
    pub const SEG: u32 = u32::MAX - 1;
}

impl ValueStore for MemValues {
    fn append(&mut self, _rev: Revision, _key: &[u8], value: &[u8]) -> ValueRef {
        if value.is_empty() {
            return ValueRef::EMPTY;
        }
        let v = Bytes::copy_from_slice(value);
        self.live_bytes += v.len() as u64;
        let len = v.len() as u32;
        let off = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(v);
                i
            }
            None => {
                self.slots.push(Some(v));
                self.slots.len() as u32 - 1
            }
        };
        ValueRef {
            seg: Self::SEG,
            off,
            len,
        }
    }

    fn get(&self, r: ValueRef) -> Bytes {
        if r == ValueRef::EMPTY {
            return Bytes::new();
        }
        self.slots[r.off as usize]
            .clone()
            .unwrap_or_else(|| panic!("value {r:?} read after release"))
    }

    fn release(&mut self, r: ValueRef) {
        if r == ValueRef::NONE || r == ValueRef::EMPTY {
            return;
        }
        let v = self.slots[r.off as usize]
            .take()
            .unwrap_or_else(|| panic!("value {r:?} released twice"));
        self.live_bytes -= v.len() as u64;
        self.free.push(r.off);
    }

    fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    fn total_bytes(&self) -> u64 {
        self.live_bytes
    }
}

/// Which keys a request names, with etcd's conventions already resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpan<'a> {
    /// Exactly this key.
    Single(&'a [u8]),
    /// Keys in [from, to).
    Range(&'a [u8], &'a [u8]),
    /// Every key >= from.
    From(&'a [u8]),
}

impl<'a> KeySpan<'a> {
    /// etcd's reading of (key, range_end): empty end is one key, "\0" is every key >= key.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeySpan<'a> {
        match range_end {
            [] => KeySpan::Single(key),
            [0] => KeySpan::From(key),
            end => KeySpan::Range(key, end),
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeySpan::Single(key) => k == key,
            KeySpan::Range(from, to) => from <= k && k < to,
            KeySpan::From(from) => from <= k,
        }
    }
}

/// Options of a read.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOpts {
    /// Revision to read at; 0 or less means the current one.
    pub rev: i64,
    /// At most this many key-values (0: no limit). `count` still counts every match.
    pub limit: usize,
    /// Count only; return no key-values.
    pub count_only: bool,
    /// Leave values out.
    pub keys_only: bool,
}

/// The keys a read (or a step of one) found, until they become key-values: the keys are
/// copied into one buffer that their key-values slice (one allocation per read, not one per
/// key).
#[derive(Default)]
struct Matches {
    keys: Vec<u8>,
    found: Vec<(usize, usize, super::key_index::Found)>,
}

impl Matches {
    /// Counts `key` in `result` if it is visible at `rev`, and keeps it unless the read
    /// counts only or `result` and this already hold its limit.
    fn take(
        &mut self,
        key: &[u8],
        ki: &KeyIndex,
        rev: i64,
        opts: ReadOpts,
        result: &mut RangeResult,
    ) {
        if let Some(f) = ki.get(rev) {
            let taken = result.kvs.len() + self.found.len();
            if !opts.count_only && (opts.limit == 0 || taken < opts.limit) {
                self.found.push((self.keys.len(), key.len(), f));
                self.keys.extend_from_slice(key);
            }
            result.count += 1;
        }
    }

    /// Appends the key-values found to `kvs`, with their values from where they are now.
    fn into_kvs<V: ValueStore>(self, store: &Store<V>, opts: ReadOpts, kvs: &mut Vec<KeyValue>) {
        match self.found[..] {
            // A point read's buffer is its key, at its exact size (slicing, or a buffer with
            // room to spare, would add an allocation).
            [(_, _, f)] => {
                let kv = store.key_value(self.keys.into_boxed_slice().into(), f, opts.keys_only);
                // (A vector of exactly one, as `collect` makes it, for a point read.)
                if kvs.is_empty() {
                    *kvs = vec![kv];
                } else {
                    kvs.push(kv);
                }
            }
            _ => {
                let keys = Bytes::from(self.keys);
                kvs.extend(self.found.into_iter().map(|(at, len, f)| {
                    store.key_value(keys.slice(at..at + len), f, opts.keys_only)
                }));
            }
        }
    }
}

/// A read walked in steps ([`Store::range_begin`], [`Store::range_step`]).
#[derive(Debug)]
pub struct SteppedRead {
    /// Where the next step starts: this key, or after it once a step stopped there.
    from: Vec<u8>,
    from_excluded: bool,
    /// The end of the span (excluded); none: every key from `from` on.
    to: Option<Vec<u8>>,
    /// The revision read.
    rev: i64,
    opts: ReadOpts,
    result: RangeResult,
    sizing: Sizing,
    done: bool,
}

/// Where a stepped read is in sizing its results ([`Store::range_step`]).
#[derive(Debug)]
enum Sizing {
    /// The first step has not ended the read yet.
    First,
    /// Counting the keys after `from`: `keys` so far.
    Counting { from: Vec<u8>, keys: usize },
    /// Room made (or none needed).
    Sized,
}

/// Keys a counting step of a stepped read walks, per key a collecting step walks.
const COUNT_STEP_FACTOR: usize = 4;

impl SteppedRead {
    /// The revision it reads at.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    /// What the read found (whole once [`Store::range_step`] returned true).
    pub fn into_result(self) -> RangeResult {
        self.result
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys matching, regardless of the limit.
    pub count: usize,
    /// The store's revision the read saw (the header revision).
    pub rev: i64,
}

/// One change of one key, as a watcher sees it: a put (with the key's creation revision,
/// version, lease and value handle) or a deletion (`value` is [`ValueRef::NONE`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub rev: Revision,
    pub key: Key,
    pub created: i64,
    pub version: i64,
    pub lease: i64,
    pub value: ValueRef,
}

impl Change {
    pub fn is_delete(&self) -> bool {
        self.value == ValueRef::NONE
    }

    /// Bytes of key and value this change puts in an event.
    pub fn cost(&self) -> usize {
        self.key.len()
            + if self.is_delete() {
                0
            } else {
                self.value.len as usize
            }
    }
}

/// Recent changes in revision order, so that watchers read history without walking the
/// index; bounded, the oldest dropped first.
struct History {
    changes: VecDeque<Change>,
    capacity: usize,
    /// Every change with main revision >= floor is held.
    floor: i64,
}

impl History {
    fn push(&mut self, c: Change) {
        self.changes.push_back(c);
        self.trim();
    }

    /// Drops the oldest changes beyond the capacity.
    fn trim(&mut self) {
        while self.changes.len() > self.capacity {
            let old = self.changes.pop_front().expect("non-empty");
            self.floor = old.rev.main + 1;
        }
    }
}

/// Default number of recent changes held for watchers (about 90 bytes each plus the key).
pub const HISTORY_CHANGES_DEFAULT: usize = 100_000;

pub struct Store<V: ValueStore = MemValues> {
    index: Index<KeyIndex>,
    history: History,
    /// Keys attached to each lease (a key is attached to the lease of its live revision).
    leased: HashMap<i64, BTreeSet<Key>>,
    current_rev: i64,
    /// Main revision of the last compaction; -1 before any (etcd's compactMainRev).
    compact_rev: i64,
    values: V,
    /// Revision entries held by the index (puts and tombstones).
    revisions: u64,
    /// A compaction still trimming the index: its revision, and the last key done.
    pending: Option<(i64, Option<Key>)>,
    /// Reads of history older than the change ring (served by walking the index).
    index_walks: std::cell::Cell<u64>,
}

impl Default for Store<MemValues> {
    fn default() -> Self {
        Store::new(MemValues::default())
    }
}

impl<V: ValueStore> Store<V> {
    pub fn new(values: V) -> Self {
        Store {
            index: Index::default(),
            history: History {
                changes: VecDeque::new(),
                capacity: HISTORY_CHANGES_DEFAULT,
                floor: 1,
            },
            leased: HashMap::new(),
            current_rev: 1,
            compact_rev: -1,
            values,
            revisions: 0,
            pending: None,
            index_walks: std::cell::Cell::new(0),
        }
    }

    /// How many reads of history were older than the change ring (watchers catching up from
    /// the index).
    pub fn index_walks(&self) -> u64 {
        self.index_walks.get()
    }

    /// The revision of the last completed write.
    pub fn rev(&self) -> i64 {
        self.current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    pub fn values(&self) -> &V {
        &self.values
    }

    pub fn values_mut(&mut self) -> &mut V {
        &mut self.values
    }

    /// Keys in the index (live or with history).
    pub fn keys_indexed(&self) -> usize {
        self.index.len()
    }

    /// Revision entries in the index.
    pub fn revisions_indexed(&self) -> u64 {
        self.revisions
    }

    /// Keeps at most `n` recent changes for watchers (at least one).
    pub fn set_history_capacity(&mut self, n: usize) {
        self.history.capacity = n.max(1);
        self.history.trim();
    }

    /// The keys attached to `lease`, in key order.
    pub fn leased_keys(&self, lease: i64) -> impl Iterator<Item = &Key> {
        self.leased.get(&lease).into_iter().flatten()
    }

    /// Changes to keys in `span` with main revision >= `from`, oldest first, appended to
    /// `out`. Whole revisions only: once `max` changes, or `max_bytes` of keys and values, are
    /// gathered, the revision under way is finished and the rest left. Returns the first main revision not covered (the current
    /// revision + 1 when everything was). Fails when `from` is below the compacted revision.
    ///
    /// Recent history comes from the bounded change log in revision order; older history
    /// from the index, walking every key of the span.
    pub fn changes_since(
        &self,
        span: KeySpan<'_>,
        from: i64,
        max: usize,
        max_bytes: usize,
        out: &mut Vec<Change>,
    ) -> Result<i64, MvccError> {
        if from < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let done = self.current_rev + 1;
        if from >= done {
            return Ok(from);
        }
        let start = out.len();
        // A deletion at the compacted revision itself is gone from the index once the
        // compaction has trimmed its key (as from etcd's backend): it is never reported, so
        // that the ring, the index and a half-done compaction all give the same history.
        let compacted_tombstone = |c: &Change| c.is_delete() && c.rev.main == self.compact_rev;
        let mut bytes = 0usize;
        let full = |out: &Vec<Change>, bytes: usize, c: &Change| {
            (out.len() - start >= max || bytes >= max_bytes)
                && out.len() > start
                && out.last().is_some_and(|l| l.rev.main < c.rev.main)
        };
        if from >= self.history.floor {
            let h = &self.history.changes;
            let first = h.partition_point(|c| c.rev.main < from);
            for c in h.range(first..) {
                if full(out, bytes, c) {
                    return Ok(c.rev.main);
                }
                if span.contains(&c.key) && !compacted_tombstone(c) {
                    bytes += c.cost();
                    out.push(c.clone());
                }
            }
            return Ok(done);
        }
        self.index_walks.set(self.index_walks.get() + 1);
        let mut found = Vec::new();
        self.visit(span, |key, ki| ki.changes_since(key, from, &mut found));
        found.sort_unstable_by_key(|c| c.rev);
        let mut next = done;
        for c in found {
            if full(out, bytes, &c) {
                next = c.rev.main;
                break;
            }
            if !compacted_tombstone(&c) {
                bytes += c.cost();
                out.push(c);
            }
        }
        Ok(next)
    }

    /// The key-value a change wrote, as etcd's watch events carry it (a deletion carries only
    /// the key and the revision).
    pub fn change_kv(&self, c: &Change) -> KeyValue {
        if c.is_delete() {
            return KeyValue {
                key: c.key.to_bytes(),
                mod_revision: c.rev.main,
                ..Default::default()
            };
        }
        KeyValue {
            key: c.key.to_bytes(),
            create_revision: c.created,
            mod_revision: c.rev.main,
            version: c.version,
            value: self.values.get(c.value),
            lease: c.lease,
        }
    }

    /// A read at the current revision.
    pub fn range(&self, span: KeySpan<'_>, opts: ReadOpts) -> Result<RangeResult, MvccError> {
        self.range_at(span, opts, self.current_rev)
    }

    /// A read where `cur_rev` is the newest revision visible (inside a write transaction that
    /// has changes, one more than the store's).
    fn range_at(
        &self,
        span: KeySpan<'_>,
        opts: ReadOpts,
        cur_rev: i64,
    ) -> Result<RangeResult, MvccError> {
        let rev = self.read_rev(opts, cur_rev)?;
        let mut result = RangeResult {
            kvs: Vec::new(),
            count: 0,
            rev: cur_rev,
        };
        let mut matches = Matches::default();
        self.visit(span, |key, ki| {
            matches.take(key, ki, rev, opts, &mut result)
        });
        matches.into_kvs(self, opts, &mut result.kvs);
        Ok(result)
    }

    /// The revision a read with `opts` reads at, when `cur_rev` is the newest visible.
    fn read_rev(&self, opts: ReadOpts, cur_rev: i64) -> Result<i64, MvccError> {
        if opts.rev > cur_rev {
            return Err(MvccError::FutureRev);
        }
        let rev = if opts.rev <= 0 { cur_rev } else { opts.rev };
        if rev < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        Ok(rev)
    }

    /// Starts a read of `span` at the current revision (or `opts.rev`) that
    /// [`Store::range_step`] walks a bounded number of keys at a time, with writes between the
    /// steps: it sees the store as it was at its revision, provided no compaction trims the
    /// index meanwhile (the caller holds trimming off while such reads run). Each step takes
    /// the values of its keys from where they are then (a checkpoint moves them between steps).
    pub fn range_begin(&self, span: KeySpan<'_>, opts: ReadOpts) -> Result<SteppedRead, MvccError> {
        let cur_rev = self.current_rev;
        let rev = self.read_rev(opts, cur_rev)?;
        let (from, to, done) = match span {
            KeySpan::Single(k) => (k.to_vec(), Some([k, &[0]].concat()), false),
            KeySpan::Range(from, to) => (from.to_vec(), Some(to.to_vec()), to <= from),
            KeySpan::From(from) => (from.to_vec(), None, false),
        };
        Ok(SteppedRead {
            from,
            from_excluded: false,
            to,
            rev,
            opts,
            result: RangeResult {
                kvs: Vec::new(),
                count: 0,
                rev: cur_rev,
            },
            sizing: Sizing::First,
            done,
        })
    }

    /// Walks up to `max_keys` more keys of `read`; true once it has walked them all.
    ///
    /// A read that one step did not finish first counts the keys left in its span (up to
    /// [`COUNT_STEP_FACTOR`] times `max_keys` a step, without looking at their revisions) and
    /// makes room for that many results at once: grown by doubling, the vector of a million
    /// results was copied and faulted in again and again, most of the time one step held the
    /// shard for. The count is of the index's keys, which holds every key the read can find
    /// (no compaction past its revision trims the index while it is under way), so the room
    /// is never short (up to `limits::RANGE_RESULTS_RESERVE_MAX`). A step of `usize::MAX`
    /// keys walks the rest of the read whole, counting nothing first.
    pub fn range_step(&self, read: &mut SteppedRead, max_keys: usize) -> bool {
        if read.done {
            return true;
        }
        let upper = match &read.to {
            Some(to) => Bound::Excluded(&to[..]),
            None => Bound::Unbounded,
        };
        let opts = read.opts;
        // Walking whole (the read must end now), it has no room to make first.
        if max_keys == usize::MAX && matches!(read.sizing, Sizing::Counting { .. }) {
            read.sizing = Sizing::Sized;
        }
        if let Sizing::Counting { from, keys } = &mut read.sizing {
            let budget = max_keys.saturating_mul(COUNT_STEP_FACTOR);
            let mut walk = self.index.range(Bound::Excluded(&from[..]), upper);
            let mut n = 0;
            let mut last: Option<&[u8]> = None;
            for (k, _) in walk.by_ref() {
                n += 1;
                last = Some(k);
                if n == budget {
                    break;
                }
            }
            *keys += n;
            match last {
                Some(k) if n == budget && walk.next().is_some() => *from = k.to_vec(),
                _ => {
                    // At most `RANGE_RESULTS_RESERVE_MAX`: the keys counted include deleted
                    // ones and ones created after the read's revision (address space a strict
                    // overcommit setting may refuse); beyond it the vector grows.
                    let room = match opts.limit {
                        0 => *keys,
                        limit => (*keys).min(limit.saturating_sub(read.result.kvs.len())),
                    };
                    let room = room.min(crate::limits::RANGE_RESULTS_RESERVE_MAX);
                    read.result.kvs.reserve_exact(room);
                    read.sizing = Sizing::Sized;
                }
            }
            return false;
        }
        let lower = if read.from_excluded {
            Bound::Excluded(&read.from[..])
        } else {
            Bound::Included(&read.from[..])
        };
        let mut matches = Matches::default();
        let mut last: Option<&[u8]> = None;
        let mut seen = 0;
        let mut walk = self.index.range(lower, upper);
        for (k, ki) in walk.by_ref() {
            seen += 1;
            last = Some(k);
            matches.take(k, ki, read.rev, opts, &mut read.result);
            if seen == max_keys {
                break;
            }
        }
        // Done unless a key is left (a span of exactly `max_keys` keys takes one step).
        let more = seen == max_keys && walk.next().is_some();
        matches.into_kvs(self, opts, &mut read.result.kvs);
        match last {
            Some(k) if more => {
                read.from = k.to_vec();
                read.from_excluded = true;
                // After the first step, results to come beyond what the vector can take
                // without growing much: the keys left are counted first (not with a limit
                // the vector nearly holds).
                if matches!(read.sizing, Sizing::First) {
                    let wanted = match opts.limit {
                        0 => usize::MAX,
                        limit => limit.saturating_sub(read.result.kvs.len()),
                    };
                    read.sizing = if !opts.count_only && wanted > max_keys {
                        Sizing::Counting {
                            from: read.from.clone(),
                            keys: 0,
                        }
                    } else {
                        Sizing::Sized
                    };
                }
            }
            _ => read.done = true,
        }
        read.done
    }

    fn key_value(&self, key: Bytes, f: super::key_index::Found, keys_only: bool) -> KeyValue {
        KeyValue {
            key,
            create_revision: f.created.main,
            mod_revision: f.entry.rev.main,
            version: f.version,
            value: if keys_only {
                Bytes::new()
            } else {
                self.values.get(f.entry.value)
            },
            lease: f.entry.lease,
        }
    }

    fn visit(&self, span: KeySpan<'_>, mut f: impl FnMut(&[u8], &KeyIndex)) {
        let range = match span {
            KeySpan::Single(key) => {
                if let Some((k, ki)) = self.index.get_key_value(key) {
                    f(k, ki);
                }
                return;
            }
            KeySpan::Range(from, to) => {
                if to <= from {
                    return;
                }
                self.index.range(Bound::Included(from), Bound::Excluded(to))
            }
            KeySpan::From(from) => self.index.range(Bound::Included(from), Bound::Unbounded),
        };
        for (k, ki) in range {
            f(k, ki);
        }
    }

    /// Starts a write transaction. Its changes share one main revision.
    pub fn write(&mut self) -> WriteTxn<'_, V> {
        let begin_rev = self.current_rev;
        WriteTxn {
            store: self,
            begin_rev,
            changes: 0,
        }
    }

    /// Compacts at `rev`: reads below it fail from now on; the revisions they alone could see
    /// are dropped from the index by [`Store::compact_step`], a bounded piece at a time, so a
    /// large index is never walked in one go.
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::FutureRev);
        }
        self.compact_rev = rev;
        // A newer compaction restarts the walk: keys already done were trimmed to the older
        // revision only.
        self.pending = Some((rev, None));
        Ok(())
    }

    /// True while a compaction still has keys to trim.
    pub fn compaction_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The revision of the compaction still trimming, if one is.
    pub fn trimming_rev(&self) -> Option<i64> {
        self.pending.as_ref().map(|(rev, _)| *rev)
    }

    /// Trims up to `max_keys` keys of the pending compaction; false once it is complete.
    pub fn compact_step(&mut self, max_keys: usize) -> bool {
        let Some((rev, after)) = self.pending.take() else {
            return false;
        };
        let lower = match &after {
            Some(k) => Bound::Excluded(&k[..]),
            None => Bound::Unbounded,
        };
        let values = &mut self.values;
        let mut released = 0u64;
        let mut emptied = Vec::new();
        let mut last = None;
        let mut seen = 0;
        for (k, ki) in self.index.range_mut(lower, Bound::Unbounded) {
            if seen == max_keys {
                break;
            }
            seen += 1;
            ki.compact(rev, &mut |v| {
                released += 1;
                values.release(v);
            });
            if ki.is_empty() {
                emptied.push(Key::new(k));
            }
            if seen == max_keys {
                // Where the next step resumes (copied once per step, not per key).
                last = Some(Key::new(k));
            }
        }
        for k in emptied {
            self.index.remove(&k[..]);
        }
        self.revisions -= released;
        if seen == max_keys {
            self.pending = Some((rev, last));
            true
        } else {
            false
        }
    }

    /// Up to `max_keys` keys after `after`, in order, each with its index (a checkpoint's
    /// walk, made in steps while writes go on): returns the last key visited when more remain.
    pub fn checkpoint_walk(
        &self,
        after: Option<&[u8]>,
        max_keys: usize,
        mut f: impl FnMut(&[u8], &KeyIndex),
    ) -> Option<Key> {
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut last: Option<&[u8]> = None;
        for (seen, (k, ki)) in self.index.range(lower, Bound::Unbounded).enumerate() {
            if seen == max_keys {
                return last.map(Key::new);
            }
            f(k, ki);
            last = Some(k);
        }
        None
    }

    /// Adds keys as a checkpoint holds them (recovery; values already in the value store).
    /// Given in key order to an empty index, the index is built in one pass rather than by an
    /// insert per key.
    pub fn restore_keys(&mut self, keys: Vec<(Key, KeyIndex)>) {
        for (key, ki) in &keys {
            if let Some(e) = ki.live_entry() {
                if e.lease != 0 && e.value != ValueRef::NONE {
                    self.leased.entry(e.lease).or_default().insert(key.clone());
                }
            }
            self.revisions += ki.entries() as u64;
        }
        if self.index.is_empty() {
            self.index = keys.into_iter().collect();
        } else {
            self.index.extend(keys);
        }
    }

    /// The revisions a checkpoint was taken at (recovery).
    pub fn restore_revisions(&mut self, current: i64, compacted: i64) {
        self.current_rev = current;
        self.compact_rev = compacted;
        self.history.floor = current + 1;
        // The checkpoint may hold revisions its compaction had not trimmed yet.
        if compacted > 0 {
            self.pending = Some((compacted, None));
        }
    }

    /// Points `key`'s revision `rev` at `value` (its copy in a checkpoint); false when the
    /// index no longer holds it.
    pub fn repoint(&mut self, key: &[u8], rev: Revision, value: ValueRef) -> bool {
        self.index
            .get_mut(key)
            .is_some_and(|ki| ki.repoint(rev, value))
    }

    /// Forgets the recent changes up to `rev` (their values' old locations are going away);
    /// watchers read that history from the index instead.
    pub fn forget_history_through(&mut self, rev: i64) {
        while self
            .history
            .changes
            .front()
            .is_some_and(|c| c.rev.main <= rev)
        {
            self.history.changes.pop_front();
        }
        self.history.floor = self.history.floor.max(rev + 1);
    }

    /// Compacts at `rev` and trims the whole index before returning.
    pub fn compact_now(&mut self, rev: i64) -> Result<(), MvccError> {
        self.compact(rev)?;
        while self.compact_step(usize::MAX) {}
        Ok(())
    }
}

/// A write transaction (etcd's `TxnWrite`). Dropping it ends it: if it changed anything, the
/// store's revision moves to the transaction's revision.
pub struct WriteTxn<'a, V: ValueStore> {
    store: &'a mut Store<V>,
    begin_rev: i64,
    changes: i64,
}

impl<V: ValueStore> WriteTxn<'_, V> {
    /// The revision this transaction's writes get.
    pub fn write_rev(&self) -> i64 {
        self.begin_rev + 1
    }

    /// The newest revision a read inside the transaction sees.
    pub fn read_rev(&self) -> i64 {
        if self.changes > 0 {
            self.begin_rev + 1
        } else {
            self.begin_rev
        }
    }

    pub fn changes(&self) -> i64 {
        self.changes
    }

    pub fn range(&self, span: KeySpan<'_>, opts: ReadOpts) -> Result<RangeResult, MvccError> {
        self.store.range_at(span, opts, self.read_rev())
    }

    pub fn store(&self) -> &Store<V> {
        self.store
    }

    /// Writes `key`; returns the revision written.
    pub fn put(&mut self, key: &Bytes, value: &[u8], lease: i64) -> i64 {
        let rev = Revision {
            main: self.begin_rev + 1,
            sub: self.changes,
        };
        let value = self.store.values.append(rev, key, value);
        let entry = RevEntry { rev, lease, value };
        let store = &mut *self.store;
        // A copy (inline for short keys): the index must not pin the request buffer the key
        // was decoded from.
        let key = Key::new(key);
        let found = match store.index.get_mut(&key[..]) {
            Some(ki) => {
                let old_lease = ki.get(i64::MAX).map_or(0, |f| f.entry.lease);
                if old_lease != lease {
                    detach(&mut store.leased, old_lease, &key);
                }
                ki.put(entry);
                ki.get(rev.main).expect("just written")
            }
            None => {
                let ki = KeyIndex::created(entry);
                let found = ki.get(rev.main).expect("just written");
                store.index.insert(&key, ki);
                found
            }
        };
        if lease != 0 {
            let keys = store.leased.entry(lease).or_default();
            if !keys.contains(&key[..]) {
                keys.insert(key.clone());
            }
        }
        store.history.push(Change {
            rev,
            key,
            created: found.created.main,
            version: found.version,
            lease,
            value,
        });
        self.store.revisions += 1;
        self.changes += 1;
        rev.main
    }

    /// Deletes every existing key in `span`; returns (keys deleted, header revision).
    pub fn delete_range(&mut self, span: KeySpan<'_>) -> (i64, i64) {
        let main = self.begin_rev + 1;
        let mut deleted = 0;
        let mut sub = self.changes;
        let Store {
            index,
            history,
            leased,
            ..
        } = &mut *self.store;
        let mut tombstone = |k: &[u8], ki: &mut KeyIndex| {
            let lease = ki.get(i64::MAX).map_or(0, |f| f.entry.lease);
            let rev = Revision { main, sub };
            if ki.tombstone(rev) {
                detach(leased, lease, k);
                history.push(Change {
                    rev,
                    key: Key::new(k),
                    created: 0,
                    version: 0,
                    lease: 0,
                    value: ValueRef::NONE,
                });
                sub += 1;
                deleted += 1;
            }
        };
        match span {
            KeySpan::Single(key) => {
                if let Some(ki) = index.get_mut(key) {
                    tombstone(key, ki);
                }
            }
            KeySpan::Range(from, to) => {
                if from < to {
                    index
                        .range_mut(Bound::Included(from), Bound::Excluded(to))
                        .for_each(|(k, ki)| tombstone(k, ki));
                }
            }
            KeySpan::From(from) => index
                .range_mut(Bound::Included(from), Bound::Unbounded)
                .for_each(|(k, ki)| tombstone(k, ki)),
        }
        self.store.revisions += deleted as u64;
        self.changes += deleted;
        if deleted != 0 || self.changes > 0 {
            (deleted, self.begin_rev + 1)
        } else {
            (0, self.begin_rev)
        }
    }
}

/// Takes `key` off `lease`'s keys (no lease: nothing to do).
fn detach(leased: &mut HashMap<i64, BTreeSet<Key>>, lease: i64, key: &[u8]) {
    if lease == 0 {
        return;
    }
    if let Some(keys) = leased.get_mut(&lease) {
        keys.remove(key);
        if keys.is_empty() {
            leased.remove(&lease);
        }
    }
}

impl<V: ValueStore> Drop for WriteTxn<'_, V> {
    fn drop(&mut self) {
        if self.changes > 0 {
            self.store.current_rev = self.begin_rev + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn get(s: &Store, key: &str, rev: i64) -> Option<KeyValue> {
        let r = s
            .range(
                KeySpan::Single(key.as_bytes()),
                ReadOpts {
                    rev,
                    ..Default::default()
                },
            )
            .unwrap();
        r.kvs.into_iter().next()
    }

    fn key(n: u16) -> Bytes {
        Bytes::from(format!("k{n:03}"))
    }

    /// A put (`Some`: a value byte) or a delete of one key.
    fn write(s: &mut Store, n: u16, value: Option<u8>) {
        let k = key(n);
        let mut t = s.write();
        match value {
            Some(v) => {
                t.put(&k, &[v], 0);
            }
            None => {
                t.delete_range(KeySpan::Single(&k));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// A read walked in steps, with puts and deletes between its steps (keys created,
        /// overwritten, deleted, created again), finds exactly what one read at its revision
        /// found when it began: the keys, values, versions, count and limit.
        #[test]
        fn a_stepped_read_finds_what_its_revision_held_whatever_comes_between_steps(
            before in proptest::collection::vec((0..300u16, proptest::option::of(0..255u8)), 0..400),
            between in proptest::collection::vec(
                proptest::collection::vec((0..300u16, proptest::option::of(0..255u8)), 0..20),
                0..60,
            ),
            step in 1..50usize,
            span in 0..3u8,
            lo in 0..300u16,
            hi in 0..300u16,
            limit in 0..20usize,
            count_only in proptest::prelude::any::<bool>(),
            keys_only in proptest::prelude::any::<bool>(),
            back in 0..5i64,
            compact in proptest::prelude::any::<bool>(),
            finish_after in 0..8usize,
        ) {
            let mut s = Store::default();
            for (n, v) in before {
                write(&mut s, n, v);
            }
            let (lo, hi) = (key(lo), key(hi));
            let span = match span {
                0 => KeySpan::Range(&lo, &hi),
                1 => KeySpan::From(&lo),
                _ => KeySpan::Single(&lo),
            };
            let opts = ReadOpts {
                rev: if back == 0 { 0 } else { (s.rev() - back).max(1) },
                limit,
                count_only,
                keys_only,
            };
            let want = s.range(span, opts).unwrap();
            let mut read = s.range_begin(span, opts).unwrap();
            let mut between = between.into_iter();
            // The room made once the keys left were counted: never grown after.
            let mut room = None;
            let mut steps = 0;
            loop {
                let counting = matches!(read.sizing, Sizing::Counting { .. });
                // After `finish_after` steps the rest is walked whole, as when a physical
                // compaction comes (from whatever state the sizing is in).
                steps += 1;
                let keys = if steps > finish_after { usize::MAX } else { step };
                let done = s.range_step(&mut read, keys);
                if counting && matches!(read.sizing, Sizing::Sized) {
                    room = Some(read.result.kvs.capacity());
                }
                if done {
                    break;
                }
                for (n, v) in between.next().unwrap_or_default() {
                    write(&mut s, n, v);
                }
                // A compaction the apply loop lets trim while the read is under way: at or
                // below the revision it reads.
                if compact && s.compact_rev < read.rev() {
                    s.compact_now(read.rev()).unwrap();
                }
            }
            proptest::prop_assert!(steps <= finish_after + 1);
            if let Some(room) = room {
                proptest::prop_assert_eq!(read.result.kvs.capacity(), room);
            }
            proptest::prop_assert_eq!(read.into_result(), want);
        }
    }

    #[test]
    fn revisions_start_at_one_and_group_per_txn() {
        let mut s = Store::default();
        assert_eq!(s.rev(), 1);
        {
            let mut t = s.write();
            assert_eq!(t.put(&b("a"), b"1", 0), 2);
            assert_eq!(t.put(&b("b"), b"2", 0), 2);
            assert_eq!(t.read_rev(), 2);
            let r = t.range(KeySpan::From(b"\0"), ReadOpts::default()).unwrap();
            assert_eq!(r.count, 2, "a write txn reads its own writes");
        }
        assert_eq!(s.rev(), 2);
        {
            let mut t = s.write();
            assert_eq!(t.delete_range(KeySpan::Single(b"zz")), (0, 2));
        }
        assert_eq!(s.rev(), 2, "a txn without changes takes no revision");
        let kv = get(&s, "b", 0).unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    }

    #[test]
    fn delete_and_recreate_restarts_version() {
        let mut s = Store::default();
        s.write().put(&b("k"), b"v1", 0);
        s.write().put(&b("k"), b"v2", 0);
        assert_eq!(s.write().delete_range(KeySpan::Single(b"k")), (1, 4));
        s.write().put(&b("k"), b"v3", 0);
        let kv = get(&s, "k", 0).unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
        assert_eq!(&get(&s, "k", 3).unwrap().value[..], b"v2");
        assert_eq!(get(&s, "k", 4), None);
    }

    #[test]
    fn compacted_and_future_reads_fail() {
        let mut s = Store::default();
        for i in 0..5 {
            s.write().put(&b("k"), format!("{i}").as_bytes(), 0);
        }
        assert_eq!(s.rev(), 6);
        s.compact(4).unwrap();
        assert_eq!(s.values().live_bytes(), 5, "nothing trimmed before a step");
        assert!(!s.compact_step(10), "one key: done in one step");
        let at = |rev| {
            s.range(
                KeySpan::Single(b"k"),
                ReadOpts {
                    rev,
                    ..Default::default()
                },
            )
        };
        assert_eq!(at(3).unwrap_err(), MvccError::Compacted);
        assert_eq!(&at(4).unwrap().kvs[0].value[..], b"2");
        assert_eq!(at(7).unwrap_err(), MvccError::FutureRev);
        assert_eq!(s.compact(4).unwrap_err(), MvccError::Compacted);
        assert_eq!(s.compact(7).unwrap_err(), MvccError::FutureRev);
        assert_eq!(
            s.values().live_bytes(),
            3,
            "values of revisions 2 and 3 released"
        );
    }

    #[test]
    fn compaction_proceeds_in_bounded_steps() {
        let mut s = Store::default();
        for i in 0..10 {
            s.write().put(&b(&format!("k{i}")), b"old", 0);
        }
        for i in 0..10 {
            s.write().put(&b(&format!("k{i}")), b"new", 0);
        }
        s.write().delete_range(KeySpan::Single(b"k0"));
        let rev = s.rev();
        s.compact(rev).unwrap();
        let mut steps = 1;
        while s.compact_step(3) {
            steps += 1;
        }
        assert_eq!(steps, 4, "10 keys, 3 per step");
        assert_eq!(s.keys_indexed(), 9, "k0's history is gone");
        assert_eq!(s.revisions_indexed(), 9);
        assert_eq!(s.values().live_bytes(), 27);
    }

    #[test]
    fn limit_counts_everything() {
        let mut s = Store::default();
        for k in ["a", "b", "c", "d"] {
            s.write().put(&b(k), b"x", 0);
        }
        let r = s
            .range(
                KeySpan::Range(b"a", b"d"),
                ReadOpts {
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.kvs.len(), 2);
        assert_eq!(r.count, 3);
        let r = s
            .range(KeySpan::Range(b"d", b"a"), ReadOpts::default())
            .unwrap();
        assert_eq!(r.count, 0, "inverted range is empty, not a panic");
    }

    /// The change ring and the index walk give the same history, for every start revision,
    /// key range and batch limit, after random puts, deletes, multi-key txns and compactions
    /// (finished or not).
    #[test]
    fn history_from_the_ring_equals_history_from_the_index() {
        use proptest::prelude::*;
        #[derive(Debug, Clone)]
        enum Op {
            Put(u8, u8, bool),
            Del(u8),
            DelFrom(u8),
            Txn(Vec<(u8, Option<u8>)>),
            Compact(u8, bool),
        }
        let op = prop_oneof![
            4 => (0u8..6, any::<u8>(), any::<bool>()).prop_map(|(k, v, l)| Op::Put(k, v, l)),
            1 => (0u8..6).prop_map(Op::Del),
            1 => (0u8..6).prop_map(Op::DelFrom),
            1 => proptest::collection::vec((0u8..6, proptest::option::of(any::<u8>())), 1..4)
                .prop_map(Op::Txn),
            1 => (any::<u8>(), any::<bool>()).prop_map(|(r, f)| Op::Compact(r, f)),
        ];
        let key = |k: u8| Bytes::from(vec![b'k', b'0' + k]);
        proptest!(ProptestConfig::with_cases(300), |(ops in proptest::collection::vec(op, 1..40))| {
            let mut ring = Store::default();
            let mut walk = Store::default();
            walk.set_history_capacity(1);
            for op in &ops {
                for s in [&mut ring, &mut walk] {
                    match op {
                        Op::Put(k, v, l) => {
                            s.write().put(&key(*k), &[*v], i64::from(*l));
                        }
                        Op::Del(k) => {
                            s.write().delete_range(KeySpan::Single(&key(*k)));
                        }
                        Op::DelFrom(k) => {
                            s.write().delete_range(KeySpan::From(&key(*k)));
                        }
                        Op::Txn(items) => {
                            let mut t = s.write();
                            let mut seen = std::collections::HashSet::new();
                            for (k, v) in items {
                                if !seen.insert(*k) {
                                    continue;
                                }
                                match v {
                                    Some(v) => {
                                        t.put(&key(*k), &[*v], 0);
                                    }
                                    None => {
                                        t.delete_range(KeySpan::Single(&key(*k)));
                                    }
                                }
                            }
                        }
                        Op::Compact(r, finish) => {
                            let rev = 1 + i64::from(*r) % s.rev();
                            if s.compact(rev).is_ok() && *finish {
                                while s.compact_step(1) {}
                            }
                        }
                    }
                }
            }
            let k2 = key(2);
            let spans = [
                KeySpan::Single(&k2),
                KeySpan::From(b"\0"),
                KeySpan::new(b"k1", b"k4"),
            ];
            // Pulls in batches of at most `max` until caught up; each call's `next` may
            // differ (the ring may stop at any later revision without matches), the history
            // gathered may not.
            let all = |s: &Store, span: KeySpan<'_>, from: i64, max: usize| {
                let (mut out, mut from, mut calls) = (Vec::new(), from, 0);
                // Small batches count changes; the largest also bytes (3: about one change).
                let max_bytes = if max == 1000 { 3 } else { usize::MAX };
                while from <= s.rev() {
                    let before = out.len();
                    from = s
                        .changes_since(span, from, max, max_bytes, &mut out)
                        .expect("not compacted");
                    // Whole revisions: a batch ends where a revision ends.
                    if let (Some(last), true) = (out.last(), out.len() > before) {
                        assert!(last.rev.main < from);
                    }
                    calls += 1;
                    assert!(calls < 1000, "no progress");
                }
                out
            };
            for from in ring.compact_rev().max(1)..=ring.rev() + 1 {
                for span in &spans {
                    let one = all(&ring, *span, from, 100_000);
                    for max in [1, 2, 1000] {
                        prop_assert_eq!(&all(&ring, *span, from, max), &one, "ring, from {} max {}", from, max);
                        prop_assert_eq!(&all(&walk, *span, from, max), &one, "index, from {} max {}", from, max);
                    }
                }
            }
            // Every read of the full ring was served from it.
            prop_assert_eq!(ring.index_walks(), 0);
        });
    }

    /// A read older than the ring walks the index, and is counted (a watcher catching up).
    #[test]
    fn reads_older_than_the_ring_are_counted() {
        let mut s = Store::default();
        s.set_history_capacity(1);
        s.write().put(&Bytes::from_static(b"a"), b"1", 0);
        s.write().put(&Bytes::from_static(b"a"), b"2", 0);
        let mut out = Vec::new();
        s.changes_since(KeySpan::From(b"\0"), 3, 10, usize::MAX, &mut out)
            .unwrap();
        assert_eq!((s.index_walks(), out.len()), (0, 1), "from the ring");
        out.clear();
        s.changes_since(KeySpan::From(b"\0"), 2, 10, usize::MAX, &mut out)
            .unwrap();
        assert_eq!((s.index_walks(), out.len()), (1, 2), "older than the ring");
    }
}
