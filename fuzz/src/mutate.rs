//! Mutations of whole frames: bit flips, interesting bytes, truncation,
//! extension, length-prefix lies, splices, huge counts, wrong variant
//! indices, chunk insertion, deletion and duplication, and random bytes.

use agent_proto::codec::encode_request;
use std::collections::BTreeMap;

use agent_proto::{
    Ciphertext, EncryptionContext, Envelope, KeySettings, KeyType, Request, RewrapDestination,
    RotationSetting, SecretBytes, SignInput, UnwrapItem, WrapItem,
};

use crate::corpus::MAX_FRAME;
use crate::rng::Rng;

/// One frame to send or decode, and whether a server must answer it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The bytes: a length prefix (perhaps a lie) and a body.
    pub bytes: Vec<u8>,
    /// Whether the mutation was left untouched (a valid frame).
    pub valid: bool,
}

impl Frame {
    /// Whether a server reading these bytes, and then the end of the
    /// stream, must answer exactly once before closing or reading on: the
    /// prefix is complete and either exceeds the limit (answered at once)
    /// or equals the body length.
    pub fn expects_one_answer(&self) -> bool {
        match self.prefix() {
            Some(len) => len > MAX_FRAME || len as usize == self.bytes.len() - 4,
            None => false,
        }
    }

    /// The length prefix, when all four bytes are there.
    pub fn prefix(&self) -> Option<u32> {
        self.bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    }
}

/// Values that break length and index arithmetic.
const HUGE_U64: [u64; 9] = [
    u64::MAX,
    u64::MAX - 1,
    1 << 63,
    1 << 32,
    (1 << 32) - 1,
    1 << 31,
    MAX_FRAME as u64 + 1,
    0x7FFF_FFFF_FFFF_FFFF,
    65_537,
];

const INTERESTING_BYTES: [u8; 8] = [0x00, 0x01, 0x02, 0x7f, 0x80, 0xfe, 0xff, 0x0e];

/// Lies about the body length.
fn lying_prefix(rng: &mut Rng, body_len: usize) -> u32 {
    let len = body_len as u32;
    match rng.below(8) {
        0 => len.wrapping_add(1 + rng.below(16) as u32),
        1 => len.saturating_sub(1 + rng.below(16) as u32),
        2 => MAX_FRAME,
        3 => MAX_FRAME + 1,
        4 => u32::MAX,
        5 => 0,
        6 => rng.next_u64() as u32,
        _ => len.wrapping_add(rng.below(4096) as u32),
    }
}

/// Sets the prefix of `bytes` to its body length (when it has a prefix).
fn fix_prefix(bytes: &mut [u8]) {
    if bytes.len() >= 4 {
        let len = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
    }
}

