//! Zeroing ahead of the appends: the segment taking appends is written with zeros a few MiB
//! beyond its last record, off the shard's thread, so that batches land on blocks the file
//! system already counts as written.
//!
//! Why: a segment is preallocated with `fallocate`, which on ext4 and xfs leaves *unwritten*
//! extents. The first write into one converts it to written, a metadata change, so every
//! batch's fdatasync also wrote the inode (ext4 without a journal: a second synchronous write
//! per batch; with one: a journal commit). Measured on this project's 2-core VM (ext4, no
//! journal), 16 KiB (a batch at 100 clients) written and fdatasynced 3,000 times: 232-260 us
//! per fdatasync into a fallocated file against 171-179 us into one written with zeros
//! (`cargo bench --bench fdatasync`); at put c=100 the server's fdatasyncs took 0.34-0.36 ms
//! against 0.46-0.53 ms (tuning/results/2026-11-27-zero-ahead.md). PostgreSQL
//! zero-fills its WAL segments for the same reason.
//!
//! Safety: a job zeroes `[start, end)` with `start` at or past the log's write offset when it
//! begins, and no batch is written into that range until the job is over ([`ZeroAhead::settle`]):
//! zeros never land on a record. A crash during a job leaves zeros or unwritten extents past the
//! last record, which both read as zeros (docs/log-format.md, "Zeroed ahead").
//!
//! At most one job runs at a time, on glommio's blocking thread pool: it writes its range a
//! piece at a time, each piece written back (`sync_file_range`) before the next, so that a
//! batch's fdatasync finds at most one piece of dirty zeros of the same file to flush, and
//! ends with an fdatasync of its own (the extents' conversion made durable).

use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Bytes a job writes with one `pwrite` before writing them back.
const PIECE: u64 = 256 << 10;

/// The zeroing of one segment taking appends.
pub(super) struct ZeroAhead {
    /// The next job starts here: bytes from it to the segment's end were never zeroed by this
    /// process (a preallocated, unwritten extent, or zeros a previous run wrote).
    next: u64,
    /// Bytes per job; the next job starts once the appends come within two of these of
    /// `next`, so a job has at least a chunk of appends' time to finish before they reach it.
    chunk: u64,
    job: Option<Job>,
    /// The contiguous range that completed jobs zeroed last (batches inside it were written
    /// onto zeroed blocks).
    zeroed: (u64, u64),
}

struct Job {
    start: u64,
    end: u64,
    state: Arc<JobState>,
    done: Pin<Box<dyn Future<Output = io::Result<()>>>>,
}

/// A job's progress, shared with the thread that runs it. glommio hands a blocking job to its
/// thread only when the executor next polls, so a log dropped right after starting one would
/// wait forever for a job that has not begun: such a job is told to stop and left to end
/// without writing; one that has begun is waited for.
#[derive(Default)]
struct JobState {
    cancel: AtomicBool,
    phase: Mutex<Phase>,
    cv: Condvar,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Queued,
    Running,
    Over,
}

