//! The transfer operations: `TransportKey` (this host's public transport
//! key, open to every peer), `ExportKey` (a key's material to a pinned
//! peer, encrypted to its transport key) and `ImportKey` (a file from a
//! pinned peer). What may travel is decided twice: the peer's grant
//! (`export`, `import`), and the `[[transfer]]` table of the other host,
//! whose globs must cover the key; admins too are bound by the latter.

use std::sync::Arc;

use agent_proto::{ErrorCode, ExportedFile, KeyState, Operation, Response, TransportKeyInfo};

use super::{Refusal, Service};
use crate::audit::{self, Subject, Transfer};
use crate::keystore::{KeyMaterial, StoreError};
use crate::peer::Peer;
use crate::transfer::{self, ExportFile, FileError, TransportKey};

impl Service {
    fn transport(&self) -> Result<&Arc<TransportKey>, Refusal> {
        self.transport.get().ok_or_else(|| {
            Refusal::new(
                ErrorCode::Internal,
                "this daemon has no transport key loaded; its log says why",
            )
        })
    }

    /// `TransportKey`: the recipient and its fingerprint.
    pub(super) fn transport_key_info(&self) -> Result<Response, Refusal> {
        let transport = self.transport()?;
        Ok(Response::TransportKey(TransportKeyInfo {
            recipient: transport.recipient().to_string(),
            fingerprint: transport.fingerprint().to_string(),
        }))
    }

    /// `ExportKey`: `key`'s versions (revoked ones as tombstones) in an age
    /// file to `destination`'s transport key.
    pub(super) async fn export(
        &self,
        peer: &Peer,
        key: &str,
        destination: &str,
    ) -> Result<Response, Refusal> {
        self.permit(peer, Operation::Export, key)?;
        let peers = self.transfer.load_full();
        let Some(target) = peers.by_name(destination) else {
            let shown: String = destination.chars().take(64).collect();
            let pinned = match peers.names() {
                names if names.is_empty() => "none is".to_string(),
                names => format!("pinned are: {}", names.join(", ")),
            };
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!(
                    "no transfer destination {shown:?} is pinned in this host's config ({pinned}); root pins destinations in [[transfer]] tables"
                ),
            ));
        };
        if !target.covers(key) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!(
                    "transfer destination \"{}\" is not pinned for key {key:?}: its keys globs in the config do not cover it",
                    target.name()
                ),
            ));
        }
        let transport = Arc::clone(self.transport()?);
        let store = Arc::clone(self.keystore()?);
        let target = target.clone();
        let fingerprint = target.fingerprint().to_string();
        let name = key.to_string();
        let (summary, file) = tokio::task::spawn_blocking(move || {
            let keys = store.keys();
            let key = keys
                .by_name(&name)
                .ok_or_else(|| Refusal::from(StoreError::KeyNotFound(name.clone())))?;
            if key.state() == KeyState::Revoked {
                return Err(StoreError::KeyRevoked(name.clone()).into());
            }
            if key.state() == KeyState::PendingDeletion {
                return Err(Service::pending_deletion(key));
            }
            let material = store.material(key)?;
            let file = transfer::seal(&transport, &target, &material)
                .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
            Ok::<_, Refusal>((Summary::of(&material), file))
        })
        .await
        .map_err(|e| {
            Refusal::new(
                ErrorCode::Internal,
                format!("the export did not finish: {e}"),
            )
        })??;
        audit::exported(
            peer,
            &Transfer {
                key,
                latest_version: summary.latest_version,
                live_versions: summary.live_versions,
                peer_name: destination,
                peer_fingerprint: &fingerprint,
            },
        );
        Ok(Response::Exported(ExportedFile {
            key: key.to_string(),
            destination: destination.to_string(),
            file,
        }))
    }

    /// `ImportKey`: a file a pinned peer exported to this host.
    pub(super) async fn import(
        &self,
        peer: &Peer,
        file: Vec<u8>,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        let policy = self.policy.load_full();
        if !policy.allows_on_some_key(peer, Operation::Import) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!("uid {} holds no grant to import keys", peer.uid),
            ));
        }
        let transport = Arc::clone(self.transport()?);
        let peers = self.transfer.load_full();
        let opened = tokio::task::spawn_blocking(move || {
            transfer::open(&transport, &peers, &file).map_err(file_refusal)
        })
        .await
        .map_err(|e| {
            Refusal::new(
                ErrorCode::Internal,
                format!("the import did not finish: {e}"),
            )
        })??;
        let ExportFile { source, material } = opened;
        subject.set_key(&material.name);
        if !policy.allows(peer, Operation::Import, &material.name) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!(
                    "uid {} may not import with key {:?}",
                    peer.uid, material.name
                ),
            ));
        }
        if !source.covers(&material.name) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!(
                    "transfer peer \"{}\" is not pinned for key {:?}: the keys globs of its [[transfer]] table in this host's config do not cover it",
                    source.name(),
                    material.name
                ),
            ));
        }
        let summary = Summary::of(&material);
        let store = Arc::clone(self.keystore()?);
        let imported = tokio::task::spawn_blocking(move || store.import_key(&material))
            .await
            .map_err(|e| {
                Refusal::new(
                    ErrorCode::Internal,
                    format!("the import did not finish: {e}"),
                )
            })??;
        subject.set_version(imported.key.latest_version());
        audit::imported(
            peer,
            &Transfer {
                key: imported.key.name(),
                latest_version: summary.latest_version,
                live_versions: summary.live_versions,
                peer_name: source.name(),
                peer_fingerprint: source.fingerprint(),
            },
            imported.added as usize,
        );
        Ok(Response::Key(imported.key.info()))
    }
}

/// What the audit says of a record: no material.
struct Summary {
    latest_version: u32,
    live_versions: usize,
}

impl Summary {
    fn of(material: &KeyMaterial) -> Summary {
        Summary {
            latest_version: material.versions.len() as u32,
            live_versions: material.versions.iter().filter(|v| v.kek.is_some()).count(),
        }
    }
}

/// The refusal of a file that does not open.
fn file_refusal(error: FileError) -> Refusal {
    let code = match &error {
        FileError::UnknownSource { .. } => ErrorCode::PermissionDenied,
        FileError::Encrypt(_) => ErrorCode::Internal,
        FileError::NotAgeFile(_)
        | FileError::NotForThisHost { .. }
        | FileError::Tampered(_)
        | FileError::UnsupportedFormat(_)
        | FileError::Record(_) => ErrorCode::InvalidArgument,
    };
    Refusal::new(code, error.to_string())
}
