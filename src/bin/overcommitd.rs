use clap::Parser;

fn main() {
    let _cli = overcommit::cli::DaemonCli::parse();
}