/// One mutation of `bytes` in place; returns whether it rewrote the prefix
/// on purpose (so the caller does not fix it).
fn mutate_once(rng: &mut Rng, bytes: &mut Vec<u8>, seeds: &[Vec<u8>]) -> bool {
    let body_start = 4.min(bytes.len());
    match rng.below(13) {
        // Bit flips, anywhere in the body.
        0 | 1 => {
            for _ in 0..1 + rng.below(8) {
                if bytes.len() > body_start {
                    let i = body_start + rng.below(bytes.len() - body_start);
                    bytes[i] ^= 1 << rng.below(8);
                }
            }
            false
        }
        // An interesting byte.
        2 => {
            if bytes.len() > body_start {
                let i = body_start + rng.below(bytes.len() - body_start);
                bytes[i] = *rng.pick(&INTERESTING_BYTES);
            }
            false
        }
        // Truncation.
        3 => {
            let keep = rng.below(bytes.len() + 1);
            bytes.truncate(keep);
            false
        }
        // Random bytes appended.
        4 => {
            for _ in 0..1 + rng.below(64) {
                bytes.push(rng.byte());
            }
            false
        }
        // A length-prefix lie.
        5 => {
            if bytes.len() < 4 {
                bytes.resize(4, 0);
            }
            let prefix = lying_prefix(rng, bytes.len() - 4);
            bytes[..4].copy_from_slice(&prefix.to_be_bytes());
            true
        }
        // Splice: this frame's head, another seed's tail.
        6 => {
            let other = rng.pick(seeds);
            let cut = rng.below(bytes.len() + 1);
            let from = rng.below(other.len() + 1);
            bytes.truncate(cut);
            bytes.extend_from_slice(&other[from..]);
            false
        }
        // A huge count or length where a u64 may be.
        7 | 8 => {
            if bytes.len() >= 8 {
                let i = rng.below(bytes.len() - 7);
                let value = *rng.pick(&HUGE_U64);
                bytes[i..i + 8].copy_from_slice(&value.to_le_bytes());
            }
            false
        }
        // A variant index out of range or of another type (offset 14: after
        // prefix, proto and id), or a bad protocol version.
        9 => {
            if bytes.len() >= 18 {
                // Near the ends of each version's variants (14 and 18 are
                // the first unknown to versions 1-2 and 3).
                let value: u32 = match rng.below(4) {
                    0 => rng.below(Request::VARIANTS as usize + 4) as u32,
                    1 => u32::MAX,
                    2 => *rng.pick(&[12, 13, 14, 15, 16, 17, 18, 19, 22, 23, 24, 25]),
                    _ => rng.next_u64() as u32,
                };
                bytes[14..18].copy_from_slice(&value.to_le_bytes());
            } else if bytes.len() >= 6 {
                let proto = rng.below(agent_proto::PROTOCOL_VERSION as usize + 2) as u16;
                bytes[4..6].copy_from_slice(&proto.to_le_bytes());
            }
            false
        }
        // A chunk of random bytes inserted.
        10 => {
            let at = rng.below(bytes.len() + 1);
            let chunk: Vec<u8> = (0..1 + rng.below(32)).map(|_| rng.byte()).collect();
            bytes.splice(at..at, chunk);
            false
        }
        // A chunk deleted.
        11 => {
            if !bytes.is_empty() {
                let at = rng.below(bytes.len());
                let end = (at + 1 + rng.below(32)).min(bytes.len());
                bytes.drain(at..end);
            }
            false
        }
        // A chunk duplicated.
        _ => {
            if !bytes.is_empty() {
                let at = rng.below(bytes.len());
                let end = (at + 1 + rng.below(64)).min(bytes.len());
                let chunk = bytes[at..end].to_vec();
                let to = rng.below(bytes.len() + 1);
                bytes.splice(to..to, chunk);
            }
            false
        }
    }
}

/// Names a request may carry: the granted key, the other key, near misses,
/// and hostile strings (control characters, globs, path tricks, long ones).
fn random_name(rng: &mut Rng, names: &[&str]) -> String {
    match rng.below(8) {
        0..=2 => rng.pick(names).to_string(),
        3 => format!(
            "{}{}",
            rng.pick(names),
            rng.pick(&["*", "?", "\0", "\n", ".", "-1", "\u{202e}"])
        ),
        4 => String::new(),
        5 => "a".repeat(100 + rng.below(200)),
        6 => rng
            .pick(&[
                "../keystore.db",
                "fuzz\n\u{1b}[31m",
                "*",
                "fuzz\0x",
                "fuzz\r\nX: y",
                "\u{ffff}",
            ])
            .to_string(),
        _ => (0..rng.below(40))
            .map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('x'))
            .collect(),
    }
}

fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    (0..rng.below(max + 1)).map(|_| rng.byte()).collect()
}

fn random_context(rng: &mut Rng) -> EncryptionContext {
    if rng.chance(50) {
        return crate::corpus::seed_context();
    }
    // A reserved key (systemd credentials'): refused on the main socket.
    if rng.chance(5) {
        return agent_proto::credential::context("fuzz.service", "secret");
    }
    (0..rng.below(6))
        .map(|_| {
            let n = rng.below(20);
            let k: String = (0..n)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect();
            let v = if rng.chance(10) {
                "\0\n".repeat(rng.below(50))
            } else {
                k.clone()
            };
            (k, v)
        })
        .collect()
}

