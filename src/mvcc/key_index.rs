//! The history of one key: generations of revisions, as etcd's `keyIndex`.
//!
//! A generation runs from a key's creation to its deletion (the tombstone is the generation's
//! last revision); a key that is deleted and put again starts a new generation. The last
//! generation is the live one and may be empty (the key is currently deleted).
//!
//! Example, for puts at 1.0, 2.0, a delete at 3.0, puts at 4.0, 5.0 and a delete at 6.0:
//!
//! ```text
//! generations: {empty}, {4.0, 5.0, 6.0(t)}, {1.0, 2.0, 3.0(t)}
//! compact(4): {empty}, {4.0, 5.0, 6.0(t)}        - the older generation ended before 4
//! compact(5): {empty}, {5.0, 6.0(t)}
//! compact(6): {empty}                             - key index removed by the caller
//! ```
//!
//! A version counts the puts of the generation; compaction drops revisions but never changes
//! the version of those that remain, so each revision's version is derived from `ver`.
//!
//! Most keys hold a single revision between compactions (written once, or overwritten and
//! compacted): such a key is kept in 40 bytes inside the B-tree's slot ([`One`]), with no
//! allocation; a key with more history holds its generations in a vector. The form is
//! canonical (a key that fits [`One`] is always kept so), so equal histories compare equal.

use std::num::NonZeroU32;

use super::key::Key;
use super::Revision;

/// Where a revision's value lives: a location the value store interprets (for the log: a
/// segment, an offset in it and a length), or none (a tombstone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueRef {
    pub seg: u32,
    pub off: u32,
    pub len: u32,
}

impl ValueRef {
    /// A tombstone's: no value.
    pub const NONE: ValueRef = ValueRef {
        seg: u32::MAX,
        off: u32::MAX,
        len: u32::MAX,
    };
    /// The empty value (it needs no storage).
    pub const EMPTY: ValueRef = ValueRef {
        seg: u32::MAX,
        off: 0,
        len: 0,
    };
}

/// One revision of a key: when it was written, its lease and where its value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevEntry {
    pub rev: Revision,
    pub lease: i64,
    pub value: ValueRef,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// Puts in this generation, compacted ones included.
    ver: i64,
    /// Revision of the put that created the key in this generation.
    created: Revision,
    revs: Vec<RevEntry>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Index of the newest revision with main <= at_rev.
    fn newest_at(&self, at_rev: i64) -> Option<usize> {
        // Revisions are sorted; partition_point finds the first with main > at_rev.
        let n = self.revs.partition_point(|e| e.rev.main <= at_rev);
        n.checked_sub(1)
    }
}

/// What a read of a key at a revision finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub entry: RevEntry,
    pub created: Revision,
    pub version: i64,
}

/// A key whose whole index is one put in its live generation, packed: the revision's numbers
/// beyond what the fields hold (a version over 2^32, a sub revision over 65535, a creation
/// more than 2^32 revisions back) keep the key in the general form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct One {
    main: i64,
    lease: i64,
    value: ValueRef,
    /// `main` less the generation's creation revision's main.
    created_back: u32,
    /// Puts in the generation (at least this one).
    ver: NonZeroU32,
    sub: u16,
    created_sub: u16,
}

impl One {
    fn pack(ver: i64, created: Revision, e: RevEntry) -> Option<One> {
        if e.value == ValueRef::NONE {
            return None;
        }
        Some(One {
            main: e.rev.main,
            lease: e.lease,
            value: e.value,
            created_back: u32::try_from(e.rev.main.checked_sub(created.main)?).ok()?,
            ver: NonZeroU32::new(u32::try_from(ver).ok()?)?,
            sub: u16::try_from(e.rev.sub).ok()?,
            created_sub: u16::try_from(created.sub).ok()?,
        })
    }

    fn entry(&self) -> RevEntry {
        RevEntry {
            rev: Revision {
                main: self.main,
                sub: self.sub as i64,
            },
            lease: self.lease,
            value: self.value,
        }
    }

    fn created(&self) -> Revision {
        Revision {
            main: self.main - self.created_back as i64,
            sub: self.created_sub as i64,
        }
    }

