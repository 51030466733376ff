//! Leases: which exist, their TTLs and when they expire (etcd's `lessor`).
//!
//! Granting and revoking go through the log like any write, so the set of leases and the keys
//! attached to them (kept by the MVCC store) are rebuilt by replay. Expiry deadlines are kept
//! in memory: after a restart every lease gets its full TTL again, as etcd does. A single
//! member renews a lease in memory. In a cluster every keepalive is logged and renews the lease
//! on every member as it is applied, so a new leader knows each deadline (and adds an election
//! timeout) instead of resetting them; an expiry names the leader's applied index when it
//! decided, and spares a lease renewed by an entry after it (which the leader had not seen).
//! The leader (or single member) checks deadlines periodically and logs a revoke of the
//! expired ones, so expiry is a logged event as well and a replay never depends on the clock.

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
    /// The log index of the last logged keepalive (or grant) in a cluster; 0 if none.
    renewed_at: u64,
}

/// The leases of the store.
#[derive(Debug)]
pub struct Lessor {
    leases: HashMap<i64, Lease>,
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
                renewed_at: 0,
            },
        );
        Ok(ttl)
    }

    /// Forgets lease `id` (the caller deletes its keys).
    pub fn revoke(&mut self, id: i64) -> Result<(), EtcdError> {
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
                Ok(l.ttl)
            }
            _ => Err(EtcdError::LeaseNotFound),
        }
    }

    /// A keepalive (or grant) applied from entry `index` of a cluster's log: the lease lives
    /// its whole TTL again from `now` if it exists at all, on every member alike (whether it
    /// had lapsed is the leader's to decide, and an expiry decided before `index` was applied
    /// spares it: [`Lessor::renewed_after`]). Old logs have keepalives of followers only.
    pub fn renew_logged(&mut self, id: i64, now: Instant, index: u64) -> Result<i64, EtcdError> {
        let l = self.leases.get_mut(&id).ok_or(EtcdError::LeaseNotFound)?;
        l.expiry = now + secs(l.ttl);
        l.renewed_at = index;
        Ok(l.ttl)
    }

    /// Whether lease `id` was renewed by a logged keepalive after log index `seen`.
    pub fn renewed_after(&self, id: i64, seen: u64) -> bool {
        self.leases.get(&id).is_some_and(|l| l.renewed_at > seen)
    }

    /// (lease, index of its last logged renewal) for the leases renewed through a cluster's
    /// log: a checkpoint keeps them, so that a member restored from it decides an expiry as the
    /// others do.
    pub fn renewals(&self) -> Vec<(i64, u64)> {
        let mut v: Vec<(i64, u64)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.renewed_at > 0)
            .map(|(&id, l)| (id, l.renewed_at))
            .collect();
        v.sort_unstable();
        v
    }

    /// Lease `id` was last renewed through the log at `index` (its grant; or a checkpoint's
    /// [`Lessor::renewals`], restored).
    pub fn mark_renewed(&mut self, id: i64, index: u64) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.renewed_at = index;
        }
    }

    /// A member became leader: each lease keeps the deadline this member knows (from its
    /// grant and the logged keepalives, each applied no earlier than its client sent it),
    /// plus `extend`, and never less than `extend` from now. So no lease expires sooner than
    /// its TTL after a keepalive that was acknowledged, and none lives more than about
    /// `extend` longer (etcd 3.4 gives each lease its whole TTL again).
    pub fn promote(&mut self, now: Instant, extend: std::time::Duration) {
        for l in self.leases.values_mut() {
            l.expiry = l.expiry.max(now) + extend;
        }
    }

    /// A lease checkpoint applied (logs written before keepalives were logged on the leader
    /// have them): lease `id` has `left_ms` left from `now` (unknown ids are skipped: revoked
    /// meanwhile).
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
    fn logged_keepalives_carry_deadlines_to_a_new_leader() {
        let t0 = Instant::now();
        let mut leader = Lessor::new(1);
        let mut follower = Lessor::new(2);
        for l in [&mut leader, &mut follower] {
            l.grant(7, 10, t0).unwrap();
            l.grant(8, 10, t0).unwrap();
        }
        // A keepalive of lease 7 logged at index 40, applied at 4 s; 8 is not renewed.
        let t4 = t0 + Duration::from_secs(4);
        for l in [&mut leader, &mut follower] {
            assert_eq!(l.renew_logged(7, t4, 40), Ok(10));
        }
        assert_eq!(
            follower.renew_logged(9, t4, 41),
            Err(EtcdError::LeaseNotFound)
        );
        assert!(follower.renewed_after(7, 39) && !follower.renewed_after(7, 40));
        assert!(
            !follower.renewed_after(8, 0),
            "never renewed through the log"
        );
        assert_eq!(follower.renewals(), [(7, 40)]);
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
        // A checkpoint's renewals restored on a member that rebuilt its leases from a grant.
        let mut restored = Lessor::new(3);
        restored.grant(7, 10, t20).unwrap();
        for (id, index) in follower.renewals() {
            restored.mark_renewed(id, index);
        }
        assert!(restored.renewed_after(7, 39) && !restored.renewed_after(7, 40));
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
