//! The index's ordered map from keys to their histories: sorted leaves of at most [`LEAF`]
//! entries, each leaf found through a std B-tree by its fence (a lower bound of its keys).
//!
//! Why not std's `BTreeMap<Key, KeyIndex>` alone: its nodes have room for 11 entries and split
//! a full node in the middle, so keys written in key order (the usual way: a counter, a time,
//! a name with a sequence number) left every node 6/11 full for good, and the slots of the
//! other 5 (64 bytes each) were paid anyway: 124.9 B per key (99.8 B in random order); and a
//! key over 22 bytes had an allocation of its own (147.8 B per key at 32 B, random order).
//!
//! Here a leaf keeps its keys' bytes end to end in one buffer with a 4-byte end per key, and
//! its values in an array; all three are sized by hand ([`GROW`] entries at a time, never
//! doubled), so a leaf's memory follows what it holds in any order of insertion. A leaf that
//! fills up from its end (or its start) stays full: the new key goes to the next leaf (or a
//! new one) instead of halving this one. A search asks for the leaf's key ends and key bytes
//! all at once ([`prefetch`]), then bisects them.
//!
//! Invariants (checked by `check` in the tests): the first leaf's fence is the empty key
//! (the smallest of all), so every key has a leaf: the last one whose fence is not above it;
//! a leaf's keys are sorted, unique, not below its fence and below the next leaf's fence; no
//! leaf holds more than [`LEAF`] entries, nor more than [`LEAF_BYTES`] of keys unless it holds
//! one key; a leaf other than the first is never empty.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::iter::Zip;
use std::ops::Bound;
use std::slice;

use super::key::Key;

/// The most entries in one leaf, searched by bisection.
pub const LEAF: usize = 32;
/// The most key bytes in a leaf of more than one key: a longer key sits alone in its leaf, so
/// that a search or an insert never moves or prefetches more than this (its key ends are
/// `u32`s: a key alone may be up to `u32::MAX`, beyond any request's size). Small in tests, so
/// that their keys fill leaves by bytes too.
#[cfg(not(test))]
const LEAF_BYTES: usize = 16 << 10;
#[cfg(test)]
const LEAF_BYTES: usize = 256;
/// Entries a full leaf grows by (a doubling would leave up to half of it unused).
const GROW: usize = 4;
/// Key bytes a leaf keeps spare at most (beyond about [`GROW`] keys of its average length).
const SPARE_BYTES: usize = 256;
/// The most bytes [`prefetch`] asks for from one array (32 keys of 64 bytes).
const PREFETCH_BYTES: usize = 2 << 10;
/// A leaf holding fewer entries than this after a removal is merged with a neighbour when the
/// two fit in [`MERGED`] entries and half of [`LEAF_BYTES`] (well below either limit, so a
/// merge is not followed by a split).
const SPARSE: usize = LEAF / 4;
const MERGED: usize = LEAF * 3 / 4;

/// Sorted keys and their values. The keys' bytes lie end to end in one buffer (no slot of
/// 24 bytes and no allocation per key: a key costs its length and a 4-byte end), so a search
/// reads a few adjacent cache lines, then the one value found.
struct Leaf<V> {
    /// Where each key ends in `bytes` (each starts where the one before ends; the first at 0).
    ends: Vec<u32>,
    bytes: Vec<u8>,
    values: Vec<V>,
}

/// A leaf's keys from one of them on.
struct Keys<'a> {
    ends: slice::Iter<'a, u32>,
    bytes: &'a [u8],
    start: usize,
}

impl<'a> Iterator for Keys<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let end = *self.ends.next()? as usize;
        let key = &self.bytes[self.start..end];
        self.start = end;
        Some(key)
    }
}

/// Where the `i`-th key starts in a leaf with these `ends`.
fn start_of(ends: &[u32], i: usize) -> usize {
    i.checked_sub(1).map_or(0, |i| ends[i] as usize)
}

