//! ferrocd: an etcd v3 compatible key-value store, built thread-per-core on glommio.
//!
//! Layers, from the inside out (see ARCHITECTURE.md):
//! - [`mvcc`]: the pure multi-version index with etcd's revision semantics; no I/O.
//! - [`kv`]: executes decoded etcd requests against the index on the shard that owns the state.
//! - [`server`]: glommio shards, HTTP/2 + gRPC framing, cross-shard forwarding.
//! - [`config`]: etcd's configuration keys, from a YAML file and from flags.
//! - [`client`] and [`ctl`]: the gRPC client and the `ferroctl` command line.

pub mod auth;
pub mod client;
pub mod compactor;
pub mod config;
pub mod consensus;
pub mod ctl;
pub mod error;
pub mod kv;
pub mod lease;
pub mod limits;
pub mod linearizability;
pub mod log;
pub mod mvcc;
pub mod server;
#[cfg(test)]
mod sim;
pub mod watch_check;

pub use ferrocd_proto as proto;
