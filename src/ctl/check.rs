//! `overcommitctl check`: will one allocation succeed now, which rule decides, with which
//! numbers, and what would change the answer.

use serde::Serialize;

use crate::cli::{AllocVia, CheckArgs, CheckScope};
use crate::kernel::{self, Libc, ProcRoot};
use crate::malloc::{self, AllocPath, Allocation, Allocator, MallocState};
use crate::model::{Limit, Mode, Node, Policy};
use crate::output::{paint, Section, BAD, DIM, GOOD, HEADING, WARN};
use crate::predict::{self, Note, Prediction, Process, Remedy, RlimitKind, Rule, Verdict};
use crate::size::{Grouped, HumanBytes};

use super::CtlError;

/// `check --json`: the prediction plus the context it was made in.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    #[serde(flatten)]
    pub prediction: Prediction,
    /// How the request reaches the kernel (glibc malloc's mmap, then brk; or one mmap).
    pub allocation: Allocation,
    /// True when --mode/--ratio/--kbytes/--swap-total changed the node for this answer.
    pub hypothetical: bool,
    pub mem_total_bytes: u64,
    pub swap_total_bytes: u64,
    pub commit_limit_bytes: u64,
    pub process: Process,
    /// The process asked about with --pid.
    pub pid: Option<i32>,
    /// When mode never refuses (or may refuse): the three processes holding the most charge.
    pub commit_holders: Option<Vec<crate::charge::Holder>>,
    /// `node` (a plain process) or `job` (under `run --scope job`).
    pub scope: CheckScope,
    /// The job scope's threshold (MAP_NORESERVE at or above it); `null` for scope node.
    pub min_size_bytes: Option<u64>,
    #[serde(skip)]
    node: Node,
}

/// Flags that change nothing in the context they are given in are errors, naming what would.
fn refuse_inert_flags(args: &CheckArgs, mode: Mode) -> Result<(), CtlError> {
    if args.dtype.is_some() && args.shape.is_none() {
        return Err(CtlError::Usage(
            "--dtype describes the elements of --shape: give --shape DIMS with it (SIZE is already in bytes)".into(),
        ));
    }
    let limit_flag = match (args.hypothetical.ratio, args.hypothetical.kbytes) {
        (Some(_), _) => Some("--ratio"),
        (None, Some(_)) => Some("--kbytes"),
        (None, None) => None,
    };
    if let (Some(flag), true) = (limit_flag, mode != Mode::Never) {
        let whose = if args.hypothetical.mode.is_some() {
            "the mode given"
        } else {
            "the live mode"
        };
        return Err(CtlError::Usage(format!(
            "{flag} has no effect in mode {mode} ({whose}): only mode never has a commit limit; add --mode never to ask about one"
        )));
    }
    if args.swap_total.is_some() && mode == Mode::Always {
        return Err(CtlError::Usage(
            "--swap-total has no effect in mode always (the kernel does not check): give --mode heuristic or never with it".into(),
        ));
    }
    Ok(())
}

/// What `--pid` tells: the process's limits and size, and, for malloc, its heap and malloc
/// settings (with a note for what cannot be known), and how it allocates.
fn the_process(
    pid: i32,
    via: AllocVia,
) -> Result<(Process, MallocState, Vec<Note>, AllocVia), CtlError> {
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(CtlError::NoProcess(pid));
    }
    let info = kernel::process_info(pid)?;
    let process = Process {
        privileged: info.cap_sys_admin,
        vm_size: Some(info.vm_size),
        data_size: Some(info.vm_data),
        rlimit_as: info.rlimit_as,
        rlimit_data: info.rlimit_data,
        map_count: Some(info.map_count),
        memory_max: info.memory_max,
        largest_gap: Some(info.largest_gap),
    };
    let mut state = MallocState::glibc_defaults();
    let mut notes = Vec::new();
    if via == AllocVia::Mmap {
        return Ok((process, state, notes, via));
    }
    let heap = kernel::process_heap(pid)?;
    if heap.libc == Libc::Musl {
        notes.push(Note::new(
            "malloc_not_glibc",
            format!("process {pid} uses musl, whose malloc maps large requests and has no brk fallback: one mmap is checked"),
        ));
        return Ok((process, state, notes, AllocVia::Mmap));
    }
    state = state.with_environment(
        heap.malloc_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    match heap.chunks {
        Some(chunks) => {
            state = state.with_heap(chunks.top, chunks.largest_free, heap.room_above);
        }
        None => notes.push(Note::new(
            "heap_unreadable",
            format!("the heap of process {pid} could not be read (/proc/{pid}/mem needs root or the same user): the free space at its top is assumed, not known"),
        )),
    }
    if heap.libc == Libc::Unknown {
        notes.push(Note::new(
            "malloc_assumed_glibc",
            format!("no C library is mapped in process {pid} (static or not C): glibc's malloc is assumed; --via mmap asks about one mapping"),
        ));
    }
    if info.threads > 1 {
        notes.push(Note::new(
            "malloc_threads",
            format!("process {pid} has {} threads: an allocation from a thread other than the main one uses another malloc arena, which has no brk fallback", info.threads),
        ));
    }
    Ok((process, state, notes, via))
}

