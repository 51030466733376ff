//! Where the shards run: ferrocd keeps to the CPUs it was given (taskset, a container's
//! cpuset) instead of pinning its shards to CPUs 0, 1, ...

mod common;

use common::Server;

/// The CPUs this test may run on, from its own affinity mask.
fn allowed() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// Every thread of `pid` may run only on `cpu`; returns how many shards there are (threads
/// named after them: each shard's executor and its blocking-pool thread share a name).
/// io_uring's worker threads are left out: which mask they get is the kernel's choice (they
/// inherit their creator's since about 6.2, the node's or every CPU before).
fn threads_only_on(pid: u32, cpu: usize) -> usize {
    let tasks = format!("/proc/{pid}/task");
    let mut shards = std::collections::HashSet::new();
    for t in std::fs::read_dir(&tasks).expect("tasks") {
        let dir = t.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let Some(allowed) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        else {
            continue; // the thread ended meanwhile
        };
        if comm.starts_with("iou-") {
            continue;
        }
        if comm.starts_with("shard-") {
            shards.insert(comm.trim().to_string());
        }
        assert_eq!(
            allowed.trim(),
            cpu.to_string(),
            "thread {} ({}) may run on CPUs {}, outside the {cpu} it was given",
            dir.display(),
            comm.trim(),
            allowed.trim()
        );
    }
    shards.len()
}

#[test]
fn shards_stay_on_the_cpus_the_server_was_given() {
    // The last CPU this test may use: with two or more, not CPU 0, where an unaware server
    // would pin its first shard.
    let cpu = *allowed().last().expect("a CPU");
    if cpu == 0 {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI has 2 cores; this test needs a CPU other than CPU 0"
        );
    }
    // One shard per CPU given: pinned there (it answered /health before this: it serves).
    let s = Server::ferrocd_on_cpus(&cpu.to_string(), &[]);
    assert_eq!(threads_only_on(s.pid(), cpu), 1, "one CPU given: one shard");
    drop(s);
    // More shards than CPUs: none pinned, each on the process's mask.
    let s = Server::ferrocd_on_cpus(&cpu.to_string(), &["--shards", "2"]);
    assert_eq!(threads_only_on(s.pid(), cpu), 2, "--shards 2");
}
