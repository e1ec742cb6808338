//! Known answers and refusals of [`VersionKey`]: every type gives what the
//! published vectors say (so other tools verify what hostkms signs), a
//! tampered input is `false`, a malformed signature is `false` and never a
//! panic, and an operation a type does not perform is `WrongKeyType`.

use std::sync::OnceLock;

use agent_proto::{KeyType, Operation, SecretBytes, SignInput};
use base64::Engine as _;
use proptest::prelude::*;
use sha2::Digest as _;

use super::*;

/// The LAMPS example ML-DSA-65 private key (PKCS#8 holding only the seed
/// 00 01 .. 1f), as the ml-dsa 0.1.2 crate ships it in
/// tests/examples/ (from github.com/lamps-wg/dilithium-certificates).
const ML_DSA_65_SEED_PRIV: &str = include_str!("testdata/ML-DSA-65-seed.priv");
/// The public key of that seed, SubjectPublicKeyInfo PEM, same origin.
const ML_DSA_65_PUB: &str = include_str!("testdata/ML-DSA-65.pub");

/// A signature of [`OPENSSL_MESSAGE`] by the seed 00..1f made by another
/// implementation, OpenSSL 4.0's ML-DSA-65 (hedged, empty context), through
/// Python's cryptography 48:
/// `MLDSA65PrivateKey.from_seed_bytes(bytes(range(32))).sign(message)`,
/// base64. (Its `public_key()` is the LAMPS example above too; and
/// OpenSSL verified a signature of ours of the same message once by hand,
/// `load_pem_public_key(ML-DSA-65.pub).verify(signature, message)`: ours
/// are hedged, so no fixed bytes can be pinned in that direction.)
const ML_DSA_65_OPENSSL_SIGNATURE: &str = include_str!("testdata/ML-DSA-65-openssl.sig.b64");
/// The message OpenSSL signed.
const OPENSSL_MESSAGE: &[u8] = b"signed by OpenSSL's ML-DSA-65 for the hostkms known-answer test\n";

/// The encoded length of an ML-DSA-65 signature (FIPS 204, table 2).
const ML_DSA_65_SIGNATURE_LEN: usize = 3309;

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn seed_hex(text: &str) -> [u8; SEED_LEN] {
    hex(text).try_into().expect("a 32-byte seed")
}

/// The DER inside a PEM document.
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body is base64")
}

fn message(bytes: &[u8]) -> SignInput {
    SignInput::Message(SecretBytes::new(bytes.to_vec()))
}

fn key(key_type: KeyType, seed: &[u8; SEED_LEN]) -> VersionKey {
    VersionKey::from_seed(key_type, seed).expect("a valid seed")
}

/// 00 01 02 .. 1f.
fn counting_seed() -> [u8; SEED_LEN] {
    std::array::from_fn(|i| i as u8)
}

#[test]
fn ml_dsa_65_public_key_of_seed_00_to_1f_is_the_lamps_example() {
    // The fixture's private key is the seed 00..1f: PKCS#8 whose key is
    // the [0] IMPLICIT OCTET STRING (80 20) of the 32-byte seed.
    let private = pem_der(ML_DSA_65_SEED_PRIV);
    let mut seed_field = vec![0x80, 0x20];
    seed_field.extend_from_slice(&counting_seed());
    assert!(
        private.ends_with(&seed_field),
        "the fixture is not the seed 00..1f"
    );

    let ours = key(KeyType::MlDsa65, &counting_seed());
    let der = ours.public_key_der().expect("ml-dsa-65 has a public key");
    assert_eq!(der.as_slice(), pem_der(ML_DSA_65_PUB).as_slice());
}

/// ML-DSA-65 signs hedged (FIPS 204's recommended variant: fresh
/// randomness in each signature), so two signatures of one message differ;
/// the published public key of the seed verifies both.
#[test]
fn ml_dsa_65_signs_hedged_and_the_example_public_key_verifies() {
    use p256::pkcs8::DecodePublicKey;
    use signature::Verifier;

    let ours = key(KeyType::MlDsa65, &counting_seed());
    let input = message(b"release 1.2.3");
    let first = ours.sign(&input).expect("ml-dsa-65 signs messages");
    let second = ours.sign(&input).expect("signs");
    assert_eq!(first.len(), ML_DSA_65_SIGNATURE_LEN);
    assert_ne!(
        first, second,
        "hedged signing draws fresh randomness each time"
    );

    // Verified outside VersionKey: the published public key, parsed by
    // the crate, accepts the signatures (empty context, pure ML-DSA).
    let published =
        ml_dsa::VerifyingKey::<ml_dsa::MlDsa65>::from_public_key_der(&pem_der(ML_DSA_65_PUB))
            .expect("the LAMPS example public key parses");
    for signature in [&first, &second] {
        assert_eq!(ours.verify(&input, signature), Ok(true));
        let encoded: &[u8] = signature;
        let decoded = ml_dsa::Signature::<ml_dsa::MlDsa65>::decode(
            encoded.try_into().expect("signature length"),
        )
        .expect("the signature decodes");
        assert!(published.verify(b"release 1.2.3", &decoded).is_ok());
        assert!(published.verify(b"release 1.2.4", &decoded).is_err());
    }
}