/// The keys of a leaf with these `ends` and `bytes`, from the `from`-th on.
fn keys_from<'a>(ends: &'a [u32], bytes: &'a [u8], from: usize) -> Keys<'a> {
    Keys {
        ends: ends[from..].iter(),
        bytes,
        start: start_of(ends, from),
    }
}

type Entries<'a, V> = Zip<Keys<'a>, slice::Iter<'a, V>>;
type EntriesMut<'a, V> = Zip<Keys<'a>, slice::IterMut<'a, V>>;

/// Room for one more element, grown by [`GROW`] at most.
fn make_room<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact(GROW.min(LEAF.saturating_sub(v.len())).max(1));
    }
}

/// Gives back what `v` no longer uses beyond `spare` elements.
fn trim<T>(v: &mut Vec<T>, spare: usize) {
    if v.capacity() - v.len() > 2 * spare {
        v.shrink_to(v.len() + spare);
    }
}

/// Asks for every cache line of `items` at once (at most [`PREFETCH_BYTES`]): a bisection's
/// reads depend on each other, so without this a leaf not in cache costs one memory latency
/// per step instead of about one.
#[inline]
fn prefetch<T>(items: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(items).min(PREFETCH_BYTES);
        if bytes == 0 {
            return;
        }
        // Every cache line the bytes touch, from the one holding the first (the array need
        // not start on a line).
        let start = items.as_ptr().cast::<i8>();
        let skew = start as usize % 64;
        for line in (0..skew + bytes).step_by(64) {
            // SAFETY: a prefetch is only a hint: it never faults, whatever the address, and
            // reads nothing here (the pointer arithmetic wraps, it does not dereference).
            unsafe { _mm_prefetch(start.wrapping_sub(skew).wrapping_add(line), _MM_HINT_T0) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = items;
}

impl<V> Leaf<V> {
    fn new() -> Self {
        Leaf {
            ends: Vec::new(),
            bytes: Vec::new(),
            values: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn start(&self, i: usize) -> usize {
        start_of(&self.ends, i)
    }

    fn key(&self, i: usize) -> &[u8] {
        &self.bytes[self.start(i)..self.ends[i] as usize]
    }

    fn last_key(&self) -> Option<&[u8]> {
        self.len().checked_sub(1).map(|i| self.key(i))
    }

    /// True when `extra` more key bytes do not fit (by count or by bytes).
    fn full(&self, extra: usize) -> bool {
        self.len() >= LEAF || (self.len() > 0 && self.bytes.len() + extra > LEAF_BYTES)
    }

    fn position(&self, key: &[u8]) -> Result<usize, usize> {
        prefetch(&self.ends);
        prefetch(&self.bytes);
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    fn insert(&mut self, at: usize, key: &[u8], value: V) {
        let start = self.start(at);
        let n = key.len();
        if self.bytes.capacity() - self.bytes.len() < n {
            // Room for this key and about GROW more of the leaf's average length.
            self.bytes.reserve_exact(n + self.spare_bytes());
        }
        let old = self.bytes.len();
        self.bytes.resize(old + n, 0);
        self.bytes.copy_within(start..old, start + n);
        self.bytes[start..start + n].copy_from_slice(key);
        make_room(&mut self.ends);
        let end = u32::try_from(start + n).expect("a leaf's bytes fit in u32 (LEAF_BYTES)");
        self.ends.insert(at, end);
        for e in &mut self.ends[at + 1..] {
            *e += n as u32;
        }
        make_room(&mut self.values);
        self.values.insert(at, value);
    }

    fn push(&mut self, key: &[u8], value: V) {
        self.insert(self.len(), key, value);
    }

    fn remove(&mut self, at: usize) -> V {
        let (start, end) = (self.start(at), self.ends[at] as usize);
        self.bytes.drain(start..end);
        self.ends.remove(at);
        for e in &mut self.ends[at..] {
            *e -= (end - start) as u32;
        }
        let value = self.values.remove(at);
        self.trim();
        value
    }

    /// Key bytes kept spare: about [`GROW`] keys of the leaf's average length, at most
    /// [`SPARE_BYTES`].
    fn spare_bytes(&self) -> usize {
        (GROW * (self.bytes.len() / self.len().max(1))).min(SPARE_BYTES)
    }

    /// Gives back what the leaf no longer uses beyond about [`GROW`] spare entries.
    fn trim(&mut self) {
        trim(&mut self.ends, GROW);
        trim(&mut self.values, GROW);
        let spare = self.spare_bytes();
        trim(&mut self.bytes, spare);
    }

    fn split_off(&mut self, at: usize) -> Leaf<V> {
        let start = self.start(at);
        let mut right = Leaf {
            ends: self.ends.split_off(at),
            bytes: self.bytes.split_off(start),
            values: self.values.split_off(at),
        };
        for e in &mut right.ends {
            *e -= start as u32;
        }
        self.trim();
        right
    }

    fn append(&mut self, other: &mut Leaf<V>) {
        let base = self.bytes.len() as u32;
        self.ends.reserve_exact(other.len());
        self.ends.extend(other.ends.drain(..).map(|e| e + base));
        self.bytes.reserve_exact(other.bytes.len());
        self.bytes.append(&mut other.bytes);
        self.values.reserve_exact(other.values.len());
        self.values.append(&mut other.values);
    }

    fn keys(&self, from: usize) -> Keys<'_> {
        keys_from(&self.ends, &self.bytes, from)
    }

    fn entries(&self, from: usize) -> Entries<'_, V> {
        self.keys(from).zip(self.values[from..].iter())
    }

    fn entries_mut(&mut self, from: usize) -> EntriesMut<'_, V> {
        let Leaf {
            ends,
            bytes,
            values,
        } = self;
        keys_from(ends, bytes, from).zip(values[from..].iter_mut())
    }

    fn nothing<'a>() -> Entries<'a, V> {
        keys_from(&[], &[], 0).zip([].iter())
    }
}

pub struct Index<V> {
    leaves: BTreeMap<Key, Leaf<V>>,
    len: usize,
}

impl<V> Default for Index<V> {
    fn default() -> Self {
        Index {
            leaves: BTreeMap::new(),
            len: 0,
        }
    }
}

/// The leaf `key` belongs in, with its fence.
fn leaf_of<'a, V>(
    leaves: &'a BTreeMap<Key, Leaf<V>>,
    key: &[u8],
) -> Option<(&'a Key, &'a Leaf<V>)> {
    leaves
        .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
        .next_back()
}

fn leaf_of_mut<'a, V>(
    leaves: &'a mut BTreeMap<Key, Leaf<V>>,
    key: &[u8],
) -> Option<(&'a Key, &'a mut Leaf<V>)> {
    leaves
        .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
        .next_back()
}

