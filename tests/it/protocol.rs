//! Protocol evolution against a real daemon: a frozen version-1 client (the
//! specification's example frames, sent byte for byte) and a frozen
//! version-2 one still work against the current daemon, and a store of 10,000 keys is listed in
//! pages by a version-2 client while a version-1 `ListKeys` gets a clear
//! error, which the audit trail records as the failure it was.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{
    Daemon, DaemonConfig, DaemonFiles, Harness, Swtpm, cli, ensure_journald, field,
    journal_of_stopped, ok, with_id,
};
use agent_proto::codec::{self, DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use agent_proto::{
    Client, EncryptionContext, Envelope, ErrorCode, PROTOCOL_VERSION, Request, Response, v1, v2, v3,
};

/// The audit event of a refused request (`systemd/hostkms.catalog`).
const REQUEST_FAILED: &str = "4fecfa9090084923a2dbb30f5ea9d08a";

/// The hex bytes between `<!-- NAME -->` and `<!-- /NAME -->` in the
/// protocol's specification: what a version-1 client written from it sends.
fn spec_frame(name: &str) -> Vec<u8> {
    let spec = include_str!("../../agent-proto/README.md");
    let open = format!("<!-- {name} -->");
    let close = format!("<!-- /{name} -->");
    let start = spec.find(&open).expect("example in the spec") + open.len();
    let end = start + spec[start..].find(&close).expect("end of the example");
    let digits: String = spec[start..end]
        .lines()
        .filter(|line| !line.starts_with("```"))
        .flat_map(|line| line.split('#').next().unwrap_or("").chars())
        .filter(char::is_ascii_hexdigit)
        .collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A raw connection that speaks like a version-1 client built before
/// version 2 existed: it writes frames as given and decodes every answer
/// with the frozen version-1 shapes, refusing any other `proto`.
struct FrozenV1Client(UnixStream);

impl FrozenV1Client {
    fn connect(daemon: &Daemon) -> FrozenV1Client {
        let stream = UnixStream::connect(&daemon.socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        FrozenV1Client(stream)
    }

    /// Sends `frame` byte for byte; returns the answer's raw frame and its
    /// version-1 decoding.
    fn exchange(&mut self, frame: &[u8]) -> (Vec<u8>, Envelope<v1::Response>) {
        self.0.write_all(frame).expect("send");
        let body = codec::read_frame(&mut self.0, DEFAULT_MAX_FRAME)
            .expect("read an answer")
            .expect("an answer, not a closed connection");
        assert_eq!(
            u16::from_le_bytes([body[0], body[1]]),
            v1::VERSION,
            "a version-1 request is answered in version 1"
        );
        let answer = codec::decode_body::<v1::Response>(&body).expect("a version-1 answer");
        let mut raw = (body.len() as u32).to_be_bytes().to_vec();
        raw.extend_from_slice(&body);
        (raw, answer)
    }
}

#[test]
fn a_frozen_version_2_client_gets_version_2_answers_from_the_current_daemon() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut stream = UnixStream::connect(&daemon.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut ask = |id: u64, op: v2::Request| {
        let frame = codec::encode_frame(
            &Envelope {
                proto: v2::VERSION,
                id,
                op,
            },
            DEFAULT_MAX_FRAME,
        )
        .expect("encode");
        stream.write_all(&frame).expect("send");
        let body = codec::read_frame(&mut stream, DEFAULT_MAX_FRAME)
            .expect("read")
            .expect("an answer");
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), v2::VERSION);
        codec::decode_body::<v2::Response>(&body).expect("a version-2 answer")
    };
    // Status in version 2's shape: no recovery or rollback fields, and the
    // body is consumed exactly (decode_body refuses trailing bytes).
    let answer = ask(3, v2::Request::Status);
    assert!(
        matches!(&answer.op, v2::Response::Status(s) if s.newest_protocol == PROTOCOL_VERSION),
        "{answer:?}"
    );
    let answer = ask(
        4,
        v2::Request::ListKeys {
            after: None,
            limit: Some(1),
        },
    );
    assert!(
        matches!(&answer.op, v2::Response::Keys(page) if page.keys.is_empty()),
        "{answer:?}"
    );
}

#[test]
fn a_frozen_version_3_client_keeps_working_against_the_version_4_daemon() {
    let Harness {
        tpm: _tpm,
        files: _files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut admin = Client::connect(&daemon.socket).expect("connect");
    admin
        .create_key_of_type("rel", agent_proto::KeyType::Ed25519)
        .expect("an ed25519 key");
    let mut stream = UnixStream::connect(&daemon.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut ask = |id: u64, op: v3::Request| {
        let frame = codec::encode_frame(
            &Envelope {
                proto: v3::VERSION,
                id,
                op,
            },
            DEFAULT_MAX_FRAME,
        )
        .expect("encode");
        stream.write_all(&frame).expect("send");
        let body = codec::read_frame(&mut stream, DEFAULT_MAX_FRAME)
            .expect("read")
            .expect("an answer");
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), v3::VERSION);
        // decode_body refuses trailing bytes: a KeyInfo with the type
        // appended would not decode.
        codec::decode_body::<v3::Response>(&body).expect("a version-3 answer")
    };
    // A version-3 CreateKey makes an AES key, described in version 3's shape.
    let answer = ask(
        1,
        v3::Request::CreateKey {
            name: "db".to_string(),
        },
    );
    assert!(
        matches!(&answer.op, v3::Response::Key(key) if key.name == "db"),
        "{answer:?}"
    );
    assert_eq!(
        admin.describe_key("db").expect("describe").key_type,
        agent_proto::KeyType::Aes256Gcm
    );
    let context = EncryptionContext::new();
    let answer = ask(
        2,
        v3::Request::Wrap {
            key: "db".to_string(),
            plaintext: agent_proto::SecretBytes::from(&b"hello"[..]),
            context: context.clone(),
        },
    );
    assert!(
        matches!(&answer.op, v3::Response::Wrapped(w) if w.key == "db"),
        "{answer:?}"
    );
    // The listing shows the ed25519 key too, without its type.
    let answer = ask(
        3,
        v3::Request::ListKeys {
            after: None,
            limit: None,
        },
    );
    let v3::Response::Keys(page) = &answer.op else {
        panic!("not a list: {answer:?}");
    };
    let names: Vec<&str> = page.keys.iter().map(|key| key.name.as_str()).collect();
    assert_eq!(names, ["db", "rel"]);
    // A wrap with the ed25519 key: error code 18 with the daemon's words,
    // which an older library reads as a code it does not know.
    let answer = ask(
        4,
        v3::Request::Wrap {
            key: "rel".to_string(),
            plaintext: agent_proto::SecretBytes::from(&b"hello"[..]),
            context,
        },
    );
    let v3::Response::Error(reply) = &answer.op else {
        panic!("not a refusal: {answer:?}");
    };
    assert_eq!(reply.code.number(), 18, "{reply:?}");
    assert!(reply.message.contains("ed25519"), "{reply:?}");
    // The connection is still good, and Status says which version the
    // daemon speaks: the newest, whatever the request's.
    let answer = ask(5, v3::Request::Status);
    assert!(
        matches!(&answer.op, v3::Response::Status(s) if s.newest_protocol == agent_proto::PROTOCOL_VERSION),
        "{answer:?}"
    );
}

fn v1_frame(id: u64, op: v1::Request) -> Vec<u8> {
    codec::encode_frame(
        &Envelope {
            proto: v1::VERSION,
            id,
            op,
        },
        DEFAULT_MAX_FRAME,
    )
    .expect("encode")
    .to_vec()
}

#[test]
fn the_specs_version_1_frames_work_against_the_current_daemon() {
    let Harness {
        tpm: _tpm,
        files,
        daemon,
    } = Harness::start(DaemonConfig::new());
    let mut admin = daemon.client();
    let status = admin.status().expect("status");
    assert_eq!(
        (status.oldest_protocol, status.newest_protocol),
        (1, PROTOCOL_VERSION),
        "Status advertises every version the daemon speaks"
    );
    for name in ["app-db", "app-dc", "app-dd"] {
        admin.create_key(name).expect("create");
    }

    let mut old = FrozenV1Client::connect(&daemon);
    // The spec's Wrap request, answered like the spec's response: the same
    // bytes up to the ciphertext, whose key id and nonce are this key's.
    let (raw, answer) = old.exchange(&spec_frame("request-frame"));
    let example = spec_frame("response-frame");
    assert_eq!(
        raw.len(),
        example.len(),
        "the answer has the example's length"
    );
    let header = LENGTH_PREFIX + 2 + 8 + 4 + 8 + 6 + 4 + 8;
    assert_eq!(raw[..header], example[..header], "{raw:02x?}");
    assert_eq!(answer.id, 7);
    let v1::Response::Wrapped(wrapped) = answer.op else {
        panic!("expected Wrapped, got {:?}", answer.op)
    };
    assert_eq!((wrapped.key.as_str(), wrapped.version), ("app-db", 1));
    assert_eq!(&wrapped.ciphertext.as_bytes()[..5], b"HKMS\x01");
    let context = EncryptionContext::from([("table".to_string(), "users".to_string())]);
    let unwrapped = admin
        .unwrap(wrapped.ciphertext.as_bytes(), &context, Some("app-db"))
        .expect("the version-1 ciphertext unwraps");
    assert_eq!(unwrapped.plaintext.expose(), b"hello");

    // The spec's version-1 ListKeys: every key, in one Vec.
    let (_, answer) = old.exchange(&spec_frame("v1-list-request-frame"));
    assert_eq!(answer.id, 8);
    let v1::Response::Keys(keys) = answer.op else {
        panic!("expected Keys, got {:?}", answer.op)
    };
    let names: Vec<&str> = keys.iter().map(|key| key.name.as_str()).collect();
    assert_eq!(names, ["app-db", "app-dc", "app-dd"]);

    // The other version-1 shapes still decode as version 1 on the same
    // connection: Ping, Status, DescribeKey.
    let (_, answer) = old.exchange(&v1_frame(20, v1::Request::Ping));
    assert_eq!((answer.id, answer.op), (20, v1::Response::Pong));
    let (_, answer) = old.exchange(&v1_frame(21, v1::Request::Status));
    assert!(
        matches!(&answer.op, v1::Response::Status(s) if s.newest_protocol == agent_proto::PROTOCOL_VERSION),
        "{answer:?}"
    );
    let describe = v1::Request::DescribeKey {
        key: "app-dc".into(),
    };
    let (_, answer) = old.exchange(&v1_frame(22, describe));
    assert!(
        matches!(&answer.op, v1::Response::Key(k) if k.name == "app-dc"),
        "{answer:?}"
    );

    // A request variant version 1 does not have is BadRequest, saying the
    // daemon is too old, in version 1 and with the request's id.
    let mut unknown = v1_frame(23, v1::Request::Ping);
    unknown[LENGTH_PREFIX + 10..LENGTH_PREFIX + 14]
        .copy_from_slice(&v1::REQUEST_VARIANTS.to_le_bytes());
    let (_, answer) = old.exchange(&unknown);
    assert_eq!(answer.id, 23);
    let v1::Response::Error(reply) = answer.op else {
        panic!("expected an error, got {:?}", answer.op)
    };
    assert_eq!(reply.code, ErrorCode::BadRequest);
    assert!(
        reply.message.starts_with(agent_proto::UNKNOWN_REQUEST),
        "{}",
        reply.message
    );

    // The spec's version-2 ListKeys: one key after app-db, more to follow.
    let mut new = UnixStream::connect(&daemon.socket).expect("connect");
    new.write_all(&spec_frame("v2-list-request-frame"))
        .expect("send");
    let body = codec::read_frame(&mut new, DEFAULT_MAX_FRAME)
        .expect("read")
        .expect("an answer");
    let answer = codec::decode_response(&body).expect("a version-2 answer");
    assert_eq!((answer.proto, answer.id), (2, 9));
    let Response::Keys(page) = answer.op else {
        panic!("expected Keys, got {:?}", answer.op)
    };
    let names: Vec<&str> = page.keys.iter().map(|key| key.name.as_str()).collect();
    assert_eq!(names, ["app-dc"]);
    assert_eq!(page.next.as_deref(), Some("app-dc"));

    // The CLI's frame limit is settable, within the daemon's own bounds.
    let out = cli(&files.socket, &["--max-frame", "1000", "ping"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = ok(cli(
        &files.socket,
        &["--max-frame", "4194304", "list", "--json"],
    ));
    let listed: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(3));

    // A page of no keys is a mistake, not an empty answer.
    let err = admin.list_page(None, Some(0)).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    let after_last = admin.list_page(Some("app-dd".into()), Some(5)).unwrap();
    assert!(after_last.keys.is_empty() && after_last.next.is_none());
}

/// How many keys the large-store test makes.
const MANY: usize = 10_000;
/// Requests in flight at once while creating them: enough to keep the
/// daemon busy, few enough that neither side's socket buffer fills.
const WINDOW: usize = 64;

/// The name of key `i`: long enough that 10,000 of them (111 bytes of
/// `KeyInfo` each) exceed the default 1 MiB frame, as the issue's store did.
fn bulk_name(i: usize) -> String {
    format!("bulk-key-of-the-protocol-test-{i:05}")
}

/// Creates `MANY` keys over one admin connection, pipelined: the fastest
/// way through the socket, since every create is its own transaction and
/// the round trips would otherwise add up.
fn create_many(client: &mut Client) {
    let mut sent = 0;
    let mut answered = 0;
    while answered < MANY {
        while sent < MANY && sent - answered < WINDOW {
            client
                .send(Request::CreateKey {
                    name: bulk_name(sent),
                    key_type: agent_proto::KeyType::Aes256Gcm,
                    settings: Default::default(),
                })
                .expect("send CreateKey");
            sent += 1;
        }
        let answer = client.receive().expect("answer to CreateKey");
        assert!(matches!(answer.op, Response::Key(_)), "{:?}", answer.op);
        answered += 1;
    }
}

/// A TPM and a state dir holding `MANY` keys, made through the socket once
/// and kept under the target dir (as `benches/startup.rs` keeps its own):
/// each create copies the store's in-memory index, so making 10,000 keys
/// takes minutes on a loaded machine, while loading them takes a second.
/// A cache the daemon no longer loads (an older format) is made again.
struct BulkStore {
    dir: PathBuf,
}

impl BulkStore {
    fn get() -> BulkStore {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("protocol-{MANY}-keys"));
        let store = BulkStore { dir };
        if !store.dir.join("populated").exists() {
            store.populate();
        }
        store
    }

    /// Makes the keys with the state dir on tmpfs when there is one (every
    /// create is a durable transaction: on a disk the syncs alone take
    /// minutes), then copies it into the cache.
    fn populate(&self) {
        let _ = fs::remove_dir_all(&self.dir);
        fs::create_dir_all(&self.dir).expect("cache dir");
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        let scratch = tempfile::Builder::new()
            .prefix("hostkms-test-")
            .tempdir_in(if Path::new("/dev/shm").is_dir() {
                Path::new("/dev/shm")
            } else {
                self.dir.as_path()
            })
            .expect("scratch dir");
        fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        let tpm = Swtpm::start_in(&self.dir.join("tpm"));
        let mut files = self.files(&tpm);
        files.state_dir = scratch.path().join("state");
        files.write_config(&tpm.tcti(), &DaemonConfig::new());
        let daemon = Daemon::start(&files).expect("start hostkmsd");
        let started = Instant::now();
        create_many(&mut daemon.client());
        eprintln!(
            "made {MANY} keys in {:.1} s (once; kept in {})",
            started.elapsed().as_secs_f64(),
            self.dir.display()
        );
        let (exit, log) = daemon.stop();
        assert!(exit.success(), "{log}");
        drop(tpm);
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(&files.state_dir)
            .arg(self.dir.join("state"))
            .status()
            .expect("run cp");
        assert!(copied.success(), "copying the state dir into the cache");
        fs::write(self.dir.join("populated"), b"").expect("marker");
    }

    /// Daemon files whose state dir is the cached one.
    fn files(&self, tpm: &Swtpm) -> DaemonFiles {
        let mut files = DaemonFiles::new(&tpm.tcti(), &DaemonConfig::new());
        files.state_dir = self.dir.join("state");
        files.write_config(&tpm.tcti(), &DaemonConfig::new());
        files
    }

    /// The TPM of the store, and its daemon started with `env`; made again
    /// once when the cached store does not start.
    fn start(self, env: &[(&str, &str)]) -> (Swtpm, DaemonFiles, Daemon) {
        let tpm = Swtpm::start_in(&self.dir.join("tpm"));
        let files = self.files(&tpm);
        match Daemon::start_with_env(&files, &[], env) {
            Ok(daemon) => (tpm, files, daemon),
            Err(log) => {
                eprintln!("the cached store did not start, making it again: {log}");
                drop(tpm);
                self.populate();
                let tpm = Swtpm::start_in(&self.dir.join("tpm"));
                let files = self.files(&tpm);
                let daemon = Daemon::start_with_env(&files, &[], env).expect("start hostkmsd");
                (tpm, files, daemon)
            }
        }
    }
}

#[test]
fn ten_thousand_keys_page_for_version_2_and_are_a_clear_audited_error_for_version_1() {
    ensure_journald();
    let started = Instant::now();
    let (_tpm, files, daemon) = BulkStore::get().start(&[("HOSTKMS_LOG_TARGET", "journal")]);
    let journal = daemon.journal_scope();
    let mut admin = daemon.client();
    let ready_in = started.elapsed();

    // A version-2 client lists every key, in pages.
    let started = Instant::now();
    let keys = admin.list_keys().expect("list every key");
    let listed_in = started.elapsed();
    let names: Vec<String> = keys.into_iter().map(|key| key.name).collect();
    let expected: Vec<String> = (0..MANY).map(bulk_name).collect();
    assert_eq!(names, expected, "every key once, in name order");
    let first = admin
        .list_page(None, Some(100))
        .expect("a page of 100 keys");
    assert_eq!(first.keys.len(), 100);
    assert_eq!(first.next, Some(bulk_name(99)));
    let last = admin
        .list_page(Some(bulk_name(MANY - 2)), Some(100))
        .expect("the last page");
    assert_eq!(last.keys.len(), 1);
    assert_eq!(last.next, None);

    // Asking version 2 for every key at once is the same clear error, with
    // what to do instead.
    let err = admin.list_page(None, None).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err}");
    assert!(err.to_string().contains("fewer keys a page"), "{err}");

    // The CLI's `list` pages too.
    let out = ok(cli(&files.socket, &["list", "--json"]));
    let listed: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    let listed = listed.as_array().expect("an array of keys");
    assert_eq!(listed.len(), MANY);
    assert_eq!(
        listed[MANY - 1]["name"].as_str(),
        Some(bulk_name(MANY - 1).as_str())
    );

    // A version-1 ListKeys of them all exceeds the frame: a clear error on a
    // connection that stays open, never a dropped one.
    let mut old = FrozenV1Client::connect(&daemon);
    let (_, answer) = old.exchange(&spec_frame("v1-list-request-frame"));
    assert_eq!(answer.id, 8);
    let v1::Response::Error(reply) = answer.op else {
        panic!("expected an error, got {:?}", answer.op)
    };
    assert_eq!(reply.code, ErrorCode::FrameTooLarge, "{}", reply.message);
    for words in [
        &format!("{MANY} keys")[..],
        "exceeds the frame",
        "protocol 2",
    ] {
        assert!(
            reply.message.contains(words),
            "{words:?}: {}",
            reply.message
        );
    }
    let (_, answer) = old.exchange(&v1_frame(30, v1::Request::Ping));
    assert_eq!(answer.op, v1::Response::Pong, "the connection stays usable");

    // The journal records that ListKeys as the failure the client got.
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    let entries = journal_of_stopped(&journal);
    let failed_lists: Vec<_> = with_id(&entries, REQUEST_FAILED)
        .into_iter()
        .filter(|e| field(e, "HOSTKMS_OP") == Some("list"))
        .collect();
    assert_eq!(
        failed_lists.len(),
        2,
        "the version-1 ListKeys and the all-at-once version-2 one are audited as failed: {failed_lists:#?}"
    );
    for failed in failed_lists {
        assert_eq!(field(failed, "HOSTKMS_ERROR"), Some("frame-too-large"));
    }
    eprintln!(
        "{MANY} keys: daemon ready in {:.1} s, listed by version 2 in pages in {:.2} s",
        ready_in.as_secs_f64(),
        listed_in.as_secs_f64()
    );
}

