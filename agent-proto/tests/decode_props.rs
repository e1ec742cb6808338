//! Property tests: whatever bytes arrive, decoding returns an error or a
//! message, never panics, and never holds more memory than the frame limit.

mod samples;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;

use agent_proto::codec::{self, DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use agent_proto::{
    Ciphertext, EncryptionContext, Envelope, FrameError, KeyType, Operation, Request, Response,
    SecretBytes, SignInput, v1, v2, v3, v4, v5,
};
use proptest::prelude::*;

/// Counts this thread's live heap bytes and their peak while a measurement runs.
struct MeteredAllocator;

thread_local! {
    static METERING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = METERING.try_with(|metering| {
        if metering.get() {
            LIVE.with(|live| {
                let now = live.get() + delta;
                live.set(now);
                PEAK.with(|peak| peak.set(peak.get().max(now)));
            });
        }
    });
}

// SAFETY: every block of memory comes from and goes back to `System`
// unchanged (same pointer, same layout), so `System` upholds GlobalAlloc's
// contract for us; the bookkeeping in `account` touches only const-initialised
// thread-local Cells, so it neither allocates (no re-entry) nor unwinds.
unsafe impl GlobalAlloc for MeteredAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        // SAFETY: the caller guarantees `layout` has a non-zero size
        // (GlobalAlloc::alloc's precondition), which `System` needs too.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        // SAFETY: `ptr` was returned by this allocator, i.e. by `System`
        // (alloc and realloc forward to it), with this same `layout`, as the
        // caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize - layout.size() as isize);
        // SAFETY: `ptr` came from `System` with `layout` (see dealloc), and the
        // caller guarantees `new_size` is non-zero and fits `layout`'s
        // alignment without overflowing isize, as `System.realloc` requires.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: MeteredAllocator = MeteredAllocator;

/// Runs `f` and returns the peak of heap bytes it held at once.
fn peak_heap<T>(f: impl FnOnce() -> T) -> usize {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    METERING.with(|m| m.set(true));
    let value = f();
    drop(value);
    METERING.with(|m| m.set(false));
    PEAK.with(|p| p.get()).max(0) as usize
}

/// The most a decode may hold: the frame limit (serde pre-sizes sequences up
/// to 1 MiB at most, checked against remaining bytes as it goes), plus a copy
/// of the body's byte strings, plus small change.
fn allowed_peak(body_len: usize) -> usize {
    DEFAULT_MAX_FRAME as usize + 2 * body_len + 64 * 1024
}

fn arbitrary_context() -> impl Strategy<Value = EncryptionContext> {
    proptest::collection::btree_map(".{0,12}", ".{0,24}", 0..4)
}

fn arbitrary_request() -> impl Strategy<Value = Request> {
    let name = "[A-Za-z0-9._-]{1,32}";
    let bytes = proptest::collection::vec(any::<u8>(), 0..256);
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Status),
        (
            proptest::option::of(name),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(after, limit)| Request::ListKeys { after, limit }),
        (name, arbitrary_key_type()).prop_map(|(name, key_type)| Request::CreateKey {
            name,
            key_type,
            settings: Default::default()
        }),
        (name, bytes.clone(), arbitrary_context()).prop_map(|(key, plaintext, context)| {
            Request::Wrap {
                key,
                plaintext: SecretBytes::new(plaintext),
                context,
            }
        }),
        (
            bytes.clone(),
            arbitrary_context(),
            proptest::option::of(name)
        )
            .prop_map(|(ciphertext, context, key)| Request::Unwrap {
                ciphertext: Ciphertext::new(ciphertext),
                context,
                key,
            }),
        (name, any::<u16>(), any::<bool>(), arbitrary_context()).prop_map(
            |(key, bytes, include_plaintext, context)| Request::GenerateDataKey {
                key,
                bytes,
                include_plaintext,
                context,
            }
        ),
        (
            bytes.clone(),
            arbitrary_context(),
            proptest::option::of(name)
        )
            .prop_map(|(ciphertext, context, key)| Request::Rewrap {
                ciphertext: Ciphertext::new(ciphertext),
                context,
                key,
                destination: None,
            }),
        (name, proptest::option::of(any::<u32>()))
            .prop_map(|(key, version)| Request::Revoke { key, version }),
        (name, any::<u32>())
            .prop_map(|(key, version)| Request::SetMinDecryptionVersion { key, version }),
        name.prop_map(|key| Request::Rotate { key }),
        name.prop_map(|key| Request::DescribeKey { key }),
        Just(Request::RotateRoot { pin: None }),
        Just(Request::TransportKey),
        (name, name).prop_map(|(key, destination)| Request::ExportKey { key, destination }),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|file| Request::ImportKey { file }),
        (name, bytes.clone()).prop_map(|(key, data)| Request::Mac {
            key,
            data: SecretBytes::new(data),
        }),
        (
            name,
            bytes.clone(),
            bytes.clone(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(key, data, tag, version)| Request::VerifyMac {
                key,
                data: SecretBytes::new(data),
                tag,
                version,
            }),
        (name, arbitrary_sign_input()).prop_map(|(key, input)| Request::Sign { key, input }),
        (
            name,
            arbitrary_sign_input(),
            bytes.clone(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(key, input, signature, version)| Request::Verify {
                key,
                input,
                signature,
                version,
            }),
        (name, proptest::option::of(any::<u32>()))
            .prop_map(|(key, version)| Request::GetPublicKey { key, version }),
        any::<u16>().prop_map(|bytes| Request::GenerateRandom { bytes }),
        arbitrary_v5_request(),
        arbitrary_v6_request(),
    ]
}

