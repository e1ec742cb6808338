//! The README's break-glass recipes ("Break-glass recovery") for every
//! sealing mode, run with tpm2-tools against swtpm on state dirs that
//! tpm2-tools sealed in the daemon's layout (`root.seal` plus
//! `root-G-auto.*` / `root-G-pin.*` under the noDA primary or the SRK):
//! plain, PCR-bound, PIN, PCR and PIN. They also pin down what the README
//! says about tpm2-tools 5.4: how the PIN may be given, what a plain `-p
//! PIN` puts on the wire and what the salted session form does not, and
//! that a dictionary-attack lockout stops only the PIN copy.

use std::fs;
use std::path::Path;
use std::process::Command;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::harness::tpm2_tools::{
    NODA_PRIMARY_ATTRIBUTES, SRK_HANDLE, Sealing, break_glass_unseal, break_glass_unseal_legacy,
    break_glass_unseal_pin, da_setup, da_state, legacy_primary, load_copy, noda_primary,
    pcr_extend, seal_like_the_daemon, tpm2, tpm2_output, try_break_glass_unseal,
    try_break_glass_unseal_pin,
};
use crate::harness::{RecordingRelay, Swtpm, contains, private_tempdir};

const PIN: &str = "correct horse 42";

/// A root key that is not all zeroes and differs per test.
fn root_key(seed: u8) -> Vec<u8> {
    (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(seed) | 1)
        .collect()
}

/// A state dir and a work dir, both private.
struct Dirs {
    _root: tempfile::TempDir,
    state: std::path::PathBuf,
    work: std::path::PathBuf,
}

fn dirs() -> Dirs {
    let root = private_tempdir();
    let state = root.path().join("state");
    let work = root.path().join("work");
    fs::create_dir(&state).unwrap();
    fs::create_dir(&work).unwrap();
    Dirs {
        state,
        work,
        _root: root,
    }
}

/// A fresh work directory for one recipe run (the README starts each in
/// `mktemp -d`).
fn fresh(dirs: &Dirs, name: &str) -> std::path::PathBuf {
    let work = dirs.work.join(name);
    fs::create_dir(&work).unwrap();
    work
}

