//! One segment file: preallocated, named `<first record seq, 16 hex digits>.log`, mapped
//! read-only and shared, so that what io_uring writes through the page cache is visible in the
//! mapping without a copy.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use glommio::io::BufferedFile;
use memmap2::Mmap;

pub struct Segment {
    path: PathBuf,
    /// The whole file, mapped.
    map: Bytes,
    /// Bytes of records in it, for a segment no longer taking appends (the log tracks the
    /// last one's itself); its preallocated tail is not data.
    pub(crate) written: u64,
}

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what} {}: {e}", path.display()))
}

fn map(path: &Path) -> io::Result<Bytes> {
    let file = File::open(path).map_err(|e| err(path, "cannot open", e))?;
    // SAFETY: segment files are only ever appended to at offsets past the records anyone
    // reads, through the page cache this mapping shares, and are never truncated while mapped
    // (a segment is only removed once no revision points into it).
    let m = unsafe { Mmap::map(&file) }.map_err(|e| err(path, "cannot map", e))?;
    Ok(Bytes::from_owner(m))
}

impl Segment {
    pub fn open(path: &Path) -> io::Result<Segment> {
        let map = map(path)?;
        Ok(Segment {
            path: path.to_path_buf(),
            written: map.len() as u64,
            map,
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
        Ok(Segment {
            map: map(&path)?,
            path,
            written: 0,
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

    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }
}
