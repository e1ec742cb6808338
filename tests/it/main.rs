//! The integration tests of hostkms, as one test binary so the harness
//! compiles once: one module per area, each test against a private swtpm
//! and the real `hostkmsd` (and `hostkms`) binaries, or the library's
//! config parser in process. See `harness` for what a test can start.
//!
//! The tests share this one process (as many test threads as CPUs, as
//! before): nothing here changes process-wide state (environment, current
//! directory, umask, rlimits, signal dispositions, uid: other uids, cgroups
//! and rlimits are set on child processes only); every swtpm and daemon has
//! its own ports and directories, and what a test counts (fds, memory,
//! connections, journal entries) is its own daemon's; what must not run
//! concurrently (the shared cgroup paths of `peer_identity`, starting
//! journald) takes a lock in the harness. Tests that run a half of
//! themselves as a child process re-run this binary with their full test
//! path (`module::test`), see `harness::process::helper_test`.

mod harness;

mod age_files;
mod audit_flood;
mod batch;
mod bench_cleanup;
mod break_glass_modes;
mod canonical_context;
mod cli;
mod cli_errors;
mod cli_key_types;
mod cli_out;
mod client_reconnect;
mod config;
mod config_props;
mod connection_rules;
mod connections;
mod credential_cli;
mod credentials;
mod daemon;
mod journal;
mod key_probing;
mod key_types;
mod lifecycle;
mod metadata;
mod monitoring;
mod operations;
mod packaged_config;
mod peer_identity;
mod permissions;
mod protocol;
mod random;
mod recovery;
mod reserved_context;
mod restore_drill;
mod rewrap_to;
mod rollback;
mod root_key;
mod rotate_root;
mod sealing_modes;
mod startup_terminal;
mod state_dir;
mod systemd;
mod tpm_faults;
mod transfer;
