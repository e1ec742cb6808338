//! Who is on the other end of a connection, as the kernel tells it.
//!
//! Identity comes from the socket itself (SO_PEERCRED, SO_PEERGROUPS), which
//! the client cannot forge. The systemd unit comes from the peer's cgroup,
//! read through a pidfd that pins the process: `SO_PEERPIDFD` (Linux 6.5+)
//! names the very process that connected; on older kernels `pidfd_open` on
//! the SO_PEERCRED pid, right after accept, pins it (a pid that was reused
//! between the peer's exit and that call is the remaining, small window).
//! After reading `/proc/PID/cgroup` the daemon checks through the pidfd that
//! the same process is still there; if it is not, or no pidfd could be had,
//! the peer has no unit and only uid and group grants can match it.
//!
//! The unit is attributed the way systemd's `sd_pid_get_unit` does it: skip
//! the leading slices, and the first component after them is the unit;
//! everything below it, delegated subtrees included, belongs to that unit. A
//! process inside `user@1000.service` is in unit `user@1000.service`; the
//! unit its user manager runs it in is its *user unit* (`sd_pid_get_user_unit`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// `SO_PEERPIDFD` (Linux 6.5+): a pidfd of the process that connected. Not
/// yet in the libc crate; 77 on the architectures Debian builds hostkms for.
const SO_PEERPIDFD: libc::c_int = 77;
/// The longest unit name systemd accepts (`UNIT_NAME_MAX` - 1).
const UNIT_NAME_MAX: usize = 255;

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
    /// The system manager's unit the process runs in (`postgresql.service`,
    /// or `user@1000.service` for everything a user manager runs), if any.
    pub unit: Option<String>,
    /// The user manager's unit the process runs in, inside
    /// `user@UID.service` (or a login session), if any.
    pub user_unit: Option<String>,
    /// Why `unit` is `None`, when it is.
    pub unit_unknown: Option<UnitUnknown>,
}

/// Why a peer has no unit: the audit records it (`HOSTKMS_PEER_UNIT_UNKNOWN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitUnknown {
    /// The process that connected had exited (been reaped) before its
    /// cgroup could be read and confirmed.
    ProcessExited,
    /// The kernel gave no pidfd for it (no pid, another pid namespace, or a
    /// kernel without pidfds), so its cgroup could not be pinned.
    NoPidfd,
    /// Its `/proc/PID/cgroup` could not be read (e.g. `ProtectProc=` hides it).
    CgroupUnreadable,
    /// Its cgroup is in no systemd unit (e.g. the root cgroup).
    NoUnit,
}

impl UnitUnknown {
    /// The value of `HOSTKMS_PEER_UNIT_UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitUnknown::ProcessExited => "process-exited",
            UnitUnknown::NoPidfd => "no-pidfd",
            UnitUnknown::CgroupUnreadable => "cgroup-unreadable",
            UnitUnknown::NoUnit => "no-unit",
        }
    }
}

impl Peer {
    /// Reads the identity of the peer of a connected Unix socket, whose
    /// SO_PEERCRED values are `uid`, `gid` and `pid`.
    pub fn of_socket(socket: &impl AsFd, uid: u32, gid: u32, pid: Option<i32>) -> io::Result<Peer> {
        let groups = peer_groups(socket)?;
        let cgroup = match peer_pidfd(socket) {
            PeerPidfd::Pinned { pidfd, pid } => pinned_cgroup(&pidfd, pid),
            PeerPidfd::Exited => Err(UnitUnknown::ProcessExited),
            PeerPidfd::Unsupported => cgroup_by_pid(pid),
        };
        let (attribution, unit_unknown) = match cgroup {
            Ok(text) => {
                let attribution = cgroup_path(&text)
                    .map(|path| attribute(shift(path, manager_root())))
                    .unwrap_or_default();
                let unknown = attribution.unit.is_none().then_some(UnitUnknown::NoUnit);
                (attribution, unknown)
            }
            Err(why) => (Attribution::default(), Some(why)),
        };
        Ok(Peer {
            uid,
            gid,
            pid,
            groups,
            unit: attribution.unit,
            user_unit: attribution.user_unit,
            unit_unknown,
        })
    }