impl JobState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job's thread, before writing: false if the job was canceled while queued.
    fn begin(&self) -> bool {
        let mut phase = self.lock();
        if self.cancel.load(Ordering::Relaxed) {
            *phase = Phase::Over;
            return false;
        }
        *phase = Phase::Running;
        true
    }

    fn finish(&self) {
        *self.lock() = Phase::Over;
        self.cv.notify_all();
    }

    /// Cancels the job if it has not begun (it then never writes): true if so.
    fn cancel_if_queued(&self) -> bool {
        let mut phase = self.lock();
        if *phase != Phase::Queued {
            return false;
        }
        self.cancel.store(true, Ordering::Relaxed);
        *phase = Phase::Over;
        true
    }

    /// Stops the job: returns once it cannot write any more.
    fn cancel_and_wait(&self) {
        let mut phase = self.lock();
        self.cancel.store(true, Ordering::Relaxed);
        while *phase == Phase::Running {
            phase = self.cv.wait(phase).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Marks a job over when dropped.
struct Over<'a>(&'a JobState);

impl Drop for Over<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Bytes per job for segments of `segment_bytes`: a sixteenth of a segment, 64 KiB to 4 MiB.
pub(super) fn chunk_for(segment_bytes: u64) -> u64 {
    (segment_bytes / 16).clamp(64 << 10, 4 << 20) / 4096 * 4096
}

impl ZeroAhead {
    /// The zeroing of the segment at `path` (`len` bytes, in a log of `segment_bytes`
    /// segments) whose appends go on at `write_off`, its first job started: zeroing starts a
    /// quarter of a chunk past `write_off` (rounded up to a page), so the batches right after
    /// a new segment or a restart do not wait for it; they write into the preallocated extents
    /// as before.
    pub(super) fn start(segment_bytes: u64, path: &Path, write_off: u64, len: u64) -> ZeroAhead {
        let chunk = chunk_for(segment_bytes);
        let mut z = ZeroAhead {
            next: (write_off + chunk / 4).next_multiple_of(4096),
            chunk,
            job: None,
            zeroed: (0, 0),
        };
        z.start_if_due(path, write_off, len);
        z
    }

    /// Where the next job starts (the end of the zeroed range once every job is over).
    #[cfg(test)]
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    /// Makes way for a write ending at `end` (or for leaving the segment, if `all`): a job
    /// whose range the write would reach is stopped, at once if it has not begun (it then
    /// never writes), else after the piece it is writing, and waited for; the next job starts
    /// a quarter chunk past the write. Otherwise a job that is over is collected. A job's
    /// failure is the log's failure. Appends thus wait for at most one piece: never behind the
    /// other work of glommio's blocking thread (one per shard, shared with bcrypt hashes and
    /// checkpoint loads), nor for the rest of a job that fell behind.
    pub(super) async fn settle(&mut self, end: u64, all: bool) -> io::Result<()> {
        let Some(job) = self.job.as_mut() else {
            return Ok(());
        };
        if all || end > job.start {
            if !job.state.cancel_if_queued() {
                job.state.cancel.store(true, Ordering::Relaxed);
                let result = (&mut job.done).await;
                self.job = None;
                result?;
            }
            // What the job zeroed before it stopped is not known: not counted as zeroed.
            self.job = None;
            self.next = self.next.max((end + self.chunk / 4).next_multiple_of(4096));
            return Ok(());
        }
        let Some(result) = futures_lite::future::poll_once(&mut job.done).await else {
            return Ok(());
        };
        let job = self.job.take().expect("a job");
        result?;
        self.completed(job.start, job.end);
        Ok(())
    }

    /// Whether `[start, end)` lies in the range completed jobs zeroed.
    pub(super) fn covers(&self, start: u64, end: u64) -> bool {
        self.zeroed.0 <= start && end <= self.zeroed.1
    }

    /// Whether the job in flight is writing.
    #[cfg(test)]
    pub(super) fn writing(&self) -> bool {
        self.job
            .as_ref()
            .is_some_and(|j| *j.state.lock() == Phase::Running)
    }

    /// Waits for the job in flight, if any, whether or not it has begun.
    #[cfg(test)]
    pub(super) async fn wait_over(&mut self) -> io::Result<()> {
        if let Some(job) = self.job.as_mut() {
            (&mut job.done).await?;
            let job = self.job.take().expect("a job");
            self.completed(job.start, job.end);
        }
        Ok(())
    }

    /// A job zeroed `[start, end)`.
    fn completed(&mut self, start: u64, end: u64) {
        self.next = self.next.max(end);
        self.zeroed = if self.zeroed.1 == start {
            (self.zeroed.0, end)
        } else {
            (start, end)
        };
    }

    /// Starts a job if none runs and the appends, now at `write_off`, came within two chunks
    /// of the zeroed range's end, in a segment of `len` bytes at `path`.
    pub(super) fn start_if_due(&mut self, path: &Path, write_off: u64, len: u64) {
        if self.job.is_some() || self.next >= write_off + 2 * self.chunk {
            return;
        }
        let start = self.next.max(write_off.next_multiple_of(4096));
        let end = (start + self.chunk).min(len);
        if start >= end {
            return;
        }
        let state = Arc::new(JobState::default());
        let path = path.to_path_buf();
        let shared = state.clone();
        let blocking = glommio::executor().spawn_blocking(move || {
            if !shared.begin() {
                return Ok(());
            }
            // Over even if `zero` panicked: a log dropped meanwhile waits for this.
            let _over = Over(&shared);
            // A panic would end glommio's blocking thread (it does not catch one) and with
            // it every wait for this job: it becomes the job's error instead.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                zero(&path, start, end, &shared.cancel)
            }))
            .unwrap_or_else(|_| Err(io::Error::other("zeroing ahead: the job panicked")))
        });
        // glommio hands a blocking job to its thread when its future is first polled: a task
        // of its own does that at the executor's next turn.
        let task = glommio::spawn_local(blocking).detach();
        let done = async move {
            task.await
                .unwrap_or_else(|| Err(io::Error::other("zeroing ahead: the job's task was lost")))
        };
        self.job = Some(Job {
            start,
            end,
            state,
            done: Box::pin(done),
        });
    }
}

impl Drop for ZeroAhead {
    /// A job may not outlive its log: a log opened again in this process could append where it
    /// still writes zeros. It is told to stop and, if it began, waited for (at most a piece).
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.state.cancel_and_wait();
        }
    }
}

/// Writes zeros over `[start, end)` of `path`, a piece at a time, then fdatasyncs.
fn zero(path: &Path, start: u64, end: u64, cancel: &AtomicBool) -> io::Result<()> {
    let fail = |what: &str, e: io::Error| super::err(path, &format!("zeroing ahead: {what}"), e);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| fail("cannot open", e))?;
    let zeros = vec![0u8; PIECE as usize];
    let mut at = start;
    while at < end {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let n = PIECE.min(end - at);
        f.write_all_at(&zeros[..n as usize], at)
            .map_err(|e| fail("write failed on", e))?;
        write_back(&f, at, n).map_err(|e| fail("write-back failed on", e))?;
        at += n;
        #[cfg(test)]
        slow_for_tests(path);
    }
    if cancel.load(Ordering::Relaxed) {
        return Ok(());
    }
    f.sync_data().map_err(|e| fail("fdatasync failed on", e))
}

/// Tests make a job slow (20 ms per piece) with a file `SLOW_ZEROING` beside the log's
/// directory, to catch it while it writes.
#[cfg(test)]
fn slow_for_tests(path: &Path) {
    let marker = path
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("SLOW_ZEROING"));
    if marker.is_some_and(|m| m.exists()) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts and waits for the write-back of `[at, at + n)` (`sync_file_range`; a file system
/// without it is left to the final fdatasync).
pub(super) fn write_back(f: &std::fs::File, at: u64, n: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range on a descriptor `f` keeps open; no memory is involved.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), at as i64, n as i64, flags) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ESPIPE | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}
