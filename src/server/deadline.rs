//! Calls' deadlines (`grpc-timeout`), kept per executor thread in one list that one timer
//! sweeps, instead of a glommio timer per call.
//!
//! Why: a glommio timer is an `Rc` allocation, an insertion into the reactor's ordered map on
//! its first poll and a removal on drop. Every unary call from an etcd client that sets a
//! timeout made one; at put c=100 that was 2.6% of the owner shard's samples (profile of
//! 2026-11-27 at b6d19aa, tuning/results/2026-11-27-deadlines.md). Unary calls use it
//! (`grpc::with_deadline`); Lock, Campaign and Observe, which may wait long, keep a glommio
//! timer each. Here a call takes a slot of a vector (reused, no allocation once
//! warm) and gives it back on drop; a single sweeper task per executor wakes every
//! [`limits::DEADLINE_TICK`] while any deadline is pending and wakes the calls whose time
//! has passed. A deadline is therefore noticed up to one tick late; gRPC promises no
//! precision, and etcd's clients give seconds.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::limits;

#[derive(Default)]
struct List {
    /// The glommio executor these slots and the sweeper belong to: a thread may run one
    /// executor after another (tests, the CLI), or two in turn. The list starts over when
    /// another executor polls a deadline, and `generation` tells the slots and sweeper of
    /// one start from those of another (an executor that runs again finds a new list).
    executor: usize,
    generation: u64,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Slots in use.
    live: usize,
    /// Whether a sweeper task runs for this list (see [`sweep`]).
    sweeping: bool,
    /// The sweeper, waiting for a first pending deadline.
    idle_sweeper: Option<Waker>,
}

struct Slot {
    at: Instant,
    waker: Option<Waker>,
    expired: bool,
}

thread_local! {
    static LIST: RefCell<List> = RefCell::default();
}

/// Completes once `at` has passed (noticed within a tick). Not `Send`: polled where created.
pub struct Deadline {
    at: Instant,
    /// A zero timeout: complete at once, without a slot.
    now: bool,
    /// (the list's generation, slot) once registered.
    slot: Option<(u64, usize)>,
    _local: std::marker::PhantomData<*const ()>,
}

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + d,
            now: d.is_zero(),
            slot: None,
            _local: std::marker::PhantomData,
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let executor = glommio::executor().id();
        let mut spawn = None;
        let mut wake = None;
        let mut stale = None;
        let ready = LIST.with(|l| {
            let mut l = l.borrow_mut();
            if l.executor != executor {
                // Another executor used the list last: start over. Its sweeper stops when it
                // next runs; an idle one is woken (outside the borrow) to see that.
                stale = l.idle_sweeper.take();
                *l = List {
                    executor,
                    generation: l.generation + 1,
                    ..List::default()
                };
            }
            let generation = l.generation;
            match self.slot {
                Some((g, i)) if g == generation => {
                    let s = &mut l.slots[i];
                    if s.expired {
                        return true;
                    }
                    if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        s.waker = Some(cx.waker().clone());
                    }
                    false
                }
                _ => {
                    // A time already past (a call polled late) is noticed by the next sweep:
                    // no clock read here.
                    if self.now {
                        return true;
                    }
                    let slot = Slot {
                        at: self.at,
                        waker: Some(cx.waker().clone()),
                        expired: false,
                    };
                    let i = match l.free.pop() {
                        Some(i) => {
                            l.slots[i] = slot;
                            i
                        }
                        None => {
                            l.slots.push(slot);
                            l.slots.len() - 1
                        }
                    };
                    l.live += 1;
                    self.slot = Some((generation, i));
                    if !l.sweeping {
                        l.sweeping = true;
                        spawn = Some(generation);
                    } else {
                        wake = l.idle_sweeper.take();
                    }
                    false
                }
            }
        });
        for w in [wake, stale].into_iter().flatten() {
            w.wake();
        }
        if let Some(generation) = spawn {
            // Outside the list's borrow: glommio may run a spawned task at once.
            glommio::spawn_local(sweep(generation)).detach();
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let Some((g, i)) = self.slot else { return };
        // During a thread's teardown the list may be gone already; nothing to give back then.
        let _ = LIST.try_with(|l| {
            let mut l = l.borrow_mut();
            if l.generation == g {
                l.slots[i].waker = None;
                l.free.push(i);
                l.live -= 1;
                if l.live == 0 {
                    // Nothing holds an index: the sweeps' scan shrinks back after a burst
                    // (the vectors keep their capacity).
                    l.slots.clear();
                    l.free.clear();
                }
            }
        });
    }
}

