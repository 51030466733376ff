//! Executes decoded etcd requests on the shard that owns the state.
//!
//! The server layer decodes a gRPC payload on whichever shard accepted the connection, sends the
//! decoded [`Request`] to the owner shard over a bounded channel, and the owner calls
//! [`KvState::execute`]. The response travels back and is encoded by the accepting shard.
//! Nothing here touches sockets, files or clocks.

use crate::error::EtcdError;
use crate::proto::etcdserverpb as pb;

/// A request the owner shard executes.
#[derive(Debug)]
pub enum Request {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    DeleteRange(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    Status(pb::StatusRequest),
    MemberList(pb::MemberListRequest),
    Alarm(pb::AlarmRequest),
}

/// The owner shard's answer to a [`Request`], same variant.
#[derive(Debug)]
pub enum Response {
    Range(pb::RangeResponse),
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compact(pb::CompactionResponse),
    Status(pb::StatusResponse),
    MemberList(pb::MemberListResponse),
    Alarm(pb::AlarmResponse),
}

pub type Result<T> = std::result::Result<T, EtcdError>;

/// Who this member is, as reported in response headers, Status and MemberList.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// Options of the executor (flags of the same names in etcd).
#[derive(Clone, Debug)]
pub struct KvOptions {
    pub identity: Identity,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
}

/// The state owned by one shard: the MVCC index and the member's metadata.
pub struct KvState {
    opts: KvOptions,
}

impl KvState {
    pub fn new(opts: KvOptions) -> KvState {
        KvState { opts }
    }

    pub fn options(&self) -> &KvOptions {
        &self.opts
    }

    /// Executes one request. Expected failures come back as etcd errors.
    pub fn execute(&mut self, req: Request) -> Result<Response> {
        let _ = req;
        Err(EtcdError::Stopped)
    }
}