impl CheckReport {
    pub fn gather(proc_root: &ProcRoot, args: &CheckArgs) -> Result<CheckReport, CtlError> {
        let live = proc_root.node()?;
        let hypothetical = &args.hypothetical;
        let mode = hypothetical.mode.unwrap_or(live.tunables.overcommit_memory);
        refuse_inert_flags(args, mode)?;
        let bytes = match (&args.shape, args.size) {
            (Some(shape), _) => {
                crate::dtype::array_bytes(shape, args.dtype.as_deref().unwrap_or("float64"))?
            }
            (None, Some(size)) => size,
            (None, None) => return Err(CtlError::Usage("give a SIZE or --shape".into())),
        };
        let mut node = live.clone();
        if hypothetical.mode.is_some()
            || hypothetical.ratio.is_some()
            || hypothetical.kbytes.is_some()
        {
            let limit = match (hypothetical.ratio, hypothetical.kbytes) {
                (Some(r), _) => Limit::Ratio(r),
                (None, Some(k)) => Limit::Kbytes(k),
                (None, None) => live.tunables.limit_clamped(),
            };
            node = node.with_policy(&Policy { mode, limit });
        }
        if let Some(swap) = args.swap_total {
            node = node.with_swap_total(swap);
        }
        let is_hypothetical = node != live;

        let (mut process, malloc_state, notes, via) = match args.pid {
            Some(pid) => the_process(pid, args.via)?,
            None => (
                Process {
                    privileged: nix::unistd::geteuid().is_root(),
                    ..Process::default()
                },
                MallocState::glibc_defaults(),
                Vec::new(),
                args.via,
            ),
        };
        if args.user {
            process.privileged = false;
        }
        if args.root {
            process.privileged = true;
        }
        if let Some(size) = args.vm_size {
            process.vm_size = Some(size);
        }

        let scope = args.scope.unwrap_or(CheckScope::Node);
        if args.min_size.is_some() && scope != CheckScope::Job {
            return Err(CtlError::Usage(
                "--min-size is the job scope's threshold: add --scope job".into(),
            ));
        }
        let min_size = (scope == CheckScope::Job).then(|| {
            args.min_size
                .unwrap_or_else(|| predict::job_min_size(&node))
        });
        // The job scope maps what reaches its threshold with MAP_NORESERVE itself (malloc's
        // path and --via do not matter then); the rest goes to the real allocator.
        let noreserve = min_size.is_some_and(|min| bytes >= min && mode != Mode::Never);
        let (mut prediction, allocation) = match via {
            _ if noreserve => malloc::predict_preloaded(&node, &process, bytes),
            AllocVia::Malloc => malloc::predict_malloc(&node, &process, bytes, &malloc_state),
            AllocVia::Mmap => malloc::predict_mmap(&node, &process, bytes),
        };
        prediction.notes.extend(notes);
        let in_the_way =
            prediction.rule == Rule::CommitLimit && prediction.verdict != Verdict::Allowed;
        if let Some(min) = min_size.filter(|_| !noreserve) {
            // Already in the job scope: not a remedy.
            prediction.remedies.retain(|r| *r != Remedy::JobScope);
            prediction.notes.push(if mode == Mode::Never {
                Note::new(
                    "job_scope_mode_never",
                    "the job scope changes nothing in mode never (2): the kernel ignores MAP_NORESERVE and charges the mapping",
                )
            } else {
                Note::new(
                    "job_scope_below_threshold",
                    format!("below the job scope's threshold of {}: the real allocator serves it, charged as usual (--min-size lowers the threshold)", HumanBytes(min)),
                )
            });
        }
        Ok(CheckReport {
            allocation,
            commit_holders: in_the_way
                .then(|| super::top::largest_holders(proc_root, 3))
                .flatten(),
            hypothetical: is_hypothetical,
            mem_total_bytes: node.memory.mem_total,
            swap_total_bytes: node.memory.swap_total,
            commit_limit_bytes: node.memory.commit_limit,
            process,
            pid: args.pid,
            scope,
            min_size_bytes: min_size,
            prediction,
            node,
        })
    }

