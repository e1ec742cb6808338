//! The daemon's life: state dir and root key first, then the socket (bound
//! here, or passed by systemd), then serving until SIGTERM or SIGINT, with
//! SIGHUP reloading the config's grants and limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::config::{
    AccessConfig, CREDENTIALS_KEYS, Config, CredentialsConfig, LISTENER_KEYS, ListenerConfig,
    Overrides, RECOVERY_KEYS, STATE_DIR_KEYS, TPM_KEYS, TpmConfig,
};
use crate::keystore::{KeyStore, RollbackStart, StoreError, TpmEntropy};
use crate::lifecycle;
use crate::recovery::{self, RecoveryConfig, dir::RecoveryWriter};
use crate::rootkey::{
    Opened, Origin, RootKey, RootKeyError, SealRecord, SealingMode, TpmRootSealer,
};
use crate::server::{self, BoundSocket, Heartbeat, LiveLimits, ServerError};
use crate::service::{SealingState, Service, Unlocker, WorkerProbe};
use crate::state_dir::{StateDir, StateDirError, StateDirLock};
use crate::systemd::{self, ActivationError, Notifier};
use crate::tpm::TpmWorker;

/// How often STATUS= is refreshed under systemd when the watchdog asks for
/// nothing more often.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a stop waits for the TPM worker's last conversation.
const TPM_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

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
    /// The socket systemd passed cannot be served.
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// The socket could not be served.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The recovery directory could not be set up.
    #[error(transparent)]
    Recovery(#[from] recovery::StartError),
    /// The async runtime or the signal handlers could not be set up.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Where the config came from, so that SIGHUP can read it again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The config file.
    pub path: PathBuf,
    /// Whether the file must exist (it was named with `--config`).
    pub required: bool,
    /// The command-line values that override the file's.
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Reads and validates the config, as at start and on every SIGHUP.
    pub fn load(&self) -> Result<Config, crate::config::ConfigError> {
        Config::load(&self.path, self.required, &self.overrides)
    }
}

/// Runs the daemon with `config` until SIGTERM or SIGINT.
pub fn run(config: Config, source: ConfigSource) -> Result<(), DaemonError> {
    let tpm =
        Arc::new(TpmWorker::start(config.tpm.tcti.clone()).map_err(RootKeyError::TpmUnavailable)?);
    let result = run_with(config, source, &tpm);
    // On every way out: the process must not exit while the worker is in
    // the TSS libraries (a background refill, say); a stuck one is left.
    tpm.shutdown(TPM_SHUTDOWN_WAIT);
    result
}

mod opener;

use opener::Opener;

