//! A seeded cluster simulation in one thread: 3 or 5 members, each raft-rs's `RawNode` over
//! ferrocd's Raft storage (`consensus::LogStorage`), applying committed entries with the
//! cluster's own apply code (`replica::apply_entry`, the MVCC store), recovered after a crash
//! with the cluster's own replay (`replica::replay`) from what its disk made durable. The
//! network drops, delays and reorders messages and is cut by partitions; a disk completes its
//! writes late, in order, and a crash loses what it had not completed. Members take
//! checkpoints and release the log before them (`LogStorage::compact`, the rules of
//! replica.rs's checkpoint), so followers behind get snapshots, installed as replica.rs
//! installs them. Clients put (some inside txns) and read (linearizable reads through
//! ReadIndex) on a few keys; the history is checked with `linearizability::check`, and at the
//! end every member must hold the same state. During the faults, a member is added as a
//! learner (it catches up from entries or a snapshot), promoted, and then a voter, the leader
//! as likely as any, is removed: configuration changes proposed through the leader, applied
//! by every member (raft-rs's `apply_conf_change`, the storage's configuration, which
//! checkpoints and snapshots carry), replayed after crashes by `replica::replay`. Each change
//! passes replica.rs's own admission: etcd's strict reconfiguration checks
//! (`Members::still_allowed`, on the simulated links) when asked and again when proposed, and
//! its queue of changes held behind the one Raft has (`HeldConfs`); members publish their
//! names through the log as replica.rs's do, and a change is asked of a member drawn at
//! random: a follower logs it, and the leader of that term carries it out or logs a refusal
//! (`Members::carry_out`). Then three new voters are asked at once, their
//! processes started later: each new voter applied must leave the started voters a majority.
//! A watcher on each member (resuming at its last
//! revision + 1 after the member's crashes) must have seen exactly the writes of the
//! committed entries (`watch_check`: ordered, unique, atomic, reliable, bookmarkable).
//! Clients hold leases: they grant one and renew it through members drawn at random (now and
//! then late, near its deadline), logged as replica.rs logs them; the leader, on the
//! simulation's clock (`KvState::set_clock`), checks deadlines and logs expiries as replica.rs
//! does. No lease may be revoked sooner than its TTL after a grant or keepalive acknowledged
//! with that TTL was sent, and once the clients stop, every lease must expire on every member.
//!
//! The loop is the simulation's own and follows replica.rs's steps (messages of a Ready out at
//! once, committed entries applied, entries and hard state handed to the disk, the messages
//! that wait for durability sent when the disk completes): replica.rs's loop itself is bound
//! to glommio's executor, timers and sockets. Everything random comes from one seed, raft-rs's
//! election timeouts included (drawn again from the seed whenever a member's role or term
//! changes), and raft-rs's messages are sorted before the network draws their fates, so a
//! seed replays exactly. `FERROCD_SIM_SEED=n cargo test --lib sim` replays seed n.

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{Entry, Message};
use raft::{RawNode, StateRole};

use crate::consensus::{self, LogStorage, Record};
use crate::kv::{self, KvState, Request, Response};
use crate::linearizability::{self, Op, OpKind};
use crate::proto::etcdserverpb as pb;
use crate::server::replica::{self, Applied, ConfTurn, HeldConf, HeldConfs, Members};
use crate::watch_check::{self, Acked, Ev, Resp};

/// xorshift64*: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// What the simulation injects, and a deliberate bug to show the checks catch one.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub members: u64,
    /// Steps with faults and clients; then the network heals, crashed members restart, and the
    /// clients read every key through every member.
    pub steps: u64,
    pub drop_per_mille: u64,
    pub crash_per_mille: u64,
    pub partition_per_mille: u64,
    /// Each member takes a checkpoint (and releases the log before it) with this chance per
    /// step; a follower too far behind then needs a snapshot.
    pub checkpoint_per_mille: u64,
    /// The bug: a member answers a linearizable read from its own state at once, without
    /// waiting for the read index (a follower or deposed leader returns stale values).
    pub stale_reads: bool,
    /// Another: a member that installs a snapshot keeps its old state.
    pub stale_install: bool,
    /// Another: a watch pull that sometimes claims one revision more than it delivered.
    pub lossy_watch: bool,
    /// A member is added as a learner, promoted, then a voter (any, the leader included) is
    /// removed, each through the leader as a configuration change, while the faults go on.
    pub membership: bool,
    /// The members' logs begin with a start record at index `START_INDEX` (as a single member
    /// that grew: Raft's log starts there, the entries before are not in it) instead of the
    /// bootstrap entries from index 1.
    pub start_record: bool,
    /// Clients keep leases alive through members drawn at random (`LeaseClient`); the leader
    /// checks deadlines and logs the expiry of the lapsed ones, as replica.rs's loop.
    pub leases: bool,
    /// The bug: the leader renews a lease in memory and answers at once (an acknowledged
    /// renewal a new leader never hears of), as ferrocd did before keepalives were logged.
    pub unlogged_keepalives: bool,
    /// Another: the leader's expiry does not name its applied index, so it also revokes a
    /// lease renewed by a keepalive logged after the leader decided.
    pub blind_expiry: bool,
    /// After the membership plan, three new voters are asked at once (their processes start
    /// later, as an operator's would): the strict reconfiguration checks must keep the
    /// started voters a majority (`Members::still_allowed`, checked when asked and again as
    /// each is proposed).
    pub voters_at_once: bool,
    /// The bug: configuration changes checked when asked only, not again when proposed (as
    /// replica.rs once did: three voters asked at once were all let in).
    pub checked_when_asked_only: bool,
}

/// Where Raft starts with `Faults::start_record`.
const START_INDEX: u64 = 10;

impl Faults {
    pub fn standard(members: u64) -> Faults {
        Faults {
            members,
            steps: 4_000,
            drop_per_mille: 50,
            crash_per_mille: 2,
            partition_per_mille: 2,
            checkpoint_per_mille: 3,
            stale_reads: false,
            stale_install: false,
            lossy_watch: false,
            membership: true,
            start_record: false,
            leases: true,
            unlogged_keepalives: false,
            blind_expiry: false,
            voters_at_once: true,
            checked_when_asked_only: false,
        }
    }
}

const TICK_STEPS: u64 = 10;
const ELECTION_TICKS: usize = 10;
/// Steps a client waits for an answer before taking the outcome as unknown.
const OP_TIMEOUT_STEPS: u64 = 1_500;
const KEYS: u64 = 4;
/// Writes a disk holds before the member stops handing it more (as the appender's queue).
const DISK_QUEUE: usize = 8;
/// Entries kept before a checkpoint (`--experimental-snapshot-catchup-entries`).
const CATCHUP_ENTRIES: u64 = 20;
/// Simulated milliseconds per step: an election timeout is 500 ms, the shortest lease TTL
/// (2 s) 400 steps.
const STEP_MS: u64 = 5;
/// Steps a link must have been up for a configuration change to count it (replica.rs: 5 s).
const HEALTHY_AFTER_STEPS: u64 = 200;
/// Lease clients in a run.
const LEASE_CLIENTS: usize = 3;
/// Steps a lease client waits for an answer before asking again.
const LEASE_ASK_STEPS: u64 = 100;
/// Request ids of lease clients and of the leader's own proposals start here (clients' puts
/// and reads take the ids below).
const LEASE_REQ_BASE: u64 = 1 << 40;

/// Records made durable by one completed write, and the messages waiting for them; a
/// snapshot to install once they are durable.
struct Write {
    records: Vec<Record>,
    number: u64,
    persisted: Vec<Message>,
    install: Option<Checkpoint>,
}

/// A checkpoint as the simulation keeps it: Raft's state at an applied index, and the
/// entries whose effects it holds (applied again to rebuild the state, where ferrocd reads
/// its checkpoint file back); `seq` is the last log record it covers, as its name.
#[derive(Clone)]
struct Checkpoint {
    meta: consensus::RaftMeta,
    entries: Vec<Entry>,
    seq: u64,
}

/// A running member: what lives in memory (a crash loses it).
struct Live {
    raw: RawNode<LogStorage>,
    state: KvState,
    members: Members,
    applied: u64,
    /// Writes handed to the disk, not completed yet.
    disk_queue: VecDeque<Write>,
    /// Clients waiting: request id -> op; read rounds: context -> ops; reads whose index is
    /// known: (index, ops).
    pending: BTreeMap<u64, usize>,
    rounds: BTreeMap<u64, Vec<usize>>,
    ready_reads: Vec<(u64, Vec<usize>)>,
    role: (u64, StateRole, u64),
    /// Every entry applied, from index 1 (what a checkpoint holds).
    history: Vec<Entry>,
    /// Snapshots received, by (index, term), until Raft installs one.
    staged: BTreeMap<(u64, u64), Checkpoint>,
    /// Lease requests waiting to be applied: request id -> lease client.
    lease_pending: BTreeMap<u64, usize>,
    /// Configuration changes asked of this member as leader, held behind the one Raft has.
    held_confs: HeldConfs<()>,
    /// Followers' requests applied while this member led their term, to carry out.
    asked: Vec<replica::Asked>,
}

