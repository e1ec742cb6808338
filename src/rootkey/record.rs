//! `root.seal`: which copies of the root key are sealed, to what, in which
//! generation of files. Replacing it is the commit point of every change
//! to the sealed copies (a reseal, a PIN change, a migration): the files
//! of a new generation are written and synced first, the record is
//! replaced atomically, and only then are the old generation's files
//! deleted, so a crash at any moment leaves one complete, working set.
//!
//! The record is not secret and not trusted for security: the TPM enforces
//! the PCR policy and the PIN. It tells the daemon (and an operator doing
//! break-glass recovery) which files to load and which PCR values the
//! auto copy was sealed to, so a mismatch names the PCRs that changed.

use serde::{Deserialize, Serialize};

use crate::state_dir::{StateDir, StateDirError};
use crate::tpm::{MAX_PCR, PcrValue};

/// The current record.
pub const RECORD: &str = "root.seal";
/// The record of a root-key rotation in progress (`rotate-root`).
pub const NEXT_RECORD: &str = "root-next.seal";
/// The largest record read.
const MAX_RECORD: u64 = 16 * 1024;
/// The largest generation a record may name.
const MAX_GENERATION: u64 = 1 << 48;
/// The record format this version writes and reads.
const FORMAT: u32 = 1;

/// How the root key is sealed: the mode `[root_key]` asks for, or the one
/// a record shows is in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealingMode {
    /// sha256 PCRs the auto copy is bound to (sorted, no duplicates);
    /// empty: the auto copy unseals on this TPM without conditions.
    pub pcrs: Vec<u8>,
    /// Whether a copy opens with a PIN.
    pub pin: bool,
}

impl SealingMode {
    /// Whether a copy unseals at start without a person: every mode but
    /// PIN-only.
    pub fn has_auto_copy(&self) -> bool {
        !(self.pin && self.pcrs.is_empty())
    }

    /// The mode in words for logs and messages: "PCRs 7, 14 and a PIN".
    pub fn describe(&self) -> String {
        let pcrs = match self.pcrs.as_slice() {
            [] => None,
            [one] => Some(format!("PCR {one}")),
            many => Some(format!(
                "PCRs {}",
                many.iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        match (pcrs, self.pin) {
            (None, false) => "this TPM only (no PCRs, no PIN)".to_string(),
            (None, true) => "a PIN".to_string(),
            (Some(pcrs), false) => pcrs,
            (Some(pcrs), true) => format!("{pcrs}, or a PIN"),
        }
    }
}

/// Which storage primary the copies are sealed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrimaryKind {
    /// The transient noDA primary (`tpm::noda_ecc_template`).
    TransientNoda,
    /// The TPM's persistent SRK at 0x81000001.
    PersistentSrk,
}

impl PrimaryKind {
    /// The storage primary to load for copies sealed under this one: never
    /// an SRK provisioned after they were sealed.
    pub fn storage_primary(self) -> crate::tpm::StoragePrimary {
        match self {
            PrimaryKind::TransientNoda => {
                crate::tpm::StoragePrimary::Transient(crate::tpm::Template::NoDa)
            }
            PrimaryKind::PersistentSrk => crate::tpm::StoragePrimary::PersistentSrk,
        }
    }
}

/// One PCR value as recorded, hex on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecordedPcr {
    pcr: u8,
    sha256: String,
}

/// What `root.seal` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: u32,
    generation: u64,
    primary: PrimaryKind,
    pcrs: Vec<u8>,
    pcr_values: Vec<RecordedPcr>,
    pin: bool,
}

/// A parsed, checked record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealRecord {
    /// The generation of the copies' files.
    pub generation: u64,
    /// The primary they are sealed under.
    pub primary: PrimaryKind,
    /// The mode in force.
    pub mode: SealingMode,
    /// The values of `mode.pcrs` the auto copy was sealed to.
    pub pcr_values: Vec<PcrValue>,
}

/// Why a record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading or writing it failed.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// It does not parse or is inconsistent.
    #[error(
        "{path} is not a valid sealing record ({problem}); it names which sealed copies of the root key to load. Restore it from the backup of this state dir (README: break-glass recovery shows what it holds); hostkms changed nothing"
    )]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// The file names of one copy: public and private blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFiles {
    /// The TPM2B_PUBLIC blob.
    pub public: String,
    /// The TPM2B_PRIVATE blob.
    pub private: String,
}

impl CopyFiles {
    fn of(generation: u64, copy: &str) -> CopyFiles {
        CopyFiles {
            public: format!("root-{generation}-{copy}.pub"),
            private: format!("root-{generation}-{copy}.priv"),
        }
    }
}

impl SealRecord {
    /// The auto copy's files, when the mode has one.
    pub fn auto_files(&self) -> Option<CopyFiles> {
        self.mode
            .has_auto_copy()
            .then(|| CopyFiles::of(self.generation, "auto"))
    }

    /// The PIN copy's files, when the mode has a PIN.
    pub fn pin_files(&self) -> Option<CopyFiles> {
        self.mode.pin.then(|| CopyFiles::of(self.generation, "pin"))
    }

    /// Every file of this record's generation.
    pub fn files(&self) -> Vec<String> {
        [self.auto_files(), self.pin_files()]
            .into_iter()
            .flatten()
            .flat_map(|files| [files.private, files.public])
            .collect()
    }

