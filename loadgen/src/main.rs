//! loadgen: drives any etcd v3 endpoint (ferrocd or etcd) and reports latency histograms.
//! The workloads arrive with the loadgen issue; until then this binary says so and exits.

fn main() {
    eprintln!("loadgen: not implemented yet (see the loadgen issue)");
    std::process::exit(2);
}
