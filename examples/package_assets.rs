//! Generates the man pages and shell completions from the clap definitions the programs parse
//! with, so they never drift from the code; the packages ship what this writes.
//!
//!     cargo run --example package_assets -- target/assets
//!
//! Writes OUT/man/overcommitctl.1 (+ one page per subcommand), OUT/man/overcommitd.8,
//! OUT/man/overcommitd.toml.5 (from docs/man/), and OUT/completions/{bash,zsh,fish}.
//!
//! The pages are clap's NAME, SYNOPSIS, DESCRIPTION, OPTIONS and COMMANDS, followed by the
//! sections written here: EXIT STATUS, ENVIRONMENT (from the options' environment variables),
//! FILES, EXAMPLES and SEE ALSO. The completions offer modes and common dtypes (the parsers'
//! possible values), the site's profiles for `apply`/`verify` (`overcommitctl profiles
//! --names` at completion time), file names only where a path is asked for.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory, ValueHint};
use clap_complete::Shell;
use overcommit::cli::{CtlCli, DaemonCli};

/// What every page of overcommitctl lists under FILES.
const CTL_FILES: &[(&str, &str)] = &[
    ("/etc/overcommitd/overcommitd.toml", "overcommitd's configuration (--config): read by apply --check, verify and profiles when the daemon does not answer, and by set/apply to know that the daemon is expected"),
    ("/etc/overcommitd/profiles.d/*.toml", "further profiles, beside the configuration"),
    ("/run/overcommitd/overcommitd.sock", "overcommitd's socket (--socket)"),
    ("/run/overcommit/verify-drift", "verify's record of the drift events it has reported (root; --drift-state)"),
    ("/proc/sys/vm/overcommit_memory, overcommit_ratio, overcommit_kbytes", "the policy, read (and written by set/apply --direct) under --proc-root"),
    ("/etc/sysctl.d/*.conf, /etc/sysctl.conf", "the boot policy status reports (under --sysctl-root)"),
    ("/usr/lib/overcommit/libovercommit_preload.so", "the job scope's preload library (run --scope job), when none is beside overcommitctl"),
    ("/usr/share/doc/overcommit/json.md", "the --json objects; their JSON Schemas are in schema/ beside it"),
];

const DAEMON_FILES: &[(&str, &str)] = &[
    ("/etc/overcommitd/overcommitd.toml", "the configuration (--config); see overcommitd.toml(5)"),
    ("/etc/overcommitd/profiles.d/*.toml", "profiles, read beside the configuration (or from --profiles-dir)"),
    ("/run/overcommitd/overcommitd.sock", "the socket (--socket), unless systemd passes one"),
    ("/run/overcommitd/state.json", "the journal of the baseline and the leases (--state-dir), re-read after a restart in the same boot"),
    ("/proc/sys/vm/", "the policy it reads and writes (under --proc-root)"),
    ("/etc/sysctl.d/*.conf, /etc/sysctl.conf", "the node's boot policy: the baseline when the configuration names none"),
    ("/lib/systemd/system/overcommitd.service, overcommitd.socket", "the units"),
];

/// Per page (the command's name; "overcommitctl" for the main page): exit status lines.
fn exit_status(page: &str) -> &'static [(&'static str, &'static str)] {
    match page {
        "overcommitd" => &[
            ("0", "stopped cleanly (SIGTERM, SIGINT), or --check-config found the configuration valid"),
            ("1", "could not start (socket, state directory, another daemon running)"),
            ("2", "invalid configuration"),
        ],
        "status" => &[
            ("0", "no critical finding"),
            ("1", "a finding is critical (allocations are failing or about to)"),
            ("2", "bad usage, or the proc root cannot be read"),
        ],
        "check" => &[
            ("0", "the allocation would succeed"),
            ("1", "it would be refused, or it is borderline"),
            ("2", "bad usage or input"),
        ],
        "set" | "apply" => &[
            ("0", "the baseline was changed (apply --check: nothing would change)"),
            ("1", "refused: not root, the lockout guard, or the kernel write failed (apply --check: something would change)"),
            ("2", "bad usage, an unknown profile, or an invalid configuration"),
            ("3", "overcommitd does not answer (or is expected on this node but does not answer: nothing is written unless --direct)"),
        ],
        "verify" => &[
            ("0", "the kernel is in line"),
            ("1", "drift: the kernel differs, or overcommitd enforced drift since the last verify"),
            ("2", "bad usage, an unknown profile, or nothing to verify"),
            ("3", "overcommitd is expected on this node but does not answer"),
        ],
        "lease" | "release" => &[
            ("0", "done; lease prints the lease id"),
            ("1", "denied, a limit, or no such lease"),
            ("2", "bad usage or input"),
            ("3", "overcommitd does not answer"),
        ],
        "run" => &[
            ("N", "the command's exit status, or 128+N when signal N ended it"),
            ("125", "run's own failure, the command not run: bad usage, the job scope impossible, the lease refused, overcommitd unreachable"),
            ("126", "the command was found but cannot be executed"),
            ("127", "the command was not found"),
        ],
        _ => &[
            ("0", "ok, allowed, in line"),
            ("1", "refused, borderline, drift, denied, or a critical finding (status)"),
            ("2", "bad usage, configuration or input"),
            ("3", "overcommitd unreachable, or expected on this node but not answering (set, apply and verify)"),
        ],
    }
}

