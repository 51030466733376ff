//! Not criterion: what one small write made durable costs through io_uring (glommio's
//! `BufferedFile`, as the log writes) against the same write and fdatasync as blocking system
//! calls, on the machine's disk (a temporary directory next to the build), 300 B records into
//! a preallocated 64 MiB file, 3,000 each, two rounds; and the system calls, with 300 B and
//! with 16 KiB (a batch at 100 clients) per fdatasync, into a preallocated file and into one
//! written with zeros first (as the log zeroes ahead of its appends). Prints p50 / mean / p99
//! of the write plus fdatasync and of the fdatasync alone.
//!
//! `cargo bench --bench fdatasync`

use std::os::unix::fs::FileExt;
use std::time::Instant;

const N: u64 = 3000;
const RECORD: usize = 300;
/// A group commit's write at 100 clients: about 40 put records.
const BATCH: usize = 16 << 10;

fn summary(mut v: Vec<u128>) -> String {
    v.sort_unstable();
    let mean = v.iter().sum::<u128>() as f64 / v.len() as f64;
    format!(
        "p50 {} us, mean {:.0} us, p99 {} us",
        v[v.len() / 2] / 1000,
        mean / 1000.0,
        v[v.len() * 99 / 100] / 1000
    )
}

fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
    for round in 1..=2 {
        let path = dir.path().join("ring");
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
            .spawn(move || async move {
                let f = glommio::io::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .buffered_open(&path)
                    .await
                    .expect("open");
                f.pre_allocate(64 << 20, false).await.expect("fallocate");
                f.fdatasync().await.expect("fdatasync");
                let (mut both, mut sync) = (Vec::new(), Vec::new());
                for i in 0..N {
                    let t0 = Instant::now();
                    f.write_at(vec![b'x'; RECORD], i * RECORD as u64)
                        .await
                        .expect("write");
                    let t1 = Instant::now();
                    f.fdatasync().await.expect("fdatasync");
                    both.push(t0.elapsed().as_nanos());
                    sync.push(t1.elapsed().as_nanos());
                }
                println!(
                    "round {round} io_uring: write + fdatasync {}; fdatasync {}",
                    summary(both),
                    summary(sync)
                );
            })
            .expect("an executor");
        ex.join().expect("the executor");
        for bytes in [RECORD, BATCH] {
            syscalls(round, &dir.path().join("syscalls"), false, bytes);
            syscalls(round, &dir.path().join("zeroed"), true, bytes);
        }
    }
}

/// Durable writes of `bytes` as blocking system calls, into a file preallocated as the log's
/// segments are (`fallocate`: unwritten extents, converted by the first write into them, so
/// each fdatasync also writes metadata), or, with `zeroed`, into one first written with zeros
/// and synced, as the log zeroes ahead of its appends (src/log/zero.rs).
fn syscalls(round: u32, path: &std::path::Path, zeroed: bool, bytes: usize) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("open");
    if zeroed {
        let zeros = vec![0u8; 1 << 20];
        for i in 0..64u64 {
            f.write_all_at(&zeros, i << 20).expect("write zeros");
        }
    } else {
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&f);
        // SAFETY: fd is the open file's for the whole call.
        assert_eq!(unsafe { libc::posix_fallocate(fd, 0, 64 << 20) }, 0);
    }
    f.sync_all().expect("fsync");
    let (mut both, mut sync) = (Vec::new(), Vec::new());
    let data = vec![b'x'; bytes];
    for i in 0..N {
        let t0 = Instant::now();
        f.write_all_at(&data, i * bytes as u64).expect("write");
        let t1 = Instant::now();
        f.sync_data().expect("fdatasync");
        both.push(t0.elapsed().as_nanos());
        sync.push(t1.elapsed().as_nanos());
    }
    let kind = if zeroed { "zeroed file" } else { "fallocated" };
    println!(
        "round {round} syscalls, {bytes} B, {kind}: write + fdatasync {}; fdatasync {}",
        summary(both),
        summary(sync)
    );
}