struct Member {
    id: u64,
    /// The durable records, in order: record `k` has seq `base + k + 1` (the log before a
    /// checkpoint is released).
    disk: Vec<Record>,
    base: u64,
    checkpoint: Option<Checkpoint>,
    live: Option<Live>,
    /// A client watching every key through this member since revision 1; it keeps its place
    /// across the member's crashes and resumes at its last revision + 1.
    watcher: Watcher,
    /// The step it last started at (its links are up since then at the earliest).
    started_at: u64,
    /// Its process was started once (a new voter's starts after its MemberAdd); until then
    /// it is not restarted either.
    launched: bool,
}

impl Member {
    fn new(id: u64, disk: Vec<Record>) -> Member {
        Member {
            id,
            disk,
            base: 0,
            checkpoint: None,
            live: None,
            watcher: Watcher {
                next: 1,
                resps: Vec::new(),
            },
            started_at: 0,
            launched: true,
        }
    }
}

/// The peer URLs a simulated member has (configuration changes carry them).
fn urls(id: u64) -> Vec<String> {
    vec![format!("http://sim-{id}")]
}

/// A client holding a lease (`Faults::leases`): it grants one, renews it every third of its
/// TTL through a member drawn at random (as a client that reconnects), and stops with the
/// faults; a lease found gone (a keepalive answered with TTL 0) is granted again under a new
/// ID. What the members acknowledged is in `Sim::lease_acks`.
struct LeaseClient {
    id: i64,
    ttl: i64,
    granted: bool,
    /// The request waiting for its answer: (request id, step sent, a keepalive).
    asked: Option<(u64, u64, bool)>,
    /// The step of the next request.
    next: u64,
}

#[derive(Default)]
struct Watcher {
    next: i64,
    resps: Vec<Resp>,
}

/// One client operation of the history, while it runs.
struct Running {
    op: Op,
    started: u64,
}

/// Where the membership changes of a run are (`Faults::membership`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    /// The learner is added at this step.
    Wait(u64),
    /// (member, since step): asked until the leader's configuration has it.
    Adding(u64, u64),
    Promoting(u64, u64),
    Removing(u64, u64),
    /// Three new voters are asked at this step (`Faults::voters_at_once`).
    Voters(u64),
    /// (the first of the three, step asked): asked again until all are voters; each starts
    /// `VOTER_STARTS_AFTER` steps after it was asked.
    Growing(u64, u64),
    Done,
}

/// Steps between asking for a new voter and starting its process.
const VOTER_STARTS_AFTER: u64 = 200;

pub struct Sim {
    rng: Rng,
    plan: Plan,
    /// Members removed from the cluster (they stop, as ferrocd's do, and are not checked).
    removed: Vec<u64>,
    faults: Faults,
    now: u64,
    members: Vec<Member>,
    /// Messages in flight: (delivery step, order sent) -> message, with the checkpoint a
    /// snapshot message carries (ferrocd sends its files on a connection of their own).
    net: BTreeMap<(u64, u64), (Message, Option<Checkpoint>)>,
    sent: u64,
    /// Members cut off from every other, and the step that last changed.
    isolated: Vec<u64>,
    cut_changed: u64,
    ops: Vec<Running>,
    /// Ops finished or abandoned (index into `ops`) and left out of the history.
    dropped: Vec<bool>,
    /// What happened, for a failing seed's report.
    pub events: Vec<String>,
    /// Terms in which some member saw a leader (elections that succeeded).
    terms_led: std::collections::BTreeSet<u64>,
    /// Step 0's instant: a step is `STEP_MS` of the members' lease clocks.
    base: std::time::Instant,
    lease_clients: Vec<LeaseClient>,
    next_req: u64,
    /// Grants and keepalives acknowledged with a TTL: lease -> (step sent, TTL in seconds).
    lease_acks: BTreeMap<i64, Vec<(u64, i64)>>,
    /// Expiries the leader logged: request id -> the step it decided at.
    expiry_decided: BTreeMap<u64, u64>,
    /// Leases the committed expiries revoked (counted at the end).
    revoked: usize,
    /// How many leases each expiry entry revoked, by index, on the first member that applied
    /// it (with that member).
    /// The first check that failed while the run went on (reported at its end).
    expiry_outcomes: BTreeMap<u64, (u64, usize)>,
    broken: Option<String>,
}

