//! Key types besides AES-256-GCM against the real daemon and a real swtpm
//! (issue 11, item 4): Ed25519 and ECDSA P-256 signatures verify with
//! Debian's `openssl` using the public key hostkms hands out; ML-DSA-65
//! signatures verify with the ml-dsa crate outside the daemon; HMAC tags
//! are what Python's `hmac` computes with the version's secret recovered
//! from the recovery directory; rotation, revocation and the minimum
//! version decide which versions verify; an operation outside a key's type
//! is `WrongKeyType`; a tampered input is `valid: false`, never an error;
//! a peer (uid 65534) granted only `verify` verifies and cannot sign; the
//! `random` grant rules; a restart keeps types, public keys and secrets.
//! Everything goes through the agent-proto client, the CLI where the
//! issue names a command.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use age::x25519::Identity;
use agent_proto::{Client, ClientError, ErrorCode, KeyType, Verification};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hostkms::recovery::agefile;
use hostkms::recovery::escrow::{self, EscrowFile};
use hostkms::recovery::manifest::UnverifiedManifest;
use hostkms::recovery::record::{self, Record};
use sha2::Digest as _;

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Grant, Harness, Swtpm, cli, cli_as, cli_stdin, helper_test,
    ok, private_tempdir, stderr, text,
};

const NOBODY: u32 = 65534;
const MESSAGE: &[u8] = b"hostkms release 1.0.0\n";
const SIGNING_TYPES: [KeyType; 3] = [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::MlDsa65];
const HMAC_TYPES: [KeyType; 2] = [KeyType::HmacSha256, KeyType::HmacSha512];

/// The daemon's refusal of `result`, which must carry `code`; returns its
/// message.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>, code: ErrorCode) -> String {
    match result {
        Err(ClientError::Daemon { code: got, message }) if got == code => message,
        other => panic!("expected the daemon to answer {code}, got {other:?}"),
    }
}

/// A valid verification by `version`.
#[track_caller]
fn assert_valid(verification: Verification, version: u32) {
    assert!(verification.valid, "{verification:?}");
    assert_eq!(verification.version, Some(version), "{verification:?}");
}

/// An invalid verification: `valid: false`, nothing else said.
#[track_caller]
fn assert_invalid(result: Result<Verification, ClientError>) {
    let verification = result.expect("an invalid input is an answer, not an error");
    assert!(!verification.valid, "{verification:?}");
}

fn flip_last_bit(bytes: &[u8]) -> Vec<u8> {
    let mut flipped = bytes.to_vec();
    if let Some(last) = flipped.last_mut() {
        *last ^= 1;
    }
    flipped
}

/// SubjectPublicKeyInfo DER as a PEM document, as `hostkms public-key`
/// prints it (RFC 7468: 64 base64 characters a line).
fn pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut text = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        text.push('\n');
    }
    text.push_str("-----END PUBLIC KEY-----\n");
    text
}

/// Runs `openssl` with `args`; returns its output.
fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (Debian's openssl 3.0)")
}

/// Whether `openssl` accepts `signature` of `message` by the key in `pem`,
/// the way a verifier without hostkms checks it: pure Ed25519 with
/// `pkeyutl -rawin`, ECDSA P-256 with SHA-256 with `dgst -sha256`.
fn openssl_verifies(
    dir: &Path,
    key_type: KeyType,
    pem: &str,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let pem_path = dir.join("key.pem");
    let msg_path = dir.join("message");
    let sig_path = dir.join("signature");
    fs::write(&pem_path, pem).unwrap();
    fs::write(&msg_path, message).unwrap();
    fs::write(&sig_path, signature).unwrap();
    let (pem_path, msg_path, sig_path) = (
        pem_path.to_str().unwrap(),
        msg_path.to_str().unwrap(),
        sig_path.to_str().unwrap(),
    );
    let output = match key_type {
        KeyType::Ed25519 => openssl(&[
            "pkeyutl", "-verify", "-pubin", "-inkey", pem_path, "-rawin", "-in", msg_path,
            "-sigfile", sig_path,
        ]),
        KeyType::EcdsaP256 => openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            pem_path,
            "-signature",
            sig_path,
            msg_path,
        ]),
        other => panic!("openssl 3.0 does not verify {other}"),
    };
    let said = text(&output.stdout);
    match output.status.code() {
        Some(0) => {
            assert!(said.contains("Verified"), "openssl said: {said}");
            true
        }
        Some(1) => {
            assert!(
                said.contains("Fail") || said.contains("failure"),
                "openssl said: {said} {}",
                stderr(&output)
            );
            false
        }
        _ => panic!("openssl failed: {said} {}", stderr(&output)),
    }
}

