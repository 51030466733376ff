//! `etcdctl snapshot save` against ferrocd: the server-streaming Maintenance/Snapshot. The
//! saved file must carry etcd's SHA-256 trailer, and its records (docs/snapshot-format.md)
//! must hold exactly the key space at the snapshot's revision.

mod common;

use common::{etcd_tools_or_skip, etcdctl, Server};
use etcd_client::{Client, GetOptions};
use ferrocd::log::record::{self, Kind};
use ferrocd::proto::mvccpb::KeyValue;
use prost::Message;
use sha2::{Digest, Sha256};

#[test]
fn snapshot_save_holds_the_key_space() {
    if !etcd_tools_or_skip("snapshot_save_holds_the_key_space") {
        return;
    }
    let server = Server::ferrocd(&[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // ~1.5 MB of values: the snapshot spans many chunks.
    let expected = rt.block_on(async {
        let mut c = Client::connect([server.url()], None).await.unwrap();
        for i in 0..3000 {
            let value = format!("{i}-").repeat(1 + i % 200);
            c.put(format!("key/{i:05}"), value, None).await.unwrap();
        }
        c.delete("key/00007", None).await.unwrap();
        c.get("\0", Some(GetOptions::new().with_from_key()))
            .await
            .unwrap()
    });
    let path = server.dir.path().join("snap.db");
    let out = etcdctl(
        &server.endpoint(),
        &["snapshot", "save", path.to_str().unwrap()],
        "",
    );
    assert_eq!(out.code, 0, "{out:?}");
    let bytes = std::fs::read(&path).unwrap();
    // etcd's trailer: a multiple of 512, then the SHA-256 of it.
    let (content, digest) = bytes.split_at(bytes.len() - 32);
    assert_eq!(content.len() % 512, 0);
    assert_eq!(&Sha256::digest(content)[..], digest);
    let scan = record::scan(content, 1).expect("a clean snapshot");
    assert_eq!(
        scan.records.len(),
        1 + expected.kvs().len(),
        "header + every key"
    );
    let payload = |off: usize| record::decode(&content[off..]).unwrap().payload;
    let head = payload(scan.records[0].0);
    assert!(head.starts_with(ferrocd::server::SNAPSHOT_MAGIC));
    let n = ferrocd::server::SNAPSHOT_MAGIC.len();
    let revision = i64::from_le_bytes(head[n..n + 8].try_into().unwrap());
    assert_eq!(revision, expected.header().unwrap().revision());
    for ((off, _), want) in scan.records[1..].iter().zip(expected.kvs()) {
        let r = record::decode(&content[*off..]).unwrap();
        assert_eq!(r.kind, Kind::Data);
        let kv = KeyValue::decode(r.payload).unwrap();
        assert_eq!(&kv.key[..], want.key());
        assert_eq!(&kv.value[..], want.value());
        assert_eq!(kv.mod_revision, want.mod_revision());
    }
}
