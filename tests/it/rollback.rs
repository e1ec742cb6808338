//! Rollback-proof revocation: the key store bound to a TPM NV counter.
//! The counter itself (define, read, raise, its attributes and
//! authorization) against a private swtpm, then the daemon refusing an
//! older keystore.db, a deleted key and a missing counter, and catching up
//! on increments a hung TPM held back.

use std::str::FromStr;

use hostkms::tpm::{NV_COUNTER_FIRST, NvCounterError, Tcti, Tpm};

use crate::harness::Swtpm;
use crate::harness::tpm2_tools::tpm2;

fn open(tpm: &Swtpm) -> Tpm {
    Tpm::open(&Tcti::from_str(&tpm.tcti()).expect("TCTI")).expect("open the TPM")
}

#[test]
fn the_counter_is_defined_read_and_raised_never_past_its_target() {
    let swtpm = Swtpm::start();
    let auth = [7u8; 32];
    let (index, first) = open(&swtpm).nv_counter_define(&auth).expect("define");
    assert_eq!(index, NV_COUNTER_FIRST, "the first free index of the range");
    assert_eq!(
        open(&swtpm).nv_counter_read(index, &auth).expect("read"),
        first
    );
    let raised = open(&swtpm)
        .nv_counter_raise(index, &auth, first + 1)
        .expect("raise");
    assert_eq!(raised, first + 1);
    // Already at the target: not counted again.
    let again = open(&swtpm)
        .nv_counter_raise(index, &auth, first + 1)
        .expect("raise again");
    assert_eq!(again, first + 1);

    // A second store gets the next index.
    let (second, _) = open(&swtpm).nv_counter_define(&[9u8; 32]).expect("define");
    assert_eq!(second, NV_COUNTER_FIRST + 1);

    // Another authorization value is refused, without lockout (NO_DA).
    for _ in 0..5 {
        let wrong = open(&swtpm).nv_counter_read(index, &[8u8; 32]);
        assert!(
            matches!(wrong, Err(NvCounterError::AuthFailed { index: i }) if i == index),
            "{wrong:?}"
        );
    }
    let raised = open(&swtpm)
        .nv_counter_raise(index, &[8u8; 32], first + 5)
        .expect_err("raised with another auth");
    assert!(
        matches!(raised, NvCounterError::AuthFailed { .. }),
        "{raised:?}"
    );
    assert_eq!(
        open(&swtpm).nv_counter_read(index, &auth).expect("read"),
        first + 1
    );

    // The owner (empty authorization) cannot count it up.
    let hex = format!("{index:#x}");
    let output = std::process::Command::new("tpm2_nvincrement")
        .args(["-C", "o", &hex])
        .env("TPM2TOOLS_TCTI", swtpm.tcti())
        .env("TSS2_LOG", "all+none")
        .output()
        .expect("tpm2_nvincrement");
    assert!(!output.status.success(), "the owner counted it up");
    assert_eq!(
        open(&swtpm).nv_counter_read(index, &auth).expect("read"),
        first + 1
    );

    // Deleted: missing, never recreated by reading it.
    tpm2(swtpm.port, "tpm2_nvundefine", &["-C", "o", &hex]);
    let missing = open(&swtpm).nv_counter_read(index, &auth);
    assert!(
        matches!(missing, Err(NvCounterError::Missing { .. })),
        "{missing:?}"
    );
    let missing = open(&swtpm).nv_counter_raise(index, &auth, first + 9);
    assert!(
        matches!(missing, Err(NvCounterError::Missing { .. })),
        "{missing:?}"
    );

    // Defined again by someone else, with other attributes: refused.
    tpm2(
        swtpm.port,
        "tpm2_nvdefine",
        &[
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "ownerread|ownerwrite|authread|authwrite|nt=counter",
            &hex,
        ],
    );
    let other = open(&swtpm).nv_counter_read(index, &auth);
    assert!(
        matches!(other, Err(NvCounterError::Attributes { .. })),
        "{other:?}"
    );
}

#[test]
fn a_new_counter_starts_where_the_tpm_says_not_at_zero() {
    let swtpm = Swtpm::start();
    let auth = [1u8; 32];
    let (index, first) = open(&swtpm).nv_counter_define(&auth).expect("define");
    for target in first + 1..=first + 3 {
        open(&swtpm)
            .nv_counter_raise(index, &auth, target)
            .expect("raise");
    }
    assert!(
        first >= 1,
        "a counter's first value is the TPM's, never 0 ({first})"
    );
    // Deleted and defined again, even at the same index, the counter never
    // starts below the value the deleted one had: the TPM remembers the
    // highest value any of its counters had.
    tpm2(
        swtpm.port,
        "tpm2_nvundefine",
        &["-C", "o", &format!("{index:#x}")],
    );
    let (again, later) = open(&swtpm).nv_counter_define(&[2u8; 32]).expect("define");
    assert_eq!(again, index);
    assert!(later >= first + 3, "{later} < {}", first + 3);
}