#[test]
fn ed25519_and_ecdsa_p256_signatures_verify_with_openssl() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    let dir = private_tempdir();

    for key_type in [KeyType::Ed25519, KeyType::EcdsaP256] {
        let name = format!("rel-{key_type}");
        let info = client.create_key_of_type(&name, key_type).unwrap();
        assert_eq!(info.key_type, key_type);
        let signed = client.sign(&name, MESSAGE).unwrap();
        assert_eq!((signed.key.as_str(), signed.version), (name.as_str(), 1));
        let public = client.public_key(&name, None).unwrap();
        assert_eq!(
            (public.version, public.key_type, public.revoked),
            (1, key_type, false)
        );
        let pem = pem(&public.spki_der);

        assert!(
            openssl_verifies(dir.path(), key_type, &pem, MESSAGE, &signed.signature),
            "openssl rejects a {key_type} signature by hostkms"
        );
        assert!(
            !openssl_verifies(
                dir.path(),
                key_type,
                &pem,
                b"hostkms release 1.0.1\n",
                &signed.signature
            ),
            "openssl accepts a {key_type} signature of another message"
        );
        assert!(
            !openssl_verifies(
                dir.path(),
                key_type,
                &pem,
                MESSAGE,
                &flip_last_bit(&signed.signature)
            ),
            "openssl accepts a tampered {key_type} signature"
        );
        assert_valid(
            client
                .verify(&name, MESSAGE, &signed.signature, None)
                .unwrap(),
            1,
        );
    }

    // An ECDSA signature of the SHA-256 digest is a signature of the
    // message to openssl, and to hostkms either way.
    let digest = sha2::Sha256::digest(MESSAGE).to_vec();
    let by_digest = client.sign_digest("rel-ecdsa-p256", &digest).unwrap();
    let public = client.public_key("rel-ecdsa-p256", Some(1)).unwrap();
    assert!(openssl_verifies(
        dir.path(),
        KeyType::EcdsaP256,
        &pem(&public.spki_der),
        MESSAGE,
        &by_digest.signature
    ));
    assert_valid(
        client
            .verify("rel-ecdsa-p256", MESSAGE, &by_digest.signature, None)
            .unwrap(),
        1,
    );
    assert_valid(
        client
            .verify_digest("rel-ecdsa-p256", &digest, &by_digest.signature, None)
            .unwrap(),
        1,
    );
}

/// The "done when", through the CLI: create-key --type, sign,
/// public-key, and openssl verifying the signature with that PEM.
#[test]
fn the_cli_signs_and_hands_out_the_pem_that_openssl_verifies_with() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let socket = &daemon.socket;
    let mut client = daemon.client();
    let dir = private_tempdir();
    let msg_path = dir.path().join("release.txt");
    fs::write(&msg_path, MESSAGE).unwrap();
    let msg = msg_path.to_str().unwrap();

    for key_type in [KeyType::Ed25519, KeyType::EcdsaP256] {
        let name = format!("rel-{key_type}");
        ok(cli(
            socket,
            &["create-key", &name, "--type", key_type.as_str()],
        ));
        assert_eq!(client.describe_key(&name).unwrap().key_type, key_type);

        let pem_text = String::from_utf8(ok(cli(socket, &["public-key", &name]))).unwrap();
        let public = client.public_key(&name, None).unwrap();
        assert_eq!(
            pem_text,
            pem(&public.spki_der),
            "the CLI's PEM is the daemon's SPKI"
        );

        // Raw bytes with --binary, base64 text by default, stdin or --in.
        let binary = ok(cli(socket, &["sign", &name, "--in", msg, "--binary"]));
        assert!(openssl_verifies(
            dir.path(),
            key_type,
            &pem_text,
            MESSAGE,
            &binary
        ));
        let encoded = ok(cli_stdin(socket, &["sign", &name], MESSAGE));
        let decoded = STANDARD
            .decode(text(&encoded).trim())
            .expect("the CLI prints a signature as base64");
        assert!(openssl_verifies(
            dir.path(),
            key_type,
            &pem_text,
            MESSAGE,
            &decoded
        ));
        assert!(!openssl_verifies(
            dir.path(),
            key_type,
            &pem_text,
            b"other",
            &decoded
        ));
    }

    // ECDSA --digest: the input is the 32-byte SHA-256 of the message.
    let digest = sha2::Sha256::digest(MESSAGE).to_vec();
    let by_digest = ok(cli_stdin(
        socket,
        &["sign", "rel-ecdsa-p256", "--digest", "--binary"],
        &digest,
    ));
    let pem_text = String::from_utf8(ok(cli(socket, &["public-key", "rel-ecdsa-p256"]))).unwrap();
    assert!(openssl_verifies(
        dir.path(),
        KeyType::EcdsaP256,
        &pem_text,
        MESSAGE,
        &by_digest
    ));
}

#[test]
fn ml_dsa_65_signatures_verify_outside_the_daemon_with_the_ml_dsa_crate() {
    use p256::pkcs8::DecodePublicKey;
    use signature::Verifier;

    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key_of_type("pq", KeyType::MlDsa65).unwrap();
    let signed = client.sign("pq", MESSAGE).unwrap();
    assert_eq!(signed.version, 1);
    assert_eq!(
        signed.signature.len(),
        3309,
        "FIPS 204 ML-DSA-65 signature size"
    );
    assert_valid(
        client
            .verify("pq", MESSAGE, &signed.signature, None)
            .unwrap(),
        1,
    );
    assert_invalid(client.verify("pq", b"other", &signed.signature, None));

    let public = client.public_key("pq", None).unwrap();
    assert_eq!(public.key_type, KeyType::MlDsa65);
    let key = ml_dsa::VerifyingKey::<ml_dsa::MlDsa65>::from_public_key_der(&public.spki_der)
        .expect("the daemon's ML-DSA-65 public key is a valid SPKI");
    let encoded: &[u8] = &signed.signature;
    let signature = ml_dsa::Signature::<ml_dsa::MlDsa65>::decode(
        encoded.try_into().expect("a 3309-byte signature"),
    )
    .expect("the daemon's signature decodes");
    assert!(key.verify(MESSAGE, &signature).is_ok());
    assert!(key.verify(b"hostkms release 1.0.1\n", &signature).is_err());
}