/// The requests appended in version 6, PINs of any bytes (the rule is the
/// daemon's to check, not the codec's).
fn arbitrary_v6_request() -> impl Strategy<Value = Request> {
    let pin = || proptest::collection::vec(any::<u8>(), 0..40).prop_map(SecretBytes::new);
    prop_oneof![
        (pin(), any::<bool>()).prop_map(|(pin, reseal)| Request::Unlock { pin, reseal }),
        (
            proptest::option::of(pin()),
            proptest::option::of(proptest::collection::vec(0u8..24, 0..4)),
            proptest::option::of(pin()),
            any::<bool>(),
        )
            .prop_map(|(pin, pcrs, new_pin, dry_run)| Request::Reseal {
                pin,
                pcrs,
                new_pin,
                dry_run,
            }),
        (pin(), pin()).prop_map(|(pin, new_pin)| Request::ChangePin { pin, new_pin }),
    ]
}

/// The requests of version 5: the appended ones, and `CreateKey` and
/// `Rewrap` with the fields version 5 gave them.
fn arbitrary_v5_request() -> impl Strategy<Value = Request> {
    let name = "[A-Za-z0-9._-]{1,32}";
    let bytes = proptest::collection::vec(any::<u8>(), 0..64);
    let tags = proptest::collection::btree_map("[a-z]{1,8}", ".{0,12}", 0..3);
    prop_oneof![
        (name, arbitrary_key_type(), arbitrary_settings()).prop_map(
            |(name, key_type, settings)| Request::CreateKey {
                name,
                key_type,
                settings,
            }
        ),
        (
            bytes.clone(),
            arbitrary_context(),
            proptest::option::of(name),
            proptest::option::of(arbitrary_destination()),
        )
            .prop_map(|(ciphertext, context, key, destination)| Request::Rewrap {
                ciphertext: Ciphertext::new(ciphertext),
                context,
                key,
                destination,
            }),
        (name, any::<u16>()).prop_map(|(key, days)| Request::ScheduleDeletion { key, days }),
        name.prop_map(|key| Request::CancelDeletion { key }),
        (name, proptest::option::of(any::<u64>()))
            .prop_map(|(key, period)| Request::SetRotationPeriod { key, period }),
        (
            name,
            proptest::option::of(".{0,24}"),
            tags,
            proptest::collection::vec("[a-z]{1,8}", 0..3),
        )
            .prop_map(|(key, description, set_tags, remove_tags)| {
                Request::UpdateKeyMetadata {
                    key,
                    description,
                    set_tags,
                    remove_tags,
                }
            }),
        (
            name,
            proptest::collection::vec((bytes.clone(), arbitrary_context()), 0..4)
        )
            .prop_map(|(key, items)| Request::WrapBatch {
                key,
                items: items
                    .into_iter()
                    .map(|(plaintext, context)| agent_proto::WrapItem {
                        plaintext: SecretBytes::new(plaintext),
                        context,
                    })
                    .collect(),
            }),
        (
            proptest::option::of(name),
            proptest::collection::vec((bytes, arbitrary_context()), 0..4)
        )
            .prop_map(|(key, items)| Request::UnwrapBatch {
                key,
                items: items
                    .into_iter()
                    .map(|(ciphertext, context)| agent_proto::UnwrapItem {
                        ciphertext: Ciphertext::new(ciphertext),
                        context,
                    })
                    .collect(),
            }),
    ]
}

