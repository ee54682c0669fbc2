//! `overcommitctl top`: who holds the commit charge. Each process's VM_ACCOUNT mappings (smaps
//! `ac`), grouped by process, user, cgroup or job, and the rows that are not processes (shared
//! memory, SysV segments, what this user or namespace cannot see), adding up to Committed_AS.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::charge::{self, GroupBy, Holder, HolderKind, Remainder};
use crate::cli::{StatusFormat, TopArgs};
use crate::client;
use crate::kernel::ProcRoot;
use crate::model::{Knob, Memory, Mode};
use crate::output::{paint, Section, DIM, HEADING, WARN};
use crate::process_scan::{self, ScanCounts};
use crate::protocol::{LeaseList, Request};
use crate::size::HumanBytes;

use super::{print_json, print_text, quiet_on_closed_pipe, CtlError, Globals};

/// `top --json`: one object, exact bytes (docs/json.md, schema/top.json).
#[derive(Debug, Serialize)]
pub struct TopReport {
    pub by: GroupBy,
    pub proc_root: String,
    /// `None` when the tree has no sys/vm/overcommit_memory.
    pub mode: Option<Mode>,
    /// Read before the processes.
    pub committed_as_bytes: u64,
    /// How much Committed_AS moved while the processes were read (after minus before): on a
    /// busy node the rows cannot add up more closely than this.
    pub committed_as_change_bytes: i64,
    pub commit_limit_bytes: u64,
    /// The charge of every process read (all of them, not only the rows shown).
    pub processes_charged_bytes: u64,
    pub holders: Vec<Holder>,
    pub not_processes: Vec<NotProcess>,
    #[serde(flatten)]
    pub counts: ScanCounts,
    /// How long reading everything took.
    pub elapsed_secs: f64,
}

/// A row of the charge that no process's mappings hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotProcess {
    pub kind: NotProcessKind,
    /// Negative only for `not_visible`, when more was attributed than is charged.
    pub charged_bytes: i64,
    pub committed_as_percent: f64,
    pub commit_limit_percent: f64,
    /// SysV segments or shared anonymous objects.
    pub objects: Option<usize>,
    pub resident_bytes: Option<u64>,
    /// Hugetlb pools: never charged (`charged_bytes` is 0), shown for context.
    pub hugetlb_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotProcessKind {
    Shmem,
    SysvShm,
    SharedAnonymous,
    NotVisible,
    Hugetlb,
}