fn random_ciphertext(rng: &mut Rng, blobs: &[Vec<u8>]) -> Vec<u8> {
    if blobs.is_empty() || rng.chance(20) {
        return random_bytes(rng, 200);
    }
    let mut blob = rng.pick(blobs).clone();
    if blob.is_empty() {
        return blob;
    }
    match rng.below(4) {
        0 => {}
        1 => {
            let i = rng.below(blob.len());
            blob[i] ^= 1 << rng.below(8);
        }
        2 => blob.truncate(rng.below(blob.len())),
        _ => blob.extend(random_bytes(rng, 32)),
    }
    blob
}

fn random_key_type(rng: &mut Rng) -> KeyType {
    *rng.pick(&KeyType::ALL)
}

/// A message or a digest, of lengths around the limits (digests must be
/// exactly 32 bytes).
fn random_sign_input(rng: &mut Rng, message_len: usize) -> SignInput {
    if rng.chance(50) {
        SignInput::Message(SecretBytes::new(vec![0x5a; message_len]))
    } else {
        let len = *rng.pick(&[0, 1, 31, 32, 32, 33, 64, 4096]);
        SignInput::Digest(random_bytes_of(rng, len))
    }
}

/// Tags and signatures: empty, the right sizes of each type, just past the
/// limits (64 bytes, 8 KiB), and random.
fn random_tag_or_signature(rng: &mut Rng) -> Vec<u8> {
    let len = *rng.pick(&[0, 1, 32, 64, 65, 70, 72, 3309, 8192, 8193, 70_000]);
    random_bytes_of(rng, len)
}

fn random_bytes_of(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.byte()).collect()
}

fn random_version(rng: &mut Rng) -> u32 {
    let random = rng.next_u64() as u32;
    *rng.pick(&[0, 1, 2, 3, u32::MAX, u32::MAX - 1, random])
}

