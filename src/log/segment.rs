//! One segment file: preallocated, named `<first record seq, 16 hex digits>.log`, mapped
//! read-only and shared, so that what the log writes through the page cache is visible in the
//! mapping without a copy.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use glommio::io::BufferedFile;
use memmap2::Mmap;

pub struct Segment {
    path: PathBuf,
    /// The whole file, mapped.
    map: Bytes,
    /// Dead once the mapping is gone: its last slice dropped.
    mapped: Weak<()>,
    /// Bytes of records in it, for a segment no longer taking appends (the log tracks the
    /// last one's itself); its preallocated tail is not data.
    pub(crate) written: u64,
    /// Its name now belongs to a newer segment with the same first record: this one held no
    /// record when a batch too large for it came, and the new one was renamed over its file.
    pub(crate) replaced: bool,
}

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what} {}: {e}", path.display()))
}

/// A file's mapping (a segment's or a checkpoint part's), which tells through a `Weak` when it
/// is unmapped (its last `Bytes` slice dropped): a released segment's or a superseded
/// checkpoint's file is only cut down then ([`super::remove_files`]).
/// The fields drop in order: the mapping goes before the `Arc` that says it is there.
struct Mapped {
    map: Mmap,
    _alive: Arc<()>,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// Maps `file` (at `path`) read-only.
///
/// # Safety
///
/// Nothing may change the file's bytes that a reader of the mapping reads, nor truncate it
/// while it is mapped.
pub(super) unsafe fn map_tracked(file: &File, path: &Path) -> io::Result<(Bytes, Weak<()>)> {
    // SAFETY: the caller's promise.
    let m = unsafe { Mmap::map(file) }.map_err(|e| err(path, "cannot map", e))?;
    let alive = Arc::new(());
    let mapped = Arc::downgrade(&alive);
    Ok((
        Bytes::from_owner(Mapped {
            map: m,
            _alive: alive,
        }),
        mapped,
    ))
}

fn map(path: &Path) -> io::Result<(Bytes, Weak<()>)> {
    let file = File::open(path).map_err(|e| err(path, "cannot open", e))?;
    // SAFETY: segment files are only ever appended to at offsets past the records anyone
    // reads, through the page cache this mapping shares, and are never truncated while mapped
    // (a released segment is cut down only once this mapping is gone).
    unsafe { map_tracked(&file, path) }
}

impl Segment {
    pub fn open(path: &Path) -> io::Result<Segment> {
        let (map, mapped) = map(path)?;
        Ok(Segment {
            path: path.to_path_buf(),
            written: map.len() as u64,
            replaced: false,
            map,
            mapped,
        })
    }

    /// Creates, preallocates and maps a new segment, durably: the file is created under a
    /// temporary name, preallocated and synced, renamed, and the directory synced, so a crash
    /// leaves either no segment or a whole zero-filled one.
    pub async fn create(dir: &Path, first_seq: u64, bytes: u64) -> io::Result<Segment> {
        let path = dir.join(format!("{first_seq:016x}.log"));
        let tmp = dir.join(format!("{first_seq:016x}.tmp"));
        let mut file = BufferedFile::create(&tmp)
            .await
            .map_err(|e| err(&tmp, "cannot create", e))?;
        file.pre_allocate(bytes, false)
            .await
            .map_err(|e| err(&tmp, "cannot preallocate", e))?;
        file.fdatasync()
            .await
            .map_err(|e| err(&tmp, "fdatasync failed on", e))?;
        file.rename(&path)
            .await
            .map_err(|e| err(&path, "cannot rename into", e))?;
        // Directory sync: rare (once per segment), so a blocking call is acceptable here.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(dir, "cannot sync directory", e))?;
        let _ = file.close().await;
        let (map, mapped) = map(&path)?;
        Ok(Segment {
            map,
            mapped,
            path,
            written: 0,
            replaced: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sequence number of the segment's first record (from its name).
    pub fn first_seq(&self) -> u64 {
        self.path
            .file_stem()
            .and_then(|n| n.to_str())
            .and_then(|n| u64::from_str_radix(n, 16).ok())
            .expect("segment names are checked when opened or created")
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn map(&self) -> &Bytes {
        &self.map
    }

    /// Dead once the mapping is gone.
    pub fn mapped(&self) -> Weak<()> {
        self.mapped.clone()
    }

    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }
}