    /// Whether the peer's primary or a supplementary group is `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// What `SO_PEERPIDFD` gave.
enum PeerPidfd {
    /// A pidfd of the connecting process, and its pid in our namespace.
    Pinned { pidfd: OwnedFd, pid: i32 },
    /// The connecting process is gone.
    Exited,
    /// The kernel has no `SO_PEERPIDFD` (before 6.5), or no pid for it.
    Unsupported,
}

/// Set (debug builds only) to act as a kernel without `SO_PEERPIDFD`, so
/// that the tests run the fallback of Linux before 6.5 here.
#[cfg(debug_assertions)]
pub const NO_PEERPIDFD_ENV: &str = "HOSTKMS_TEST_NO_PEERPIDFD";

/// Whether the kernel names the process that connected to `socket`
/// (`SO_PEERPIDFD`, Linux 6.5+). Without it, the peer's unit was read from
/// whatever process had the connector's pid after accept, which may be
/// another process if the connector exited and its pid was reused.
pub fn names_connector(socket: &impl AsFd) -> bool {
    !matches!(peer_pidfd(socket), PeerPidfd::Unsupported)
}

/// The command name (`/proc/PID/comm`) and effective uid of the process
/// with `pid`, pinned by a pidfd while they are read so that they are that
/// process's.
pub fn pinned_comm_and_uid(pid: i32) -> Option<(String, u32)> {
    let pidfd = pidfd_open(pid).ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    still_there(&pidfd).ok()?;
    // "Uid:\treal\teffective\tsaved\tfs"
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())?;
    Some((comm.trim_end_matches('\n').to_string(), uid))
}