/// RFC 8032 section 7.1, TEST 1 (empty message) and TEST 2 (one byte).
#[test]
fn ed25519_rfc8032_test_vectors() {
    let vectors = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
    ];
    for (secret, public, msg, expected) in vectors {
        let ours = key(KeyType::Ed25519, &seed_hex(secret));
        // SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): the algorithm
        // id 1.3.101.112 and the 32-byte public key as the bit string.
        let mut spki = hex("302a300506032b6570032100");
        spki.extend_from_slice(&hex(public));
        assert_eq!(
            ours.public_key_der()
                .expect("ed25519 has a public key")
                .as_slice(),
            spki.as_slice()
        );
        let input = message(&hex(msg));
        let signature = ours.sign(&input).expect("ed25519 signs");
        assert_eq!(signature, hex(expected));
        assert_eq!(ours.verify(&input, &signature), Ok(true));
    }
}

/// RFC 6979 appendix A.2.5: ECDSA P-256 with SHA-256, deterministic
/// nonces. hostkms normalizes S low, so the signature is the RFC's (r, s)
/// with s replaced by n - s where s is high ("sample"), DER-encoded; the
/// RFC's own high-S form does not verify.
#[test]
fn ecdsa_p256_rfc6979_test_vectors() {
    use p256::pkcs8::DecodePublicKey;
    use signature::Verifier;
    use signature::hazmat::PrehashVerifier;

    let ours = key(
        KeyType::EcdsaP256,
        &seed_hex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"),
    );
    // SubjectPublicKeyInfo (RFC 5480): id-ecPublicKey, prime256v1, the
    // uncompressed point 04 || Ux || Uy.
    let mut spki = hex("3059301306072a8648ce3d020106082a8648ce3d03010703420004");
    spki.extend_from_slice(&hex(
        "60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6",
    ));
    spki.extend_from_slice(&hex(
        "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299",
    ));
    let der = ours.public_key_der().expect("ecdsa-p256 has a public key");
    assert_eq!(der.as_slice(), spki.as_slice());
    let parsed = p256::ecdsa::VerifyingKey::from_public_key_der(&der)
        .expect("our SPKI parses back as a P-256 key");

    let vectors = [
        (
            "sample",
            "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716",
            "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8",
        ),
        (
            "test",
            "f1abb023518351cd71d881567b1ea663ed3efcf6c5132b354f28d3b0b7d38367",
            "019f4113742a2b14bd25926b49c649155f267e60d3814b4c0cc84250e46f0083",
        ),
    ];
    for (msg, r, s) in vectors {
        let signature = ours.sign(&message(msg.as_bytes())).expect("signs");
        let decoded = p256::ecdsa::Signature::from_der(&signature).expect("DER signature");
        let rfc = p256::ecdsa::Signature::from_scalars(
            <[u8; 32]>::try_from(hex(r).as_slice()).expect("32-byte r"),
            <[u8; 32]>::try_from(hex(s).as_slice()).expect("32-byte s"),
        )
        .expect("the RFC's signature is well formed");
        assert_eq!(decoded, rfc.normalize_s(), "(r, low s) of {msg:?}");
        let high = p256::ecdsa::Signature::from_scalars(decoded.r(), -*decoded.s())
            .expect("the high-S twin is well formed");
        assert!(
            !ours
                .verify(&message(msg.as_bytes()), high.to_der().as_bytes())
                .expect("ecdsa-p256 verifies"),
            "the high-S twin of {msg:?} does not verify"
        );

        // The digest path signs the SHA-256 of the message the same way.
        let digest = sha2::Sha256::digest(msg.as_bytes()).to_vec();
        let by_digest = ours
            .sign(&SignInput::Digest(digest.clone()))
            .expect("ecdsa-p256 signs a digest");
        assert_eq!(by_digest, signature);

        // The public key parsed back from the SPKI verifies both ways.
        assert!(parsed.verify(msg.as_bytes(), &decoded).is_ok());
        assert!(parsed.verify_prehash(&digest, &decoded).is_ok());
        assert_eq!(ours.verify(&message(msg.as_bytes()), &signature), Ok(true));
        assert_eq!(
            ours.verify(&SignInput::Digest(digest), &signature),
            Ok(true)
        );
    }
}

