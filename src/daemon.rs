//! The daemon's life: state dir and root key first, then the socket, then
//! serving until SIGTERM or SIGINT.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::keystore::{Kek, KeyStore, StoreError};
use crate::rootkey::{self, Origin, RootKeyError};
use crate::server::{self, BoundSocket, Limits, ServerError};
use crate::service::{Service, ServiceLimits};
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
    /// The key store could not be opened.
    #[error(transparent)]
    KeyStore(#[from] StoreError),
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
    for group in &config.missing_admin_groups {
        tracing::warn!(
            "admin group \"{group}\" does not exist on this host; only root is admin until it does"
        );
    }
    let started = std::time::Instant::now();
    let store = KeyStore::open(&state_dir, &root_key, config.tcti.clone())?;
    // The store holds the keys derived from the root key; the root key itself
    // is needed no longer and is wiped here rather than kept for the daemon's life.
    drop(root_key);
    let keys = store.keys();
    tracing::info!(
        keys = keys.len(),
        versions = keys.version_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "loaded key store"
    );
    if Kek::unlocked_count() > 0 {
        tracing::warn!(
            unlocked = Kek::unlocked_count(),
            "some KEKs could not be locked in RAM (RLIMIT_MEMLOCK); they may be swapped out. Raise LimitMEMLOCK"
        );
    }
    let limits = Limits {
        max_frame: config.max_frame,
        max_connections: config.max_connections,
        idle_timeout: config.idle_timeout,
        frame_timeout: config.frame_timeout,
    };
    let service = Arc::new(Service::new(
        check,
        store,
        config.policy.clone(),
        ServiceLimits {
            max_plaintext: config.max_plaintext,
            rotate_after: config.rotate_after_encryptions,
        },
        config.tcti.clone(),
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hostkmsd")
        .build()?;
    runtime.block_on(async {
        let group = config.socket_group.as_ref().map(|group| group.gid);
        let socket = BoundSocket::bind(&config.socket, config.socket_mode, group)?;
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
        server::serve(socket.listener(), Arc::clone(&service), limits, shutdown).await;
        let store_service = Arc::clone(&service);
        match tokio::task::spawn_blocking(move || store_service.store().persist_counts()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                "could not write exact encryption counts (the reserved upper bounds stand): {e}"
            ),
            Err(e) => tracing::warn!("could not write exact encryption counts: {e}"),
        }
        tracing::info!("stopped");
        Ok(())
    })
}