/// Opens the recovery directory `dir` (threshold 1) with `identity` as
/// restore would, and returns every key record by key name.
fn open_recovery(dir: &Path, identity: &Identity) -> BTreeMap<String, Record> {
    let manifest_text = fs::read(dir.join("MANIFEST")).expect("MANIFEST");
    let claimed = UnverifiedManifest::parse(&manifest_text).expect("a MANIFEST");
    let (threshold, expected, recipients) = {
        let m = claimed.claimed();
        (m.threshold, m.bundle_recipient.clone(), m.recipients())
    };
    let mut escrow_files: Vec<EscrowFile> = fs::read_dir(dir.join("custodians"))
        .expect("custodians/")
        .map(|entry| {
            let entry = entry.unwrap();
            EscrowFile {
                name: entry.file_name().into_string().unwrap(),
                contents: fs::read(entry.path()).unwrap(),
            }
        })
        .collect();
    escrow_files.sort_by(|a, b| a.name.cmp(&b.name));
    let bundle = escrow::recover_bundle(
        std::slice::from_ref(identity),
        &escrow_files,
        threshold,
        &expected,
        &recipients,
    )
    .expect("the custodian recovers the bundle identity");
    let manifest = claimed
        .verify(&bundle.manifest_mac_key())
        .expect("the MANIFEST verifies");
    manifest
        .keys
        .iter()
        .map(|key| {
            let file = fs::read(dir.join("keys").join(format!("{}.age", key.id))).unwrap();
            let plain =
                agefile::decrypt(std::slice::from_ref(bundle.age_identity()), &file, 1 << 20)
                    .expect("the record decrypts");
            let record =
                record::decode(&plain, &bundle.record_mac_key()).expect("the record verifies");
            (key.name.clone(), record)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `hmac.new(key, data, hashlib.<digest>).hexdigest()` in python3.
fn python_hmac(key: &[u8], data: &[u8], digest: &str) -> String {
    let output = Command::new("python3")
        .args([
            "-c",
            "import hashlib, hmac, sys; \
             print(hmac.new(bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), \
             getattr(hashlib, sys.argv[3])).hexdigest())",
            &hex(key),
            &hex(data),
            digest,
        ])
        .output()
        .expect("python3 must be installed");
    assert!(output.status.success(), "python3: {}", stderr(&output));
    text(&output.stdout).trim().to_string()
}

#[test]
fn hmac_tags_are_what_python_computes_with_the_recovered_key() {
    let tmp = private_tempdir();
    let recovery_dir = tmp.path().join("recovery");
    let custodian = Identity::generate();
    let config =
        DaemonConfig::new().recovery(&[custodian.to_public().to_string()], 1, &recovery_dir);
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(config);
    let mut client = daemon.client();

    let mut tags = Vec::new();
    for (key_type, digest) in [
        (KeyType::HmacSha256, "sha256"),
        (KeyType::HmacSha512, "sha512"),
    ] {
        let name = format!("tokens-{key_type}");
        client.create_key_of_type(&name, key_type).unwrap();
        let tag = client.mac(&name, MESSAGE).unwrap();
        assert_eq!((tag.key.as_str(), tag.version), (name.as_str(), 1));
        assert_eq!(tag.tag.len(), if digest == "sha256" { 32 } else { 64 });
        tags.push((name, key_type, digest, tag.tag));
    }

    let records = open_recovery(&recovery_dir, &custodian);
    for (name, key_type, digest, tag) in tags {
        let record = &records[&name];
        assert_eq!(record.material.key_type, key_type);
        let secret = record.material.versions[0]
            .kek
            .as_ref()
            .expect("version 1 is live");
        assert_eq!(
            python_hmac(secret.as_slice(), MESSAGE, digest),
            hex(&tag),
            "{key_type}: the daemon's tag is a plain HMAC of the data"
        );
        assert_valid(client.verify_mac(&name, MESSAGE, &tag, None).unwrap(), 1);
    }
}

/// Rotation and revocation with every signing type: old signatures keep
/// verifying until their version is revoked; the revoked version's public
/// key stays retrievable, marked revoked.
#[test]
fn rotate_and_revoke_decide_which_signatures_verify() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();

    for key_type in SIGNING_TYPES {
        let name = format!("rel-{key_type}");
        client.create_key_of_type(&name, key_type).unwrap();
        let first = client.sign(&name, MESSAGE).unwrap();
        let public_1 = client.public_key(&name, Some(1)).unwrap();
        assert_eq!(first.version, 1);

        let info = client.rotate(&name).unwrap();
        assert_eq!((info.latest_version, info.key_type), (2, key_type));
        let second = client.sign(&name, MESSAGE).unwrap();
        assert_eq!(
            second.version, 2,
            "{key_type}: new signatures carry version 2"
        );
        let public_2 = client.public_key(&name, None).unwrap();
        assert_eq!(public_2.version, 2);
        assert_ne!(
            public_1.spki_der, public_2.spki_der,
            "{key_type}: a new key pair"
        );

        // Both verify, each by its own version; not by the other's.
        assert_valid(
            client
                .verify(&name, MESSAGE, &first.signature, None)
                .unwrap(),
            1,
        );
        assert_valid(
            client
                .verify(&name, MESSAGE, &second.signature, None)
                .unwrap(),
            2,
        );
        assert_valid(
            client
                .verify(&name, MESSAGE, &first.signature, Some(1))
                .unwrap(),
            1,
        );
        assert_invalid(client.verify(&name, MESSAGE, &first.signature, Some(2)));
        refused(
            client.verify(&name, MESSAGE, &first.signature, Some(3)),
            ErrorCode::VersionNotFound,
        );

        let info = client.revoke(&name, Some(1)).unwrap();
        assert_eq!(info.key_type, key_type);
        assert_invalid(client.verify(&name, MESSAGE, &first.signature, None));
        refused(
            client.verify(&name, MESSAGE, &first.signature, Some(1)),
            ErrorCode::VersionRevoked,
        );
        assert_valid(
            client
                .verify(&name, MESSAGE, &second.signature, None)
                .unwrap(),
            2,
        );
        assert_eq!(client.sign(&name, MESSAGE).unwrap().version, 2);

        // The revoked version's public key stays for audit, marked revoked.
        let revoked = client.public_key(&name, Some(1)).unwrap();
        assert!(revoked.revoked, "{key_type}");
        assert_eq!(revoked.version, 1);
        assert_eq!(revoked.spki_der, public_1.spki_der, "{key_type}");
        assert!(!client.public_key(&name, None).unwrap().revoked);

        // Verify counts as use of the key: a disabled key verifies nothing.
        client.disable(&name).unwrap();
        refused(
            client.verify(&name, MESSAGE, &second.signature, None),
            ErrorCode::KeyDisabled,
        );
        refused(client.sign(&name, MESSAGE), ErrorCode::KeyDisabled);
        client.enable(&name).unwrap();

        // A revoked key signs and verifies nothing.
        client.revoke(&name, None).unwrap();
        refused(
            client.verify(&name, MESSAGE, &second.signature, None),
            ErrorCode::KeyRevoked,
        );
        refused(client.sign(&name, MESSAGE), ErrorCode::KeyRevoked);
    }
}

#[test]
fn hmac_versions_follow_rotation_revocation_and_the_minimum_version() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();

    for key_type in HMAC_TYPES {
        let name = format!("tokens-{key_type}");
        client.create_key_of_type(&name, key_type).unwrap();
        let first = client.mac(&name, MESSAGE).unwrap();
        client.rotate(&name).unwrap();
        let second = client.mac(&name, MESSAGE).unwrap();
        assert_eq!((first.version, second.version), (1, 2));
        assert_ne!(
            first.tag, second.tag,
            "{key_type}: a new secret per version"
        );

        assert_valid(
            client.verify_mac(&name, MESSAGE, &first.tag, None).unwrap(),
            1,
        );
        assert_valid(
            client
                .verify_mac(&name, MESSAGE, &second.tag, None)
                .unwrap(),
            2,
        );
        assert_invalid(client.verify_mac(&name, MESSAGE, &first.tag, Some(2)));

        // Below the minimum version: not tried, and refused when named.
        client.set_min_decryption_version(&name, 2).unwrap();
        assert_invalid(client.verify_mac(&name, MESSAGE, &first.tag, None));
        refused(
            client.verify_mac(&name, MESSAGE, &first.tag, Some(1)),
            ErrorCode::VersionRevoked,
        );
        assert_valid(
            client
                .verify_mac(&name, MESSAGE, &second.tag, None)
                .unwrap(),
            2,
        );

        client.rotate(&name).unwrap();
        client.revoke(&name, Some(2)).unwrap();
        assert_invalid(client.verify_mac(&name, MESSAGE, &second.tag, None));
        refused(
            client.verify_mac(&name, MESSAGE, &second.tag, Some(2)),
            ErrorCode::VersionRevoked,
        );
        assert_eq!(client.mac(&name, MESSAGE).unwrap().version, 3);
    }
}

/// Every operation outside a key's type is `WrongKeyType`, whose message
/// names the type and what it can do; through the client and the CLI.
#[test]
fn an_operation_outside_the_keys_type_is_wrong_key_type() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("aes").unwrap();
    client.create_key_of_type("ed", KeyType::Ed25519).unwrap();
    client.create_key_of_type("ec", KeyType::EcdsaP256).unwrap();
    client.create_key_of_type("pq", KeyType::MlDsa65).unwrap();
    client
        .create_key_of_type("hm", KeyType::HmacSha256)
        .unwrap();
    let ctx = agent_proto::EncryptionContext::new();

    let message = refused(client.wrap("ed", b"data", &ctx), ErrorCode::WrongKeyType);
    assert!(message.contains("ed25519"), "{message}");
    assert!(
        message.contains("sign"),
        "names what the key can do: {message}"
    );
    refused(
        client.generate_data_key("ec", 32, &ctx),
        ErrorCode::WrongKeyType,
    );
    refused(client.wrap("hm", b"data", &ctx), ErrorCode::WrongKeyType);

    let message = refused(client.sign("aes", MESSAGE), ErrorCode::WrongKeyType);
    assert!(message.contains("aes256-gcm"), "{message}");
    assert!(message.contains("wrap"), "{message}");
    refused(client.sign("hm", MESSAGE), ErrorCode::WrongKeyType);
    refused(
        client.verify("aes", MESSAGE, &[0; 64], None),
        ErrorCode::WrongKeyType,
    );
    refused(
        client.verify("hm", MESSAGE, &[0; 32], None),
        ErrorCode::WrongKeyType,
    );
    refused(client.public_key("hm", None), ErrorCode::WrongKeyType);
    refused(client.public_key("aes", None), ErrorCode::WrongKeyType);

    let message = refused(client.mac("ec", MESSAGE), ErrorCode::WrongKeyType);
    assert!(message.contains("ecdsa-p256"), "{message}");
    refused(client.mac("aes", MESSAGE), ErrorCode::WrongKeyType);
    refused(
        client.verify_mac("ed", MESSAGE, &[0; 32], None),
        ErrorCode::WrongKeyType,
    );

    // A digest only for ecdsa-p256, and only 32 bytes: the key can sign,
    // so this is a bad argument, not the wrong type (D4).
    let digest = sha2::Sha256::digest(MESSAGE).to_vec();
    refused(
        client.sign_digest("ed", &digest),
        ErrorCode::InvalidArgument,
    );
    refused(
        client.sign_digest("pq", &digest),
        ErrorCode::InvalidArgument,
    );
    refused(
        client.sign_digest("ec", &digest[..31]),
        ErrorCode::InvalidArgument,
    );
    refused(client.sign_digest("aes", &digest), ErrorCode::WrongKeyType);

    // The CLI: a refusal, exit 1, saying what went wrong.
    let socket = &daemon.socket;
    for (args, stdin) in [
        (&["wrap", "ed"][..], &b"data"[..]),
        (&["sign", "aes"][..], MESSAGE),
        (&["mac", "ec"][..], MESSAGE),
        (&["public-key", "hm"][..], &b""[..]),
    ] {
        let output = cli_stdin(socket, args, stdin);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("hostkms: wrong key type: "),
            "{args:?}: {err}"
        );
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

/// A tampered message, signature or tag is `valid: false`: an answer, the
/// same for every way it is wrong, never an error that says why.
#[test]
fn tampered_inputs_are_invalid_never_errors() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();

    for key_type in SIGNING_TYPES {
        let name = format!("rel-{key_type}");
        client.create_key_of_type(&name, key_type).unwrap();
        client
            .create_key_of_type(&format!("other-{key_type}"), key_type)
            .unwrap();
        let signed = client.sign(&name, MESSAGE).unwrap();
        let foreign = client.sign(&format!("other-{key_type}"), MESSAGE).unwrap();
        let sig = &signed.signature;
        let forged: [Vec<u8>; 6] = [
            flip_last_bit(sig),
            {
                let mut first = sig.clone();
                first[0] ^= 0x80;
                first
            },
            sig[..sig.len() - 1].to_vec(),
            Vec::new(),
            vec![0xa5; sig.len()],
            foreign.signature,
        ];
        for forged in &forged {
            assert_invalid(client.verify(&name, MESSAGE, forged, None));
            assert_invalid(client.verify(&name, MESSAGE, forged, Some(1)));
        }
        assert_invalid(client.verify(&name, &flip_last_bit(MESSAGE), sig, None));
        assert_invalid(client.verify(&name, b"", sig, None));
        // Oversized signatures are refused before any work (D4).
        refused(
            client.verify(&name, MESSAGE, &vec![0; 8 * 1024 + 1], None),
            ErrorCode::InvalidArgument,
        );
    }

    for key_type in HMAC_TYPES {
        let name = format!("tokens-{key_type}");
        client.create_key_of_type(&name, key_type).unwrap();
        let tag = client.mac(&name, MESSAGE).unwrap().tag;
        for forged in [
            flip_last_bit(&tag),
            tag[..16].to_vec(),
            Vec::new(),
            vec![0; tag.len()],
        ] {
            assert_invalid(client.verify_mac(&name, MESSAGE, &forged, None));
            assert_invalid(client.verify_mac(&name, MESSAGE, &forged, Some(1)));
        }
        assert_invalid(client.verify_mac(&name, &flip_last_bit(MESSAGE), &tag, None));
        refused(
            client.verify_mac(&name, MESSAGE, &[0; 65], None),
            ErrorCode::InvalidArgument,
        );
    }
}

