//! The index's ordered map from keys to their histories: sorted leaves of at most [`LEAF`]
//! entries, each leaf found through a std B-tree by its fence (a lower bound of its keys).
//!
//! Why not std's `BTreeMap<Key, KeyIndex>` alone: its nodes have room for 11 entries and split
//! a full node in the middle, so keys written in key order (the usual way: a counter, a time,
//! a name with a sequence number) leave every node 6/11 full for good, and the slots of the
//! other 5 (64 bytes each) are paid anyway: 124.9 B per key against 83.3 B in random order.
//! Here a leaf is a vector sized by hand ([`GROW`] entries at a time, never doubled), so its
//! memory follows what it holds in any order, and a leaf that fills up from its end (or its
//! start) stays full: the new key opens the next leaf instead of halving this one.
//!
//! Invariants (checked by `check` in the tests): the first leaf's fence is the empty key
//! (the smallest of all), so every key has a leaf: the last one whose fence is not above it;
//! a leaf's keys are sorted, unique, not below its fence and below the next leaf's fence; no
//! leaf holds more than [`LEAF`] entries; a leaf other than the first is never empty.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::iter::Zip;
use std::ops::Bound;
use std::slice;

use super::key::Key;

/// The most entries in one leaf, searched by bisection of its keys (24 bytes each: 768 bytes).
pub const LEAF: usize = 32;
/// Entries a full leaf grows by (a doubling would leave up to half of it unused).
const GROW: usize = 4;
/// A leaf holding fewer entries than this after a removal is merged with a neighbour when the
/// two fit in [`MERGED`] (well below [`LEAF`], so a merge is not followed by a split).
const SPARSE: usize = LEAF / 4;
const MERGED: usize = LEAF * 3 / 4;

/// Sorted keys and their values, in two arrays of the same length and capacity: a search
/// reads only keys (a few adjacent cache lines), then the one value found.
struct Leaf<V> {
    keys: Vec<Key>,
    values: Vec<V>,
}

impl<V> Leaf<V> {
    fn with_capacity(n: usize) -> Self {
        Leaf {
            keys: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn position(&self, key: &[u8]) -> Result<usize, usize> {
        prefetch(&self.keys);
        self.keys.binary_search_by(|k| k[..].cmp(key))
    }

    fn reserve_exact(&mut self, n: usize) {
        self.keys.reserve_exact(n);
        self.values.reserve_exact(n);
    }

    /// Room for one more entry, grown by [`GROW`] entries at most.
    fn make_room(&mut self) {
        if self.keys.len() == self.keys.capacity() {
            self.reserve_exact(GROW.min(LEAF.saturating_sub(self.len())).max(1));
        }
    }

    fn insert(&mut self, at: usize, key: Key, value: V) {
        self.make_room();
        self.keys.insert(at, key);
        self.values.insert(at, value);
    }

    fn push(&mut self, key: Key, value: V) {
        self.make_room();
        self.keys.push(key);
        self.values.push(value);
    }

    fn remove(&mut self, at: usize) -> V {
        self.keys.remove(at);
        let value = self.values.remove(at);
        self.trim();
        value
    }

    /// Gives back what the leaf no longer uses beyond [`GROW`] spare entries.
    fn trim(&mut self) {
        if self.keys.capacity() - self.len() > 2 * GROW {
            self.keys.shrink_to(self.len() + GROW);
            self.values.shrink_to(self.len() + GROW);
        }
    }

    fn split_off(&mut self, at: usize) -> Leaf<V> {
        let right = Leaf {
            keys: self.keys.split_off(at),
            values: self.values.split_off(at),
        };
        self.trim();
        right
    }

    fn append(&mut self, other: &mut Leaf<V>) {
        self.reserve_exact(other.len());
        self.keys.append(&mut other.keys);
        self.values.append(&mut other.values);
    }

    fn entries(&self, from: usize) -> Entries<'_, V> {
        self.keys[from..].iter().zip(self.values[from..].iter())
    }

    fn entries_mut(&mut self, from: usize) -> EntriesMut<'_, V> {
        self.keys[from..].iter().zip(self.values[from..].iter_mut())
    }
}

