//! The wire protocol between `overcommitctl` (or any script with `socat`) and `overcommitd`:
//! one JSON object per line each way, a protocol version in every message, stable error codes.
//! docs/protocol.md is the reference; these types are its implementation. They depend on serde
//! and the pure policy types only: nothing of the daemon's configuration or files.

use serde::{Deserialize, Serialize};

use crate::model::{Mode, Policy};

/// The version every message carries as `"v"`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line the daemon reads (bytes, newline included).
pub const MAX_REQUEST_LINE: usize = 16 * 1024;

/// A request, by its `"op"`. Unknown fields are refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The daemon's view: baseline, effective policy, kernel values, lease count.
    Status,
    /// A temporary policy for a job.
    Lease(LeaseRequest),
    /// End leases by id or by tag.
    Release {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        tag: Option<String>,
    },
    /// The live leases.
    Leases,
    /// Change the baseline to an explicit policy (root).
    Set {
        policy: PolicyRequest,
        #[serde(default)]
        force: bool,
    },
    /// Change the baseline to a profile (root).
    Apply {
        profile: String,
        #[serde(default)]
        force: bool,
    },
    /// The profiles the daemon has loaded.
    Profiles,
}

/// A policy as a client asks for it; validated by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kbytes: Option<u64>,
}

/// A lease request. On the wire the policy's fields sit beside the others (`"mode"`, `"ratio"`,
/// `"kbytes"`); [`LeaseFields`] is that flat form, which refuses unknown fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "LeaseFields", into = "LeaseFields")]
pub struct LeaseRequest {
    pub policy: PolicyRequest,
    /// Seconds; default: the longest the caller is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bind the lease to the connecting process: it ends when that process exits.
    #[serde(default)]
    pub hold: bool,
    /// Root only: a lease on behalf of this user (a job's), judged by that user's
    /// `[[access]]` rule with that user's groups, counted and owned as theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_uid: Option<u32>,
    /// `ttl_secs` is the longest wanted: the rule's max_ttl shortens it instead of refusing it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clamp_ttl: bool,
}

/// The flat wire form of [`LeaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseFields {
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kbytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub hold: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clamp_ttl: bool,
}

impl From<LeaseFields> for LeaseRequest {
    fn from(f: LeaseFields) -> Self {
        LeaseRequest {
            policy: PolicyRequest {
                mode: f.mode,
                ratio: f.ratio,
                kbytes: f.kbytes,
            },
            ttl_secs: f.ttl_secs,
            tag: f.tag,
            reason: f.reason,
            hold: f.hold,
            for_uid: f.for_uid,
            clamp_ttl: f.clamp_ttl,
        }
    }
}

impl From<LeaseRequest> for LeaseFields {
    fn from(r: LeaseRequest) -> Self {
        LeaseFields {
            mode: r.policy.mode,
            ratio: r.policy.ratio,
            kbytes: r.policy.kbytes,
            ttl_secs: r.ttl_secs,
            tag: r.tag,
            reason: r.reason,
            hold: r.hold,
            for_uid: r.for_uid,
            clamp_ttl: r.clamp_ttl,
        }
    }
}

/// Longest tag and reason the daemon accepts (characters).
pub const MAX_TAG: usize = 128;
pub const MAX_REASON: usize = 512;

/// Stable error codes; scripts may rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown op, or a bad value.
    Invalid,
    /// A protocol version this daemon does not speak.
    Version,
    /// The request line is longer than MAX_REQUEST_LINE.
    TooLarge,
    /// The caller may not do this.
    Denied,
    /// The lockout guard: the policy would make allocations on the node fail.
    Unsafe,
    /// No such lease or profile.
    NotFound,
    /// A limit: leases per user, connections per user.
    Limit,
    /// Writing the kernel failed; nothing was changed.
    Kernel,
    /// A bug or an I/O failure of the daemon's own (the journal).
    Internal,
}

impl ErrorCode {
    /// `overcommitctl`'s exit code for this error.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::Invalid | ErrorCode::Version | ErrorCode::TooLarge => 2,
            ErrorCode::Denied | ErrorCode::Unsafe | ErrorCode::NotFound | ErrorCode::Limit => 1,
            ErrorCode::Kernel | ErrorCode::Internal => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// Every reply: `{"v":1,"ok":true,"result":{...}}` or `{"v":1,"ok":false,"error":{...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReply>,
}