fn config(id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: 1,
        applied,
        max_size_per_msg: 64 << 10,
        max_inflight_msgs: 16,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl Sim {
    pub fn new(seed: u64, faults: Faults) -> Sim {
        let ids: Vec<u64> = (1..=faults.members).collect();
        let peers: Vec<(u64, Vec<String>)> = ids.iter().map(|&id| (id, urls(id))).collect();
        let disk: Vec<Record> = if faults.start_record {
            vec![Record::Start(consensus::RaftMeta {
                index: START_INDEX,
                term: 1,
                voters: ids.clone(),
                learners: Vec::new(),
                hard_state: (1, 0, START_INDEX),
                members: ids
                    .iter()
                    .map(|&id| consensus::MemberMeta {
                        id,
                        name: format!("m{id}"),
                        peer_urls: urls(id),
                        client_urls: Vec::new(),
                        is_learner: false,
                    })
                    .collect(),
            })]
        } else {
            let entries = consensus::bootstrap_entries(&peers);
            let mut disk: Vec<Record> = entries.into_iter().map(Record::Entry).collect();
            disk.push(Record::HardState(raft::eraftpb::HardState {
                term: 1,
                commit: faults.members,
                ..Default::default()
            }));
            disk
        };
        let mut rng = Rng::new(seed);
        let plan = if faults.membership {
            Plan::Wait(faults.steps / 8 + rng.below(faults.steps / 4))
        } else {
            Plan::Done
        };
        let mut sim = Sim {
            rng,
            plan,
            removed: Vec::new(),
            faults,
            now: 0,
            members: ids
                .iter()
                .map(|&id| Member::new(id, disk.clone()))
                .collect(),
            net: BTreeMap::new(),
            sent: 0,
            isolated: Vec::new(),
            cut_changed: 0,
            ops: Vec::new(),
            dropped: Vec::new(),
            events: Vec::new(),
            terms_led: Default::default(),
            base: std::time::Instant::now(),
            lease_clients: Vec::new(),
            next_req: LEASE_REQ_BASE,
            lease_acks: BTreeMap::new(),
            expiry_decided: BTreeMap::new(),
            revoked: 0,
            expiry_outcomes: BTreeMap::new(),
            broken: None,
        };
        if faults.leases {
            for c in 0..LEASE_CLIENTS {
                let ttl = 2 + sim.rng.below(2) as i64;
                let next = sim.rng.below(faults.steps / 4);
                sim.lease_clients.push(LeaseClient {
                    id: 1_000 * (c as i64 + 1),
                    ttl,
                    granted: false,
                    asked: None,
                    next,
                });
            }
        }
        for i in 0..sim.members.len() {
            sim.start(i);
        }
        sim
    }

    /// Starts member `i` from its disk, as a restart does.
    fn start(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.started_at = self.now;
        let mut storage = LogStorage::default();
        let (mut state, mut members) = fresh(m.id, self.base, self.now);
        let mut conf = Default::default();
        let mut history = Vec::new();
        if let Some(c) = &m.checkpoint {
            let (term, vote, commit) = c.meta.hard_state;
            let hs = raft::eraftpb::HardState {
                term,
                vote,
                commit,
                ..Default::default()
            };
            storage.start_from(c.meta.index, c.meta.term, c.meta.conf_state(), hs);
            storage.set_snapshot(c.meta.snapshot(c.seq));
            rebuild(&mut state, &mut members, &c.entries);
            replica::adopt_members(&c.meta, &mut members, &mut state);
            conf = c.meta.conf_state();
            history = c.entries.clone();
        } else if let Some(Record::Start(meta)) = m.disk.first() {
            // As replica.rs's recovery: the members and configuration from the start record;
            // the entries before it (a single member's records in ferrocd) stand in as empty.
            conf = replica::adopt_members(meta, &mut members, &mut state);
            history = (1..=meta.index)
                .map(|index| Entry {
                    index,
                    term: meta.term,
                    ..Default::default()
                })
                .collect();
        }
        for (k, r) in m.disk.iter().enumerate() {
            storage
                .recover(r.clone(), m.base + k as u64 + 1)
                .expect("the simulated disk holds a valid log");
        }
        let snap = storage.snapshot_point().0;
        let commit = replica::replay(&mut state, &mut members, &mut storage, conf)
            .expect("the simulated log replays");
        history.extend(storage.slice(snap + 1, commit + 1));
        assert_eq!(history.len() as u64, commit, "m{}: entries applied", m.id);
        let raw = RawNode::new(&config(m.id, commit), storage, &logger()).expect("raft starts");
        m.live = Some(Live {
            raw,
            state,
            members,
            applied: commit,
            disk_queue: VecDeque::new(),
            pending: BTreeMap::new(),
            rounds: BTreeMap::new(),
            ready_reads: Vec::new(),
            role: (0, StateRole::Follower, 0),
            history,
            staged: BTreeMap::new(),
            lease_pending: BTreeMap::new(),
            held_confs: HeldConfs::new(),
            asked: Vec::new(),
        });
        let t = self.now;
        self.events
            .push(format!("{t}: m{} starts at commit {commit}", m.id));
        self.draw_timeouts();
    }

    /// Member `i` crashes: what it had not made durable is lost; its clients hear nothing.
    fn crash(&mut self, i: usize) {
        if let Some(lost) = self.halt(i) {
            let t = self.now;
            self.events.push(format!(
                "{t}: m{} crashes, {lost} writes not durable lost",
                self.members[i].id,
            ));
        }
    }

    /// Member `i` stops (crashed, or removed); returns how many writes its disk had not
    /// completed, if it was running.
    fn halt(&mut self, i: usize) -> Option<usize> {
        let live = self.members[i].live.take()?;
        let lost: Vec<usize> = live
            .pending
            .values()
            .copied()
            .chain(live.rounds.values().flatten().copied())
            .chain(live.ready_reads.iter().flat_map(|(_, o)| o.iter().copied()))
            .collect();
        for o in lost {
            self.abandon(o);
        }
        Some(live.disk_queue.len())
    }

    /// Gives up on an op: a put's outcome becomes unknown, a read leaves the history.
    fn abandon(&mut self, o: usize) {
        match self.ops[o].op.kind {
            OpKind::Put(_) => self.ops[o].op.ret = None,
            OpKind::Get(_) => self.dropped[o] = true,
        }
    }

    fn finish(&mut self, o: usize, kind: Option<OpKind>) {
        if self.dropped[o] || self.ops[o].op.ret.is_some() {
            return;
        }
        match kind {
            Some(k) => {
                self.ops[o].op.kind = k;
                self.ops[o].op.ret = Some(self.now);
            }
            None => self.abandon(o),
        }
        // An op finished is no longer running.
        self.ops[o].started = u64::MAX;
    }

    /// raft-rs draws election timeouts from its own generator: draw them from the seed
    /// whenever a member's term, role or leader changed.
    fn draw_timeouts(&mut self) {
        for m in &mut self.members {
            let Some(live) = &mut m.live else { continue };
            let r = &live.raw.raft;
            let role = (r.term, r.state, r.leader_id);
            if role != live.role {
                live.role = role;
                if r.leader_id != 0 && self.terms_led.insert(r.term) {
                    self.events.push(format!(
                        "{}: m{} leads term {}",
                        self.now, r.leader_id, r.term
                    ));
                }
                let t = ELECTION_TICKS + self.rng.below(ELECTION_TICKS as u64) as usize;
                live.raw.raft.set_randomized_election_timeout(t);
            }
        }
    }

    fn cut(&self, a: u64, b: u64) -> bool {
        self.isolated.contains(&a) || self.isolated.contains(&b)
    }

    fn send(&mut self, mut msgs: Vec<Message>) {
        msgs.sort_by_key(|m| (m.to, m.get_msg_type() as i32, m.index, m.log_term, m.commit));
        for m in msgs {
            // A snapshot names the sender's newest checkpoint, which travels with it.
            let snapshot = m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
            let carried = if snapshot {
                let seq = consensus::snapshot_seq(m.get_snapshot());
                self.index_of(m.from).and_then(|from| {
                    self.members[from]
                        .checkpoint
                        .clone()
                        .filter(|c| Some(c.seq) == seq)
                })
            } else {
                None
            };
            let healing = self.now >= self.faults.steps;
            if (snapshot && carried.is_none())
                || (!healing && self.rng.chance(self.faults.drop_per_mille))
            {
                if snapshot {
                    self.snapshot_sent(m.from, m.to, false);
                }
                continue;
            }
            let delay = 1 + self.rng.below(if healing { 3 } else { 12 });
            self.sent += 1;
            self.net.insert((self.now + delay, self.sent), (m, carried));
        }
    }

    /// The sender of a snapshot hears whether it arrived (as peer.rs reports it).
    fn snapshot_sent(&mut self, from: u64, to: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        if let Some(i) = self.index_of(from) {
            if let Some(live) = &mut self.members[i].live {
                live.raw.report_snapshot(to, status);
            }
        }
    }

    /// Member `i` checkpoints its state at its applied index and releases the log before the
    /// first record it still needs, as replica.rs's checkpoint does.
    /// `forced`: Raft wants a snapshot newer than the newest checkpoint (replica.rs then lets
    /// go of one entry more if the catch-up window would leave it no record of its own).
    fn checkpoint(&mut self, i: usize, forced: bool) {
        let m = &mut self.members[i];
        let Some(live) = &mut m.live else { return };
        let store = live.raw.store();
        let applied = live.applied;
        let next = m.base + m.disk.len() as u64 + 1;
        // replica.rs's rule; the simulated disk also needs the name within what it holds.
        let Some((keep_from, seq)) = store.checkpoint_point(applied, CATCHUP_ENTRIES, next, forced)
        else {
            return;
        };
        if seq < m.base {
            return;
        }
        let hs = m
            .disk
            .iter()
            .rev()
            .find_map(|r| match r {
                Record::HardState(h) => Some((h.term, h.vote, h.commit)),
                _ => None,
            })
            .or(m.checkpoint.as_ref().map(|c| c.meta.hard_state))
            .unwrap_or_default();
        let cs = store.conf_state();
        let meta = consensus::RaftMeta {
            index: applied,
            term: raft::Storage::term(store, applied).expect("an applied entry is kept"),
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            hard_state: hs,
            // As replica.rs's checkpoints: the members (a log that begins with a start record
            // has them there, not in entries a rebuild would replay).
            members: live.members.to_meta(),
        };
        let c = Checkpoint {
            entries: live.history[..applied as usize].to_vec(),
            meta,
            seq,
        };
        let store = live.raw.mut_store();
        assert!(
            store.compact(keep_from - 1),
            "compaction of applied entries"
        );
        store.set_snapshot(c.meta.snapshot(seq));
        m.disk.drain(..(seq - m.base) as usize);
        m.base = seq;
        m.checkpoint = Some(c);
        let (t, id) = (self.now, m.id);
        self.events.push(format!(
            "{t}: m{id} checkpoints at {applied}, log kept from record {}",
            seq + 1
        ));
    }

    /// The live member that leads (the highest term, if two think so).
    fn leader(&self) -> Option<usize> {
        (0..self.members.len())
            .filter(|&i| {
                self.members[i]
                    .live
                    .as_ref()
                    .is_some_and(|l| l.raw.raft.state == StateRole::Leader)
            })
            .max_by_key(|&i| self.members[i].live.as_ref().map_or(0, |l| l.raw.raft.term))
    }

    /// Drives the membership changes of the run: each is proposed through the leader (again
    /// every so often: a proposal is dropped without a leader or while another change is
    /// pending) until the leader's applied configuration shows it.
    fn membership(&mut self) {
        // The new voters' processes start when their time comes, leader or not.
        if let Plan::Growing(first, since) = self.plan {
            if self.now >= since + VOTER_STARTS_AFTER {
                for id in first..first + 3 {
                    let Some(i) = self.index_of(id) else { continue };
                    if !self.members[i].launched {
                        self.members[i].launched = true;
                        self.start(i);
                    }
                }
            }
        }
        let Some(l) = self.leader() else { return };
        let conf = {
            let live = self.members[l].live.as_ref().expect("a leader is live");
            live.raw.store().conf_state().clone()
        };
        let retry = |since: u64, now: u64| (now - since) % 50 == 0;
        let (t, next) = (self.now, self.plan);
        let change = match next {
            Plan::Wait(at) if t >= at => {
                let id = self.members.iter().map(|m| m.id).max().unwrap_or(0) + 1;
                self.members.push(Member::new(id, Vec::new()));
                let i = self.members.len() - 1;
                self.start(i);
                self.events
                    .push(format!("{t}: m{id} is added as a learner"));
                self.plan = Plan::Adding(id, t);
                Some((raft::eraftpb::ConfChangeType::AddLearnerNode, id))
            }
            Plan::Adding(id, since) => {
                if conf.learners.contains(&id) {
                    self.events.push(format!("{t}: m{id} joins as a learner"));
                    self.plan = Plan::Promoting(id, t);
                    None
                } else {
                    retry(since, t).then_some((raft::eraftpb::ConfChangeType::AddLearnerNode, id))
                }
            }
            Plan::Promoting(id, since) => {
                if conf.voters.contains(&id) {
                    // Any voter may go, the leader included.
                    let voters = conf.voters.clone();
                    let victim = voters[self.rng.below(voters.len() as u64) as usize];
                    self.events
                        .push(format!("{t}: m{id} is promoted; m{victim} to go"));
                    self.plan = Plan::Removing(victim, t);
                    None
                } else {
                    // Refused (`Members::promotable`) until the learner has caught up.
                    retry(since, t).then_some((raft::eraftpb::ConfChangeType::AddNode, id))
                }
            }
            Plan::Removing(id, since) => {
                if !conf.voters.contains(&id) {
                    self.events.push(format!("{t}: m{id} removed"));
                    self.removed.push(id);
                    if let Some(i) = self.index_of(id) {
                        self.halt(i);
                    }
                    self.plan = if self.faults.voters_at_once {
                        Plan::Voters(t + 100)
                    } else {
                        Plan::Done
                    };
                    None
                } else {
                    retry(since, t).then_some((raft::eraftpb::ConfChangeType::RemoveNode, id))
                }
            }
            Plan::Voters(at) if t >= at => {
                let first = self.members.iter().map(|m| m.id).max().unwrap_or(0) + 1;
                for id in first..first + 3 {
                    let mut m = Member::new(id, Vec::new());
                    m.launched = false;
                    self.members.push(m);
                }
                self.events.push(format!(
                    "{t}: m{first}, m{}, m{} asked as voters at once",
                    first + 1,
                    first + 2
                ));
                self.plan = Plan::Growing(first, t);
                let ask: Vec<u64> = (first..first + 3).collect();
                for id in ask {
                    self.ask_any(l, raft::eraftpb::ConfChangeType::AddNode, id);
                }
                None
            }
            Plan::Growing(first, since) => {
                let missing: Vec<u64> = (first..first + 3)
                    .filter(|id| !conf.voters.contains(id))
                    .collect();
                if missing.is_empty() {
                    self.events.push(format!(
                        "{t}: m{first}, m{}, m{} join as voters",
                        first + 1,
                        first + 2
                    ));
                    self.plan = Plan::Done;
                } else if retry(since, t) && t > since {
                    for id in missing {
                        self.ask_any(l, raft::eraftpb::ConfChangeType::AddNode, id);
                    }
                }
                None
            }
            Plan::Wait(_) | Plan::Voters(_) | Plan::Done => None,
        };
        if let Some((kind, id)) = change {
            self.ask_any(l, kind, id);
        }
    }

    /// A client's MemberAdd, MemberPromote or MemberRemove through a member drawn at random:
    /// the leader (`l`) holds it behind a pending change once its strict checks pass; a
    /// follower logs it for the leader, as replica.rs's do: a promotion unchecked (only the
    /// leader knows how far the learner is), another change once its own checks pass.
    fn ask_any(&mut self, l: usize, kind: raft::eraftpb::ConfChangeType, id: u64) {
        use raft::eraftpb::ConfChangeType;
        let Some(a) = self.any_up() else { return };
        let t = self.now;
        let me = self.members[a].id;
        let learner = a != l && {
            let live = self.members[a].live.as_ref().expect("up");
            live.raw.store().conf_state().learners.contains(&id)
        };
        let payload = if kind == ConfChangeType::AddNode && learner {
            replica::promote_request(id)
        } else {
            let cc = raft::eraftpb::ConfChange {
                change_type: kind,
                node_id: id,
                context: consensus::member_context(
                    &urls(id),
                    kind == ConfChangeType::AddLearnerNode,
                )
                .into(),
                ..Default::default()
            };
            if let Err(e) = self.reconfig_allowed(a, &cc) {
                let by = if a == l {
                    String::new()
                } else {
                    format!(" by m{me}")
                };
                self.events
                    .push(format!("{t}: m{id} {kind:?} refused{by}: {e}"));
                return;
            }
            if a == l {
                return self.hold(l, Vec::new(), cc);
            }
            let answers = if kind == ConfChangeType::RemoveNode {
                replica::KIND_REMOVE
            } else {
                replica::KIND_ADD
            };
            replica::conf_request(answers, &cc)
        };
        let req = self.next_req;
        self.next_req += 1;
        let live = self.members[a].live.as_mut().expect("up");
        if live
            .raw
            .propose(vec![], consensus::proposal(me, req, &payload))
            .is_ok()
        {
            self.events
                .push(format!("{t}: m{id} {kind:?} asked of m{me}, a follower"));
        }
    }

    /// Member `i` carries out the followers' requests it applied as the leader of the term
    /// they were logged in (`Members::carry_out`, as replica.rs's loop after each turn).
    fn carry_out_asked(&mut self, i: usize) {
        let Some(live) = self.members[i].live.as_mut() else {
            return;
        };
        let asked = std::mem::take(&mut live.asked);
        let leading = live.raw.raft.state == StateRole::Leader;
        for a in asked {
            let t = self.now;
            match self.reconfig(i, |m, r| m.carry_out(a, leading, r)) {
                replica::Carried::Propose(ctx, cc) => self.hold(i, ctx, cc),
                replica::Carried::Refuse(origin, id, e) => {
                    self.events
                        .push(format!("{t}: m{origin}'s request refused: {e}"));
                    let live = self.members[i].live.as_mut().expect("live");
                    let _ = live.raw.propose(vec![], replica::refusal(origin, id, &e));
                }
            }
        }
    }

    /// Leader `l` proposes a configuration change now, or holds it while Raft has one not
    /// applied yet (`HeldConfs`, as replica.rs's leader).
    fn hold(&mut self, l: usize, ctx: Vec<u8>, cc: raft::eraftpb::ConfChange) {
        let held = HeldConf {
            ctx,
            cc,
            client: (),
            since: clock(self.base, self.now),
        };
        let live = self.members[l].live.as_mut().expect("a leader is live");
        let pending = live.raw.raft.has_pending_conf();
        if let Some(turn) = live.held_confs.ask(held, pending) {
            self.conf_turn(l, turn);
        }
    }

    /// Member `i` publishes its name through the log until it sees it applied, as replica.rs's
    /// members do (etcd's "started" member).
    fn publish(&mut self, i: usize) {
        if self.now % 100 != 0 {
            return;
        }
        let m = &mut self.members[i];
        let Some(live) = &mut m.live else { return };
        if live.members.published() || live.raw.raft.leader_id == 0 {
            return;
        }
        let payload = replica::publish_payload(&identity(m.id));
        let data = consensus::proposal(m.id, replica::PUBLISH_ID, &payload);
        let _ = live.raw.propose(vec![], data);
    }

    /// Member `i` carries out the configuration changes it holds that Raft takes now (or
    /// gives them up), as replica.rs's loop does after each turn.
    fn release_held_confs(&mut self, i: usize) {
        let now = clock(self.base, self.now);
        let timeout = std::time::Duration::from_millis(OP_TIMEOUT_STEPS * STEP_MS);
        loop {
            let Some(live) = self.members[i].live.as_mut() else {
                return;
            };
            let leading = live.raw.raft.state == StateRole::Leader;
            let pending = live.raw.raft.has_pending_conf();
            let Some(turn) = live.held_confs.next(leading, pending, now, timeout) else {
                return;
            };
            self.conf_turn(i, turn);
        }
    }

    /// A held configuration change's turn on member `l`: replica.rs's leader checks it as
    /// etcd's strict reconfiguration does (against its member list, its links and Raft's
    /// progress) and proposes it, or gives it up.
    fn conf_turn(&mut self, l: usize, turn: ConfTurn<()>) {
        let t = self.now;
        let (h, refused) = match turn {
            ConfTurn::Propose(h) if self.faults.checked_when_asked_only => (h, None),
            ConfTurn::Propose(h) => {
                let refused = self.reconfig_allowed(l, &h.cc).err();
                (h, refused)
            }
            ConfTurn::Refuse(h, e) => (h, Some(e)),
        };
        let (id, kind) = (h.cc.node_id, h.cc.get_change_type());
        if let Some(e) = refused {
            self.events
                .push(format!("{t}: m{id} {kind:?} refused: {e}"));
            return;
        }
        let live = self.members[l].live.as_mut().expect("a leader is live");
        if live.raw.propose_conf_change(h.ctx, h.cc).is_err() {
            self.events
                .push(format!("{t}: m{id} {kind:?} dropped by Raft"));
        }
    }

    /// `Members::still_allowed` on member `l` (the leader), with the simulated network as its
    /// links: up since both ends last started and the partitions last changed, unless cut or
    /// the other end is down.
    fn reconfig_allowed(
        &self,
        l: usize,
        cc: &raft::eraftpb::ConfChange,
    ) -> Result<(), crate::error::EtcdError> {
        self.reconfig(l, |m, r| m.still_allowed(cc, r))
    }

    /// `f` with member `l`'s list and what the strict reconfiguration checks need of it.
    fn reconfig<T>(&self, l: usize, f: impl FnOnce(&Members, &replica::Reconfig<'_>) -> T) -> T {
        let leader = &self.members[l];
        let live = leader.live.as_ref().expect("a live member");
        let link_up = |id: u64| {
            let other = self.index_of(id).map(|i| &self.members[i])?;
            if other.live.is_none() || self.cut(leader.id, id) {
                return None;
            }
            let since = leader
                .started_at
                .max(other.started_at)
                .max(self.cut_changed);
            Some(clock(self.base, since))
        };
        let matched = |id: u64| live.raw.raft.prs().get(id).map_or(0, |p| p.matched);
        let r = replica::Reconfig {
            now: clock(self.base, self.now),
            link_up: &link_up,
            matched: &matched,
            last_index: live.raw.raft.raft_log.last_index(),
            healthy_after: std::time::Duration::from_millis(HEALTHY_AFTER_STEPS * STEP_MS),
        };
        f(&live.members, &r)
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    /// A client calls member `i`: a put of a unique value, or a linearizable read.
    fn client(&mut self, i: usize, put: bool, key: u64) {
        let o = self.ops.len();
        let key_s = format!("k{key}");
        let kind = if put {
            OpKind::Put(format!("v{o}"))
        } else {
            OpKind::Get(None)
        };
        self.ops.push(Running {
            op: Op {
                key: key_s.clone(),
                kind,
                call: self.now,
                ret: None,
            },
            started: self.now,
        });
        self.dropped.push(false);
        // Request ids are unique across the run (a restarted member must not take an old
        // entry of its own for a new request; replica.rs starts them from the clock).
        let id = o as u64 + 1;
        let me = self.members[i].id;
        let live = self.members[i].live.as_mut().expect("a live member");
        if put {
            let p = pb::PutRequest {
                key: key_s.into_bytes().into(),
                value: format!("v{o}").into_bytes().into(),
                ..Default::default()
            };
            // Some puts go inside a txn (no compare, one put: a put in the register model).
            // Some puts go inside a txn with a second put on a key of their own (one revision,
            // two events for the watchers; the register model sees the first).
            let req = if o % 4 == 0 {
                let also = pb::PutRequest {
                    key: format!("k{key}/txn").into_bytes().into(),
                    value: p.value.clone(),
                    ..Default::default()
                };
                let op = |p| pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(p)),
                };
                Request::Txn(pb::TxnRequest {
                    success: vec![op(p), op(also)],
                    ..Default::default()
                })
            } else {
                Request::Put(p)
            };
            let data = consensus::proposal(me, id, &kv::encode_write(&req));
            if live.raw.propose(vec![], data).is_ok() {
                live.pending.insert(id, o);
            } else {
                // Refused at once (no leader known): it never took effect.
                self.dropped[o] = true;
                self.ops[o].started = u64::MAX;
            }
        } else if self.faults.stale_reads {
            let v = read(&mut live.state, &key_s);
            self.finish(o, Some(OpKind::Get(v)));
        } else {
            live.raw.read_index(id.to_le_bytes().to_vec());
            live.rounds.insert(id, vec![o]);
        }
    }

    /// A member to crash or cut off: the leader half of the time (faults there matter most).
    fn victim(&mut self) -> usize {
        let leader = self.members.iter().position(|m| {
            m.live
                .as_ref()
                .is_some_and(|l| l.raw.raft.state == StateRole::Leader)
        });
        match leader {
            Some(i) if self.rng.chance(500) => i,
            _ => {
                let members = self.in_cluster();
                members[self.rng.below(members.len() as u64) as usize]
            }
        }
    }

    /// A running member of the cluster drawn at random (a client's choice of endpoint).
    fn any_up(&mut self) -> Option<usize> {
        let up: Vec<usize> = self
            .in_cluster()
            .into_iter()
            .filter(|&i| self.members[i].live.is_some())
            .collect();
        (!up.is_empty()).then(|| up[self.rng.below(up.len() as u64) as usize])
    }

    /// The members not removed (positions).
    fn in_cluster(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| !self.removed.contains(&self.members[i].id))
            .collect()
    }

    /// One step of simulated time.
    fn step(&mut self) {
        self.now += 1;
        let at = clock(self.base, self.now);
        for m in &mut self.members {
            if let Some(live) = &mut m.live {
                live.state.set_clock(at);
            }
        }
        let faulty = self.now < self.faults.steps;
        let active = self.in_cluster();
        if faulty {
            let down = active
                .iter()
                .filter(|&&i| self.members[i].live.is_none())
                .count();
            // At most a minority down at once, so that the cluster can make progress.
            if down < (active.len() - 1) / 2 && self.rng.chance(self.faults.crash_per_mille) {
                let i = self.victim();
                self.crash(i);
            }
            if self.isolated.is_empty() && self.rng.chance(self.faults.partition_per_mille) {
                let v = self.victim();
                let id = self.members[v].id;
                self.isolated.push(id);
                self.cut_changed = self.now;
                let t = self.now;
                self.events.push(format!("{t}: m{id} cut off"));
            } else if self.isolated.len() == 1
                && active.len() >= 5
                && self.rng.chance(self.faults.partition_per_mille)
            {
                // Five members: two cut off (each alone), the other three still a quorum.
                let v = self.victim();
                let id = self.members[v].id;
                if !self.isolated.contains(&id) {
                    self.isolated.push(id);
                    self.cut_changed = self.now;
                    let t = self.now;
                    self.events.push(format!("{t}: m{id} cut off"));
                }
            } else if !self.isolated.is_empty() && self.rng.chance(3) {
                self.isolated.clear();
                self.cut_changed = self.now;
                let t = self.now;
                self.events.push(format!("{t}: network healed"));
            }
            for c in 0..self.lease_clients.len() {
                self.lease_client(c);
            }
            if self.rng.chance(400) {
                let i = active[self.rng.below(active.len() as u64) as usize];
                let put = self.rng.chance(600);
                let key = self.rng.below(KEYS);
                if self.members[i].live.is_some() {
                    self.client(i, put, key);
                }
            }
        } else if self.now == self.faults.steps {
            self.isolated.clear();
            self.cut_changed = self.now;
        }
        for &i in &active {
            let m = &self.members[i];
            let restart = m.live.is_none() && m.launched && (!faulty || self.rng.chance(20));
            if restart {
                self.start(i);
            }
        }
        self.membership();
        let n = self.members.len();
        // Messages due now.
        let due: Vec<(u64, u64)> = self
            .net
            .range(..(self.now + 1, 0))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            let (m, carried) = self.net.remove(&k).expect("due");
            let (from, to) = (m.from, m.to);
            let mut arrived = false;
            if !self.cut(from, to) {
                if let Some(i) = self.index_of(to) {
                    if let Some(live) = &mut self.members[i].live {
                        if let Some(c) = &carried {
                            let md = m.get_snapshot().get_metadata();
                            live.staged.insert((md.index, md.term), c.clone());
                        }
                        let _ = live.raw.step(m);
                        arrived = true;
                    }
                }
            }
            if carried.is_some() {
                self.snapshot_sent(from, to, arrived);
            }
        }
        for i in 0..n {
            let wanted = self.members[i]
                .live
                .as_ref()
                .is_some_and(|l| l.raw.store().take_snapshot_wanted());
            if wanted || (faulty && self.rng.chance(self.faults.checkpoint_per_mille)) {
                self.checkpoint(i, wanted);
            }
        }
        if self.now % TICK_STEPS == 0 {
            for m in &mut self.members {
                if let Some(live) = &mut m.live {
                    live.raw.tick();
                }
            }
        }
        for i in 0..n {
            self.disk(i);
            self.ready(i);
            self.answer_reads(i);
            self.watch(i);
            self.lease_duties(i);
            self.carry_out_asked(i);
            self.release_held_confs(i);
            self.publish(i);
        }
        self.draw_timeouts();
        // Clients that waited too long give up.
        let now = self.now;
        let late: Vec<usize> = (0..self.ops.len())
            .filter(|&o| {
                self.ops[o].started != u64::MAX && now - self.ops[o].started > OP_TIMEOUT_STEPS
            })
            .collect();
        for o in late {
            self.finish(o, None);
        }
    }

    /// The disk of member `i` completes its oldest writes (each with even odds per step).
    fn disk(&mut self, i: usize) {
        loop {
            let done = {
                let Some(live) = &mut self.members[i].live else {
                    return;
                };
                if live.disk_queue.is_empty() || !self.rng.chance(500) {
                    return;
                }
                live.disk_queue.pop_front().expect("not empty")
            };
            let m = &mut self.members[i];
            let first = m.base + m.disk.len() as u64 + 1;
            let live = m.live.as_mut().expect("live");
            for (k, r) in done.records.iter().enumerate() {
                if let Record::Entry(e) = r {
                    let seq = first + k as u64;
                    live.raw
                        .mut_store()
                        .set_data(e.index, e.term, e.data.clone(), seq);
                }
            }
            m.disk.extend(done.records);
            if let Some(mut c) = done.install {
                // As the appender: the hard state written twice, the checkpoint covering the
                // first, the log before the second released; then the state read back.
                c.seq = first;
                m.disk.drain(..(c.seq - m.base) as usize);
                m.base = c.seq;
                let (mut state, mut members) = fresh(m.id, self.base, self.now);
                rebuild(&mut state, &mut members, &c.entries);
                replica::adopt_members(&c.meta, &mut members, &mut state);
                if !self.faults.stale_install {
                    live.state = state;
                    live.members = members;
                }
                live.applied = c.meta.index;
                live.history = c.entries.clone();
                live.raw.mut_store().set_snapshot(c.meta.snapshot(c.seq));
                live.staged.retain(|(index, _), _| *index > c.meta.index);
                let (t, id, index) = (self.now, m.id, c.meta.index);
                m.checkpoint = Some(c);
                self.events
                    .push(format!("{t}: m{id} installs a snapshot at {index}"));
            }
            let live = self.members[i].live.as_mut().expect("live");
            live.raw.on_persist_ready(done.number);
            self.send(done.persisted);
        }
    }

    /// Handles member `i`'s Readies as replica.rs does.
    fn ready(&mut self, i: usize) {
        loop {
            let me = self.members[i].id;
            let live = match &mut self.members[i].live {
                Some(l) if l.disk_queue.len() < DISK_QUEUE && l.raw.has_ready() => l,
                _ => return,
            };
            let mut rd = live.raw.ready();
            let msgs = rd.take_messages();
            let mut install = None;
            if !rd.snapshot().is_empty() {
                let md = rd.snapshot().get_metadata();
                let c = live
                    .staged
                    .remove(&(md.index, md.term))
                    .unwrap_or_else(|| panic!("m{me}: Raft took a snapshot never received"));
                live.raw.mut_store().install(rd.snapshot().clone());
                install = Some(c);
            }
            let mut answered = Vec::new();
            let mut lease_answered = Vec::new();
            let mut expiries = Vec::new();
            for e in rd.take_committed_entries() {
                match replica::apply_entry(&mut live.state, &mut live.members, &e) {
                    Ok(Applied::Answer(origin, id, answer)) => {
                        if let Ok(Response::LeaseExpire(n)) = &answer {
                            expiries.push((e.index, *n));
                        }
                        if origin == me {
                            if let Some(o) = live.pending.remove(&id) {
                                answered.push((o, answer.is_ok()));
                            } else if let Some(c) = live.lease_pending.remove(&id) {
                                lease_answered.push((c, id, answer));
                            }
                        }
                    }
                    Ok(Applied::Conf(cc)) => {
                        let promoted = live.raw.store().conf_state().learners.contains(&cc.node_id);
                        match live.raw.apply_conf_change(&cc) {
                            Ok(cs) => live.raw.mut_store().set_conf_state(cs),
                            Err(err) => {
                                panic!("m{me}: raft refused a committed conf change: {err}")
                            }
                        }
                        // etcd's rule for a new voter: the started voters stay a majority.
                        let added = cc.get_change_type() == raft::eraftpb::ConfChangeType::AddNode;
                        if added && !promoted && e.index > self.faults.members {
                            let voters = &live.raw.store().conf_state().voters;
                            let started = voters
                                .iter()
                                .filter(|&&v| live.members.is_started(v))
                                .count();
                            if started * 2 <= voters.len() && self.broken.is_none() {
                                self.broken = Some(format!(
                                    "entry {}: m{} added as a voter with {started} of {} \
                                     voters started",
                                    e.index,
                                    cc.node_id,
                                    voters.len()
                                ));
                            }
                        }
                    }
                    // As replica.rs: carried out by the leader of the term it was logged in.
                    Ok(Applied::Asked(a))
                        if live.raw.raft.state == StateRole::Leader
                            && e.term == live.raw.raft.term =>
                    {
                        live.asked.push(a);
                    }
                    Ok(_) => {}
                    Err(err) => panic!("m{me}: a committed entry does not apply: {err}"),
                }
                live.applied = e.index;
                assert_eq!(
                    live.history.len() as u64 + 1,
                    e.index,
                    "m{me}: applied in order"
                );
                live.history.push(e);
            }
            for rs in rd.take_read_states() {
                let ctx = rs
                    .request_ctx
                    .get(..8)
                    .map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().expect("8")));
                if let Some(ops) = live.rounds.remove(&ctx) {
                    live.ready_reads.push((rs.index, ops));
                }
            }
            if let Some(hs) = rd.hs() {
                live.raw.mut_store().set_hard_state(hs.clone());
            }
            let entries: Vec<Entry> = rd.take_entries();
            let mut records: Vec<Record> = entries.iter().cloned().map(Record::Entry).collect();
            if !entries.is_empty() || rd.must_sync() {
                let hs = Record::HardState(live.raw.store().hard_state().clone());
                if install.is_some() {
                    records.push(hs.clone());
                }
                records.push(hs);
            }
            live.raw.mut_store().append(&entries);
            let write = Write {
                records,
                number: rd.number(),
                persisted: rd.take_persisted_messages(),
                install,
            };
            live.raw.advance_append_async(rd);
            let applied = live.applied;
            live.raw.advance_apply_to(applied);
            live.disk_queue.push_back(write);
            self.send(msgs);
            for (o, ok) in answered {
                let v = match &self.ops[o].op.kind {
                    OpKind::Put(v) => v.clone(),
                    OpKind::Get(_) => unreachable!("a put's answer"),
                };
                self.finish(o, ok.then_some(OpKind::Put(v)));
            }
            for (c, id, answer) in lease_answered {
                self.lease_answer(c, id, answer);
            }
            // Every member revokes as many leases for an expiry as the others did.
            for (index, n) in expiries {
                let first = *self.expiry_outcomes.entry(index).or_insert((me, n));
                if first.1 != n && self.broken.is_none() {
                    self.broken = Some(format!(
                        "entry {index}: an expiry revoked {} leases on m{} but {n} on m{me}",
                        first.1, first.0
                    ));
                }
            }
        }
    }

    /// Lease client `c` asks a member drawn at random for a grant or a keepalive, when due.
    fn lease_client(&mut self, c: usize) {
        let now = self.now;
        let lc = &mut self.lease_clients[c];
        if now < lc.next {
            return;
        }
        if let Some((_, sent, _)) = lc.asked {
            if now - sent < LEASE_ASK_STEPS {
                return;
            }
            // No answer (its member crashed, or the request was lost): ask again.
            lc.asked = None;
        }
        let Some(i) = self.any_up() else { return };
        let id = self.next_req;
        self.next_req += 1;
        let lc = &mut self.lease_clients[c];
        let keepalive = lc.granted;
        lc.asked = Some((id, now, keepalive));
        let req = if keepalive {
            Request::LeaseKeepAlive(pb::LeaseKeepAliveRequest { id: lc.id })
        } else {
            Request::LeaseGrant(pb::LeaseGrantRequest {
                ttl: lc.ttl,
                id: lc.id,
            })
        };
        let me = self.members[i].id;
        let live = self.members[i].live.as_mut().expect("up");
        // Every member logs a keepalive, as replica.rs (the bug: a leader answers at once).
        if keepalive && self.faults.unlogged_keepalives && live.raw.raft.state == StateRole::Leader
        {
            let answer = live.state.execute(req);
            return self.lease_answer(c, id, answer);
        }
        let data = consensus::proposal(me, id, &kv::encode_write(&req));
        if live.raw.propose(vec![], data).is_ok() {
            live.lease_pending.insert(id, c);
        } else {
            self.lease_answer(c, id, Err(crate::error::EtcdError::NoLeader));
        }
    }

    /// Lease client `c` hears the answer to its request `id`: a grant or renewal acknowledged
    /// with a TTL is recorded (the promise the expiry check holds the cluster to); a lease
    /// gone is granted again under a new ID.
    fn lease_answer(&mut self, c: usize, id: u64, answer: kv::Result<Response>) {
        let now = self.now;
        let lc = &mut self.lease_clients[c];
        let Some((asked, sent, _)) = lc.asked else {
            return;
        };
        if asked != id {
            return;
        }
        lc.asked = None;
        // Every third of the TTL, give or take a fifth; one time in eight the client stalls
        // and renews near the deadline (before or after it: the race with the leader's
        // expiry check).
        let renew_in = |ttl: i64, rng: &mut Rng| {
            let whole = ttl as u64 * 1_000 / STEP_MS;
            if rng.chance(125) {
                return whole - whole / 10 + rng.below(whole / 5);
            }
            let steps = whole / 3;
            steps - steps / 5 + rng.below(steps / 5 * 2)
        };
        let ttl = match answer {
            Ok(Response::LeaseGrant(r)) => r.ttl,
            Ok(Response::LeaseKeepAlive(r)) => r.ttl,
            _ => {
                // Refused (no leader, or a grant of an ID taken by a grant whose answer was
                // lost): ask again soon, a grant under a new ID.
                if !lc.granted {
                    lc.id += 1;
                }
                lc.next = now + 20;
                return;
            }
        };
        if ttl > 0 {
            lc.granted = true;
            lc.next = now + renew_in(ttl, &mut self.rng);
            self.lease_acks.entry(lc.id).or_default().push((sent, ttl));
        } else {
            // Expired: a new lease.
            lc.granted = false;
            lc.id += 1;
            lc.next = now + 1;
            let (t, c) = (self.now, c);
            self.events
                .push(format!("{t}: lease client {c} finds its lease gone"));
        }
    }

    /// What replica.rs's leader does for leases: it decides expiry (and takes the deadlines
    /// it knows, plus an election timeout, when it becomes leader), and checks for lapsed
    /// leases every `LEASE_CHECK_INTERVAL_MS`, logging their expiry with its applied index.
    fn lease_duties(&mut self, i: usize) {
        let extend = std::time::Duration::from_millis(ELECTION_TICKS as u64 * TICK_STEPS * STEP_MS);
        let check_every = crate::limits::LEASE_CHECK_INTERVAL_MS / STEP_MS;
        let now = self.now;
        let me = self.members[i].id;
        let Some(live) = &mut self.members[i].live else {
            return;
        };
        let leader = live.raw.raft.state == StateRole::Leader;
        live.state.set_lease_authority(leader, extend);
        if !leader {
            return;
        }
        if now % check_every != 0 {
            return;
        }
        let mut req = Request::LeaseExpire(Default::default());
        live.state.prepare(&mut req);
        let Request::LeaseExpire(x) = &mut req else {
            unreachable!("prepared")
        };
        if x.ids.is_empty() {
            return;
        }
        x.seen = (!self.faults.blind_expiry).then_some(live.applied);
        let id = self.next_req;
        self.next_req += 1;
        let data = consensus::proposal(me, id, &kv::encode_write(&req));
        if live.raw.propose(vec![], data).is_ok() {
            self.expiry_decided.insert(id, now);
        }
    }

    /// Every lease an expiry revoked had lapsed when the leader decided it: no grant or
    /// keepalive acknowledged with a TTL had been sent less than that TTL before. The
    /// committed entries are applied again to see which leases each expiry revoked.
    fn check_leases(&self, history: &[Entry]) -> Result<usize, String> {
        let (mut state, mut members) = fresh(0, self.base, self.now);
        let mut revoked_total = 0;
        for e in history {
            let expiry = consensus::parse_proposal(&e.data).and_then(|(_, id, payload)| {
                match kv::decode_write(payload) {
                    Ok(Request::LeaseExpire(_)) => Some(id),
                    _ => None,
                }
            });
            let before = if expiry.is_some() {
                lease_ids(&mut state)
            } else {
                Vec::new()
            };
            replica::apply_entry(&mut state, &mut members, e)
                .map_err(|err| format!("a committed entry does not apply: {err}"))?;
            let Some(id) = expiry else { continue };
            let after = lease_ids(&mut state);
            let decided = *self
                .expiry_decided
                .get(&id)
                .ok_or_else(|| format!("entry {}: an expiry nobody decided", e.index))?;
            for lease in before.into_iter().filter(|l| !after.contains(l)) {
                revoked_total += 1;
                for &(sent, ttl) in self.lease_acks.get(&lease).into_iter().flatten() {
                    let lapses = sent + ttl as u64 * 1_000 / STEP_MS;
                    if lapses > decided {
                        return Err(format!(
                            "lease {lease} revoked by an expiry decided at step {decided} \
                             (entry {}), but a request sent at step {sent} was acknowledged \
                             with a TTL of {ttl} s (lapsing at step {lapses})",
                            e.index
                        ));
                    }
                }
            }
        }
        Ok(revoked_total)
    }

    /// The watcher on member `i` pulls what it has not seen (a few revisions at a time, as a
    /// watch stream does); caught up, it may get a progress notification.
    fn watch(&mut self, i: usize) {
        let max_events = 1 + self.rng.below(4) as usize;
        let progress = self.rng.chance(100);
        let lose = self.faults.lossy_watch && self.rng.chance(5);
        let m = &mut self.members[i];
        let Some(live) = &mut m.live else { return };
        let spec = kv::WatchSpec {
            key: "k".into(),
            range_end: "l".into(),
            from: m.watcher.next,
            prev_kv: true,
            no_put: false,
            no_delete: false,
        };
        let pull = Request::WatchPull(kv::WatchPull {
            specs: vec![spec],
            max_events,
            max_bytes: 1 << 20,
        });
        let Ok(Response::WatchPull(p)) = live.state.execute(pull) else {
            panic!("m{}: a watch pull failed", m.id)
        };
        let header_rev = p.header.revision;
        match p.results.into_iter().next() {
            Some(kv::Pulled::Events { events, next }) => {
                let caught_up = next > header_rev;
                m.watcher.next = next + lose as i64;
                let evs: Vec<Ev> = events.iter().map(event).collect();
                if !evs.is_empty() {
                    m.watcher.resps.push(Resp {
                        watch_id: 0,
                        events: evs,
                        header_rev,
                    });
                } else if caught_up && progress {
                    m.watcher.resps.push(Resp {
                        watch_id: 0,
                        events: Vec::new(),
                        header_rev,
                    });
                }
            }
            other => panic!("m{}: a watch pull answered {other:?}", m.id),
        }
    }

    /// Reads whose read index member `i` applied are answered from its state.
    fn answer_reads(&mut self, i: usize) {
        let mut answers = Vec::new();
        {
            let Some(live) = &mut self.members[i].live else {
                return;
            };
            let applied = live.applied;
            let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut live.ready_reads)
                .into_iter()
                .partition(|(index, _)| *index <= applied);
            live.ready_reads = later;
            for (_, ops) in now {
                for o in ops {
                    let v = read(&mut live.state, &self.ops[o].op.key);
                    answers.push((o, v));
                }
            }
        }
        for (o, v) in answers {
            self.finish(o, Some(OpKind::Get(v)));
        }
    }

    /// Runs the faulty phase, then heals, restarts everyone, reads every key through every
    /// member, and checks the history and the members' agreement.
    pub fn run(&mut self) -> Result<(), String> {
        while self.now < self.faults.steps {
            self.step();
        }
        // Quiet: let a leader settle and the clients' last ops finish.
        for _ in 0..1_500 {
            self.step();
        }
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        let active = self.in_cluster();
        let n = active.len();
        for &i in &active {
            for k in 0..KEYS {
                self.client(i, false, k);
            }
        }
        for _ in 0..1_500 {
            self.step();
        }
        let unanswered = (self.ops.len() - n * KEYS as usize..self.ops.len())
            .filter(|&o| self.ops[o].op.ret.is_none())
            .count();
        if unanswered > 0 {
            return Err(format!(
                "{unanswered} final reads unanswered after the network healed"
            ));
        }
        let history: Vec<Op> = self
            .ops
            .iter()
            .zip(&self.dropped)
            .filter(|(r, dropped)| {
                !**dropped && (r.op.ret.is_some() || matches!(r.op.kind, OpKind::Put(_)))
            })
            .map(|(r, _)| r.op.clone())
            .collect();
        match linearizability::check(&history) {
            Ok(()) => {}
            Err(linearizability::CheckError::NotLinearizable { key, ops }) => {
                let n = ops.len();
                let last: Vec<String> = ops[n.saturating_sub(12)..]
                    .iter()
                    .map(|o| format!("{:?}@{}..{:?}", o.kind, o.call, o.ret))
                    .collect();
                return Err(format!(
                    "not linearizable on {key} ({n} ops; the last: {last:?})"
                ));
            }
            Err(e) => return Err(format!("not checked: {e:?}")),
        }
        // Every member holds the same keys at the same revision.
        let mut views = Vec::new();
        let removed = self.removed.clone();
        for m in self.members.iter_mut().filter(|m| !removed.contains(&m.id)) {
            let live = m.live.as_mut().expect("restarted");
            let keys: Vec<Option<String>> = (0..KEYS)
                .map(|k| read(&mut live.state, &format!("k{k}")))
                .collect();
            views.push((live.state.store().rev(), keys, lease_ids(&mut live.state)));
        }
        if views.iter().any(|v| *v != views[0]) {
            return Err(format!("members differ at the end: {views:?}"));
        }
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        // The clients stopped renewing with the faults: every lease has expired since.
        if !views[0].2.is_empty() {
            return Err(format!("leases never expired: {:?}", views[0].2));
        }
        // Every member's watcher saw the writes the committed entries hold, by revision.
        let end = views[0].0;
        let first = active[0];
        let history = &self.members[first].live.as_ref().expect("live").history;
        self.revoked = self.check_leases(history)?;
        let want = watch_check::expected(&committed_writes(history));
        for m in self.members.iter().filter(|m| !removed.contains(&m.id)) {
            if m.watcher.next <= end {
                return Err(format!(
                    "m{}'s watcher stopped at {} of {end}",
                    m.id, m.watcher.next
                ));
            }
            watch_check::check(&want, 1, end, &m.watcher.resps, true)
                .map_err(|e| format!("m{}'s watcher: {e}", m.id))?;
        }
        Ok(())
    }

    /// How many ops the history holds, how many of them were acknowledged puts, how many
    /// crashes and partitions there were, how many terms had a leader, checkpoints, snapshots
    /// installed, members added, promoted and removed, lease grants and keepalives
    /// acknowledged, leases expired, configuration changes the leader's checks held back, and
    /// runs whose three voters asked at once all joined, and changes asked of followers.
    pub fn counts(&self) -> [usize; 15] {
        let acked = self
            .ops
            .iter()
            .filter(|r| matches!(r.op.kind, OpKind::Put(_)) && r.op.ret.is_some())
            .count();
        let count = |what: &str| self.events.iter().filter(|e| e.contains(what)).count();
        [
            self.ops.len(),
            acked,
            count("crashes"),
            count("cut off"),
            self.terms_led.len(),
            count("checkpoints at"),
            count("installs a snapshot"),
            count("joins as a learner"),
            count("is promoted"),
            count(" removed"),
            self.lease_acks.values().map(Vec::len).sum(),
            self.revoked,
            count(" refused: "),
            count(" join as voters"),
            count(", a follower"),
        ]
    }
}