    fn generation(&self) -> Generation {
        Generation {
            ver: self.ver.get() as i64,
            created: self.created(),
            revs: vec![self.entry()],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIndex(Repr);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Repr {
    One(One),
    /// Oldest first; never empty; the last one is the live (possibly empty) generation.
    Gens(Vec<Generation>),
}

// One key's index in the B-tree's slot: the packed form sets the size.
const _: () = assert!(std::mem::size_of::<KeyIndex>() == 40);

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex(Repr::Gens(vec![Generation::default()]))
    }
}

/// One generation as a checkpoint holds it: the puts it counted up to the checkpoint's
/// revision, its creation revision, and its revisions up to that revision.
pub type GenerationAt = (i64, Revision, Vec<RevEntry>);

impl KeyIndex {
    /// A key's index after its first put.
    pub fn created(entry: RevEntry) -> KeyIndex {
        match One::pack(1, entry.rev, entry) {
            Some(one) => KeyIndex(Repr::One(one)),
            None => {
                let mut ki = KeyIndex::default();
                ki.put(entry);
                ki
            }
        }
    }

    /// The key's generations as they were at `at_rev` (later revisions left out), oldest first;
    /// empty when the key had no revision at or before `at_rev` (a checkpoint at `at_rev`
    /// taken while later writes go on). (Checkpoints use [`KeyIndex::each_as_of`]; this form
    /// is for tests.)
    #[cfg(test)]
    pub fn as_of(&self, at_rev: i64) -> Vec<GenerationAt> {
        let mut out: Vec<GenerationAt> = Vec::new();
        self.each_as_of(at_rev, |ordinal, ver, created, e| {
            if out.len() == ordinal as usize {
                out.push((ver, created, Vec::new()));
            }
            out[ordinal as usize].2.push(e);
        });
        out
    }

    /// [`KeyIndex::as_of`] without building it: `f(ordinal, ver, created, entry)` for each of
    /// its revisions in order, `ordinal` numbering the generations `as_of` returns (a checkpoint
    /// walk calls this for every key: no allocation per key).
    pub fn each_as_of(&self, at_rev: i64, mut f: impl FnMut(u32, i64, Revision, RevEntry)) {
        let gens = match &self.0 {
            Repr::One(one) if one.main <= at_rev => {
                return f(0, one.ver.get() as i64, one.created(), one.entry());
            }
            Repr::One(_) => return,
            Repr::Gens(gens) => gens,
        };
        let mut ordinal = 0;
        for g in gens {
            let keep = g.revs.partition_point(|e| e.rev.main <= at_rev);
            if keep == 0 {
                continue;
            }
            let later = (g.revs.len() - keep) as i64;
            for &e in &g.revs[..keep] {
                f(ordinal, g.ver - later, g.created, e);
            }
            ordinal += 1;
        }
    }

    /// A key with one generation of one revision, as a checkpoint holds it (no vectors built
    /// for the common case of a restore: a put); as [`KeyIndex::from_generations`] otherwise.
    pub fn from_single(ver: i64, created: Revision, entry: RevEntry) -> Option<KeyIndex> {
        match One::pack(ver, created, entry) {
            Some(one) => Some(KeyIndex(Repr::One(one))),
            None => KeyIndex::from_generations(vec![(ver, created, vec![entry])]),
        }
    }

    /// A key index from generations as [`KeyIndex::as_of`] gives them; None for none.
    pub fn from_generations(gens: Vec<GenerationAt>) -> Option<KeyIndex> {
        if gens.is_empty() || gens.iter().any(|(_, _, revs)| revs.is_empty()) {
            return None;
        }
        let ended = gens
            .last()
            .and_then(|(_, _, revs)| revs.last())
            .is_some_and(|e| e.value == ValueRef::NONE);
        // Exactly the room needed (a key ended by a deletion gets an empty live generation).
        let mut generations: Vec<Generation> = Vec::with_capacity(gens.len() + ended as usize);
        generations.extend(gens.into_iter().map(|(ver, created, revs)| Generation {
            ver,
            created,
            revs,
        }));
        if ended {
            generations.push(Generation::default());
        }
        let mut ki = KeyIndex(Repr::Gens(generations));
        ki.settle();
        Some(ki)
    }