/// Fixed vectors for a 32-byte key (RFC 4231 has none: its keys are 20,
/// 4, 25 and 131 bytes), computed by Python's hmac:
/// python3 -c "import hmac,hashlib; k=bytes(range(32)); d=b'hostkms version_key test vector'; print(hmac.new(k,d,hashlib.sha256).hexdigest()); print(hmac.new(k,d,hashlib.sha512).hexdigest())"
#[test]
fn hmac_tags_are_what_python_hmac_computes() {
    let data = b"hostkms version_key test vector";
    let vectors = [
        (
            KeyType::HmacSha256,
            "9a54a7d62b965db85cfa4c8b6ab5eede2eda45f5d92000e687591f42c88f3f84",
        ),
        (
            KeyType::HmacSha512,
            "15a8e777620a28bbe68da58c8ebdaa377160f22fb2163a72619b20b1112953f9\
             259ddfde6651edc0331ce8a69d2f27216545ae2d457cbe37784b22eca37f927e",
        ),
    ];
    for (key_type, expected) in vectors {
        let ours = key(key_type, &counting_seed());
        let tag = ours.mac(data).expect("hmac keys mac");
        assert_eq!(tag, hex(expected), "{key_type}");
        assert_eq!(ours.verify_mac(data, &tag), Ok(true));
        assert!(ours.public_key_der().is_none());
    }
}

#[test]
fn a_tampered_tag_or_message_or_a_truncated_tag_is_invalid() {
    for key_type in [KeyType::HmacSha256, KeyType::HmacSha512] {
        let ours = key(key_type, &[7; SEED_LEN]);
        let other = key(key_type, &[8; SEED_LEN]);
        let tag = ours.mac(b"payload").expect("mac");
        assert_eq!(ours.verify_mac(b"payload", &tag), Ok(true));
        assert_eq!(ours.verify_mac(b"payloae", &tag), Ok(false));
        assert_eq!(other.verify_mac(b"payload", &tag), Ok(false));
        let mut flipped = tag.clone();
        flipped[0] ^= 1;
        assert_eq!(ours.verify_mac(b"payload", &flipped), Ok(false));
        // A prefix of the right tag is no tag: no truncated comparison.
        assert_eq!(ours.verify_mac(b"payload", &tag[..16]), Ok(false));
        assert_eq!(ours.verify_mac(b"payload", &[]), Ok(false));
        let mut longer = tag.clone();
        longer.push(0);
        assert_eq!(ours.verify_mac(b"payload", &longer), Ok(false));
    }
}

#[test]
fn a_tampered_message_or_signature_or_another_key_is_invalid() {
    for key_type in [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::MlDsa65] {
        let ours = key(key_type, &[7; SEED_LEN]);
        let other = key(key_type, &[8; SEED_LEN]);
        let input = message(b"payload");
        let signature = ours.sign(&input).expect("signs");
        assert_eq!(ours.verify(&input, &signature), Ok(true), "{key_type}");
        assert_eq!(
            ours.verify(&message(b"payloae"), &signature),
            Ok(false),
            "{key_type}"
        );
        assert_eq!(other.verify(&input, &signature), Ok(false), "{key_type}");
        let mut flipped = signature.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(ours.verify(&input, &flipped), Ok(false), "{key_type}");
        assert_eq!(ours.verify(&input, &[]), Ok(false), "{key_type}");
    }
}