/// The daemon's life after the TPM worker has started, step by step.
fn run_with(config: Config, source: ConfigSource, tpm: &Arc<TpmWorker>) -> Result<(), DaemonError> {
    raise_fd_limit(config.server.max_connections);
    // Read before anything can fail, so a bad passed socket is reported as such.
    let activated = systemd::activated_listeners()?;
    let notifier = Notifier::from_env();
    let state_dir = StateDir::open(&config.state_dir)?;
    // Held until this function returns: one daemon per state dir, or two
    // would each acknowledge writes the other then overwrites.
    let _lock = StateDirLock::acquire(&state_dir)?;
    let opener = Arc::new(Opener::new(state_dir.clone(), Arc::clone(tpm), &config));
    let opened = opener.open_root(None)?;
    warn_missing_admin_groups(&config.access);
    log_disabled_grants(&config.access);
    let probe = Arc::new(WorkerProbe::new(Arc::clone(tpm), config.tpm.timeout));
    let service = match opened {
        Opened::Unsealed {
            key,
            origin,
            record,
        } => {
            log_root_key(&state_dir, &key, origin, &record, &config.root_key);
            let (store, transport) = opener.open_keys(key)?;
            let service = Service::new(
                store,
                config.access.policy.clone(),
                config.service,
                config.alerts,
                probe,
            )
            .with_sealing(SealingState {
                record: Some(record),
                lock: None,
                configured: config.root_key.clone(),
            });
            if let Some(transport) = transport {
                service.set_transport_key(transport);
            }
            service
        }
        Opened::Locked(reason) => {
            audit::daemon_locked(&reason.describe());
            Service::locked(
                config.access.policy.clone(),
                config.service,
                config.alerts,
                probe,
                SealingState {
                    record: opener.record(),
                    lock: Some(reason),
                    configured: config.root_key.clone(),
                },
            )
        }
    };
    let sealer = TpmRootSealer::new(state_dir.clone(), Arc::clone(tpm), config.tpm.timeout);
    let service = Arc::new(
        service
            .with_root_sealer(Arc::new(sealer))
            .with_unlocker(Arc::clone(&opener) as Arc<dyn Unlocker>)
            .with_random_source(Arc::new(TpmEntropy::for_random(
                Arc::clone(tpm),
                config.tpm.timeout,
            ))),
    );
    service.set_transfer_peers(config.transfer.clone());
    service.set_key_defaults(config.keys);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hostkmsd")
        .build()?;
    runtime.block_on(async {
        let socket = bind_listener(activated.main, &config.listener)?;
        let credential_socket = bind_credentials(activated.credentials, &config.credentials)?;
        let shutdown = CancellationToken::new();
        watch_signals(shutdown.clone(), notifier)?;
        let limits: LiveLimits = Arc::new(ArcSwap::from_pointee(config.server));
        let reloader = Reloader {
            running: config.clone(),
            source,
            service: Arc::clone(&service),
            limits: Arc::clone(&limits),
            opener: Arc::clone(&opener),
        };
        watch_reloads(reloader, notifier)?;
        let watching = (Arc::clone(&service), Arc::clone(&opener));
        tokio::spawn(async move {
            // A locked daemon starts its recovery directory at unlock.
            watching.0.opened().await;
            watch_recovery(watching.1.recovery_writer()).await;
        });
        // Ticks once now: a host that was off rotates its due keys at once.
        let timer_stop = shutdown.child_token();
        let timer = tokio::spawn(lifecycle::run(Arc::clone(&service), timer_stop.clone()));
        announce_ready(&service, &socket, &config.listener, notifier);
        let credentials = credential_socket.map(|socket| {
            let (service, directory) = (Arc::clone(&service), config.credentials.directory.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                server::credentials::serve_credentials(
                    socket.listener(),
                    service,
                    directory,
                    shutdown,
                )
                .await;
                drop(socket);
            })
        });
        serve(&socket, &service, limits, shutdown.clone(), notifier).await;
        // Serving ends on shutdown only; the credential socket drains too.
        shutdown.cancel();
        if let Some(credentials) = credentials {
            if let Err(e) = credentials.await {
                tracing::warn!("the credential socket did not stop cleanly: {e}");
            }
        }
        // However serving ended, the timer stops; its last act records the
        // daemon clock, so wait for it.
        timer_stop.cancel();
        if let Err(e) = timer.await {
            tracing::warn!("the lifecycle timer did not stop cleanly: {e}");
        }
        stop(&service, tpm).await;
        Ok(())
    })
}

