//! tpm2-tools against a test's swtpm: single commands, the TPM's PCRs and
//! dictionary-attack state, a state dir sealed by tpm2-tools in the
//! daemon's layout, and the README's break-glass recovery of the sealed
//! root key for every sealing mode (and for the layout before sealing
//! modes, [`break_glass_unseal_legacy`]).
//!
//! The state-dir layout (README, "Break-glass recovery"): `root.seal` (JSON:
//! `generation`, `primary`, `pcrs`, `pcr_values`, `pin`) names the
//! generation G in force; `root-G-auto.pub/.priv` is the copy that unseals
//! without a PIN (plain, or under a PCR policy), `root-G-pin.pub/.priv` the
//! copy whose authValue is the PIN. Both are children of a noDA storage
//! primary ([`NODA_PRIMARY_ATTRIBUTES`]) or of the persistent SRK.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The attributes of the daemon's transient storage primary: the
/// tpm2-tools template's, plus `noda`.
pub const NODA_PRIMARY_ATTRIBUTES: &str =
    "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt";

/// The handle of the TCG-provisioned storage root key, used instead of a
/// transient primary when `root.seal` says `"primary": "persistent-srk"`.
pub const SRK_HANDLE: &str = "0x81000001";

/// Runs a tpm2-tools command against `tpm`, failing the test when it fails.
pub fn tpm2(tpm_port: u16, tool: &str, args: &[&str]) -> Vec<u8> {
    let output = tpm2_output(tpm_port, tool, args, None);
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Runs a tpm2-tools command against `tpm` with `stdin` (or none), and
/// returns what it did, success or not.
pub fn tpm2_output(tpm_port: u16, tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(tool)
        .args(args)
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={tpm_port}"),
        )
        .env("TSS2_LOG", "all+none")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{tool} must be installed (`make test` installs tpm2-tools): {e}")
        });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input)
            .unwrap_or_else(|e| panic!("write {tool}'s stdin: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {tool}: {e}"))
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// What `root.seal` records, as far as break-glass needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealRecord {
    /// The generation G whose `root-G-*` files are in force.
    pub generation: u64,
    /// `"primary": "persistent-srk"`: the copies are children of the SRK at
    /// [`SRK_HANDLE`], not of the transient noDA primary.
    pub persistent_srk: bool,
    /// The sha256 PCRs the auto copy is bound to (empty: plain).
    pub pcrs: Vec<u8>,
    /// Whether a PIN copy exists.
    pub pin: bool,
}

impl SealRecord {
    /// Reads `state_dir/root.seal`, failing the test when it is missing or
    /// malformed.
    pub fn read(state_dir: &Path) -> SealRecord {
        let path = state_dir.join("root.seal");
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", path.display()));
        let primary = json["primary"].as_str().unwrap_or_default();
        assert!(
            primary == "transient-noda" || primary == "persistent-srk",
            "unknown primary in {}: {text}",
            path.display()
        );
        SealRecord {
            generation: json["generation"]
                .as_u64()
                .unwrap_or_else(|| panic!("no generation in {}: {text}", path.display())),
            persistent_srk: primary == "persistent-srk",
            pcrs: json["pcrs"]
                .as_array()
                .unwrap_or_else(|| panic!("no pcrs in {}: {text}", path.display()))
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u8::try_from(n).ok())
                        .expect("a PCR")
                })
                .collect(),
            pin: json["pin"]
                .as_bool()
                .unwrap_or_else(|| panic!("no pin in {}: {text}", path.display())),
        }
    }

    /// The file name of one of this generation's copies: `kind` is `auto`
    /// or `pin`, `ext` `pub` or `priv`.
    pub fn file(&self, kind: &str, ext: &str) -> String {
        format!("root-{}-{kind}.{ext}", self.generation)
    }

    /// The PCR list in tpm2-tools' form (`sha256:7,14`).
    pub fn pcr_selection(&self) -> String {
        pcr_selection(&self.pcrs)
    }
}

/// `sha256:7,14` for `[7, 14]`.
pub fn pcr_selection(pcrs: &[u8]) -> String {
    let list: Vec<String> = pcrs.iter().map(u8::to_string).collect();
    format!("sha256:{}", list.join(","))
}

/// Step 1 of break-glass: the storage primary as tpm2-tools names it: the
/// SRK's handle, or `work/primary.ctx` re-created from the noDA template.
fn storage_primary(tpm_port: u16, persistent_srk: bool, work: &Path) -> String {
    if persistent_srk {
        return SRK_HANDLE.to_owned();
    }
    noda_primary(tpm_port, work)
}

