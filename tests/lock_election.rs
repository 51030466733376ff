//! The v3lock and v3election services through the `etcd-client` crate, differentially: one
//! scenario (two lockers, a canceled waiter, a revoked holder; two candidates, proclaim,
//! resign, an observer, the errors) runs against real etcd 3.4 and against ferrocd, and the
//! transcripts (keys, values, revisions, error codes and messages) must be equal. Lease ids are
//! replaced by their names (each server draws its own).

mod common;

use common::{etcd_tools_or_skip, rt, Server};
use etcd_client::{Client, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};
use std::time::Duration;
use tokio::time::timeout;

fn err(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("error {:?}: {}", s.code(), s.message()),
        other => format!("error {other}"),
    }
}

struct Transcript {
    lines: Vec<String>,
    leases: Vec<(i64, &'static str)>,
}

impl Transcript {
    fn push(&mut self, line: String) {
        let mut l = line;
        for (id, name) in &self.leases {
            l = l.replace(&format!("{id:x}"), name);
            l = l.replace(&id.to_string(), name);
        }
        self.lines.push(l);
    }
}

async fn scenario(url: String) -> Vec<String> {
    let mut c = Client::connect([url.clone()], None).await.expect("connect");
    let mut t = Transcript {
        lines: Vec::new(),
        leases: Vec::new(),
    };
    let lease = |c: &mut Client| {
        let mut c = c.clone();
        async move { c.lease_grant(60, None).await.expect("grant").id() }
    };
    let l1 = lease(&mut c).await;
    let l2 = lease(&mut c).await;
    let l3 = lease(&mut c).await;
    t.leases = vec![(l1, "L1"), (l2, "L2"), (l3, "L3")];

    // Two lockers: the second waits until the first unlocks.
    let r = c
        .lock("m", Some(LockOptions::new().with_lease(l1)))
        .await
        .expect("lock 1");
    let k1 = r.key().to_vec();
    t.push(format!(
        "lock m L1: key {} rev {}",
        String::from_utf8_lossy(&k1),
        r.header().unwrap().revision()
    ));
    let mut c2 = c.clone();
    let mut second =
        tokio::spawn(async move { c2.lock("m", Some(LockOptions::new().with_lease(l2))).await });
    let waited = timeout(Duration::from_millis(1000), &mut second)
        .await
        .is_err();
    t.push(format!("second locker still waiting after 1 s: {waited}"));
    let r = c.unlock(k1.clone()).await.expect("unlock");
    t.push(format!("unlock: rev {}", r.header().unwrap().revision()));
    let r = timeout(Duration::from_secs(10), second)
        .await
        .expect("second locker got the lock")
        .expect("task")
        .expect("lock 2");
    let k2 = r.key().to_vec();
    t.push(format!(
        "lock m L2 after unlock: key {} rev {}",
        String::from_utf8_lossy(&k2),
        r.header().unwrap().revision()
    ));
    // Locking again under the same lease is the same acquisition.
    let r = c
        .lock("m", Some(LockOptions::new().with_lease(l2)))
        .await
        .expect("relock");
    t.push(format!(
        "lock m L2 again: key {} rev {}",
        String::from_utf8_lossy(r.key()),
        r.header().unwrap().revision()
    ));
    // A waiter that gives up (its call is canceled) leaves no key behind.
    let mut c3 = c.clone();
    let gave_up = timeout(
        Duration::from_millis(500),
        c3.lock("m", Some(LockOptions::new().with_lease(l3))),
    )
    .await
    .is_err();
    let mut gone = false;
    for _ in 0..50 {
        let r = c.get(format!("m/{l3:x}"), None).await.expect("get");
        if r.kvs().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.push(format!(
        "canceled waiter gave up: {gave_up}; its key removed: {gone}"
    ));
    // A revoked holder's lock passes to the next waiter.
    let mut c4 = c.clone();
    let mut third =
        tokio::spawn(async move { c4.lock("m", Some(LockOptions::new().with_lease(l3))).await });
    let waited = timeout(Duration::from_millis(500), &mut third)
        .await
        .is_err();
    t.push(format!("third locker waiting: {waited}"));
    c.lease_revoke(l2).await.expect("revoke");
    let r = timeout(Duration::from_secs(10), third)
        .await
        .expect("third locker got the lock")
        .expect("task")
        .expect("lock 3");
    t.push(format!(
        "lock m L3 after L2 revoked: key {}",
        String::from_utf8_lossy(r.key())
    ));
    let e = c
        .lock("m", Some(LockOptions::new().with_lease(12345)))
        .await
        .map(|_| ())
        .map_err(err);
    t.push(format!("lock with an unknown lease: {e:?}"));

    // Election.
    let l4 = lease(&mut c).await;
    let l5 = lease(&mut c).await;
    t.leases.extend([(l4, "L4"), (l5, "L5")]);
    let e = c.leader("e").await.map(|_| ()).map_err(err);
    t.push(format!("leader of an empty election: {e:?}"));
    // (etcd sends an Observe stream's headers with its first message, so the call returns
    // only once there is a leader: it runs in its own task.)
    let mut co = c.clone();
    let observer = tokio::spawn(async move {
        let mut obs = co.observe("e").await.expect("observe");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let m = timeout(Duration::from_secs(20), obs.message())
                .await
                .expect("observer in time")
                .expect("observe stream")
                .expect("observe message");
            let kv = m.kv().expect("kv");
            seen.push(format!(
                "observed: {} = {} at {}",
                kv.key_str().unwrap(),
                kv.value_str().unwrap(),
                m.header().unwrap().revision()
            ));
        }
        seen
    });
    // Let the observer's call reach the server before the first candidate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.campaign("e", "v1", l4).await.expect("campaign 1");
    let lead1 = r.leader().expect("leader key").clone();
    t.push(format!(
        "campaign e v1 L4: key {} rev {} lease {} header {}",
        String::from_utf8_lossy(lead1.key()),
        lead1.rev(),
        lead1.lease(),
        r.header().unwrap().revision()
    ));
    let mut c5 = c.clone();
    let mut second = tokio::spawn(async move { c5.campaign("e", "v2", l5).await });
    let waited = timeout(Duration::from_millis(1000), &mut second)
        .await
        .is_err();
    t.push(format!("second candidate waiting: {waited}"));
    let r = c
        .proclaim(
            "v1b",
            Some(ProclaimOptions::new().with_leader(lead1.clone())),
        )
        .await
        .expect("proclaim");
    t.push(format!(
        "proclaim v1b: rev {}",
        r.header().unwrap().revision()
    ));
    let r = c.leader("e").await.expect("leader");
    let kv = r.kv().expect("kv");
    t.push(format!(
        "leader: {} = {} (create {}, mod {})",
        kv.key_str().unwrap(),
        kv.value_str().unwrap(),
        kv.create_revision(),
        kv.mod_revision()
    ));
    let stale = LeaderKey::new()
        .with_name("e")
        .with_key(lead1.key().to_vec())
        .with_rev(lead1.rev() + 100)
        .with_lease(lead1.lease());
    let e = c
        .proclaim("x", Some(ProclaimOptions::new().with_leader(stale)))
        .await
        .map(|_| ())
        .map_err(err);
    t.push(format!("proclaim with a stale leader key: {e:?}"));
    let e = c.proclaim("x", None).await.map(|_| ()).map_err(err);
    t.push(format!("proclaim without a leader key: {e:?}"));
    let r = c
        .resign(Some(ResignOptions::new().with_leader(lead1)))
        .await
        .expect("resign");
    t.push(format!("resign: rev {}", r.header().unwrap().revision()));
    let r = timeout(Duration::from_secs(10), second)
        .await
        .expect("second candidate won")
        .expect("task")
        .expect("campaign 2");
    let lead2 = r.leader().expect("leader key").clone();
    t.push(format!(
        "campaign e v2 L5 after resign: key {} rev {}",
        String::from_utf8_lossy(lead2.key()),
        lead2.rev()
    ));
    // The observer saw v1, v1b and v2, with their revisions.
    let seen = timeout(Duration::from_secs(30), observer)
        .await
        .expect("observer done")
        .expect("observer task");
    for line in seen {
        t.push(line);
    }
    let e = c
        .resign(None)
        .await
        .map(|r| r.header().is_some())
        .map_err(err);
    t.push(format!("resign without a leader key: {e:?}"));
    t.lines
}

#[test]
fn lock_and_election_services_match_etcd() {
    if !etcd_tools_or_skip("lock_and_election_services_match_etcd") {
        return;
    }
    let etcd = Server::etcd(&[]);
    let want = rt().block_on(scenario(etcd.url()));
    drop(etcd);
    // The reference exercised what it claims to.
    assert!(want
        .iter()
        .any(|l| l == "second locker still waiting after 1 s: true"));
    assert!(want.iter().any(|l| l.starts_with("observed: e/L5 = v2")));

    // On the default placement (the connection on the shard holding the state), and on a shard
    // that forwards every request and learns of new revisions by notes (its waiters are woken
    // by them; no note is sent while it has none).
    for flags in [
        &[][..],
        &["--shards", "2", "--connection-placement", "others"][..],
    ] {
        let ferrocd = Server::ferrocd(flags);
        let got = rt().block_on(scenario(ferrocd.url()));
        if std::env::var("DUMP_STEPS").is_ok() {
            eprintln!("{}", got.join("\n"));
        }
        let mut report = String::new();
        for i in 0..want.len().max(got.len()) {
            let w = want.get(i).map_or("<none>", String::as_str);
            let g = got.get(i).map_or("<none>", String::as_str);
            if w != g {
                report.push_str(&format!("\n  etcd:    {w}\n  ferrocd: {g}"));
            }
        }
        assert!(
            report.is_empty(),
            "transcripts differ with {flags:?}:{report}"
        );
    }
}
