//! Who is on the other end of a connection, as the kernel tells it.
//!
//! Identity comes from the socket itself (SO_PEERCRED, SO_PEERGROUPS), which
//! the client cannot forge. The systemd unit is read from
//! `/proc/PID/cgroup` right after connecting; a process cannot move itself
//! out of its unit's cgroup, and a PID recycled within that instant is the
//! only way to confuse it, which is why grants by uid or group are the
//! stronger form.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// A connected client's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Effective user id of the process that connected.
    pub uid: u32,
    /// Effective group id of the process that connected.
    pub gid: u32,
    /// Process id, when the kernel reports one.
    pub pid: Option<i32>,
    /// Supplementary groups of the process when it connected.
    pub groups: Vec<u32>,
    /// The systemd unit the process runs in (`postgresql.service`), if any.
    pub unit: Option<String>,
}

impl Peer {
    /// Reads the identity of the peer of a connected Unix socket.
    pub fn of_socket(socket: &impl AsFd, uid: u32, gid: u32, pid: Option<i32>) -> io::Result<Peer> {
        let groups = peer_groups(socket)?;
        let unit = pid
            .filter(|&pid| pid > 0)
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
            .and_then(|cgroup| unit_from_cgroup(&cgroup));
        Ok(Peer {
            uid,
            gid,
            pid,
            groups,
            unit,
        })
    }

    /// Whether the peer's primary or a supplementary group is `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The peer's supplementary groups at connect time (SO_PEERGROUPS, Linux 4.13+).
fn peer_groups(socket: &impl AsFd) -> io::Result<Vec<u32>> {
    let fd = socket.as_fd().as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>())
            .map_err(|_| io::Error::other("too many supplementary groups"))?;
        // SAFETY: `groups` is a live buffer of exactly `len` bytes, and the
        // kernel writes at most `len` bytes and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the buffer was too small and `len` says how large it must be.
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() && count <= 65536 {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

/// The systemd unit in a `/proc/PID/cgroup` text: the innermost path
/// component naming a service or scope, on the unified (`0::`) or the
/// `name=systemd` hierarchy.
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    let path = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| *path != "/")
        .or_else(|| {
            text.lines()
                .find_map(|line| line.split_once(":name=systemd:").map(|(_, path)| path))
        })?;
    path.split('/')
        .rfind(|part| part.ends_with(".service") || part.ends_with(".scope"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_from_unified_and_hybrid_hierarchies() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/postgresql.service\n").as_deref(),
            Some("postgresql.service")
        );
        assert_eq!(
            unit_from_cgroup("0::/system.slice/app.service/worker\n").as_deref(),
            Some("app.service")
        );
        assert_eq!(
            unit_from_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        let hybrid =
            "12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/backup.service\n0::/\n";
        assert_eq!(unit_from_cgroup(hybrid).as_deref(), Some("backup.service"));
        assert_eq!(unit_from_cgroup("0::/\n"), None);
        assert_eq!(unit_from_cgroup("garbage"), None);
    }

    #[test]
    fn peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let peer = Peer::of_socket(&a, uid, gid, Some(std::process::id() as i32)).unwrap();
        let mut expected: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = peer.groups.clone();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
    }
}
