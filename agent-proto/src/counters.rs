//! The names of the counters in [`StatusInfo::counters`](crate::StatusInfo):
//! the daemon makes them, clients (`hostkms status`, `hostkms metrics`) read
//! them back, and this module is the one place their grammar is written.
//! Specified in this crate's README ("Status counters").
//!
//! - [`REQUESTS`], [`DENIALS`], [`ALERTS`], [`KEYS`], [`VERSIONS`]: totals;
//! - `requests.<op>.<result>`: requests of one [`Operation`] (its
//!   [`Operation::as_str`] name) that ended with one [`RequestResult`];
//! - `alerts.<kind>`: alerts of one kind (e.g. `repeated-denials`).
//!
//! A newer daemon may add operations, results, alert kinds and totals; a
//! client shows or skips names it does not know and never fails on them.

use std::fmt;

use crate::error::ErrorCode;
use crate::message::Operation;

/// Requests answered since the daemon started, of every operation and result.
pub const REQUESTS: &str = "requests";
/// Requests refused for want of a grant (result `denied`) since the daemon started.
pub const DENIALS: &str = "denials";
/// Alerts raised since the daemon started, of every kind.
pub const ALERTS: &str = "alerts";
/// Keys in the key store, revoked ones included.
pub const KEYS: &str = "keys";
/// Key versions in the key store, revoked ones included.
pub const VERSIONS: &str = "versions";

/// What starts the name of a per-operation request counter.
const REQUESTS_PREFIX: &str = "requests.";
/// What starts the name of a per-kind alert counter.
const ALERTS_PREFIX: &str = "alerts.";

/// How a request ended, as its counter (and the daemon's audit trail) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestResult {
    /// `ok`: answered as asked.
    Ok,
    /// `denied`: refused with [`ErrorCode::PermissionDenied`].
    Denied,
    /// `error`: refused with any other error code.
    Error,
}

impl RequestResult {
    /// Every result, in declaration order (`ALL[r as usize] == r`).
    pub const ALL: [RequestResult; 3] = [
        RequestResult::Ok,
        RequestResult::Denied,
        RequestResult::Error,
    ];

    /// The result of a request refused with `code`, or answered when `None`.
    pub fn of(code: Option<ErrorCode>) -> RequestResult {
        match code {
            None => RequestResult::Ok,
            Some(ErrorCode::PermissionDenied) => RequestResult::Denied,
            Some(_) => RequestResult::Error,
        }
    }

    /// `ok`, `denied` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestResult::Ok => "ok",
            RequestResult::Denied => "denied",
            RequestResult::Error => "error",
        }
    }

    /// The result named `name`, as [`RequestResult::as_str`] spells it.
    pub fn from_name(name: &str) -> Option<RequestResult> {
        RequestResult::ALL
            .into_iter()
            .find(|result| result.as_str() == name)
    }
}

impl fmt::Display for RequestResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of the counter of `op` requests that ended with `result`:
/// `requests.<op>.<result>`, e.g. `requests.wrap.ok`.
pub fn request_counter(op: Operation, result: RequestResult) -> String {
    format!("{REQUESTS_PREFIX}{op}.{result}")
}

/// The operation and result a request counter's name spells, as they are
/// written (`requests.wrap.ok` gives `("wrap", "ok")`), also when this
/// library does not know them (a newer daemon's): a client that shows every
/// counter uses this. `None` when `name` is not a per-operation request
/// counter.
pub fn request_counter_parts(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix(REQUESTS_PREFIX)?.rsplit_once('.')
}

/// The operation and result of a request counter's name, when this library
/// knows both; the inverse of [`request_counter`].
pub fn parse_request_counter(name: &str) -> Option<(Operation, RequestResult)> {
    let (op, result) = request_counter_parts(name)?;
    Some((Operation::from_name(op)?, RequestResult::from_name(result)?))
}

/// The name of the counter of alerts of `kind`: `alerts.<kind>`.
pub fn alert_counter(kind: &str) -> String {
    format!("{ALERTS_PREFIX}{kind}")
}

