//! Which shard serves a client connection: the owner (shard 0, which holds the state) while it
//! has time to spare; once it is busy, the shard with the fewest connections (ties to the
//! lowest).
//!
//! Every shard accepts on the client addresses (SO_REUSEPORT: the kernel picks the listener by
//! a hash of the addresses), and a connection served on a shard other than the owner crosses
//! to the owner and back for every request: two more executor wake-ups per request at low
//! load, batched channel traffic at high load. On the 2-core machine of tuning/results
//! (2026-11-26-placement.md), one client's put p50 was 0.27-0.35 ms on the kernel's choice and
//! 0.24-0.26 ms on the owner, with 165-273 against 107-112 us of server CPU per put; at 100
//! clients over 10 connections, all of them on the owner took 14.5 instead of 20.3 us of
//! server CPU per put and served 35% more linearizable ranges (the loadgen shares the
//! machine). So a shard that accepts a connection another shard should serve hands it over,
//! before any byte is read (glommio's `shared_accept`: the socket is bound to the receiving
//! executor there). Connections stay where they were placed: those opened while the owner was
//! idle stay on it when the load comes.

use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::net::AcceptedTcpStream;

use crate::config::ConnectionPlacement;

/// A connection handed to another shard: the index of the client address that accepted it
/// (its TLS settings), and the socket.
pub(crate) type Handed = (usize, AcceptedTcpStream);

/// Connections handed to one shard and not taken yet, at most (more are served where they
/// were accepted).
const HANDED_QUEUE_DEPTH: usize = 64;

/// Above this share of its time busy (per mille), the owner takes no more connections than
/// its share.
const OWNER_BUSY_PERMILLE: u32 = 600;

/// How often the owner measures how busy it is.
const BUSY_WINDOW: Duration = Duration::from_millis(250);

/// One shard's ends of the hand-over channels: a sender to, and a receiver from, every other
/// shard (None at its own index), every shard's count of client connections, and how busy the
/// owner was over the last window (per mille of its thread's time on a CPU).
pub(crate) struct Ends {
    to: Vec<Option<SharedSender<Handed>>>,
    from: Vec<SharedReceiver<Handed>>,
    counts: Arc<[AtomicUsize]>,
    owner_busy: Arc<AtomicU32>,
    mode: ConnectionPlacement,
}

/// Every shard's ends, in shard order.
pub(crate) fn mesh(shards: usize, mode: ConnectionPlacement) -> Vec<Ends> {
    let counts: Arc<[AtomicUsize]> = (0..shards).map(|_| AtomicUsize::new(0)).collect();
    let owner_busy = Arc::new(AtomicU32::new(0));
    let mut ends: Vec<Ends> = (0..shards)
        .map(|_| Ends {
            to: (0..shards).map(|_| None).collect(),
            from: Vec::new(),
            counts: counts.clone(),
            owner_busy: owner_busy.clone(),
            mode,
        })
        .collect();
    for src in 0..shards {
        for dst in (0..shards).filter(|d| *d != src) {
            let (tx, rx) = shared_channel::new_bounded(HANDED_QUEUE_DEPTH);
            ends[src].to[dst] = Some(tx);
            ends[dst].from.push(rx);
        }
    }
    ends
}

/// A shard's side of the placement, connected.
pub(crate) struct Balance {
    me: usize,
    to: Vec<Option<ConnectedSender<Handed>>>,
    counts: Arc<[AtomicUsize]>,
    owner_busy: Arc<AtomicU32>,
    mode: ConnectionPlacement,
}

impl Ends {
    /// Connects this shard's ends (every shard must, at once: a channel's two ends wait for
    /// each other). Returns the shard's placement and the receivers of connections handed to
    /// it.
    pub(crate) async fn connect(self, me: usize) -> (Rc<Balance>, Vec<ConnectedReceiver<Handed>>) {
        let senders: Vec<_> = self
            .to
            .into_iter()
            .map(|tx| {
                glommio::spawn_local(async move {
                    match tx {
                        Some(tx) => Some(tx.connect().await),
                        None => None,
                    }
                })
            })
            .collect();
        let receivers: Vec<_> = self
            .from
            .into_iter()
            .map(|rx| glommio::spawn_local(rx.connect()))
            .collect();
        let mut to = Vec::with_capacity(senders.len());
        for s in senders {
            to.push(s.await);
        }
        let mut from = Vec::with_capacity(receivers.len());
        for r in receivers {
            from.push(r.await);
        }
        let several = to.len() > 1;
        let balance = Rc::new(Balance {
            me,
            to,
            counts: self.counts,
            owner_busy: self.owner_busy,
            mode: self.mode,
        });
        if me == 0 && several && self.mode == ConnectionPlacement::OwnerFirst {
            glommio::spawn_local(measure_busy(balance.owner_busy.clone())).detach();
        }
        (balance, from)
    }
}