/// A well-formed request of a random type with hostile field values: it
/// decodes, so it reaches the daemon's policy and operations and the
/// connection stays open for the next frame.
pub fn random_request(rng: &mut Rng, names: &[&str], blobs: &[Vec<u8>]) -> Request {
    let plaintext_len = *rng.pick(&[0, 1, 16, 1000, 64 * 1024, 64 * 1024 + 1, 200_000]);
    // RotateRoot (admin only, a TPM seal each time) is left to its own
    // tests, and so is a Reseal that is not a dry run (the admin worker
    // would seal the root key anew, to PCRs, each time).
    match rng.below(35) {
        0 => Request::Ping,
        1 => Request::Status,
        2 => Request::CreateKey {
            name: random_name(rng, names),
            key_type: random_key_type(rng),
            settings: if rng.chance(50) {
                Default::default()
            } else {
                random_settings(rng)
            },
        },
        3 => Request::Wrap {
            key: random_name(rng, names),
            plaintext: SecretBytes::new(vec![0x5a; plaintext_len]),
            context: random_context(rng),
        },
        4 => Request::Unwrap {
            ciphertext: Ciphertext::new(random_ciphertext(rng, blobs)),
            context: random_context(rng),
            key: rng.chance(50).then(|| random_name(rng, names)),
        },
        5 => Request::GenerateDataKey {
            key: random_name(rng, names),
            bytes: *rng.pick(&[0, 1, 16, 24, 32, 64, 65, 4096, u16::MAX]),
            include_plaintext: rng.chance(50),
            context: random_context(rng),
        },
        6 => Request::Rewrap {
            ciphertext: Ciphertext::new(random_ciphertext(rng, blobs)),
            context: random_context(rng),
            key: rng.chance(50).then(|| random_name(rng, names)),
            destination: rng.chance(50).then(|| RewrapDestination {
                key: rng.chance(70).then(|| random_name(rng, names)),
                context: rng.chance(50).then(|| random_context(rng)),
            }),
        },
        7 => Request::Rotate {
            key: random_name(rng, names),
        },
        8 => Request::Revoke {
            key: random_name(rng, names),
            version: rng.chance(50).then(|| random_version(rng)),
        },
        9 => Request::Disable {
            key: random_name(rng, names),
        },
        10 => Request::Enable {
            key: random_name(rng, names),
        },
        11 => Request::SetMinDecryptionVersion {
            key: random_name(rng, names),
            version: random_version(rng),
        },
        12 => Request::ListKeys {
            after: rng.chance(50).then(|| random_name(rng, names)),
            limit: rng.chance(50).then(|| random_version(rng)),
        },
        13 => Request::TransportKey,
        14 => Request::ExportKey {
            key: random_name(rng, names),
            destination: random_name(rng, names),
        },
        15 => Request::ImportKey {
            file: random_ciphertext(rng, blobs),
        },
        16 => Request::Mac {
            key: random_name(rng, names),
            data: SecretBytes::new(vec![0x5a; plaintext_len]),
        },
        17 => Request::VerifyMac {
            key: random_name(rng, names),
            data: SecretBytes::new(vec![0x5a; plaintext_len]),
            tag: random_tag_or_signature(rng),
            version: rng.chance(50).then(|| random_version(rng)),
        },
        18 => Request::Sign {
            key: random_name(rng, names),
            input: random_sign_input(rng, plaintext_len),
        },
        19 => Request::Verify {
            key: random_name(rng, names),
            input: random_sign_input(rng, plaintext_len),
            signature: random_tag_or_signature(rng),
            version: rng.chance(50).then(|| random_version(rng)),
        },
        20 => Request::GetPublicKey {
            key: random_name(rng, names),
            version: rng.chance(50).then(|| random_version(rng)),
        },
        21 => Request::GenerateRandom {
            bytes: *rng.pick(&[0, 1, 32, 1024, 1025, 4096, u16::MAX]),
        },
        22 => Request::ScheduleDeletion {
            key: random_name(rng, names),
            days: *rng.pick(&[0, 1, 6, 7, 30, 31, u16::MAX]),
        },
        23 => Request::CancelDeletion {
            key: random_name(rng, names),
        },
        24 => Request::SetRotationPeriod {
            key: random_name(rng, names),
            period: rng.chance(80).then(|| random_period(rng)),
        },
        25 => Request::UpdateKeyMetadata {
            key: random_name(rng, names),
            description: rng.chance(50).then(|| random_description(rng)),
            set_tags: random_tags(rng),
            remove_tags: (0..rng.below(4)).map(|_| random_name(rng, names)).collect(),
        },
        // Large batches carry small items, so that every one fits a frame.
        26 => {
            let len = random_batch_len(rng);
            Request::WrapBatch {
                key: random_name(rng, names),
                items: (0..len)
                    .map(|_| WrapItem {
                        plaintext: SecretBytes::new(vec![0x5a; *rng.pick(&[0, 1, 16])]),
                        context: batch_context(rng, len),
                    })
                    .collect(),
            }
        }
        27 => {
            let len = random_batch_len(rng);
            Request::UnwrapBatch {
                key: rng.chance(50).then(|| random_name(rng, names)),
                items: (0..len)
                    .map(|_| UnwrapItem {
                        ciphertext: Ciphertext::new(if len > 10 {
                            blobs.first().cloned().unwrap_or_default()
                        } else {
                            random_ciphertext(rng, blobs)
                        }),
                        context: batch_context(rng, len),
                    })
                    .collect(),
            }
        }
        // One oversized item: the whole batch is refused before any work.
        28 => Request::WrapBatch {
            key: random_name(rng, names),
            items: vec![WrapItem {
                plaintext: SecretBytes::new(vec![0x5a; plaintext_len]),
                context: random_context(rng),
            }],
        },
        // Unit names and ids around systemd's rules (templates, `/`, `..`,
        // the length limit), for admins and others.
        29 => Request::WrapCredential {
            key: random_name(rng, names),
            unit: rng
                .pick(&[
                    "fuzz.service",
                    "x@.service",
                    "a/b.service",
                    "../x.service",
                    "",
                    "noextension",
                ])
                .to_string(),
            credential: rng
                .pick(&["secret", "", ".", "..", "a/b", "\n"])
                .to_string(),
            plaintext: SecretBytes::new(vec![0x5a; plaintext_len]),
        },
        // Admin only; PINs around the rule (8 to 32 bytes of UTF-8), PCRs
        // past 23, repeated or unsorted. A Reseal is a dry run (see above).
        30 => Request::Unlock {
            pin: random_pin(rng),
            reseal: rng.chance(50),
        },
        31 => Request::Reseal {
            pin: rng.chance(70).then(|| random_pin(rng)),
            pcrs: rng.chance(50).then(|| random_pcrs(rng)),
            new_pin: rng.chance(30).then(|| random_pin(rng)),
            dry_run: true,
        },
        32 => Request::ChangePin {
            pin: random_pin(rng),
            new_pin: random_pin(rng),
        },
        _ => Request::DescribeKey {
            key: random_name(rng, names),
        },
    }
}

