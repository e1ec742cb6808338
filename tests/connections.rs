//! The daemon's shared resources under a peer that tries to hold them all:
//! the memory of partly received frames, and how a refused connection
//! learns `Busy`.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use agent_proto::codec::{self, DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use agent_proto::{AsyncClient, Client, ClientError, Envelope, ErrorCode, Request, Response};
use common::{Daemon, DaemonFiles, Swtpm, cli};

/// The frame of a `Ping` with id `id`.
fn ping_frame(id: u64) -> Vec<u8> {
    codec::encode_frame(&Envelope::new(id, Request::Ping), DEFAULT_MAX_FRAME)
        .expect("encode")
        .to_vec()
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn almost_complete_large_frames_cannot_commit_the_daemons_memory() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(
        &tpm.tcti(),
        "max_connections = 400\nframe_timeout_secs = 60\nidle_timeout_secs = 120",
    );
    let daemon = Daemon::start(&files).expect("start hostkmsd");
    let mut client = daemon.client();
    client.create_key("conn-mem").expect("create");
    let (before, _) = memory_of(daemon.pid());

    // 250 frames announcing max_frame, each sent but for its last 1000 bytes.
    let len = DEFAULT_MAX_FRAME as usize;
    let holders: Vec<_> = (0..250u64)
        .map(|n| {
            let socket = daemon.socket.clone();
            thread::spawn(move || {
                let mut stream = UnixStream::connect(&socket).expect("connect");
                let mut frame = (len as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&1u16.to_le_bytes());
                frame.extend_from_slice(&(1000 + n).to_le_bytes());
                frame.resize(LENGTH_PREFIX + len - 1000, 0xa5);
                stream
                    .set_write_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                let _ = stream.write_all(&frame);
                stream
            })
        })
        .collect();
    let streams: Vec<UnixStream> = holders
        .into_iter()
        .map(|h| h.join().expect("holder"))
        .collect();
    // Give the daemon time to take in what it will take.
    thread::sleep(Duration::from_secs(2));

    // Normal requests are served meanwhile.
    client.ping().expect("ping while frames are held");
    let context = agent_proto::EncryptionContext::new();
    let wrapped = client
        .wrap("conn-mem", &[7u8; 4096], &context)
        .expect("a small wrap while frames are held");
    let mut other = daemon.client();
    let back = other
        .unwrap(wrapped.ciphertext.as_bytes(), &context, None)
        .expect("unwrap on a fresh connection while frames are held");
    assert_eq!(back.plaintext.expose(), &[7u8; 4096][..]);

    let (during, peak) = memory_of(daemon.pid());
    eprintln!("daemon memory: {before} KiB before, peak {peak} KiB, {during} KiB while held");
    assert!(
        peak.saturating_sub(before) < 100 * 1024,
        "250 partial 1 MiB frames took the daemon from {before} KiB to a peak of \
         {peak} KiB ({during} KiB now)"
    );

    // Those refused were told Busy, with their request's id.
    let mut busy = 0;
    for (n, mut stream) in streams.into_iter().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        if let Ok(Some(body)) = codec::read_frame(&mut stream, DEFAULT_MAX_FRAME) {
            let reply: Envelope<Response> = codec::decode_body(&body).expect("a reply");
            match reply.op {
                Response::Error(e) if e.code == ErrorCode::Busy => {
                    assert_eq!(reply.id, 1000 + n as u64, "the Busy echoes the request id");
                    assert!(e.message.contains("max_frame_memory"), "{}", e.message);
                    busy += 1;
                }
                other => panic!("unexpected answer to a partial frame: {other:?}"),
            }
        }
    }
    assert!(busy > 0, "no partial frame was refused");
    client.ping().expect("the daemon serves on");
}

/// What one refused client saw.
fn outcome(result: Result<(), ClientError>) -> String {
    match result {
        Ok(()) => "admitted".to_string(),
        Err(ClientError::Daemon {
            code: ErrorCode::Busy,
            ..
        }) => "busy".to_string(),
        Err(e) => format!("{e}"),
    }
}

#[test]
fn refused_connections_are_answered_busy_by_every_client() {
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(&tpm.tcti(), "max_connections = 1");
    let daemon = Daemon::start(&files).expect("start hostkmsd");
    // Hold the one slot (the readiness probe may still hold it a moment).
    let mut holder = loop {
        let mut client = daemon.client();
        if client.ping().is_ok() {
            break client;
        }
        thread::sleep(Duration::from_millis(20));
    };

    // The raw answer carries the refused request's own id.
    let mut raw = UnixStream::connect(&daemon.socket).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&ping_frame(77)).expect("send");
    let body = codec::read_frame(&mut raw, DEFAULT_MAX_FRAME)
        .expect("an answer")
        .expect("one frame");
    let reply: Envelope<Response> = codec::decode_body(&body).expect("decodes");
    assert_eq!(reply.id, 77);
    match reply.op {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::Busy);
            assert!(e.message.contains("at most 1 connections"), "{}", e.message);
        }
        other => panic!("expected Busy, got {other:?}"),
    }

    // The CLI says busy and exits 3.
    let output = cli(&daemon.socket, &["ping"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.starts_with("hostkms: busy: hostkmsd serves at most 1 connections"),
        "{stderr}"
    );

    // The tokio client.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let socket = daemon.socket.clone();
    let seen = runtime.block_on(async move {
        let mut client = AsyncClient::connect(&socket).await?;
        client.ping().await
    });
    assert_eq!(outcome(seen), "busy");

    // 200 blocking clients, 8 at a time: every one sees Busy, none a
    // broken pipe or a mismatched id.
    let outcomes: Vec<String> = (0..8)
        .map(|_| {
            let socket = daemon.socket.clone();
            thread::spawn(move || {
                (0..25)
                    .map(|_| {
                        outcome(Client::connect(&socket).and_then(|mut client| {
                            client.set_timeout(Some(Duration::from_secs(10)))?;
                            client.ping()
                        }))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    let others: Vec<&String> = outcomes.iter().filter(|o| *o != "busy").collect();
    assert!(
        others.is_empty(),
        "{} of 200 refused clients did not see Busy: {others:?}",
        others.len()
    );
    holder
        .ping()
        .expect("the admitted connection is undisturbed");
}