/// The pidfd of the process that connected, from the socket itself.
fn peer_pidfd(socket: &impl AsFd) -> PeerPidfd {
    #[cfg(debug_assertions)]
    if std::env::var_os(NO_PEERPIDFD_ENV).is_some() {
        return PeerPidfd::Unsupported;
    }
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a live c_int and `len` its exact size; the kernel
    // writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => PeerPidfd::Exited,
            _ => PeerPidfd::Unsupported,
        };
    }
    if fd < 0 {
        return PeerPidfd::Unsupported;
    }
    // SAFETY: `fd` (>= 0) is the new descriptor getsockopt(SO_PEERPIDFD)
    // just created for this process; nothing else holds it, so the OwnedFd
    // is its only owner and closes it exactly once.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    match pidfd_pid(&pidfd) {
        Some(pid) if pid > 0 => PeerPidfd::Pinned { pidfd, pid },
        // -1: the process has exited and been reaped.
        Some(-1) => PeerPidfd::Exited,
        // 0: in a pid namespace we cannot see into.
        _ => PeerPidfd::Unsupported,
    }
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo/FD` (`Pid:`).
fn pidfd_pid(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// The fallback for kernels without `SO_PEERPIDFD` (Debian 12's 6.1):
/// pins the process by the SO_PEERCRED pid with `pidfd_open`, then reads
/// its cgroup. The pid may have been reused between the peer's exit and
/// this call; that window is what `SO_PEERPIDFD` closes.
fn cgroup_by_pid(pid: Option<i32>) -> Result<String, UnitUnknown> {
    let pid = pid.filter(|&pid| pid > 0).ok_or(UnitUnknown::NoPidfd)?;
    let pidfd = pidfd_open(pid).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => UnitUnknown::ProcessExited,
        _ => UnitUnknown::NoPidfd,
    })?;
    pinned_cgroup(&pidfd, pid)
}

/// `pidfd_open(pid, 0)`: a descriptor that pins the process with `pid`.
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes two integers (a pid and flags 0) and no
    // pointer, so no memory of ours is read or written; any pid is valid
    // input (a wrong one gives -1).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: `fd` (>= 0) is the new descriptor pidfd_open just created for
    // this process; nothing else holds it, so the OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads `/proc/PID/cgroup`, then confirms through `pidfd` that the process
/// it pins is still there, so the text read was that process's and not a
/// later one's that reused the pid.
fn pinned_cgroup(pidfd: &OwnedFd, pid: i32) -> Result<String, UnitUnknown> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"));
    let alive = still_there(pidfd);
    match (text, alive) {
        (Ok(text), Ok(())) => Ok(text),
        (_, Err(why)) => Err(why),
        // Mid-exit, a read can fail with ENOENT or ESRCH while the pidfd
        // still answers.
        (Err(e), Ok(())) if e.kind() == io::ErrorKind::NotFound => Err(UnitUnknown::ProcessExited),
        (Err(e), Ok(())) if e.raw_os_error() == Some(libc::ESRCH) => {
            Err(UnitUnknown::ProcessExited)
        }
        (Err(_), Ok(())) => Err(UnitUnknown::CgroupUnreadable),
    }
}

/// Whether the process `pidfd` pins still exists (a zombie counts: its pid
/// cannot be reused until it is reaped).
fn still_there(pidfd: &OwnedFd) -> Result<(), UnitUnknown> {
    // SAFETY: pidfd_send_signal with signal 0 only checks that the process
    // exists (and that we may signal it); it sends nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    match io::Error::last_os_error().raw_os_error() {
        // Alive, but not ours to signal: another user's process.
        Some(libc::EPERM) => Ok(()),
        Some(libc::ESRCH) => Err(UnitUnknown::ProcessExited),
        _ => Err(UnitUnknown::NoPidfd),
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

/// The cgroup path systemd tracks a process by, from a `/proc/PID/cgroup`
/// text: the unified (`0::`) hierarchy's, unless that is the root and the
/// legacy `name=systemd` hierarchy has one (hybrid set-ups).
pub fn cgroup_path(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| *path != "/")
        .or_else(|| {
            text.lines()
                .find_map(|line| line.split_once(":name=systemd:").map(|(_, path)| path))
        })
}

/// The cgroup the system manager (PID 1) treats as its root, as systemd's
/// `cg_get_root_path` finds it: PID 1's cgroup without `/init.scope`. It is
/// `/` on a host; in a container without a cgroup namespace it is the
/// container's cgroup, which the container's units lie below.
fn manager_root() -> &'static str {
    static ROOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        std::fs::read_to_string("/proc/1/cgroup")
            .ok()
            .and_then(|text| cgroup_path(&text).map(str::to_string))
            .map(|path| {
                let root = path.strip_suffix("/init.scope").unwrap_or(&path);
                root.to_string()
            })
            .unwrap_or_default()
    })
}

/// `path` relative to the manager's `root` (systemd's `cg_shift_path`):
/// unchanged when the root is `/` or the path lies elsewhere.
fn shift<'a>(path: &'a str, root: &str) -> &'a str {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return path;
    }
    match path.strip_prefix(root) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

/// The units a cgroup path belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    /// The system manager's unit (`sd_pid_get_unit`).
    pub unit: Option<String>,
    /// The user manager's unit (`sd_pid_get_user_unit`).
    pub user_unit: Option<String>,
}

/// Attributes a cgroup path to its units by systemd's rules
/// (`cg_path_get_unit`, `cg_path_get_user_unit` in systemd's
/// cgroup-util.c): leading slices are skipped and the first component after
/// them is the unit; below a user manager (`user@UID.service`) or a login
/// session (`session-ID.scope`), the same rule gives the user unit.
pub fn attribute(path: &str) -> Attribution {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let system = skip_slices(&components);
    let user = skip_user_manager(system).or_else(|| skip_session(system));
    Attribution {
        unit: unit_of(system),
        user_unit: user.and_then(|rest| unit_of(skip_slices(rest))),
    }
}

/// The components after the leading slices.
fn skip_slices<'a, 'b>(components: &'a [&'b str]) -> &'a [&'b str] {
    let slices = components
        .iter()
        .take_while(|c| c.len() >= "x.slice".len() && c.ends_with(".slice"))
        .take_while(|c| unit_name_valid(unescape(c), false))
        .count();
    &components[slices..]
}

/// The unit the first component names, when it is a valid unit name and not
/// a slice.
fn unit_of(components: &[&str]) -> Option<String> {
    let first = components.first()?;
    if first.len() < 3 {
        return None;
    }
    let unit = unescape(first);
    (unit_name_valid(unit, true) && !unit.ends_with(".slice")).then(|| unit.to_string())
}

/// The components below `user@UID.service`, when the path goes through it.
fn skip_user_manager<'a, 'b>(components: &'a [&'b str]) -> Option<&'a [&'b str]> {
    let (first, rest) = components.split_first()?;
    let uid = first.strip_prefix("user@")?.strip_suffix(".service")?;
    valid_uid(uid).then_some(rest)
}

/// The components below `session-ID.scope`, when the path goes through it.
fn skip_session<'a, 'b>(components: &'a [&'b str]) -> Option<&'a [&'b str]> {
    let (first, rest) = components.split_first()?;
    let id = first.strip_prefix("session-")?.strip_suffix(".scope")?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(rest)
}

/// A uid as systemd's `parse_uid` accepts it: decimal, and not one of the
/// two values that mean "invalid".
fn valid_uid(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && text
            .parse::<u32>()
            .is_ok_and(|uid| uid != 0xFFFF && uid != u32::MAX)
}

/// A cgroup name with systemd's escaping (one leading `_`) removed.
fn unescape(name: &str) -> &str {
    name.strip_prefix('_').unwrap_or(name)
}

/// Whether `name` is a valid unit name (`unit_name_is_valid` with
/// UNIT_NAME_PLAIN, and UNIT_NAME_INSTANCE when `instance` is set).
pub fn unit_name_valid(name: &str, instance: bool) -> bool {
    const TYPES: [&str; 11] = [
        "service",
        "mount",
        "swap",
        "socket",
        "target",
        "device",
        "automount",
        "timer",
        "path",
        "slice",
        "scope",
    ];
    if name.is_empty() || name.len() > UNIT_NAME_MAX {
        return false;
    }
    let Some((prefix, kind)) = name.rsplit_once('.') else {
        return false;
    };
    if prefix.is_empty() || !TYPES.contains(&kind) {
        return false;
    }
    let valid_char = |b: u8| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b);
    if !prefix.bytes().all(valid_char) {
        return false;
    }
    match prefix.split_once('@') {
        None => true,
        Some(("", _)) => false,
        Some((_, instance_part)) => instance && !instance_part.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::process::Command;

    fn unit(path: &str) -> Option<String> {
        attribute(path).unit
    }

    fn user_unit(path: &str) -> Option<String> {
        attribute(path).user_unit
    }

    #[test]
    fn the_unit_is_the_first_component_after_the_slices() {
        assert_eq!(
            unit("/system.slice/postgresql.service").as_deref(),
            Some("postgresql.service")
        );
        // Everything below a unit, delegated or not, belongs to it.
        assert_eq!(
            unit("/system.slice/app.service/worker").as_deref(),
            Some("app.service")
        );
        assert_eq!(
            unit("/system.slice/app.service/evil.slice/postgresql.service").as_deref(),
            Some("app.service")
        );
        assert_eq!(
            unit("/system.slice/system-getty.slice/getty@tty1.service").as_deref(),
            Some("getty@tty1.service")
        );
        assert_eq!(
            unit("/user.slice/user-1000.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(unit("/init.scope").as_deref(), Some("init.scope"));
        // Escaped names lose their one leading underscore.
        assert_eq!(
            unit("/system.slice/_cpu.service").as_deref(),
            Some("cpu.service")
        );
    }

    #[test]
    fn a_user_managers_units_are_the_user_manager_and_a_user_unit() {
        let path = "/user.slice/user-1000.slice/user@1000.service/app.slice/postgresql.service";
        assert_eq!(unit(path).as_deref(), Some("user@1000.service"));
        assert_eq!(user_unit(path).as_deref(), Some("postgresql.service"));
        let deeper =
            "/user.slice/user-1000.slice/user@1000.service/app.slice/postgresql.service/sub";
        assert_eq!(user_unit(deeper).as_deref(), Some("postgresql.service"));
        let in_session = "/user.slice/user-1000.slice/session-4.scope/x.service";
        assert_eq!(unit(in_session).as_deref(), Some("session-4.scope"));
        assert_eq!(user_unit(in_session).as_deref(), Some("x.service"));
        // System units have no user unit.
        assert_eq!(user_unit("/system.slice/postgresql.service"), None);
        // Not a user manager: a bad uid.
        assert_eq!(
            user_unit("/user.slice/user@abc.service/app.slice/x.service"),
            None
        );
        assert_eq!(
            user_unit("/user.slice/user@65535.service/app.slice/x.service"),
            None
        );
    }

    #[test]
    fn paths_that_name_no_unit_have_none() {
        for path in [
            "/",
            "",
            "/system.slice",
            "/user.slice/user-1000.slice",
            // A first component that is not a unit: systemd gives no unit,
            // whatever lies below.
            "/hostkms-test-1/system.slice/postgresql.service",
            "/machine/postgresql.service",
            "/system.slice/postgresql.service (deleted)",
            "/system.slice/@x.service",
            "/system.slice/x@.service",
            "/system.slice/x.nosuchtype",
            "/system.slice/.service",
        ] {
            assert_eq!(unit(path), None, "{path}");
        }
        let long = format!("/system.slice/{}.service", "a".repeat(250));
        assert_eq!(unit(&long), None);
    }

    #[test]
    fn paths_are_taken_relative_to_the_system_managers_root() {
        let root = "/machine.slice/ct.scope/payload";
        let path = "/machine.slice/ct.scope/payload/system.slice/app.service";
        assert_eq!(unit(shift(path, root)).as_deref(), Some("app.service"));
        assert_eq!(shift(path, "/"), path);
        assert_eq!(shift(path, ""), path);
        assert_eq!(
            shift("/machine.slice/ct.scope/payloadx/a.service", root),
            "/machine.slice/ct.scope/payloadx/a.service"
        );
    }

    #[test]
    fn the_cgroup_path_comes_from_the_unified_or_the_systemd_hierarchy() {
        assert_eq!(
            cgroup_path("0::/system.slice/postgresql.service\n"),
            Some("/system.slice/postgresql.service")
        );
        let hybrid =
            "12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/backup.service\n0::/\n";
        assert_eq!(cgroup_path(hybrid), Some("/system.slice/backup.service"));
        assert_eq!(cgroup_path("0::/\n"), None);
        assert_eq!(cgroup_path("garbage"), None);
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

    #[test]
    fn so_peerpidfd_pins_the_connecting_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        match peer_pidfd(&server) {
            PeerPidfd::Pinned { pidfd, pid } => {
                assert_eq!(pid, std::process::id() as i32);
                let text = pinned_cgroup(&pidfd, pid).unwrap();
                assert_eq!(text, std::fs::read_to_string("/proc/self/cgroup").unwrap());
            }
            PeerPidfd::Exited => panic!("this process has not exited"),
            // Kernels before 6.5 lack SO_PEERPIDFD: the fallback is tested below.
            PeerPidfd::Unsupported => assert!(
                kernel_before(6, 5),
                "SO_PEERPIDFD failed on a kernel that has it"
            ),
        }
    }

    /// Whether the running kernel is older than `major.minor`.
    fn kernel_before(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.trim().split(['.', '-']);
        let mut number = || {
            parts
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0)
        };
        (number(), number()) < (major, minor)
    }

    #[test]
    fn the_fallback_pins_a_live_process_and_refuses_an_exited_one() {
        let mut live = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = live.id() as i32;
        let text = cgroup_by_pid(Some(pid)).unwrap();
        assert_eq!(
            text,
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
        );
        live.kill().unwrap();
        live.wait().unwrap();
        assert_eq!(cgroup_by_pid(Some(pid)), Err(UnitUnknown::ProcessExited));
        assert_eq!(cgroup_by_pid(None), Err(UnitUnknown::NoPidfd));
        assert_eq!(cgroup_by_pid(Some(0)), Err(UnitUnknown::NoPidfd));
    }

    #[test]
    fn a_reused_pid_is_caught_by_the_pidfd() {
        // A pidfd of a process that has since exited and been reaped, and a
        // pid that now names another, live process (this one): what a pid
        // reused between accept and the /proc read looks like.
        let mut gone = Command::new("true").spawn().unwrap();
        // SAFETY: pidfd_open(2) takes two integers and no pointer.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, gone.id() as i32, 0) };
        // Not yet reaped when pidfd_open ran (at worst a zombie), so the
        // pidfd exists; reaping it now frees its pid.
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        gone.wait().unwrap();
        // SAFETY: `fd` (checked >= 0) is the new descriptor pidfd_open created;
        // nothing else holds it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        assert!(pidfd.as_raw_fd() >= 0);
        let reused = std::process::id() as i32;
        assert_eq!(
            pinned_cgroup(&pidfd, reused),
            Err(UnitUnknown::ProcessExited),
            "the cgroup of the pid's new owner must not be taken for the peer's"
        );
    }

    #[test]
    fn unit_names_are_checked_as_systemd_does() {
        assert!(unit_name_valid("postgresql.service", false));
        assert!(unit_name_valid("a-b_c:d\\x2d.socket", false));
        assert!(!unit_name_valid("getty@tty1.service", false));
        assert!(unit_name_valid("getty@tty1.service", true));
        assert!(!unit_name_valid("getty@.service", true));
        assert!(!unit_name_valid("a b.service", true));
        assert!(!unit_name_valid("postgresql", true));
    }
}