/// Every type answers exactly the operations `KeyType::operations` lists;
/// every other one is `WrongKeyType` naming the type and the operation.
#[test]
fn an_operation_outside_the_type_is_wrong_key_type() {
    for key_type in KeyType::ALL {
        let ours = key(key_type, &[7; SEED_LEN]);
        let supports = |op: Operation| key_type.operations().contains(&op);
        let wrong = |operation| {
            Err::<(), _>(KeyUseError::WrongKeyType {
                key_type,
                operation,
            })
        };

        for op in [
            Operation::Wrap,
            Operation::Unwrap,
            Operation::DataKey,
            Operation::Rewrap,
        ] {
            let got = ours.cipher(op).map(|_| ());
            if supports(op) {
                assert_eq!(got, Ok(()), "{key_type} {op:?}");
            } else {
                assert_eq!(got, wrong(op), "{key_type} {op:?}");
            }
        }

        let mac = ours.mac(b"data");
        assert_eq!(mac.is_ok(), supports(Operation::Mac), "{key_type} mac");
        if !supports(Operation::Mac) {
            assert_eq!(mac.map(|_| ()), wrong(Operation::Mac));
        }
        let verify_mac = ours.verify_mac(b"data", &[0; 32]);
        if supports(Operation::VerifyMac) {
            assert_eq!(verify_mac, Ok(false), "{key_type} verify-mac");
        } else {
            assert_eq!(verify_mac.map(|_| ()), wrong(Operation::VerifyMac));
        }

        let sign = ours.sign(&message(b"data"));
        assert_eq!(sign.is_ok(), supports(Operation::Sign), "{key_type} sign");
        if !supports(Operation::Sign) {
            assert_eq!(sign.map(|_| ()), wrong(Operation::Sign));
        }
        let verify = ours.verify(&message(b"data"), &[0; 64]);
        if supports(Operation::Verify) {
            assert_eq!(verify, Ok(false), "{key_type} verify");
        } else {
            assert_eq!(verify.map(|_| ()), wrong(Operation::Verify));
        }

        assert_eq!(
            ours.public_key_der().is_some(),
            supports(Operation::PublicKey),
            "{key_type} public key"
        );
        assert_eq!(key_type.is_signing(), supports(Operation::Sign));
    }
}

#[test]
fn wrong_key_type_says_what_the_key_can_do() {
    let error = key(KeyType::Ed25519, &[7; SEED_LEN])
        .cipher(Operation::Wrap)
        .map(|_| ())
        .expect_err("ed25519 does not wrap");
    let text = error.to_string();
    assert!(text.contains("ed25519"), "{text}");
    assert!(text.contains("wrap"), "{text}");
    assert!(text.contains("sign, verify, public-key"), "{text}");

    let error = key(KeyType::Aes256Gcm, &[7; SEED_LEN])
        .sign(&message(b"data"))
        .expect_err("aes does not sign");
    let text = error.to_string();
    assert!(text.contains("aes256-gcm"), "{text}");
    assert!(text.contains("wrap, unwrap"), "{text}");
}

/// Only ECDSA P-256 takes a pre-hashed digest, and only a 32-byte one;
/// a type that signs nothing is `WrongKeyType` whatever the input.
#[test]
fn digest_rules() {
    let digest = SignInput::Digest(vec![0x5a; DIGEST_LEN]);
    for key_type in [KeyType::Ed25519, KeyType::MlDsa65] {
        let ours = key(key_type, &[7; SEED_LEN]);
        assert!(
            matches!(ours.sign(&digest), Err(KeyUseError::Digest(_))),
            "{key_type} must not sign a digest"
        );
        assert!(
            matches!(ours.verify(&digest, &[0; 64]), Err(KeyUseError::Digest(_))),
            "{key_type} must not verify a digest"
        );
    }

    let ecdsa = key(KeyType::EcdsaP256, &[7; SEED_LEN]);
    for len in [0, 1, 20, 31, 33, 48, 64] {
        let wrong_len = SignInput::Digest(vec![0x5a; len]);
        assert!(
            matches!(ecdsa.sign(&wrong_len), Err(KeyUseError::Digest(_))),
            "a {len}-byte digest"
        );
        assert!(
            matches!(
                ecdsa.verify(&wrong_len, &[0; 70]),
                Err(KeyUseError::Digest(_))
            ),
            "a {len}-byte digest"
        );
    }
    let signature = ecdsa.sign(&digest).expect("a 32-byte digest signs");
    assert_eq!(ecdsa.verify(&digest, &signature), Ok(true));
    assert_eq!(
        ecdsa.verify(&SignInput::Digest(vec![0x5b; DIGEST_LEN]), &signature),
        Ok(false)
    );

    for key_type in [KeyType::Aes256Gcm, KeyType::HmacSha256, KeyType::HmacSha512] {
        let ours = key(key_type, &[7; SEED_LEN]);
        assert_eq!(
            ours.sign(&digest),
            Err(KeyUseError::WrongKeyType {
                key_type,
                operation: Operation::Sign
            })
        );
        assert_eq!(
            ours.verify(&digest, &[0; 64]),
            Err(KeyUseError::WrongKeyType {
                key_type,
                operation: Operation::Verify
            })
        );
    }
}

/// The P-256 group order n.
const P256_ORDER: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";

