//! The thread that writes a checkpoint while the owner shard walks its index.
//!
//! A checkpoint taken because the log grew is written at nice 19, so that it takes no core
//! from the shards (or from clients on the same machine). One that somebody waits for (a
//! Defragment call, a member that needs a snapshot) must not crawl under load: such a
//! checkpoint is written at normal priority from the start, and a niced writer told to hurry
//! hands its work back at the next batch, to go on on a new thread at normal priority. (A
//! thread cannot take back its own nice value without CAP_SYS_NICE; a new thread spawned by a
//! shard starts at the shard's.)

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::kv::Hurry;
use crate::log::checkpoint::{self, Item, Loaded};

/// What the owner sends: batches of revisions in order, then the end.
pub(crate) enum Batch {
    Items(Vec<Item>),
    /// Every revision was sent: the checkpoint is finished.
    End,
}

/// The owner's batches. A channel closed without [`Batch::End`] abandons the checkpoint: the
/// owner's walk was abandoned (a physical compaction cut in) or stopped on an error, and
/// finishing it would give a complete-looking checkpoint missing the keys the walk did not
/// reach, which a restart would take for the state.
pub(crate) type Batches = Receiver<Batch>;

/// A written checkpoint, read back and checked, with its size on disk (None: abandoned).
pub(crate) type Written = Option<(Loaded, u64)>;

enum Exit {
    /// What was written, and the nice value the thread ran at.
    Done(Written, i32),
    /// Told to hurry: the work so far, to go on at normal priority.
    Handed(checkpoint::Writer, Batches),
}

enum Start {
    New { dir: PathBuf, meta: Vec<u8> },
    Resume(checkpoint::Writer),
}

/// The writer thread of one checkpoint (see the module's text).
pub(crate) struct WriterThread {
    running: Option<JoinHandle<io::Result<Exit>>>,
    ended: Option<io::Result<Written>>,
    /// How many times the work moved to a thread at normal priority.
    pub handed: u32,
    /// The nice value of the thread that finished the work.
    pub nice: i32,
    /// The checkpoint's record seq.
    seq: u64,
}

impl WriterThread {
    /// Starts writing checkpoint `seq` with its metadata into `dir`; batches come through the
    /// returned sender. `hurry` already set: at normal priority from the start.
    pub fn start(
        dir: PathBuf,
        seq: u64,
        meta: Vec<u8>,
        hurry: Hurry,
    ) -> io::Result<(WriterThread, SyncSender<Batch>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let niced = !hurry.load(Ordering::Relaxed);
        let running = spawn(Start::New { dir, meta }, seq, rx, niced.then_some(hurry))?;
        Ok((
            WriterThread {
                running: Some(running),
                ended: None,
                handed: 0,
                nice: 0,
                seq,
            },
            tx,
        ))
    }

    /// Whether the thread has ended (without blocking); a thread that handed its work back
    /// is replaced by one at normal priority first.
    pub fn ended(&mut self) -> io::Result<bool> {
        let Some(h) = self.running.take_if(|h| h.is_finished()) else {
            return Ok(self.ended.is_some());
        };
        let exit = h
            .join()
            .map_err(|_| io::Error::other("the checkpoint thread panicked"))?;
        match exit {
            Ok(Exit::Handed(w, rx)) => {
                self.handed += 1;
                self.running = Some(spawn(Start::Resume(w), self.seq, rx, None)?);
                Ok(false)
            }
            Ok(Exit::Done(w, nice)) => {
                self.nice = nice;
                self.ended = Some(Ok(w));
                Ok(true)
            }
            Err(e) => {
                self.ended = Some(Err(e));
                Ok(true)
            }
        }
    }

    /// What the ended thread wrote (call once `ended` said so).
    pub fn result(&mut self) -> io::Result<Written> {
        self.ended
            .take()
            .unwrap_or_else(|| Err(io::Error::other("the checkpoint thread has not ended")))
    }
}