    /// Keeps the canonical form: the packed one whenever the history fits it.
    fn settle(&mut self) {
        if let Repr::Gens(gens) = &self.0 {
            if let [g] = &gens[..] {
                if let [e] = g.revs[..] {
                    if let Some(one) = One::pack(g.ver, g.created, e) {
                        self.0 = Repr::One(one);
                    }
                }
            }
        }
    }

    /// The general form, for a change the packed one cannot hold.
    fn gens_mut(&mut self) -> &mut Vec<Generation> {
        if let Repr::One(one) = &self.0 {
            self.0 = Repr::Gens(vec![one.generation()]);
        }
        match &mut self.0 {
            Repr::Gens(gens) => gens,
            Repr::One(_) => unreachable!("just unpacked"),
        }
    }

    /// Points revision `rev` at `value` (its copy in a checkpoint); false if the index no
    /// longer holds `rev` (compacted since).
    pub fn repoint(&mut self, rev: Revision, value: ValueRef) -> bool {
        let gens = match &mut self.0 {
            Repr::One(one) => {
                if one.entry().rev != rev {
                    return false;
                }
                one.value = value;
                return true;
            }
            Repr::Gens(gens) => gens,
        };
        for g in gens {
            if let Ok(i) = g.revs.binary_search_by(|e| e.rev.cmp(&rev)) {
                if g.revs[i].value == ValueRef::NONE {
                    return false;
                }
                g.revs[i].value = value;
                return true;
            }
        }
        false
    }

    /// The revision entry of the live generation's newest put (for the lease map).
    pub fn live_entry(&self) -> Option<RevEntry> {
        match &self.0 {
            Repr::One(one) => Some(one.entry()),
            Repr::Gens(gens) => gens.last().and_then(|g| g.revs.last()).copied(),
        }
    }

    /// How many revision entries the index holds.
    pub fn entries(&self) -> usize {
        match &self.0 {
            Repr::One(_) => 1,
            Repr::Gens(gens) => gens.iter().map(|g| g.revs.len()).sum(),
        }
    }