impl Reply {
    pub fn success(result: &impl Serialize) -> Reply {
        match serde_json::to_value(result) {
            Ok(value) => Reply {
                v: PROTOCOL_VERSION,
                ok: true,
                result: Some(value),
                error: None,
            },
            Err(e) => Reply::failure(ErrorCode::Internal, format!("cannot encode the reply: {e}")),
        }
    }

    pub fn failure(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(ErrorReply {
                code,
                message: message.into(),
            }),
        }
    }

    /// A success reply as one line, newline included, written straight from `result`: what
    /// `Reply::success(result).to_line()` says, without building a `Value` first.
    pub fn success_line(result: &impl Serialize) -> Vec<u8> {
        let mut line = Vec::with_capacity(512);
        line.extend_from_slice(br#"{"v":1,"ok":true,"result":"#);
        match serde_json::to_writer(&mut line, result) {
            Ok(()) => {
                line.extend_from_slice(b"}\n");
                line
            }
            Err(e) => Reply::failure(ErrorCode::Internal, format!("cannot encode the reply: {e}"))
                .to_line(),
        }
    }

    /// The reply as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"v":1,"ok":false,"error":{"code":"internal","message":"cannot encode the reply"}}"#.to_vec()
        });
        line.push(b'\n');
        line
    }
}

/// Parses one request line: checks it is a JSON object with the version this daemon speaks,
/// then reads the request. Errors are the reply to send.
pub fn parse_request(line: &[u8]) -> Result<Request, Reply> {
    match parse_lease_or_release(line) {
        Some(request) => Ok(request),
        None => parse_any_request(line),
    }
}

/// A lease or release line exactly as [`parse_any_request`] reads it, in one pass. These two
/// come in a pair for every job, and the general way builds a tree of the line first (to check
/// the version before anything else and name the fields a request does not take), which costs
/// more than the rest of the parsing. `None` for anything else (another op, a field this op does
/// not take, a duplicate field, another version, an op spelled with escapes, an array, an
/// error of any kind): the general way gives the request or the error then. The fuzzer and a property test
/// check that both agree.
fn parse_lease_or_release(line: &[u8]) -> Option<Request> {
    /// Only `"lease"`.
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum LeaseOp {
        Lease,
    }
    /// Only `"release"`.
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum ReleaseOp {
        Release,
    }
    /// [`LeaseFields`] with the version and op beside them.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LeaseLine {
        v: u32,
        #[allow(dead_code)]
        op: LeaseOp,
        mode: Mode,
        #[serde(default)]
        ratio: Option<i64>,
        #[serde(default)]
        kbytes: Option<u64>,
        #[serde(default)]
        ttl_secs: Option<u64>,
        #[serde(default)]
        tag: Option<String>,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        hold: bool,
        #[serde(default)]
        for_uid: Option<u32>,
        #[serde(default)]
        clamp_ttl: bool,
    }
    /// [`Request::Release`] with the version and op beside it.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ReleaseLine {
        v: u32,
        #[allow(dead_code)]
        op: ReleaseOp,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        tag: Option<String>,
    }
    let lease = || {
        let lease = serde_json::from_slice::<LeaseLine>(line).ok()?;
        (lease.v == PROTOCOL_VERSION).then(|| {
            Request::Lease(LeaseRequest::from(LeaseFields {
                mode: lease.mode,
                ratio: lease.ratio,
                kbytes: lease.kbytes,
                ttl_secs: lease.ttl_secs,
                tag: lease.tag,
                reason: lease.reason,
                hold: lease.hold,
                for_uid: lease.for_uid,
                clamp_ttl: lease.clamp_ttl,
            }))
        })
    };
    let release = || {
        let release = serde_json::from_slice::<ReleaseLine>(line).ok()?;
        (release.v == PROTOCOL_VERSION).then_some(Request::Release {
            id: release.id,
            tag: release.tag,
        })
    };
    // serde reads a struct from a JSON array too (fields in order); a request is an object.
    let object = line
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{');
    if !object {
        return None;
    }
    // A failed attempt costs an error message: the likely one first, and none where neither
    // is likely (a guess that is only ever a matter of speed: the general way reads what this
    // does not).
    if memchr::memmem::find(line, b"\"release\"").is_some() {
        release().or_else(lease)
    } else if memchr::memmem::find(line, b"\"lease\"").is_some() {
        lease()
    } else {
        None
    }
}