const PEER_SOCKET_ENV: &str = "HOSTKMS_KEY_TYPES_SOCKET";
const PEER_CASE_ENV: &str = "HOSTKMS_KEY_TYPES_CASE";
const PEER_SIGNATURE_ENV: &str = "HOSTKMS_KEY_TYPES_SIGNATURE";
const PEER_TAG_ENV: &str = "HOSTKMS_KEY_TYPES_TAG";

/// A daemon whose socket everyone may open, with `grants`.
fn public_daemon(grants: Vec<Grant>) -> (Swtpm, DaemonFiles, Daemon) {
    let tpm = Swtpm::start();
    let config = grants
        .into_iter()
        .fold(DaemonConfig::new().socket_mode("0666"), DaemonConfig::grant);
    let files = DaemonFiles::with_public_socket(&tpm.tcti(), &config);
    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("start hostkmsd: {log}"));
    (tpm, files, daemon)
}

/// Runs the peer half, [`peer_process`], as uid 65534 against `socket`.
fn run_peer(case: &str, socket: &Path, env: &[(&str, String)]) {
    use std::os::unix::process::CommandExt;
    let output = helper_test(module_path!(), "peer_process")
        .arg("--nocapture")
        .env(PEER_SOCKET_ENV, socket)
        .env(PEER_CASE_ENV, case)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the peer half as uid 65534");
    assert!(
        output.status.success(),
        "the peer half ({case}) failed:\n{}\n{}",
        text(&output.stdout),
        stderr(&output)
    );
}