    pub fn exit_code(&self) -> u8 {
        match self.prediction.verdict {
            Verdict::Allowed => 0,
            Verdict::Refused | Verdict::Borderline => 1,
        }
    }

    pub fn render(&self) -> String {
        let p = &self.prediction;
        let (word, style) = match p.verdict {
            Verdict::Allowed => ("ALLOWED", GOOD),
            Verdict::Refused => ("REFUSED", BAD),
            Verdict::Borderline => ("BORDERLINE", WARN),
        };
        let who = if self.process.privileged {
            "root"
        } else {
            "an unprivileged process"
        };
        let what_if = if self.hypothetical {
            " (hypothetical policy)"
        } else {
            ""
        };
        let scope = match self.scope {
            CheckScope::Job => " under the job scope",
            CheckScope::Node => "",
        };
        let mut out = format!(
            "One allocation of {} ({} bytes) by {who}{scope}{what_if}: {}\n\n",
            HumanBytes(p.request_bytes),
            Grouped(p.request_bytes),
            paint(style, word)
        );
        out.push_str(&format!(
            "{} {}\n",
            paint(HEADING, "Decided by"),
            p.rule.describe()
        ));
        let mut why = Section::new("");
        why.row(
            "request",
            HumanBytes(p.request_bytes),
            format!(
                "{} pages",
                Grouped(p.request_bytes.div_ceil(self.node.page_size))
            ),
        );
        let a = &self.allocation;
        let outcome = match a.path {
            AllocPath::Mmap if a.allocator == Allocator::PreloadLibrary => {
                "one MAP_NORESERVE mapping of the job scope's library"
            }
            AllocPath::Heap => "served from free space malloc already holds (no system call)",
            AllocPath::Mmap => "the mmap decides",
            AllocPath::Brk => "the mmap fails, growing the heap (brk) decides",
            AllocPath::Varies => "mmap or brk decides, depending on what is not known",
            AllocPath::None => "both are refused",
        };
        // The value column stays short (the allocator); the sizes each system call asks for
        // go with the verdict in the note.
        let (allocator, asks) = match (a.brk_min_bytes, a.brk_max_bytes) {
            (Some(low), Some(high)) if low == high => (
                "malloc",
                format!(
                    "mmap {} B, then brk {} B",
                    Grouped(a.mmap_bytes),
                    Grouped(high)
                ),
            ),
            (Some(low), Some(high)) => (
                "malloc",
                format!(
                    "mmap {} B, then brk {}..{} B",
                    Grouped(a.mmap_bytes),
                    Grouped(low),
                    Grouped(high)
                ),
            ),
            _ => ("mmap", format!("one mmap of {} B", Grouped(a.mmap_bytes))),
        };
        why.row("path", allocator, format!("{asks}: {outcome}"));
        match p.rule {
            Rule::Heuristic => {
                why.row(
                    "limit",
                    HumanBytes(p.limit_bytes.unwrap_or(0)),
                    format!(
                        "MemTotal {} + SwapTotal {}; allowed when the request is not above it",
                        HumanBytes(self.mem_total_bytes),
                        HumanBytes(self.swap_total_bytes)
                    ),
                );
            }
            Rule::CommitLimit => {
                let committed = p.committed_bytes.unwrap_or(0);
                why.row(
                    "committed",
                    HumanBytes(committed.saturating_add(p.request_bytes)),
                    format!("Committed_AS {} + the request", HumanBytes(committed)),
                );
                why.row(
                    "limit",
                    HumanBytes(p.limit_bytes.unwrap_or(0)),
                    format!(
                        "CommitLimit {} - reserves {}; committed must stay below it",
                        HumanBytes(self.commit_limit_bytes),
                        HumanBytes(p.reserve_bytes.unwrap_or(0))
                    ),
                );
                why.row(
                    "uncertainty",
                    format!("± {}", HumanBytes(p.uncertainty_bytes.unwrap_or(0))),
                    "the kernel reads an approximate per-CPU counter: closer than this is borderline",
                );
                if self.process.vm_size.is_none() {
                    why.row("", "", "process size unknown: the user reserve may be 0 up to all of it (--pid or --vm-size)");
                }
            }
            Rule::Always => {
                why.row(
                    "limit",
                    "none",
                    "mode always does not check; pages are taken when first written",
                );
            }
            Rule::NoReserve => {
                why.row(
                    "limit",
                    "none",
                    format!(
                        "a MAP_NORESERVE mapping is not charged in mode {} ({}); pages are taken when first written",
                        p.mode,
                        p.mode.number()
                    ),
                );
                if let Some(min_size) = self.min_size_bytes {
                    why.row(
                        "threshold",
                        HumanBytes(min_size),
                        "the job scope maps allocations of this size or more with MAP_NORESERVE",
                    );
                }
            }
            _ => {
                why.row("limit", HumanBytes(p.limit_bytes.unwrap_or(0)), "");
            }
        }
        if let Some(largest) = p.largest_bytes {
            why.row(
                "largest now",
                HumanBytes(largest),
                "the largest single request this rule allows",
            );
        }
        out.push_str(&why.to_string());
        if let Some(holders) = &self.commit_holders {
            out.push('\n');
            out.push_str(&super::top::holders_section(
                "Who holds the charge in the way",
                holders,
            ));
        }

        if !p.remedies.is_empty() {
            out.push('\n');
            out.push_str(&paint(HEADING, "What would allow it"));
            out.push('\n');
            for remedy in &p.remedies {
                out.push_str(&format!("  - {}\n", self.describe_remedy(remedy)));
            }
        }
        if !p.notes.is_empty() {
            out.push('\n');
            out.push_str(&paint(HEADING, "Notes"));
            out.push('\n');
            for note in &p.notes {
                out.push_str(&format!("  - {}\n", note.message));
            }
        }
        out
    }

