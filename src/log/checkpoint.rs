//! Checkpoints: the whole state as it was after one record of the log, with every value the
//! index holds copied in, so that the log before that record can be deleted. Files under
//! `<data-dir>/member/checkpoint/`, named `<record seq, 16 hex>-<part, 4 digits>.ckpt`; byte
//! layout in docs/log-format.md.
//!
//! A checkpoint is written by a thread of its own (values are read from the log's mappings
//! there, so that page faults never stall a shard) while the owner shard goes on serving: the
//! owner walks its index in steps, each giving the keys as they were at the checkpoint's
//! revision. Parts are written under a temporary name, synced, and renamed highest part first,
//! part 0 (which holds the metadata) last, then the directory is synced: a checkpoint exists
//! exactly when its part 0 does, and then all of it does. Only then may the log before it go.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use bytes::Bytes;

use super::record::{self, Kind, HEADER_BYTES};
use crate::mvcc::Revision;

/// A part grows to at most about this many bytes (value locations are 32-bit offsets).
pub const PART_BYTES_MAX: u64 = 1 << 30;
/// The writer writes back what it wrote every this many bytes (`sync_file_range`, waiting for
/// it), so that the disk takes the checkpoint in small pieces, and a log's fdatasync queues
/// behind one piece at most rather than behind everything written so far. With 8 MiB pieces
/// (an fdatasync each) 25-35 of the log's fdatasyncs per run took over 2 ms (2-6 ms) during
/// checkpoints, 9-12 with 1 MiB ones, on a disk writing 1.4 GB/s
/// (tuning/results/2026-11-27-checkpoint-write-back.md).
const WRITE_BACK_BYTES: u64 = 1 << 20;
const MAGIC: &[u8; 8] = b"FRCDCKPT";
const VERSION: u32 = 1;
/// Bytes of a part's header: magic, version, checkpoint seq, part number, padding.
const PART_HEADER_BYTES: usize = 32;

const ITEM: u8 = 1;
const META: u8 = 2;
const END: u8 = 3;

/// One revision of one key as a checkpoint holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Bytes,
    /// The generation's ordinal within the key (oldest first).
    pub generation: u32,
    /// The generation's put count at the checkpoint and its creation revision.
    pub ver: i64,
    pub created: Revision,
    pub rev: Revision,
    pub lease: i64,
    /// The value; None for a tombstone.
    pub value: Option<Bytes>,
}

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what} {}: {e}", path.display()))
}

fn part_name(seq: u64, part: u32) -> String {
    format!("{seq:016x}-{part:04}.ckpt")
}

/// Writes one checkpoint (on a thread of its own: blocking I/O).
pub struct Writer {
    dir: PathBuf,
    seq: u64,
    part: u32,
    file: io::BufWriter<File>,
    part_bytes: u64,
    record_seq: u64,
    items: u64,
    /// Each part's temporary name, unique to this writer (see [`Writer::open_part`]), and a
    /// second handle to its file, to cut down an abandoned checkpoint's own files.
    tmp: Vec<(PathBuf, File)>,
    /// Makes this writer's temporary names its own.
    unique: String,
    buf: Vec<u8>,
    /// Where the current part's write-back has reached (a file offset).
    written_back: u64,
}