/// Asks for every cache line of `keys` at once: a bisection's reads depend on each other, so
/// without this a leaf not in cache costs one memory latency per step (five for 32 keys)
/// instead of about one.
#[inline]
fn prefetch(keys: &[Key]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(keys);
        let start = keys.as_ptr().cast::<i8>();
        for line in (0..bytes).step_by(64) {
            // SAFETY: a prefetch is only a hint and never faults; the address is inside
            // `keys`.
            unsafe { _mm_prefetch(start.add(line), _MM_HINT_T0) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = keys;
}

type Entries<'a, V> = Zip<slice::Iter<'a, Key>, slice::Iter<'a, V>>;
type EntriesMut<'a, V> = Zip<slice::Iter<'a, Key>, slice::IterMut<'a, V>>;

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

    pub fn get_key_value(&self, key: &[u8]) -> Option<(&Key, &V)> {
        let (_, leaf) = leaf_of(&self.leaves, key)?;
        let i = leaf.position(key).ok()?;
        Some((&leaf.keys[i], &leaf.values[i]))
    }

    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (_, leaf) = leaf_of_mut(&mut self.leaves, key)?;
        let i = leaf.position(key).ok()?;
        Some(&mut leaf.values[i])
    }

    /// Inserts `key`, returning the value it replaces.
    pub fn insert(&mut self, key: Key, value: V) -> Option<V> {
        if self.leaves.is_empty() {
            self.leaves.insert(Key::new(&[]), Leaf::with_capacity(0));
        }
        let (fence, leaf) =
            leaf_of_mut(&mut self.leaves, &key).expect("the first leaf's fence is below every key");
        let at = match leaf.position(&key) {
            Ok(i) => return Some(std::mem::replace(&mut leaf.values[i], value)),
            Err(at) => at,
        };
        self.len += 1;
        if leaf.len() < LEAF {
            leaf.insert(at, key, value);
        } else if at == LEAF {
            // Past the end of a full leaf (keys written in order): the key opens a leaf of
            // its own and this one stays full.
            let mut next = Leaf::with_capacity(GROW);
            let fence = key.clone();
            next.push(key, value);
            self.leaves.insert(fence, next);
        } else if at == 0 {
            // Before the start (keys written in reverse order): the key takes this leaf's
            // fence in a leaf of its own, and the full leaf moves to a fence of its first key.
            let fence = fence.clone();
            let full = self.leaves.remove(&fence).expect("found above");
            let mut first = Leaf::with_capacity(GROW);
            first.push(key, value);
            self.leaves.insert(full.keys[0].clone(), full);
            self.leaves.insert(fence, first);
        } else {
            let mut right = leaf.split_off(LEAF / 2);
            if at <= LEAF / 2 {
                leaf.insert(at, key, value);
            } else {
                right.insert(at - LEAF / 2, key, value);
            }
            self.leaves.insert(right.keys[0].clone(), right);
        }
        None
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
    /// it, when the two fit in [`MERGED`]; drops it when empty (unless it is the first).
    fn merge(&mut self, fence: Key) {
        let len = self.leaves[&fence].len();
        let prev = self
            .leaves
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(&fence[..])))
            .next_back()
            .map(|(k, l)| (k.clone(), l.len()));
        if let Some((prev, prev_len)) = prev {
            if prev_len + len <= MERGED {
                let mut this = self.leaves.remove(&fence).expect("merging it");
                let into = self.leaves.get_mut(&prev).expect("its left neighbour");
                into.append(&mut this);
                return;
            }
        }
        let next = self
            .leaves
            .range::<[u8], _>((Bound::Excluded(&fence[..]), Bound::Unbounded))
            .next()
            .map(|(k, l)| (k.clone(), l.len()));
        if let Some((next, next_len)) = next {
            if next_len + len <= MERGED {
                let mut that = self.leaves.remove(&next).expect("merging it");
                let into = self.leaves.get_mut(&fence).expect("merging into it");
                into.append(&mut that);
                return;
            }
        }
        if len == 0 && !fence.is_empty() {
            self.leaves.remove(&fence);
        }
    }

    /// The entries with keys between `lower` and `upper`, in key order.
    pub fn range<'a, 'k>(
        &'a self,
        lower: Bound<&[u8]>,
        upper: Bound<&'k [u8]>,
    ) -> Range<'a, 'k, V> {
        let (entries, leaves) = match lower {
            Bound::Unbounded => (Leaf::empty(), self.leaves.range::<[u8], _>(..)),
            Bound::Included(key) | Bound::Excluded(key) => {
                // The leaf holding `key`, from where `key` is or would be; then the leaves
                // after it (fenced above `key`).
                let first = leaf_of(&self.leaves, key)
                    .map_or_else(Leaf::empty, |(_, leaf)| leaf.entries(skip(leaf, lower)));
                let rest = self
                    .leaves
                    .range::<[u8], _>((Bound::Excluded(key), Bound::Unbounded));
                (first, rest)
            }
        };
        Range {
            leaves,
            entries,
            upper,
            done: false,
        }
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
            None => [].iter().zip([].iter_mut()),
        };
        RangeMut {
            leaves,
            entries,
            upper,
            done: false,
        }
    }

    pub fn iter(&self) -> Range<'_, 'static, V> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }
}

