//! The daemon's view of its own traffic: counters in `hostkms status`, the
//! OpenMetrics text of `hostkms metrics`, the TPM's reachability, and the
//! alert raised when a key version nears its encryption limit.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::harness::{
    Alerts, Daemon, DaemonConfig, DaemonFiles, Harness, Swtpm, cli, cli_as, ensure_journald, field,
    journal_of_stopped, with_id,
};
use agent_proto::EncryptionContext;

const ALERT_ENCRYPTION_LIMIT: &str = "a65fa18274d944968d01e53a1bbd32c0";

/// The samples of an OpenMetrics text: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("a sample is NAME VALUE");
            (name.to_string(), value.parse().expect("a numeric value"))
        })
        .collect()
}

#[test]
fn status_and_metrics_count_requests_by_operation_and_result() {
    let tpm = Swtpm::start();
    let files =
        DaemonFiles::with_public_socket(&tpm.tcti(), &DaemonConfig::new().socket_mode("0666"));
    let started = Instant::now();
    let daemon = Daemon::start(&files).expect("start");
    let mut client = daemon.client();
    client.create_key("app-metrics").expect("create");
    let ctx = EncryptionContext::new();
    for _ in 0..3 {
        client.wrap("app-metrics", b"counted", &ctx).expect("wrap");
    }
    client
        .unwrap(b"not a ciphertext", &ctx, None)
        .expect_err("garbage");
    let denied = cli_as(65534, &files.socket, &["rotate", "app-metrics"], b"");
    assert_eq!(denied.status.code(), Some(1));

    let status = cli(&files.socket, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    for line in [
        "keys:             1",
        "versions:         1",
        "denials:          1",
        "alerts:           0",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    let wrap_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("wrap "))
        .unwrap_or_else(|| panic!("a wrap line in:\n{text}"));
    assert_eq!(
        wrap_line.split_whitespace().collect::<Vec<_>>(),
        ["wrap", "ok", "3", "denied", "0", "error", "0"]
    );

    let metrics = cli(&files.socket, &["metrics"]);
    assert!(metrics.status.success(), "{metrics:?}");
    let text = String::from_utf8(metrics.stdout).expect("UTF-8");
    assert_eq!(
        text.lines().last(),
        Some("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    assert!(text.contains("# TYPE hostkms_requests counter\n"), "{text}");
    let values = samples(&text);
    let get = |name: &str| {
        *values
            .get(name)
            .unwrap_or_else(|| panic!("{name} in:\n{text}"))
    };
    assert_eq!(get(r#"hostkms_requests_total{op="wrap",result="ok"}"#), 3.0);
    assert_eq!(
        get(r#"hostkms_requests_total{op="unwrap",result="error"}"#),
        1.0
    );
    assert_eq!(
        get(r#"hostkms_requests_total{op="rotate",result="denied"}"#),
        1.0
    );
    assert_eq!(
        get(r#"hostkms_requests_total{op="create",result="ok"}"#),
        1.0
    );
    assert_eq!(get("hostkms_denials_total"), 1.0);
    assert_eq!(get(r#"hostkms_alerts_total{kind="repeated-denials"}"#), 0.0);
    assert_eq!(get("hostkms_keys"), 1.0);
    assert_eq!(get("hostkms_key_versions"), 1.0);
    assert_eq!(get("hostkms_tpm_reachable"), 1.0);
    assert_eq!(get("hostkms_root_key_loaded"), 1.0);
    // Whole seconds since the daemon started: no more than this test has run.
    let uptime = get("hostkms_uptime_seconds");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        uptime >= 0.0 && uptime.fract() == 0.0,
        "hostkms_uptime_seconds {uptime} is a whole number of seconds"
    );
    assert!(
        uptime <= elapsed + 1.0,
        "hostkms_uptime_seconds {uptime} but the daemon was started {elapsed:.1} s ago"
    );
    // Every sample belongs to the family declared last before it: its name is
    // the family's, with the suffix OpenMetrics gives samples of its type.
    let mut family: Option<(&str, &str)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
            family = Some((name, kind));
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let (family, kind) = family.unwrap_or_else(|| panic!("{name} has no # TYPE before it"));
            let suffix = name.strip_prefix(family).unwrap_or("not the family's");
            let allowed: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            assert!(
                allowed.contains(&suffix),
                "{name} is not a sample of the {kind} family {family} declared before it:\n{text}"
            );
        }
    }

    // --out replaces a file whole, readable by a collector.
    let out = files.root.path().join("hostkms.prom");
    std::fs::write(&out, "stale").expect("stale file");
    let written = cli(
        &files.socket,
        &["metrics", "--out", out.to_str().expect("path")],
    );
    assert!(written.status.success(), "{written:?}");
    assert!(written.stdout.is_empty());
    let file = std::fs::read_to_string(&out).expect("metrics file");
    assert!(
        file.ends_with("# EOF\n") && file.contains("hostkms_keys 1\n"),
        "{file}"
    );
    let mode = std::fs::metadata(&out).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}

#[test]
fn a_version_near_its_encryption_limit_raises_one_alert() {
    ensure_journald();
    let tpm = Swtpm::start();
    let files = DaemonFiles::new(
        &tpm.tcti(),
        &DaemonConfig::new()
            .rotate_after_encryptions(10)
            .alerts(Alerts::new().encryption_limit_percent(50)),
    );
    let daemon =
        Daemon::start_with_env(&files, &[], &[("HOSTKMS_LOG_TARGET", "journal")]).expect("start");
    let journal = daemon.journal_scope();
    let mut client = daemon.client();
    client.create_key("near-limit").expect("create");
    let ctx = EncryptionContext::new();
    for _ in 0..4 {
        client.wrap("near-limit", b"x", &ctx).expect("wrap");
    }
    assert_eq!(
        client.status().expect("status").counters["alerts.encryption-limit"],
        0
    );
    for _ in 0..3 {
        client.wrap("near-limit", b"x", &ctx).expect("wrap");
    }
    let status = client.status().expect("status");
    assert_eq!(
        status.counters["alerts.encryption-limit"], 1,
        "once per version"
    );
    assert_eq!(status.counters["alerts"], 1);
    drop(client);
    let (exit, _) = daemon.stop();
    assert!(exit.success());

    // Counted once the daemon's last entry is readable, so a late duplicate counts.
    let entries = journal_of_stopped(&journal);
    let alerts = with_id(&entries, ALERT_ENCRYPTION_LIMIT);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let get = |name: &str| field(alerts[0], name);
    assert_eq!(get("PRIORITY"), Some("1"));
    assert_eq!(get("HOSTKMS_ALERT"), Some("encryption-limit"));
    assert_eq!(get("HOSTKMS_KEY"), Some("near-limit"));
    assert_eq!(get("HOSTKMS_KEY_VERSION"), Some("1"));
    assert_eq!(get("HOSTKMS_COUNT"), Some("5"));
    assert_eq!(get("HOSTKMS_LIMIT"), Some("10"));
}

/// A TPM that stops answering shows in `status` and in the metrics within
/// one probe period (10 s), while keys already unsealed keep serving.
#[test]
fn a_tpm_that_stops_answering_is_reported_unreachable() {
    let Harness { tpm, files, daemon } = Harness::start(DaemonConfig::new());
    let mut client = daemon.client();
    client.create_key("app-tpm-gone").expect("create");
    assert!(client.status().expect("status").tpm_reachable);

    let _unplugged = tpm.unplug();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.status().expect("status").tpm_reachable {
        assert!(
            Instant::now() < deadline,
            "still reachable 30 s after swtpm stopped"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let metrics = cli(&files.socket, &["metrics"]);
    assert!(metrics.status.success(), "{metrics:?}");
    let values = samples(&String::from_utf8_lossy(&metrics.stdout));
    assert_eq!(values.get("hostkms_tpm_reachable"), Some(&0.0));
    let status = cli(&files.socket, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("TPM reachable:    no"), "{text}");

    let ctx = EncryptionContext::new();
    let wrapped = client
        .wrap("app-tpm-gone", b"still served", &ctx)
        .expect("wrap");
    let unwrapped = client
        .unwrap(wrapped.ciphertext.as_bytes(), &ctx, None)
        .expect("unwrap");
    assert_eq!(unwrapped.plaintext.expose(), b"still served");
    drop(client);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("TPM probe failed"), "{log}");
}
