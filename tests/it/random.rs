//! `GenerateRandom` against the real daemon and a real swtpm: OS randomness
//! mixed with TPM randomness from a reserve of its own, refilled from the
//! TPM as callers use it, and the grant of `random` alone (no keys) in the
//! real config.

use crate::harness::{DaemonConfig, Grant, Harness};
use agent_proto::{ClientError, ErrorCode, MAX_RANDOM_BYTES, Request, Response};

fn random(client: &mut agent_proto::Client, bytes: u16) -> Result<Vec<u8>, ClientError> {
    match client.call(Request::GenerateRandom { bytes })? {
        Response::Random(out) => Ok(out.expose().to_vec()),
        Response::Error(reply) => Err(ClientError::Daemon {
            code: reply.code,
            message: reply.message,
        }),
        other => panic!("expected Random, got {other:?}"),
    }
}

#[test]
fn random_bytes_come_in_every_length_and_outlast_the_tpm_reserve() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(
        // A grant of random alone names no keys: the daemon takes it.
        DaemonConfig::new().grant(Grant::to_uid(65534).ops(&["random"])),
    );
    let mut client = daemon.client();
    for bytes in [1, 31, 32, 33, 1000, MAX_RANDOM_BYTES] {
        let out = random(&mut client, bytes).expect("random bytes");
        assert_eq!(out.len(), usize::from(bytes));
    }
    // More than the reserve holds (8 KiB): it is refilled from the TPM, and
    // no two answers repeat.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let out = random(&mut client, MAX_RANDOM_BYTES).expect("random bytes");
        assert!(out.iter().any(|&b| b != out[0]), "not one repeated byte");
        assert!(seen.insert(out), "an answer repeated");
    }
    for bytes in [0, MAX_RANDOM_BYTES + 1] {
        match random(&mut client, bytes) {
            Err(ClientError::Daemon { code, message }) => {
                assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
                assert!(message.contains("ask for 1 to 1024"), "{message}");
            }
            other => panic!("{bytes} bytes: expected a refusal, got {other:?}"),
        }
    }
    // The daemon still makes keys: their reserve is another one.
    client.create_key("after-random").expect("create");
}
