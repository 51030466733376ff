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

#[test]
fn shards_stay_on_the_cpus_the_server_was_given() {
    // The last CPU this test may use: with two or more, not CPU 0, where an unaware server
    // would pin its first shard.
    let cpus = allowed();
    let cpu = *cpus.last().expect("a CPU");
    if cpus.len() < 2 {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI has 2 cores; this test needs a CPU other than the first"
        );
    }
    let s = Server::ferrocd_on_cpus(&cpu.to_string(), &[]);
    let tasks = format!("/proc/{}/task", s.pid());
    let mut shards = 0;
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
        if comm.starts_with("shard-") {
            shards += 1;
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
    // (It answered /health before this: it serves from there.)
    assert!(shards >= 1, "no shard thread found under {tasks}");
}