    /// True when the index holds no revision at all (the caller removes it).
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            Repr::One(_) => false,
            Repr::Gens(gens) => gens.len() == 1 && gens[0].is_empty(),
        }
    }

    /// The newest revision recorded (put or tombstone).
    pub fn modified(&self) -> Option<Revision> {
        match &self.0 {
            Repr::One(one) => Some(one.entry().rev),
            Repr::Gens(gens) => gens.iter().rev().find_map(|g| g.revs.last()).map(|e| e.rev),
        }
    }

    /// True when the key exists now (its live generation has a put).
    pub fn is_live(&self) -> bool {
        match &self.0 {
            Repr::One(_) => true,
            Repr::Gens(gens) => !gens.last().expect("key index has a generation").is_empty(),
        }
    }

    /// Records a put. Revisions must grow strictly: anything else is a bug in the caller.
    pub fn put(&mut self, entry: RevEntry) {
        if let Some(m) = self.modified() {
            assert!(
                entry.rev > m,
                "put at {:?} not after last modification {:?}",
                entry.rev,
                m
            );
        }
        let g = self
            .gens_mut()
            .last_mut()
            .expect("key index has a generation");
        if g.revs.is_empty() {
            g.created = entry.rev;
            // Most keys are written once between compactions: room for exactly one revision
            // (a plain push would reserve four, 120 bytes more per key).
            g.revs.reserve_exact(1);
        }
        g.revs.push(entry);
        g.ver += 1;
        self.settle();
    }

    /// Records a deletion; false (and no change) when the key does not exist now.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if !self.is_live() {
            return false;
        }
        self.put(RevEntry {
            rev,
            lease: 0,
            value: ValueRef::NONE,
        });
        self.gens_mut().push(Generation::default());
        true
    }

    /// The key's state at `at_rev`: its newest put at or before it, when the key existed.
    pub fn get(&self, at_rev: i64) -> Option<Found> {
        let gens = match &self.0 {
            Repr::One(one) => {
                return (one.main <= at_rev).then(|| Found {
                    entry: one.entry(),
                    created: one.created(),
                    version: one.ver.get() as i64,
                })
            }
            Repr::Gens(gens) => gens,
        };
        let g = generation_at(gens, at_rev)?;
        let n = g.newest_at(at_rev)?;
        Some(Found {
            entry: g.revs[n],
            created: g.created,
            version: g.ver - (g.revs.len() - n - 1) as i64,
        })
    }

    /// Every recorded change with main revision >= `from`, appended to `out` (not sorted
    /// across keys).
    pub fn changes_since(&self, key: &[u8], from: i64, out: &mut Vec<super::store::Change>) {
        let gens = match &self.0 {
            Repr::One(one) => {
                if one.main >= from {
                    out.push(super::store::Change {
                        rev: one.entry().rev,
                        key: Key::new(key),
                        created: one.created().main,
                        version: one.ver.get() as i64,
                        lease: one.lease,
                        value: one.value,
                    });
                }
                return;
            }
            Repr::Gens(gens) => gens,
        };
        for g in gens {
            let first = g.revs.partition_point(|e| e.rev.main < from);
            let n = g.revs.len();
            for (i, e) in g.revs.iter().enumerate().skip(first) {
                let deleted = e.value == ValueRef::NONE;
                out.push(super::store::Change {
                    rev: e.rev,
                    key: Key::new(key),
                    created: if deleted { 0 } else { g.created.main },
                    version: if deleted {
                        0
                    } else {
                        g.ver - (n - i - 1) as i64
                    },
                    lease: e.lease,
                    value: e.value,
                });
            }
        }
    }

    /// Removes every revision with main <= at_rev except the newest of them, which stays
    /// readable, unless it is a tombstone (then the whole finished generation goes).
    /// `released` receives the value handles no longer referenced.
    pub fn compact(&mut self, at_rev: i64, released: &mut impl FnMut(ValueRef)) {
        assert!(!self.is_empty(), "compacting an empty key index");
        // A lone put stays: it is the newest at or below any revision at or after it.
        let Repr::Gens(generations) = &mut self.0 else {
            return;
        };
        // The first generation that still matters: it contains at_rev or was created after it.
        let mut gen_idx = 0;
        while gen_idx < generations.len() - 1 {
            let tomb = generations[gen_idx].revs.last().expect("finished").rev;
            if tomb.main > at_rev {
                break;
            }
            gen_idx += 1;
        }
        for g in generations.drain(..gen_idx) {
            g.revs.iter().for_each(|e| released(e.value));
        }
        let last = generations.len() - 1;
        let g = &mut generations[0];
        if !g.is_empty() {
            if let Some(keep) = g.newest_at(at_rev) {
                g.revs.drain(..keep).for_each(|e| released(e.value));
                // The only revision left of a finished generation is its tombstone: drop it.
                if g.revs.len() == 1 && last != 0 {
                    released(g.revs[0].value);
                    generations.remove(0);
                }
            }
        }
        // Give back what the dropped revisions took (a key overwritten many times and then
        // compacted would keep its vector's whole capacity).
        for g in generations.iter_mut() {
            if g.revs.capacity() > 2 * g.revs.len() {
                g.revs.shrink_to_fit();
            }
        }
        if generations.capacity() > 2 * generations.len() {
            generations.shrink_to_fit();
        }
        self.settle();
    }
}

