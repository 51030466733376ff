//! ferroctl: an etcdctl-compatible command line for ferrocd (and etcd).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = ferrocd::ctl::main(args, &mut std::io::stdin().lock());
    std::process::exit(code);
}