    /// Reads record `name`; `None` when it does not exist.
    pub fn read(dir: &StateDir, name: &str) -> Result<Option<SealRecord>, RecordError> {
        if !dir.contains(name) {
            return Ok(None);
        }
        let bytes = dir.read(name, MAX_RECORD)?;
        let invalid = |problem: String| RecordError::Invalid {
            path: dir.file(name).display().to_string(),
            problem,
        };
        let on_disk: OnDisk =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{e}")))?;
        if on_disk.format != FORMAT {
            return Err(invalid(format!(
                "format {} (this hostkms reads format {FORMAT})",
                on_disk.format
            )));
        }
        let mode = SealingMode {
            pcrs: on_disk.pcrs,
            pin: on_disk.pin,
        };
        check_pcrs(&mode.pcrs).map_err(invalid)?;
        let mut pcr_values = Vec::new();
        for recorded in &on_disk.pcr_values {
            let sha256 = parse_hex32(&recorded.sha256).ok_or_else(|| {
                invalid(format!(
                    "the value of PCR {} is not 64 hex digits",
                    recorded.pcr
                ))
            })?;
            pcr_values.push(PcrValue {
                pcr: recorded.pcr,
                sha256,
            });
        }
        // Generations count reseals from 1: far below this bound, which
        // keeps the next one's number from overflowing.
        if !(1..=MAX_GENERATION).contains(&on_disk.generation) {
            return Err(invalid(format!(
                "generation {} is out of range 1..={MAX_GENERATION}",
                on_disk.generation
            )));
        }
        let recorded: Vec<u8> = pcr_values.iter().map(|value| value.pcr).collect();
        if recorded != mode.pcrs {
            return Err(invalid(format!(
                "it binds PCRs {:?} but records values for {recorded:?}",
                mode.pcrs
            )));
        }
        Ok(Some(SealRecord {
            generation: on_disk.generation,
            primary: on_disk.primary,
            mode,
            pcr_values,
        }))
    }

    /// Writes this record as `name`, atomically and durably.
    pub fn write(&self, dir: &StateDir, name: &str) -> Result<(), RecordError> {
        let on_disk = OnDisk {
            format: FORMAT,
            generation: self.generation,
            primary: self.primary,
            pcrs: self.mode.pcrs.clone(),
            pcr_values: self
                .pcr_values
                .iter()
                .map(|value| RecordedPcr {
                    pcr: value.pcr,
                    sha256: hex(&value.sha256),
                })
                .collect(),
            pin: self.mode.pin,
        };
        let mut bytes = serde_json::to_vec_pretty(&on_disk).map_err(|e| RecordError::Invalid {
            path: dir.file(name).display().to_string(),
            problem: e.to_string(),
        })?;
        bytes.push(b'\n');
        dir.write_private(name, &bytes)?;
        Ok(())
    }
}

/// Checks a PCR list: each 0..=23, ascending, no duplicates.
pub fn check_pcrs(pcrs: &[u8]) -> Result<(), String> {
    if let Some(pcr) = pcrs.iter().find(|&&pcr| pcr > MAX_PCR) {
        return Err(format!("PCR {pcr} is out of range 0..={MAX_PCR}"));
    }
    if pcrs.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(format!(
            "PCRs {pcrs:?} are not in ascending order without repeats"
        ));
    }
    Ok(())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_round_trip_and_names_its_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("state")).unwrap();
        let record = SealRecord {
            generation: 4,
            primary: PrimaryKind::TransientNoda,
            mode: SealingMode {
                pcrs: vec![7, 14],
                pin: true,
            },
            pcr_values: vec![
                PcrValue {
                    pcr: 7,
                    sha256: [0xab; 32],
                },
                PcrValue {
                    pcr: 14,
                    sha256: [0x01; 32],
                },
            ],
        };
        record.write(&dir, RECORD).unwrap();
        assert_eq!(
            SealRecord::read(&dir, RECORD).unwrap(),
            Some(record.clone())
        );
        assert_eq!(
            record.files(),
            [
                "root-4-auto.priv",
                "root-4-auto.pub",
                "root-4-pin.priv",
                "root-4-pin.pub"
            ]
        );
        let pin_only = SealRecord {
            mode: SealingMode {
                pcrs: vec![],
                pin: true,
            },
            pcr_values: vec![],
            ..record
        };
        assert_eq!(pin_only.auto_files(), None);
        assert!(SealRecord::read(&dir, NEXT_RECORD).unwrap().is_none());
    }

    #[test]
    fn inconsistent_records_are_refused_with_the_file_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("state")).unwrap();
        for bad in [
            r#"{"format":1,"generation":1,"primary":"transient-noda","pcrs":[7],"pcr_values":[],"pin":false}"#,
            r#"{"format":1,"generation":1,"primary":"transient-noda","pcrs":[24],"pcr_values":[{"pcr":24,"sha256":"00"}],"pin":false}"#,
            r#"{"format":2,"generation":1,"primary":"transient-noda","pcrs":[],"pcr_values":[],"pin":false}"#,
            r#"{"format":1,"generation":1,"primary":"transient-noda","pcrs":[7],"pcr_values":[{"pcr":7,"sha256":"zz"}],"pin":false}"#,
            "not json",
        ] {
            dir.write_private(RECORD, bad.as_bytes()).unwrap();
            let error = SealRecord::read(&dir, RECORD).unwrap_err().to_string();
            assert!(error.contains("root.seal"), "{error}");
            assert!(error.contains("changed nothing"), "{error}");
        }
    }

    #[test]
    fn modes_describe_themselves() {
        let mode = |pcrs: &[u8], pin| SealingMode {
            pcrs: pcrs.to_vec(),
            pin,
        };
        assert_eq!(mode(&[7, 14], true).describe(), "PCRs 7, 14, or a PIN");
        assert_eq!(mode(&[16], false).describe(), "PCR 16");
        assert!(!mode(&[], true).has_auto_copy());
        assert!(mode(&[], false).has_auto_copy());
    }
}