fn examples(page: &str) -> &'static [(&'static str, &'static str)] {
    match page {
        "overcommitctl" => &[
            ("overcommitctl status", "the policy in force, the commit accounting and what to look at"),
            ("overcommitctl check \\-\\-shape 210000x210000 \\-\\-dtype float64", "will numpy.zeros((210000, 210000)) succeed here?"),
            ("overcommitctl run \\-\\-mode always \\-\\- python3 job.py", "run a job under a lease that ends with it"),
            ("overcommitctl apply hpc\\-strict \\-\\-check \\-\\-json", "what applying a profile would change (configuration management)"),
            ("overcommitctl verify \\-\\-json", "is the kernel what overcommitd expects (node health checks)"),
        ],
        "status" => &[
            ("overcommitctl status", "for people"),
            ("overcommitctl status \\-\\-short", "one line, for prompts and scripts"),
            ("overcommitctl status \\-\\-format prometheus", "for node\\-exporter's textfile collector"),
        ],
        "check" => &[
            ("overcommitctl check 352G", "one allocation of 352 GiB by the caller"),
            ("overcommitctl check \\-\\-shape 210000x210000 \\-\\-dtype f8 \\-\\-user", "a NumPy array, as an unprivileged process"),
            ("overcommitctl check 64G \\-\\-mode never \\-\\-ratio 80", "under a hypothetical policy"),
        ],
        "set" => &[
            ("overcommitctl set heuristic", "the kernel's default policy as the baseline"),
            ("overcommitctl set never \\-\\-ratio 95", "strict accounting at 95% of RAM plus swap"),
        ],
        "apply" => &[
            ("overcommitctl apply hpc\\-strict \\-\\-check", "what would change"),
            ("overcommitctl apply hpc\\-strict", "make the profile the baseline"),
        ],
        "verify" => &[
            ("overcommitctl verify", "the kernel against overcommitd's effective policy"),
            ("overcommitctl verify hpc\\-strict", "the baseline against a profile (live leases are listed)"),
            ("overcommitctl verify hpc\\-strict \\-\\-strict", "the kernel itself against the profile"),
        ],
        "profiles" => &[("overcommitctl profiles \\-\\-names", "one name per line")],
        "run" => &[
            ("overcommitctl run \\-\\- python3 job.py", "this job only when the kernel and the program allow it (job scope), else a lease"),
            ("overcommitctl run \\-\\-scope node \\-\\-mode always \\-\\- python3 job.py", "a node\\-wide lease for the life of the command"),
        ],
        "lease" => &[
            ("overcommitctl lease \\-\\-mode always \\-\\-ttl 12h \\-\\-tag slurm\\-$SLURM_JOB_ID", "a prolog's lease"),
            ("overcommitctl \\-\\-timeout 5s lease \\-\\-for\\-uid 1000 \\-\\-ttl\\-slurm 08:00:00 \\-\\-tag slurm\\-42", "root, on behalf of a job's user, for its Slurm time limit"),
        ],
        "release" => &[("overcommitctl release \\-\\-tag slurm\\-$SLURM_JOB_ID", "an epilog's release")],
        "leases" => &[("overcommitctl leases \\-\\-json", "the live leases")],
        "top" => &[
            ("sudo overcommitctl top \\-\\-by job", "the commit charge of each Slurm job"),
            ("overcommitctl top \\-\\-watch 2", "refresh every 2 seconds"),
        ],
        "overcommitd" => &[
            ("overcommitd \\-\\-check\\-config", "validate /etc/overcommitd/overcommitd.toml and its profiles"),
            ("overcommitd \\-\\-check\\-config \\-\\-config /tmp/new.toml \\-\\-profiles\\-dir /etc/overcommitd/profiles.d", "validate a candidate file with the installed profiles"),
            ("systemctl reload overcommitd", "apply a changed configuration (SIGHUP)"),
        ],
        _ => &[],
    }
}