impl TopReport {
    /// Reads Committed_AS, then every process, under `proc_root`; asks overcommitd (if it
    /// runs) which processes hold leases, for the job column.
    pub fn gather(
        proc_root: &ProcRoot,
        socket: Option<&Path>,
        by: GroupBy,
        limit: usize,
    ) -> Result<TopReport, CtlError> {
        let started = Instant::now();
        let memory = proc_root.read_memory()?;
        let mode = proc_root
            .read_knob(Knob::OvercommitMemory)
            .ok()
            .and_then(Mode::from_number);
        let scan = process_scan::scan_processes(proc_root.path())?;
        let committed_after = proc_root.read_memory()?.committed_as;
        let sysv = process_scan::read_sysv_segments(proc_root.path(), crate::kernel::page_size())?;
        let lease_holders: HashMap<i32, String> =
            match socket.map(|s| client::call::<LeaseList>(s, &Request::Leases)) {
                Some(Ok(list)) => list
                    .leases
                    .into_iter()
                    .filter_map(|l| Some((l.holder_pid?, l.tag.unwrap_or(l.id))))
                    .collect(),
                _ => HashMap::new(),
            };
        let jobs = charge::jobs(&scan.processes, &lease_holders);
        let mut names = HashMap::new();
        let mut user_name = |uid: u32| {
            names
                .entry(uid)
                .or_insert_with(|| {
                    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                        .ok()
                        .flatten()
                        .map_or_else(|| uid.to_string(), |u| u.name)
                })
                .clone()
        };
        let holders = charge::holders(&scan.processes, by, &memory, limit, &mut user_name, &jobs);
        let processes_charged_bytes = scan.processes.iter().map(|p| p.charged_bytes).sum();
        let remainder =
            charge::remainder(&memory, processes_charged_bytes, scan.shared.totals(), sysv);
        Ok(TopReport {
            by,
            proc_root: proc_root.path().display().to_string(),
            mode,
            committed_as_bytes: memory.committed_as,
            committed_as_change_bytes: i64::try_from(
                i128::from(committed_after) - i128::from(memory.committed_as),
            )
            .unwrap_or(0),
            commit_limit_bytes: memory.commit_limit,
            processes_charged_bytes,
            holders,
            not_processes: not_processes(&remainder, &memory),
            counts: scan.counts,
            elapsed_secs: started.elapsed().as_secs_f64(),
        })
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mode = self.mode.map_or("mode unknown".to_string(), |m| {
            format!("mode {m} ({})", m.number())
        });
        let limit_note = if self.mode == Some(Mode::Never) {
            ""
        } else {
            ", enforced in mode never only"
        };
        let _ = writeln!(
            out,
            "{}",
            paint(
                DIM,
                format!(
                    "overcommit top  ·  {mode}  ·  Committed_AS {} of CommitLimit {} ({:.1}%{limit_note})",
                    HumanBytes(self.committed_as_bytes),
                    HumanBytes(self.commit_limit_bytes),
                    charge::percent(self.committed_as_bytes.into(), self.commit_limit_bytes),
                )
            )
        );
        let c = &self.counts;
        let mut read = format!(
            "read {} processes ({} mappings) under {} in {:.0} ms; skipped {} kernel threads",
            c.processes_read,
            c.mappings_read,
            self.proc_root,
            self.elapsed_secs * 1000.0,
            c.kernel_threads
        );
        if c.zombies > 0 {
            let _ = write!(read, " and {} zombies", c.zombies);
        }
        if c.processes_vanished > 0 {
            let _ = write!(read, "; {} exited while read", c.processes_vanished);
        }
        let _ = writeln!(out, "{}\n", paint(DIM, read));

        out.push_str(&self.holder_table());
        out.push('\n');
        let mut rest = Table::new(
            &[
                "NOT IN ANY PROCESS'S MAPPINGS",
                "CHARGED",
                "%COMMIT",
                "%LIMIT",
                "",
            ],
            &[false, true, true, true, false],
        );
        for row in &self.not_processes {
            let (label, note) = self.describe(row);
            let charged = if row.kind == NotProcessKind::Hugetlb {
                HumanBytes(row.hugetlb_bytes.unwrap_or(0)).to_string()
            } else if row.charged_bytes < 0 {
                format!("-{}", HumanBytes(row.charged_bytes.unsigned_abs()))
            } else {
                HumanBytes(row.charged_bytes as u64).to_string()
            };
            let (pc, pl) = if row.kind == NotProcessKind::Hugetlb {
                ("-".to_string(), "-".to_string())
            } else {
                (
                    format!("{:.1}%", row.committed_as_percent),
                    format!("{:.1}%", row.commit_limit_percent),
                )
            };
            rest.row(vec![label, charged, pc, pl, note]);
        }
        rest.row(vec![
            "Committed_AS".into(),
            HumanBytes(self.committed_as_bytes).to_string(),
            "100.0%".into(),
            format!(
                "{:.1}%",
                charge::percent(self.committed_as_bytes.into(), self.commit_limit_bytes)
            ),
            paint(DIM, "the processes above and these rows add up to it"),
        ]);
        out.push_str(&rest.render(true));
        out
    }