fn arbitrary_settings() -> impl Strategy<Value = agent_proto::KeySettings> {
    let rotation = prop_oneof![
        Just(agent_proto::RotationSetting::DaemonDefault),
        Just(agent_proto::RotationSetting::Off),
        any::<u64>().prop_map(agent_proto::RotationSetting::Every),
    ];
    (
        rotation,
        ".{0,24}",
        proptest::collection::btree_map("[a-z]{1,8}", ".{0,12}", 0..3),
    )
        .prop_map(|(rotation, description, tags)| agent_proto::KeySettings {
            rotation,
            description,
            tags,
        })
}

fn arbitrary_destination() -> impl Strategy<Value = agent_proto::RewrapDestination> {
    (
        proptest::option::of("[A-Za-z0-9._-]{1,32}"),
        proptest::option::of(arbitrary_context()),
    )
        .prop_map(|(key, context)| agent_proto::RewrapDestination { key, context })
}

/// Whether version 4 (and so every older one) cannot express `request`:
/// one appended in version 5, a `CreateKey` with settings or a `Rewrap`
/// with a destination.
fn new_in_v5(request: &Request) -> bool {
    match request {
        Request::CreateKey { settings, .. } => *settings != agent_proto::KeySettings::default(),
        Request::Rewrap { destination, .. } => destination.is_some(),
        other => other.operation() >= Operation::ScheduleDeletion,
    }
}

fn arbitrary_key_type() -> impl Strategy<Value = KeyType> {
    proptest::sample::select(KeyType::ALL.to_vec())
}

fn arbitrary_sign_input() -> impl Strategy<Value = SignInput> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..128);
    prop_oneof![
        bytes
            .clone()
            .prop_map(|message| SignInput::Message(SecretBytes::new(message))),
        bytes.prop_map(SignInput::Digest),
    ]
}

/// Whether version 3 (and so 1 and 2) cannot express `request`: one of
/// the key-type requests of version 4, or a key of another type than
/// AES-256-GCM.
fn new_in_v4(request: &Request) -> bool {
    new_in_v5(request)
        || match request {
            Request::CreateKey { key_type, .. } => *key_type != KeyType::Aes256Gcm,
            other => other.operation() >= Operation::Mac,
        }
}