impl Writer {
    /// Starts the checkpoint of the state after record `seq`, with its metadata (JSON).
    pub fn create(dir: &Path, seq: u64, meta: &[u8]) -> io::Result<Writer> {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, "cannot create", e))?;
        refuse_existing(dir, seq)?;
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let unique = format!("{}-{n}", std::process::id());
        let (path, file, handle) = Self::open_part(dir, seq, 0, &unique)?;
        let mut w = Writer {
            dir: dir.to_path_buf(),
            seq,
            part: 0,
            file,
            part_bytes: PART_HEADER_BYTES as u64,
            record_seq: 1,
            items: 0,
            tmp: vec![(path, handle)],
            unique,
            buf: Vec::new(),
            written_back: 0,
        };
        let mut payload = vec![META];
        payload.extend_from_slice(meta);
        w.record(&payload)?;
        Ok(w)
    }

    /// Creates a part's temporary file under a name of this writer's own (`unique`: the
    /// process and a count of writers), never one another writer uses: an abandoned writer of
    /// the same checkpoint may still be cutting its files down while a retry writes (a file
    /// truncated and shared between the two, as `File::create` would, could be cut under the
    /// retry). A leftover under the name (another process's, with the same pid) is unlinked.
    /// Returns the name, the file and a second handle to it.
    fn open_part(
        dir: &Path,
        seq: u64,
        part: u32,
        unique: &str,
    ) -> io::Result<(PathBuf, io::BufWriter<File>, File)> {
        let path = dir.join(format!("{}.{unique}.tmp", part_name(seq, part)));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(err(&path, "cannot remove", e));
            }
            _ => {}
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| err(&path, "cannot create", e))?;
        let handle = f.try_clone().map_err(|e| err(&path, "cannot open", e))?;
        let mut f = io::BufWriter::with_capacity(1 << 20, f);
        let mut head = [0u8; PART_HEADER_BYTES];
        head[..8].copy_from_slice(MAGIC);
        head[8..12].copy_from_slice(&VERSION.to_le_bytes());
        head[12..20].copy_from_slice(&seq.to_le_bytes());
        head[20..24].copy_from_slice(&part.to_le_bytes());
        f.write_all(&head)
            .map_err(|e| err(&path, "cannot write", e))?;
        Ok((path, f, handle))
    }

    fn record(&mut self, payload: &[u8]) -> io::Result<()> {
        self.buf.clear();
        record::encode(&mut self.buf, self.record_seq, Kind::Data, payload);
        self.record_seq += 1;
        self.part_bytes += self.buf.len() as u64;
        let path = &self.tmp.last().expect("a part").0;
        self.file
            .write_all(&self.buf)
            .map_err(|e| err(path, "cannot write", e))?;
        if self.part_bytes - self.written_back >= WRITE_BACK_BYTES {
            self.file
                .flush()
                .map_err(|e| err(path, "cannot write", e))?;
            let n = self.part_bytes - self.written_back;
            super::zero::write_back(self.file.get_ref(), self.written_back, n)
                .map_err(|e| err(path, "cannot write back", e))?;
            self.written_back = self.part_bytes;
        }
        Ok(())
    }

    /// Adds one revision.
    pub fn item(&mut self, it: &Item) -> io::Result<()> {
        if self.part_bytes > PART_BYTES_MAX {
            self.part += 1;
            let (path, next, handle) =
                Self::open_part(&self.dir, self.seq, self.part, &self.unique)?;
            // Recorded before the previous part is finished: an abandon removes both.
            self.tmp.push((path, handle));
            let done = std::mem::replace(&mut self.file, next);
            finish_file(done, &self.tmp[self.tmp.len() - 2].0)?;
            self.part_bytes = PART_HEADER_BYTES as u64;
            self.written_back = 0;
        }
        let value_len = it.value.as_ref().map_or(0, |v| v.len());
        let mut p = Vec::with_capacity(64 + it.key.len() + value_len);
        p.push(ITEM);
        p.extend_from_slice(&(it.key.len() as u32).to_le_bytes());
        p.extend_from_slice(&it.key);
        p.extend_from_slice(&it.generation.to_le_bytes());
        for v in [
            it.ver,
            it.created.main,
            it.created.sub,
            it.rev.main,
            it.rev.sub,
            it.lease,
        ] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        match &it.value {
            None => p.push(0),
            Some(v) => {
                p.push(1);
                p.extend_from_slice(&(v.len() as u32).to_le_bytes());
                p.extend_from_slice(v);
            }
        }
        self.items += 1;
        self.record(&p)
    }

    /// Ends the checkpoint: the end record, every part synced and renamed (part 0 last), the
    /// directory synced. Returns the parts' final paths.
    pub fn finish(mut self) -> io::Result<Vec<PathBuf>> {
        let mut end = vec![END];
        end.extend_from_slice(&self.items.to_le_bytes());
        end.extend_from_slice(&(self.part + 1).to_le_bytes());
        self.record(&end)?;
        let last = self.tmp.last().expect("a part").0.clone();
        finish_file(self.file, &last)?;
        let finals: Vec<PathBuf> = (0..=self.part)
            .map(|p| self.dir.join(part_name(self.seq, p)))
            .collect();
        for ((tmp, _), fin) in self.tmp.iter().zip(&finals).rev() {
            std::fs::rename(tmp, fin).map_err(|e| err(fin, "cannot rename into", e))?;
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(&self.dir, "cannot sync directory", e))?;
        Ok(finals)
    }

    /// Abandons the checkpoint, removing what was written. Each part's name (this writer's
    /// own) is unlinked, then the file is cut down through this writer's handle, as
    /// superseded parts are cut ([`remove_superseded`]): a part grows to 1 GiB, and its
    /// blocks are freed 4 MiB at a time instead of all at once when the last handle closes.
    /// Nothing maps or holds a temporary file.
    pub fn abandon(self) {
        // What is still buffered is dropped, not written into a file about to go.
        drop(self.file.into_parts());
        for (p, f) in &self.tmp {
            let _ = std::fs::remove_file(p);
            if let Err(e) = super::cut_file_down(f, p, super::CUT_PAUSE) {
                tracing::warn!(error = %e, "an abandoned checkpoint part is freed whole");
            }
        }
    }
}