#[test]
fn a_peer_granted_only_verify_verifies_and_cannot_sign() {
    let (_tpm, _files, daemon) = public_daemon(vec![
        Grant::to_uid(NOBODY).keys(&["rel"]).ops(&["verify"]),
        Grant::to_uid(NOBODY)
            .keys(&["published"])
            .ops(&["public-key"]),
        Grant::to_uid(NOBODY).keys(&["tokens"]).ops(&["verify-mac"]),
    ]);
    let mut admin = daemon.client();
    admin.create_key_of_type("rel", KeyType::Ed25519).unwrap();
    admin
        .create_key_of_type("published", KeyType::EcdsaP256)
        .unwrap();
    admin
        .create_key_of_type("tokens", KeyType::HmacSha256)
        .unwrap();
    let signature = admin.sign("rel", MESSAGE).unwrap().signature;
    let tag = admin.mac("tokens", MESSAGE).unwrap().tag;

    run_peer(
        "verify-only",
        &daemon.socket,
        &[
            (PEER_SIGNATURE_ENV, STANDARD.encode(&signature)),
            (PEER_TAG_ENV, STANDARD.encode(&tag)),
        ],
    );

    // The CLI says so too, naming the operation and the key.
    let output = cli_as(NOBODY, &daemon.socket, &["sign", "rel"], MESSAGE);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "hostkms: permission denied: uid {NOBODY} may not sign with key \"rel\""
        )),
        "{err}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn random_bytes_for_admins_and_peers_granted_random() {
    let (_tpm, _files, daemon) = public_daemon(vec![
        // `keys` do not matter for random: any grant listing it.
        Grant::to_uid(NOBODY).keys(&["nothing-*"]).ops(&["random"]),
        Grant::to_uid(NOBODY + 1)
            .keys(&["*"])
            .ops(&["verify", "sign"]),
    ]);
    let mut admin = daemon.client();
    let a = admin.random(32).unwrap();
    let b = admin.random(32).unwrap();
    assert_eq!((a.len(), b.len()), (32, 32));
    assert_ne!(a.expose(), b.expose(), "two draws of 256 bits differ");
    assert_eq!(admin.random(1).unwrap().len(), 1);
    assert_eq!(admin.random(1024).unwrap().len(), 1024);
    refused(admin.random(0), ErrorCode::InvalidArgument);
    refused(admin.random(1025), ErrorCode::InvalidArgument);

    run_peer("random", &daemon.socket, &[]);

    // Another uid whose grants do not list random is refused.
    let output = cli_as(NOBODY + 1, &daemon.socket, &["random", "16"], b"");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.starts_with("hostkms: permission denied: "), "{err}");
    assert!(output.stdout.is_empty());
    // The CLI prints what the daemon drew.
    let hex_out = ok(cli_as(
        NOBODY,
        &daemon.socket,
        &["random", "16", "--hex"],
        b"",
    ));
    let hex_text = text(&hex_out);
    assert_eq!(hex_text.trim().len(), 32, "{hex_text}");
    assert!(
        hex_text.trim().bytes().all(|c| c.is_ascii_hexdigit()),
        "{hex_text}"
    );
}

