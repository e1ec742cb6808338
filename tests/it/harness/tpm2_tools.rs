//! tpm2-tools against a test's swtpm: single commands and the README's
//! break-glass recovery of the sealed root key.

use std::path::Path;
use std::process::Command;

/// Runs a tpm2-tools command against `tpm`, failing the test when it fails.
pub fn tpm2(tpm_port: u16, tool: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(tool)
        .args(args)
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={tpm_port}"),
        )
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} must be installed (`make test` installs tpm2-tools): {e}")
        });
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Break-glass: recovers the sealed secret from `root.pub`/`root.priv` with
/// tpm2-tools alone, as the README describes.
pub fn break_glass_unseal(tpm_port: u16, state_dir: &Path, work: &Path) -> Vec<u8> {
    let primary = work.join("primary.ctx");
    let sealed = work.join("root.ctx");
    let p = |path: &Path| path.display().to_string();
    tpm2(
        tpm_port,
        "tpm2_createprimary",
        &[
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc256:aes128cfb",
            "-c",
            &p(&primary),
        ],
    );
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    tpm2(
        tpm_port,
        "tpm2_load",
        &[
            "-C",
            &p(&primary),
            "-u",
            &p(&state_dir.join("root.pub")),
            "-r",
            &p(&state_dir.join("root.priv")),
            "-c",
            &p(&sealed),
        ],
    );
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    let secret = tpm2(tpm_port, "tpm2_unseal", &["-c", &p(&sealed)]);
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    secret
}