fn finish_file(f: io::BufWriter<File>, path: &Path) -> io::Result<()> {
    let f = f
        .into_inner()
        .map_err(|e| err(path, "cannot write", e.error()))?;
    f.sync_all().map_err(|e| err(path, "cannot sync", e))
}

/// Makes the parts of a checkpoint received from another member (`staged`, in part order)
/// this member's checkpoint of record `seq` in `dir`: each part's header takes the new seq and
/// is synced, then the parts are renamed highest first, part 0 last, and the directory synced,
/// as [`Writer::finish`] does. Returns the parts' final paths.
pub fn adopt(staged: &[PathBuf], dir: &Path, seq: u64) -> io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir).map_err(|e| err(dir, "cannot create", e))?;
    refuse_existing(dir, seq)?;
    for p in staged {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .map_err(|e| err(p, "cannot open", e))?;
        f.write_all_at(&seq.to_le_bytes(), 12)
            .map_err(|e| err(p, "cannot write", e))?;
        f.sync_all().map_err(|e| err(p, "cannot sync", e))?;
    }
    let finals: Vec<PathBuf> = (0..staged.len())
        .map(|i| dir.join(part_name(seq, i as u32)))
        .collect();
    for (from, to) in staged.iter().zip(&finals).rev() {
        std::fs::rename(from, to).map_err(|e| err(to, "cannot rename into", e))?;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, "cannot sync directory", e))?;
    Ok(finals)
}

/// Fails if checkpoint `seq` is already in `dir`: a second one of the same record would be
/// renamed over its parts one at a time (a crash in between would leave parts of both). The
/// members take none of a record already checkpointed; this holds if their own account of it
/// were ever wrong.
fn refuse_existing(dir: &Path, seq: u64) -> io::Result<()> {
    let first = dir.join(part_name(seq, 0));
    if first.exists() {
        return Err(err(
            &first,
            "a checkpoint of this record exists:",
            "not replaced",
        ));
    }
    Ok(())
}

/// The parts of checkpoint `seq` in `dir`, in order (for sending it to another member).
pub fn parts_of(dir: &Path, seq: u64) -> io::Result<Vec<PathBuf>> {
    let mut parts = Vec::new();
    for p in 0.. {
        let path = dir.join(part_name(seq, p));
        if !path.exists() {
            break;
        }
        parts.push(path);
    }
    if parts.is_empty() {
        return Err(err(dir, "no checkpoint", format!("{seq:016x} in")));
    }
    Ok(parts)
}

/// The newest checkpoint in `dir`: its record seq and its parts' paths, in order. Leftovers
/// (temporary files, parts of an unfinished checkpoint, older checkpoints) are removed, whole:
/// for a start, when nothing maps them yet.
pub fn newest(dir: &Path) -> io::Result<Option<(u64, Vec<PathBuf>)>> {
    let Some(found) = list(dir)? else {
        return Ok(None);
    };
    for path in found
        .tmp
        .iter()
        .chain(&found.older)
        .chain(&found.unfinished)
    {
        std::fs::remove_file(path).map_err(|e| err(path, "cannot remove", e))?;
    }
    Ok(found.newest)
}