/// Logs how the root key came to be in memory, with its check value, and
/// a config whose `[root_key]` asks for another mode than the one in force.
fn log_root_key(
    state_dir: &StateDir,
    root_key: &RootKey,
    origin: Origin,
    record: &SealRecord,
    configured: &SealingMode,
) {
    let check = root_key.check_value();
    let sealed_to = record.mode.describe();
    let dir = state_dir.path().display();
    match origin {
        Origin::Created => tracing::info!(
            root_key_check = %check,
            state_dir = %dir,
            "created root key and sealed it to the TPM ({sealed_to})"
        ),
        Origin::Unsealed => tracing::info!(
            root_key_check = %check,
            state_dir = %dir,
            "unsealed root key (sealed to {sealed_to})"
        ),
        Origin::Migrated => tracing::warn!(
            root_key_check = %check,
            state_dir = %dir,
            "unsealed root key and moved it under the noDA storage primary (sealed to {sealed_to})"
        ),
        Origin::RotationDiscarded => tracing::warn!(
            root_key_check = %check,
            state_dir = %dir,
            "unsealed root key; an interrupted root-key rotation was rolled back, this key stays in force"
        ),
        Origin::RotationCompleted => tracing::warn!(
            root_key_check = %check,
            state_dir = %dir,
            "unsealed root key; an interrupted root-key rotation was completed, this new key is in force"
        ),
    }
    if &record.mode != configured {
        tracing::warn!(
            "[root_key] asks for the root key to be sealed to {}, but it is sealed to {sealed_to}: the mode is fixed when the root key is made. Run `hostkms reseal` to apply the config",
            configured.describe()
        );
    }
    if !root_key.is_locked() {
        tracing::warn!(
            "could not lock the root key's page in RAM (RLIMIT_MEMLOCK?); it may be swapped out"
        );
    }
}

/// Opens (and verifies) the key store under `root_key`, and logs its size.
fn open_store(
    state_dir: &StateDir,
    root_key: &RootKey,
    tpm: &Arc<TpmWorker>,
    settings: &TpmConfig,
) -> Result<KeyStore, DaemonError> {
    let started = std::time::Instant::now();
    let entropy = Arc::new(TpmEntropy::new(Arc::clone(tpm), settings.timeout));
    let store = KeyStore::open(
        state_dir,
        root_key,
        entropy,
        crate::clock::Clock::from_env(),
    )?;
    let keys = store.keys();
    tracing::info!(
        keys = keys.len(),
        versions = keys.version_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "loaded key store"
    );
    drop(keys);
    lifecycle::warn_if_daemon_clock_missing(&store);
    let unlocked = crate::locked::unlocked_count();
    if unlocked > 0 {
        tracing::warn!(
            unlocked,
            "some key secrets could not be locked in RAM (RLIMIT_MEMLOCK); they may be swapped out. Raise LimitMEMLOCK"
        );
    }
    Ok(store)
}

/// Starts the recovery directory when `[recovery]` is configured (its writer
/// then hears of every key change); without it, says the keys are not
/// recoverable.
fn start_recovery(
    config: Option<RecoveryConfig>,
    store: &KeyStore,
) -> Result<Option<Arc<RecoveryWriter>>, DaemonError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let dir = config.dir.clone();
    let (custodians, threshold) = (config.recipients.len(), config.threshold);
    let (recipients, escrow_dir) = (config.recipients.clone(), dir.display().to_string());
    let (writer, escrowed) = recovery::start(config, store)?;
    if escrowed {
        audit::recovery_escrowed(
            &escrow_dir,
            writer.bundle_recipient(),
            None,
            &recipients,
            threshold,
        );
    }
    tracing::info!(
        dir = %dir.display(),
        custodians,
        threshold,
        bundle_recipient = writer.bundle_recipient(),
        current = writer.is_current(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovery directory reconciled with the key store"
    );
    Ok(Some(writer))
}

/// With a recovery directory: writes what lags every
/// [`recovery::RETRY_INTERVAL`]. Without one: warns now and once a day that
/// the keys are not recoverable.
async fn watch_recovery(writer: Option<Arc<RecoveryWriter>>) {
    let Some(writer) = writer else {
        let mut ticks = tokio::time::interval(recovery::NOT_RECOVERABLE_INTERVAL);
        loop {
            ticks.tick().await;
            tracing::warn!("{}", recovery::NOT_RECOVERABLE);
        }
    };
    let mut ticks = tokio::time::interval(recovery::RETRY_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !writer.is_current() {
            let retrying = Arc::clone(&writer);
            let _ = tokio::task::spawn_blocking(move || retrying.retry()).await;
        }
    }
}