/// `hurry`: the thread runs at nice 19 and hands its work back once it is set.
fn spawn(
    start: Start,
    seq: u64,
    rx: Batches,
    hurry: Option<Hurry>,
) -> io::Result<JoinHandle<io::Result<Exit>>> {
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            if hurry.is_some() {
                background_priority();
            }
            let mut w = match start {
                Start::New { dir, meta } => checkpoint::Writer::create(&dir, seq, &meta)?,
                Start::Resume(w) => w,
            };
            loop {
                if hurry.as_ref().is_some_and(|h| h.load(Ordering::Relaxed)) {
                    return Ok(Exit::Handed(w, rx));
                }
                let items = match rx.recv() {
                    Ok(Batch::Items(items)) => items,
                    Ok(Batch::End) => break,
                    Err(_) => {
                        w.abandon();
                        return Ok(Exit::Done(None, nice()));
                    }
                };
                for it in &items {
                    if let Err(e) = w.item(it) {
                        w.abandon();
                        return Err(e);
                    }
                }
            }
            let paths = w.finish()?;
            let bytes = paths
                .iter()
                .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
                .sum();
            let loaded = checkpoint::load(seq, &paths)?;
            Ok(Exit::Done(Some((loaded, bytes)), nice()))
        })
}

/// Lowers the calling thread's priority to nice 19 (Linux takes a thread id for it): a
/// checkpoint's writer encodes and writes the whole live state, and at full priority it took
/// a core from the shards (and from clients on the same machine) for the second it ran.
fn background_priority() {
    // SAFETY: gettid and setpriority act on this thread's scheduling only; no memory is
    // involved.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot lower a thread's priority");
    }
}

/// This thread's nice value.
fn nice() -> i32 {
    // SAFETY: as above; getpriority reads this thread's scheduling only.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Revision;
    use bytes::Bytes;

    fn item(n: i64) -> Item {
        Item {
            key: Bytes::from(format!("k{n:06}")),
            generation: 0,
            ver: 1,
            created: Revision { main: n, sub: 0 },
            rev: Revision { main: n, sub: 0 },
            lease: 0,
            value: Some(Bytes::from(vec![n as u8; 100])),
        }
    }

    /// The items written, how many times the work was handed over, and the nice value of
    /// the thread that finished.
    fn write(hurry_after: Option<usize>, hurried_from_start: bool) -> (Vec<Item>, u32, i32) {
        let dir = tempfile::tempdir().unwrap();
        let hurry = Hurry::default();
        hurry.store(hurried_from_start, Ordering::Relaxed);
        let (mut t, tx) =
            WriterThread::start(dir.path().to_path_buf(), 9, b"{}".to_vec(), hurry.clone())
                .unwrap();
        for b in 0..10i64 {
            if hurry_after == Some(b as usize) {
                hurry.store(true, Ordering::Relaxed);
            }
            send(
                &tx,
                &mut t,
                Batch::Items((b * 100..(b + 1) * 100).map(item).collect()),
            );
        }
        send(&tx, &mut t, Batch::End);
        while !t.ended().unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (loaded, bytes) = t.result().unwrap().expect("written");
        assert!(bytes > 100_000);
        assert_eq!(loaded.seq, 9);
        (loaded.items().collect(), t.handed, t.nice)
    }

    /// As the owner sends: never blocking, looking at the thread meanwhile.
    fn send(tx: &SyncSender<Batch>, t: &mut WriterThread, mut batch: Batch) {
        loop {
            match tx.try_send(batch) {
                Ok(()) => break,
                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                    batch = back;
                    t.ended().unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// An owner whose walk stops on an error drops its sender without the end: the thread
    /// abandons the checkpoint rather than finish one that lacks the keys not walked yet
    /// (which a restart would load as the whole state).
    #[test]
    fn a_walk_that_stops_without_its_end_leaves_no_checkpoint() {
        for hurried in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let hurry = Hurry::default();
            hurry.store(hurried, Ordering::Relaxed);
            let (mut t, tx) =
                WriterThread::start(dir.path().to_path_buf(), 9, b"{}".to_vec(), hurry).unwrap();
            send(&tx, &mut t, Batch::Items((0..100).map(item).collect()));
            drop(tx);
            while !t.ended().unwrap() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert!(t.result().unwrap().is_none(), "abandoned");
            assert_eq!(checkpoint::newest(dir.path()).unwrap(), None);
        }
    }

    #[test]
    fn a_hurried_writer_hands_its_work_to_a_thread_at_normal_priority() {
        let all: Vec<Item> = (0..1000).map(item).collect();
        let base = nice();
        // Not hurried: one thread at nice 19 writes it all.
        assert_eq!(write(None, false), (all.clone(), 0, 19));
        // Hurried from the start: never niced, nothing to hand over.
        assert_eq!(write(None, true), (all.clone(), 0, base));
        // Hurried half-way: a thread at the spawner's priority goes on where the niced one
        // stopped, and the checkpoint holds every item once, in order.
        assert_eq!(write(Some(5), false), (all, 1, base));
    }
}
