//! The etcd v3 API as Rust types.
//!
//! The .proto files under `etcd/` are ferrocd's own declarations with etcd 3.5's packages,
//! message names, field names and numbers, so that the wire format is identical and real etcd
//! clients talk to ferrocd unchanged. They are compiled at build time by protox (no system
//! protoc needed) and prost; every `bytes` field is a `bytes::Bytes`.
//!
//! The modules are siblings named after the proto packages because the generated code of
//! `etcdserverpb` refers to `super::mvccpb` and `super::authpb` (and the election and lock
//! services to `super::etcdserverpb`). Field names are prost's snake case of etcd's names:
//! `ID` is `id`, `TTL` is `ttl`, `dbSize` is `db_size`, and `peerURLs`/`clientURLs` become
//! `peer_ur_ls`/`client_ur_ls`.

/// Key-values and watch events (`mvccpb`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::doc_lazy_continuation,
    missing_docs
)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Users, roles and permissions (`authpb`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::doc_lazy_continuation,
    missing_docs
)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// The KV, Watch, Lease, Cluster, Maintenance and Auth services (`etcdserverpb`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::doc_lazy_continuation,
    missing_docs
)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// The Election service (`v3electionpb`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::doc_lazy_continuation,
    missing_docs
)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// The Lock service (`v3lockpb`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::doc_lazy_continuation,
    missing_docs
)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

#[cfg(test)]
mod tests {
    use super::etcdserverpb::*;
    use bytes::Bytes;
    use prost::Message;

    #[test]
    fn put_request_wire_format_is_etcds() {
        let req = PutRequest {
            key: Bytes::from_static(b"foo"),
            value: Bytes::from_static(b"bar"),
            lease: 5,
            prev_kv: true,
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        // field 1 LEN "foo", field 2 LEN "bar", field 3 varint 5, field 4 varint 1
        assert_eq!(
            bytes,
            [0x0a, 3, b'f', b'o', b'o', 0x12, 3, b'b', b'a', b'r', 0x18, 5, 0x20, 1]
        );
        assert_eq!(PutRequest::decode(&bytes[..]).unwrap(), req);
    }

    #[test]
    fn range_and_compare_wire_format_is_etcds() {
        let req = RangeRequest {
            key: Bytes::from_static(b"a"),
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Mod as i32,
            max_create_revision: 1,
            ..Default::default()
        };
        // field 1 LEN "a", field 5 varint 2, field 6 varint 3, field 13 varint 1 (tag 13 << 3 = 0x68)
        let bytes = req.encode_to_vec();
        assert_eq!(bytes, [0x0a, 1, b'a', 0x28, 2, 0x30, 3, 0x68, 1]);
        let back = RangeRequest::decode(&bytes[..]).unwrap();
        assert_eq!(back.sort_order(), range_request::SortOrder::Descend);
        assert_eq!(back.sort_target(), range_request::SortTarget::Mod);
        assert_eq!(back, req);

        let c = Compare {
            key: Bytes::from_static(b"k"),
            target: compare::CompareTarget::Mod as i32,
            target_union: Some(compare::TargetUnion::ModRevision(6)),
            range_end: Bytes::from_static(b"z"),
            ..Default::default()
        };
        // result EQUAL(0) is omitted; field 2 varint 2, field 3 LEN "k", field 6 varint 6,
        // field 64 LEN "z" (tag 64 << 3 | 2 = 514, varint 0x82 0x04)
        let bytes = c.encode_to_vec();
        assert_eq!(
            bytes,
            [0x10, 2, 0x1a, 1, b'k', 0x30, 6, 0x82, 0x04, 1, b'z']
        );
        let back = Compare::decode(&bytes[..]).unwrap();
        assert_eq!(back.result(), compare::CompareResult::Equal);
        assert_eq!(
            back.target_union,
            Some(compare::TargetUnion::ModRevision(6))
        );
        assert_eq!(back, c);
    }

    #[test]
    fn oneofs_and_packed_enums() {
        // RequestOp.request_put is field 2; the nested PutRequest has key "k" only.
        let op = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            })),
        };
        let bytes = op.encode_to_vec();
        assert_eq!(bytes, [0x12, 3, 0x0a, 1, b'k']);
        assert_eq!(RequestOp::decode(&bytes[..]).unwrap(), op);

        // WatchRequest.create_request is field 1; filters (field 5) is a packed repeated enum.
        let w = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    filters: vec![watch_create_request::FilterType::Nodelete as i32],
                    watch_id: 7,
                    ..Default::default()
                },
            )),
        };
        let bytes = w.encode_to_vec();
        assert_eq!(bytes, [0x0a, 5, 0x2a, 1, 1, 0x38, 7]);
        assert_eq!(WatchRequest::decode(&bytes[..]).unwrap(), w);
    }

    #[test]
    fn bytes_fields_decode_without_copying() {
        let buf = Bytes::from(
            PutRequest {
                key: Bytes::from_static(b"key"),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let req = PutRequest::decode(buf.clone()).unwrap();
        // The decoded key points into the input buffer.
        assert_eq!(req.key.as_ptr(), buf[2..].as_ptr());
    }

    /// The JSON mapping is the one etcd's gateway answers with (outputs of etcd 3.4.23).
    #[test]
    fn json_is_etcd_gateways() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 10276657743932975437,
                revision: 3,
                raft_term: 2,
            }),
            kvs: vec![super::mvccpb::KeyValue {
                key: Bytes::from_static(b"foo"),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                value: Bytes::from_static(b"bar"),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"3","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmFy"}],"count":"1"}"#
        );
        let ttl = LeaseTimeToLiveResponse {
            id: 7,
            ttl: 29,
            granted_ttl: 30,
            keys: vec![Bytes::from_static(b"lk")],
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&ttl).unwrap(),
            r#"{"ID":"7","TTL":"29","grantedTTL":"30","keys":["bGs="]}"#
        );
        // Requests: proto and JSON names, 64-bit integers as strings or numbers, enums by
        // name, unknown fields ignored.
        let req: RangeRequest = serde_json::from_str(
            r#"{"key":"Zm9v","countOnly":true,"revision":"7","limit":2,"sort_order":"DESCEND","bogus":1}"#,
        )
        .unwrap();
        assert_eq!(&req.key[..], b"foo");
        assert!(req.count_only);
        assert_eq!((req.revision, req.limit), (7, 2));
        assert_eq!(req.sort_order, range_request::SortOrder::Descend as i32);
        let txn: TxnRequest = serde_json::from_str(
            r#"{"compare":[{"target":"VALUE","key":"Zm9v","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}]}"#,
        )
        .unwrap();
        assert_eq!(txn.compare[0].target, compare::CompareTarget::Value as i32);
        assert!(matches!(
            txn.success[0].request,
            Some(request_op::Request::RequestPut(_))
        ));
        assert!(serde_json::from_str::<RangeRequest>(r#"{"sort_order":"BOGUS"}"#).is_err());
        assert!(serde_json::from_str::<RangeRequest>(r#"{"limit":1.5}"#).is_err());
    }
}