/// Removes the parts of every checkpoint in `dir` older than the newest, once a newer one
/// replaced them, on a thread of its own (blocking). Temporary files and the parts of a newer
/// checkpoint not complete yet (one being adopted from a leader renames part 0 last) stay:
/// their writer owns them, and a start removes what a crash left. The parts are cut down
/// first, `pause` apart, as released log segments are
/// ([`super::remove_released`]): a part grows to 1 GiB, whose unlink took 219-229 ms on the
/// 2-core machine's ext4 and held another file's fdatasync up to 52-68 ms, against 2.3-10.0 ms
/// with the file cut down 4 MiB at a time first (`tuning/unlink-stall.py DIR plain|trunc 1024 1`,
/// tuning/results/2026-11-27-checkpoint-cut.md). A part still mapped (a value being sent) or
/// read (a Raft snapshot being sent from it, see [`hold`]) is waited for, then unlinked whole.
pub fn remove_superseded(dir: &Path, pause: std::time::Duration) -> io::Result<()> {
    remove_superseded_waiting(dir, pause, super::MAPPED_WAIT)
}

fn remove_superseded_waiting(
    dir: &Path,
    pause: std::time::Duration,
    wait: std::time::Duration,
) -> io::Result<()> {
    let Some(found) = list(dir)? else {
        return Ok(());
    };
    let mut doomed = Vec::new();
    for path in found.older {
        match std::fs::metadata(&path) {
            Ok(m) => doomed.push(Superseded {
                id: (m.dev(), m.ino()),
                path,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&path, "cannot stat", e)),
        }
    }
    super::remove_files(&doomed, pause, wait)
}

/// What a checkpoint directory holds.
struct Listed {
    /// The newest checkpoint (its part 0 exists): its seq and its parts, in order.
    newest: Option<(u64, Vec<PathBuf>)>,
    /// Temporary files (a checkpoint being written or abandoned).
    tmp: Vec<PathBuf>,
    /// The parts of checkpoints older than the newest.
    older: Vec<PathBuf>,
    /// The parts of newer ones without their part 0 (being renamed, or left by a crash).
    unfinished: Vec<PathBuf>,
}

fn list(dir: &Path) -> io::Result<Option<Listed>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut tmp = Vec::new();
    let mut parts: Vec<(u64, u32, PathBuf)> = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| err(dir, "cannot list", e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".tmp") {
            tmp.push(path);
            continue;
        }
        let parsed = name.strip_suffix(".ckpt").and_then(|n| {
            let (s, p) = n.split_once('-')?;
            Some((u64::from_str_radix(s, 16).ok()?, p.parse::<u32>().ok()?))
        });
        match parsed {
            Some((s, p)) => parts.push((s, p, path)),
            None => {
                return Err(err(
                    &path,
                    "unexpected file in the checkpoint directory",
                    "",
                ))
            }
        }
    }
    parts.sort();
    // The newest checkpoint whose part 0 exists (renamed last, so all of it is there).
    let newest = parts
        .iter()
        .filter(|(_, p, _)| *p == 0)
        .map(|(s, _, _)| *s)
        .max();
    let (mut keep, mut older, mut unfinished) = (Vec::new(), Vec::new(), Vec::new());
    for (s, _, path) in parts {
        match newest {
            Some(n) if s == n => keep.push(path),
            Some(n) if s < n => older.push(path),
            _ => unfinished.push(path),
        }
    }
    Ok(Some(Listed {
        newest: newest.map(|s| (s, keep)),
        tmp,
        older,
        unfinished,
    }))
}

/// A superseded checkpoint's part, known by its file's identity (device, inode) to [`HELD`].
struct Superseded {
    path: PathBuf,
    id: FileId,
}

impl super::Doomed for Superseded {
    fn path(&self) -> &Path {
        &self.path
    }
    fn held(&self) -> bool {
        let held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        held.holds(self.id)
    }
    fn claim(&self) -> bool {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if held.holds(self.id) {
            return false;
        }
        held.cutting.push(self.id);
        true
    }
    fn unclaim(&self) {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        held.cutting.retain(|&i| i != self.id);
    }
}

/// Who holds checkpoint files, by file (device, inode): each loaded part's mapping, and each
/// Raft snapshot being sent ([`hold`]); and the files being cut down, which nobody may take
/// hold of. Entries whose holder is gone are dropped as new ones come. A process has a few
/// checkpoints' parts at a time, so lists do.
static HELD: std::sync::Mutex<Holders> = std::sync::Mutex::new(Holders {
    holders: Vec::new(),
    cutting: Vec::new(),
});

/// A file's device and inode.
type FileId = (u64, u64);

