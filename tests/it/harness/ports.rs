//! Loopback TCP ports for swtpm and the relay: finding a free pair, waiting
//! until a process itself listens on them, and holding them closed.

use std::fs;
use std::net::TcpListener;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

/// Two consecutive free loopback ports (swtpm's TPM port and, next to it,
/// its control port, as the swtpm TCTI expects).
pub fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = first.local_addr().expect("local addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Waits until `child` itself listens on `port` and `port + 1`. A plain
/// connect is not enough: between [`free_port_pair`] and swtpm's bind,
/// another test's swtpm may take the port, and this one would then exit
/// while a connect still succeeded.
pub fn wait_for_port(port: u16, child: &mut Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited with {status} before listening on {port}"
            ));
        }
        if listens_on(child.id(), port) && listens_on(child.id(), port + 1) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(format!("{what} did not listen on port {port} within 10 s"))
}

/// Whether process `pid` holds a socket listening on loopback `port`:
/// the socket's inode in /proc/net/tcp is one of the process's fds.
fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... uid timeout inode
            (fields.len() > 9 && fields[1] == local && fields[3] == "0A")
                .then(|| format!("socket:[{}]", fields[9]))
        })
        .collect();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
    })
}

/// Keeps loopback `port` bound but not listening, for as long as the value
/// lives: connections to it are refused at once, and no other test's swtpm
/// can take the port. Fails the test if someone already listens there.
pub fn refuse_port(port: u16) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    let socket = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("a TCP socket");
    // Past connections of a stopped swtpm may linger in TIME_WAIT.
    setsockopt(&socket, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&socket),
        &SockaddrIn::new(127, 0, 0, 1, port),
    )
    .unwrap_or_else(|e| panic!("hold port {port} closed: {e}"));
    socket
}