/// Where a range starting at `lower` starts in the leaf holding its key.
fn skip<V>(leaf: &Leaf<V>, lower: Bound<&[u8]>) -> usize {
    match lower {
        Bound::Unbounded => 0,
        Bound::Included(key) => leaf.position(key).unwrap_or_else(|i| i),
        Bound::Excluded(key) => leaf.position(key).map_or_else(|i| i, |i| i + 1),
    }
}

impl<V> Index<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get_key_value(&self, key: &[u8]) -> Option<(&[u8], &V)> {
        let (_, leaf) = leaf_of(&self.leaves, key)?;
        let i = leaf.position(key).ok()?;
        Some((leaf.key(i), &leaf.values[i]))
    }

    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (_, leaf) = leaf_of_mut(&mut self.leaves, key)?;
        let i = leaf.position(key).ok()?;
        Some(&mut leaf.values[i])
    }

    /// Inserts `key` (its bytes are copied), returning the value it replaces.
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        if self.leaves.is_empty() {
            self.leaves.insert(Key::new(&[]), Leaf::new());
        }
        loop {
            let (fence, leaf) = leaf_of_mut(&mut self.leaves, key)
                .expect("the first leaf's fence is below every key");
            let at = match leaf.position(key) {
                Ok(i) => return Some(std::mem::replace(&mut leaf.values[i], value)),
                Err(at) => at,
            };
            if !leaf.full(key.len()) {
                leaf.insert(at, key, value);
                self.len += 1;
                return None;
            }
            if at == leaf.len() {
                // Past the end of a full leaf (keys written in order): this one stays full,
                // and the key goes first into the next leaf when it has room (keys written in
                // reverse order into the gap before it: its fence comes down to the key), or
                // else opens a leaf of its own.
                let next = self
                    .leaves
                    .range::<[u8], _>((Bound::Excluded(key), Bound::Unbounded))
                    .next()
                    .filter(|(_, l)| !l.full(key.len()))
                    .map(|(fence, _)| fence.clone());
                let mut next = match next {
                    Some(fence) => self.leaves.remove(&fence).expect("found above"),
                    None => Leaf::new(),
                };
                next.insert(0, key, value);
                let fresh = self.leaves.insert(Key::new(key), next).is_none();
                debug_assert!(fresh, "a fence above the full leaf's and below the next");
                self.len += 1;
                return None;
            }
            if at == 0 {
                // Before the start (keys written in reverse order): the key takes this leaf's
                // fence in a leaf of its own, and the full leaf moves to a fence of its first
                // key.
                let fence = fence.clone();
                let full = self.leaves.remove(&fence).expect("found above");
                let mut first = Leaf::new();
                first.push(key, value);
                self.leaves.insert(Key::new(full.key(0)), full);
                self.leaves.insert(fence, first);
                self.len += 1;
                return None;
            }
            // In the middle: the leaf splits in two, and the key goes into one of the halves
            // (again: by bytes, one half may still be full).
            let right = leaf.split_off(leaf.len() / 2);
            self.leaves.insert(Key::new(right.key(0)), right);
        }
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let (fence, leaf) = leaf_of_mut(&mut self.leaves, key)?;
        let value = leaf.remove(leaf.position(key).ok()?);
        self.len -= 1;
        if leaf.len() < SPARSE {
            let fence = fence.clone();
            self.merge(fence);
        }
        Some(value)
    }

    /// Merges the sparse leaf at `fence` into its left neighbour, or its right neighbour into
    /// it, when the two fit in [`MERGED`] entries and half of [`LEAF_BYTES`]; drops it when
    /// empty (unless it is the first).
    fn merge(&mut self, fence: Key) {
        let this = &self.leaves[&fence];
        let (len, bytes) = (this.len(), this.bytes.len());
        let fits = |l: &Leaf<V>| l.len() + len <= MERGED && l.bytes.len() + bytes <= LEAF_BYTES / 2;
        let fitting = |(k, l): (&Key, &Leaf<V>)| fits(l).then(|| k.clone());
        let prev = self
            .leaves
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(&fence[..])))
            .next_back()
            .and_then(fitting);
        // (into, from): this leaf into its left neighbour, or its right neighbour into it.
        let pair = match prev {
            Some(prev) => Some((prev, fence.clone())),
            None => self
                .leaves
                .range::<[u8], _>((Bound::Excluded(&fence[..]), Bound::Unbounded))
                .next()
                .and_then(fitting)
                .map(|next| (fence.clone(), next)),
        };
        match pair {
            Some((into, from)) => {
                let mut from = self.leaves.remove(&from).expect("merging it");
                let into = self.leaves.get_mut(&into).expect("merging into it");
                into.append(&mut from);
            }
            None if len == 0 && !fence.is_empty() => {
                self.leaves.remove(&fence);
            }
            None => {}
        }
    }

    /// The entries with keys between `lower` and `upper`, in key order.
    pub fn range<'a, 'k>(
        &'a self,
        lower: Bound<&[u8]>,
        upper: Bound<&'k [u8]>,
    ) -> Range<'a, 'k, V> {
        let (entries, leaves) = match lower {
            Bound::Unbounded => (Leaf::nothing(), self.leaves.range::<[u8], _>(..)),
            Bound::Included(key) | Bound::Excluded(key) => {
                // The leaf holding `key`, from where `key` is or would be; then the leaves
                // after it (fenced above `key`).
                let first = leaf_of(&self.leaves, key)
                    .map_or_else(Leaf::nothing, |(_, leaf)| leaf.entries(skip(leaf, lower)));
                let rest = self
                    .leaves
                    .range::<[u8], _>((Bound::Excluded(key), Bound::Unbounded));
                (first, rest)
            }
        };
        Range(Walk {
            leaves,
            entries,
            open: |(_, leaf)| leaf.entries(0),
            upper,
            done: false,
        })
    }

    /// As [`Index::range`], with the values mutable.
    pub fn range_mut<'a, 'k>(
        &'a mut self,
        lower: Bound<&[u8]>,
        upper: Bound<&'k [u8]>,
    ) -> RangeMut<'a, 'k, V> {
        // The fence of the leaf holding `lower`'s key (a copy: the leaves are borrowed
        // mutably from there on).
        let from = match lower {
            Bound::Unbounded => None,
            Bound::Included(key) | Bound::Excluded(key) => {
                leaf_of(&self.leaves, key).map(|(fence, _)| fence.clone())
            }
        };
        let mut leaves = match &from {
            Some(f) => self
                .leaves
                .range_mut::<[u8], _>((Bound::Included(&f[..]), Bound::Unbounded)),
            None => self.leaves.range_mut::<[u8], _>(..),
        };
        let entries = match leaves.next() {
            Some((_, leaf)) => {
                let from = skip(leaf, lower);
                leaf.entries_mut(from)
            }
            None => keys_from(&[], &[], 0).zip([].iter_mut()),
        };
        RangeMut(Walk {
            leaves,
            entries,
            open: |(_, leaf)| leaf.entries_mut(0),
            upper,
            done: false,
        })
    }

    pub fn iter(&self) -> Range<'_, 'static, V> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }
}