/// The specification's request frames of versions 4 to 6, byte for byte:
/// the daemon reads every one as the request it is (whatever it then
/// answers: a key of the example may not exist here), in the frame's own
/// version, on one connection that stays open.
#[test]
fn the_specs_version_4_to_6_request_frames_are_read_by_the_daemon() {
    let harness = Harness::start(DaemonConfig::new());
    let mut stream = UnixStream::connect(&harness.daemon.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let spec = include_str!("../../agent-proto/README.md");
    let names: Vec<&str> = spec
        .split("<!-- ")
        .filter_map(|rest| rest.split(" -->").next())
        .filter(|name| {
            (name.starts_with("v4-") || name.starts_with("v5-") || name.starts_with("v6-"))
                && name.ends_with("request-frame")
        })
        .collect();
    assert_eq!(names.len(), 7 + 9 + 3, "{names:?}");
    for name in names {
        let frame = spec_frame(name);
        let proto = u16::from_le_bytes([frame[4], frame[5]]);
        let id = u64::from_le_bytes(frame[6..14].try_into().unwrap());
        stream.write_all(&frame).expect("send");
        let body = codec::read_frame(&mut stream, DEFAULT_MAX_FRAME)
            .expect("read")
            .unwrap_or_else(|| panic!("{name}: the daemon closed the connection"));
        let answer = codec::decode_response(&body).expect("decode");
        assert_eq!((answer.proto, answer.id), (proto, id), "{name}");
        if let Response::Error(reply) = &answer.op {
            assert!(
                !matches!(
                    reply.code,
                    ErrorCode::BadRequest
                        | ErrorCode::UnsupportedVersion
                        | ErrorCode::FrameTooLarge
                ),
                "{name}: {reply:?}"
            );
        }
    }
}