/// The README's step that finds G: the python3 one-liner, verbatim.
fn readme_generation(state: &Path) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(r#"import json,sys; print(json.load(open(sys.argv[1]))["generation"])"#)
        .arg(state.join("root.seal"))
        .output()
        .expect("python3");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The README's step that lists the PCRs for `-p pcr:sha256:LIST`.
fn readme_pcr_list(state: &Path) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(r#"import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["pcrs"])))"#)
        .arg(state.join("root.seal"))
        .output()
        .expect("python3");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The README's check-value step: the python3 one-liner, verbatim, on a
/// `root.key` file.
fn readme_check_value(key: &[u8], work: &Path) -> String {
    fs::write(work.join("root.key"), key).unwrap();
    let output = Command::new("python3")
        .current_dir(work)
        .arg("-c")
        .arg(r#"import hmac,hashlib,sys; print(hmac.new(open("root.key","rb").read(), b"hostkms root key check v1", hashlib.sha256).hexdigest()[:16])"#)
        .output()
        .expect("python3");
    fs::remove_file(work.join("root.key")).unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The check value as the daemon defines it (README, "The root key").
fn check_value(key: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(b"hostkms root key check v1");
    crate::harness::tpm2_tools::hex(&mac.finalize().into_bytes()[..8])
}

#[test]
fn break_glass_plain_mode_recovers_the_root_key_under_the_noda_primary() {
    let tpm = Swtpm::start();
    let dirs = dirs();
    let key = root_key(1);
    let sealing = Sealing {
        pcrs: &[],
        pin: None,
        persistent_srk: false,
        generation: 3,
    };
    seal_like_the_daemon(tpm.port, &dirs.state, &dirs.work, &key, &sealing);
    assert_eq!(readme_generation(&dirs.state), "3");
    assert!(dirs.state.join("root-3-auto.pub").exists());
    assert!(!dirs.state.join("root-3-pin.pub").exists());

    let recovered = break_glass_unseal(tpm.port, &dirs.state, &fresh(&dirs, "a"));
    assert_eq!(recovered, key);
    assert_eq!(
        readme_check_value(&recovered, &dirs.work),
        check_value(&key)
    );

    // The old template (without noda) is another primary: the copies do
    // not load under it, so the README must give the noDA attributes.
    let work = fresh(&dirs, "old-template");
    let old = legacy_primary(tpm.port, &work);
    let load = tpm2_output(
        tpm.port,
        "tpm2_load",
        &[
            "-C",
            &old,
            "-u",
            dirs.state.join("root-3-auto.pub").to_str().unwrap(),
            "-r",
            dirs.state.join("root-3-auto.priv").to_str().unwrap(),
            "-c",
            work.join("x.ctx").to_str().unwrap(),
        ],
        None,
    );
    tpm2(tpm.port, "tpm2_flushcontext", &["-t"]);
    assert!(!load.status.success(), "loaded under the DA template");
}

#[test]
fn break_glass_pcr_mode_unseals_while_the_pcr_holds_and_not_after_an_extend() {
    let tpm = Swtpm::start();
    let dirs = dirs();
    let key = root_key(2);
    let sealing = Sealing {
        pcrs: &[7],
        pin: None,
        persistent_srk: false,
        generation: 1,
    };
    seal_like_the_daemon(tpm.port, &dirs.state, &dirs.work, &key, &sealing);
    assert_eq!(readme_pcr_list(&dirs.state), "7");

    assert_eq!(
        break_glass_unseal(tpm.port, &dirs.state, &fresh(&dirs, "before")),
        key
    );

    // The auto copy has no userwithauth: an empty password does not open it.
    let work = fresh(&dirs, "no-policy");
    let parent = noda_primary(tpm.port, &work);
    let ctx = work.join("root.ctx");
    load_copy(tpm.port, &parent, &dirs.state, "root-1-auto", &ctx);
    let plain = tpm2_output(
        tpm.port,
        "tpm2_unseal",
        &["-c", ctx.to_str().unwrap()],
        None,
    );
    tpm2(tpm.port, "tpm2_flushcontext", &["-t"]);
    assert!(!plain.status.success(), "unsealed without the PCR policy");

    pcr_extend(tpm.port, 7, b"a new boot chain");
    let err = try_break_glass_unseal(tpm.port, &dirs.state, &fresh(&dirs, "after"))
        .expect_err("unsealed after PCR 7 changed");
    assert!(err.contains("0x99D"), "{err}");
    assert!(err.contains("a policy check failed"), "{err}");
    // No session is left behind by the failed policy session.
    let sessions = tpm2(tpm.port, "tpm2_getcap", &["handles-loaded-session"]);
    assert!(
        sessions.is_empty(),
        "{}",
        String::from_utf8_lossy(&sessions)
    );
}

#[test]
fn break_glass_pin_mode_salted_session_keeps_pin_and_key_off_the_wire() {
    let tpm = Swtpm::start();
    let relay = RecordingRelay::start(&tpm);
    let dirs = dirs();
    let key = root_key(3);
    let sealing = Sealing {
        pcrs: &[],
        pin: Some(PIN),
        persistent_srk: false,
        generation: 1,
    };
    seal_like_the_daemon(tpm.port, &dirs.state, &dirs.work, &key, &sealing);
    assert!(!dirs.state.join("root-1-auto.pub").exists(), "PIN-only");
    assert!(dirs.state.join("root-1-pin.priv").exists());

    let before = relay.recorded().len();
    let recovered = break_glass_unseal_pin(relay.port, &dirs.state, &fresh(&dirs, "s"), PIN);
    assert_eq!(recovered, key);
    let wire = relay.recorded()[before..].to_vec();
    assert!(wire.len() > 500, "the relay saw the traffic");
    assert!(!contains(&wire, PIN.as_bytes()), "the PIN crossed in clear");
    for window in key.windows(8) {
        assert!(!contains(&wire, window), "the root key crossed in clear");
    }
    // The session is flushed afterwards.
    let saved = tpm2(tpm.port, "tpm2_getcap", &["handles-saved-session"]);
    assert!(saved.is_empty(), "{}", String::from_utf8_lossy(&saved));

    // Control, the plain form: `tpm2_unseal -c pin.ctx -p "$PIN"`. tpm2-tools
    // 5.4 puts it in an unsalted HMAC session without parameter encryption:
    // the root key comes back in clear (and the recorded HMAC lets anyone
    // test PIN guesses offline).
    let work = fresh(&dirs, "plain");
    let parent = noda_primary(relay.port, &work);
    let pin_ctx = work.join("pin.ctx");
    load_copy(relay.port, &parent, &dirs.state, "root-1-pin", &pin_ctx);
    let before = relay.recorded().len();
    let plain = tpm2(
        relay.port,
        "tpm2_unseal",
        &["-c", pin_ctx.to_str().unwrap(), "-p", PIN],
    );
    tpm2(relay.port, "tpm2_flushcontext", &["-t"]);
    assert_eq!(plain, key);
    assert!(
        contains(&relay.recorded()[before..], &key),
        "the plain form returns the root key in clear"
    );

    // The PIN without the command line: `file:-` on stdin (one trailing
    // newline stripped), `file:PATH` (read as is: no trailing newline).
    let pin_ctx = pin_ctx.to_str().unwrap();
    let stdin = tpm2_output(
        tpm.port,
        "tpm2_unseal",
        &["-c", pin_ctx, "-p", "file:-"],
        Some(format!("{PIN}\n").as_bytes()),
    );
    tpm2(tpm.port, "tpm2_flushcontext", &["-t"]);
    assert!(stdin.status.success(), "{stdin:?}");
    assert_eq!(stdin.stdout, key);
    let pin_file = work.join("pin.txt");
    fs::write(&pin_file, PIN).unwrap();
    let file = tpm2_output(
        tpm.port,
        "tpm2_unseal",
        &["-c", pin_ctx, "-p", &format!("file:{}", pin_file.display())],
        None,
    );
    tpm2(tpm.port, "tpm2_flushcontext", &["-t"]);
    assert!(file.status.success(), "{file:?}");
    assert_eq!(file.stdout, key);
    assert_eq!(da_state(tpm.port).0, 0, "no failed tries so far");

    // What tpm2-tools 5.4 does not do (README): read a file after
    // `session:...+`. The text is taken as the PIN itself, so it fails
    // (and counts as a failed try).
    let session = work.join("session.ctx");
    let session = session.to_str().unwrap();
    tpm2(
        tpm.port,
        "tpm2_startauthsession",
        &["--hmac-session", "-c", &parent, "-S", session],
    );
    tpm2(tpm.port, "tpm2_flushcontext", &["-t"]);
    let via_file = tpm2_output(
        tpm.port,
        "tpm2_unseal",
        &[
            "-c",
            pin_ctx,
            "-p",
            &format!("session:{session}+file:{}", pin_file.display()),
        ],
        None,
    );
    tpm2(tpm.port, "tpm2_flushcontext", &[session]);
    tpm2(tpm.port, "tpm2_flushcontext", &["-t"]);
    if via_file.status.success() {
        // A later tpm2-tools (5.6 and on) reads the file: still right.
        assert_eq!(via_file.stdout, key);
    } else {
        assert_eq!(da_state(tpm.port).0, 1, "{via_file:?}");
    }
}

#[test]
fn break_glass_pcr_and_pin_mode_opens_with_either_copy() {
    let tpm = Swtpm::start();
    let dirs = dirs();
    let key = root_key(4);
    let sealing = Sealing {
        pcrs: &[7, 16],
        pin: Some(PIN),
        persistent_srk: false,
        generation: 2,
    };
    seal_like_the_daemon(tpm.port, &dirs.state, &dirs.work, &key, &sealing);
    assert_eq!(readme_pcr_list(&dirs.state), "7,16");
    assert_eq!(
        break_glass_unseal(tpm.port, &dirs.state, &fresh(&dirs, "auto")),
        key
    );
    assert_eq!(
        break_glass_unseal_pin(tpm.port, &dirs.state, &fresh(&dirs, "pin"), PIN),
        key
    );

    // A firmware update: the auto copy no longer opens, the PIN copy does.
    pcr_extend(tpm.port, 16, b"firmware 2.0");
    assert!(try_break_glass_unseal(tpm.port, &dirs.state, &fresh(&dirs, "auto2")).is_err());
    assert_eq!(
        break_glass_unseal_pin(tpm.port, &dirs.state, &fresh(&dirs, "pin2"), PIN),
        key
    );
}

#[test]
fn break_glass_a_locked_out_pin_copy_leaves_the_noda_copies_usable() {
    let tpm = Swtpm::start();
    da_setup(tpm.port, 2, 600);
    assert_eq!(da_state(tpm.port), (0, 2, 600));
    let dirs = dirs();
    let key = root_key(5);
    let sealing = Sealing {
        pcrs: &[16],
        pin: Some(PIN),
        persistent_srk: false,
        generation: 1,
    };
    seal_like_the_daemon(tpm.port, &dirs.state, &dirs.work, &key, &sealing);

    for n in 1..=2 {
        let err = try_break_glass_unseal_pin(
            tpm.port,
            &dirs.state,
            &fresh(&dirs, &format!("wrong{n}")),
            "not the pin at all",
        )
        .expect_err("a wrong PIN unsealed");
        assert!(err.contains("0x98E"), "{err}");
        assert!(err.contains("DA counter incremented"), "{err}");
        assert_eq!(da_state(tpm.port).0, n);
    }
    let err = try_break_glass_unseal_pin(tpm.port, &dirs.state, &fresh(&dirs, "locked"), PIN)
        .expect_err("the right PIN in lockout unsealed");
    assert!(err.contains("0x921"), "{err}");
    assert!(err.contains("DA lockout mode"), "{err}");
    let props = String::from_utf8(tpm2(tpm.port, "tpm2_getcap", &["properties-variable"])).unwrap();
    assert!(props.contains("inLockout:                 1"), "{props}");

    // The noDA primary and the noDA PCR copy are not affected.
    assert_eq!(
        break_glass_unseal(tpm.port, &dirs.state, &fresh(&dirs, "auto")),
        key
    );

    // The README's way out: clear the lockout (empty lockout auth here).
    tpm2(tpm.port, "tpm2_dictionarylockout", &["--clear-lockout"]);
    assert_eq!(da_state(tpm.port).0, 0);
    assert_eq!(
        break_glass_unseal_pin(tpm.port, &dirs.state, &fresh(&dirs, "pin"), PIN),
        key
    );
}

#[test]
fn break_glass_under_the_persistent_srk() {
    let tpm = Swtpm::start();
    let dirs = dirs();
    // An SRK at 0x81000001 (here from the noDA template; a TCG-provisioned
    // one is noDA as well).
    let srk = dirs.work.join("srk.ctx");
    tpm2(
        tpm.port,
        "tpm2_createprimary",
        &[
            "-Q",
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc256:aes128cfb",
            "-a",
            NODA_PRIMARY_ATTRIBUTES,
            "-c",
            srk.to_str().unwrap(),
        ],
    );
    tpm2(
        tpm.port,
        "tpm2_evictcontrol",
        &["-Q", "-C", "o", "-c", srk.to_str().unwrap(), SRK_HANDLE],
    );
    tpm2(tpm.port, "tpm2_flushcontext", &["-t"]);
    let key = root_key(6);
    let sealing = Sealing {
        pcrs: &[7],
        pin: Some(PIN),
        persistent_srk: true,
        generation: 1,
    };
    seal_like_the_daemon(tpm.port, &dirs.state, &dirs.work, &key, &sealing);
    assert!(
        fs::read_to_string(dirs.state.join("root.seal"))
            .unwrap()
            .contains(r#""primary":"persistent-srk""#)
    );
    assert_eq!(
        break_glass_unseal(tpm.port, &dirs.state, &fresh(&dirs, "auto")),
        key
    );
    assert_eq!(
        break_glass_unseal_pin(tpm.port, &dirs.state, &fresh(&dirs, "pin"), PIN),
        key
    );
}

#[test]
fn break_glass_legacy_layout_recipe_still_recovers_an_unmigrated_state_dir() {
    // root.pub/root.priv under the tpm2-tools template (not noDA), as the
    // releases before sealing modes wrote them.
    let tpm = Swtpm::start();
    let dirs = dirs();
    let key = root_key(7);
    let primary = legacy_primary(tpm.port, &dirs.work);
    let input = dirs.work.join("key.in");
    fs::write(&input, &key).unwrap();
    tpm2(
        tpm.port,
        "tpm2_create",
        &[
            "-Q",
            "-C",
            &primary,
            "-i",
            input.to_str().unwrap(),
            "-u",
            dirs.state.join("root.pub").to_str().unwrap(),
            "-r",
            dirs.state.join("root.priv").to_str().unwrap(),
        ],
    );
    tpm2(tpm.port, "tpm2_flushcontext", &["-t"]);
    assert_eq!(
        break_glass_unseal_legacy(tpm.port, &dirs.state, &fresh(&dirs, "legacy")),
        key
    );
}

/// The README's break-glass block, verbatim, cut into the steps a mode
/// runs: 0 and 1, then 2a with the unseal line of the mode (plain or
/// PCR) or 2b, then 3. `STATE=` is pointed at `state`.
fn readme_recipe(state: &Path, auto: Option<bool>) -> String {
    let readme =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let section = readme
        .split("\n## Break-glass recovery\n")
        .nth(1)
        .expect("a Break-glass recovery section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("its sh block");
    let step = |from: &str, to: Option<&str>| -> String {
        let start = block
            .find(from)
            .unwrap_or_else(|| panic!("no {from:?} in the recipe"));
        let end = to.map_or(block.len(), |to| {
            block
                .find(to)
                .unwrap_or_else(|| panic!("no {to:?} in the recipe"))
        });
        block[start..end].to_owned()
    };
    let head = &block[..block.find("# 2a.").expect("step 2a")];
    assert!(
        head.contains("STATE=/var/lib/hostkms "),
        "the recipe sets STATE: {head}"
    );
    let head = head.replace(
        "STATE=/var/lib/hostkms ",
        &format!("STATE='{}' ", state.display()),
    );
    let middle = match auto {
        Some(pcrs) => step("# 2a.", Some("# 2b."))
            .lines()
            .filter(|line| {
                !line.starts_with("tpm2_unseal")
                    || line.ends_with(if pcrs {
                        r#"# "pcrs": [7, ...]"#
                    } else {
                        r#"# "pcrs": []"#
                    })
            })
            .map(|line| format!("{line}\n"))
            .collect(),
        None => step("# 2b.", Some("# 3.")),
    };
    format!("set -euo pipefail\n{head}{middle}{}", step("# 3.", None))
}

/// Runs `script` with bash against the TPM, `stdin` as its input, and
/// returns the check value it prints last.
fn run_recipe(tpm_port: u16, script: &str, stdin: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={tpm_port}"),
        )
        .env("TSS2_LOG", "all+none")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bash");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait for bash");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the README recipe failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().last().unwrap_or_default().trim().to_owned()
}

#[test]
fn break_glass_readme_recipe_runs_verbatim_in_every_mode() {
    let tpm = Swtpm::start();
    let key = root_key(8);
    let expected = check_value(&key);
    for (pcrs, pin, generation) in [
        (&[][..], None, 1),
        (&[7][..], None, 2),
        (&[][..], Some(PIN), 3),
        (&[7, 16][..], Some(PIN), 4),
    ] {
        let dirs = dirs();
        let sealing = Sealing {
            pcrs,
            pin,
            persistent_srk: false,
            generation,
        };
        seal_like_the_daemon(tpm.port, &dirs.state, &dirs.work, &key, &sealing);
        let mode = format!("pcrs {pcrs:?}, pin {}", pin.is_some());
        if pin.is_none() || !pcrs.is_empty() {
            let script = readme_recipe(&dirs.state, Some(!pcrs.is_empty()));
            assert_eq!(run_recipe(tpm.port, &script, ""), expected, "{mode}");
        }
        if pin.is_some() {
            let script = readme_recipe(&dirs.state, None);
            assert_eq!(
                run_recipe(tpm.port, &script, &format!("{PIN}\n")),
                expected,
                "{mode}"
            );
        }
    }
    // Nothing left loaded in the TPM.
    for handles in [
        "handles-transient",
        "handles-loaded-session",
        "handles-saved-session",
    ] {
        let left = tpm2(tpm.port, "tpm2_getcap", &[handles]);
        assert!(
            left.is_empty(),
            "{handles}: {}",
            String::from_utf8_lossy(&left)
        );
    }
}

#[test]
fn break_glass_auto_copy_in_a_salted_session_keeps_the_key_off_the_wire() {
    // README, "Step 2a ... To keep it off": the plain copy in an HMAC
    // session, the PCR copy in a policy session, both salted with the
    // primary.
    let tpm = Swtpm::start();
    let relay = RecordingRelay::start(&tpm);
    let key = root_key(9);
    for pcrs in [&[][..], &[7][..]] {
        let dirs = dirs();
        let sealing = Sealing {
            pcrs,
            pin: None,
            persistent_srk: false,
            generation: 1,
        };
        seal_like_the_daemon(tpm.port, &dirs.state, &dirs.work, &key, &sealing);
        let work = fresh(&dirs, "session");
        let path = |name: &str| work.join(name).display().to_string();
        let (root, session) = (path("root.ctx"), path("s.ctx"));
        let port = relay.port;
        let primary = noda_primary(port, &work);
        load_copy(port, &primary, &dirs.state, "root-1-auto", Path::new(&root));
        let before = relay.recorded().len();
        if pcrs.is_empty() {
            tpm2(
                port,
                "tpm2_startauthsession",
                &["--hmac-session", "-c", &primary, "-S", &session],
            );
        } else {
            tpm2(
                port,
                "tpm2_startauthsession",
                &["--policy-session", "-c", &primary, "-S", &session],
            );
            tpm2(
                port,
                "tpm2_policypcr",
                &["-Q", "-S", &session, "-l", "sha256:7"],
            );
        }
        tpm2(port, "tpm2_flushcontext", &["-t"]);
        let unsealed = tpm2(
            port,
            "tpm2_unseal",
            &["-c", &root, "-p", &format!("session:{session}")],
        );
        tpm2(port, "tpm2_flushcontext", &[&session]);
        tpm2(port, "tpm2_flushcontext", &["-t"]);
        assert_eq!(unsealed, key, "pcrs {pcrs:?}");
        let wire = relay.recorded()[before..].to_vec();
        assert!(wire.len() > 500, "the relay saw the traffic");
        for window in key.windows(8) {
            assert!(
                !contains(&wire, window),
                "pcrs {pcrs:?}: the key crossed in clear"
            );
        }
    }
}
