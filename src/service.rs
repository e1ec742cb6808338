//! The operations, free of any transport: a request and its peer in, a
//! response out. The server frames them; this module decides them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_proto::{
    ErrorCode, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION, Request, Response, StatusInfo,
};

use crate::config::Tcti;
use crate::peer::Peer;
use crate::rootkey::RootKey;
use crate::tpm;

/// How long a TPM probe result is reused before `Status` probes again.
const TPM_PROBE_MAX_AGE: Duration = Duration::from_secs(10);

/// The daemon's state that requests act on.
#[derive(Debug)]
pub struct Service {
    root_key: RootKey,
    started: Instant,
    tpm_health: TpmHealth,
    requests: AtomicU64,
}

impl Service {
    /// A service over an unsealed root key; `tcti` is probed for `Status`.
    pub fn new(root_key: RootKey, tcti: Tcti) -> Service {
        Service {
            root_key,
            started: Instant::now(),
            tpm_health: TpmHealth::new(tcti),
            requests: AtomicU64::new(0),
        }
    }

    /// Answers one request from `peer`.
    pub async fn handle(&self, _peer: &Peer, request: Request) -> Response {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match request {
            Request::Ping => Response::Pong,
            Request::Status => Response::Status(self.status().await),
            other => Response::error(
                ErrorCode::NotImplemented,
                format!(
                    "operation \"{}\" is not implemented yet by this hostkmsd {}; only ping and status are served",
                    other.operation(),
                    env!("CARGO_PKG_VERSION")
                ),
            ),
        }
    }

    async fn status(&self) -> StatusInfo {
        let counters = BTreeMap::from([(
            "requests".to_string(),
            self.requests.load(Ordering::Relaxed),
        )]);
        StatusInfo {
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            oldest_protocol: OLDEST_PROTOCOL_VERSION,
            newest_protocol: PROTOCOL_VERSION,
            uptime_secs: self.started.elapsed().as_secs(),
            tpm_reachable: self.tpm_health.reachable().await,
            root_key_loaded: true,
            root_key_check: self.root_key.check_value(),
            counters,
        }
    }
}

/// Whether the TPM answers, probed at most every [`TPM_PROBE_MAX_AGE`] and
/// off the async threads, so `Status` cannot be used to keep the TPM busy.
#[derive(Debug)]
struct TpmHealth {
    tcti: Arc<Tcti>,
    last: tokio::sync::Mutex<(Instant, bool)>,
}

impl TpmHealth {
    /// The daemon just unsealed its root key, so the TPM answered at start.
    fn new(tcti: Tcti) -> TpmHealth {
        TpmHealth {
            tcti: Arc::new(tcti),
            last: tokio::sync::Mutex::new((Instant::now(), true)),
        }
    }

    async fn reachable(&self) -> bool {
        let mut last = self.last.lock().await;
        if last.0.elapsed() < TPM_PROBE_MAX_AGE {
            return last.1;
        }
        let tcti = Arc::clone(&self.tcti);
        let answered = match tokio::task::spawn_blocking(move || tpm::probe(&tcti)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!("TPM probe failed: {e}");
                false
            }
            Err(e) => {
                tracing::warn!("TPM probe did not finish: {e}");
                false
            }
        };
        *last = (Instant::now(), answered);
        answered
    }
}
