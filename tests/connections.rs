//! The daemon's shared resources under a peer that tries to hold them all:
//! the memory of partly received frames.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use agent_proto::codec::{self, DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use agent_proto::{Envelope, ErrorCode, Response};
use common::{Daemon, DaemonFiles, Swtpm};

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