/// The half of the peer tests that runs as uid 65534: what a peer with
/// the grants of [`a_peer_granted_only_verify_verifies_and_cannot_sign`]
/// or [`random_bytes_for_admins_and_peers_granted_random`] may do, through
/// the agent-proto client. Not a test of its own.
#[test]
#[ignore = "the peer half of the key-type permission tests, run by them"]
fn peer_process() {
    let Ok(socket) = std::env::var(PEER_SOCKET_ENV) else {
        panic!("run only by the key-type permission tests, with {PEER_SOCKET_ENV} set");
    };
    assert_eq!(nix::unistd::getuid().as_raw(), NOBODY, "runs as uid 65534");
    let mut client = Client::connect(&socket).expect("connect");
    client
        .set_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let env_bytes = |name: &str| {
        STANDARD
            .decode(std::env::var(name).expect("set by the test"))
            .expect("base64")
    };
    match std::env::var(PEER_CASE_ENV).as_deref() {
        Ok("verify-only") => {
            let signature = env_bytes(PEER_SIGNATURE_ENV);
            let tag = env_bytes(PEER_TAG_ENV);
            assert_valid(client.verify("rel", MESSAGE, &signature, None).unwrap(), 1);
            assert_invalid(client.verify("rel", b"forged", &signature, None));
            refused(client.sign("rel", MESSAGE), ErrorCode::PermissionDenied);
            // Fetching the public key is its own grant.
            refused(client.public_key("rel", None), ErrorCode::PermissionDenied);
            refused(
                client.wrap("rel", b"x", &agent_proto::EncryptionContext::new()),
                ErrorCode::PermissionDenied,
            );

            let public = client.public_key("published", None).unwrap();
            assert_eq!(public.key_type, KeyType::EcdsaP256);
            assert!(!public.spki_der.is_empty());
            refused(
                client.sign("published", MESSAGE),
                ErrorCode::PermissionDenied,
            );
            refused(
                client.verify("published", MESSAGE, &signature, None),
                ErrorCode::PermissionDenied,
            );

            assert_valid(client.verify_mac("tokens", MESSAGE, &tag, None).unwrap(), 1);
            refused(client.mac("tokens", MESSAGE), ErrorCode::PermissionDenied);
            // No grant lists random.
            refused(client.random(16), ErrorCode::PermissionDenied);
        }
        Ok("random") => {
            assert_eq!(client.random(64).unwrap().len(), 64);
            refused(client.random(1025), ErrorCode::InvalidArgument);
            // The random grant gives nothing else, even on the keys it names.
            refused(
                client.create_key_of_type("nothing-1", KeyType::Ed25519),
                ErrorCode::PermissionDenied,
            );
        }
        other => panic!("unknown peer case {other:?}"),
    }
}