struct Holders {
    holders: Vec<(FileId, Weak<()>)>,
    cutting: Vec<FileId>,
}

impl Holders {
    fn holds(&self, id: FileId) -> bool {
        self.holders
            .iter()
            .any(|(i, w)| *i == id && w.strong_count() > 0)
    }
}

/// Registers `holder` as holding the file `id`, unless that file is being cut down.
fn register(id: FileId, holder: Weak<()>, path: &Path) -> io::Result<()> {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if held.cutting.contains(&id) {
        return Err(err(path, "cannot use", "a newer checkpoint replaced it"));
    }
    held.holders.retain(|(_, w)| w.strong_count() > 0);
    held.holders.push((id, holder));
    Ok(())
}

fn file_id(file: &File, path: &Path) -> io::Result<FileId> {
    let m = file.metadata().map_err(|e| err(path, "cannot stat", e))?;
    Ok((m.dev(), m.ino()))
}

/// Holds checkpoint files while it lives: a superseded checkpoint's part is not cut down under
/// a Raft snapshot being sent from it (it is unlinked whole instead, and stays readable
/// through the open files). Files already being cut down cannot be held.
pub struct Held {
    _alive: Arc<()>,
}

/// Opens the files at `paths` and holds them (see [`Held`]) while the returned files are read.
pub fn hold(paths: &[PathBuf]) -> io::Result<(Held, Vec<File>)> {
    let alive = Arc::new(());
    let mut files = Vec::new();
    for path in paths {
        let file = File::open(path).map_err(|e| err(path, "cannot open", e))?;
        register(file_id(&file, path)?, Arc::downgrade(&alive), path)?;
        files.push(file);
    }
    Ok((Held { _alive: alive }, files))
}

/// A checkpoint read back and checked: its metadata, the parts' mappings, and its revisions
/// read one at a time from the mappings ([`Loaded::items`]; values are slices of them), so
/// that memory does not grow with the size of the checkpoint.
pub struct Loaded {
    pub seq: u64,
    pub meta: Bytes,
    /// The parts' mappings (the value store reads values from them).
    pub maps: Vec<Bytes>,
    /// How many revisions it holds.
    pub count: u64,
}

impl Loaded {
    /// Every revision, in order.
    pub fn items(&self) -> Items<'_> {
        Items {
            maps: &self.maps,
            part: 0,
            off: PART_HEADER_BYTES,
        }
    }
}

/// The revisions of a checked checkpoint, in order.
pub struct Items<'a> {
    maps: &'a [Bytes],
    part: usize,
    off: usize,
}

impl Iterator for Items<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            let map = self.maps.get(self.part)?;
            if self.off >= map.len() {
                self.part += 1;
                self.off = PART_HEADER_BYTES;
                continue;
            }
            // Checked by `load`: a record that does not decode ends the walk.
            let r = record::decode_checked(&map[self.off..]).ok()?;
            let start = self.off + HEADER_BYTES;
            let p = map.slice(start..start + r.payload.len());
            self.off += record::record_bytes(r.payload.len());
            if p.first() == Some(&ITEM) {
                return parse_item(&p);
            }
        }
    }
}

