//! `hostkmsd restore`: every key of a recovery directory (or of a
//! `hostkms backup` tar) imported into this host's store, sealed under
//! this host's TPM.

pub mod backup;