#[test]
fn an_ecdsa_scalar_outside_one_to_n_minus_one_is_no_key() {
    let mut order_minus_one = seed_hex(P256_ORDER);
    order_minus_one[SEED_LEN - 1] -= 1;
    for bad in [[0; SEED_LEN], seed_hex(P256_ORDER), [0xff; SEED_LEN]] {
        assert!(!VersionKey::seed_is_valid(KeyType::EcdsaP256, &bad));
        assert_eq!(
            VersionKey::from_seed(KeyType::EcdsaP256, &bad).map(|_| ()),
            Err(SeedInvalid(KeyType::EcdsaP256))
        );
    }
    for good in [order_minus_one, counting_seed()] {
        assert!(VersionKey::seed_is_valid(KeyType::EcdsaP256, &good));
        assert!(VersionKey::from_seed(KeyType::EcdsaP256, &good).is_ok());
    }
    // Every other type takes any 32 bytes.
    for key_type in KeyType::ALL {
        if key_type != KeyType::EcdsaP256 {
            for seed in [[0; SEED_LEN], [0xff; SEED_LEN]] {
                assert!(VersionKey::seed_is_valid(key_type, &seed));
                assert!(VersionKey::from_seed(key_type, &seed).is_ok());
            }
        }
    }
}

#[test]
fn debug_output_shows_the_type_and_never_the_secret() {
    for key_type in KeyType::ALL {
        let text = format!("{:?}", key(key_type, &[0xab; SEED_LEN]));
        assert_eq!(text, format!("VersionKey({key_type}, <redacted>)"));
    }
}

/// One key of each signing type with a signature of `b"payload"`, made
/// once (ML-DSA is slow in a debug build).
fn signed_payloads() -> &'static [(VersionKey, Vec<u8>)] {
    static SIGNED: OnceLock<Vec<(VersionKey, Vec<u8>)>> = OnceLock::new();
    SIGNED.get_or_init(|| {
        [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::MlDsa65]
            .into_iter()
            .map(|key_type| {
                let ours = key(key_type, &[9; SEED_LEN]);
                let signature = ours.sign(&message(b"payload")).expect("signs");
                (ours, signature)
            })
            .collect()
    })
}

/// Lengths a forged signature should try: any, and exactly each type's
/// own (Ed25519 64, a DER ECDSA signature about 70, ML-DSA-65 3309).
fn forged_signature() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096),
        proptest::collection::vec(any::<u8>(), 64),
        proptest::collection::vec(any::<u8>(), 68..=72),
        proptest::collection::vec(any::<u8>(), ML_DSA_65_SIGNATURE_LEN),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random bytes are no signature of any type: `Ok(false)`, never an
    /// error and never a panic.
    #[test]
    fn random_bytes_never_verify(signature in forged_signature(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
        for (ours, _) in signed_payloads() {
            prop_assert_eq!(ours.verify(&message(&data), &signature), Ok(false));
            prop_assert_eq!(ours.verify(&message(b"payload"), &signature), Ok(false));
        }
        let ecdsa = &signed_payloads()[1].0;
        prop_assert_eq!(
            ecdsa.verify(&SignInput::Digest(vec![0x5a; DIGEST_LEN]), &signature),
            Ok(false)
        );
        for key_type in [KeyType::HmacSha256, KeyType::HmacSha512] {
            prop_assert_eq!(key(key_type, &[9; SEED_LEN]).verify_mac(&data, &signature), Ok(false));
        }
    }

    /// Any single bit flipped in a real signature makes it invalid.
    #[test]
    fn a_flipped_bit_never_verifies(position in any::<prop::sample::Index>(), bit in 0u8..8) {
        for (ours, signature) in signed_payloads() {
            let mut forged = signature.clone();
            let at = position.index(forged.len());
            forged[at] ^= 1 << bit;
            prop_assert_eq!(
                ours.verify(&message(b"payload"), &forged),
                Ok(false),
                "{} byte {} bit {}", ours.key_type(), at, bit
            );
        }
    }
}

#[test]
fn ml_dsa_65_verifies_a_signature_openssl_made() {
    let signature: Vec<u8> = base64::engine::general_purpose::STANDARD
        .decode(
            ML_DSA_65_OPENSSL_SIGNATURE
                .split_whitespace()
                .collect::<String>(),
        )
        .expect("base64 fixture");
    assert_eq!(signature.len(), ML_DSA_65_SIGNATURE_LEN);
    let ours = key(KeyType::MlDsa65, &counting_seed());
    assert_eq!(ours.verify(&message(OPENSSL_MESSAGE), &signature), Ok(true));
    assert_eq!(
        ours.verify(&message(&OPENSSL_MESSAGE[1..]), &signature),
        Ok(false)
    );
    assert_eq!(
        ours.verify(&message(OPENSSL_MESSAGE), &flip(&signature, 100)),
        Ok(false)
    );
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut flipped = bytes.to_vec();
    flipped[at] ^= 1;
    flipped
}
