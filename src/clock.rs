//! The daemon's two clocks: the wall clock (dates: creation times, when a
//! rotation is due, when a deletion is due) and a monotonic clock (how much
//! time the daemon itself has seen pass, which a clock jump cannot move).
//!
//! Every read of the time in the daemon goes through a [`Clock`], so that
//! tests can move both clocks. The movable clock exists only in builds
//! with debug assertions (what `cargo build` and `cargo test` make): the
//! environment variable [`TEST_CLOCK_ENV`] names a file holding two signed
//! numbers of seconds, `WALL_OFFSET MONOTONIC_OFFSET`, added to the real
//! clocks and read again at every query. A release build (the Debian
//! package) compiles none of it: it reads the real clocks only, and the
//! package build checks that the variable's name is not in its binaries.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment variable naming the movable clock's file; honoured only
/// by builds with debug assertions.
#[cfg(debug_assertions)]
pub const TEST_CLOCK_ENV: &str = "HOSTKMS_TEST_CLOCK";

/// Wall and monotonic time as the daemon reads them.
#[derive(Debug, Clone)]
pub struct Clock {
    started: Instant,
    #[cfg(debug_assertions)]
    test_file: Option<std::path::PathBuf>,
}

impl Clock {
    /// The real clocks.
    pub fn system() -> Clock {
        Clock {
            started: Instant::now(),
            #[cfg(debug_assertions)]
            test_file: None,
        }
    }

    /// The real clocks, or in a debug build with [`TEST_CLOCK_ENV`] set,
    /// the clocks moved by the offsets in that file.
    pub fn from_env() -> Clock {
        #[cfg(debug_assertions)]
        {
            if let Some(path) = std::env::var_os(TEST_CLOCK_ENV) {
                return Clock {
                    started: Instant::now(),
                    test_file: Some(path.into()),
                };
            }
        }
        Clock::system()
    }

    /// A clock moved by the offsets in `path` (tests of the library).
    #[cfg(debug_assertions)]
    pub fn movable(path: impl Into<std::path::PathBuf>) -> Clock {
        Clock {
            started: Instant::now(),
            test_file: Some(path.into()),
        }
    }

    /// Whether this clock is a movable test clock.
    pub fn is_movable(&self) -> bool {
        #[cfg(debug_assertions)]
        {
            self.test_file.is_some()
        }
        #[cfg(not(debug_assertions))]
        {
            false
        }
    }

    /// Seconds since the Unix epoch (0 for a clock before 1970).
    pub fn now(&self) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (wall, _) = self.offsets();
        real.saturating_add_signed(wall)
    }

    /// Time since this clock was made: it never goes back, and a change of
    /// the wall clock does not move it.
    pub fn monotonic(&self) -> Duration {
        let real = self.started.elapsed();
        let (_, monotonic) = self.offsets();
        match u64::try_from(monotonic) {
            Ok(ahead) => real.saturating_add(Duration::from_secs(ahead)),
            Err(_) => real.saturating_sub(Duration::from_secs(monotonic.unsigned_abs())),
        }
    }

    /// The test offsets in seconds (wall, monotonic); zero for a real clock
    /// and for a file that is missing or unreadable.
    fn offsets(&self) -> (i64, i64) {
        #[cfg(debug_assertions)]
        {
            if let Some(path) = &self.test_file {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let mut numbers = text.split_whitespace().map(str::parse::<i64>);
                let wall = numbers.next().and_then(Result::ok).unwrap_or(0);
                let monotonic = numbers.next().and_then(Result::ok).unwrap_or(0);
                return (wall, monotonic);
            }
        }
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_movable_clock_moves_by_the_offsets_in_its_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("clock");
        let clock = Clock::movable(&file);
        let real = Clock::system();
        assert!(clock.now().abs_diff(real.now()) <= 1, "no file: real time");
        std::fs::write(&file, "86400 3600").expect("write clock file");
        assert!(clock.now().abs_diff(real.now() + 86_400) <= 1);
        assert!(clock.monotonic() >= Duration::from_secs(3600));
        std::fs::write(&file, "-86400 0").expect("write clock file");
        assert!(clock.now().abs_diff(real.now() - 86_400) <= 1);
        assert!(clock.monotonic() < Duration::from_secs(3600));
    }
}