/// Checks the key store against its TPM rollback counter (binding a new
/// store to a new one), before anything is served, and logs what it found.
fn check_rollback(
    store: &KeyStore,
    tpm: &Arc<TpmWorker>,
    settings: &TpmConfig,
) -> Result<(), DaemonError> {
    match store.bind_rollback(tpm, settings.start_timeout, settings.timeout)? {
        RollbackStart::Bound {
            index,
            counter,
            existing: false,
        } => tracing::info!(
            nv_index = format_args!("{index:#010x}"),
            counter,
            "bound the new key store to a TPM NV counter (rollback protection)"
        ),
        RollbackStart::Bound {
            index,
            counter,
            existing: true,
        } => tracing::warn!(
            nv_index = format_args!("{index:#010x}"),
            counter,
            "the key store had no rollback binding (made before hostkms had one); bound it to a new TPM NV counter. Rollbacks to copies older than now are detected from here on"
        ),
        RollbackStart::Level { index, counter } => tracing::info!(
            nv_index = format_args!("{index:#010x}"),
            counter,
            "the key store matches its TPM rollback counter"
        ),
        RollbackStart::CaughtUp { index, from, to } => tracing::warn!(
            nv_index = format_args!("{index:#010x}"),
            from,
            to,
            "the TPM rollback counter was {} behind the key store (changes committed before a crash or while the TPM was away); brought it level",
            to - from
        ),
    }
    Ok(())
}

/// The socket systemd passed, or the configured one bound here. Needs the
/// runtime.
fn bind_listener(
    activated: Option<std::os::unix::net::UnixListener>,
    listener: &ListenerConfig,
) -> Result<Socket, DaemonError> {
    Ok(match activated {
        Some(listener) => Socket::Activated(UnixListener::from_std(listener)?),
        None => {
            let group = listener.socket_group.as_ref().map(|group| group.gid);
            Socket::Bound(BoundSocket::bind(
                &listener.socket,
                listener.socket_mode,
                group,
            )?)
        }
    })
}

/// The credential socket systemd passed (named `credentials`), or the one
/// `[credentials] socket` names bound here (root only, 0600); `None`
/// without either. Needs the runtime.
fn bind_credentials(
    activated: Option<std::os::unix::net::UnixListener>,
    credentials: &CredentialsConfig,
) -> Result<Option<Socket>, DaemonError> {
    let socket = match (activated, &credentials.socket) {
        (Some(listener), _) => Socket::Activated(UnixListener::from_std(listener)?),
        (None, Some(path)) => Socket::Bound(BoundSocket::bind(path, 0o600, None)?),
        (None, None) => return Ok(None),
    };
    tracing::info!(
        directory = %credentials.directory.display(),
        "serving systemd credentials on {}",
        socket.path(credentials.socket.as_deref().unwrap_or(std::path::Path::new("")))
    );
    Ok(Some(socket))
}

/// Writes the ready event to the journal and tells systemd.
fn announce_ready(
    service: &Service,
    socket: &Socket,
    listener: &ListenerConfig,
    notifier: Notifier,
) {
    let (keys, versions) = service.store().map_or((0, 0), |store| {
        let keys = store.keys();
        (keys.len(), keys.version_count())
    });
    audit::ready(
        keys,
        versions,
        &socket.path(&listener.socket),
        matches!(socket, Socket::Activated(_)),
    );
    notifier.ready(&status_line(service));
}

/// Serves the socket until `shutdown`, with the watchdog heartbeat under
/// systemd and the audit windows summarised as they close.
async fn serve(
    socket: &Socket,
    service: &Arc<Service>,
    limits: LiveLimits,
    shutdown: CancellationToken,
    notifier: Notifier,
) {
    let heartbeat = notifier.is_managed().then(|| {
        let every = notifier
            .watchdog_interval()
            .map_or(STATUS_INTERVAL, |interval| interval.min(STATUS_INTERVAL));
        let service = Arc::clone(service);
        Heartbeat {
            every,
            beat: Box::new(move || {
                notifier.watchdog();
                notifier.status(&status_line(&service));
            }),
        }
    });
    let summaries = tokio::spawn(log_closed_windows(Arc::clone(service)));
    server::serve(
        socket.listener(),
        Arc::clone(service),
        limits,
        shutdown,
        heartbeat,
    )
    .await;
    summaries.abort();
}

