//! Helpers for the peer-identity tests: real cgroup2 directories laid out
//! as systemd lays them out, processes started inside them as another uid,
//! and throw-away users.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Tests of one binary that create cgroups under the same system paths
/// (`system.slice/...`) take turns.
static CGROUP_TREE: Mutex<()> = Mutex::new(());

/// Where cgroup2 is mounted: `/sys/fs/cgroup/unified` on hybrid hosts like
/// this one, `/sys/fs/cgroup` on unified ones (from /proc/self/mountinfo).
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .expect("a cgroup2 hierarchy is mounted")
}

/// Cgroup directories made for a test at systemd's own paths under the
/// cgroup2 root (a test-owned top directory would not be a unit to
/// systemd, and so not to hostkmsd either). Only directories this value
/// created are removed on drop, deepest first, also when the test fails.
pub struct TestCgroups {
    root: PathBuf,
    created: Vec<PathBuf>,
    _turn: MutexGuard<'static, ()>,
}

impl TestCgroups {
    /// Takes this binary's turn at the cgroup tree.
    pub fn new() -> TestCgroups {
        TestCgroups {
            root: cgroup2_mount(),
            created: Vec::new(),
            _turn: CGROUP_TREE.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Makes `relative` (e.g. `system.slice/postgresql.service`) and its
    /// missing parents; returns its absolute path.
    pub fn make(&mut self, relative: &str) -> PathBuf {
        let mut dir = self.root.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            match fs::create_dir(&dir) {
                Ok(()) => self.created.push(dir.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!(
                    "create cgroup {} (the test runs as root): {e}",
                    dir.display()
                ),
            }
        }
        dir
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        // Deepest first. A cgroup whose last process just exited may stay
        // busy for a moment.
        for dir in self.created.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(e) = fs::remove_dir(dir) {
                if e.kind() == io::ErrorKind::NotFound || Instant::now() > deadline {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Makes the child join the cgroup `dir` (as root, before anything else),
/// then become `uid`/`gid` `uid` with no supplementary groups.
pub fn join_cgroup_as(command: &mut Command, dir: &Path, uid: u32) {
    let procs = CString::new(
        dir.join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("a path without NUL");
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (open, write, close, setgroups, setgid,
    // setuid) on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs the `hostkms` CLI as `uid` inside the cgroup `dir`, feeding
/// `stdin`; returns its output.
pub fn cli_in_cgroup(dir: &Path, uid: u32, socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut command = Command::new(super::hostkms());
    command.arg("--socket").arg(socket).args(args);
    join_cgroup_as(&mut command, dir, uid);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run hostkms as uid {uid} in {}: {e}", dir.display()));
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = io::Write::write_all(&mut input, &data);
    });
    let output = child.wait_with_output().expect("the CLI's output");
    writer.join().expect("stdin writer");
    output
}

/// A user made with `useradd` for one test and deleted on drop (if the
/// test has not deleted it already).
pub struct TestUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
}

impl TestUser {
    /// Creates a system user without home directory named `name`.
    pub fn create(name: &str) -> TestUser {
        let _ = Command::new("userdel").arg(name).output();
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(name)
            .status()
            .expect("useradd must be installed (the test runs as root)");
        assert!(status.success(), "useradd {name}: {status}");
        let uid = nix::unistd::User::from_name(name)
            .expect("look up the new user")
            .expect("the new user exists")
            .uid
            .as_raw();
        TestUser {
            name: name.to_string(),
            uid,
        }
    }

    /// Deletes the user now.
    pub fn delete(&self) {
        let status = Command::new("userdel")
            .arg(&self.name)
            .status()
            .expect("run userdel");
        assert!(status.success(), "userdel {}: {status}", self.name);
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if nix::unistd::User::from_name(&self.name)
            .ok()
            .flatten()
            .is_some()
        {
            let _ = Command::new("userdel").arg(&self.name).output();
        }
    }
}

/// Waits until `done` holds for the text `read` returns; fails after 10 s
/// with that text.
pub fn wait_for_text(what: &str, read: impl Fn() -> String, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = read();
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} within 10 s:\n{text}");
        thread::sleep(Duration::from_millis(20));
    }
}