/// Any request line: the JSON tree first, then its version, then the request.
#[doc(hidden)]
pub fn parse_any_request(line: &[u8]) -> Result<Request, Reply> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        Reply::failure(
            ErrorCode::Invalid,
            format!("the request is not valid JSON: {e}"),
        )
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| Reply::failure(ErrorCode::Invalid, "the request must be a JSON object"))?;
    match object.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(Reply::failure(
                ErrorCode::Version,
                format!("protocol version {v} is not supported: this daemon speaks version {PROTOCOL_VERSION}"),
            ))
        }
        None => {
            return Err(Reply::failure(
                ErrorCode::Invalid,
                format!("the request needs \"v\": {PROTOCOL_VERSION} (the protocol version)"),
            ))
        }
    }
    // serde refuses unknown fields of every request with fields; the ones without fields
    // (`status`, `leases`, `profiles`) are checked here.
    let extra = object
        .get("op")
        .and_then(serde_json::Value::as_str)
        .filter(|op| matches!(*op, "status" | "leases" | "profiles"))
        .and_then(|_| object.keys().find(|k| *k != "op" && *k != "v").cloned());
    let mut value = value;
    if let Some(object) = value.as_object_mut() {
        object.remove("v");
    }
    let request: Request = serde_json::from_value(value)
        .map_err(|e| Reply::failure(ErrorCode::Invalid, format!("bad request: {e}")))?;
    let fieldless = matches!(
        request,
        Request::Status | Request::Leases | Request::Profiles
    );
    if let Some(unknown) = extra.filter(|_| fieldless) {
        return Err(Reply::failure(
            ErrorCode::Invalid,
            format!("bad request: unknown field `{unknown}` (this request takes none but \"op\" and \"v\")"),
        ));
    }
    Ok(request)
}

/// Unicode general category Cf (format characters: bidi overrides, zero-width joiners, ...),
/// after Unicode 15.1's DerivedGeneralCategory.txt. With Cc (`char::is_control`) these are the
/// characters that can make text show something other than what it holds.
pub fn is_format_char(c: char) -> bool {
    // None below U+00AD: ASCII (all of a typical line) is answered at once.
    if c < '\u{AD}' {
        return false;
    }
    const CF: [(u32, u32); 21] = [
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let c = u32::from(c);
    CF.iter().any(|&(low, high)| (low..=high).contains(&c))
}

/// True for text a client may put in a tag or reason: within `max` characters, with no
/// control (Cc) or format (Cf) characters.
pub fn is_clean_text(text: &str, max: usize) -> bool {
    text.chars().count() <= max && !text.chars().any(|c| c.is_control() || is_format_char(c))
}

/// Text from a peer or a process (a tag, a command name) made safe for one log line or one
/// table cell: control and format characters, quotes and backslashes escaped, so it can neither
/// break the line nor pass for something else.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || is_format_char(c) || c == '\\' || c == '"' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A request as one line, version included, newline included.
pub fn request_line(request: &Request) -> Vec<u8> {
    let mut value = serde_json::to_value(request).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("v".into(), PROTOCOL_VERSION.into());
    }
    let mut line = serde_json::to_vec(&value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// A lease as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: String,
    /// Whose lease it is: the requester's, or the user root asked for (`for_uid`).
    pub owner_uid: u32,
    pub owner: String,
    /// The uid that asked for it, when not the owner (root, for a job's user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_uid: Option<u32>,
    /// The process that asked for it, and its command name.
    pub requester_pid: i32,
    pub requester_comm: String,
    pub policy: Policy,
    /// The process whose exit ends the lease, if bound to one.
    pub holder_pid: Option<i32>,
    pub tag: Option<String>,
    pub reason: Option<String>,
    /// Unix seconds.
    pub granted_at: u64,
    pub expires_at: u64,
}

/// The baseline the daemon holds, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineInfo {
    /// Profile name, or `custom` (from `set`), `adopted` (drift adopt) or `found` (as the daemon found it).
    pub name: String,
    pub policy: Policy,
    pub swappiness: Option<u64>,
    /// `config` when it is the configured baseline, `admin` when set or applied at run time.
    pub source: String,
}