fn see_also(page: &str) -> String {
    let mut pages = match page {
        "overcommitd" => vec!["overcommitctl(1)", "overcommitd.toml(5)"],
        "overcommitctl" => vec!["overcommitd(8)", "overcommitd.toml(5)"],
        _ => vec!["overcommitctl(1)", "overcommitd(8)", "overcommitd.toml(5)"],
    };
    pages.extend(["proc(5)", "sysctl(8)", "systemd.service(5)"]);
    pages.join(", ")
}

/// Text for roff: backslashes and leading control characters escaped (dashes already are in
/// the tables above).
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e");
    match escaped.chars().next() {
        Some('.') | Some('\'') => format!("\\&{escaped}"),
        _ => escaped,
    }
}

fn roff_plain(text: &str) -> String {
    roff_text(text).replace('-', "\\-")
}

/// The environment variables the command's options read, from the clap definitions.
fn environment(cmd: &Command) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            Some((
                env,
                format!("sets --{}", arg.get_long().unwrap_or_default()),
            ))
        })
        .collect();
    vars.sort();
    vars.dedup();
    vars
}

/// EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES and SEE ALSO, in roff.
fn closing_sections(page: &str, cmd: &Command) -> String {
    let mut roff = String::new();
    if page == "overcommitd" {
        roff.push_str(
            ".SH SIGNALS\n.TP\n.B SIGHUP\nreload the configuration; a broken one is refused and the running one stays\n\
             .TP\n.B SIGTERM, SIGINT\nend every lease, leave the baseline in force, and exit\n",
        );
    }
    roff.push_str(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in exit_status(page) {
        let _ = writeln!(roff, ".TP\n.B {code}\n{}", roff_plain(meaning));
    }
    roff.push_str(".SH ENVIRONMENT\n");
    let mut vars = environment(cmd);
    if page == "overcommitd" {
        vars.extend([
            (
                "LISTEN_FDS, LISTEN_PID".to_string(),
                "a socket passed by systemd (socket activation)".to_string(),
            ),
            (
                "NOTIFY_SOCKET, WATCHDOG_USEC".to_string(),
                "readiness, STATUS= and the watchdog (Type=notify)".to_string(),
            ),
            (
                "JOURNAL_STREAM".to_string(),
                "stderr is journald's: log to journald (--log auto)".to_string(),
            ),
        ]);
    } else {
        vars.push((
            "NO_COLOR".to_string(),
            "no colour, even on a terminal".to_string(),
        ));
    }
    for (var, meaning) in vars {
        let _ = writeln!(
            roff,
            ".TP\n.B {}\n{}",
            roff_plain(&var),
            roff_plain(&meaning)
        );
    }
    roff.push_str(".SH FILES\n");
    let files = if page == "overcommitd" {
        DAEMON_FILES
    } else {
        CTL_FILES
    };
    for (path, meaning) in files {
        let _ = writeln!(
            roff,
            ".TP\n.I {}\n{}",
            roff_plain(path),
            roff_plain(meaning)
        );
    }
    let examples = examples(page);
    if !examples.is_empty() {
        roff.push_str(".SH EXAMPLES\n");
        for (command, meaning) in examples {
            let _ = writeln!(roff, ".TP\n.B {command}\n{}", roff_plain(meaning));
        }
    }
    let _ = writeln!(roff, ".SH \"SEE ALSO\"\n{}", roff_plain(&see_also(page)));
    roff
}

/// One page: clap's sections, the command's long after-help as NOTES (the main pages' is
/// what the closing sections say), then the closing sections.
fn page(cmd: &Command, section: &str, page_name: &str, notes: bool) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone()).section(section);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out)?;
    }
    if notes && cmd.get_after_long_help().is_some() {
        let mut extra = Vec::new();
        man.render_extra_section(&mut extra)?;
        let extra = String::from_utf8_lossy(&extra).replacen(".SH EXTRA", ".SH NOTES", 1);
        out.extend_from_slice(extra.as_bytes());
    }
    out.extend_from_slice(closing_sections(page_name, cmd).as_bytes());
    Ok(out)
}

