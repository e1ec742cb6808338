//! Who is on the other end of a connection, as the kernel tells it.
//!
//! Identity comes from the socket itself (SO_PEERCRED, SO_PEERGROUPS), which
//! the client cannot forge. The systemd unit is read from
//! `/proc/PID/cgroup` right after connecting; a process cannot move itself
//! out of its unit's cgroup, and a PID recycled within that instant is the
//! only way to confuse it, which is why grants by uid or group are the
//! stronger form.
//!
//! The unit is attributed the way systemd's `sd_pid_get_unit` does it: skip
//! the leading slices, and the first component after them is the unit;
//! everything below it, delegated subtrees included, belongs to that unit. A
//! process inside `user@1000.service` is in unit `user@1000.service`; the
//! unit its user manager runs it in is its *user unit* (`sd_pid_get_user_unit`).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

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
}

impl Peer {
    /// Reads the identity of the peer of a connected Unix socket, whose
    /// SO_PEERCRED values are `uid`, `gid` and `pid`.
    pub fn of_socket(socket: &impl AsFd, uid: u32, gid: u32, pid: Option<i32>) -> io::Result<Peer> {
        let groups = peer_groups(socket)?;
        let attribution = pid
            .filter(|&pid| pid > 0)
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
            .and_then(|text| cgroup_path(&text).map(|path| attribute(shift(path, manager_root()))))
            .unwrap_or_default();
        Ok(Peer {
            uid,
            gid,
            pid,
            groups,
            unit: attribution.unit,
            user_unit: attribution.user_unit,
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