/// Reply to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub baseline: BaselineInfo,
    /// The most permissive of the baseline and the live leases.
    pub effective: Policy,
    /// What the daemon keeps in the kernel: `effective`, or the policy held while `effective`
    /// would lock the node out (see `held`).
    pub in_force: Policy,
    pub kernel_mode: Mode,
    pub kernel_ratio: i64,
    pub kernel_kbytes: u64,
    pub leases: usize,
    /// `enforce`, `warn` or `adopt`.
    pub drift: String,
    pub clients: usize,
    /// The node's boot policy (mode, ratio, kbytes): the limit a profile without ratio/kbytes
    /// keeps (`apply --check` needs it to say what `apply` would write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<KernelPolicy>,
    /// A kernel write that failed and is being retried.
    #[serde(default)]
    pub pending_write: Option<PendingWrite>,
    /// The lockout guard holds a safer policy than `effective`.
    #[serde(default)]
    pub held: Option<GuardHold>,
    /// Changes found behind the daemon's back since it started (never decreases).
    #[serde(default)]
    pub drift_events: u64,
    #[serde(default)]
    pub last_drift: Option<DriftEvent>,
    /// The journal could not be saved; retried with the kernel writes.
    #[serde(default)]
    pub journal_error: Option<String>,
    /// At its first start in this boot, with no baseline configured, the daemon found the
    /// kernel holding something other than the boot policy, and kept it or put it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_at_start: Option<FoundAtStart>,
}

/// What the first start in a boot found in the kernel, and what it did with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundAtStart {
    pub kernel: KernelPolicy,
    pub action: FoundAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundAction {
    /// No more permissive than the boot policy: kept as the baseline `found`.
    Kept,
    /// More permissive (possibly a lease's): the boot policy was put back.
    Replaced,
}

/// A kernel write the daemon is retrying until the kernel holds what the lease table says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWrite {
    pub target: Policy,
    pub swappiness: Option<u64>,
    pub attempts: u32,
    pub last_error: String,
    /// Unix seconds of the first failure of this episode.
    pub since: u64,
    /// Milliseconds to the next attempt.
    pub next_attempt_ms: u64,
}

/// The lockout guard at work: the policy the daemon would write would make every new
/// allocation fail now, so it holds a safe one and looks again with backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardHold {
    pub wanted: Policy,
    pub holding: Policy,
    pub reason: String,
    /// Unix seconds.
    pub since: u64,
}

/// One change found behind the daemon's back, and what it did about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftEvent {
    pub found: KernelPolicy,
    pub expected: KernelPolicy,
    /// `enforced`, `enforce_failed`, `warned`, `adopted` or `ignored`.
    pub action: String,
    /// Unix seconds.
    pub at: u64,
}

/// Reply to `lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGranted {
    pub lease: LeaseInfo,
    pub effective: Policy,
}

/// Reply to `release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub released: Vec<String>,
    pub effective: Policy,
    /// Set when the kernel could not be written yet: the leases are ended and the daemon
    /// retries until the kernel holds `effective`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_write: Option<PendingWrite>,
}

/// Reply to `leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseList {
    pub leases: Vec<LeaseInfo>,
}

/// Reply to `set` and `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineChanged {
    pub baseline: BaselineInfo,
    pub effective: Policy,
    /// The kernel's policy before and after (mode, ratio, kbytes).
    pub before: KernelPolicy,
    pub after: KernelPolicy,
}

/// The three knobs as the kernel holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPolicy {
    pub mode: Mode,
    pub ratio: i64,
    pub kbytes: u64,
}

impl From<&crate::model::Tunables> for KernelPolicy {
    fn from(t: &crate::model::Tunables) -> Self {
        KernelPolicy {
            mode: t.overcommit_memory,
            ratio: t.overcommit_ratio,
            kbytes: t.overcommit_kbytes,
        }
    }
}

impl std::fmt::Display for KernelPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}), ratio {}, kbytes {}",
            self.mode,
            self.mode.number(),
            self.ratio,
            self.kbytes
        )
    }
}

/// Reply to `profiles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileList {
    pub baseline: Option<String>,
    pub profiles: Vec<ProfileInfo>,
}

