//! Every limit of the server in one place, with its unit in its name.

/// Largest gRPC request accepted (etcd's `--max-request-bytes` default, 1.5 MiB).
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 1536 * 1024;
/// gRPC adds this much room on top of the request limit before refusing a frame outright
/// (etcd: grpcOverheadBytes); requests between the two get etcd's "request is too large".
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Most operations in one Txn (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS_DEFAULT: usize = 128;
/// Requests one shard may have in flight towards the owner shard before senders wait.
pub const SHARD_QUEUE_DEPTH: usize = 1024;
/// Most requests the owner shard takes into one apply batch (one log write, one fdatasync).
pub const APPLY_BATCH_REQUESTS_MAX: usize = 4096;
/// After this many apply batches in a row of a single request each, the owner shard makes a
/// write durable with blocking system calls (`log::SyncMode::Blocking`) until a batch holds more.
pub const ONE_CLIENT_BATCHES: usize = 8;
/// A batch of fewer requests than this is also made durable by blocking system calls when the
/// owner shard answered no read (range, watch pull, keepalive...) in the last [`QUIET_BATCHES`]
/// batches: at moderate write rates the blocking wait costs less CPU than a round trip through
/// io_uring's worker, and with no reads coming nothing waits behind it
/// (tuning/results/2026-11-28-quiet-blocking.md).
pub const QUIET_BLOCKING_BATCH_BELOW: usize = 8;
/// Batches in a row without a read before small ones block (see [`QUIET_BLOCKING_BATCH_BELOW`]).
pub const QUIET_BATCHES: usize = 4;
/// Apply batches of fewer requests than this (and Raft appends of fewer records) are synced
/// through io_uring (`log::SyncMode::Ring`), larger ones on the log's fdatasync thread
/// (`log::SyncMode::Background`; written by a system call either way): at 100 clients
/// (batches of ~40) the thread gave 7-19% more puts, at 10 clients (batches of ~5) 3-6% fewer
/// and more CPU; with this split, 10 and 30 clients were as before
/// (tuning/results/2026-11-27-log-sync-thread.md, before small batches' writes became system
/// calls too).
pub const RING_BATCH_REQUESTS_BELOW: usize = 16;
/// Keys a compaction trims per step between apply batches (a few milliseconds of work).
pub const COMPACT_KEYS_PER_STEP: usize = 10_000;
/// Concurrent HTTP/2 streams per client connection (grpc-go's default in etcd is 2^32-1;
/// we bound it so one connection cannot queue unbounded work).
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// HTTP/2 flow-control windows.
pub const H2_STREAM_WINDOW_BYTES: u32 = 1 << 20;
pub const H2_CONN_WINDOW_BYTES: u32 = 8 << 20;
/// Largest HTTP/2 header block accepted from a client.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Largest HTTP/1.1 request head accepted on the client port.
pub const HTTP1_MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most expired leases revoked per expiry check (etcd revokes at most 1000 per second).
pub const LEASE_REVOKES_PER_CHECK: usize = 500;
/// How often the owner shard looks for expired leases.
pub const LEASE_CHECK_INTERVAL_MS: u64 = 500;
/// Events one watch stream takes from the owner per pull (a revision is never split, so one
/// pull may carry more when a single revision is larger).
pub const WATCH_PULL_EVENTS_MAX: usize = 1000;
/// ... and at most about this many bytes of keys and values (whole revisions: the pull ends
/// at the first revision boundary past it): a stream catching up through large values holds
/// one pull's worth, and a response stays under the 4 MiB that gRPC clients accept by default
/// (this plus one revision of at most `--max-request-bytes`, 1.5 MiB by default).
pub const WATCH_PULL_BYTES_MAX: usize = 2 << 20;
/// Watchers one watch stream may hold at once.
pub const WATCHERS_PER_STREAM_MAX: usize = 100_000;

/// A watch stream hands its encoded responses to HTTP/2 in chunks of about this many bytes
/// (all the responses of one pull, up to this): one DATA frame for many small responses.
pub const WATCH_SEND_COALESCE_BYTES: usize = 64 * 1024;

/// A watch stream with at least this many watchers serves those that are level with each
/// other by one pull over all keys, matched to them locally (see server/watch.rs); below it,
/// each watcher pulls its own key range.
pub const WATCH_GROUP_MIN_WATCHERS: usize = 32;

/// Raft messages queued towards one peer; past it, messages are dropped (Raft resends).
pub const PEER_QUEUE_MSGS: usize = 4096;
/// Raft messages and ticks queued towards the Raft loop from the peer links.
pub const RAFT_EVENTS_DEPTH: usize = 4096;
/// Largest frame accepted on a peer link (a batch of entries is cut at 1 MiB by Raft).
pub const PEER_FRAME_BYTES_MAX: usize = 64 << 20;
/// Most uncommitted bytes of proposals a leader holds before it refuses new ones.
pub const RAFT_UNCOMMITTED_BYTES_MAX: u64 = 256 << 20;
/// Most bytes of entries in one append message to a follower.
pub const RAFT_MSG_BYTES_MAX: u64 = 1 << 20;
/// Append messages in flight to one follower (etcd's `--max-inflight-msgs` default 512).
pub const RAFT_INFLIGHT_MSGS: usize = 512;
/// Raft entries kept whole in memory behind the applied index; older ones are kept as their
/// place in the log (12 bytes each) and read back from it when a follower needs them.
pub const RAFT_ENTRIES_WHOLE: u64 = 10_000;

/// Keys a checkpoint's walk takes per step between batches (the loop pauses that long).
pub const CHECKPOINT_KEYS_PER_STEP: usize = 2_000;
/// After each checkpoint step on the owner, the checkpointer waits this many times the step's
/// time (unless somebody waits for the checkpoint): the walk takes at most about 1 / (1 + this)
/// of the owner's time.
pub const CHECKPOINT_PACE: u32 = 3;
/// A checkpoint somebody waits for (a Defragment) waits this fraction of each step's time
/// instead: at most about four fifths of the owner's time (see `server::shard::pace`).
pub const CHECKPOINT_HURRIED_PACE_DIVISOR: u32 = 4;
/// Longest a checkpoint due (or asked for by Defragment or a member's snapshot) waits for a
/// compaction's trimming to end (`KvState::checkpoint_may_begin`).
pub const CHECKPOINT_TRIM_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Default `--read-step-keys`: keys a long Range walks per step between apply batches or Raft
/// loop turns (a few milliseconds).
pub const READ_STEP_KEYS_DEFAULT: usize = 10_000;

/// Default `--checkpoint-min-bytes`: the log grows at least this much between checkpoints.
pub const CHECKPOINT_MIN_BYTES_DEFAULT: u64 = 64 << 20;

/// How often the log's and checkpoint's mapped pages are unmapped (they stay in the page
/// cache): the server's RSS counts the log pages read within about this long, not every page
/// ever read.
pub const RESIDENT_PAGES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Results a Range walked in steps reserves room for once it has counted the keys left, at
/// most (`mvcc::Store::range_step`; address space touched only as results fill it).
pub const RANGE_RESULTS_RESERVE_MAX: usize = 2 << 20;

/// Keys a checkpoint's restore reserves room for up front, at most (one per revision of the
/// checkpoint up to this; address space touched only as keys fill it).
pub const RESTORE_KEYS_RESERVE_MAX: usize = 2 << 20;

/// How long a cluster member asks a keepalive again while there is no leader or it changes,
/// before two election timeouts are added (etcd's LeaseRenew waits up to its request
/// timeout, 5 s plus two election timeouts).
pub const KEEPALIVE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);
/// How often the sweeper of calls' deadlines looks while any is pending, so how late a
/// deadline may be noticed (server/deadline.rs).
pub const DEADLINE_TICK: std::time::Duration = std::time::Duration::from_millis(5);
/// Jobs (a mapping to let go of, or its resident pages) queued for the unmapping thread
/// before a shard does one itself (log/values.rs).
pub const MAPPING_JOBS_QUEUED_MAX: usize = 4096;
