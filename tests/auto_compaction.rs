//! `--auto-compaction-mode periodic --auto-compaction-retention 2s` on etcd and on ferrocd:
//! history older than the retention becomes unreadable ("required revision has been
//! compacted") after the first period, not before, and recent history stays readable.

mod common;

use common::{etcd_tools_or_skip, etcdctl, Server};
use std::time::{Duration, Instant};

fn scenario(server: &Server) {
    let kind = server.kind;
    let ep = server.endpoint();
    let t0 = Instant::now();
    assert_eq!(etcdctl(&ep, &["put", "k", "v1"], "").code, 0);
    let mut compacted = None;
    while t0.elapsed() < Duration::from_secs(20) {
        assert_eq!(etcdctl(&ep, &["put", "k", "again"], "").code, 0);
        let o = etcdctl(&ep, &["get", "k", "--rev=2"], "");
        if o.code != 0 {
            assert!(
                o.stderr.contains("required revision has been compacted"),
                "{kind}: {o:?}"
            );
            compacted = Some(t0.elapsed());
            break;
        }
        assert!(o.stdout.contains("v1"), "{kind}: {o:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let at = compacted.unwrap_or_else(|| panic!("{kind}: revision 2 still readable after 20 s"));
    assert!(
        at >= Duration::from_secs(2),
        "{kind}: compacted after {at:?}, before the 2 s retention"
    );
    // The latest revision is still readable.
    let o = etcdctl(&ep, &["get", "k"], "");
    assert!(o.stdout.contains("again"), "{kind}: {o:?}");
    eprintln!("{kind}: revision 2 compacted {at:?} after it was written");
}

#[test]
fn periodic_auto_compaction_on_etcd_and_ferrocd() {
    if !etcd_tools_or_skip("periodic_auto_compaction") {
        return;
    }
    let flags = [
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "2s",
    ];
    scenario(&Server::etcd(&flags));
    scenario(&Server::ferrocd(&flags));
}