/// File names are completed only where a path is asked for; every other value is free text.
fn with_value_hints(cmd: Command) -> Command {
    let ids: Vec<(clap::Id, ValueHint)> = cmd
        .get_arguments()
        .filter(|a| a.get_value_hint() == ValueHint::Unknown && a.get_action().takes_values())
        .map(|a| {
            let name = a
                .get_value_names()
                .and_then(|n| n.first())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            let hint = match name.as_str() {
                "DIR" => ValueHint::DirPath,
                "FILE" | "PATH" => ValueHint::FilePath,
                "CMD" => ValueHint::CommandWithArguments,
                _ => ValueHint::Other,
            };
            (a.get_id().clone(), hint)
        })
        .collect();
    let mut cmd = cmd;
    for (id, hint) in ids {
        cmd = cmd.mut_arg(id, |a| a.value_hint(hint));
    }
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subcommands {
        cmd = cmd.mut_subcommand(name, with_value_hints);
    }
    cmd
}

/// Profile names for `apply PROFILE` and `verify [PROFILE]`, asked of overcommitctl itself at
/// completion time (clap's generators know only static values).
fn complete_profiles(shell: Shell, script: String) -> String {
    const NAMES: &str = "overcommitctl profiles --names 2>/dev/null";
    match shell {
        Shell::Bash => {
            let mut out = String::new();
            let mut in_block = false;
            for line in script.lines() {
                if line.trim_start().starts_with("overcommitctl__subcmd__") {
                    let block = line.trim().trim_end_matches(')');
                    in_block = block == "overcommitctl__subcmd__apply"
                        || block == "overcommitctl__subcmd__verify";
                }
                match line.trim_start().strip_prefix("opts=\"") {
                    Some(rest) if in_block => {
                        let indent = &line[..line.len() - line.trim_start().len()];
                        let _ = writeln!(out, "{indent}opts=\"$({NAMES}) {rest}");
                        in_block = false;
                    }
                    _ => {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
            out
        }
        Shell::Zsh => {
            let helper = format!(
                "(( $+functions[_overcommitctl_profiles] )) ||\n_overcommitctl_profiles() {{\n    local -a profiles\n    profiles=(${{(f)\"$(_call_program profiles {NAMES})\"}})\n    _describe -t profiles 'profile' profiles\n}}\n\n"
            );
            // The PROFILE positionals (`':profile:'`, `'::profile -- HELP:'`) get the helper as
            // their action.
            let script: String = script
                .lines()
                .map(|line| {
                    let spec = line.trim_start();
                    let profile = spec.starts_with("':profile") || spec.starts_with("'::profile");
                    match line.strip_suffix(":' \\") {
                        Some(head) if profile => {
                            format!("{head}:_overcommitctl_profiles' \\\n")
                        }
                        _ => format!("{line}\n"),
                    }
                })
                .collect();
            match script.rfind("if [ \"$funcstack[1]\" = \"_overcommitctl\" ]") {
                Some(at) => format!("{}{helper}{}", &script[..at], &script[at..]),
                None => format!("{script}\n{helper}"),
            }
        }
        Shell::Fish => format!(
            "{script}complete -c overcommitctl -n \"__fish_overcommitctl_using_subcommand apply; or __fish_overcommitctl_using_subcommand verify\" -f -a \"({NAMES})\" -d profile\n"
        ),
        _ => script,
    }
}

fn generate(out: &Path) -> std::io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;

    let mut ctl = CtlCli::command().disable_help_subcommand(true);
    ctl.build();
    std::fs::write(
        man.join("overcommitctl.1"),
        page(&ctl, "1", "overcommitctl", false)?,
    )?;
    for sub in ctl.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        let sub = sub.clone().display_name(format!("overcommitctl-{name}"));
        std::fs::write(
            man.join(format!("overcommitctl-{name}.1")),
            page(&sub, "1", name, true)?,
        )?;
    }
    let mut daemon = DaemonCli::command();
    daemon.build();
    std::fs::write(
        man.join("overcommitd.8"),
        page(&daemon, "8", "overcommitd", false)?,
    )?;
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
        let mut cmd = with_value_hints(CtlCli::command());
        clap_complete::generate(shell, &mut cmd, "overcommitctl", &mut script);
        let script = complete_profiles(shell, String::from_utf8_lossy(&script).into_owned());
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