/// Every decoder a body may meet: the current shapes, and each version's.
fn decode_every_way(body: &[u8]) {
    let _ = codec::decode_body::<Request>(body);
    let _ = codec::decode_body::<Response>(body);
    let _ = codec::decode_request(body);
    let _ = codec::decode_response(body);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bodies_never_panic_or_overallocate(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let peak = peak_heap(|| decode_every_way(&body));
        prop_assert!(peak <= allowed_peak(body.len()), "decode held {peak} bytes for a {}-byte body", body.len());
    }

    #[test]
    fn bodies_behind_a_valid_header_never_panic_or_overallocate(
        proto in 1u16..=agent_proto::PROTOCOL_VERSION,
        variant in 0u32..30,
        rest in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        // A valid envelope header so the decoder gets past the version check.
        let mut body = proto.to_le_bytes().to_vec();
        body.extend_from_slice(&3u64.to_le_bytes());
        body.extend_from_slice(&variant.to_le_bytes());
        body.extend_from_slice(&rest);
        let peak = peak_heap(|| decode_every_way(&body));
        prop_assert!(peak <= allowed_peak(body.len()), "decode held {peak} bytes for a {}-byte body", body.len());
    }

    #[test]
    fn arbitrary_length_prefixes_never_allocate_past_the_limit(
        len in any::<u32>(),
        max in 0u32..=(4 * DEFAULT_MAX_FRAME),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut stream = len.to_be_bytes().to_vec();
        stream.extend_from_slice(&tail);
        let mut result = None;
        let peak = peak_heap(|| result = Some(codec::read_frame(&mut Cursor::new(&stream), max).map(|b| b.map(|b| b.len()))));
        match result.expect("ran") {
            Err(FrameError::Decode(err)) => {
                prop_assert!(len > max);
                prop_assert_eq!(err.code(), agent_proto::ErrorCode::FrameTooLarge);
                prop_assert!(peak < 1024, "refusing a frame allocated {peak} bytes");
            }
            Err(FrameError::Truncated { .. }) => {
                prop_assert!(len <= max && (len as usize) > tail.len());
                // The buffer grows as bytes arrive: a prefix alone commits
                // at most one read's window, never the declared length.
                prop_assert!(peak <= codec::BODY_STEP + 1024, "a truncated frame held {peak} bytes");
            }
            Ok(Some(got)) => {
                prop_assert!(len <= max && (len as usize) <= tail.len());
                prop_assert_eq!(got, len as usize);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn prefixes_within_the_limit_commit_memory_only_as_bytes_arrive(
        max in 1024u32..=(4 * DEFAULT_MAX_FRAME),
        fraction in 0.0f64..=1.0,
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let len = ((f64::from(max) * fraction) as u32).max(64);
        let mut stream = len.to_be_bytes().to_vec();
        stream.extend_from_slice(&tail);
        let peak = peak_heap(|| {
            let err = codec::read_frame(&mut Cursor::new(&stream), max).unwrap_err();
            assert!(matches!(err, FrameError::Truncated { .. }), "{err:?}");
        });
        // One read's window at most, never the declared length.
        prop_assert!(
            peak <= codec::BODY_STEP + 1024,
            "a {len}-byte prefix and {} bytes held {peak} bytes",
            tail.len()
        );
    }

    #[test]
    fn arbitrary_requests_round_trip(request in arbitrary_request(), id in any::<u64>()) {
        let envelope = Envelope::new(id, request);
        let frame = codec::encode_frame(&envelope, DEFAULT_MAX_FRAME).unwrap();
        let decoded: Envelope<Request> = codec::decode_body(&frame[LENGTH_PREFIX..]).unwrap();
        prop_assert_eq!(decoded, envelope);
    }

    #[test]
    fn corrupted_valid_frames_never_panic(
        which in 0..samples::requests().len(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let request = samples::requests().swap_remove(which);
        let frame = codec::encode_frame(&Envelope::new(1, request), DEFAULT_MAX_FRAME).unwrap();
        let mut body = frame[LENGTH_PREFIX..].to_vec();
        for (at, mask) in flips {
            let at = at % body.len();
            body[at] ^= mask;
        }
        body.truncate(cut % (body.len() + 1));
        let peak = peak_heap(|| decode_every_way(&body));
        prop_assert!(peak <= allowed_peak(body.len()));
    }
}

/// The meter itself must see allocations, or the bounds above prove nothing.
#[test]
fn the_meter_sees_a_large_allocation() {
    let peak = peak_heap(|| vec![1u8; 3 << 20]);
    assert!(peak >= 3 << 20, "meter saw only {peak} bytes");
    let body = {
        let frame = codec::encode_frame(
            &Envelope::new(1, v1::Response::Keys(Vec::new())),
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let mut body = frame[LENGTH_PREFIX..].to_vec();
        // The body ends with the key count, 0: it decodes to no keys, and a
        // count of 1 with no key after it is refused.
        let n = body.len();
        assert_eq!(
            codec::decode_body::<v1::Response>(&body).expect("the unpatched body decodes"),
            Envelope::new(1, v1::Response::Keys(Vec::new())),
        );
        assert_eq!(
            body[n - 8..],
            0u64.to_le_bytes(),
            "the body ends with the key count"
        );
        body[n - 8..].copy_from_slice(&1u64.to_le_bytes());
        assert!(
            codec::decode_body::<v1::Response>(&body).is_err(),
            "the last 8 bytes are the key count"
        );
        // Claim 2^40 keys: serde may pre-size, but within the frame limit.
        body[n - 8..].copy_from_slice(&(1u64 << 40).to_le_bytes());
        body
    };
    let mut decoded = None;
    let peak = peak_heap(|| {
        decoded = Some(codec::decode_body::<v1::Response>(&body).is_err());
    });
    assert_eq!(decoded, Some(true), "a claim of 2^40 keys is refused");
    assert!(peak <= allowed_peak(body.len()), "decode held {peak} bytes");
}

fn arbitrary_key_state() -> impl Strategy<Value = agent_proto::KeyState> {
    use agent_proto::KeyState;
    proptest::sample::select(vec![
        KeyState::Enabled,
        KeyState::Disabled,
        KeyState::Revoked,
        KeyState::PendingDeletion,
    ])
}

/// Version 5's fields of a key: description, tags, rotation period, next
/// rotation, deletion date.
type V5Fields = (
    String,
    std::collections::BTreeMap<String, String>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
);

fn arbitrary_v5_fields() -> impl Strategy<Value = V5Fields> {
    (
        ".{0,16}",
        proptest::collection::btree_map("[a-z]{1,8}", ".{0,8}", 0..3),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
}

fn arbitrary_key_info() -> impl Strategy<Value = agent_proto::KeyInfo> {
    (
        any::<[u8; 16]>(),
        "[a-z]{1,8}",
        any::<u64>(),
        0u32..4,
        arbitrary_key_type(),
        arbitrary_key_state(),
        arbitrary_v5_fields(),
    )
        .prop_map(
            |(
                id,
                name,
                created,
                versions,
                key_type,
                state,
                (description, tags, rotation_period, next_rotation, deletion_date),
            )| agent_proto::KeyInfo {
                id,
                name,
                created,
                state,
                latest_version: versions,
                min_decryption_version: 1,
                versions: (1..=versions)
                    .map(|version| agent_proto::VersionInfo {
                        version,
                        created,
                        state: agent_proto::VersionState::Enabled,
                        encryptions: u64::from(version),
                    })
                    .collect(),
                key_type,
                description,
                tags,
                rotation_period,
                next_rotation,
                deletion_date,
            },
        )
}

/// A key as a client of version 4 sees it, read back by a current one:
/// without the fields of version 5, and a key pending deletion disabled.
fn as_v4(key: &agent_proto::KeyInfo) -> agent_proto::KeyInfo {
    agent_proto::KeyInfo {
        state: match key.state {
            agent_proto::KeyState::PendingDeletion => agent_proto::KeyState::Disabled,
            state => state,
        },
        description: String::new(),
        tags: Default::default(),
        rotation_period: None,
        next_rotation: None,
        deletion_date: None,
        ..key.clone()
    }
}

/// A key as a client of version 3 or older sees it, read back by a current
/// one: as version 4 sees it, and without its type, so an AES-256-GCM key
/// as every older key was.
fn untyped(key: &agent_proto::KeyInfo) -> agent_proto::KeyInfo {
    agent_proto::KeyInfo {
        key_type: KeyType::Aes256Gcm,
        ..as_v4(key)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Every request version 1 can express survives the trip down to
    /// version 1 and back up, on the wire too; the only one it cannot is a
    /// ListKeys page.
    #[test]
    fn requests_convert_to_version_1_and_back_or_are_pages(request in arbitrary_request(), id in any::<u64>()) {
        match v1::Request::try_from(request.clone()) {
            Ok(old) => {
                prop_assert_eq!(Request::from(old), request.clone());
                let frame = codec::encode_request(Envelope { proto: 1, id, op: request.clone() }, DEFAULT_MAX_FRAME).unwrap();
                let back = codec::decode_request(&frame[LENGTH_PREFIX..]).unwrap();
                prop_assert_eq!(back, Envelope { proto: 1, id, op: request });
            }
            Err(_) => {
                let is_page = matches!(&request, Request::ListKeys { after, limit } if after.is_some() || limit.is_some());
                let appended = request.operation() >= Operation::RotateRoot || new_in_v4(&request);
                prop_assert!(is_page || appended, "{:?} did not convert", request);
                let sent = codec::encode_request(Envelope { proto: 1, id, op: request }, DEFAULT_MAX_FRAME);
                prop_assert!(sent.is_err());
            }
        }
    }

    /// A version-1 list is the last page of a version-2 one, and back; a page
    /// with more to follow does not go down to version 1.
    #[test]
    fn key_lists_convert_between_versions(
        keys in proptest::collection::vec(arbitrary_key_info(), 0..5),
        next in proptest::option::of("[a-z]{1,8}"),
        id in any::<u64>(),
    ) {
        let old_keys: Vec<v3::KeyInfo> = keys.iter().cloned().map(v3::KeyInfo::from).collect();
        let untyped_keys: Vec<agent_proto::KeyInfo> = keys.iter().map(untyped).collect();
        let up = Response::from(v1::Response::Keys(old_keys.clone()));
        prop_assert_eq!(&up, &Response::Keys(agent_proto::KeyPage { keys: untyped_keys.clone(), next: None }));
        prop_assert_eq!(v1::Response::try_from(up).unwrap(), v1::Response::Keys(old_keys));
        let page = Response::Keys(agent_proto::KeyPage { keys, next: next.clone() });
        let sent = codec::encode_response(Envelope { proto: 1, id, op: page.clone() }, DEFAULT_MAX_FRAME);
        match next {
            None => {
                let frame = sent.unwrap();
                prop_assert_eq!(
                    codec::decode_response(&frame[LENGTH_PREFIX..]).unwrap().op,
                    Response::Keys(agent_proto::KeyPage { keys: untyped_keys, next: None })
                );
            }
            Some(_) => prop_assert!(sent.is_err()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Every request version 3 can express survives the trip down to
    /// version 3 and back up unchanged, on the wire too; the ones it cannot
    /// are exactly the key-type requests of version 4 and a `CreateKey` of
    /// another type than AES-256-GCM, which are refused before they are
    /// sent, a refused `CreateKey` naming the type.
    #[test]
    fn requests_convert_to_version_3_and_back_unless_new_in_version_4(
        request in arbitrary_request(),
        id in any::<u64>(),
    ) {
        match v3::Request::try_from(request.clone()) {
            Ok(old) => {
                prop_assert!(!new_in_v4(&request), "{:?} went down to version 3", request);
                prop_assert_eq!(Request::from(old), request.clone());
                let frame = codec::encode_request(Envelope { proto: 3, id, op: request.clone() }, DEFAULT_MAX_FRAME).unwrap();
                let back = codec::decode_request(&frame[LENGTH_PREFIX..]).unwrap();
                prop_assert_eq!(back, Envelope { proto: 3, id, op: request });
            }
            Err(err) => {
                prop_assert!(new_in_v4(&request), "{:?} did not convert: {}", request, err);
                if let Request::CreateKey { key_type, settings, .. } = &request {
                    if *settings == agent_proto::KeySettings::default() {
                        prop_assert!(err.to_string().contains(key_type.as_str()), "{}", err);
                    }
                }
                for proto in [1, 2, 3] {
                    let sent = codec::encode_request(Envelope { proto, id, op: request.clone() }, DEFAULT_MAX_FRAME);
                    prop_assert!(sent.is_err(), "{:?} went out in version {}", request, proto);
                }
            }
        }
    }

    /// A key's metadata loses its type on the way down to versions 1 to 3
    /// and reads back as an AES-256-GCM key (every key those versions
    /// knew); version 4 carries the type.
    #[test]
    fn key_info_loses_its_type_below_version_4_and_keeps_it_in_4(
        key in arbitrary_key_info(),
        id in any::<u64>(),
    ) {
        let old = v3::KeyInfo::from(key.clone());
        prop_assert_eq!(agent_proto::KeyInfo::from(old.clone()), untyped(&key));
        let response = Response::Key(key.clone());
        prop_assert_eq!(v3::Response::try_from(response.clone()).unwrap(), v3::Response::Key(old.clone()));
        prop_assert_eq!(v2::Response::try_from(response.clone()).unwrap(), v2::Response::Key(old.clone()));
        prop_assert_eq!(v1::Response::try_from(response.clone()).unwrap(), v1::Response::Key(old));
        for proto in 1..=agent_proto::PROTOCOL_VERSION {
            let frame = codec::encode_response(Envelope { proto, id, op: response.clone() }, DEFAULT_MAX_FRAME).unwrap();
            let back = codec::decode_response(&frame[LENGTH_PREFIX..]).unwrap();
            let expected = match proto {
                1..=3 => Response::Key(untyped(&key)),
                4 => Response::Key(as_v4(&key)),
                _ => response.clone(),
            };
            prop_assert_eq!(back.op, expected);
        }
    }

    /// Every request version 4 can express survives the trip down to
    /// version 4 and back up unchanged, on the wire too; the ones it
    /// cannot are exactly those appended in version 5, a `CreateKey` with
    /// settings and a `Rewrap` with a destination, refused before they are
    /// sent in versions 1 to 4.
    #[test]
    fn requests_convert_to_version_4_and_back_unless_new_in_version_5(
        request in arbitrary_request(),
        id in any::<u64>(),
    ) {
        match v4::Request::try_from(request.clone()) {
            Ok(old) => {
                prop_assert!(!new_in_v5(&request), "{:?} went down to version 4", request);
                prop_assert_eq!(Request::from(old.clone()), request.clone());
                let frame = codec::encode_request(Envelope { proto: 4, id, op: request.clone() }, DEFAULT_MAX_FRAME).unwrap();
                // The same bytes as the frozen shape's.
                let frozen = codec::encode_frame(&Envelope { proto: 4, id, op: old }, DEFAULT_MAX_FRAME).unwrap();
                prop_assert_eq!(frame.as_slice(), frozen.as_slice());
                let back = codec::decode_request(&frame[LENGTH_PREFIX..]).unwrap();
                prop_assert_eq!(back, Envelope { proto: 4, id, op: request });
            }
            Err(err) => {
                prop_assert!(new_in_v5(&request), "{:?} did not convert: {}", request, err);
                prop_assert!(err.to_string().contains("version 4"), "{}", err);
                for proto in 1..=4 {
                    let sent = codec::encode_request(Envelope { proto, id, op: request.clone() }, DEFAULT_MAX_FRAME);
                    prop_assert!(sent.is_err(), "{:?} went out in version {}", request, proto);
                }
            }
        }
    }

    /// Every request version 5 can express survives the trip down to
    /// version 5 and back up unchanged, as the frozen shape's bytes; the
    /// ones it cannot are exactly those appended in version 6, refused
    /// before they are sent in versions 1 to 5, the refusal naming the
    /// version in use.
    #[test]
    fn requests_convert_to_version_5_and_back_unless_appended_in_version_6(
        request in arbitrary_request(),
        id in any::<u64>(),
    ) {
        let appended = request.operation() >= Operation::Unlock;
        match v5::Request::try_from(request.clone()) {
            Ok(old) => {
                prop_assert!(!appended, "{:?} went down to version 5", request);
                prop_assert_eq!(Request::from(old.clone()), request.clone());
                let frame = codec::encode_request(Envelope { proto: 5, id, op: request.clone() }, DEFAULT_MAX_FRAME).unwrap();
                let frozen = codec::encode_frame(&Envelope { proto: 5, id, op: old }, DEFAULT_MAX_FRAME).unwrap();
                prop_assert_eq!(frame.as_slice(), frozen.as_slice());
                let back = codec::decode_request(&frame[LENGTH_PREFIX..]).unwrap();
                prop_assert_eq!(back, Envelope { proto: 5, id, op: request });
            }
            Err(err) => {
                prop_assert!(appended, "{:?} did not convert: {}", request, err);
                prop_assert!(err.to_string().contains("version 5"), "{}", err);
                prop_assert!(err.to_string().contains("needs protocol version 6"), "{}", err);
                for proto in 1..=5 {
                    match codec::encode_request(Envelope { proto, id, op: request.clone() }, DEFAULT_MAX_FRAME) {
                        Err(agent_proto::EncodeError::NotInVersion { proto: said, reason }) => {
                            prop_assert_eq!(said, proto);
                            prop_assert!(reason.contains(&format!("protocol version {proto} ")), "{}", reason);
                        }
                        other => prop_assert!(false, "{:?} went out in version {}: {:?}", request, proto, other.is_ok()),
                    }
                }
            }
        }
    }

    /// Every request of version 6 survives the wire in version 6.
    #[test]
    fn version_6_requests_round_trip_on_the_wire(request in arbitrary_v6_request(), id in any::<u64>()) {
        let envelope = Envelope { proto: 6, id, op: request };
        let frame = codec::encode_request(envelope.clone(), DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(codec::decode_request(&frame[LENGTH_PREFIX..]).unwrap(), envelope);
    }

    /// Every request of version 5 survives the wire in version 5.
    #[test]
    fn version_5_requests_round_trip_on_the_wire(request in arbitrary_v5_request(), id in any::<u64>()) {
        let envelope = Envelope { proto: 5, id, op: request };
        let frame = codec::encode_request(envelope.clone(), DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(codec::decode_request(&frame[LENGTH_PREFIX..]).unwrap(), envelope);
    }
}

/// What a response keeps through version 5: a status without its sealing
/// (and a locked daemon's root key not loaded), and `Locked` as
/// `TpmUnavailable`.
fn through_v5(response: &Response) -> Response {
    match response {
        Response::Status(status) => {
            let mut old = status.clone();
            old.root_key_loaded = status.root_key_loaded && !status.sealing.lock.is_locked();
            old.sealing = Default::default();
            Response::Status(old)
        }
        Response::Error(reply) if reply.code == agent_proto::ErrorCode::Locked => Response::error(
            agent_proto::ErrorCode::TpmUnavailable,
            reply.message.clone(),
        ),
        other => other.clone(),
    }
}

/// Responses appended in version 6, which older versions cannot carry.
fn appended_in_v6(response: &Response) -> bool {
    matches!(response, Response::Unlocked(_) | Response::Resealed(_))
}

#[test]
fn every_sample_response_of_version_5_converts_to_version_5_and_back() {
    let mut responses = samples::responses();
    responses.push(Response::error(
        agent_proto::ErrorCode::Locked,
        "the daemon is locked: run hostkms unlock",
    ));
    let mut converted = 0;
    for response in responses {
        match v5::Response::try_from(response.clone()) {
            Ok(old) => {
                assert_eq!(Response::from(old), through_v5(&response));
                converted += 1;
            }
            Err(err) => {
                assert!(appended_in_v6(&response), "{response:?} did not convert");
                assert!(err.to_string().contains("version 5"), "{err}");
            }
        }
    }
    assert!(converted > 10);
}

#[test]
fn a_locked_status_goes_to_a_version_5_client_without_its_key_loaded() {
    let status = samples::responses()
        .into_iter()
        .find_map(|response| match response {
            Response::Status(status) => Some(status),
            _ => None,
        })
        .expect("a sample status");
    assert!(status.root_key_loaded && status.sealing.lock.is_locked());
    for proto in 1..=5 {
        let frame = codec::encode_response(
            Envelope {
                proto,
                id: 3,
                op: Response::Status(status.clone()),
            },
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let Response::Status(back) = codec::decode_response(&frame[LENGTH_PREFIX..]).unwrap().op
        else {
            panic!("not a status");
        };
        assert!(!back.root_key_loaded, "version {proto}");
        assert_eq!(back.sealing, agent_proto::SealingStatus::default());
    }
    let old = v5::StatusInfo::from(agent_proto::StatusInfo {
        sealing: Default::default(),
        ..status
    });
    assert!(old.root_key_loaded, "an unlocked daemon's key stays loaded");
}

/// What a response keeps through version 4: keys as version 4 sees them,
/// and `KeyPendingDeletion` as `KeyDisabled`.
fn through_v4(response: &Response) -> Response {
    match &through_v5(response) {
        Response::Key(key) => Response::Key(as_v4(key)),
        Response::Keys(page) => Response::Keys(agent_proto::KeyPage {
            keys: page.keys.iter().map(as_v4).collect(),
            next: page.next.clone(),
        }),
        Response::Error(reply) if reply.code == agent_proto::ErrorCode::KeyPendingDeletion => {
            Response::error(agent_proto::ErrorCode::KeyDisabled, reply.message.clone())
        }
        other => other.clone(),
    }
}

/// Responses appended in version 5 or later, which older versions cannot
/// carry.
fn appended_in_v5(response: &Response) -> bool {
    appended_in_v6(response)
        || matches!(
            response,
            Response::WrappedBatch(_) | Response::UnwrappedBatch(_)
        )
}

#[test]
fn every_sample_response_of_version_4_converts_to_version_4_and_back() {
    let mut responses = samples::responses();
    responses.push(Response::error(
        agent_proto::ErrorCode::KeyPendingDeletion,
        "key \"k\" is scheduled for deletion",
    ));
    for response in responses {
        match v4::Response::try_from(response.clone()) {
            Ok(old) => assert_eq!(Response::from(old), through_v4(&response)),
            Err(_) => assert!(appended_in_v5(&response), "{response:?} did not convert"),
        }
    }
}

/// What a response keeps through version 3: keys lose their type (and
/// read back as AES-256-GCM keys).
fn through_v3(response: &Response) -> Response {
    match &through_v4(response) {
        Response::Key(key) => Response::Key(untyped(key)),
        Response::Keys(page) => Response::Keys(agent_proto::KeyPage {
            keys: page.keys.iter().map(untyped).collect(),
            next: page.next.clone(),
        }),
        other => other.clone(),
    }
}

/// What a response keeps through version 2 (or 1): what it keeps through
/// version 3, and a status loses the fields of version 3 (and reads back as
/// "the daemon did not say").
fn through_v2(response: &Response) -> Response {
    match through_v3(response) {
        Response::Status(status) => Response::Status(v2::StatusInfo::from(status).into()),
        other => other,
    }
}

/// Responses appended in version 4 or later, which older versions cannot
/// carry.
fn appended_in_v4(response: &Response) -> bool {
    appended_in_v5(response)
        || matches!(
            response,
            Response::Mac(_)
                | Response::Verified(_)
                | Response::Signature(_)
                | Response::PublicKey(_)
                | Response::Random(_)
        )
}

/// Responses appended in version 3 or later, which versions 1 and 2 cannot
/// carry.
fn appended_in_v3(response: &Response) -> bool {
    appended_in_v4(response)
        || matches!(
            response,
            Response::RootRotated(_) | Response::TransportKey(_) | Response::Exported(_)
        )
}

#[test]
fn every_sample_response_but_a_partial_page_converts_to_version_1_and_back() {
    for response in samples::responses() {
        let partial = matches!(&response, Response::Keys(page) if page.next.is_some());
        match v1::Response::try_from(response.clone()) {
            Ok(old) => assert_eq!(Response::from(old), through_v2(&response)),
            Err(_) => assert!(
                partial || appended_in_v3(&response),
                "{response:?} did not convert"
            ),
        }
    }
}

#[test]
fn every_sample_response_of_version_2_converts_to_version_2_and_back() {
    for response in samples::responses() {
        match v2::Response::try_from(response.clone()) {
            Ok(old) => assert_eq!(Response::from(old), through_v2(&response)),
            Err(_) => assert!(appended_in_v3(&response), "{response:?} did not convert"),
        }
    }
}

#[test]
fn every_sample_response_of_version_3_converts_to_version_3_and_back() {
    for response in samples::responses() {
        match v3::Response::try_from(response.clone()) {
            Ok(old) => assert_eq!(Response::from(old), through_v3(&response)),
            Err(_) => assert!(appended_in_v4(&response), "{response:?} did not convert"),
        }
    }
}