    fn holder_table(&self) -> String {
        let noreserve = self.holders.iter().any(|h| h.noreserve_bytes > 0);
        let (mut headers, mut right): (Vec<&str>, Vec<bool>) = match self.by {
            GroupBy::Process => (vec!["PID", "USER", "COMMAND"], vec![true, false, false]),
            GroupBy::User => (vec!["USER", "PROCS"], vec![false, true]),
            GroupBy::Cgroup => (vec!["CGROUP", "PROCS"], vec![false, true]),
            GroupBy::Job => (vec!["JOB", "PROCS"], vec![false, true]),
        };
        headers.extend(["CHARGED", "%COMMIT", "%LIMIT", "RSS"]);
        right.extend([true, true, true, true]);
        if noreserve {
            headers.push("NORESERVE");
            right.push(true);
        }
        if self.by == GroupBy::Process {
            headers.push("JOB");
            right.push(false);
        }
        let mut table = Table::new(&headers, &right);
        for h in &self.holders {
            let mut cells = match (self.by, h.kind) {
                (_, HolderKind::Other) => {
                    let mut cells =
                        vec![String::new(); if self.by == GroupBy::Process { 3 } else { 2 }];
                    let label = format!("other ({} processes)", h.processes);
                    let at = if self.by == GroupBy::Process { 2 } else { 0 };
                    cells[at] = label;
                    cells
                }
                (GroupBy::Process, _) => vec![
                    h.pid.map_or(String::new(), |p| p.to_string()),
                    h.user.clone().unwrap_or_default(),
                    h.label().to_string(),
                ],
                _ => vec![h.label().to_string(), h.processes.to_string()],
            };
            cells.extend([
                HumanBytes(h.charged_bytes).to_string(),
                format!("{:.1}%", h.committed_as_percent),
                format!("{:.1}%", h.commit_limit_percent),
                HumanBytes(h.rss_bytes).to_string(),
            ]);
            if noreserve {
                cells.push(HumanBytes(h.noreserve_bytes).to_string());
            }
            if self.by == GroupBy::Process {
                cells.push(h.job.clone().unwrap_or_default());
            }
            table.row(cells);
        }
        if self.holders.is_empty() {
            return format!("  {}\n", paint(DIM, "no process could be read"));
        }
        table.render(true)
    }