/// `work/primary.ctx`: the noDA storage primary, re-created from its
/// template as break-glass step 1 does.
pub fn noda_primary(tpm_port: u16, work: &Path) -> String {
    primary(
        tpm_port,
        &work.join("primary.ctx"),
        Some(NODA_PRIMARY_ATTRIBUTES),
    )
}

/// `work/legacy-primary.ctx`: the primary before sealing modes (the
/// tpm2-tools default template, not noDA), re-created.
pub fn legacy_primary(tpm_port: u16, work: &Path) -> String {
    primary(tpm_port, &work.join("legacy-primary.ctx"), None)
}

/// `tpm2_createprimary -C o -g sha256 -G ecc256:aes128cfb [-a ATTRIBUTES]`
/// into the context file `ctx`.
fn primary(tpm_port: u16, ctx: &Path, attributes: Option<&str>) -> String {
    let ctx = p(ctx);
    let mut args = vec!["-Q", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb"];
    if let Some(attributes) = attributes {
        args.extend(["-a", attributes]);
    }
    args.extend(["-c", &ctx]);
    tpm2(tpm_port, "tpm2_createprimary", &args);
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    ctx
}

/// Loads the copy `state_dir/NAME.pub` + `NAME.priv` (`root-1-auto`, say)
/// under `parent` into the context file `ctx`.
pub fn load_copy(tpm_port: u16, parent: &str, state_dir: &Path, name: &str, ctx: &Path) {
    load(
        tpm_port,
        parent,
        state_dir,
        &format!("{name}.pub"),
        &format!("{name}.priv"),
        ctx,
    );
}

/// Loads `state_dir/public` and `state_dir/private` under `parent` into the
/// context file `ctx`.
fn load(tpm_port: u16, parent: &str, state_dir: &Path, public: &str, private: &str, ctx: &Path) {
    tpm2(
        tpm_port,
        "tpm2_load",
        &[
            "-Q",
            "-C",
            parent,
            "-u",
            &p(&state_dir.join(public)),
            "-r",
            &p(&state_dir.join(private)),
            "-c",
            &p(ctx),
        ],
    );
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
}

/// Break-glass for a state dir without a PIN copy in use: recovers the root
/// key from this generation's auto copy (`tpm2_unseal -c root.ctx`, with
/// `-p pcr:sha256:...` when it is PCR-bound), as the README describes.
/// Fails the test when tpm2-tools fail (see [`try_break_glass_unseal`]).
pub fn break_glass_unseal(tpm_port: u16, state_dir: &Path, work: &Path) -> Vec<u8> {
    try_break_glass_unseal(tpm_port, state_dir, work)
        .unwrap_or_else(|e| panic!("break-glass unseal of the auto copy: {e}"))
}

/// [`break_glass_unseal`], returning tpm2_unseal's error output when the
/// TPM refuses (a PCR policy that no longer holds). Fails the test when
/// the state dir has no auto copy (PIN-only mode) or a step before the
/// unseal fails.
pub fn try_break_glass_unseal(
    tpm_port: u16,
    state_dir: &Path,
    work: &Path,
) -> Result<Vec<u8>, String> {
    let record = SealRecord::read(state_dir);
    assert!(
        !(record.pin && record.pcrs.is_empty()),
        "PIN-only mode has no auto copy: use break_glass_unseal_pin"
    );
    let parent = storage_primary(tpm_port, record.persistent_srk, work);
    let sealed = work.join("root.ctx");
    load(
        tpm_port,
        &parent,
        state_dir,
        &record.file("auto", "pub"),
        &record.file("auto", "priv"),
        &sealed,
    );
    let auth = format!("pcr:{}", record.pcr_selection());
    let mut args = vec!["-c".to_owned(), p(&sealed)];
    if !record.pcrs.is_empty() {
        args.extend(["-p".to_owned(), auth]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = tpm2_output(tpm_port, "tpm2_unseal", &args, None);
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Break-glass with the PIN copy, in the form that keeps the PIN off the
/// wire: an HMAC session salted with the storage primary and with
/// parameter encryption (`tpm2_startauthsession --hmac-session -c
/// primary.ctx -S session.ctx`), and `tpm2_unseal -c pin.ctx -p
/// "session:session.ctx+str:PIN"`. Fails the test when tpm2-tools fail
/// (see [`try_break_glass_unseal_pin`]).
pub fn break_glass_unseal_pin(tpm_port: u16, state_dir: &Path, work: &Path, pin: &str) -> Vec<u8> {
    try_break_glass_unseal_pin(tpm_port, state_dir, work, pin)
        .unwrap_or_else(|e| panic!("break-glass unseal of the PIN copy: {e}"))
}

/// [`break_glass_unseal_pin`], returning tpm2_unseal's error output when the
/// TPM refuses (a wrong PIN, lockout). The session is flushed either way.
pub fn try_break_glass_unseal_pin(
    tpm_port: u16,
    state_dir: &Path,
    work: &Path,
    pin: &str,
) -> Result<Vec<u8>, String> {
    let record = SealRecord::read(state_dir);
    assert!(record.pin, "root.seal records no PIN copy");
    let parent = storage_primary(tpm_port, record.persistent_srk, work);
    let sealed = work.join("pin.ctx");
    load(
        tpm_port,
        &parent,
        state_dir,
        &record.file("pin", "pub"),
        &record.file("pin", "priv"),
        &sealed,
    );
    let session = work.join("session.ctx");
    tpm2(
        tpm_port,
        "tpm2_startauthsession",
        &["--hmac-session", "-c", &parent, "-S", &p(&session)],
    );
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    let auth = format!("session:{}+str:{pin}", p(&session));
    let output = tpm2_output(
        tpm_port,
        "tpm2_unseal",
        &["-c", &p(&sealed), "-p", &auth],
        None,
    );
    tpm2(tpm_port, "tpm2_flushcontext", &[&p(&session)]);
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Break-glass for the layout before sealing modes: `root.pub`/`root.priv`
/// under a transient primary from the tpm2-tools template (not noDA). The
/// migration test recovers a previous release's state dir with it.
pub fn break_glass_unseal_legacy(tpm_port: u16, state_dir: &Path, work: &Path) -> Vec<u8> {
    let primary = legacy_primary(tpm_port, work);
    let sealed = work.join("root.ctx");
    load(
        tpm_port,
        &primary,
        state_dir,
        "root.pub",
        "root.priv",
        &sealed,
    );
    let secret = tpm2(tpm_port, "tpm2_unseal", &["-c", &p(&sealed)]);
    tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    secret
}

/// Extends sha256 PCR `pcr` with the SHA-256 of `data`
/// (`tpm2_pcrextend PCR:sha256=DIGEST`), as a boot-chain change would.
pub fn pcr_extend(tpm_port: u16, pcr: u8, data: &[u8]) {
    use sha2::Digest as _;
    let digest = hex(&sha2::Sha256::digest(data));
    tpm2(
        tpm_port,
        "tpm2_pcrextend",
        &[&format!("{pcr}:sha256={digest}")],
    );
}

/// The current value of sha256 PCR `pcr`.
pub fn pcr_read(tpm_port: u16, pcr: u8, work: &Path) -> [u8; 32] {
    let out = work.join(format!("pcr{pcr}.bin"));
    tpm2(
        tpm_port,
        "tpm2_pcrread",
        &["-Q", &format!("sha256:{pcr}"), "-o", &p(&out)],
    );
    let bytes = fs::read(&out).unwrap_or_else(|e| panic!("read {}: {e}", out.display()));
    bytes
        .try_into()
        .unwrap_or_else(|b: Vec<u8>| panic!("PCR {pcr} is {} bytes, not 32", b.len()))
}

/// Sets the TPM's dictionary-attack parameters: `max_tries` failures
/// before lockout, one forgiven every `recovery_secs` (and the lockout
/// hierarchy's own recovery time), and clears any lockout.
pub fn da_setup(tpm_port: u16, max_tries: u32, recovery_secs: u32) {
    tpm2(
        tpm_port,
        "tpm2_dictionarylockout",
        &[
            "--setup-parameters",
            &format!("--max-tries={max_tries}"),
            &format!("--recovery-time={recovery_secs}"),
            &format!("--lockout-recovery-time={recovery_secs}"),
        ],
    );
    tpm2(tpm_port, "tpm2_dictionarylockout", &["--clear-lockout"]);
}

/// The TPM's dictionary-attack state from `tpm2_getcap
/// properties-variable`: (TPM2_PT_LOCKOUT_COUNTER, TPM2_PT_MAX_AUTH_FAIL,
/// TPM2_PT_LOCKOUT_INTERVAL in seconds). The TPM is in lockout when the
/// counter has reached the maximum.
pub fn da_state(tpm_port: u16) -> (u32, u32, u32) {
    let out = String::from_utf8_lossy(&tpm2(tpm_port, "tpm2_getcap", &["properties-variable"]))
        .into_owned();
    let value = |name: &str| -> u32 {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in tpm2_getcap properties-variable:\n{out}"));
        let v = line.split(':').nth(1).unwrap_or_default().trim();
        let v = v.trim_start_matches("0x");
        u32::from_str_radix(v, 16).unwrap_or_else(|e| panic!("{name}: {line}: {e}"))
    };
    (
        value("TPM2_PT_LOCKOUT_COUNTER"),
        value("TPM2_PT_MAX_AUTH_FAIL"),
        value("TPM2_PT_LOCKOUT_INTERVAL"),
    )
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How [`seal_like_the_daemon`] seals a root key.
pub struct Sealing<'a> {
    /// The sha256 PCRs the auto copy is bound to (empty: plain auto copy).
    pub pcrs: &'a [u8],
    /// The PIN of the PIN copy (none: no PIN copy).
    pub pin: Option<&'a str>,
    /// Under the persistent SRK at 0x81000001 (which must exist) instead
    /// of the transient noDA primary.
    pub persistent_srk: bool,
    /// The generation G to write.
    pub generation: u64,
}

/// Seals `root_key` with tpm2-tools into `state_dir` in the daemon's
/// layout: `root.seal` plus `root-G-auto.*` (unless PIN-only) and
/// `root-G-pin.*` (with a PIN). The auto copy is noDA, with
/// `userwithauth` and an empty authValue when `pcrs` is empty, else with
/// the authPolicy of `tpm2_createpolicy --policy-pcr` over the current
/// values and no `userwithauth`; the PIN copy has the PIN as authValue,
/// `userwithauth` and no `noda`. `work` holds the intermediate files.
pub fn seal_like_the_daemon(
    tpm_port: u16,
    state_dir: &Path,
    work: &Path,
    root_key: &[u8],
    sealing: &Sealing<'_>,
) {
    let parent = storage_primary(tpm_port, sealing.persistent_srk, work);
    let key_file = work.join("root-key.in");
    fs::write(&key_file, root_key).expect("write the root key to seal");
    let g = sealing.generation;
    let create = |extra: &[&str], kind: &str| {
        let mut args = vec![
            "-Q".to_owned(),
            "-C".to_owned(),
            parent.clone(),
            "-g".to_owned(),
            "sha256".to_owned(),
            "-i".to_owned(),
            p(&key_file),
            "-u".to_owned(),
            p(&state_dir.join(format!("root-{g}-{kind}.pub"))),
            "-r".to_owned(),
            p(&state_dir.join(format!("root-{g}-{kind}.priv"))),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tpm2(tpm_port, "tpm2_create", &args);
        tpm2(tpm_port, "tpm2_flushcontext", &["-t"]);
    };
    if sealing.pin.is_none() || !sealing.pcrs.is_empty() {
        if sealing.pcrs.is_empty() {
            create(&["-a", "fixedtpm|fixedparent|userwithauth|noda"], "auto");
        } else {
            let policy = work.join("pcr.policy");
            tpm2(
                tpm_port,
                "tpm2_createpolicy",
                &[
                    "-Q",
                    "--policy-pcr",
                    "-l",
                    &pcr_selection(sealing.pcrs),
                    "-L",
                    &p(&policy),
                ],
            );
            // tpm2_createpolicy leaves its trial session loaded.
            tpm2(tpm_port, "tpm2_flushcontext", &["-l"]);
            create(
                &["-a", "fixedtpm|fixedparent|noda", "-L", &p(&policy)],
                "auto",
            );
        }
    }
    if let Some(pin) = sealing.pin {
        let auth = format!("str:{pin}");
        create(
            &["-a", "fixedtpm|fixedparent|userwithauth", "-p", &auth],
            "pin",
        );
    }
    fs::remove_file(&key_file).expect("remove the root key file");
    let pcr_values: Vec<serde_json::Value> = sealing
        .pcrs
        .iter()
        .map(|&pcr| serde_json::json!({"pcr": pcr, "sha256": hex(&pcr_read(tpm_port, pcr, work))}))
        .collect();
    let record = serde_json::json!({
        "format": 1,
        "generation": g,
        "primary": if sealing.persistent_srk { "persistent-srk" } else { "transient-noda" },
        "pcrs": sealing.pcrs,
        "pcr_values": pcr_values,
        "pin": sealing.pin.is_some(),
    });
    fs::write(state_dir.join("root.seal"), record.to_string()).expect("write root.seal");
}