/// After a restart every key keeps its type, its public keys and its
/// secret: its public keys are the same, old signatures verify, Ed25519
/// and ECDSA (deterministic) sign and HMAC tags come out the same, and a
/// new ML-DSA (hedged) signature verifies under the same public key.
#[test]
fn a_restart_keeps_types_public_keys_and_signatures() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    let mut before = Vec::new();
    for key_type in KeyType::ALL {
        let name = format!("k-{key_type}");
        client.create_key_of_type(&name, key_type).unwrap();
        // What identifies the secret: a tag, a signature, a public key.
        let (output, public) = if key_type.is_signing() {
            let signature = client.sign(&name, MESSAGE).unwrap().signature;
            (
                signature,
                Some(client.public_key(&name, None).unwrap().spki_der),
            )
        } else if key_type == KeyType::Aes256Gcm {
            let ctx = agent_proto::EncryptionContext::new();
            let wrapped = client.wrap(&name, MESSAGE, &ctx).unwrap();
            (wrapped.ciphertext.as_bytes().to_vec(), None)
        } else {
            (client.mac(&name, MESSAGE).unwrap().tag, None)
        };
        before.push((name, key_type, output, public));
    }
    // A revoked version's public key survives too (D2).
    client
        .create_key_of_type("audit", KeyType::Ed25519)
        .unwrap();
    let revoked_public = client.public_key("audit", Some(1)).unwrap().spki_der;
    client.rotate("audit").unwrap();
    client.revoke("audit", Some(1)).unwrap();
    drop(client);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");

    let daemon = Daemon::start(&files).unwrap_or_else(|log| panic!("restart hostkmsd: {log}"));
    let mut client = daemon.client();
    let listed: BTreeMap<String, KeyType> = client
        .list_keys()
        .unwrap()
        .into_iter()
        .map(|k| (k.name, k.key_type))
        .collect();
    let audit = client.public_key("audit", Some(1)).unwrap();
    assert!(audit.revoked);
    assert_eq!(audit.spki_der, revoked_public);
    for (name, key_type, output, public) in before {
        assert_eq!(listed.get(&name), Some(&key_type), "{name}");
        assert_eq!(client.describe_key(&name).unwrap().key_type, key_type);
        if key_type.is_signing() {
            assert_eq!(
                Some(client.public_key(&name, None).unwrap().spki_der),
                public,
                "{name}"
            );
            assert_valid(client.verify(&name, MESSAGE, &output, None).unwrap(), 1);
            let again = client.sign(&name, MESSAGE).unwrap().signature;
            if key_type == KeyType::MlDsa65 {
                assert_valid(client.verify(&name, MESSAGE, &again, Some(1)).unwrap(), 1);
            } else {
                assert_eq!(again, output, "{name}: the same secret signs the same way");
            }
        } else if key_type == KeyType::Aes256Gcm {
            let ctx = agent_proto::EncryptionContext::new();
            assert_eq!(
                client
                    .unwrap(&output, &ctx, None)
                    .unwrap()
                    .plaintext
                    .expose(),
                MESSAGE
            );
        } else {
            assert_eq!(client.mac(&name, MESSAGE).unwrap().tag, output, "{name}");
        }
    }
}