/// Maps and checks every part of a checkpoint; any damage is refused, naming file and offset
/// (a checkpoint is complete once it has its name: nothing in it may be cut).
pub fn load(seq: u64, paths: &[PathBuf]) -> io::Result<Loaded> {
    let mut maps = Vec::new();
    let mut items = 0u64;
    let mut meta = None;
    let mut end = None;
    let mut record_seq = 1;
    for (i, path) in paths.iter().enumerate() {
        // Held before it is mapped: a file being cut down is refused, and one held is not cut.
        let file = File::open(path).map_err(|e| err(path, "cannot open", e))?;
        let id = file_id(&file, path)?;
        let opening = Arc::new(());
        register(id, Arc::downgrade(&opening), path)?;
        // SAFETY: a finished checkpoint is never written to again; it is removed only after a
        // newer one replaced it, and cut down only once nothing holds it (`HELD`).
        let (map, mapped) = unsafe { super::segment::map_tracked(&file, path) }?;
        register(id, mapped, path)?;
        drop(opening);
        let bad = |off: usize, why: &str| {
            err(
                path,
                "checkpoint corrupt:",
                format!("{why} at offset {off}; restore the data directory from a backup"),
            )
        };
        if map.len() < PART_HEADER_BYTES
            || &map[..8] != MAGIC
            || map[8..12] != VERSION.to_le_bytes()
            || map[12..20] != seq.to_le_bytes()
            || map[20..24] != (i as u32).to_le_bytes()
        {
            return Err(bad(0, "bad part header"));
        }
        let mut off = PART_HEADER_BYTES;
        while off < map.len() {
            if end.is_some() {
                return Err(bad(off, "bytes after the end record"));
            }
            let r = record::decode(&map[off..]).map_err(|e| bad(off, &format!("{e:?}")))?;
            if r.seq != record_seq || r.kind != Kind::Data {
                return Err(bad(off, "record out of sequence"));
            }
            record_seq += 1;
            let start = off + HEADER_BYTES;
            let p = map.slice(start..start + r.payload.len());
            off += record::record_bytes(r.payload.len());
            match p.first() {
                Some(&META) if meta.is_none() && i == 0 => meta = Some(p.slice(1..)),
                Some(&ITEM) if meta.is_some() => {
                    parse_item(&p).ok_or_else(|| bad(off, "malformed item"))?;
                    items += 1;
                }
                Some(&END) if p.len() == 13 => {
                    let n = u64::from_le_bytes(p[1..9].try_into().expect("8"));
                    let parts = u32::from_le_bytes(p[9..13].try_into().expect("4"));
                    if n != items || parts as usize != paths.len() {
                        return Err(bad(off, "end record disagrees with the contents"));
                    }
                    end = Some(());
                }
                _ => return Err(bad(off, "unexpected record")),
            }
        }
        maps.push(map);
    }
    if end.is_none() {
        let last = paths.last().map(PathBuf::as_path).unwrap_or(Path::new(""));
        return Err(err(
            last,
            "checkpoint corrupt:",
            "no end record; restore the data directory from a backup",
        ));
    }
    Ok(Loaded {
        seq,
        meta: meta.expect("checked"),
        maps,
        count: items,
    })
}

