//! Maintenance/Snapshot: the live key space at one revision, streamed in chunks.
//!
//! The snapshot is read through ordinary Range calls at a fixed revision, a thousand keys at a
//! time, so the owner shard never builds it in memory and writes go on while it streams (MVCC
//! keeps that revision readable unless a compaction passes it, which fails the snapshot). Its
//! bytes are in the log's record format (docs/snapshot-format.md): a header record, one record
//! per key-value (protobuf `mvccpb.KeyValue`), and a commit record closing them, so a reader
//! checks every record's CRC and knows whether it has the whole snapshot. As etcd's do, the
//! bytes end with zero padding to a multiple of 512 and a SHA-256 of everything before it
//! (etcdctl checks for that trailer when it saves a snapshot).

use bytes::{BufMut, Bytes};
use prost::Message;
use sha2::{Digest, Sha256};

use super::stream::Sink;
use super::{grpc, ShardCtx};
use crate::error::Status;
use crate::log::record::{self, Kind};
use crate::proto::etcdserverpb as pb;

/// First bytes of the header record's payload.
pub const SNAPSHOT_MAGIC: &[u8] = b"ferrocd-snapshot-v1\0";
/// Keys read per Range call.
const KEYS_PER_READ: i64 = 1000;
/// Bytes of records gathered before a chunk is sent.
const CHUNK_BYTES: usize = 64 * 1024;

async fn range(ctx: &ShardCtx, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
    ctx.owner.range(r).await
}

/// Streams the snapshot on `out`. An error before the first chunk is the call's status; after
/// it, the stream ends with the error status, and the client's checksum check fails too.
pub(crate) async fn serve(out: &mut impl Sink, ctx: &ShardCtx) {
    if let Err(status) = stream(out, ctx).await {
        out.finish(Some(status)).await;
    }
}

async fn stream(out: &mut impl Sink, ctx: &ShardCtx) -> Result<(), Status> {
    let all = |from: Bytes, revision: i64, count_only: bool| pb::RangeRequest {
        key: from,
        range_end: Bytes::from_static(b"\0"),
        revision,
        limit: if count_only { 0 } else { KEYS_PER_READ },
        count_only,
        ..Default::default()
    };
    let first = range(ctx, all(Bytes::from_static(b"\0"), 0, true)).await?;
    let header = first.header;
    let revision = header.map_or(0, |h| h.revision);
    let gone = |_| Status::new(crate::error::Code::Canceled, "context canceled");
    out.open().await.map_err(gone)?;
    let mut seq = 1u64;
    let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
    let mut head = SNAPSHOT_MAGIC.to_vec();
    head.put_i64_le(revision);
    head.put_i64_le(first.count);
    record::encode(&mut buf, seq, Kind::Data, &head);
    seq += 1;
    let mut from = Bytes::from_static(b"\0");
    let mut sent_header = false;
    let mut sent_bytes = 0usize;
    let mut sha = Sha256::new();
    loop {
        let page = range(ctx, all(from.clone(), revision, false)).await?;
        for kv in &page.kvs {
            record::encode(&mut buf, seq, Kind::Data, &kv.encode_to_vec());
            seq += 1;
        }
        let done = !page.more;
        if let Some(last) = page.kvs.last() {
            let mut next = last.key.to_vec();
            next.push(0);
            from = Bytes::from(next);
        }
        if done {
            record::encode_commit(&mut buf, seq, 1);
            // etcd's trailer: pad to 512 (zeros end the records), then the SHA-256.
            let total = sent_bytes + buf.len();
            buf.resize(buf.len() + total.next_multiple_of(512) - total, 0);
            sha.update(&buf);
            let digest = sha.clone().finalize();
            buf.extend_from_slice(&digest);
        } else if buf.len() >= CHUNK_BYTES {
            sha.update(&buf);
        }
        if buf.len() >= CHUNK_BYTES || done {
            let msg = pb::SnapshotResponse {
                header: if sent_header { None } else { header },
                remaining_bytes: 0,
                blob: Bytes::from(std::mem::take(&mut buf)),
                version: String::new(),
            };
            sent_header = true;
            sent_bytes += msg.blob.len();
            out.send(grpc::frame(&msg)).await.map_err(gone)?;
        }
        if done {
            break;
        }
    }
    out.finish(None).await;
    Ok(())
}