/// A connection counted on its shard while it is served.
pub(crate) struct Counted {
    counts: Arc<[AtomicUsize]>,
    shard: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counts[self.shard].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balance {
    /// The shard that should serve the next connection ([`choose`]), counted there at once.
    fn pick(&self) -> usize {
        let counts: Vec<usize> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let target = choose(self.mode, &counts, self.owner_busy.load(Ordering::Relaxed));
        self.counts[target].fetch_add(1, Ordering::Relaxed);
        target
    }

    /// The count of a connection served here.
    pub(crate) fn counted_here(&self) -> Counted {
        Counted {
            counts: self.counts.clone(),
            shard: self.me,
        }
    }

    /// Places a connection accepted here: returns it with its count if this shard serves it,
    /// or hands it to the shard that should (None; counted there). A full or closed queue
    /// keeps it here.
    pub(crate) fn place(
        &self,
        listener: usize,
        accepted: AcceptedTcpStream,
    ) -> Option<(AcceptedTcpStream, Counted)> {
        let target = self.pick();
        let kept = match &self.to[target] {
            // This shard's own index has no sender.
            None => accepted,
            Some(tx) => match tx.try_send((listener, accepted)) {
                Ok(()) => return None,
                Err(
                    glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel((_, a)))
                    | glommio::GlommioError::Closed(glommio::ResourceType::Channel((_, a))),
                ) => a,
                // try_send fails with the item back; nothing else is possible.
                Err(_) => unreachable!("a channel's try_send failed otherwise"),
            },
        };
        if target != self.me {
            self.counts[target].fetch_sub(1, Ordering::Relaxed);
            self.counts[self.me].fetch_add(1, Ordering::Relaxed);
        }
        Some((kept, self.counted_here()))
    }
}

/// The shard for the next connection, given the placement, every shard's connections and how
/// busy the owner is (per mille): owner-first takes the owner while it is not busy; else, and
/// with spread, the fewest connections, ties to the lowest shard; others, the same among the
/// shards after the owner.
fn choose(mode: ConnectionPlacement, counts: &[usize], owner_busy: u32) -> usize {
    let skip = match mode {
        ConnectionPlacement::OwnerFirst if owner_busy < OWNER_BUSY_PERMILLE => return 0,
        ConnectionPlacement::OwnerFirst | ConnectionPlacement::Spread => 0,
        ConnectionPlacement::Others => usize::from(counts.len() > 1),
    };
    counts
        .iter()
        .enumerate()
        .skip(skip)
        .min_by_key(|(i, c)| (**c, *i))
        .map_or(0, |(i, _)| i)
}

/// The owner's share of time on a CPU over each window, stored for every shard to read. (Time
/// spent spinning with `--spin-before-park-us` counts as busy; a blocking fdatasync, which the
/// owner makes only while it serves one client, does not.)
async fn measure_busy(owner_busy: Arc<AtomicU32>) {
    let mut last = (Instant::now(), thread_cpu());
    loop {
        glommio::timer::sleep(BUSY_WINDOW).await;
        let now = (Instant::now(), thread_cpu());
        let wall = now.0.duration_since(last.0).as_nanos().max(1);
        let cpu = now.1.saturating_sub(last.1).as_nanos();
        owner_busy.store((cpu * 1000 / wall).min(1000) as u32, Ordering::Relaxed);
        last = now;
    }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::{choose, thread_cpu, OWNER_BUSY_PERMILLE};
    use crate::config::ConnectionPlacement::{Others, OwnerFirst, Spread};

    #[test]
    fn the_owner_takes_connections_until_it_is_busy() {
        let idle = OWNER_BUSY_PERMILLE - 1;
        assert_eq!(choose(OwnerFirst, &[0, 0], idle), 0);
        assert_eq!(choose(OwnerFirst, &[7, 0], idle), 0);
        assert_eq!(choose(OwnerFirst, &[7, 0, 0, 0], 0), 0);
    }

    #[test]
    fn a_busy_owner_gets_its_share_and_ties_go_to_the_lowest_shard() {
        let busy = OWNER_BUSY_PERMILLE;
        assert_eq!(choose(OwnerFirst, &[0, 0], busy), 0);
        assert_eq!(choose(OwnerFirst, &[1, 0], busy), 1);
        assert_eq!(choose(OwnerFirst, &[1, 1], busy), 0);
        assert_eq!(choose(OwnerFirst, &[2, 1, 1], 1000), 1);
        assert_eq!(choose(OwnerFirst, &[3, 4, 2, 2], busy), 2);
        assert_eq!(choose(OwnerFirst, &[], busy), 0);
    }

    #[test]
    fn spread_ignores_the_load_and_others_spare_the_owner() {
        assert_eq!(choose(Spread, &[0, 0], 0), 0);
        assert_eq!(choose(Spread, &[1, 0], 0), 1);
        assert_eq!(choose(Spread, &[1, 1, 1], 0), 0);
        assert_eq!(choose(Others, &[0, 0], 0), 1);
        assert_eq!(choose(Others, &[0, 5], 1000), 1);
        assert_eq!(choose(Others, &[0, 2, 1], 0), 2);
        assert_eq!(choose(Others, &[3], 0), 0);
    }

    #[test]
    fn a_thread_s_cpu_time_moves_with_its_work() {
        let before = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() < before + std::time::Duration::from_millis(5) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0 && thread_cpu() > before);
    }
}
