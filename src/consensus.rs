//! Raft's state on our log: entries and hard state as log records, raft-rs's `Storage` over
//! them, and the layout of a proposal inside an entry.
//!
//! A member of a cluster writes only these records to its log (tags 0x20 to 0x22); a single
//! member without peers writes the requests themselves (`kv::encode_write`, tags 1-13). A
//! single member that becomes a cluster of one (its first membership change) writes a start
//! record (0x22) after its own records: Raft's log begins there, the state before it is what
//! the single member's records made. A cluster member's data directory never starts as a
//! single member.
//!
//! Entries stay where they are in the log's mapping: after an entry is persisted, its `data` is
//! a slice of the mapped segment, so the values a committed put leaves in the index point into
//! the log as they do on a single member.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// Log payload tag of a Raft entry: tag, term (u64 LE), index (u64 LE), entry type (u8), data.
pub const TAG_ENTRY: u8 = 0x20;
/// Log payload tag of a hard state: tag, term, vote, commit (u64 LE each).
pub const TAG_HARD_STATE: u8 = 0x21;
/// Log payload tag of Raft's start on a member that ran alone until then: tag, then the
/// [`RaftMeta`] Raft starts from, as JSON (written once per data directory).
pub const TAG_START: u8 = 0x22;
const ENTRY_HEADER: usize = 1 + 8 + 8 + 1;

/// Whether a log payload is one of this module's records.
pub fn is_raft_record(payload: &[u8]) -> bool {
    matches!(
        payload.first(),
        Some(&TAG_ENTRY | &TAG_HARD_STATE | &TAG_START)
    )
}

/// An entry as a log payload.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_HEADER + e.data.len());
    out.push(TAG_ENTRY);
    out.extend_from_slice(&e.term.to_le_bytes());
    out.extend_from_slice(&e.index.to_le_bytes());
    out.push(e.get_entry_type() as u8);
    out.extend_from_slice(&e.data);
    out
}

/// A hard state as a log payload.
pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut out = Vec::with_capacity(25);
    out.push(TAG_HARD_STATE);
    for v in [hs.term, hs.vote, hs.commit] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Raft's start on a member that ran alone until now, as a log payload.
pub fn encode_start(meta: &RaftMeta) -> Vec<u8> {
    let mut out = vec![TAG_START];
    out.extend_from_slice(
        serde_json::to_string(meta)
            .expect("a RaftMeta serializes")
            .as_bytes(),
    );
    out
}

/// One of this module's records, decoded from the log without copying the entry's data.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Entry(Entry),
    HardState(HardState),
    /// Raft starts here, from this point (the state before is the single member's).
    Start(RaftMeta),
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes a payload written by [`encode_entry`] or [`encode_hard_state`].
pub fn decode(payload: Bytes) -> Result<Record, String> {
    match payload.first() {
        Some(&TAG_ENTRY) if payload.len() >= ENTRY_HEADER => {
            let mut e = Entry {
                term: u64_at(&payload, 1),
                index: u64_at(&payload, 9),
                ..Default::default()
            };
            e.set_entry_type(match payload[17] {
                0 => EntryType::EntryNormal,
                1 => EntryType::EntryConfChange,
                2 => EntryType::EntryConfChangeV2,
                t => return Err(format!("raft entry {}: unknown entry type {t}", e.index)),
            });
            e.data = payload.slice(ENTRY_HEADER..);
            Ok(Record::Entry(e))
        }
        Some(&TAG_HARD_STATE) if payload.len() == 25 => Ok(Record::HardState(HardState {
            term: u64_at(&payload, 1),
            vote: u64_at(&payload, 9),
            commit: u64_at(&payload, 17),
            ..Default::default()
        })),
        Some(&TAG_START) => serde_json::from_slice(&payload[1..])
            .map(Record::Start)
            .map_err(|e| format!("raft start record: {e}")),
        Some(t) => Err(format!(
            "log payload with tag {t} and {} bytes is not a raft record",
            payload.len()
        )),
        None => Err("empty log payload".into()),
    }
}

/// Where an entry's data begins inside its log payload (to point the entry at the mapping).
pub fn entry_data(payload: &Bytes) -> Bytes {
    payload.slice(ENTRY_HEADER..)
}