/// The alert kind a per-kind alert counter's name spells (`alerts.<kind>`
/// gives `<kind>`); `None` for any other name.
pub fn alert_counter_kind(name: &str) -> Option<&str> {
    name.strip_prefix(ALERTS_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_counter_round_trips() {
        let mut names = std::collections::BTreeSet::new();
        for op in Operation::ALL {
            for result in RequestResult::ALL {
                let name = request_counter(op, result);
                assert_eq!(parse_request_counter(&name), Some((op, result)), "{name}");
                assert_eq!(
                    request_counter_parts(&name),
                    Some((op.as_str(), result.as_str())),
                    "{name}"
                );
                assert_eq!(alert_counter_kind(&name), None, "{name}");
                assert!(names.insert(name), "names are distinct");
            }
        }
        assert_eq!(names.len(), Operation::ALL.len() * RequestResult::ALL.len());
    }

    #[test]
    fn request_counters_are_spelled_as_specified() {
        assert_eq!(
            request_counter(Operation::Wrap, RequestResult::Ok),
            "requests.wrap.ok"
        );
        assert_eq!(
            request_counter(Operation::MinDecryptionVersion, RequestResult::Denied),
            "requests.min-decryption-version.denied"
        );
        assert_eq!(
            request_counter(Operation::DataKey, RequestResult::Error),
            "requests.datakey.error"
        );
    }

    #[test]
    fn other_names_are_not_request_counters() {
        for name in [
            REQUESTS,
            DENIALS,
            ALERTS,
            KEYS,
            VERSIONS,
            "requests.",
            "requests.wrap",
            "alerts.repeated-denials",
            "request.wrap.ok",
            "",
        ] {
            assert_eq!(request_counter_parts(name), None, "{name:?}");
            assert_eq!(parse_request_counter(name), None, "{name:?}");
        }
    }

    #[test]
    fn a_newer_daemons_names_split_but_do_not_parse() {
        assert_eq!(
            request_counter_parts("requests.recover.ok"),
            Some(("recover", "ok"))
        );
        assert_eq!(parse_request_counter("requests.recover.ok"), None);
        assert_eq!(
            request_counter_parts("requests.wrap.throttled"),
            Some(("wrap", "throttled"))
        );
        assert_eq!(parse_request_counter("requests.wrap.throttled"), None);
        // The result is what follows the last dot.
        assert_eq!(
            request_counter_parts("requests.a.b.ok"),
            Some(("a.b", "ok"))
        );
    }

    #[test]
    fn results_follow_the_error_code() {
        assert_eq!(RequestResult::of(None), RequestResult::Ok);
        assert_eq!(
            RequestResult::of(Some(ErrorCode::PermissionDenied)),
            RequestResult::Denied
        );
        for code in ErrorCode::ALL
            .into_iter()
            .chain([ErrorCode::Unrecognized(999)])
            .filter(|code| *code != ErrorCode::PermissionDenied)
        {
            assert_eq!(
                RequestResult::of(Some(code)),
                RequestResult::Error,
                "{code:?}"
            );
        }
        for result in RequestResult::ALL {
            assert_eq!(RequestResult::from_name(result.as_str()), Some(result));
            assert_eq!(result.to_string(), result.as_str());
        }
        assert_eq!(RequestResult::from_name("failed"), None);
        // `ALL` is in declaration order: the daemon indexes its counters
        // with `result as usize` and names them by position in `ALL`.
        for (index, result) in RequestResult::ALL.into_iter().enumerate() {
            assert_eq!(result as usize, index, "{result}");
        }
    }

    #[test]
    fn alert_counters_round_trip() {
        for kind in [
            "repeated-denials",
            "repeated-invalid-ciphertexts",
            "encryption-limit",
        ] {
            let name = alert_counter(kind);
            assert_eq!(name, format!("alerts.{kind}"));
            assert_eq!(alert_counter_kind(&name), Some(kind));
            assert_eq!(request_counter_parts(&name), None);
        }
        assert_eq!(alert_counter_kind(ALERTS), None);
    }
}