/// A profile as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    pub name: String,
    pub description: Option<String>,
    pub mode: Mode,
    /// `None`: the profile keeps the ratio/kbytes of the node's boot policy.
    pub limit: Option<crate::model::Limit>,
    pub swappiness: Option<u64>,
    /// Bytes.
    pub min_swap: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Limit;

    #[test]
    fn requests_round_trip_with_the_version() {
        let request = Request::Lease(LeaseRequest {
            policy: PolicyRequest {
                mode: Mode::Always,
                ratio: None,
                kbytes: None,
            },
            ttl_secs: Some(3600),
            tag: Some("slurm-42".into()),
            reason: None,
            hold: true,
            for_uid: Some(1000),
            clamp_ttl: true,
        });
        let line = request_line(&request);
        assert!(line.ends_with(b"\n"));
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            text.contains(r#""v":1"#)
                && text.contains(r#""op":"lease""#)
                && text.contains(r#""mode":"always""#),
            "{text}"
        );
        assert_eq!(parse_request(&line).unwrap(), request);
    }

    #[test]
    fn the_documented_socat_lines_parse() {
        assert_eq!(
            parse_request(br#"{"v":1,"op":"status"}"#).unwrap(),
            Request::Status
        );
        assert_eq!(
            parse_request(br#"{"v":1,"op":"release","tag":"slurm-42"}"#).unwrap(),
            Request::Release {
                id: None,
                tag: Some("slurm-42".into())
            }
        );
        let set =
            parse_request(br#"{"v":1,"op":"set","policy":{"mode":"never","ratio":80}}"#).unwrap();
        assert_eq!(
            set,
            Request::Set {
                policy: PolicyRequest {
                    mode: Mode::Never,
                    ratio: Some(80),
                    kbytes: None
                },
                force: false
            }
        );
    }

    #[test]
    fn bad_requests_get_specific_codes() {
        let code = |line: &[u8]| parse_request(line).unwrap_err().error.unwrap().code;
        assert_eq!(code(b"not json"), ErrorCode::Invalid);
        assert_eq!(code(b"[1,2]"), ErrorCode::Invalid);
        assert_eq!(code(br#"{"op":"status"}"#), ErrorCode::Invalid);
        assert_eq!(code(br#"{"v":2,"op":"status"}"#), ErrorCode::Version);
        assert_eq!(code(br#"{"v":1,"op":"explode"}"#), ErrorCode::Invalid);
        assert_eq!(
            code(br#"{"v":1,"op":"lease","mode":"sometimes"}"#),
            ErrorCode::Invalid
        );
    }

    #[test]
    fn replies_are_one_line() {
        let reply = Reply::success(&Released {
            released: vec!["a".into()],
            effective: Policy {
                mode: Mode::Heuristic,
                limit: Limit::Ratio(50),
            },
            pending_write: None,
        });
        let line = reply.to_line();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let back: Reply = serde_json::from_slice(&line).unwrap();
        assert!(back.ok);
        assert_eq!(back.result.unwrap()["effective"]["limit"]["ratio"], 50);
        // Written straight from the result, the same reply.
        let released = Released {
            released: vec!["a".into()],
            effective: Policy {
                mode: Mode::Never,
                limit: Limit::Kbytes(7),
            },
            pending_write: None,
        };
        let direct = Reply::success_line(&released);
        assert_eq!(direct.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(
            serde_json::from_slice::<Reply>(&direct).unwrap(),
            serde_json::from_slice::<Reply>(&Reply::success(&released).to_line()).unwrap()
        );
    }

    #[test]
    fn an_array_is_not_a_request() {
        // Found by the fuzzer: serde reads a struct from an array of its fields in order.
        for line in [
            &b"[1,\n\"release\",\"\"\n]"[..],
            b" [1,\"lease\",\"always\"]",
        ] {
            let reply = parse_request(line).unwrap_err();
            assert_eq!(reply.error.unwrap().code, ErrorCode::Invalid);
        }
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let message = |line: &[u8]| parse_request(line).unwrap_err().error.unwrap().message;
        let m = message(br#"{"v":1,"op":"lease","mode":"always","ttl_secs":60,"tagg":"x"}"#);
        assert!(m.contains("unknown field `tagg`"), "{m}");
        let m = message(br#"{"v":1,"op":"status","verbose":true}"#);
        assert!(m.contains("unknown field `verbose`"), "{m}");
        let m = message(br#"{"v":1,"op":"set","policy":{"mode":"never","ration":5}}"#);
        assert!(m.contains("unknown field `ration`"), "{m}");
        let m = message(br#"{"v":1,"op":"release","id":"a","force":true}"#);
        assert!(m.contains("unknown field `force`"), "{m}");
    }

    #[test]
    fn tags_refuse_control_and_format_characters() {
        assert!(is_clean_text("slurm-42", MAX_TAG));
        assert!(is_clean_text("Jörg's job 名前", MAX_TAG));
        for bad in [
            "a\u{202E}b",
            "a\nb",
            "zero\u{200B}width",
            "\u{FEFF}bom",
            "a\u{0}",
        ] {
            assert!(!is_clean_text(bad, MAX_TAG), "{bad:?}");
        }
        assert!(!is_clean_text(&"x".repeat(MAX_TAG + 1), MAX_TAG));
    }

    #[test]
    fn escaping_keeps_one_line_and_shows_hidden_characters() {
        assert_eq!(escape("plain name"), "plain name");
        assert_eq!(escape("a\n<3>FORGED"), "a\\n<3>FORGED");
        assert_eq!(escape("x\u{202E}y"), "x\\u{202e}y");
        assert_eq!(escape("q\"\\"), "q\\\"\\\\");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_get_a_reply_not_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            // Either a request or an error reply with a code.
            if let Err(reply) = parse_request(&bytes) {
                proptest::prop_assert!(!reply.ok && reply.error.is_some());
            }
        }

        #[test]
        fn json_objects_with_random_fields_never_panic(op in "[a-z_]{0,10}", v in 0u32..3, extra in "[ -~]{0,40}") {
            let line = format!("{{\"v\":{v},\"op\":\"{op}\",\"x\":{:?}}}", extra);
            let _ = parse_request(line.as_bytes());
        }

        #[test]
        fn escaped_text_is_one_clean_line(text in "\\PC{0,40}|[\\x00-\\x1f\\u{200b}-\\u{206f}a-z]{0,40}") {
            let escaped = escape(&text);
            proptest::prop_assert!(is_clean_text(&escaped, usize::MAX));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        #[test]
        fn the_one_pass_parse_agrees_with_the_general_one(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "v", "op", "mode", "ratio", "kbytes", "ttl_secs", "tag", "reason",
                        "hold", "for_uid", "clamp_ttl", "id", "force", "profile", "x",
                    ]),
                    proptest::sample::select(vec![
                        "1", "2", "0", "-5", "1.0", "null", "true", "false", "\"lease\"",
                        "\"release\"", "\"status\"", "\"always\"", "\"never\"", "\"a\\u0041\"",
                        "\"0123456789abcdef0123456789abcdef\"", "4294967296", "{}", "[]",
                    ]),
                ),
                0..8,
            ),
            lease in proptest::bool::ANY,
            as_array in proptest::bool::weighted(0.1),
        ) {
            let mut line = String::from("{");
            // Mostly well-formed lines, so that the one-pass parse is taken often.
            let mut all: Vec<(&str, &str)> = if lease {
                vec![("v", "1"), ("op", "\"lease\""), ("mode", "\"always\"")]
            } else {
                vec![("v", "1"), ("op", "\"release\"")]
            };
            all.extend(fields);
            for (i, (key, value)) in all.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(&format!("\"{key}\":{value}"));
            }
            line.push('}');
            if as_array {
                // The same values as a JSON array (which serde would read into a struct).
                line = format!(
                    "[{}]",
                    all.iter().map(|(_, v)| *v).collect::<Vec<_>>().join(",")
                );
            }
            let general = parse_any_request(line.as_bytes());
            match parse_lease_or_release(line.as_bytes()) {
                Some(request) => proptest::prop_assert_eq!(Ok(request), general.map_err(|_| ()), "{}", line),
                None => {
                    let mut keys: Vec<&str> = all.iter().map(|(k, _)| *k).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    let taken = matches!(general, Ok(Request::Lease(_) | Request::Release { .. }));
                    // Only duplicate fields (which the tree reads as the last one) go the
                    // general way and still succeed.
                    proptest::prop_assert!(!taken || keys.len() < all.len(), "{}", line);
                }
            }
        }
    }
}
