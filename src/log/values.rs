//! The value store of a durable node: a value is a location in a log segment, and reading it
//! is a slice of the segment's mapping (a reference count, no copy). Values that do not come
//! from the log (the in-memory mode of tests and benches) go to a heap slab.

use bytes::Bytes;

use crate::mvcc::store::MemValues;
use crate::mvcc::{Revision, ValueRef, ValueStore};

#[derive(Default)]
pub struct Values {
    /// Each segment's mapping, by segment number.
    segments: Vec<Bytes>,
    heap: MemValues,
    /// Bytes of log values the index references.
    log_live_bytes: u64,
    /// dbSize: bytes the log's records and the checkpoint take (set by the owner of the log).
    db_bytes: u64,
}

impl Values {
    /// Makes a segment's values addressable; returns its number.
    pub fn add_segment(&mut self, map: Bytes) -> u32 {
        self.segments.push(map);
        self.segments.len() as u32 - 1
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Where `value` is, if it is a slice of a segment (its bytes are not counted again: a
    /// checkpoint's copy of a value the index already counts).
    pub fn reference(&self, value: &[u8]) -> Option<ValueRef> {
        if value.is_empty() {
            return Some(ValueRef::EMPTY);
        }
        self.locate(value).map(|(seg, off)| ValueRef {
            seg,
            off,
            len: value.len() as u32,
        })
    }

    /// Forgets segment `n`'s mapping (nothing points into it any more); its number is not
    /// reused.
    pub fn drop_segment(&mut self, n: u32) {
        if let Some(m) = self.segments.get_mut(n as usize) {
            // Its unmapping (when no read holds it any more) happens off the shard.
            drop_later(std::mem::take(m));
        }
    }

    /// Lets go of the resident pages of segment `n`'s mapping (reads, recovery's checks, a
    /// checkpoint's copy map them): they stay in the page cache, and the next read of one
    /// maps it again (a minor fault). Without this every page ever read stays mapped and
    /// counts in the server's RSS (a member holding 1 GiB of values showed 1.1 GiB of mapped
    /// log), and mapped pages are the last the kernel reclaims.
    ///
    /// # Safety
    ///
    /// Segment `n` must be a whole read-only file mapping (a log segment's or a checkpoint
    /// part's, as `log::segment` and `log::checkpoint` map them): on anonymous memory
    /// MADV_DONTNEED would zero the pages.
    pub unsafe fn drop_resident(&self, n: u32) {
        let Some(m) = self.segments.get(n as usize).filter(|m| !m.is_empty()) else {
            return;
        };
        // SAFETY: a whole read-only file mapping (the caller's promise), kept mapped by the
        // clone the job holds.
        unsafe { later(Job::DontNeed(m.clone())) };
    }

    pub fn set_db_bytes(&mut self, b: u64) {
        self.db_bytes = b;
    }

    /// The segment holding `value`, and its offset there, if the value is a slice of one.
    fn locate(&self, value: &[u8]) -> Option<(u32, u32)> {
        let p = value.as_ptr() as usize;
        // Nearly always the newest segment.
        self.segments.iter().enumerate().rev().find_map(|(i, m)| {
            let base = m.as_ptr() as usize;
            (!m.is_empty() && base <= p && p + value.len() <= base + m.len())
                .then(|| (i as u32, (p - base) as u32))
        })
    }
}

/// Work on mappings done off the shard, on a thread of its own: letting go of the resident
/// pages of 1 GiB checkpoint parts at each checkpoint took the owner shard two `madvise`
/// calls of 8.0 and 6.1 ms (`perf trace`, tuning/results/2026-11-27-unmap-thread.md), the
/// resident pages of every segment are let go of every `RESIDENT_PAGES_INTERVAL`, and a
/// released mapping's last drop unmaps it (where that drop happens elsewhere, a Raft entry
/// read from a released segment say, the unmapping happens there).
enum Job {
    /// MADV_DONTNEED over a whole read-only file mapping, held by the job.
    DontNeed(Bytes),
    /// The last reference to a mapping, perhaps: dropping it unmaps it.
    Drop(Bytes),
    /// Answered once every job before it is done.
    #[cfg(test)]
    Barrier(std::sync::mpsc::Sender<()>),
}

/// Waits until the jobs handed over so far are done.
#[cfg(test)]
fn jobs_done() {
    let (tx, rx) = std::sync::mpsc::channel();
    // SAFETY: a barrier touches no mapping.
    unsafe { later(Job::Barrier(tx)) };
    rx.recv().unwrap();
}

fn drop_later(map: Bytes) {
    if !map.is_empty() {
        // SAFETY: a drop does nothing unsafe.
        unsafe { later(Job::Drop(map)) }
    }
}

/// Hands `job` to the mappings' thread, or does it here if that thread's queue is full or
/// it could not start (the queue is bounded; the shard never waits for it).
///
/// # Safety
///
/// A `Job::DontNeed` mapping must be a whole read-only file mapping (see
/// [`Values::drop_resident`]).
unsafe fn later(job: Job) {
    use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
    use std::sync::OnceLock;
    static TX: OnceLock<SyncSender<Job>> = OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = sync_channel::<Job>(crate::limits::MAPPING_JOBS_QUEUED_MAX);
        let started = std::thread::Builder::new()
            .name("unmap".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // SAFETY: the sender's promise (`later`'s contract).
                    unsafe { run(job) };
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no thread for unmapping: the shards unmap themselves");
        }
        tx
    });
    let sent = tx.try_send(job);
    if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = sent {
        // SAFETY: as above.
        unsafe { run(job) };
    }
}