/// The data of a normal entry carrying a request: who proposed it (member id), its request id
/// there (to answer the waiting client on that member), then the request as
/// `kv::encode_write` makes it.
pub fn proposal(origin: u64, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&origin.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The inverse of [`proposal`]; None for data too short to be one.
pub fn parse_proposal(data: &Bytes) -> Option<(u64, u64, Bytes)> {
    if data.len() < 17 {
        return None;
    }
    Some((u64_at(data, 0), u64_at(data, 8), data.slice(16..)))
}

/// Raft's persistent state as raft-rs reads it: the entries (their data in the log's mapping
/// once persisted), the hard state and the configuration. The log holds the durable copy; this
/// is its in-memory index, rebuilt at start.
///
/// Only the newest entries are kept whole (`recent`); older ones, all applied, are kept as
/// their place in the log's mapping (12 bytes each instead of 104) and decoded from
/// there when a follower needs them. (With Raft snapshots and log GC, they will go.)
#[derive(Default)]
pub struct LogStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// Entries from `snapshot_index + 1`, as places in the log, then `recent` in full.
    old: std::collections::VecDeque<Place>,
    recent: std::collections::VecDeque<Entry>,
    /// The log record seq of each recent entry (0: not in the log yet).
    recent_seqs: std::collections::VecDeque<u64>,
    /// Index and term of the last entry before `old` (0 and 0: none ever).
    snapshot_index: u64,
    snapshot_term: u64,
    /// The log's segment mappings, by segment ordinal (to find and read old entries); empty
    /// once a segment is released.
    maps: Vec<Bytes>,
    /// The newest checkpoint this member can send as a Raft snapshot (leader) or installed.
    snapshot: Option<Snapshot>,
    /// Raft asked for a snapshot newer than the newest checkpoint (or one that knows the
    /// member it is for): the next checkpoint is due at once.
    wanted: std::cell::Cell<bool>,
}

/// What a checkpoint of a cluster member holds about Raft besides the state: the applied
/// index it was taken at, that entry's term, the configuration and the members then, and the
/// hard state durable when it began.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RaftMeta {
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// (term, vote, commit).
    pub hard_state: (u64, u64, u64),
    pub members: Vec<MemberMeta>,
}

/// A member as a checkpoint keeps it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemberMeta {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl RaftMeta {
    /// The hard state durable when the checkpoint began (or Raft started).
    pub fn raft_hard_state(&self) -> HardState {
        let (term, vote, commit) = self.hard_state;
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            ..Default::default()
        }
    }

    /// The Raft snapshot a leader sends for the checkpoint with record seq `seq` (its data
    /// names the checkpoint; the files follow on a connection of their own).
    pub fn snapshot(&self, seq: u64) -> Snapshot {
        let mut s = Snapshot::default();
        let m = s.mut_metadata();
        m.index = self.index;
        m.term = self.term;
        m.set_conf_state(self.conf_state());
        s.data = Bytes::from(seq.to_le_bytes().to_vec());
        s
    }
}

/// The checkpoint seq a snapshot's data names.
pub fn snapshot_seq(s: &Snapshot) -> Option<u64> {
    Some(u64::from_le_bytes(s.data.get(..8)?.try_into().ok()?))
}

/// Old entries decoded from the log's mapping (`ferrocd_raft_entries_read_from_log_total`):
/// followers catching up from far behind.
pub static ENTRIES_READ_FROM_LOG: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Where an old entry's data is: segment, offset and length in that segment's mapping.
#[derive(Clone, Copy, Debug)]
struct Place {
    seg: u32,
    off: u32,
    len: u32,
    /// The record's seq in the log.
    seq: u64,
}

/// The entries that start a new cluster, the same on every member (as etcd's `StartNode`):
/// one AddNode configuration change per member, in id order, in term 1, each carrying the
/// member's peer URLs (JSON) so that a member added later learns them from the log.
pub fn bootstrap_entries(members: &[(u64, Vec<String>)]) -> Vec<Entry> {
    let mut sorted: Vec<&(u64, Vec<String>)> = members.iter().collect();
    sorted.sort_by_key(|(id, _)| *id);
    sorted
        .iter()
        .enumerate()
        .map(|(i, (id, urls))| {
            let cc = ConfChange {
                change_type: ConfChangeType::AddNode,
                node_id: *id,
                context: Bytes::from(member_context(urls, false)),
                ..Default::default()
            };
            let mut e = Entry {
                term: 1,
                index: i as u64 + 1,
                data: Bytes::from(cc.write_to_bytes().expect("a conf change encodes")),
                ..Default::default()
            };
            e.set_entry_type(EntryType::EntryConfChange);
            e
        })
        .collect()
}

