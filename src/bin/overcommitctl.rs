use std::process::ExitCode;

fn main() -> ExitCode {
    overcommit::ctl::main()
}
