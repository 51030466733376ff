//! Leases: which exist, their TTLs and when they expire (etcd's `lessor`).
//!
//! Granting and revoking go through the log like any write, so the set of leases and the keys
//! attached to them (kept by the MVCC store) are rebuilt by replay. Expiry deadlines are kept
//! in memory: after a restart every lease gets its full TTL again, as etcd does. In a cluster
//! the leader logs checkpoints of its deadlines, so a new leader keeps them (plus an election
//! timeout) instead of resetting them. The leader (or single member) checks deadlines
//! periodically and logs a revoke of the expired ones, so expiry is a logged event as well and
//! a replay never depends on the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::EtcdError;

/// etcd's MaxLeaseTTL: 9,000,000,000 seconds.
pub const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

/// etcd's minimum TTL with its default heartbeat (100 ms) and election timeout (1000 ms):
/// ceil(3/2 * election ticks * heartbeat) = 2 seconds. A shorter TTL is raised to it.
pub const MIN_LEASE_TTL_SECONDS: i64 = 2;

#[derive(Clone, Debug)]
struct Lease {
    /// Granted TTL in seconds (after the minimum is applied).
    ttl: i64,
    expiry: Instant,
}

/// The leases of the store.
#[derive(Debug)]
pub struct Lessor {
    leases: HashMap<i64, Lease>,
    /// Leases renewed since the last checkpoint (a cluster's leader logs their remaining TTL,
    /// see [`Lessor::take_checkpoint`]).
    renewed: std::collections::HashSet<i64>,
    min_ttl: i64,
    /// etcd's idutil.Generator: member id in the top 16 bits, then milliseconds and a count.
    id_prefix: u64,
    id_suffix: u64,
}

impl Lessor {
    pub fn new(member_id: u64) -> Lessor {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Lessor {
            leases: HashMap::new(),
            renewed: Default::default(),
            min_ttl: MIN_LEASE_TTL_SECONDS,
            id_prefix: member_id << 48,
            id_suffix: (millis & ((1 << 40) - 1)) << 8,
        }
    }