/// After serving: the last audit summaries, the exact encryption counts,
/// the TPM worker's last conversation, and the stop event.
async fn stop(service: &Arc<Service>, tpm: &Arc<TpmWorker>) {
    audit::summarized(&service.monitor().close_all_windows());
    if let Some(store) = service.store().cloned() {
        settle_store(store).await;
    }
    let worker = Arc::clone(tpm);
    let ended = tokio::task::spawn_blocking(move || worker.shutdown(TPM_SHUTDOWN_WAIT))
        .await
        .unwrap_or(false);
    if !ended {
        tracing::warn!(
            "the TPM has not answered the daemon's last command (waited up to {} s unless it was already overdue); stopping without it",
            TPM_SHUTDOWN_WAIT.as_secs()
        );
    }
    audit::stopped(service.monitor().totals().requests);
}

/// File descriptors the daemon needs beyond its connections: the state
/// dir, the key store, the TPM, journald, pidfds being read, and margin.
const FDS_BESIDES_CONNECTIONS: u64 = 256;

/// Raises the soft limit on open files towards the hard one, far enough for
/// the connections the server holds open at most
/// ([`server::max_open_connections`]) and its files: systemd starts
/// services with a soft limit of 1024 (and a hard one far above), and at
/// 1024 a flood of refused connections exhausted the descriptors, so that
/// accepting failed and every client waited. Warns when even the hard
/// limit is too low.
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = server::max_open_connections(max_connections) as u64 + FDS_BESIDES_CONNECTIONS;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= needed {
        return;
    }
    let raised = needed.min(hard);
    if raised > soft {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
            tracing::warn!("cannot raise the open-file limit from {soft} to {raised}: {e}");
            return;
        }
    }
    if raised < needed {
        tracing::warn!(
            "the open-file limit is {raised}, but max_connections = {max_connections} with the refusals answered at once needs about {needed}; raise LimitNOFILE= for hostkms.service, or lower max_connections (past the limit, accepting connections fails and every client waits)"
        );
    }
}

/// How often the audit windows are checked for ones that closed.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// Logs the summary of each audit window as it closes, so a flood's count
/// reaches the journal within a second of its window even when the peer
/// has gone quiet.
async fn log_closed_windows(service: Arc<Service>) {
    let mut ticks = tokio::time::interval(SUMMARY_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        audit::summarized(&service.monitor().close_expired_windows());
    }
}

/// The socket served: bound here (its path is removed again when it drops),
/// or passed by systemd (which keeps owning the path).
enum Socket {
    Bound(BoundSocket),
    Activated(UnixListener),
}

