//! Automatic compaction, as etcd's `--auto-compaction-mode` and `--auto-compaction-retention`
//! do it (etcd's v3compactor): the decisions are here, free of time and I/O, so they are
//! tested with a simulated clock; the server's task only sleeps and sends Compact requests.
//!
//! - **periodic** (retention a duration): every tenth of the period (at most 6 minutes) the
//!   current revision is sampled; once the first period has passed, and then every period
//!   (at most an hour), the store is compacted at the revision sampled one period ago.
//! - **revision** (retention a number of revisions): every 5 minutes, compact at the current
//!   revision minus the retention, unless that is not positive or was already done.

use std::collections::VecDeque;
use std::time::Duration;

/// What the configuration asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AutoCompaction {
    #[default]
    Off,
    Periodic(Duration),
    Revision(i64),
}

const HOUR: Duration = Duration::from_secs(3600);

/// How often the revision compactor looks (etcd's revInterval).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(300);

/// etcd's Periodic compactor, driven by `tick`.
pub struct Periodic {
    period: Duration,
    /// Revisions sampled every `retry_interval`, oldest first; the first is one period old.
    revs: VecDeque<i64>,
    retentions: usize,
    /// Time (since the start) of the last successful compaction, or of the start.
    last_success: Duration,
    /// The first compaction waits a whole period; later ones `compact_interval`.
    base_interval: Duration,
}

impl Periodic {
    pub fn new(period: Duration) -> Periodic {
        let retentions =
            (period.as_nanos() / Self::retry_interval_of(period).as_nanos().max(1)) as usize + 1;
        Periodic {
            period,
            revs: VecDeque::with_capacity(retentions + 1),
            retentions,
            last_success: Duration::ZERO,
            base_interval: period,
        }
    }

    fn retry_interval_of(period: Duration) -> Duration {
        period.min(HOUR) / 10
    }

    /// How long to sleep between ticks.
    pub fn retry_interval(&self) -> Duration {
        Self::retry_interval_of(self.period).max(Duration::from_millis(1))
    }

    /// Records the current revision (called every `retry_interval`, before sleeping).
    pub fn sample(&mut self, current_rev: i64) {
        self.revs.push_back(current_rev);
        if self.revs.len() > self.retentions {
            self.revs.pop_front();
        }
    }

    /// After sleeping `retry_interval`: the revision to compact at now, if any.
    pub fn due(&mut self, now: Duration) -> Option<i64> {
        if now.saturating_sub(self.last_success) < self.base_interval {
            return None;
        }
        if self.base_interval == self.period {
            self.base_interval = self.period.min(HOUR);
        }
        self.revs.front().copied()
    }

    /// The outcome of the compaction `due` asked for (already compacted counts as success).
    pub fn compacted(&mut self, now: Duration, ok: bool) {
        if ok {
            self.last_success = now;
        }
    }
}

/// etcd's Revision compactor, driven every `REVISION_INTERVAL`.
pub struct Revision {
    retention: i64,
    prev: i64,
}

impl Revision {
    pub fn new(retention: i64) -> Revision {
        Revision { retention, prev: 0 }
    }

    /// The revision to compact at now, if any.
    pub fn due(&self, current_rev: i64) -> Option<i64> {
        let rev = current_rev - self.retention;
        (rev > 0 && rev != self.prev).then_some(rev)
    }

    pub fn compacted(&mut self, rev: i64, ok: bool) {
        if ok {
            self.prev = rev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates etcd's loop: sample, sleep, maybe compact; one write per second.
    fn run_periodic(period: Duration, until: Duration) -> Vec<(Duration, i64)> {
        let mut p = Periodic::new(period);
        let mut now = Duration::ZERO;
        let mut done = Vec::new();
        while now < until {
            p.sample(1 + now.as_secs() as i64);
            now += p.retry_interval();
            if now > until {
                break;
            }
            if let Some(rev) = p.due(now) {
                done.push((now, rev));
                p.compacted(now, true);
            }
        }
        done
    }

    #[test]
    fn periodic_keeps_one_period_of_history() {
        // 1h retention: nothing in the first hour, then hourly, each at the revision of an
        // hour before (one write per second: revision ~ seconds + 1).
        let done = run_periodic(HOUR, 3 * HOUR + Duration::from_secs(1));
        assert_eq!(done.len(), 3, "{done:?}");
        for (at, rev) in &done {
            let age = at.as_secs() as i64 - (rev - 1);
            assert!(
                (3600..=3600 + 360).contains(&age),
                "compacted at {at:?} to a revision {age} s old"
            );
        }
        assert!(done[0].0 >= HOUR);
        // 10h retention: first after 10 h, then every hour.
        let done = run_periodic(10 * HOUR, 13 * HOUR - Duration::from_secs(1));
        assert_eq!(done.len(), 3, "{done:?}");
        assert_eq!(done[1].0 - done[0].0, HOUR);
        assert!(done[0].0 >= 10 * HOUR && done[0].0 < 10 * HOUR + Duration::from_secs(361));
        let age = done[2].0.as_secs() as i64 - (done[2].1 - 1);
        assert!((36_000..=36_000 + 360).contains(&age), "{age}");
        // A short period: every period.
        let done = run_periodic(Duration::from_secs(2), Duration::from_secs(10));
        assert!(done.len() >= 4, "{done:?}");
    }

    #[test]
    fn periodic_retries_a_failure_at_the_next_tick() {
        let mut p = Periodic::new(Duration::from_secs(10));
        let mut now = Duration::ZERO;
        let mut asked = 0;
        while now < Duration::from_secs(12) {
            p.sample(5);
            now += p.retry_interval();
            if p.due(now).is_some() {
                asked += 1;
                p.compacted(now, false);
            }
        }
        assert!(
            asked >= 2,
            "a failed compaction is retried every tick: {asked}"
        );
    }

    #[test]
    fn revision_mode_trails_by_the_retention() {
        let mut r = Revision::new(100);
        assert_eq!(r.due(50), None);
        assert_eq!(r.due(100), None);
        assert_eq!(r.due(250), Some(150));
        r.compacted(150, true);
        assert_eq!(r.due(250), None, "the same revision is not compacted twice");
        assert_eq!(r.due(251), Some(151));
        r.compacted(151, false);
        assert_eq!(r.due(251), Some(151), "retried after a failure");
    }
}