    fn describe(&self, row: &NotProcess) -> (String, String) {
        let objects = row.objects.unwrap_or(0);
        let plural = |n: usize, one: &str, many: &str| {
            if n == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {many}")
            }
        };
        match row.kind {
            NotProcessKind::Shmem => (
                "shared memory (tmpfs, memfd)".into(),
                "Shmem not counted below: files in tmpfs and /dev/shm, memfds".into(),
            ),
            NotProcessKind::SysvShm => (
                format!(
                    "SysV shared memory ({})",
                    plural(objects, "segment", "segments")
                ),
                "charged in full when created (ipcs -m)".into(),
            ),
            NotProcessKind::SharedAnonymous => (
                format!(
                    "shared anonymous ({})",
                    plural(objects, "object", "objects")
                ),
                "MAP_SHARED|MAP_ANONYMOUS, charged once in full".into(),
            ),
            NotProcessKind::NotVisible => {
                let c = &self.counts;
                let moved = self.committed_as_change_bytes.unsigned_abs();
                let note = if moved > self.committed_as_bytes / 50 {
                    format!(
                        "Committed_AS moved by {}{} while the processes were read",
                        if self.committed_as_change_bytes < 0 {
                            "-"
                        } else {
                            "+"
                        },
                        HumanBytes(moved)
                    )
                } else if c.processes_unreadable > 0 {
                    let why = if nix::unistd::geteuid().is_root() {
                        "permission denied even to root: protected from ptrace"
                    } else {
                        "permission denied; root reads other users'"
                    };
                    paint(
                        WARN,
                        format!(
                            "{} could not be read ({why})",
                            plural(c.processes_unreadable, "process", "processes")
                        ),
                    )
                } else if row.charged_bytes < 0 {
                    "more attributed than charged: processes changed while read, or SysV segments made with SHM_NORESERVE".into()
                } else {
                    "other PID namespaces, swapped-out tmpfs, changes while reading".into()
                };
                ("not visible from here".into(), note)
            }
            NotProcessKind::Hugetlb => (
                "hugetlb (not charged)".into(),
                "huge page pools have their own reservations".into(),
            ),
        }
    }

    /// The report in the Prometheus text format: the largest holders and one `other` series
    /// (bounded by --limit), the rows that are not processes, and how the read went.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let (name, label) = match self.by {
            GroupBy::Process => ("process", "pid"),
            GroupBy::User => ("user", "user"),
            GroupBy::Cgroup => ("cgroup", "cgroup"),
            GroupBy::Job => ("job", "job_id"),
        };
        let _ = writeln!(
            out,
            "# HELP overcommit_{name}_charged_bytes Commit charge (Committed_AS) held, by {name}: the largest and \"other\" for the rest.\n\
             # TYPE overcommit_{name}_charged_bytes gauge"
        );
        for h in &self.holders {
            let key = match (h.kind, self.by) {
                (HolderKind::Other, _) => "other".to_string(),
                (_, GroupBy::Process) => h.pid.map_or(String::new(), |p| p.to_string()),
                _ => h.label().to_string(),
            };
            let mut labels = format!("{label}=\"{}\"", escape_label(&key));
            if self.by == GroupBy::Process && h.kind == HolderKind::Process {
                let _ = write!(
                    labels,
                    ",command=\"{}\",user=\"{}\"",
                    escape_label(h.label()),
                    escape_label(h.user.as_deref().unwrap_or(""))
                );
            }
            let _ = writeln!(
                out,
                "overcommit_{name}_charged_bytes{{{labels}}} {}",
                h.charged_bytes
            );
        }
        out.push_str(
            "# HELP overcommit_not_process_charged_bytes Commit charge outside any process's mappings; not_visible is the rest of Committed_AS.\n\
             # TYPE overcommit_not_process_charged_bytes gauge\n",
        );
        for row in self
            .not_processes
            .iter()
            .filter(|r| r.kind != NotProcessKind::Hugetlb)
        {
            let kind = serde_json::to_value(row.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "overcommit_not_process_charged_bytes{{kind=\"{kind}\"}} {}",
                row.charged_bytes
            );
        }
        let c = &self.counts;
        out.push_str(
            "# HELP overcommit_top_processes Processes seen by the last `overcommitctl top`, by what became of them.\n\
             # TYPE overcommit_top_processes gauge\n",
        );
        for (state, n) in [
            ("read", c.processes_read),
            ("unreadable", c.processes_unreadable),
            ("vanished", c.processes_vanished),
            ("kernel_thread", c.kernel_threads),
            ("zombie", c.zombies),
        ] {
            let _ = writeln!(out, "overcommit_top_processes{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP overcommit_top_duration_seconds How long the last `overcommitctl top` took to read every process.\n\
             # TYPE overcommit_top_duration_seconds gauge\n\
             overcommit_top_duration_seconds {:.6}",
            self.elapsed_secs
        );
        out
    }
}

/// The `n` processes holding the most charge under `proc_root`, for `status` and `check`;
/// `None` when none could be read.
pub fn largest_holders(proc_root: &ProcRoot, n: usize) -> Option<Vec<Holder>> {
    let report = TopReport::gather(proc_root, None, GroupBy::Process, n).ok()?;
    let holders: Vec<Holder> = report
        .holders
        .into_iter()
        .filter(|h| h.kind == HolderKind::Process)
        .collect();
    (!holders.is_empty()).then_some(holders)
}

/// `holders` as a section of `status` or `check`.
pub fn holders_section(title: &str, holders: &[Holder]) -> String {
    let mut section = Section::new(title);
    for h in holders {
        section.row(
            format!("{} {}", h.pid.unwrap_or(0), h.label()),
            HumanBytes(h.charged_bytes),
            format!(
                "{}, {:.1}% of Committed_AS",
                h.user.as_deref().unwrap_or("?"),
                h.committed_as_percent
            ),
        );
    }
    let scope = if nix::unistd::geteuid().is_root() {
        "all of them, and what no process holds: overcommitctl top"
    } else {
        "of your own processes only (root reads everyone's): overcommitctl top"
    };
    section.row("", "", scope);
    section.to_string()
}