impl<V> Leaf<V> {
    fn empty<'a>() -> Entries<'a, V> {
        [].iter().zip([].iter())
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

pub struct Range<'a, 'k, V> {
    leaves: btree_map::Range<'a, Key, Leaf<V>>,
    entries: Entries<'a, V>,
    upper: Bound<&'k [u8]>,
    done: bool,
}

impl<'a, V> Iterator for Range<'a, '_, V> {
    type Item = (&'a Key, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if let Some((k, v)) = self.entries.next() {
                self.done = past(k, self.upper);
                if !self.done {
                    return Some((k, v));
                }
            } else {
                self.entries = self.leaves.next()?.1.entries(0);
            }
        }
        None
    }
}

pub struct RangeMut<'a, 'k, V> {
    leaves: btree_map::RangeMut<'a, Key, Leaf<V>>,
    entries: EntriesMut<'a, V>,
    upper: Bound<&'k [u8]>,
    done: bool,
}

impl<'a, V> Iterator for RangeMut<'a, '_, V> {
    type Item = (&'a Key, &'a mut V);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if let Some((k, v)) = self.entries.next() {
                self.done = past(k, self.upper);
                if !self.done {
                    return Some((k, v));
                }
            } else {
                self.entries = self.leaves.next()?.1.entries_mut(0);
            }
        }
        None
    }
}

impl<V> Extend<(Key, V)> for Index<V> {
    /// Keys in increasing order after the last one (a checkpoint's restore) are appended
    /// without a search, [`MERGED`] to a leaf; any other key is inserted.
    fn extend<I: IntoIterator<Item = (Key, V)>>(&mut self, iter: I) {
        for (key, value) in iter {
            let last = self.leaves.last_key_value().map(|(_, leaf)| leaf);
            // Only the first leaf can be empty, and then it is the only one.
            if last.is_some_and(|leaf| leaf.keys.last().is_some_and(|k| *k >= key)) {
                self.insert(key, value);
                continue;
            }
            let leaf = match last.map(Leaf::len) {
                Some(n) if n < MERGED => self.leaves.last_entry().expect("seen").into_mut(),
                Some(_) => self
                    .leaves
                    .entry(key.clone())
                    .or_insert_with(|| Leaf::with_capacity(MERGED)),
                None => self
                    .leaves
                    .entry(Key::new(&[]))
                    .or_insert_with(|| Leaf::with_capacity(MERGED)),
            };
            leaf.push(key, value);
            self.len += 1;
        }
    }
}