impl Socket {
    /// Where clients connect: the `configured` path, or the one systemd bound.
    fn path(&self, configured: &std::path::Path) -> String {
        match self {
            Socket::Bound(_) => configured.display().to_string(),
            Socket::Activated(listener) => listener
                .local_addr()
                .ok()
                .and_then(|address| address.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_else(|| "the socket systemd passed".to_string()),
        }
    }

    fn listener(&self) -> &UnixListener {
        match self {
            Socket::Bound(bound) => bound.listener(),
            Socket::Activated(listener) => listener,
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT, telling systemd first.
fn watch_signals(shutdown: CancellationToken, notifier: Notifier) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
        notifier.stopping();
        shutdown.cancel();
    });
    Ok(())
}

/// What a reload needs: the config running since start (what a reload
/// cannot change stays as it), where to read the new one, and where to put
/// its grants and limits in force.
struct Reloader {
    running: Config,
    source: ConfigSource,
    service: Arc<Service>,
    limits: LiveLimits,
    opener: Arc<Opener>,
}

impl Reloader {
    /// Puts `loaded`'s grants, limits and alert thresholds in force, and
    /// warns of what only a restart applies.
    fn apply(&self, loaded: Config) {
        for keys in restart_needed(&self.running, &loaded) {
            tracing::warn!(
                "{} changed in the config; a reload keeps the running value. Restart hostkmsd (systemctl restart hostkms) to apply it",
                one_of(keys)
            );
        }
        warn_missing_admin_groups(&loaded.access);
        log_disabled_grants(&loaded.access);
        self.limits.store(Arc::new(loaded.server));
        let grants = loaded.access.policy.grant_count();
        self.service
            .reconfigure(loaded.access.policy, loaded.service, loaded.alerts);
        self.service.set_transfer_peers(loaded.transfer);
        self.service.set_key_defaults(loaded.keys);
        // `[root_key]` seals nothing by itself: it is the mode a first
        // unlock creates and `hostkms reseal` applies.
        self.opener.set_mode(loaded.root_key.clone());
        self.service.set_configured_sealing(loaded.root_key);
        audit::reloaded(&self.source.path, grants);
    }
}

/// On each SIGHUP, reads the config again and puts its grants, limits and
/// alert thresholds in force; an invalid config changes nothing.
fn watch_reloads(reloader: Reloader, notifier: Notifier) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            notifier.reloading();
            let reading = reloader.source.clone();
            match tokio::task::spawn_blocking(move || reading.load()).await {
                Ok(Ok(config)) => reloader.apply(config),
                Ok(Err(e)) => audit::reload_failed(&e),
                Err(e) => audit::reload_failed(&e),
            }
            notifier.ready(&status_line(&reloader.service));
        }
    });
    Ok(())
}

/// The sections only a restart changes (the listener, the state dir, the
/// TPM) that differ in `loaded`, each as the keys it reads. Whole sections
/// are compared, so a key added to one of them is covered without more code.
fn restart_needed(running: &Config, loaded: &Config) -> Vec<&'static [&'static str]> {
    [
        (running.listener != loaded.listener, LISTENER_KEYS),
        (running.state_dir != loaded.state_dir, STATE_DIR_KEYS),
        (running.tpm != loaded.tpm, TPM_KEYS),
        (running.recovery != loaded.recovery, RECOVERY_KEYS),
        (running.credentials != loaded.credentials, CREDENTIALS_KEYS),
    ]
    .into_iter()
    .filter_map(|(changed, keys)| changed.then_some(keys))
    .collect()
}

