//! hostkms: a TPM-backed key-management agent for one Linux host.
//!
//! The daemon `hostkmsd` seals a root key to the TPM and serves envelope
//! encryption to local services over a Unix socket. This library is the
//! daemon, so that tests and benchmarks drive the same code. Data flows one
//! way: [`server`] (listener, peer credentials, framing) → [`service`]
//! (the operations) → [`keystore`] and [`envelope`] → [`audit`] (one
//! journal event per request). [`rootkey`] and [`tpm`] hold the sealed root
//! key; [`systemd`] speaks to the service manager; [`monitor`] counts
//! requests and raises alerts.

pub mod accept_rollback;
pub mod admission;
pub mod audit;
pub mod cli_args;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod envelope;
pub mod keystore;
pub mod lifecycle;
pub mod locked;
pub mod monitor;
pub mod peer;
pub mod pin_input;
pub mod policy;
pub mod recovery;
pub mod restore;
pub mod rootkey;
pub mod rotate_bundle;
pub mod server;
pub mod service;
pub mod state_dir;
pub mod systemd;
pub mod terminal_echo;
pub mod tpm;
pub mod transfer;
pub mod version_key;