/// The writes of committed entries, by revision (the model a watcher is checked against,
/// built from the entries, not from the store): each entry with writes takes the next
/// revision, from 2.
fn committed_writes(entries: &[Entry]) -> Acked {
    let mut acked = Acked::new();
    let mut rev = 1;
    for e in entries {
        let Some((_, _, payload)) = consensus::parse_proposal(&e.data) else {
            continue;
        };
        if e.get_entry_type() != raft::eraftpb::EntryType::EntryNormal {
            continue;
        }
        let puts: Vec<pb::PutRequest> = match kv::decode_write(payload) {
            Ok(Request::Put(p)) => vec![p],
            Ok(Request::Txn(t)) => t
                .success
                .into_iter()
                .filter_map(|op| match op.request {
                    Some(pb::request_op::Request::RequestPut(p)) => Some(p),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if puts.is_empty() {
            continue;
        }
        rev += 1;
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        acked.insert(
            rev,
            puts.iter()
                .map(|p| (text(&p.key), true, text(&p.value)))
                .collect(),
        );
    }
    acked
}

/// A watch event as the checker records it.
fn event(e: &crate::proto::mvccpb::Event) -> Ev {
    let kv = e.kv.clone().unwrap_or_default();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    let put = e.r#type == crate::proto::mvccpb::event::EventType::Put as i32;
    Ev {
        rev: kv.mod_revision,
        key: text(&kv.key),
        put,
        value: if put { text(&kv.value) } else { String::new() },
        prev: e.prev_kv.as_ref().map(|p| text(&p.value)),
    }
}

/// A simulated member's name and URLs.
fn identity(id: u64) -> kv::Identity {
    kv::Identity {
        cluster_id: 1,
        member_id: id,
        name: format!("m{id}"),
        peer_urls: vec![],
        client_urls: vec![],
    }
}

/// A new member's state and member list, its lease clock at step `now`.
fn fresh(id: u64, base: std::time::Instant, now: u64) -> (KvState, Members) {
    let mut state = KvState::in_memory(1, id);
    state.set_clock(clock(base, now));
    (state, Members::new(&identity(id)))
}

fn clock(base: std::time::Instant, step: u64) -> std::time::Instant {
    base + std::time::Duration::from_millis(step * STEP_MS)
}

/// The IDs of the leases `state` holds.
fn lease_ids(state: &mut KvState) -> Vec<i64> {
    match state.execute(Request::LeaseLeases(Default::default())) {
        Ok(Response::LeaseLeases(r)) => r.leases.iter().map(|l| l.id).collect(),
        other => panic!("leases answered {other:?}"),
    }
}

/// The state a checkpoint holds: its entries applied again.
fn rebuild(state: &mut KvState, members: &mut Members, entries: &[Entry]) {
    for e in entries {
        replica::apply_entry(state, members, e).expect("a checkpointed entry applies");
    }
}

/// The value of `key` in `state` (a serializable range, as the loop answers a read).
fn read(state: &mut KvState, key: &str) -> Option<String> {
    let req = Request::Range(pb::RangeRequest {
        key: key.as_bytes().to_vec().into(),
        serializable: true,
        ..Default::default()
    });
    match state.execute(req) {
        Ok(Response::Range(r)) => r
            .kvs
            .first()
            .map(|kv| String::from_utf8_lossy(&kv.value).to_string()),
        other => panic!("a range answered {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds to run: `FERROCD_SIM_SEED` alone, or `count` from `first`.
    fn seeds(first: u64, count: u64) -> Vec<u64> {
        match std::env::var("FERROCD_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            Some(s) => vec![s],
            None => (first..first + count).collect(),
        }
    }

    fn run_seeds(faults: Faults, seeds: &[u64]) {
        let mut totals = [0usize; 15];
        for &seed in seeds {
            let mut sim = Sim::new(seed, faults);
            if let Err(e) = sim.run() {
                let tail: Vec<&String> = sim.events.iter().rev().take(40).collect();
                panic!(
                    "seed {seed} ({} members) failed: {e}\nreplay: FERROCD_SIM_SEED={seed} \
                     cargo test --lib sim\nlast events: {tail:?}",
                    faults.members
                );
            }
            if std::env::var("FERROCD_SIM_EVENTS").is_ok() {
                eprintln!("{:#?}", sim.events);
            }
            for (t, c) in totals.iter_mut().zip(sim.counts()) {
                *t += c;
            }
        }
        let [ops, acked, crashes, cuts, terms, checkpoints, installs, joined, promoted, removed, lease_acks, expired, held_back, grown, via_followers] =
            totals;
        eprintln!(
            "{} seeds of {} members: {ops} client ops, {acked} acknowledged puts, {crashes} \
             crashes, {cuts} partitions, {terms} terms with a leader, {checkpoints} \
             checkpoints, {installs} snapshots installed, {joined} learners added, {promoted} \
             promoted, {removed} voters removed, {lease_acks} lease grants and keepalives \
             acknowledged, {expired} leases expired, {held_back} configuration changes held \
             back by the strict reconfiguration checks, {grown} runs with three voters \
             asked at once all joined, {via_followers} changes asked of followers",
            seeds.len(),
            faults.members
        );
        let n = seeds.len();
        assert!(acked > 10 * n, "too few acknowledged puts: {acked}");
        assert!(
            crashes > n && cuts > n && terms > 2 * n,
            "too few faults: {totals:?}"
        );
        assert!(
            checkpoints > n && installs > n / 2,
            "too few snapshots: {totals:?}"
        );
        if faults.leases {
            assert!(
                lease_acks > 10 * n && expired >= LEASE_CLIENTS * n,
                "too few lease renewals or expiries: {totals:?}"
            );
        }
        // Every run carries the whole membership plan out.
        if faults.membership {
            assert!(
                joined == n && promoted == n && removed == n,
                "membership changes not all carried out: {totals:?}"
            );
            if faults.voters_at_once {
                assert_eq!(grown, n, "voters asked at once not all joined: {totals:?}");
            }
        }
    }

    #[test]
    fn three_members_stay_linearizable_under_faults() {
        run_seeds(Faults::standard(3), &seeds(1, 150));
    }

    #[test]
    fn five_members_stay_linearizable_under_faults() {
        run_seeds(Faults::standard(5), &seeds(10_001, 60));
    }

    #[test]
    fn logs_that_begin_with_a_start_record_stay_linearizable_under_faults() {
        let faults = Faults {
            start_record: true,
            ..Faults::standard(3)
        };
        run_seeds(faults, &seeds(30_001, 40));
    }

    #[test]
    fn a_seed_replays_exactly() {
        let run = |seed| {
            let mut s = Sim::new(seed, Faults::standard(3));
            s.run().expect("a passing seed");
            (s.events.clone(), s.counts())
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7).0, run(8).0);
    }

    /// Runs seeds 1..=`seeds` with a deliberate bug until one fails (the checks catch it),
    /// and prints the first failure, which must be one of the checks named by `by` (any
    /// failure would not show those checks work).
    fn caught(what: &str, faults: Faults, seeds: u64, by: &[&str]) {
        let caught =
            (1..=seeds).find_map(|seed| Sim::new(seed, faults).run().err().map(|e| (seed, e)));
        eprintln!("{what} caught first at {caught:?}");
        let (seed, e) = caught.unwrap_or_else(|| panic!("{what} went unnoticed in {seeds} seeds"));
        assert!(
            by.iter().any(|b| e.contains(b)),
            "seed {seed} failed otherwise than by {by:?}: {e}"
        );
    }

    #[test]
    fn a_snapshot_installed_without_its_state_is_caught() {
        let faults = Faults {
            stale_install: true,
            ..Faults::standard(3)
        };
        caught(
            "a snapshot installed without its state",
            faults,
            40,
            // Its member list is lost as well: a voter added then leaves too few started.
            &["not linearizable", "members differ", "added as a voter"],
        );
    }

    #[test]
    fn a_watch_that_skips_a_revision_is_caught() {
        let faults = Faults {
            lossy_watch: true,
            ..Faults::standard(3)
        };
        caught("a lossy watch", faults, 10, &["watcher"]);
    }

    #[test]
    fn a_renewal_acknowledged_but_not_logged_is_caught() {
        let faults = Faults {
            unlogged_keepalives: true,
            ..Faults::standard(3)
        };
        caught(
            "renewals answered by the leader without logging",
            faults,
            60,
            &["revoked by an expiry"],
        );
    }

    #[test]
    fn an_expiry_that_revokes_a_later_renewal_is_caught() {
        let faults = Faults {
            blind_expiry: true,
            ..Faults::standard(3)
        };
        caught(
            "expiries blind to later renewals",
            faults,
            60,
            &["revoked by an expiry"],
        );
    }

    #[test]
    fn voters_let_in_on_the_checks_made_when_asked_are_caught() {
        let faults = Faults {
            checked_when_asked_only: true,
            ..Faults::standard(3)
        };
        caught(
            "configuration changes not checked again when proposed",
            faults,
            20,
            &["added as a voter"],
        );
    }

    #[test]
    fn stale_reads_are_caught() {
        let faults = Faults {
            stale_reads: true,
            partition_per_mille: 10,
            ..Faults::standard(3)
        };
        caught(
            "reads answered without a read index",
            faults,
            40,
            &["not linearizable"],
        );
    }
}
