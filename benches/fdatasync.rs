//! Not criterion: what one small write made durable costs through io_uring (glommio's
//! `BufferedFile`, as the log writes) against the same write and fdatasync as blocking system
//! calls, on the machine's disk (a temporary directory next to the build), 300 B records into
//! a preallocated 64 MiB file, 3,000 each, two rounds. Prints p50 / mean / p99 of the write
//! plus fdatasync and of the fdatasync alone.
//!
//! `cargo bench --bench fdatasync`

use std::os::unix::fs::FileExt;
use std::time::Instant;

const N: u64 = 3000;
const RECORD: usize = 300;

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
        let path = dir.path().join("syscalls");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        f.set_len(0).expect("truncate");
        // As the log preallocates: fallocate, not a file of zeros.
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&f);
        // SAFETY: fd is the open file's for the whole call.
        assert_eq!(unsafe { libc::posix_fallocate(fd, 0, 64 << 20) }, 0);
        f.sync_all().expect("fsync");
        let (mut both, mut sync) = (Vec::new(), Vec::new());
        for i in 0..N {
            let t0 = Instant::now();
            f.write_all_at(&[b'x'; RECORD], i * RECORD as u64)
                .expect("write");
            let t1 = Instant::now();
            f.sync_data().expect("fdatasync");
            both.push(t0.elapsed().as_nanos());
            sync.push(t1.elapsed().as_nanos());
        }
        println!(
            "round {round} syscalls: write + fdatasync {}; fdatasync {}",
            summary(both),
            summary(sync)
        );
    }
}