/// A configuration change's context: the member's peer URLs and whether it is a learner.
pub fn member_context(peer_urls: &[String], is_learner: bool) -> Vec<u8> {
    serde_json::json!({"peer_urls": peer_urls, "is_learner": is_learner})
        .to_string()
        .into_bytes()
}

/// The configuration change in a conf change entry, with the peer URLs of its context.
pub fn parse_conf_change(e: &Entry) -> Result<(ConfChange, Vec<String>), String> {
    let cc = ConfChange::parse_from_bytes(&e.data)
        .map_err(|err| format!("raft entry {}: undecodable conf change: {err}", e.index))?;
    let urls = serde_json::from_slice::<serde_json::Value>(&cc.context)
        .map(|v| strings(&v["peer_urls"]))
        .unwrap_or_default();
    Ok((cc, urls))
}

/// The strings of a JSON array (none for anything else).
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Applies a configuration change to a configuration (recovery does this without raft-rs; the
/// loop asks raft-rs, which gives the same for these simple changes).
pub fn change_conf(cs: &mut ConfState, cc: &ConfChange) {
    let id = cc.node_id;
    cs.voters.retain(|v| *v != id);
    cs.learners.retain(|v| *v != id);
    match cc.get_change_type() {
        ConfChangeType::AddNode => cs.voters.push(id),
        ConfChangeType::AddLearnerNode => cs.learners.push(id),
        ConfChangeType::RemoveNode => {}
    }
}

impl LogStorage {
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// A segment of the log, readable from now on (in the log's order).
    pub fn add_segment(&mut self, map: Bytes) {
        self.maps.push(map);
    }

    /// Starts from a checkpoint at `index` (term `term`, configuration `conf`): entries up
    /// to it are in the checkpoint, none are kept.
    pub fn start_from(&mut self, index: u64, term: u64, conf: ConfState, hs: HardState) {
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.conf_state = conf;
        self.hard_state = hs;
        self.old.clear();
        self.recent.clear();
        self.recent_seqs.clear();
    }

    /// Adds a record read back from the log at start (`seq` its place in the log). Entries a
    /// checkpoint holds are skipped.
    pub fn recover(&mut self, r: Record, seq: u64) -> Result<(), String> {
        match r {
            Record::HardState(hs) => self.hard_state = hs,
            Record::Start(meta) => {
                if self.snapshot_index != 0 || self.last() != 0 {
                    return Err("a raft start record after raft's own records".into());
                }
                self.start_from(
                    meta.index,
                    meta.term,
                    meta.conf_state(),
                    meta.raft_hard_state(),
                );
            }
            Record::Entry(e) if e.index <= self.snapshot_index => {}
            Record::Entry(e) => {
                let first = self.snapshot_index + 1;
                let next = self.last() + 1;
                if e.index < first || e.index > next {
                    return Err(format!(
                        "raft entry {} in the log does not follow entries {first}..{next}",
                        e.index
                    ));
                }
                self.append(std::slice::from_ref(&e));
                if let Some(s) = self.recent_seqs.back_mut() {
                    *s = seq;
                }
            }
        }
        Ok(())
    }

    /// Appends entries, replacing any from the first one's index on (a leader's entries
    /// overwrite an uncommitted suffix, which is always among the recent ones).
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        let start = self.recent_start();
        assert!(
            first.index >= start,
            "appending entry {} before the recent entries from {start}",
            first.index
        );
        let keep = (first.index - start) as usize;
        assert!(
            keep <= self.recent.len(),
            "appending entry {} leaves a gap after {}",
            first.index,
            self.last()
        );
        self.recent.truncate(keep);
        self.recent_seqs.truncate(keep);
        self.recent.extend(ents.iter().cloned());
        self.recent_seqs.extend(ents.iter().map(|_| 0));
    }

    /// Points a persisted entry's data at its copy in the log, record `seq` (if the entry is
    /// still there).
    pub fn set_data(&mut self, index: u64, term: u64, data: Bytes, seq: u64) {
        let start = self.recent_start();
        if index < start {
            return;
        }
        let at = (index - start) as usize;
        if let Some(e) = self.recent.get_mut(at) {
            if e.term == term {
                e.data = data;
                self.recent_seqs[at] = seq;
            }
        }
    }

    /// The log record seq of entry `index` (None: not kept, or not in the log yet).
    pub fn seq_of(&self, index: u64) -> Option<u64> {
        let start = self.recent_start();
        if index >= start {
            return self
                .recent_seqs
                .get((index - start) as usize)
                .copied()
                .filter(|s| *s != 0);
        }
        let i = index.checked_sub(self.snapshot_index + 1)? as usize;
        self.old.get(i).map(|p| p.seq)
    }

    /// Forgets the entries up to `index` (a checkpoint holds what they did; the log before
    /// them may go). Returns false if they are not all persisted and applied-old.
    pub fn compact(&mut self, index: u64) -> bool {
        if index <= self.snapshot_index {
            return true;
        }
        let Some(term) = self.term_of(index) else {
            return false;
        };
        while self.snapshot_index < index {
            if self.old.pop_front().is_none() {
                if self.recent.pop_front().is_none() {
                    return false;
                }
                self.recent_seqs.pop_front();
            }
            self.snapshot_index += 1;
        }
        self.snapshot_term = term;
        true
    }

    /// The snapshot to send to a follower that needs entries compacted away (the newest
    /// checkpoint), or installed from a leader.
    pub fn set_snapshot(&mut self, s: Snapshot) {
        self.snapshot = Some(s);
    }

    /// Takes a leader's snapshot in place of every entry (they are all older or in
    /// conflict); the hard state's commit moves to it.
    pub fn install(&mut self, s: Snapshot) {
        let m = s.get_metadata();
        let hs = HardState {
            term: self.hard_state.term.max(m.term),
            commit: m.index,
            ..self.hard_state.clone()
        };
        self.start_from(m.index, m.term, m.get_conf_state().clone(), hs);
        self.snapshot = Some(s);
    }

    /// Where a checkpoint of the state at `applied` goes, by replica.rs's rule: the first
    /// entry the log keeps (the first of the last `catchup` applied entries, or the first not
    /// applied) and the checkpoint's name, the record before the first one still needed (that
    /// entry's, the first unapplied one's, or `next_seq`, the next record written, whichever
    /// is earliest). `forced` (a snapshot is wanted, or Defragment): when the catch-up window
    /// leaves no record after the newest checkpoint, one entry more is let go of (the
    /// checkpoint holds it). None: nothing new to checkpoint.
    pub fn checkpoint_point(
        &self,
        applied: u64,
        catchup: u64,
        next_seq: u64,
        forced: bool,
    ) -> Option<(u64, u64)> {
        let (snap_index, _) = self.snapshot_point();
        if applied <= snap_index {
            return None;
        }
        let seq_from = |keep_from: u64| {
            [self.seq_of(keep_from), self.seq_of(applied + 1)]
                .into_iter()
                .flatten()
                .fold(next_seq, u64::min)
                - 1
        };
        let mut keep_from = applied.saturating_sub(catchup).max(snap_index) + 1;
        let mut seq = seq_from(keep_from);
        if seq <= self.snapshot_seq() && forced {
            keep_from = snap_index + 2;
            seq = seq_from(keep_from);
        }
        (seq > self.snapshot_seq()).then_some((keep_from, seq))
    }

    /// The record seq of the newest checkpoint (the snapshot's name; 0: none).
    pub fn snapshot_seq(&self) -> u64 {
        self.snapshot.as_ref().and_then(snapshot_seq).unwrap_or(0)
    }

    /// Whether Raft needs a newer snapshot than the newest checkpoint (cleared by asking).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.wanted.replace(false)
    }

    /// The same, without clearing it.
    pub fn snapshot_wanted(&self) -> bool {
        self.wanted.get()
    }

    /// Lets go of the mappings of released log segments (by ordinal).
    pub fn release_segments(&mut self, ordinals: &[usize]) {
        for &o in ordinals {
            if let Some(m) = self.maps.get_mut(o) {
                *m = Bytes::new();
            }
        }
    }

    /// The log's segment mappings by ordinal (empty for released ones).
    pub fn segment_maps(&self) -> &[Bytes] {
        &self.maps
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Index and term of the last entry a checkpoint holds (0, 0: none).
    pub fn snapshot_point(&self) -> (u64, u64) {
        (self.snapshot_index, self.snapshot_term)
    }

    /// Keeps whole only the entries from `index` on (the caller passes an applied index, less
    /// a margin); older ones become places in the log. Entries whose data is not in the log's
    /// mapping (not persisted yet) stay whole.
    pub fn trim_before(&mut self, index: u64) {
        while self.recent_start() < index {
            let Some(e) = self.recent.front() else { return };
            let seq = self.recent_seqs.front().copied().unwrap_or(0);
            let Some(place) = self.locate(&e.data, seq) else {
                return;
            };
            self.old.push_back(place);
            self.recent.pop_front();
            self.recent_seqs.pop_front();
        }
    }

    fn locate(&self, data: &Bytes, seq: u64) -> Option<Place> {
        if seq == 0 {
            return None;
        }
        let p = data.as_ptr() as usize;
        self.maps.iter().enumerate().rev().find_map(|(i, m)| {
            let base = m.as_ptr() as usize;
            (!m.is_empty() && base <= p && p + data.len() <= base + m.len()).then(|| Place {
                seg: i as u32,
                off: (p - base) as u32,
                len: data.len() as u32,
                seq,
            })
        })
    }

    /// How many entries are kept whole, and as places (for tests and logs).
    pub fn kept(&self) -> (usize, usize) {
        (self.recent.len(), self.old.len())
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn voters(&self) -> &[u64] {
        &self.conf_state.voters
    }

    pub fn learners(&self) -> &[u64] {
        &self.conf_state.learners
    }

    /// Entries in `[low, high)`, within what is stored (recovery applies the committed ones).
    pub fn slice(&self, low: u64, high: u64) -> Vec<Entry> {
        let low = low.max(self.snapshot_index + 1);
        let high = high.min(self.last() + 1);
        (low..high).filter_map(|i| self.get(i)).collect()
    }

    /// Entry `index`, whole (an old one decoded from the log).
    fn get(&self, index: u64) -> Option<Entry> {
        let start = self.recent_start();
        if index >= start {
            return self.recent.get((index - start) as usize).cloned();
        }
        ENTRIES_READ_FROM_LOG.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let i = index.checked_sub(self.snapshot_index + 1)? as usize;
        let p = *self.old.get(i)?;
        let map = self.maps.get(p.seg as usize)?;
        if map.len() < p.off as usize + p.len as usize {
            return None;
        }
        // The entry's record payload: its header right before the data.
        let at = (p.off as usize).checked_sub(ENTRY_HEADER)?;
        let payload = map.slice(at..p.off as usize + p.len as usize);
        match decode(payload) {
            Ok(Record::Entry(e)) if e.index == index => Some(e),
            _ => None,
        }
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        let start = self.recent_start();
        if index >= start {
            return self.recent.get((index - start) as usize).map(|e| e.term);
        }
        self.get(index).map(|e| e.term)
    }

    fn recent_start(&self) -> u64 {
        self.snapshot_index + 1 + self.old.len() as u64
    }

    fn last(&self) -> u64 {
        self.recent_start() + self.recent.len() as u64 - 1
    }
}

impl raft::Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        // Whole entries up to the size limit (at least one), as raft-rs's limit_size keeps.
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for i in low..high {
            let Some(e) = self.get(i) else {
                return Err(raft::Error::Store(StorageError::Unavailable));
            };
            size += protobuf::Message::compute_size(&e) as u64;
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        if idx < self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.term_of(idx) {
            Some(t) => Ok(t),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // The newest checkpoint, if it is recent enough and its configuration has the member
        // (raft-rs ignores a snapshot that does not: a member added after the checkpoint
        // waits for the next, which is taken at once).
        match &self.snapshot {
            Some(s)
                if s.get_metadata().index >= request_index
                    && (s.get_metadata().get_conf_state().voters.contains(&to)
                        || s.get_metadata().get_conf_state().learners.contains(&to)) =>
            {
                Ok(s.clone())
            }
            _ => {
                self.wanted.set(true);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from_static(data),
            ..Default::default()
        }
    }

    /// The length of the first record payload in `map` (an entry of one byte of data).
    fn spans_len(_map: &Bytes) -> usize {
        ENTRY_HEADER + 1
    }

    #[test]
    fn records_round_trip() {
        let e = entry(7, 3, b"hello");
        let Record::Entry(back) = decode(Bytes::from(encode_entry(&e))).unwrap() else {
            panic!("not an entry")
        };
        assert_eq!(back, e);
        let hs = HardState {
            term: 4,
            vote: 9,
            commit: 6,
            ..Default::default()
        };
        assert_eq!(
            decode(Bytes::from(encode_hard_state(&hs))).unwrap(),
            Record::HardState(hs)
        );
        assert!(decode(Bytes::from_static(&[1, 2, 3])).is_err());
        assert!(decode(Bytes::from_static(&[TAG_ENTRY, 2, 3])).is_err());
        let p = proposal(5, 6, b"\x01abc");
        assert_eq!(
            parse_proposal(&Bytes::from(p)),
            Some((5, 6, Bytes::from_static(b"\x01abc")))
        );
        assert_eq!(parse_proposal(&Bytes::from_static(&[0; 16])), None);
    }

    #[test]
    fn a_start_record_round_trips_and_starts_the_storage_there() {
        let meta = RaftMeta {
            index: 945,
            term: 1,
            voters: vec![7],
            learners: Vec::new(),
            hard_state: (1, 0, 945),
            members: vec![MemberMeta {
                id: 7,
                name: "alone".into(),
                peer_urls: vec!["http://127.0.0.1:2380".into()],
                client_urls: vec!["http://127.0.0.1:2379".into()],
                is_learner: false,
            }],
        };
        let payload = encode_start(&meta);
        assert!(is_raft_record(&payload));
        let back = decode(Bytes::from(payload.clone())).unwrap();
        assert_eq!(back, Record::Start(meta.clone()));
        let mut s = LogStorage::default();
        s.recover(back, 10).unwrap();
        assert_eq!(s.snapshot_point(), (945, 1));
        assert_eq!(s.voters(), &[7]);
        assert_eq!(s.hard_state().commit, 945);
        assert_eq!(s.first_index().unwrap(), 946);
        assert_eq!(s.last_index().unwrap(), 945);
        // Raft's entries follow from the next index (one leaving a gap is refused); a second
        // start is refused.
        assert!(s.recover(Record::Entry(entry(947, 2, b"")), 11).is_err());
        s.recover(Record::Entry(entry(946, 2, b"x")), 11).unwrap();
        assert_eq!(s.last_index().unwrap(), 946);
        assert!(s.recover(Record::Start(meta), 12).is_err());
        // A damaged start record is an error, not a panic.
        let mut bad = payload;
        bad.truncate(bad.len() / 2);
        assert!(decode(Bytes::from(bad)).is_err());
    }

    #[test]
    fn bootstrap_entries_are_the_same_whatever_the_order_and_rebuild_the_conf() {
        let a = bootstrap_entries(&[(9, vec!["http://b".into()]), (3, vec!["http://a".into()])]);
        let b = bootstrap_entries(&[(3, vec!["http://a".into()]), (9, vec!["http://b".into()])]);
        assert_eq!(a, b);
        let mut cs = ConfState::default();
        for e in &a {
            let (cc, urls) = parse_conf_change(e).unwrap();
            change_conf(&mut cs, &cc);
            assert_eq!(urls.len(), 1);
        }
        assert_eq!(cs.voters, [3, 9]);
        let rm = ConfChange {
            change_type: ConfChangeType::RemoveNode,
            node_id: 3,
            ..Default::default()
        };
        change_conf(&mut cs, &rm);
        assert_eq!(cs.voters, [9]);
    }

    #[test]
    fn storage_overwrites_a_suffix_and_answers_raft() {
        let mut s = LogStorage::default();
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        s.append(&[entry(1, 1, b""), entry(2, 1, b"a"), entry(3, 1, b"b")]);
        s.append(&[entry(3, 2, b"c"), entry(4, 2, b"d")]);
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(3).unwrap(), 2);
        assert!(s.term(5).is_err());
        let got = s
            .entries(2, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        let data: Vec<&[u8]> = got.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, [&b"a"[..], b"c", b"d"]);
        assert!(s
            .entries(2, 6, None, GetEntriesContext::empty(false))
            .is_err());
        // A size limit still returns the first entry.
        let one = s.entries(2, 5, 1, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(one.len(), 1);
        let mut r = LogStorage::default();
        assert!(r.recover(Record::Entry(entry(2, 1, b"")), 1).is_err());
        r.recover(Record::Entry(entry(1, 1, b"")), 1).unwrap();
        assert_eq!(r.slice(1, 10).len(), 1);
    }

    #[test]
    fn old_entries_are_kept_as_places_in_the_log_and_read_back() {
        // A "segment": three entry records laid out as the log lays them out.
        let mut seg = Vec::new();
        let mut spans = Vec::new();
        for (i, d) in [b"a".as_slice(), b"bb", b"ccc"].iter().enumerate() {
            let e = entry(i as u64 + 1, 1, d);
            let p = encode_entry(&e);
            spans.push((seg.len(), p.len()));
            seg.extend_from_slice(&p);
        }
        let map = Bytes::from(seg);
        let mut s = LogStorage::default();
        s.add_segment(map.clone());
        for (i, (at, len)) in spans.into_iter().enumerate() {
            let Record::Entry(e) = decode(map.slice(at..at + len)).unwrap() else {
                panic!("not an entry")
            };
            s.recover(Record::Entry(e), 10 + i as u64).unwrap();
        }
        // A fourth, not in the log (its data on the heap): never trimmed.
        s.append(&[entry(4, 2, b"dddd")]);
        s.trim_before(10);
        assert_eq!(s.kept(), (1, 3));
        let got = s
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        let data: Vec<&[u8]> = got.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, [&b"a"[..], b"bb", b"ccc", b"dddd"]);
        assert_eq!(s.term(2).unwrap(), 1);
        assert_eq!(s.term(4).unwrap(), 2);
        assert_eq!(s.last_index().unwrap(), 4);
        // Appending after trimmed entries still works; overwriting them is refused.
        s.append(&[entry(5, 2, b"e")]);
        assert_eq!(s.last_index().unwrap(), 5);
        // Record seqs follow the entries, trimmed or not; an entry not in the log has none.
        assert_eq!(
            (s.seq_of(1), s.seq_of(3), s.seq_of(4)),
            (Some(10), Some(12), None)
        );
        s.set_data(4, 2, Bytes::from_static(b"dddd"), 20);
        assert_eq!(s.seq_of(4), Some(20));
        // Compaction: entries up to 2 go; raft-rs hears "compacted", then a snapshot.
        assert!(s.compact(2));
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1);
        assert!(s.term(1).is_err());
        assert!(s
            .entries(2, 4, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(s.seq_of(3), Some(12));
        assert!(s.snapshot(0, 2).is_err(), "no checkpoint yet");
        assert!(s.take_snapshot_wanted(), "a checkpoint is wanted at once");
        let meta = RaftMeta {
            index: 2,
            term: 1,
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        s.set_snapshot(meta.snapshot(77));
        assert!(!s.take_snapshot_wanted());
        assert!(s.snapshot(2, 4).is_err(), "member 4 is not in it");
        assert!(s.take_snapshot_wanted() && !s.take_snapshot_wanted());
        let snap = s.snapshot(2, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 2);
        assert_eq!(snapshot_seq(&snap), Some(77));
        assert_eq!(s.snapshot_seq(), 77);
        assert_eq!(snap.get_metadata().get_conf_state().voters, [1, 2, 3]);
        assert!(s.snapshot(3, 2).is_err(), "a newer snapshot asked for");
        // Compacting past what is kept is refused.
        assert!(!s.compact(9));
        // A leader's snapshot replaces every entry.
        s.install(
            RaftMeta {
                index: 8,
                term: 3,
                voters: vec![1],
                ..Default::default()
            }
            .snapshot(5),
        );
        assert_eq!(s.first_index().unwrap(), 9);
        assert_eq!(s.last_index().unwrap(), 8);
        assert_eq!(s.hard_state().commit, 8);
        assert_eq!(s.voters(), [1]);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut t = LogStorage::default();
            t.add_segment(map.clone());
            let Record::Entry(e) = decode(map.slice(0..spans_len(&map))).unwrap() else {
                panic!()
            };
            t.recover(Record::Entry(e), 10).unwrap();
            t.trim_before(5);
            t.append(&[entry(1, 3, b"x")]);
        }));
        assert!(
            r.is_err(),
            "overwriting a trimmed entry must not pass silently"
        );
    }
}