/// `keys` quoted for a message: "`a`", "`a` or `b`", "`a`, `b` or `c`".
fn one_of(keys: &[&str]) -> String {
    let quoted: Vec<String> = keys.iter().map(|key| format!("`{key}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

fn warn_missing_admin_groups(access: &AccessConfig) {
    for group in &access.missing_admin_groups {
        tracing::warn!(
            "admin group \"{group}\" does not exist on this host; only root is admin until it does"
        );
    }
}

/// Logs each grant a name that does not resolve put out of force.
fn log_disabled_grants(access: &AccessConfig) {
    for disabled in &access.disabled_grants {
        audit::grant_disabled(
            disabled.grant.grant,
            disabled.grant.field,
            &disabled.grant.name,
            disabled,
        );
    }
}

/// The one line `systemctl status hostkms` shows.
fn status_line(service: &Service) -> String {
    let Some(store) = service.store() else {
        let why = service
            .sealing()
            .lock
            .as_ref()
            .map_or_else(String::new, |reason| format!(" ({})", reason.short()));
        return format!("locked: run hostkms unlock{why}");
    };
    let keys = store.keys();
    let totals = service.monitor().totals();
    let recovery = store.recovery_status();
    let recovery = if !recovery.configured {
        "keys NOT recoverable (no [recovery])"
    } else if recovery.current {
        "recovery dir current"
    } else {
        "recovery dir NOT current"
    };
    format!(
        "serving {} keys ({} versions); {} requests, {} denied, {} alerts; {recovery}",
        keys.len(),
        keys.version_count(),
        totals.requests,
        totals.denials,
        totals.alerts,
    )
}

/// The key store's last writes at a stop: exact encryption counts, and
/// the rollback counter's pending increments.
async fn settle_store(store: Arc<KeyStore>) {
    let counting = Arc::clone(&store);
    match tokio::task::spawn_blocking(move || counting.persist_counts()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            "could not write exact encryption counts (the reserved upper bounds stand): {e}"
        ),
        Err(e) => tracing::warn!("could not write exact encryption counts: {e}"),
    }
    let pending =
        tokio::task::spawn_blocking(move || store.settle_rollback_counter(TPM_SHUTDOWN_WAIT))
            .await
            .unwrap_or(0);
    if pending > 0 {
        tracing::error!(
            pending,
            "stopping with {pending} increments of the TPM rollback counter pending (the TPM does not answer): the revocations, disables and minimum-version changes they stand for are not yet protected against rollback. Until the next start makes them, an older copy of the state dir put back is not detected: guard the state dir and its backups, and start hostkmsd again once the TPM answers"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(
            text,
            Path::new("/etc/hostkms/config.toml"),
            &Overrides::default(),
        )
        .expect("a valid config")
    }

    #[test]
    fn only_restart_sections_that_changed_are_reported() {
        let running = config("socket_mode = \"0660\"\nmax_connections = 10\n");
        let reloadable = config(
            "socket_mode = \"0660\"\nmax_connections = 20\nmax_plaintext = 100\n\
             [alerts]\ndenials = 3\n[[grant]]\nkeys = [\"a\"]\nuids = [5]\nops = [\"wrap\"]\n",
        );
        assert!(restart_needed(&running, &reloadable).is_empty());
        for (text, keys) in [
            ("socket_mode = \"0666\"", LISTENER_KEYS),
            (
                "socket = \"/tmp/other.sock\"\nsocket_mode = \"0660\"",
                LISTENER_KEYS,
            ),
            (
                "state_dir = \"/srv/kms\"\nsocket_mode = \"0660\"",
                STATE_DIR_KEYS,
            ),
            (
                "tcti = \"swtpm:port=4000\"\nsocket_mode = \"0660\"",
                TPM_KEYS,
            ),
            (
                "tpm_start_timeout_secs = 1\nsocket_mode = \"0660\"",
                TPM_KEYS,
            ),
        ] {
            assert_eq!(
                restart_needed(&running, &config(text)),
                vec![keys],
                "{text}"
            );
        }
        let everything = config("socket_mode = \"0600\"\nstate_dir = \"/srv\"\ntcti = \"tabrmd:\"");
        assert_eq!(
            restart_needed(&running, &everything),
            vec![LISTENER_KEYS, STATE_DIR_KEYS, TPM_KEYS]
        );
    }

    #[test]
    fn a_changed_recovery_table_needs_a_restart() {
        let recipient = crate::recovery::escrow::BundleIdentity::generate()
            .unwrap()
            .recipient()
            .to_string();
        let running = config("");
        let with = |dir: &str| {
            config(&format!(
                "[recovery]\nrecipients = [\"{recipient}\"]\ndir = \"{dir}\"\n"
            ))
        };
        assert_eq!(restart_needed(&running, &with("/a")), vec![RECOVERY_KEYS]);
        assert_eq!(
            restart_needed(&with("/a"), &with("/b")),
            vec![RECOVERY_KEYS]
        );
        assert!(restart_needed(&with("/a"), &with("/a")).is_empty());
    }

    #[test]
    fn keys_are_listed_as_alternatives() {
        assert_eq!(one_of(&["state_dir"]), "`state_dir`");
        assert_eq!(one_of(&["a", "b"]), "`a` or `b`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
