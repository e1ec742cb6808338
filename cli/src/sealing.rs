//! `unlock`, `reseal` and `change-pin`: the root key sealed behind a PIN
//! and the boot state (protocol version 6). Each asks the daemon's status
//! first, so that a PIN is asked only when one is needed, a new PIN is
//! asked twice where the daemon sets one, and a PCR change is shown before
//! anything is sent.

use std::io::Write as _;

use agent_proto::{Client, LockState, UnlockInfo};

use crate::args::{ChangePinArgs, PinArgs, ResealArgs, UnlockArgs};
use crate::error::CliError;
use crate::io::write_stdout;
use crate::output;
use crate::pin::PinReader;

/// A JSON serialization failure, reported as an output error.
fn json_error(err: serde_json::Error) -> CliError {
    CliError::write(None, std::io::Error::other(err))
}

/// A note for the person at the terminal, on standard error.
fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "hostkms: {text}");
}

/// `hostkms unlock`.
pub fn unlock(client: &mut Client, args: &UnlockArgs, json: bool) -> Result<(), CliError> {
    let status = client.status()?;
    let mut pins = PinReader::new();
    let pin_file = args.pin.pin_file.as_deref();
    let (pin, reseal) = match &status.sealing.lock {
        LockState::Unlocked => {
            note("the daemon is not locked: nothing to unlock");
            let text = if json {
                output::json_line(&serde_json::json!({
                    "already_unlocked": true,
                    "root_key_check": status.root_key_check,
                    "resealed": false,
                    "changed_pcrs": [],
                }))
                .map_err(json_error)?
            } else {
                format!("{}\n", output::sealing_line(&status.sealing))
            };
            return write_stdout(text.as_bytes());
        }
        LockState::NoRootKeyYet => {
            note("the daemon has no root key yet: the PIN given now becomes its PIN");
            (pins.new_pin(pin_file, "new PIN")?, false)
        }
        LockState::PinRequired => (pins.pin(pin_file, "PIN")?, args.reseal),
        LockState::PcrMismatch { changed } => {
            note(&format!(
                "the daemon is locked: {} changed since the root key was sealed to {}:",
                output::pcr_list(&changed.iter().map(|c| c.pcr).collect::<Vec<_>>()),
                output::pcr_list(&status.sealing.mode.pcrs),
            ));
            let _ = write!(std::io::stderr(), "{}", output::pcr_changes_human(changed));
            let reseal = args.reseal
                || (pins.on_terminal()
                    && crate::io::confirm(
                        "reseal the PCR copy to these values (trust this boot chain from now on)?",
                    )?);
            (pins.pin(pin_file, "PIN")?, reseal)
        }
    };
    let info = client.unlock(&pin, reseal)?;
    drop(pin);
    let text = if json {
        unlock_json(&info)?
    } else {
        output::unlock_human(&info)
    };
    write_stdout(text.as_bytes())
}

/// `unlock --json`: the daemon's answer, and that it was locked.
fn unlock_json(info: &UnlockInfo) -> Result<String, CliError> {
    let line = output::unlock_json(info).map_err(json_error)?;
    let mut value: serde_json::Value = serde_json::from_str(&line).map_err(json_error)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("already_unlocked".to_string(), false.into());
    }
    output::json_line(&value).map_err(json_error)
}

/// Refuses early, before a PIN is asked, when the daemon is locked: it
/// would refuse with `Locked` anyway.
fn refuse_locked(status: &agent_proto::StatusInfo) -> Result<(), CliError> {
    if status.sealing.lock.is_locked() {
        return Err(CliError::Locked {
            message: output::sealing_line(&status.sealing),
        });
    }
    Ok(())
}

/// `hostkms reseal`.
pub fn reseal(client: &mut Client, args: &ResealArgs, json: bool) -> Result<(), CliError> {
    let status = client.status()?;
    refuse_locked(&status)?;
    let mut pins = PinReader::new();
    let pin_file = args.pin.pin_file.as_deref();
    let new_pin_file = args.new_pin_file.as_deref();
    let pin = if status.sealing.mode.pin || pin_file.is_some() {
        Some(pins.pin(pin_file, "PIN")?)
    } else {
        None
    };
    let mut new_pin = new_pin_file
        .map(|file| pins.new_pin(Some(file), "new PIN"))
        .transpose()?;
    let pcrs = args.pcrs.as_ref().map(|list| list.0.as_slice());
    let plan = client.reseal(pin.as_ref(), pcrs, new_pin.as_ref(), true)?;
    if args.dry_run {
        return print_reseal(&plan, json);
    }
    if pins.on_terminal() {
        let _ = write!(std::io::stderr(), "{}", output::reseal_human(&plan));
        if !crate::io::confirm("reseal the root key as shown?")? {
            return Err(CliError::Usage(
                "not confirmed: nothing was resealed".to_string(),
            ));
        }
    }
    if plan.after.pin && !plan.before.pin && new_pin.is_none() {
        if pins.stdin_taken(new_pin_file) {
            return Err(CliError::Usage(
                "the config turns the PIN on: give the new PIN with --new-pin-file FILE \
                 (standard input gave the current one). Nothing was resealed"
                    .to_string(),
            ));
        }
        note("the config turns the PIN on: choose the PIN");
        new_pin = Some(pins.new_pin(new_pin_file, "new PIN")?);
    }
    let done = client.reseal(pin.as_ref(), pcrs, new_pin.as_ref(), false)?;
    print_reseal(&done, json)
}

/// `hostkms change-pin`.
pub fn change_pin(client: &mut Client, args: &ChangePinArgs, json: bool) -> Result<(), CliError> {
    let status = client.status()?;
    refuse_locked(&status)?;
    if !status.sealing.mode.pin {
        return Err(CliError::Usage(format!(
            "the root key is {}: there is no PIN to change. To add one, set pin = true \
             under [root_key] in the daemon's config and run `hostkms reseal`",
            output::sealing_mode(&status.sealing.mode)
        )));
    }
    let mut pins = PinReader::new();
    let pin = pins.pin(args.pin.pin_file.as_deref(), "PIN")?;
    let new_pin = pins.new_pin(args.new_pin_file.as_deref(), "new PIN")?;
    if pin.same_as(&new_pin) {
        return Err(CliError::Usage(
            "the new PIN is the current one: nothing was changed".to_string(),
        ));
    }
    let done = client.change_pin(&pin, &new_pin)?;
    print_reseal(&done, json)
}

/// `rotate-root`: with the PIN when the root key is sealed to one.
pub fn rotate_root(
    client: &mut Client,
    args: &PinArgs,
) -> Result<agent_proto::RootRotation, CliError> {
    let status = client.status()?;
    if !status.sealing.mode.pin {
        if args.pin_file.is_some() {
            return Err(CliError::Usage(format!(
                "the root key is {}: it has no PIN; leave out --pin-file",
                output::sealing_mode(&status.sealing.mode)
            )));
        }
        return Ok(client.rotate_root()?);
    }
    let pin = PinReader::new().pin(args.pin_file.as_deref(), "PIN")?;
    Ok(client.rotate_root_with_pin(&pin)?)
}

/// Prints a reseal's before and after.
fn print_reseal(info: &agent_proto::ResealInfo, json: bool) -> Result<(), CliError> {
    let text = if json {
        output::reseal_json(info).map_err(json_error)?
    } else {
        output::reseal_human(info)
    };
    write_stdout(text.as_bytes())
}