/// Sweeps the list of `generation` for as long as it is this thread's. It ends only when the
/// list starts over for another executor (or dies with its own executor, which then never
/// polls a deadline again: executor ids are not reused), so `List::sweeping` needs no reset.
async fn sweep(generation: u64) {
    let mut due = Vec::new();
    loop {
        let gone = std::future::poll_fn(|cx| {
            LIST.with(|l| {
                let mut l = l.borrow_mut();
                if l.generation != generation {
                    Poll::Ready(true)
                } else if l.live > 0 {
                    Poll::Ready(false)
                } else {
                    l.idle_sweeper = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await;
        if gone {
            return;
        }
        glommio::timer::sleep(limits::DEADLINE_TICK).await;
        let now = Instant::now();
        LIST.with(|l| {
            let mut l = l.borrow_mut();
            if l.generation != generation {
                return;
            }
            // Free slots hold no waker and are skipped.
            for s in l.slots.iter_mut() {
                if !s.expired && s.at <= now {
                    if let Some(w) = s.waker.take() {
                        s.expired = true;
                        due.push(w);
                    }
                }
            }
        });
        for w in due.drain(..) {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    /// `f`, or a failure after 10 s (a glommio timer: a sweeper that never wakes fails the
    /// test instead of hanging it).
    async fn bounded<F: Future>(f: F) -> F::Output {
        let f = async { Some(f.await) };
        let limit = async {
            glommio::timer::sleep(Duration::from_secs(10)).await;
            None
        };
        futures_lite::future::or(f, limit)
            .await
            .expect("a deadline did not fire within 10 s")
    }

    #[test]
    fn a_deadline_fires_after_its_time_and_within_a_few_ticks() {
        glommio::LocalExecutor::default().run(async {
            for ms in [0u64, 1, 20, 60] {
                let d = Duration::from_millis(ms);
                let t0 = Instant::now();
                bounded(Deadline::after(d)).await;
                let took = t0.elapsed();
                assert!(took >= d, "{ms} ms fired after {took:?}");
                // Generous against a loaded machine, far below "never".
                assert!(took < d + Duration::from_secs(2), "{ms} ms took {took:?}");
            }
        });
    }

    #[test]
    fn dropped_deadlines_give_their_slots_back_and_others_still_fire() {
        glommio::LocalExecutor::default().run(async {
            let counts = || {
                LIST.with(|l| {
                    let l = l.borrow();
                    (l.slots.len(), l.live)
                })
            };
            let mut pending = Deadline::after(Duration::from_secs(3600));
            assert!(futures_lite::future::poll_once(&mut pending)
                .await
                .is_none());
            for _ in 0..1000 {
                let mut d = Deadline::after(Duration::from_secs(3600));
                // Registered on its first poll, then dropped (the call finished first).
                assert!(futures_lite::future::poll_once(&mut d).await.is_none());
            }
            assert_eq!(counts(), (2, 1), "one slot reused, one held");
            drop(pending);
            assert_eq!(counts(), (0, 0), "none held, the list shrunk back");
            // Many at once, dropped in another order, then one that must fire.
            let mut held: Vec<Deadline> = (0..50)
                .map(|_| Deadline::after(Duration::from_secs(3600)))
                .collect();
            for d in &mut held {
                assert!(futures_lite::future::poll_once(d).await.is_none());
            }
            // Every other one first, then the rest from the back.
            let mut i = 0;
            held.retain(|_| {
                i += 1;
                i % 2 == 0
            });
            while held.pop().is_some() {}
            drop(held);
            assert_eq!(LIST.with(|l| l.borrow().live), 0);
            let t0 = Instant::now();
            bounded(Deadline::after(Duration::from_millis(10))).await;
            assert!(t0.elapsed() >= Duration::from_millis(10));
        });
    }

    #[test]
    fn each_of_many_pending_deadlines_wakes_its_own_task() {
        glommio::LocalExecutor::default().run(async {
            let fired = Rc::new(std::cell::Cell::new(0u32));
            let tasks: Vec<_> = (0..20u64)
                .map(|i| {
                    let fired = fired.clone();
                    glommio::spawn_local(async move {
                        let d = Duration::from_millis(5 * (i % 4));
                        let t0 = Instant::now();
                        bounded(Deadline::after(d)).await;
                        assert!(t0.elapsed() >= d);
                        fired.set(fired.get() + 1);
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            assert_eq!(fired.get(), 20);
        });
    }

    #[test]
    fn executors_taking_turns_on_one_thread_keep_their_deadlines_apart() {
        let one = glommio::LocalExecutor::default();
        let two = glommio::LocalExecutor::default();
        // A deadline of the first executor, registered, then the second one's list.
        let mut old = Deadline::after(Duration::from_secs(3600));
        one.run(async {
            assert!(futures_lite::future::poll_once(&mut old).await.is_none());
        });
        two.run(async {
            bounded(Deadline::after(Duration::from_millis(5))).await;
        });
        one.run(async {
            // A new deadline on the first executor again takes a slot of a new list...
            let mut new = Deadline::after(Duration::from_secs(3600));
            assert!(futures_lite::future::poll_once(&mut new).await.is_none());
            // ...which the old one's drop must leave alone,
            drop(old);
            assert_eq!(LIST.with(|l| l.borrow().live), 1);
            // and which a sweeper of this list serves.
            let t0 = Instant::now();
            bounded(Deadline::after(Duration::from_millis(10))).await;
            assert!(t0.elapsed() >= Duration::from_millis(10));
            drop(new);
            assert_eq!(LIST.with(|l| l.borrow().live), 0);
        });
    }

    #[test]
    fn a_second_executor_on_the_same_thread_gets_a_sweeper_of_its_own() {
        for _ in 0..3 {
            glommio::LocalExecutor::default().run(async {
                let t0 = Instant::now();
                bounded(Deadline::after(Duration::from_millis(15))).await;
                assert!(t0.elapsed() >= Duration::from_millis(15));
                // One still pending as the executor ends: its sweeper dies with it.
                let mut d = Deadline::after(Duration::from_secs(3600));
                assert!(futures_lite::future::poll_once(&mut d).await.is_none());
            });
        }
    }
}