/// # Safety
///
/// As [`later`].
unsafe fn run(job: Job) {
    match job {
        Job::DontNeed(m) => {
            // SAFETY: a whole read-only file mapping (the contract) with a page-aligned
            // start, mapped while `m` holds it; MADV_DONTNEED only drops its page table
            // entries, and the next access, from any thread, reads the same bytes from the
            // page cache or the file (segments are never rewritten under a reader).
            let r = unsafe {
                libc::madvise(
                    m.as_ptr() as *mut libc::c_void,
                    m.len(),
                    libc::MADV_DONTNEED,
                )
            };
            if r != 0 {
                tracing::debug!(
                    error = %std::io::Error::last_os_error(),
                    "madvise(MADV_DONTNEED) of a log mapping failed"
                );
            }
        }
        Job::Drop(m) => drop(m),
        #[cfg(test)]
        Job::Barrier(tx) => drop(tx.send(())),
    }
}

impl ValueStore for Values {
    fn append(&mut self, rev: Revision, key: &[u8], value: &[u8]) -> ValueRef {
        if value.is_empty() {
            return ValueRef::EMPTY;
        }
        match self.locate(value) {
            Some((seg, off)) => {
                self.log_live_bytes += value.len() as u64;
                ValueRef {
                    seg,
                    off,
                    len: value.len() as u32,
                }
            }
            None => self.heap.append(rev, key, value),
        }
    }

    fn get(&self, r: ValueRef) -> Bytes {
        if r == ValueRef::EMPTY {
            return Bytes::new();
        }
        if r.seg == MemValues::SEG {
            return self.heap.get(r);
        }
        let start = r.off as usize;
        self.segments[r.seg as usize].slice(start..start + r.len as usize)
    }

    fn release(&mut self, r: ValueRef) {
        if r == ValueRef::NONE || r == ValueRef::EMPTY {
            return;
        }
        if r.seg == MemValues::SEG {
            self.heap.release(r);
        } else {
            self.log_live_bytes -= r.len as u64;
        }
    }

    fn live_bytes(&self) -> u64 {
        self.log_live_bytes + self.heap.live_bytes()
    }

    fn total_bytes(&self) -> u64 {
        self.db_bytes + self.heap.total_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident bytes of the mapping starting at `addr`, from /proc/self/smaps.
    fn resident_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((start, _)) = range.split_once('-') {
                    if let Ok(start) = usize::from_str_radix(start, 16) {
                        ours = start == addr;
                        continue;
                    }
                }
            }
            if ours {
                if let Some(kb) = line.strip_prefix("Rss:") {
                    return kb.trim().trim_end_matches(" kB").trim().parse().unwrap();
                }
            }
        }
        panic!("no mapping at {addr:#x}");
    }

    #[test]
    fn a_segments_resident_pages_are_let_go_of_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a file of this test's own, not changed while mapped.
        let map = Bytes::from_owner(unsafe { memmap2::Mmap::map(&file) }.unwrap());
        let mut v = Values::default();
        let n = v.add_segment(map.clone());
        let r = ValueRef {
            seg: n,
            off: 0,
            len: data.len() as u32,
        };
        assert!(v.get(r)[..] == data[..]);
        let addr = map.as_ptr() as usize;
        assert!(resident_kib(addr) >= 4 << 10, "every page read is mapped");
        // SAFETY: segment n is a file mapping.
        unsafe { v.drop_resident(n) };
        jobs_done();
        assert_eq!(resident_kib(addr), 0, "no page left mapped");
        assert!(v.get(r)[..] == data[..], "the same bytes, read again");
        assert!(resident_kib(addr) >= 4 << 10);
    }

    #[test]
    fn a_dropped_segment_is_unmapped_off_the_calling_thread() {
        /// Records the name of the thread that drops it.
        struct Owner(Vec<u8>, std::sync::Arc<std::sync::Mutex<Option<String>>>);
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl Drop for Owner {
            fn drop(&mut self) {
                *self.1.lock().unwrap() = std::thread::current().name().map(String::from);
            }
        }
        let dropped_on: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let mut v = Values::default();
        let n = v.add_segment(Bytes::from_owner(Owner(vec![1; 64], dropped_on.clone())));
        v.drop_segment(n);
        jobs_done();
        assert_eq!(dropped_on.lock().unwrap().as_deref(), Some("unmap"));
    }

    #[test]
    fn values_inside_a_segment_are_located_not_copied() {
        let mut v = Values::default();
        let seg = Bytes::from(b"....hello....".to_vec());
        v.add_segment(seg.clone());
        let r = v.append(Revision::default(), b"k", &seg[4..9]);
        assert_eq!((r.seg, r.off, r.len), (0, 4, 5));
        let got = v.get(r);
        assert_eq!(&got[..], b"hello");
        assert_eq!(got.as_ptr(), seg[4..].as_ptr(), "a slice of the mapping");
        let h = v.append(Revision::default(), b"k", b"elsewhere");
        assert_eq!(h.seg, MemValues::SEG);
        assert_eq!(&v.get(h)[..], b"elsewhere");
        assert_eq!(v.live_bytes(), 5 + 9);
        v.release(r);
        v.release(h);
        assert_eq!(v.live_bytes(), 0);
    }
}