/// True when `key` is beyond `upper`.
fn past(key: &[u8], upper: Bound<&[u8]>) -> bool {
    match upper {
        Bound::Unbounded => false,
        Bound::Included(u) => key > u,
        Bound::Excluded(u) => key >= u,
    }
}

/// Entries leaf after leaf up to `upper`: the walk of [`Range`] and [`RangeMut`].
struct Walk<'k, L: Iterator, E> {
    leaves: L,
    entries: E,
    /// A leaf's entries from its first.
    open: fn(L::Item) -> E,
    upper: Bound<&'k [u8]>,
    done: bool,
}

impl<'a, L: Iterator, E: Iterator<Item = (&'a [u8], T)>, T> Iterator for Walk<'_, L, E> {
    type Item = (&'a [u8], T);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if let Some((k, v)) = self.entries.next() {
                self.done = past(k, self.upper);
                if !self.done {
                    return Some((k, v));
                }
            } else {
                self.entries = (self.open)(self.leaves.next()?);
            }
        }
        None
    }
}

pub struct Range<'a, 'k, V>(Walk<'k, btree_map::Range<'a, Key, Leaf<V>>, Entries<'a, V>>);

impl<'a, V> Iterator for Range<'a, '_, V> {
    type Item = (&'a [u8], &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

pub struct RangeMut<'a, 'k, V>(Walk<'k, btree_map::RangeMut<'a, Key, Leaf<V>>, EntriesMut<'a, V>>);

impl<'a, V> Iterator for RangeMut<'a, '_, V> {
    type Item = (&'a [u8], &'a mut V);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

impl<K: AsRef<[u8]>, V> Extend<(K, V)> for Index<V> {
    /// Keys in increasing order after the last one (a checkpoint's restore) are appended
    /// without a search, [`MERGED`] to a leaf; any other key is inserted.
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (key, value) in iter {
            let key = key.as_ref();
            let last = self.leaves.last_key_value().map(|(_, leaf)| leaf);
            // The last leaf is empty only when it is also the first (an empty index).
            if last.is_some_and(|leaf| leaf.last_key().is_some_and(|k| k >= key)) {
                self.insert(key, value);
                continue;
            }
            let roomy =
                |l: &Leaf<V>| l.len() < MERGED && l.bytes.len() + key.len() <= LEAF_BYTES / 2;
            let fence = match last.map(roomy) {
                Some(true) => None,
                Some(false) => Some(Key::new(key)),
                None => Some(Key::new(&[])),
            };
            if let Some(fence) = fence {
                let fresh = self.leaves.insert(fence, Leaf::new()).is_none();
                debug_assert!(fresh, "a fence above every key");
            }
            let leaf = self.leaves.values_mut().next_back().expect("a leaf");
            leaf.push(key, value);
            self.len += 1;
        }
    }
}

impl<K: AsRef<[u8]>, V> FromIterator<(K, V)> for Index<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut index = Index::default();
        index.extend(iter);
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;

    /// The invariants in the module's doc.
    fn check<V>(ix: &Index<V>) {
        let mut fences = ix.leaves.iter().peekable();
        if let Some((first, _)) = fences.peek() {
            assert!(first.is_empty(), "the first fence is the empty key");
        }
        let mut count = 0;
        let mut prev: Option<&[u8]> = None;
        let mut first = true;
        while let Some((fence, leaf)) = fences.next() {
            let n = leaf.len();
            assert!(n <= LEAF, "a leaf of {n}");
            assert!(
                n <= 1 || leaf.bytes.len() <= LEAF_BYTES,
                "a leaf of {} bytes",
                leaf.bytes.len()
            );
            assert!(first || n != 0, "an empty leaf after the first");
            assert_eq!(leaf.values.len(), n);
            assert_eq!(
                leaf.ends.last().map_or(0, |e| *e as usize),
                leaf.bytes.len()
            );
            assert!(
                leaf.ends.windows(2).all(|w| w[0] <= w[1]),
                "ends out of order"
            );
            for spare in [leaf.ends.capacity() - n, leaf.values.capacity() - n] {
                assert!(spare <= 2 * GROW.max(MERGED), "{spare} spare entries");
            }
            let spare = leaf.bytes.capacity() - leaf.bytes.len();
            assert!(
                spare <= 2 * SPARE_BYTES.max(LEAF_BYTES),
                "{spare} spare key bytes"
            );
            for k in leaf.keys(0) {
                assert!(k >= &fence[..], "a key below its fence");
                assert!(prev.is_none_or(|p| p < k), "keys out of order");
                prev = Some(k);
            }
            if let (Some((next, _)), Some(last)) = (fences.peek(), leaf.last_key()) {
                assert!(last < &next[..], "a key at or above the next fence");
            }
            count += n;
            first = false;
        }
        assert_eq!(count, ix.len());
    }

    /// Keys of every kind from one number: short ones, keys that are prefixes of others, the
    /// empty key, and keys longer than half a leaf's bytes or than a whole leaf's (in tests
    /// [`LEAF_BYTES`] is 256), mixed in the same leaves.
    fn key(n: u16) -> Vec<u8> {
        let base = format!("{:03}", n / 10).into_bytes();
        let tail: &[u8] = match n % 10 {
            0..=3 => &[],
            4 => b"\0",
            5 => b"\0\0",
            6 => &[b'L'; 150],
            7 => &[b'H'; 300],
            8 => return Vec::new(),
            _ => b"x",
        };
        let mut k = base;
        if n % 10 < 4 {
            k.push(b'0' + (n % 10) as u8);
        }
        k.extend_from_slice(tail);
        k
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Get(u16),
        AddOne(u16),
        Range(Bound<Vec<u8>>, Bound<Vec<u8>>),
        AddInRange(Bound<Vec<u8>>, Bound<Vec<u8>>, u32),
        /// Keys with values, sorted or not, extended at once.
        Extend(Vec<(u16, u32)>, bool),
    }

    /// Bounds on keys of the index, and between or beyond them.
    fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
        let at = (
            0..700u16,
            prop_oneof![Just(&b""[..]), Just(&b"\x01"[..]), Just(&b"\xff\xff"[..])],
        )
            .prop_map(|(n, tail)| [key(n), tail.to_vec()].concat());
        prop_oneof![
            Just(Bound::Unbounded),
            at.clone().prop_map(Bound::Included),
            at.prop_map(Bound::Excluded),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..700u16, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            4 => (0..700u16).prop_map(Op::Remove),
            1 => (0..700u16).prop_map(Op::Get),
            1 => (0..700u16).prop_map(Op::AddOne),
            1 => (bound(), bound()).prop_map(|(a, b)| Op::Range(a, b)),
            1 => (bound(), bound(), any::<u32>()).prop_map(|(a, b, d)| Op::AddInRange(a, b, d)),
            1 => (proptest::collection::vec((0..700u16, any::<u32>()), 0..80), any::<bool>())
                .prop_map(|(b, sorted)| Op::Extend(b, sorted)),
        ]
    }

    fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        b.as_ref().map(|v| &v[..])
    }

    /// std's range panics on an empty or inverted span; ours yields nothing.
    fn model_range<'a>(
        m: &'a mut Model<Vec<u8>, u32>,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
    ) -> Vec<(&'a Vec<u8>, &'a mut u32)> {
        let empty = match (lo, hi) {
            (Bound::Included(a), Bound::Included(b)) => a > b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a >= b
            }
            _ => false,
        };
        if empty {
            return Vec::new();
        }
        m.range_mut::<[u8], _>((as_slice(lo), as_slice(hi)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn behaves_as_a_btreemap(ops in proptest::collection::vec(op(), 1..1500)) {
            let mut ix: Index<u32> = Index::default();
            let mut m: Model<Vec<u8>, u32> = Model::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let k = key(k);
                        prop_assert_eq!(ix.insert(&k, v), m.insert(k, v));
                    }
                    Op::Remove(k) => {
                        let k = key(k);
                        prop_assert_eq!(ix.remove(&k), m.remove(&k));
                    }
                    Op::Get(k) => {
                        let k = key(k);
                        prop_assert_eq!(ix.get(&k), m.get(&k));
                        prop_assert_eq!(ix.get_key_value(&k).map(|(k, _)| k.to_vec()), m.get_key_value(&k).map(|(k, _)| k.clone()));
                    }
                    Op::AddOne(k) => {
                        let k = key(k);
                        if let Some(v) = ix.get_mut(&k) {
                            *v = v.wrapping_add(1);
                        }
                        if let Some(v) = m.get_mut(&k) {
                            *v = v.wrapping_add(1);
                        }
                    }
                    Op::Range(lo, hi) => {
                        let got: Vec<_> = ix.range(as_slice(&lo), as_slice(&hi)).map(|(k, v)| (k.to_vec(), *v)).collect();
                        let want: Vec<_> = model_range(&mut m, &lo, &hi).into_iter().map(|(k, v)| (k.clone(), *v)).collect();
                        prop_assert_eq!(got, want);
                    }
                    Op::AddInRange(lo, hi, d) => {
                        let mut n = 0;
                        for (_, v) in ix.range_mut(as_slice(&lo), as_slice(&hi)) {
                            *v = v.wrapping_add(d);
                            n += 1;
                        }
                        let want = model_range(&mut m, &lo, &hi);
                        prop_assert_eq!(n, want.len());
                        for (_, v) in want {
                            *v = v.wrapping_add(d);
                        }
                    }
                    Op::Extend(batch, sorted) => {
                        let mut batch: Vec<_> = batch.into_iter().map(|(k, v)| (key(k), v)).collect();
                        if sorted {
                            batch.sort_by(|a, b| a.0.cmp(&b.0));
                        }
                        for (k, v) in &batch {
                            m.insert(k.clone(), *v);
                        }
                        ix.extend(batch);
                    }
                }
                check(&ix);
                prop_assert_eq!(ix.len(), m.len());
            }
            let all: Vec<_> = ix.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
            let want: Vec<_> = m.into_iter().collect();
            prop_assert_eq!(all, want);
        }
    }

    fn leaves_full(order: impl Iterator<Item = u32>) -> (usize, usize) {
        let mut ix = Index::default();
        for i in order {
            ix.insert(format!("{i:08}").as_bytes(), 0u8);
        }
        check(&ix);
        let full = ix.leaves.values().filter(|l| l.len() == LEAF).count();
        (ix.leaves.len(), full)
    }

    #[test]
    fn keys_in_order_or_reverse_fill_their_leaves() {
        let n = 10_000u32;
        let least = (n as usize).div_ceil(LEAF);
        // Every leaf full but the one at the end written last.
        assert_eq!(leaves_full(0..n), (least, least - 1));
        assert_eq!(leaves_full((0..n).rev()), (least, least - 1));
        // Random order: about 70% full, as a B-tree.
        let (leaves, _) = leaves_full((0..n).map(|i| (i * 7919) % n));
        assert!(leaves > least && leaves < 2 * least, "{leaves} leaves");
    }

    #[test]
    fn keys_in_reverse_order_after_a_full_leaf_share_leaves() {
        let mut ix = Index::default();
        for i in 0..LEAF as u32 {
            ix.insert(format!("a{i:04}").as_bytes(), 0u8);
        }
        let n = 1000;
        for i in (0..n).rev() {
            ix.insert(format!("b{i:04}").as_bytes(), 0u8);
        }
        check(&ix);
        // The full leaf, then the b keys in full leaves but one.
        assert_eq!(ix.leaves.len(), 1 + (n as usize).div_ceil(LEAF));
    }

    #[test]
    fn a_key_longer_than_a_leaf_sits_alone() {
        let mut ix = Index::default();
        for i in 0..10u8 {
            ix.insert(&[b'k', i], 0u8);
        }
        let long = [b'k', 4, 0]
            .iter()
            .copied()
            .chain([7u8; 2 * LEAF_BYTES])
            .collect::<Vec<_>>();
        ix.insert(&long, 1);
        check(&ix);
        let alone = ix
            .leaves
            .values()
            .filter(|l| l.len() == 1 && l.bytes.len() == long.len());
        assert_eq!(alone.count(), 1);
        assert_eq!(ix.get(&long), Some(&1));
        assert_eq!(
            ix.range(Bound::Excluded(&long[..]), Bound::Unbounded)
                .count(),
            5
        );
    }

    #[test]
    fn emptied_index_keeps_one_empty_leaf_and_takes_keys_again() {
        let mut ix = Index::default();
        for i in 0..1000u32 {
            ix.insert(format!("{i:04}").as_bytes(), i);
        }
        for i in (0..1000u32).map(|i| (i * 7) % 1000) {
            assert_eq!(ix.remove(format!("{i:04}").as_bytes()), Some(i));
            check(&ix);
        }
        assert!(ix.is_empty());
        assert_eq!(ix.leaves.len(), 1);
        let leaf = ix.leaves.values().next().unwrap();
        assert!(leaf.ends.capacity() <= 2 * GROW && leaf.bytes.capacity() <= 2 * GROW * 4);
        ix.insert(b"x", 1);
        assert_eq!(ix.iter().count(), 1);
    }
}
