//! TEMPORARY stand-in for the foundation's sealed-secrets table (D1), so the
//! rollback binding builds before the foundation lands; removed at the merge.

use zeroize::Zeroizing;

use super::db::DbError;
use super::{KeyStore, StoreError};
use crate::envelope::KeyId;

/// A secret the daemon keeps besides keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretName {
    /// The rollback counter's authorization value.
    RollbackAuth,
}

impl KeyStore {
    /// A sealed secret, opened.
    pub fn secret(&self, _name: SecretName) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let writer = self.writer();
        let Some(text) = writer
            .db
            .meta("shim_rollback_auth")
            .map_err(|e| self.db_error(e))?
        else {
            return Ok(None);
        };
        let sealed = super::rollback::unhex(&text)
            .ok_or("bad hex")
            .map_err(|e| self.db_error(DbError::Corrupt(format!("shim secret: {e}"))))?;
        let opened = writer
            .secrets
            .open_kek(KeyId([0xff; 16]), 0, &sealed)
            .map_err(|e| self.db_error(DbError::Corrupt(e.to_string())))?;
        Ok(Some(Zeroizing::new(opened.to_vec())))
    }

    /// Stores a secret, sealed.
    pub fn put_secret(&self, _name: SecretName, value: &[u8]) -> Result<(), StoreError> {
        let mut writer = self.writer();
        let value: [u8; 32] = value
            .try_into()
            .map_err(|_| StoreError::Random("shim: 32 bytes".to_string()))?;
        let sealed = writer
            .secrets
            .seal_kek(KeyId([0xff; 16]), 0, &value)
            .map_err(StoreError::Random)?;
        writer
            .db
            .set_meta("shim_rollback_auth", &super::rollback::hex(&sealed))
            .map_err(|e| self.db_error(e))
    }
}
