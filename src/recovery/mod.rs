//! The recovery directory: every key, age-encrypted to a bundle identity that
//! is escrowed to offline custodians, so a lost TPM loses no key.
//!
//! One file, one job: `record` (a key's material as authenticated JSON, the
//! plaintext of `keys/<id>.age` and of an export file), `agefile` (age
//! encryption and recipient fingerprints), `escrow` (the bundle identity, its
//! escrow to the custodians and its recovery from them), `manifest` (the
//! directory's authenticated table of contents).

pub mod agefile;
pub mod escrow;
pub mod manifest;
pub mod record;