/// The generation the key was in at `at_rev`, or None when the key did not exist then.
fn generation_at(gens: &[Generation], at_rev: i64) -> Option<&Generation> {
    let last = gens.len() - 1;
    for (i, g) in gens.iter().enumerate().rev() {
        let Some(first) = g.revs.first() else {
            continue;
        };
        if i != last {
            let tomb = g.revs.last().expect("non-empty").rev.main;
            if tomb <= at_rev {
                return None;
            }
        }
        if first.rev.main <= at_rev {
            return Some(g);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(main: i64) -> RevEntry {
        RevEntry {
            rev: Revision { main, sub: 0 },
            lease: 0,
            value: ValueRef {
                seg: 0,
                off: main as u32,
                len: 1,
            },
        }
    }

    fn r(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    #[test]
    fn a_key_as_of_a_revision_reads_as_the_key_did_then() {
        // Puts at 2, 3, delete at 4, puts at 6, 7, delete at 9, put at 11.
        let mut ki = KeyIndex::default();
        for (m, del) in [
            (2, false),
            (3, false),
            (4, true),
            (6, false),
            (7, false),
            (9, true),
            (11, false),
        ] {
            if del {
                assert!(ki.tombstone(r(m)));
            } else {
                ki.put(e(m));
            }
        }
        for at in 1..=12 {
            let gens = ki.as_of(at);
            match KeyIndex::from_generations(gens) {
                None => assert!((1..2).contains(&at), "nothing at {at}"),
                Some(then) => {
                    for read in 1..=at {
                        assert_eq!(then.get(read), ki.get(read), "as of {at}, read at {read}");
                    }
                    assert_eq!(then.is_live(), ki.get(at).is_some(), "live as of {at}");
                }
            }
        }
        // After a compaction the same holds for what remains.
        ki.compact(5, &mut |_| {});
        let then = KeyIndex::from_generations(ki.as_of(8)).unwrap();
        for read in 5..=8 {
            assert_eq!(then.get(read), ki.get(read), "read at {read}");
        }
        // Repointing changes the value of exactly one revision.
        let mut k2 = ki.clone();
        let v = ValueRef {
            seg: 9,
            off: 1,
            len: 1,
        };
        assert!(k2.repoint(r(7), v));
        assert_eq!(k2.get(7).unwrap().entry.value, v);
        assert_eq!(k2.get(6), ki.get(6));
        assert!(!k2.repoint(r(9), v), "a tombstone has no value");
        assert!(!k2.repoint(r(8), v), "no such revision");
    }

    /// The worked example of etcd's key_index.go: puts and deletes across three generations.
    fn example() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(e(2));
        ki.put(e(4));
        assert!(ki.tombstone(r(6)));
        ki.put(e(8));
        ki.put(e(10));
        assert!(ki.tombstone(r(12)));
        ki.put(e(14));
        ki.put(e(16));
        ki
    }

    #[test]
    fn get_follows_generations() {
        let ki = example();
        assert_eq!(ki.get(1), None);
        let f = ki.get(3).unwrap();
        assert_eq!((f.entry.rev.main, f.created.main, f.version), (2, 2, 1));
        let f = ki.get(5).unwrap();
        assert_eq!((f.entry.rev.main, f.version), (4, 2));
        assert_eq!(ki.get(6), None, "deleted at 6");
        assert_eq!(ki.get(7), None);
        let f = ki.get(11).unwrap();
        assert_eq!((f.entry.rev.main, f.created.main, f.version), (10, 8, 2));
        assert_eq!(ki.get(13), None);
        let f = ki.get(100).unwrap();
        assert_eq!((f.entry.rev.main, f.created.main, f.version), (16, 14, 2));
    }

    #[test]
    fn compact_keeps_the_newest_revision_at_or_below() {
        let mut ki = example();
        let mut released = vec![];
        ki.compact(5, &mut |v| released.push(v.off));
        assert_eq!(released, vec![2]);
        let f = ki.get(5).unwrap();
        assert_eq!(
            (f.entry.rev.main, f.version),
            (4, 2),
            "version survives compaction"
        );
        released.clear();
        ki.compact(6, &mut |v| released.push(v.off));
        // The first generation is finished at 6: 4 and the tombstone go.
        assert_eq!(released, vec![4, ValueRef::NONE.off]);
        assert_eq!(ki.get(6), None);
        let f = ki.get(9).unwrap();
        assert_eq!((f.entry.rev.main, f.version), (8, 1));
        released.clear();
        ki.compact(15, &mut |v| released.push(v.off));
        assert_eq!(
            released,
            vec![8, 10, ValueRef::NONE.off],
            "second generation gone"
        );
        let f = ki.get(15).unwrap();
        assert_eq!((f.entry.rev.main, f.version), (14, 1));
        assert!(!ki.is_empty());
    }

    #[test]
    fn compact_at_tombstone_of_last_generation_empties_the_index() {
        let mut ki = KeyIndex::default();
        ki.put(e(2));
        assert!(ki.tombstone(r(3)));
        ki.compact(3, &mut |_| {});
        assert!(ki.is_empty());
    }

    #[test]
    fn tombstone_of_a_deleted_key_is_refused() {
        let mut ki = KeyIndex::default();
        assert!(!ki.tombstone(r(2)));
        ki.put(e(2));
        assert!(ki.tombstone(r(3)));
        assert!(!ki.tombstone(r(4)));
        assert_eq!(ki.modified(), Some(r(3)));
    }

    /// Revisions too large for the packed form keep the general one and read the same.
    #[test]
    fn numbers_beyond_the_packed_form_keep_the_general_one() {
        let big = RevEntry {
            rev: Revision {
                main: 1 << 40,
                sub: 70_000,
            },
            lease: 3,
            value: ValueRef {
                seg: 1,
                off: 2,
                len: 3,
            },
        };
        for (ver, created) in [
            (1, big.rev),
            (1 << 33, r(5)),
            (2, r(1)),
            (
                2,
                Revision {
                    main: 5,
                    sub: 1 << 20,
                },
            ),
        ] {
            let ki = KeyIndex::from_single(ver, created, big).unwrap();
            assert!(matches!(ki.0, Repr::Gens(_)), "{ver} {created:?}");
            let f = ki.get(i64::MAX).unwrap();
            assert_eq!((f.entry, f.created, f.version), (big, created, ver));
        }
        let small = e(9);
        let ki = KeyIndex::from_single(3, r(4), small).unwrap();
        assert!(matches!(ki.0, Repr::One(_)));
        let f = ki.get(9).unwrap();
        assert_eq!((f.entry, f.created, f.version), (small, r(4), 3));
        assert_eq!(ki.get(8), None);
        let tomb = RevEntry {
            value: ValueRef::NONE,
            ..small
        };
        assert_eq!(
            KeyIndex::from_single(1, r(4), tomb),
            KeyIndex::from_generations(vec![(1, r(4), vec![tomb])])
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put {
            lease: i64,
            subs: i64,
        },
        Delete,
        /// Compact at the newest revision less this many (never below the last compaction).
        Compact {
            back: i64,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            // Now and then a sub revision beyond the packed form's 16 bits.
            4 => (0i64..3, prop_oneof![8 => 0i64..3, 1 => Just(70_000i64)])
                .prop_map(|(lease, subs)| Op::Put { lease, subs }),
            2 => Just(Op::Delete),
            2 => (0i64..6).prop_map(|back| Op::Compact { back }),
        ]
    }

    /// What etcd's rules say a key's history answers, from the list of its writes.
    struct Model {
        writes: Vec<(Revision, Option<RevEntry>)>,
        compacted: i64,
    }

    impl Model {
        fn get(&self, at: i64) -> Option<Found> {
            let n = self.writes.partition_point(|(r, _)| r.main <= at);
            let (_, Some(entry)) = self.writes[..n].last()? else {
                return None;
            };
            // The generation began after the last deletion before this put.
            let start = self.writes[..n]
                .iter()
                .rposition(|(_, w)| w.is_none())
                .map_or(0, |d| d + 1);
            Some(Found {
                entry: *entry,
                created: self.writes[start].0,
                version: (n - start) as i64,
            })
        }
    }

    proptest::proptest! {
        /// The packed and general forms together answer as the history says, through puts,
        /// deletions and compactions; a key of one put is always packed.
        #[test]
        fn a_key_index_answers_as_its_history(ops in proptest::collection::vec(op(), 1..40)) {
            let mut ki: Option<KeyIndex> = None;
            let mut m = Model { writes: Vec::new(), compacted: 0 };
            let mut main = 1;
            for op in ops {
                match op {
                    Op::Put { lease, subs } => {
                        main += 1;
                        let entry = RevEntry {
                            rev: Revision { main, sub: subs },
                            lease,
                            value: ValueRef { seg: 0, off: main as u32, len: 1 },
                        };
                        match &mut ki {
                            Some(k) => k.put(entry),
                            None => ki = Some(KeyIndex::created(entry)),
                        }
                        m.writes.push((entry.rev, Some(entry)));
                    }
                    Op::Delete => {
                        main += 1;
                        let rev = Revision { main, sub: 0 };
                        let live = m.get(i64::MAX).is_some();
                        let done = ki.as_mut().is_some_and(|k| k.tombstone(rev));
                        proptest::prop_assert_eq!(done, live);
                        if live {
                            m.writes.push((rev, None));
                        }
                    }
                    Op::Compact { back } => {
                        let at = (main - back).max(m.compacted);
                        m.compacted = at;
                        if let Some(k) = &mut ki {
                            // Every value is released once, exactly those no longer held.
                            let values = |k: &KeyIndex| {
                                let mut c = Vec::new();
                                k.changes_since(&Key::new(b"k"), 0, &mut c);
                                c.into_iter().map(|c| (c.rev, c.value)).collect::<Vec<_>>()
                            };
                            let before = values(k);
                            let mut released = Vec::new();
                            k.compact(at, &mut |v| released.push(v));
                            let mut after = if k.is_empty() { Vec::new() } else { values(k) };
                            let mut kept_and_released: Vec<ValueRef> =
                                after.iter().map(|x| x.1).chain(released.iter().copied()).collect();
                            let mut all: Vec<ValueRef> = before.iter().map(|x| x.1).collect();
                            let key = |v: &ValueRef| (v.seg, v.off, v.len);
                            kept_and_released.sort_by_key(key);
                            all.sort_by_key(key);
                            proptest::prop_assert_eq!(kept_and_released, all);
                            after.retain(|x| x.0.main <= at);
                            proptest::prop_assert!(after.len() <= 1, "more than one revision at or below {}", at);
                            // Etcd drops a key exactly when its last write is a deletion at or
                            // before the compaction.
                            let gone = matches!(m.writes.last(), Some((r, None)) if r.main <= at);
                            proptest::prop_assert_eq!(k.is_empty(), gone);
                            if k.is_empty() {
                                // Etcd drops such a key: its last write is a deletion at or
                                // before the compaction.
                                proptest::prop_assert!(matches!(m.writes.last(), Some((r, None)) if r.main <= at));
                                ki = None;
                                m.writes.clear();
                            }
                        }
                    }
                }
                let Some(k) = &ki else { continue };
                for at in m.compacted.max(1)..=main + 1 {
                    proptest::prop_assert_eq!(k.get(at), m.get(at), "read at {}", at);
                }
                proptest::prop_assert_eq!(k.is_live(), m.get(i64::MAX).is_some());
                proptest::prop_assert_eq!(k.modified(), m.writes.last().map(|w| w.0));
                let from = m.compacted + 1;
                let mut changes = Vec::new();
                k.changes_since(&Key::new(b"k"), from, &mut changes);
                let want: Vec<(Revision, bool)> = m.writes.iter().filter(|w| w.0.main >= from).map(|w| (w.0, w.1.is_none())).collect();
                let got: Vec<(Revision, bool)> = changes.iter().map(|c| (c.rev, c.is_delete())).collect();
                proptest::prop_assert_eq!(got, want);
                for c in &changes {
                    if let Some(f) = (!c.is_delete()).then(|| m.get(c.rev.main)).flatten() {
                        proptest::prop_assert_eq!((c.created, c.version), (f.created.main, f.version));
                    }
                }
                let fits = k.get(i64::MAX).is_some_and(|f| One::pack(f.version, f.created, f.entry).is_some());
                if k.entries() == 1 && k.is_live() && fits {
                    proptest::prop_assert!(matches!(k.0, Repr::One(_)), "not packed: {:?}", k);
                }
                if let Some(back) = KeyIndex::from_generations(k.as_of(main)) {
                    proptest::prop_assert_eq!(&back, k);
                }
                // A checkpoint at an earlier revision reads as the key did then.
                for at in m.compacted.max(1)..=main {
                    if let Some(then) = KeyIndex::from_generations(k.as_of(at)) {
                        for read in m.compacted.max(1)..=at {
                            proptest::prop_assert_eq!(then.get(read), m.get(read), "as of {}, read at {}", at, read);
                        }
                    } else {
                        proptest::prop_assert_eq!(m.get(at), None, "nothing as of {}", at);
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "not after last modification")]
    fn put_must_move_forward() {
        let mut ki = KeyIndex::default();
        ki.put(e(5));
        ki.put(e(4));
    }
}