/// PINs around the rule: too short, the edges, too long, not UTF-8, with
/// a newline (which the daemon does not strip), empty, random bytes.
fn random_pin(rng: &mut Rng) -> SecretBytes {
    let len = *rng.pick(&[0, 7, 8, 32, 33, 1000]);
    let bytes = match rng.below(4) {
        0 => random_bytes_of(rng, len),
        1 => b"12345678\n".to_vec(),
        2 => b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8".to_vec(),
        _ => vec![b'7'; len],
    };
    SecretBytes::new(bytes)
}

/// PCR selections: none, the usual, unsorted and repeated, out of range.
fn random_pcrs(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => Vec::new(),
        1 => vec![7],
        2 => vec![14, 7, 7],
        3 => vec![23, 24, 255],
        _ => (0..rng.below(40)).map(|_| rng.byte()).collect(),
    }
}

/// Rotation periods around the limits: 0, under an hour, an hour, 90
/// days, past 100 years, the largest.
fn random_period(rng: &mut Rng) -> u64 {
    let random = rng.next_u64();
    *rng.pick(&[
        0,
        1,
        3599,
        3600,
        7_776_000,
        100 * 365 * 86_400 + 1,
        u64::MAX,
        random,
    ])
}

/// Descriptions around the limit (1024 bytes) and with control characters.
fn random_description(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => String::new(),
        1 => "d".repeat(*rng.pick(&[1, 1024, 1025, 10_000])),
        2 => "line\n\u{1b}[31mred\0".to_string(),
        _ => (0..rng.below(40))
            .map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('x'))
            .collect(),
    }
}

/// Tags: none, a few, past the limit of 32, with bad names and long values.
fn random_tags(rng: &mut Rng) -> BTreeMap<String, String> {
    let count = *rng.pick(&[0, 1, 3, 32, 33]);
    (0..count)
        .map(|i| {
            let name = match rng.below(4) {
                0 => "t".repeat(65),
                1 => format!("bad name {i}"),
                _ => format!("tag-{i}"),
            };
            let value = if rng.chance(10) {
                "v".repeat(257)
            } else {
                format!("value {i}")
            };
            (name, value)
        })
        .collect()
}

/// The context of an item of a batch of `len` items: any for a small
/// batch, the seeds' for a large one.
fn batch_context(rng: &mut Rng, len: usize) -> EncryptionContext {
    if len > 10 {
        crate::corpus::seed_context()
    } else {
        random_context(rng)
    }
}

/// Batch sizes: empty, small, at the limit and past it.
fn random_batch_len(rng: &mut Rng) -> usize {
    *rng.pick(&[
        0,
        1,
        2,
        10,
        agent_proto::MAX_BATCH_ITEMS,
        agent_proto::MAX_BATCH_ITEMS + 1,
    ])
}

/// Settings of a new key with hostile values.
fn random_settings(rng: &mut Rng) -> KeySettings {
    KeySettings {
        rotation: match rng.below(3) {
            0 => RotationSetting::DaemonDefault,
            1 => RotationSetting::Off,
            _ => RotationSetting::Every(random_period(rng)),
        },
        description: random_description(rng),
        tags: random_tags(rng),
    }
}

