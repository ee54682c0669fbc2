//! Generates the man pages and shell completions from the clap definitions the programs parse
//! with, so they never drift from the code; the Debian package ships what this writes.
//!
//!     cargo run --example package_assets -- target/assets
//!
//! Writes OUT/man/overcommitctl.1 (+ one page per subcommand), OUT/man/overcommitd.8,
//! OUT/man/overcommitd.toml.5 (from docs/man/), and OUT/completions/{bash,zsh,fish}.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use overcommit::cli::{CtlCli, DaemonCli};

fn generate(out: &Path) -> std::io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;

    clap_mangen::generate_to(CtlCli::command(), &man)?;
    let daemon = DaemonCli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(daemon)
        .section("8")
        .render(&mut page)?;
    std::fs::write(man.join("overcommitd.8"), page)?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        manifest.join("docs/man/overcommitd.toml.5"),
        man.join("overcommitd.toml.5"),
    )?;

    for (shell, name) in [
        (Shell::Bash, "overcommitctl"),
        (Shell::Zsh, "_overcommitctl"),
        (Shell::Fish, "overcommitctl.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut CtlCli::command(), "overcommitctl", &mut script);
        std::fs::write(completions.join(name), script)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/assets"), PathBuf::from);
    match generate(&out) {
        Ok(()) => {
            println!("wrote man pages and completions under {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("package_assets: {e}");
            ExitCode::FAILURE
        }
    }
}