    /// A lease ID no lease has: positive, non-zero (etcd's choice for a grant without one).
    pub fn assign_id(&mut self) -> i64 {
        loop {
            self.id_suffix = self.id_suffix.wrapping_add(1);
            let id =
                ((self.id_prefix | (self.id_suffix & ((1 << 48) - 1))) & (i64::MAX as u64)) as i64;
            if id != 0 && !self.leases.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Grants lease `id`; returns its TTL (raised to the minimum).
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) -> Result<i64, EtcdError> {
        if id == 0 {
            return Err(EtcdError::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL_SECONDS {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExist);
        }
        let ttl = ttl.max(self.min_ttl);
        self.leases.insert(
            id,
            Lease {
                ttl,
                expiry: now + secs(ttl),
            },
        );
        Ok(ttl)
    }

    /// Forgets lease `id` (the caller deletes its keys).
    pub fn revoke(&mut self, id: i64) -> Result<(), EtcdError> {
        self.renewed.remove(&id);
        self.leases
            .remove(&id)
            .map(drop)
            .ok_or(EtcdError::LeaseNotFound)
    }

    /// A keepalive: the lease lives its whole TTL again from `now`. An expired lease waiting
    /// for its revoke is not renewed (etcd answers as if it did not exist).
    pub fn renew(&mut self, id: i64, now: Instant) -> Result<i64, EtcdError> {
        match self.leases.get_mut(&id) {
            Some(l) if l.expiry > now => {
                l.expiry = now + secs(l.ttl);
                self.renewed.insert(id);
                Ok(l.ttl)
            }
            _ => Err(EtcdError::LeaseNotFound),
        }
    }

    /// A keepalive applied on a member that does not decide expiry (a follower): the lease
    /// lives its whole TTL again from `now` if it exists at all (the leader decides whether it
    /// had expired, and revokes it through the log if so).
    pub fn renew_existing(&mut self, id: i64, now: Instant) -> Result<i64, EtcdError> {
        let l = self.leases.get_mut(&id).ok_or(EtcdError::LeaseNotFound)?;
        l.expiry = now + secs(l.ttl);
        Ok(l.ttl)
    }

    /// A member became leader: each lease keeps the deadline this member knows (from its
    /// grant, logged keepalives and the old leader's checkpoints), plus `extend`, and never
    /// less than `extend` from now. With checkpoints at least once per `extend`, that deadline
    /// is at most `extend` earlier than the old leader's, so no lease expires before its time
    /// and none lives more than about two `extend` longer (etcd without checkpoints gives each
    /// lease its whole TTL again).
    pub fn promote(&mut self, now: Instant, extend: std::time::Duration) {
        for l in self.leases.values_mut() {
            l.expiry = l.expiry.max(now) + extend;
        }
        self.renewed.clear();
    }

    /// The leases renewed since the last call, with the milliseconds each has left: the
    /// leader logs them so that the other members know the deadlines.
    pub fn take_checkpoint(&mut self, now: Instant) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = self
            .renewed
            .drain()
            .filter_map(|id| {
                let l = self.leases.get(&id)?;
                Some((
                    id,
                    l.expiry.saturating_duration_since(now).as_millis() as i64,
                ))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// A checkpoint applied: lease `id` has `left_ms` left from `now` (unknown ids are
    /// skipped: revoked meanwhile).
    pub fn checkpoint(&mut self, id: i64, left_ms: i64, now: Instant) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.expiry = now + Duration::from_millis(left_ms.max(0) as u64);
        }
    }

    /// (granted TTL, whole seconds left) of lease `id`.
    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        let l = self.leases.get(&id)?;
        let left = l.expiry.saturating_duration_since(now).as_secs() as i64;
        Some((l.ttl, left))
    }

    /// Every lease ID, in order.
    /// Every lease and its granted TTL, in ID order (a checkpoint's).
    pub fn granted(&self) -> Vec<(i64, i64)> {
        let mut v: Vec<(i64, i64)> = self.leases.iter().map(|(&id, l)| (id, l.ttl)).collect();
        v.sort_unstable();
        v
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Up to `max` leases whose deadline has passed, in ID order.
    pub fn expired(&self, now: Instant, max: usize) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expiry <= now)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids.truncate(max);
        ids
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_carry_deadlines_to_a_new_leader() {
        let t0 = Instant::now();
        let mut leader = Lessor::new(1);
        let mut follower = Lessor::new(2);
        for l in [&mut leader, &mut follower] {
            l.grant(7, 10, t0).unwrap();
            l.grant(8, 10, t0).unwrap();
        }
        // Lease 7 is renewed at the leader 4 s later; 8 is not.
        let t4 = t0 + Duration::from_secs(4);
        leader.renew(7, t4).unwrap();
        let c = leader.take_checkpoint(t4);
        assert_eq!(c, [(7, 10_000)]);
        assert!(leader.take_checkpoint(t4).is_empty(), "drained");
        for (id, ms) in c {
            follower.checkpoint(id, ms, t4);
        }
        // The follower becomes leader at 5 s, adding a 1 s election timeout.
        let t5 = t0 + Duration::from_secs(5);
        follower.promote(t5, Duration::from_secs(1));
        assert_eq!(
            follower.time_to_live(7, t5),
            Some((10, 10)),
            "4 + 10 + 1 - 5"
        );
        assert_eq!(
            follower.time_to_live(8, t5),
            Some((10, 6)),
            "0 + 10 + 1 - 5, not reset"
        );
        // A lease whose deadline passed gets the election timeout, no more.
        let t20 = t0 + Duration::from_secs(20);
        follower.promote(t20, Duration::from_secs(1));
        assert_eq!(
            follower.expired(t20 + Duration::from_millis(1500), 10),
            [7, 8]
        );
        // A revoked lease leaves the checkpoint set.
        leader.renew(8, t4).unwrap();
        leader.revoke(8).unwrap();
        assert!(leader.take_checkpoint(t4).is_empty());
    }

    #[test]
    fn grant_renew_expire_revoke() {
        let mut l = Lessor::new(0x8e9e05c52164694d);
        let t0 = Instant::now();
        let id = l.assign_id();
        assert!(id > 0);
        assert_eq!(id as u64 >> 48, 0x694d, "member id in the top bits");
        assert_eq!(l.grant(id, 1, t0), Ok(MIN_LEASE_TTL_SECONDS));
        assert_eq!(l.grant(id, 5, t0), Err(EtcdError::LeaseExist));
        assert_eq!(
            l.grant(7, MAX_LEASE_TTL_SECONDS + 1, t0),
            Err(EtcdError::LeaseTtlTooLarge)
        );
        assert_eq!(l.time_to_live(id, t0), Some((2, 2)));
        assert!(l.expired(t0 + secs(1), 10).is_empty());
        assert_eq!(l.renew(id, t0 + secs(1)), Ok(2));
        assert!(l.expired(t0 + secs(2), 10).is_empty(), "renewed at 1 s");
        assert_eq!(l.expired(t0 + secs(3), 10), vec![id]);
        assert_eq!(l.renew(id, t0 + secs(3)), Err(EtcdError::LeaseNotFound));
        assert_eq!(l.revoke(id), Ok(()));
        assert_eq!(l.revoke(id), Err(EtcdError::LeaseNotFound));
        assert_ne!(l.assign_id(), l.assign_id());
    }
}