/// A frame of [`random_request`] with a random id, in a random protocol
/// version that can express the request (the newest when no older one can).
pub fn random_request_frame(rng: &mut Rng, names: &[&str], blobs: &[Vec<u8>]) -> Frame {
    let request = random_request(rng, names, blobs);
    let id = rng.next_u64();
    let proto = *rng.pick(&[
        agent_proto::v1::VERSION,
        agent_proto::v2::VERSION,
        agent_proto::v3::VERSION,
        agent_proto::v4::VERSION,
        agent_proto::v5::VERSION,
        agent_proto::PROTOCOL_VERSION,
    ]);
    let encode = |proto| {
        encode_request(
            Envelope {
                proto,
                id,
                op: request.clone(),
            },
            MAX_FRAME,
        )
    };
    // An older version that cannot express the request: the newest.
    let bytes = encode(proto)
        .or_else(|_| encode(agent_proto::PROTOCOL_VERSION))
        .map(|f| f.to_vec())
        .unwrap_or_default();
    Frame { bytes, valid: true }
}

/// The next frame from `seeds`: `valid_percent` of them unchanged (so a
/// server keeps the connection open for the next), a few pure random
/// bytes, the rest one to four mutations of a seed, with the prefix fixed
/// up most of the time so the body reaches the decoder.
pub fn next_frame(rng: &mut Rng, seeds: &[Vec<u8>], valid_percent: u64) -> Frame {
    let seed = rng.pick(seeds);
    if rng.chance(valid_percent) {
        return Frame {
            bytes: seed.clone(),
            valid: true,
        };
    }
    if rng.chance(3) {
        let mut bytes: Vec<u8> = (0..rng.below(256)).map(|_| rng.byte()).collect();
        if rng.chance(50) {
            fix_prefix(&mut bytes);
        }
        return Frame {
            bytes,
            valid: false,
        };
    }
    let mut bytes = seed.clone();
    let mut prefix_set = false;
    for _ in 0..1 + rng.below(4) {
        prefix_set |= mutate_once(rng, &mut bytes, seeds);
    }
    if !prefix_set && rng.chance(80) {
        fix_prefix(&mut bytes);
    }
    Frame {
        bytes,
        valid: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_frames() {
        let seeds = crate::corpus::request_frames("fuzz", "other", &[]);
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..1000)
                .map(|_| next_frame(&mut rng, &seeds, 15).bytes)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn frames_are_valid_mutated_and_lying_in_useful_proportions() {
        let seeds = crate::corpus::request_frames("fuzz", "other", &[]);
        let mut rng = Rng::new(7);
        let frames: Vec<Frame> = (0..10_000)
            .map(|_| next_frame(&mut rng, &seeds, 15))
            .collect();
        let valid = frames.iter().filter(|f| f.valid).count();
        let answered = frames.iter().filter(|f| f.expects_one_answer()).count();
        assert!((1000..2000).contains(&valid), "{valid}");
        assert!(answered > 6000 && answered < 9500, "{answered}");
    }

    #[test]
    fn structured_requests_cover_every_request_but_rotate_root_in_every_version() {
        let mut rng = Rng::new(11);
        let mut seen = std::collections::BTreeSet::new();
        let mut protos = std::collections::BTreeSet::new();
        for _ in 0..5_000 {
            let frame = random_request_frame(&mut rng, &["fuzz", "demo"], &[]);
            assert!(!frame.bytes.is_empty(), "every structured request encodes");
            let request = agent_proto::codec::decode_request(&frame.bytes[4..]).unwrap();
            protos.insert(request.proto);
            seen.insert(request.op.operation());
        }
        let missing: Vec<_> = agent_proto::Operation::ALL
            .into_iter()
            .filter(|op| !seen.contains(op) && *op != agent_proto::Operation::RotateRoot)
            .collect();
        assert!(missing.is_empty(), "never generated: {missing:?}");
        assert_eq!(protos.len(), agent_proto::PROTOCOL_VERSION as usize);
    }
}