fn not_processes(r: &Remainder, memory: &Memory) -> Vec<NotProcess> {
    let row = |kind, charged: i64| NotProcess {
        kind,
        charged_bytes: charged,
        committed_as_percent: charge::percent(charged.into(), memory.committed_as),
        commit_limit_percent: charge::percent(charged.into(), memory.commit_limit),
        objects: None,
        resident_bytes: None,
        hugetlb_bytes: None,
    };
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    vec![
        row(NotProcessKind::Shmem, signed(r.shmem_bytes)),
        NotProcess {
            objects: Some(r.sysv.segments),
            resident_bytes: Some(r.sysv.resident_bytes),
            ..row(NotProcessKind::SysvShm, signed(r.sysv.charged_bytes))
        },
        NotProcess {
            objects: Some(r.shared_anonymous.objects),
            resident_bytes: Some(r.shared_anonymous.resident_bytes),
            ..row(
                NotProcessKind::SharedAnonymous,
                signed(r.shared_anonymous.charged_bytes),
            )
        },
        row(NotProcessKind::NotVisible, r.not_visible_bytes),
        NotProcess {
            hugetlb_bytes: Some(r.hugetlb_bytes),
            ..row(NotProcessKind::Hugetlb, 0)
        },
    ]
}

/// Prometheus label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Columns of text, numbers aligned right.
struct Table {
    headers: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str], right: &[bool]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            right: right.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, with_headers: bool) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| crate::output::visible_width(c))
                .chain(with_headers.then(|| self.headers[i].len()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let line = |cells: &[String]| {
            let mut out = String::from(" ");
            for (i, cell) in cells.iter().enumerate() {
                let pad = " ".repeat(widths[i].saturating_sub(crate::output::visible_width(cell)));
                if self.right[i] {
                    let _ = write!(out, " {pad}{cell}");
                } else {
                    let _ = write!(out, " {cell}{pad}");
                }
            }
            out.trim_end().to_string()
        };
        let mut out = String::new();
        if with_headers {
            let _ = writeln!(out, "{}", paint(HEADING, line(&self.headers)));
        }
        for row in &self.rows {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }
}

/// Runs `top` once, or with --watch until interrupted.
pub fn top(globals: &Globals, args: &TopArgs) -> Result<u8, CtlError> {
    let format = super::output_format(globals.json, args.format)?;
    let proc_root = globals.proc_root();
    let gather = |limit| TopReport::gather(&proc_root, Some(&globals.socket), args.by, limit);
    let Some(interval) = args.watch else {
        let report = gather(args.limit)?;
        match format {
            StatusFormat::Json => print_json(&report)?,
            StatusFormat::Text => print_text(&report.render())?,
            StatusFormat::Prometheus => print_text(&report.prometheus())?,
        }
        return Ok(0);
    };
    watch::run(interval, format, args.limit, gather)
}

/// `top --watch`: redraws in place on a terminal (cursor home, each line cleared to its end,
/// the rest of the screen cleared, all inside one synchronized update, so nothing flickers);
/// elsewhere one report after another (JSON: one object per line). Ends on SIGINT, SIGTERM
/// or SIGHUP with the cursor shown again; a terminal resize redraws at once.
mod watch {
    use std::io::IsTerminal;

    use nix::sys::signal::{SigSet, SigmaskHow, Signal};

    use super::*;

    /// Lines a frame has besides the holder rows (the watch line, the title and read lines,
    /// the column header, the table of what no process holds, the blank lines), and one
    /// spare: a newline on the terminal's last line would scroll it.
    const FIXED_LINES: usize = 14;

    pub fn run(
        interval: Duration,
        format: StatusFormat,
        limit: usize,
        gather: impl Fn(usize) -> Result<TopReport, CtlError>,
    ) -> Result<u8, CtlError> {
        let mut signals = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGWINCH,
        ] {
            signals.add(s);
        }
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
            .map_err(|e| CtlError::Output(e.into()))?;
        let terminal = format == StatusFormat::Text && std::io::stdout().is_terminal();
        let mut out = anstream::stdout();
        if terminal {
            // Hide the cursor and clear once; later frames only overwrite.
            quiet_on_closed_pipe(out.write_all(b"\x1b[?25l\x1b[2J"))?;
        }
        let result = loop {
            let size = terminal
                .then(terminal_size::terminal_size)
                .flatten()
                .map(|(w, h)| (usize::from(w.0), usize::from(h.0)));
            let rows = terminal.then(|| {
                let height = size.map_or(24, |(_, h)| h);
                height.saturating_sub(FIXED_LINES).max(2)
            });
            // On a terminal, as many rows as fit (one of them for "other").
            let shown = match rows {
                Some(fit) if limit == 0 || limit > fit - 1 => fit - 1,
                _ => limit,
            };
            let report = match gather(shown) {
                Ok(report) => report,
                Err(e) => break Err(e),
            };
            let frame = match format {
                StatusFormat::Json => crate::ctl::json_line(&report)?,
                StatusFormat::Prometheus => report.prometheus() + "\n",
                StatusFormat::Text if terminal => {
                    in_place(&report.render(), interval, size.map_or(80, |(w, _)| w))
                }
                StatusFormat::Text => report.render() + "\n",
            };
            if let Err(e) =
                quiet_on_closed_pipe(out.write_all(frame.as_bytes()).and_then(|()| out.flush()))
            {
                break Err(e);
            }
            match signals.timed_wait(interval) {
                Some(Signal::SIGWINCH) | None => continue,
                Some(_) => break Ok(0),
            }
        };
        if terminal {
            let _ = out.write_all(b"\x1b[?25h\n");
            let _ = out.flush();
        }
        result
    }

    /// One frame drawn over the previous one, each line cut to the terminal's `width` (a
    /// wrapped line would push the frame off the screen).
    fn in_place(text: &str, interval: Duration, width: usize) -> String {
        let mut frame = String::from("\x1b[?2026h\x1b[H");
        let _ = writeln!(
            frame,
            "{}\x1b[K",
            paint(
                DIM,
                format!("every {}s; Ctrl-C ends", interval.as_secs_f64())
            )
        );
        for line in text.lines() {
            frame.push_str(&clip(line, width));
            frame.push_str("\x1b[K\n");
        }
        frame.push_str("\x1b[J\x1b[?2026l");
        frame
    }

    /// `line` cut to `width` visible characters; escape sequences are kept (and the style
    /// reset after a cut).
    fn clip(line: &str, width: usize) -> String {
        if crate::output::visible_width(line) <= width {
            return line.to_string();
        }
        let mut out = String::with_capacity(line.len());
        let (mut visible, mut in_escape) = (0, false);
        for c in line.chars() {
            match (in_escape, c) {
                (false, '\x1b') => in_escape = true,
                (true, 'm') => in_escape = false,
                (true, _) => {}
                (false, _) if visible == width => continue,
                (false, _) => visible += 1,
            }
            out.push(c);
        }
        out + "\x1b[0m"
    }

    trait TimedWait {
        /// Waits for one of the (blocked) signals of the set, at most `timeout`.
        fn timed_wait(&self, timeout: Duration) -> Option<Signal>;
    }

    impl TimedWait for SigSet {
        fn timed_wait(&self, timeout: Duration) -> Option<Signal> {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let spec = libc::timespec {
                    tv_sec: left.as_secs() as libc::time_t,
                    tv_nsec: libc::c_long::from(left.subsec_nanos()),
                };
                // SAFETY: the set and timespec are valid for the call; no siginfo is asked for.
                let n = unsafe { libc::sigtimedwait(self.as_ref(), std::ptr::null_mut(), &spec) };
                if n > 0 {
                    return Signal::try_from(n).ok();
                }
                if Instant::now() >= deadline
                    || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
                {
                    return None;
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lines_are_cut_to_the_width_without_cutting_escapes() {
            assert_eq!(clip("abcdef", 4), "abcd\x1b[0m");
            assert_eq!(clip("abc", 4), "abc");
            let painted = format!("ab{}", paint(DIM, "cdef"));
            let cut = clip(&painted, 3);
            assert_eq!(crate::output::visible_width(&cut), 3);
            assert!(
                cut.starts_with("ab\x1b[") && cut.ends_with("\x1b[0m"),
                "{cut:?}"
            );
        }
    }
}
