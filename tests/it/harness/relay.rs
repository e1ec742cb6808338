//! A recording TCP relay in front of swtpm, to check what crosses the TPM
//! interface.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use super::ports::free_port_pair;
use super::swtpm::Swtpm;

/// A TCP relay in front of swtpm that records every byte in both
/// directions, to check what crosses the TPM interface.
pub struct RecordingRelay {
    /// The port clients connect to; `port + 1` relays the control channel.
    pub port: u16,
    recorded: Arc<Mutex<Vec<u8>>>,
}

impl RecordingRelay {
    /// Relays `port` and `port + 1` to `tpm.port` and `tpm.port + 1`.
    pub fn start(tpm: &Swtpm) -> RecordingRelay {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        loop {
            let port = free_port_pair();
            let (Ok(command), Ok(control)) = (
                TcpListener::bind(("127.0.0.1", port)),
                TcpListener::bind(("127.0.0.1", port + 1)),
            ) else {
                continue;
            };
            relay(command, tpm.port, Arc::clone(&recorded));
            relay(control, tpm.port + 1, Arc::clone(&recorded));
            return RecordingRelay { port, recorded };
        }
    }

    /// The TCTI string that goes through the relay.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Everything relayed so far.
    pub fn recorded(&self) -> Vec<u8> {
        self.recorded.lock().expect("recording").clone()
    }
}

fn relay(listener: TcpListener, target: u16, recorded: Arc<Mutex<Vec<u8>>>) {
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            for (mut from, mut to) in [
                (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                ),
                (server, client),
            ] {
                let recorded = Arc::clone(&recorded);
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = to.shutdown(std::net::Shutdown::Write);
                                return;
                            }
                            Ok(n) => {
                                recorded
                                    .lock()
                                    .expect("recording")
                                    .extend_from_slice(&buf[..n]);
                                if to.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        }
    });
}