fn parse_item(p: &Bytes) -> Option<Item> {
    let mut at = 1usize;
    let take = |at: &mut usize, n: usize| -> Option<std::ops::Range<usize>> {
        let r = *at..at.checked_add(n)?;
        (r.end <= p.len()).then(|| {
            *at = r.end;
            r
        })
    };
    let u32_at = |at: &mut usize| -> Option<u32> {
        Some(u32::from_le_bytes(p[take(at, 4)?].try_into().ok()?))
    };
    let i64_at = |at: &mut usize| -> Option<i64> {
        Some(i64::from_le_bytes(p[take(at, 8)?].try_into().ok()?))
    };
    let klen = u32_at(&mut at)? as usize;
    let key = p.slice(take(&mut at, klen)?);
    let generation = u32_at(&mut at)?;
    let ver = i64_at(&mut at)?;
    let created = Revision {
        main: i64_at(&mut at)?,
        sub: i64_at(&mut at)?,
    };
    let rev = Revision {
        main: i64_at(&mut at)?,
        sub: i64_at(&mut at)?,
    };
    let lease = i64_at(&mut at)?;
    let value = match p[take(&mut at, 1)?][0] {
        0 => None,
        1 => {
            let vlen = u32_at(&mut at)? as usize;
            Some(p.slice(take(&mut at, vlen)?))
        }
        _ => return None,
    };
    (at == p.len()).then_some(Item {
        key,
        generation,
        ver,
        created,
        rev,
        lease,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, rev: i64, value: Option<&[u8]>) -> Item {
        Item {
            key: Bytes::copy_from_slice(key.as_bytes()),
            generation: 0,
            ver: 1,
            created: Revision { main: rev, sub: 0 },
            rev: Revision { main: rev, sub: 0 },
            lease: 7,
            value: value.map(Bytes::copy_from_slice),
        }
    }

    #[test]
    fn a_checkpoint_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let items = vec![
            item("a", 2, Some(b"one")),
            item("b", 3, None),
            item("c", 4, Some(&[7u8; 5000])),
            item("d", 5, Some(b"")),
        ];
        let mut w = Writer::create(dir.path(), 42, b"{\"x\":1}").unwrap();
        for it in &items {
            w.item(it).unwrap();
        }
        let paths = w.finish().unwrap();
        let (seq, found) = newest(dir.path()).unwrap().unwrap();
        assert_eq!((seq, &found), (42, &paths));
        // A second checkpoint of the same record is refused, not renamed over this one.
        let again = Writer::create(dir.path(), 42, b"{}")
            .err()
            .unwrap()
            .to_string();
        assert!(
            again.contains("a checkpoint of this record exists"),
            "{again}"
        );
        let staged = tempfile::tempdir().unwrap();
        let part = staged.path().join("part");
        std::fs::copy(&paths[0], &part).unwrap();
        assert!(adopt(std::slice::from_ref(&part), dir.path(), 42).is_err());
        assert!(part.exists());
        let l = load(seq, &found).unwrap();
        assert_eq!(&l.meta[..], b"{\"x\":1}");
        assert_eq!(l.count, 4);
        let read: Vec<Item> = l.items().collect();
        assert_eq!(read, items);
        // A value is a slice of the mapping, not a copy.
        let v = read[0].value.as_ref().unwrap();
        let m = &l.maps[0];
        let base = m.as_ptr() as usize;
        assert!((base..base + m.len()).contains(&(v.as_ptr() as usize)));
        // An unfinished newer checkpoint is ignored and removed; an older one too.
        let mut w = Writer::create(dir.path(), 50, b"{}").unwrap();
        w.item(&items[0]).unwrap();
        w.file.flush().unwrap();
        // An abandoned part is cut down before it is unlinked: a second name for it (taken
        // here to watch) is left empty, where an unlink alone would leave it whole.
        let watch = dir.path().join("watch");
        std::fs::hard_link(&w.tmp[0].0, &watch).unwrap();
        assert!(std::fs::metadata(&watch).unwrap().len() > 0);
        w.abandon();
        assert_eq!(std::fs::metadata(&watch).unwrap().len(), 0);
        std::fs::remove_file(&watch).unwrap();
        // A writer abandoned while a later writer of the same checkpoint has begun (a retry
        // after an error): the later one's files are its own, left whole, and it finishes.
        let mut a = Writer::create(dir.path(), 70, b"{}").unwrap();
        a.item(&items[0]).unwrap();
        a.file.flush().unwrap();
        let mut b = Writer::create(dir.path(), 70, b"{}").unwrap();
        for it in &items {
            b.item(it).unwrap();
        }
        a.abandon();
        let finished = b.finish().unwrap();
        assert_eq!(load(70, &finished).unwrap().count, 4);
        for p in finished {
            std::fs::remove_file(p).unwrap();
        }
        let mut w = Writer::create(dir.path(), 60, b"{}").unwrap();
        w.item(&items[0]).unwrap();
        drop(w); // never finished: only .tmp files
        assert_eq!(newest(dir.path()).unwrap().unwrap().0, 42);
        // Any flipped byte is refused.
        let bytes = std::fs::read(&paths[0]).unwrap();
        for at in (0..bytes.len()).step_by(97) {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            std::fs::write(&paths[0], &b).unwrap();
            assert!(load(42, &paths).is_err(), "a flip at {at} went unnoticed");
        }
        // So is a cut.
        std::fs::write(&paths[0], &bytes[..bytes.len() - 10]).unwrap();
        let e = load(42, &paths).err().unwrap().to_string();
        assert!(e.contains("checkpoint corrupt"), "{e}");
    }

    #[test]
    fn a_received_checkpoint_is_adopted_under_a_new_seq() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let mut w = Writer::create(from.path(), 7, b"{}").unwrap();
        w.item(&item("a", 2, Some(b"one"))).unwrap();
        let sent = w.finish().unwrap();
        assert_eq!(parts_of(from.path(), 7).unwrap(), sent);
        assert!(parts_of(from.path(), 8).is_err());
        // As a receiver stages it: under other names, then adopted as checkpoint 99.
        let staged = from.path().join("part-0000");
        std::fs::copy(&sent[0], &staged).unwrap();
        // An older checkpoint of the receiver's goes at the next look.
        Writer::create(to.path(), 5, b"{}")
            .unwrap()
            .finish()
            .unwrap();
        let finals = adopt(std::slice::from_ref(&staged), to.path(), 99).unwrap();
        assert!(!staged.exists());
        assert_eq!(newest(to.path()).unwrap(), Some((99, finals.clone())));
        let l = load(99, &finals).unwrap();
        assert_eq!(l.items().count(), 1);
        // Its old seq no longer matches its header.
        assert!(load(7, &finals).is_err());
    }

    #[test]
    fn items_never_panic_on_garbage() {
        for n in 0..200u32 {
            let p: Vec<u8> = (0..n).map(|i| (i * 31 + n) as u8).collect();
            let mut q = vec![ITEM];
            q.extend(p);
            let _ = parse_item(&Bytes::from(q));
        }
    }

    /// A superseded checkpoint's part is cut down only when nothing holds it: a mapping with a
    /// value still in use, or a Raft snapshot being sent from it ([`hold`]). Without those
    /// checks the held value faults (SIGBUS) and the sender reads a shortened file.
    #[test]
    fn a_superseded_checkpoint_is_cut_only_once_nothing_holds_it() {
        let wait = std::time::Duration::from_millis(30);
        let pause = std::time::Duration::ZERO;
        let value = vec![9u8; 3 << 20];
        let write = |dir: &Path, seq: u64| {
            let mut w = Writer::create(dir, seq, b"{}").unwrap();
            w.item(&item("a", 2, Some(&value))).unwrap();
            w.finish().unwrap()
        };
        // A value of checkpoint 1 still in use when checkpoint 2 replaces it.
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path(), 1);
        let held_value = load(1, &first)
            .unwrap()
            .items()
            .next()
            .unwrap()
            .value
            .unwrap();
        let second = write(dir.path(), 2);
        remove_superseded_waiting(dir.path(), pause, wait).unwrap();
        assert!(!first[0].exists() && second[0].exists());
        assert_eq!(held_value, value, "the value reads back after the removal");
        drop(held_value);
        // A snapshot being sent from checkpoint 2 when checkpoint 3 replaces it.
        let (held, mut files) = hold(&second).unwrap();
        let sending = files.remove(0);
        let len = sending.metadata().unwrap().len();
        write(dir.path(), 3);
        remove_superseded_waiting(dir.path(), pause, wait).unwrap();
        assert!(!second[0].exists());
        assert_eq!(
            sending.metadata().unwrap().len(),
            len,
            "the sender's file is whole"
        );
        drop((held, sending));
        // Nothing holds checkpoint 3 when checkpoint 4 replaces it: it is cut down (a file
        // still open shows it), and only checkpoint 4 is left.
        let third = parts_of(dir.path(), 3).unwrap();
        let open = File::open(&third[0]).unwrap();
        let fourth = write(dir.path(), 4);
        remove_superseded_waiting(dir.path(), pause, wait).unwrap();
        assert_eq!(
            open.metadata().unwrap().len(),
            0,
            "cut down before the unlink"
        );
        assert_eq!(newest(dir.path()).unwrap(), Some((4, fourth.clone())));
        // While a part is being cut down, nothing may take hold of it or map it; afterwards
        // (here: the claim given back) it may.
        use crate::log::Doomed;
        let file = File::open(&fourth[0]).unwrap();
        let part = Superseded {
            id: file_id(&file, &fourth[0]).unwrap(),
            path: fourth[0].clone(),
        };
        assert!(part.claim());
        assert!(hold(&fourth).is_err());
        assert!(load(4, &fourth).is_err());
        part.unclaim();
        assert!(hold(&fourth).is_ok() && load(4, &fourth).is_ok());
        // A part held is not claimed.
        let (_held, _files) = hold(&fourth).unwrap();
        assert!(!part.claim());
    }

    /// The parts of a newer checkpoint whose part 0 is not there yet (being renamed into
    /// place) are not an older checkpoint's: only a start removes them.
    #[test]
    fn a_checkpoint_being_renamed_in_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), 1, b"{}").unwrap();
        w.item(&item("a", 2, Some(b"one"))).unwrap();
        let first = w.finish().unwrap();
        // Part 1 of checkpoint 5 is in place, its part 0 not yet.
        let coming = dir.path().join(part_name(5, 1));
        std::fs::write(&coming, b"part one").unwrap();
        remove_superseded_waiting(dir.path(), std::time::Duration::ZERO, Default::default())
            .unwrap();
        assert!(coming.exists() && first[0].exists());
        assert_eq!(newest(dir.path()).unwrap(), Some((1, first)));
        assert!(!coming.exists());
    }
}