    fn describe_remedy(&self, remedy: &Remedy) -> String {
        match remedy {
            Remedy::JobScope => format!(
                "this job only: {}  {}",
                paint(HEADING, "overcommitctl run --scope job -- CMD"),
                paint(
                    DIM,
                    "(no root; the node is unchanged; pages are only taken when written, the OOM killer is the backstop)"
                )
            ),
            Remedy::Mode { mode } => format!(
                "mode {mode} for the whole node while the job runs (a lease: every process on the node gets it): {}",
                paint(
                    HEADING,
                    format!("overcommitctl run --scope node --mode {mode} -- CMD")
                )
            ),
            Remedy::Ratio { ratio } => {
                format!("mode never with ratio {ratio} or more (--mode never --ratio {ratio})")
            }
            Remedy::Kbytes { kbytes } => {
                format!(
                    "mode never with kbytes {kbytes} or more (a ratio above 100 would be needed)"
                )
            }
            Remedy::SwapTotal { bytes } => format!(
                "swap of at least {} in total under the current mode (now {})",
                HumanBytes(*bytes),
                HumanBytes(self.swap_total_bytes)
            ),
            Remedy::Rlimit { which, bytes } => {
                let flag = match which {
                    RlimitKind::As => "ulimit -v",
                    RlimitKind::Data => "ulimit -d",
                };
                format!(
                    "raise the process's limit ({flag}) to at least {} ({} kB)",
                    HumanBytes(*bytes),
                    bytes.div_ceil(1024)
                )
            }
        }
    }
}
