//! The daemon's movable test clock (`HOSTKMS_TEST_CLOCK`, honoured by
//! debug builds only): a file of two signed offsets in seconds, wall and
//! monotonic, that the daemon reads again at every query. A test moves the
//! daemon's clocks by rewriting it; restarting the daemon with the same
//! file keeps the offsets.

use std::fs;
use std::path::{Path, PathBuf};

/// The environment variable the daemon reads the clock file's path from.
pub const TEST_CLOCK_ENV: &str = "HOSTKMS_TEST_CLOCK";

/// A clock file in `dir`, starting at no offset.
pub struct TestClock {
    path: PathBuf,
}

impl TestClock {
    /// A clock file `clock` in `dir` (the daemon's files' root), at zero
    /// offsets.
    pub fn new(dir: &Path) -> TestClock {
        let clock = TestClock {
            path: dir.join("clock"),
        };
        clock.set(0, 0);
        clock
    }

    /// Moves the daemon's wall clock `wall` seconds and its monotonic
    /// clock `monotonic` seconds away from the real ones.
    pub fn set(&self, wall: i64, monotonic: i64) {
        // Written whole and renamed, so the daemon never reads half a file.
        let next = self.path.with_extension("next");
        fs::write(&next, format!("{wall} {monotonic}\n")).expect("write the clock file");
        fs::rename(&next, &self.path).expect("move the clock file in place");
    }

    /// The environment entry that gives the daemon this clock.
    pub fn env(&self) -> (&'static str, &str) {
        (
            TEST_CLOCK_ENV,
            self.path.to_str().expect("a UTF-8 temporary path"),
        )
    }
}
