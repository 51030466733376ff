//! The log's fdatasync thread: a batch's fdatasync runs on a thread of the log's own, handed to
//! it the moment the append asks, while the shard goes on serving.
//!
//! Why not io_uring: glommio hands its ring the requests a task makes only at the end of a
//! scheduler turn, after every other runnable task has run (at 100 clients: the replies of
//! the batch before, the next requests' decoding), and ext4 runs a buffered write and an
//! fdatasync on an io_uring worker thread anyway. Traced at put c=100, a batch's cycle was
//! 776 us, of which the write's submission and completion 138 us and the wait from the
//! previous fdatasync's end to the next write's submission 384 us, against 191 us (p50) for
//! the fdatasync itself. With the write as a system call (a copy into the page cache onto
//! blocks zeroed ahead, see [`super::zero`]) and the fdatasync handed here at once: 7-19%
//! more puts at 100 clients at the same CPU per put. At 10 clients (batches of ~5) the
//! thread's wake-up each way cost 3-6% of the puts, so small batches still go through
//! io_uring (`limits::RING_BATCH_REQUESTS_BELOW`; tuning/results/2026-11-27-log-sync-thread.md).
//!
//! glommio's own blocking thread is not used: it also hashes passwords, loads checkpoints and
//! zeroes segments, and a batch must never wait behind those. The thread may run on any CPU
//! the process may (not only its shard's, which it would inherit).

use std::fs::File;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Tests make each fdatasync wait this long first with a file `SLOW_SYNC` beside the log's
/// directory, to catch the shard serving meanwhile.
#[cfg(test)]
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) struct Syncer {
    tx: Option<mpsc::SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    #[cfg(test)]
    slow: bool,
}

/// One fdatasync's outcome, filled once by the thread (or by its job's drop).
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    finished: bool,
    result: Option<io::Result<u64>>,
    waker: Option<Waker>,
}

impl Slot {
    fn complete(&self, r: io::Result<u64>) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.finished {
                return;
            }
            s.finished = true;
            s.result = Some(r);
            s.waker.take()
        };
        if let Some(w) = waker {
            // From this thread: glommio queues the wake for the shard's executor.
            w.wake();
        }
    }
}

struct Job {
    file: Arc<File>,
    slot: Arc<Slot>,
    #[cfg(test)]
    slow: bool,
}

impl Drop for Job {
    /// A job the thread never finished (it stopped, or its fdatasync panicked) fails its
    /// append, which stops the node; it never leaves it waiting.
    fn drop(&mut self) {
        self.slot
            .complete(Err(io::Error::other("the log's fdatasync thread stopped")));
    }
}

impl Syncer {
    /// Starts the thread of the log in `dir`.
    pub(super) fn start(
        #[cfg_attr(not(test), allow(unused_variables))] dir: &std::path::Path,
    ) -> io::Result<Syncer> {
        #[cfg(test)]
        let slow = dir.parent().is_some_and(|d| d.join("SLOW_SYNC").exists());
        // One job at a time: appends are made one after the other.
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        let thread = std::thread::Builder::new()
            .name("log-sync".into())
            .spawn(move || {
                unbind();
                while let Ok(job) = rx.recv() {
                    #[cfg(test)]
                    if job.slow {
                        std::thread::sleep(SLOW_SYNC);
                    }
                    let started = Instant::now();
                    let r = job
                        .file
                        .sync_data()
                        .map(|()| started.elapsed().as_micros() as u64);
                    job.slot.complete(r);
                }
            })?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
            #[cfg(test)]
            slow,
        })
    }

    /// Makes what was written to `file` durable, on the thread; resolves to the fdatasync's
    /// own time in microseconds. Dropping the future does not stop the fdatasync.
    pub(super) fn fdatasync(&self, file: &Arc<File>) -> impl Future<Output = io::Result<u64>> {
        let slot = Arc::new(Slot::default());
        let job = Job {
            file: file.clone(),
            slot: slot.clone(),
            #[cfg(test)]
            slow: self.slow,
        };
        // The channel holds one job and the last one is done (appends await theirs), so this
        // never waits; if the thread is gone, the job comes back and its drop fails the slot.
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
        Done(slot)
    }
}

impl Drop for Syncer {
    /// Waits for a running fdatasync (the log's directory lock is let go after this).
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lets the calling thread run on every CPU the process may use (the main thread's set): a
/// thread inherits its creator's, and the log is opened on a shard's thread, pinned to one.
fn unbind() {
    // SAFETY: plain system calls on a cpu_set_t owned here.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(libc::getpid(), size, &mut set) == 0 {
            libc::sched_setaffinity(0, size, &set);
        }
    }
}

struct Done(Arc<Slot>);

impl Future for Done {
    type Output = io::Result<u64>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None if s.finished => Poll::Ready(Err(io::Error::other("polled after completion"))),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_the_thread_drops_fails_its_append() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("f")).unwrap());
        let slot = Arc::new(Slot::default());
        drop(Job {
            file: file.clone(),
            slot: slot.clone(),
            slow: false,
        });
        let got = futures_lite::future::block_on(futures_lite::future::poll_once(Done(slot)));
        assert!(
            matches!(&got, Some(Err(e)) if e.to_string().contains("fdatasync thread stopped")),
            "{got:?}"
        );
        // A finished job's drop leaves its result alone.
        let slot = Arc::new(Slot::default());
        let job = Job {
            file,
            slot: slot.clone(),
            slow: false,
        };
        job.slot.complete(Ok(7));
        drop(job);
        let got = futures_lite::future::block_on(futures_lite::future::poll_once(Done(slot)));
        assert!(matches!(got, Some(Ok(7))), "{got:?}");
    }

    #[test]
    fn an_fdatasync_on_the_thread_and_one_after_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("f")).unwrap());
        let mut syncer = Syncer::start(dir.path()).unwrap();
        let r = futures_lite::future::block_on(syncer.fdatasync(&file));
        assert!(r.is_ok(), "{r:?}");
        // The thread gone (its channel closed): the append fails rather than waits.
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        drop(rx);
        drop(syncer.tx.replace(tx));
        syncer.thread.take().unwrap().join().unwrap();
        let r = futures_lite::future::block_on(futures_lite::future::poll_once(
            syncer.fdatasync(&file),
        ));
        assert!(
            matches!(&r, Some(Err(e)) if e.to_string().contains("fdatasync thread stopped")),
            "{r:?}"
        );
    }
}
