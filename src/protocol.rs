//! The wire protocol between `overcommitctl` (or any script with `socat`) and `overcommitd`:
//! one JSON object per line each way, a protocol version in every message, stable error codes.
//! docs/protocol.md is the reference; these types are its implementation.

use serde::{Deserialize, Serialize};

use crate::config::DriftAction;
use crate::model::{Mode, Policy};

/// The version every message carries as `"v"`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line the daemon reads (bytes, newline included).
pub const MAX_REQUEST_LINE: usize = 16 * 1024;

/// A request, by its `"op"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
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
pub struct PolicyRequest {
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kbytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    #[serde(flatten)]
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
    serde_json::from_value(value)
        .map_err(|e| Reply::failure(ErrorCode::Invalid, format!("bad request: {e}")))
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
    pub owner_uid: u32,
    pub owner: String,
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
    pub effective: Policy,
    pub kernel_mode: Mode,
    pub kernel_ratio: i64,
    pub kernel_kbytes: u64,
    pub leases: usize,
    pub drift: DriftAction,
    pub clients: usize,
    /// The kernel's values before the daemon's first write this boot: the limit a profile
    /// without ratio/kbytes keeps (`apply --check` needs it to say what `apply` would write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<KernelPolicy>,
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
    pub profiles: Vec<crate::config::Profile>,
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
        });
        let line = reply.to_line();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let back: Reply = serde_json::from_slice(&line).unwrap();
        assert!(back.ok);
        assert_eq!(back.result.unwrap()["effective"]["limit"]["ratio"], 50);
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
    }
}
