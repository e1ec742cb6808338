//! A key store on its own "host" (a fresh state dir and root key) and a
//! wrap under a key's latest version: what the tests of moving keys
//! between stores (import, restore) share.

use std::sync::Arc;

use agent_proto::EncryptionContext;

use super::{KeyStore, TestEntropy};
use crate::envelope;
use crate::rootkey::RootKey;
use crate::state_dir::StateDir;

/// A store in a fresh state dir under root key `[root; 32]`.
pub(super) struct Host {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    root: [u8; 32],
}

impl Host {
    pub(super) fn new(root: u8) -> Host {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        Host {
            _tmp: tmp,
            dir,
            root: [root; 32],
        }
    }

    /// Opens (or reopens) the store.
    pub(super) fn open(&self) -> KeyStore {
        let dir = StateDir::open(&self.dir).unwrap();
        let root = RootKey::from_bytes_for_tests(self.root);
        KeyStore::open(
            &dir,
            &root,
            Arc::new(TestEntropy::new()),
            crate::clock::Clock::system(),
        )
        .unwrap()
    }
}

/// `plaintext` wrapped under the latest version of key `name`.
pub(super) fn wrap(
    store: &KeyStore,
    name: &str,
    plaintext: &[u8],
    context: &EncryptionContext,
) -> Vec<u8> {
    let keys = store.keys();
    let key = keys.by_name(name).unwrap();
    let version = key.latest().unwrap();
    envelope::wrap(
        version.cipher().unwrap(),
        key.id(),
        version.number(),
        plaintext,
        context,
    )
    .unwrap()
}
