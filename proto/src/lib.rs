//! The etcd v3 API as Rust types.
//!
//! The .proto files under `etcd/` are ferrocd's own declarations with etcd 3.5's packages,
//! message names, field names and numbers, so that the wire format is identical and real etcd
//! clients talk to ferrocd unchanged. They are compiled at build time by protox (no system
//! protoc needed) and prost; every `bytes` field is a `bytes::Bytes`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

/// The encoded `FileDescriptorSet` of every file (for the JSON gateway's field names).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

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
        // field 5 varint 2, field 6 varint 3, field 13 varint 1
        assert_eq!(
            req.encode_to_vec(),
            [0x0a, 1, b'a', 0x28, 2, 0x30, 3, 0x68, 1]
        );
        let c = Compare {
            key: Bytes::from_static(b"k"),
            target: compare::CompareTarget::Mod as i32,
            target_union: Some(compare::TargetUnion::ModRevision(6)),
            range_end: Bytes::from_static(b"z"),
            ..Default::default()
        };
        // field 2 varint 2, field 3 LEN, field 6 varint 6, field 64 LEN (tag 0x82 0x04)
        assert_eq!(
            c.encode_to_vec(),
            [0x10, 2, 0x1a, 1, b'k', 0x30, 6, 0x82, 0x04, 1, b'z']
        );
    }

    #[test]
    fn descriptor_set_is_embedded() {
        assert!(super::FILE_DESCRIPTOR_SET.len() > 1000);
        assert_eq!(super::FILE_DESCRIPTOR_SET[0], 0x0a);
    }
}
