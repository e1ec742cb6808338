//! SIGINT, SIGTERM and SIGHUP during `hostkms bench`: the first one stops
//! the run where it is (every phase checks [`requested`]) so that the
//! temporary key is still revoked; a second one of the same kind ends the
//! process at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Set by the first signal.
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
/// The number of the first signal.
static SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Catches the three signals for the rest of the process. Fails only when
/// the handlers cannot be installed.
pub fn catch() -> std::io::Result<()> {
    let stop = STOP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    let which = SIGNAL.get_or_init(|| Arc::new(AtomicUsize::new(0)));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // Registered first, so it sees the flag as the previous signal left
        // it: a second signal exits with the shell's code for it.
        let code = 128 + signal;
        signal_hook::flag::register_conditional_shutdown(signal, code, Arc::clone(stop))?;
        signal_hook::flag::register_usize(signal, Arc::clone(which), signal as usize)?;
        signal_hook::flag::register(signal, Arc::clone(stop))?;
    }
    Ok(())
}

/// Whether a caught signal asked the run to stop.
pub fn requested() -> bool {
    STOP.get().is_some_and(|stop| stop.load(Ordering::SeqCst))
}

/// The signal that stopped the run, if one did.
pub fn signal() -> Option<i32> {
    let which = SIGNAL.get()?.load(Ordering::SeqCst);
    (which != 0 && requested()).then(|| i32::try_from(which).unwrap_or(0))
}

/// A signal's name for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
