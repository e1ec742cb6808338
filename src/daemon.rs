//! The daemon's life: state dir and root key first, then the socket, then
//! serving until SIGTERM or SIGINT.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::rootkey::{self, Origin, RootKeyError};
use crate::server::{self, BoundSocket, Limits, ServerError};
use crate::service::Service;
use crate::state_dir::{StateDir, StateDirError};

/// Why the daemon stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state directory is unusable.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// The root key could not be created or unsealed.
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// The socket could not be served.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The async runtime or the signal handlers could not be set up.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Runs the daemon with `config` until SIGTERM or SIGINT.
pub fn run(config: &Config) -> Result<(), DaemonError> {
    let state_dir = StateDir::open(&config.state_dir)?;
    let (root_key, origin) = rootkey::load_or_create(&state_dir, &config.tcti)?;
    let check = root_key.check_value();
    match origin {
        Origin::Created => tracing::info!(
            root_key_check = %check,
            state_dir = %state_dir.path().display(),
            "created root key and sealed it to the TPM"
        ),
        Origin::Unsealed => tracing::info!(
            root_key_check = %check,
            state_dir = %state_dir.path().display(),
            "unsealed root key"
        ),
    }
    if !root_key.is_locked() {
        tracing::warn!(
            "could not lock the root key's page in RAM (RLIMIT_MEMLOCK?); it may be swapped out"
        );
    }
    let service = Arc::new(Service::new(root_key, config.tcti.clone()));
    let limits = Limits {
        max_frame: config.max_frame,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hostkmsd")
        .build()?;
    runtime.block_on(async {
        let socket = BoundSocket::bind(&config.socket, config.socket_mode)?;
        let shutdown = CancellationToken::new();
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
                _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
            }
            stop.cancel();
        });
        tracing::info!(
            socket = %config.socket.display(),
            mode = format_args!("{:04o}", config.socket_mode),
            "serving"
        );
        server::serve(socket.listener(), service, limits, shutdown).await;
        tracing::info!("stopped");
        Ok(())
    })
}
