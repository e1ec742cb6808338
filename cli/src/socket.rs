//! Why the daemon's socket cannot be reached, told from what is at its path:
//! nothing (is the daemon running?), a file that is not a socket, a stale
//! socket nobody listens on, or a socket whose owner and group keep this
//! user out (named, with the group to join).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

/// What is at the socket path, as far as this user can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing at the path (its directory exists).
    Nothing,
    /// The path's directory does not exist either.
    NoDirectory,
    /// The path cannot be looked at: a directory on the way denies search
    /// permission (`EACCES`), or another error.
    Unreadable(io::ErrorKind),
    /// Something that is not a socket (a regular file, a directory, ...).
    NotASocket(&'static str),
    /// A socket, with its owner, group and permission bits.
    Socket {
        /// Owner uid.
        uid: u32,
        /// Group gid.
        gid: u32,
        /// Permission bits (`0o777` mask).
        mode: u32,
    },
}

/// Looks at `path` without following a final symbolic link's target
/// twice: `stat` (a link to a socket counts as the socket).
pub fn look(path: &Path) -> Found {
    match fs::metadata(path) {
        Ok(meta) => {
            let kind = meta.file_type();
            if kind.is_socket() {
                Found::Socket {
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mode: meta.mode() & 0o777,
                }
            } else if kind.is_dir() {
                Found::NotASocket("a directory")
            } else if kind.is_file() {
                Found::NotASocket("a regular file")
            } else if kind.is_fifo() {
                Found::NotASocket("a FIFO (named pipe)")
            } else {
                Found::NotASocket("a device")
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && fs::metadata(dir).is_err() => {
                Found::NoDirectory
            }
            _ => Found::Nothing,
        },
        Err(e) => Found::Unreadable(e.kind()),
    }
}

/// A group's name, or its number when it has none.
fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(group)) => group.name,
        _ => format!("gid {gid}"),
    }
}

/// A user's name, or their number when they have none.
fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

/// Why connecting to `path` failed with `error`, and what to do, from
/// what is at the path now.
pub fn diagnose(path: &Path, error: &io::Error) -> String {
    let found = look(path);
    explain(path, error.kind(), &found)
}

/// [`diagnose`] for a failure of kind `kind` and what was found.
pub fn explain(path: &Path, kind: io::ErrorKind, found: &Found) -> String {
    let running = "is hostkmsd running (systemctl status hostkms), and is this its socket \
                   (--socket, $HOSTKMS_SOCKET, `socket` in its config)?";
    match found {
        Found::Nothing => format!("no socket there; {running}"),
        Found::NoDirectory => {
            let dir = path
                .parent()
                .map_or_else(String::new, |d| d.display().to_string());
            format!("no socket there, and no directory {dir} either; {running}")
        }
        Found::NotASocket(what) => format!(
            "{} is {what}, not a socket: the daemon did not make it. Give the daemon's \
             socket with --socket, or remove the file if it is in the daemon's way",
            path.display()
        ),
        Found::Socket { uid, gid, mode } => match kind {
            io::ErrorKind::ConnectionRefused => "a stale socket: nothing is listening on it \
                 (hostkmsd stopped or crashed without removing it); start hostkmsd \
                 (systemctl start hostkms), which replaces it"
                .to_string(),
            io::ErrorKind::PermissionDenied => format!(
                "permission denied: the socket is owned by {} and group {} with mode {mode:03o}, \
                 and admits its owner and group only; ask an admin to add you to group {} \
                 (then log in again), or run this as a member",
                user_name(*uid),
                group_name(*gid),
                group_name(*gid)
            ),
            other => io::Error::from(other).to_string(),
        },
        Found::Unreadable(io::ErrorKind::PermissionDenied) => {
            let dir = path
                .parent()
                .map_or_else(String::new, |d| d.display().to_string());
            let group = fs::metadata(&dir).map(|m| group_name(m.gid())).ok();
            match group {
                Some(group) => format!(
                    "permission denied: you may not enter its directory {dir} (group {group}); \
                     ask an admin to add you to group {group} (then log in again)"
                ),
                None => "permission denied: a directory on the way to it may not be entered; \
                         ask an admin for access to the socket's group"
                    .to_string(),
            }
        }
        Found::Unreadable(other) => io::Error::from(*other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn missing_file_and_stale_socket_are_told_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.sock");
        assert_eq!(look(&missing), Found::Nothing);
        let text = diagnose(&missing, &io::Error::from(io::ErrorKind::NotFound));
        assert!(
            text.starts_with("no socket there; is hostkmsd running"),
            "{text}"
        );
        let deeper = dir.path().join("nope/missing.sock");
        assert_eq!(look(&deeper), Found::NoDirectory);

        let file = dir.path().join("file.sock");
        fs::write(&file, b"").expect("write");
        let text = diagnose(&file, &io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(text.contains("is a regular file, not a socket"), "{text}");

        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).expect("bind"));
        assert!(matches!(look(&stale), Found::Socket { .. }));
        let text = diagnose(&stale, &io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(
            text.starts_with("a stale socket: nothing is listening"),
            "{text}"
        );
    }

    #[test]
    fn permission_denied_names_the_sockets_group() {
        let found = Found::Socket {
            uid: 0,
            gid: 0,
            mode: 0o660,
        };
        let text = explain(
            Path::new("/run/hostkms/hostkms.sock"),
            io::ErrorKind::PermissionDenied,
            &found,
        );
        let root_group = group_name(0);
        assert!(
            text.contains(&format!("group {root_group} with mode 660")),
            "{text}"
        );
        assert!(
            text.contains(&format!("add you to group {root_group}")),
            "{text}"
        );
    }
}