impl<V> FromIterator<(Key, V)> for Index<V> {
    fn from_iter<I: IntoIterator<Item = (Key, V)>>(iter: I) -> Self {
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
        let mut prev: Option<&Key> = None;
        let mut first = true;
        while let Some((fence, leaf)) = fences.next() {
            assert!(leaf.len() <= LEAF, "a leaf of {}", leaf.len());
            assert!(first || leaf.len() != 0, "an empty leaf after the first");
            assert_eq!(leaf.keys.len(), leaf.values.len());
            assert_eq!(leaf.keys.capacity(), leaf.values.capacity());
            let spare = leaf.keys.capacity() - leaf.len();
            assert!(spare <= 2 * GROW.max(MERGED), "{spare} spare entries");
            for k in &leaf.keys {
                assert!(k >= fence, "a key below its fence");
                assert!(prev.is_none_or(|p| p < k), "keys out of order");
                prev = Some(k);
            }
            if let (Some((next, _)), Some(last)) = (fences.peek(), leaf.keys.last()) {
                assert!(last < *next, "a key at or above the next fence");
            }
            count += leaf.len();
            first = false;
        }
        assert_eq!(count, ix.len());
    }

    fn key(n: u16) -> Vec<u8> {
        if n % 5 == 0 {
            // Longer than a key kept inline.
            format!("a-key-longer-than-inline-{n:05}").into_bytes()
        } else {
            format!("{n:05}").into_bytes()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Get(u16),
        Range(Bound<u16>, Bound<u16>),
        AddInRange(Bound<u16>, Bound<u16>, u32),
        /// Keys from .0 on, every .1-th, .2 of them, extended in order.
        Extend(u16, u16, u16),
    }

    fn bound() -> impl Strategy<Value = Bound<u16>> {
        prop_oneof![
            Just(Bound::Unbounded),
            (0..700u16).prop_map(Bound::Included),
            (0..700u16).prop_map(Bound::Excluded),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..700u16, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            4 => (0..700u16).prop_map(Op::Remove),
            1 => (0..700u16).prop_map(Op::Get),
            1 => (bound(), bound()).prop_map(|(a, b)| Op::Range(a, b)),
            1 => (bound(), bound(), any::<u32>()).prop_map(|(a, b, d)| Op::AddInRange(a, b, d)),
            1 => (0..700u16, 1..4u16, 0..80u16).prop_map(|(a, b, c)| Op::Extend(a, b, c)),
        ]
    }

    fn bytes(b: Bound<u16>) -> Bound<Vec<u8>> {
        b.map(key)
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
                        prop_assert_eq!(ix.insert(Key::new(&k), v), m.insert(k, v));
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
                    Op::Range(lo, hi) => {
                        let (lo, hi) = (bytes(lo), bytes(hi));
                        let got: Vec<_> = ix.range(as_slice(&lo), as_slice(&hi)).map(|(k, v)| (k.to_vec(), *v)).collect();
                        let want: Vec<_> = model_range(&mut m, &lo, &hi).into_iter().map(|(k, v)| (k.clone(), *v)).collect();
                        prop_assert_eq!(got, want);
                    }
                    Op::AddInRange(lo, hi, d) => {
                        let (lo, hi) = (bytes(lo), bytes(hi));
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
                    Op::Extend(from, step, count) => {
                        let mut batch: Vec<_> = (0..count).map(|i| from.saturating_add(i * step)).map(key).collect();
                        batch.sort();
                        for k in &batch {
                            m.insert(k.clone(), 7);
                        }
                        ix.extend(batch.iter().map(|k| (Key::new(k), 7)));
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
            ix.insert(Key::new(format!("{i:08}").as_bytes()), 0u8);
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
    fn emptied_index_keeps_one_empty_leaf_and_takes_keys_again() {
        let mut ix = Index::default();
        for i in 0..1000u32 {
            ix.insert(Key::new(format!("{i:04}").as_bytes()), i);
        }
        for i in (0..1000u32).map(|i| (i * 7) % 1000) {
            assert_eq!(ix.remove(format!("{i:04}").as_bytes()), Some(i));
            check(&ix);
        }
        assert!(ix.is_empty());
        assert_eq!(ix.leaves.len(), 1);
        assert!(ix.leaves.values().next().unwrap().keys.capacity() <= 2 * GROW);
        ix.insert(Key::new(b"x"), 1);
        assert_eq!(ix.iter().count(), 1);
    }
}