/// Messages and data beyond `max_plaintext` are refused with advice that
/// fits the key type (D4): ECDSA P-256 signs the digest instead, which
/// openssl verifies as the signature of the whole message; the other types
/// are told the limit and that only ecdsa-p256 keys take a digest.
#[test]
fn messages_beyond_max_plaintext_are_refused_with_advice_that_fits_the_type() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new().max_plaintext(1024));
    let mut client = daemon.client();
    let at_limit = vec![b'a'; 1024];
    let beyond = vec![b'b'; 1025];

    for key_type in SIGNING_TYPES {
        let name = format!("rel-{key_type}");
        client.create_key_of_type(&name, key_type).unwrap();
        let signed = client.sign(&name, &at_limit).unwrap();
        assert_valid(
            client
                .verify(&name, &at_limit, &signed.signature, None)
                .unwrap(),
            1,
        );
        let message = refused(client.sign(&name, &beyond), ErrorCode::PlaintextTooLarge);
        assert!(message.contains("1024"), "names the limit: {message}");
        assert!(message.contains("digest"), "{message}");
        if key_type != KeyType::EcdsaP256 {
            assert!(message.contains("ecdsa-p256"), "{message}");
            assert!(!message.contains("hash it yourself"), "{message}");
        }
        refused(
            client.verify(&name, &beyond, &signed.signature, None),
            ErrorCode::PlaintextTooLarge,
        );
    }

    // A large message through ECDSA's digest path: openssl verifies the
    // signature against the message itself.
    let large = vec![b'c'; 100_000];
    let digest = sha2::Sha256::digest(&large).to_vec();
    let signed = client.sign_digest("rel-ecdsa-p256", &digest).unwrap();
    let public = client.public_key("rel-ecdsa-p256", None).unwrap();
    let dir = private_tempdir();
    assert!(openssl_verifies(
        dir.path(),
        KeyType::EcdsaP256,
        &pem(&public.spki_der),
        &large,
        &signed.signature
    ));

    for key_type in HMAC_TYPES {
        let name = format!("tokens-{key_type}");
        client.create_key_of_type(&name, key_type).unwrap();
        let tag = client.mac(&name, &at_limit).unwrap().tag;
        assert_valid(client.verify_mac(&name, &at_limit, &tag, None).unwrap(), 1);
        refused(client.mac(&name, &beyond), ErrorCode::PlaintextTooLarge);
        refused(
            client.verify_mac(&name, &beyond, &tag, None),
            ErrorCode::PlaintextTooLarge,
        );
    }
}

/// What the new operations carry (data, tags, signatures, random bytes)
/// never reaches the daemon's log or audit trail (D6).
#[test]
fn the_log_carries_no_data_tags_signatures_or_random_bytes() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    let data = b"log-canary-0c3f9a5e data that must not be logged";
    let mut secrets: Vec<Vec<u8>> = vec![data.to_vec()];

    client
        .create_key_of_type("hm", KeyType::HmacSha256)
        .unwrap();
    let tag = client.mac("hm", data).unwrap().tag;
    client.verify_mac("hm", data, &tag, None).unwrap();
    client
        .verify_mac("hm", data, &flip_last_bit(&tag), None)
        .unwrap();
    secrets.push(tag);
    for key_type in SIGNING_TYPES {
        let name = format!("rel-{key_type}");
        client.create_key_of_type(&name, key_type).unwrap();
        let signature = client.sign(&name, data).unwrap().signature;
        client.verify(&name, data, &signature, None).unwrap();
        client
            .verify(&name, data, &flip_last_bit(&signature), Some(1))
            .unwrap();
        secrets.push(signature);
    }
    secrets.push(client.random(64).unwrap().expose().to_vec());
    // A refusal about the data names no data either.
    refused(client.sign("hm", data), ErrorCode::WrongKeyType);

    let log = daemon.log();
    assert!(
        log.contains("rel-ed25519"),
        "the log records the requests: {log}"
    );
    for secret in &secrets {
        for encoded in [STANDARD.encode(secret), hex(secret)] {
            assert!(!log.contains(&encoded), "{encoded} is in the log:\n{log}");
        }
    }
    assert!(
        !log.contains("log-canary"),
        "the data is in the log:\n{log}"
    );
}

/// A client of protocol 3, from before key types, keeps working with a
/// daemon that holds them (D7): AES keys as before; an operation on a
/// typed key that does not fit it answers error 18, WrongKeyType; the new
/// requests and types fail in the client, naming what the daemon's
/// protocol cannot carry, before anything is sent.
#[test]
fn a_protocol_3_client_keeps_working_beside_typed_keys() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut admin = daemon.client();
    admin.create_key_of_type("ed", KeyType::Ed25519).unwrap();
    let signature = admin.sign("ed", MESSAGE).unwrap().signature;

    let mut old = daemon.client();
    old.set_protocol(3);
    let ctx = agent_proto::EncryptionContext::new();
    old.create_key("aes").unwrap();
    let wrapped = old.wrap("aes", MESSAGE, &ctx).unwrap();
    assert_eq!(
        old.unwrap(wrapped.ciphertext.as_bytes(), &ctx, None)
            .unwrap()
            .plaintext
            .expose(),
        MESSAGE
    );
    let message = refused(old.wrap("ed", MESSAGE, &ctx), ErrorCode::WrongKeyType);
    assert!(message.contains("ed25519"), "{message}");
    assert_eq!(ErrorCode::WrongKeyType.number(), 18);
    let names: Vec<String> = old
        .list_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["aes", "ed"]);

    for result in [
        old.sign("ed", MESSAGE).map(|_| ()),
        old.verify("ed", MESSAGE, &signature, None).map(|_| ()),
        old.create_key_of_type("ed2", KeyType::Ed25519).map(|_| ()),
        old.random(16).map(|_| ()),
    ] {
        match result {
            Err(ClientError::DaemonTooOld { .. }) => {}
            other => panic!("a protocol 3 client cannot send this: {other:?}"),
        }
    }
    assert_eq!(old.protocol(), 3);
    // The same requests from a current client on the same daemon work.
    assert_valid(admin.verify("ed", MESSAGE, &signature, None).unwrap(), 1);
    assert!(admin.describe_key("ed2").is_err(), "nothing was created");
}
