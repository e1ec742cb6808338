//! Files of any size in the age format (issue 13): `hostkms encrypt-file`
//! and `decrypt-file`, `age-recipient` and `age-identity`, and the
//! `age-plugin-hostkms` binary, all on one stanza format.
//!
//! The age file key (16 bytes, made by the `age` crate) is wrapped by the
//! daemon under a hostkms key with an encryption context, and stored in the
//! header as a `hostkms` stanza that also records that context
//! ([`stanza`]); the payload is age's STREAM, from the `age` crate
//! ([`stream`]). The daemon sees the file key only, never the payload: one
//! `Wrap` per encrypted file, one `Unwrap` per decrypted one, each audited
//! like any other.

pub mod identity;
pub mod plugin;
pub mod recipient;
pub mod stanza;
pub mod stream;
