//! The one syntax of rotation periods, shared by the daemon's config
//! (`[keys] rotation_period`) and the CLI (`--rotation-period`,
//! `set-rotation-period`): `<n>h`, `<n>d`, `<n>w`, `<n>y` (365 days) or
//! `off`, shown back in the largest unit that divides it exactly.

use crate::message::MIN_ROTATION_PERIOD_SECS;

/// The longest rotation period: 100 years of 365 days.
pub const MAX_ROTATION_PERIOD_SECS: u64 = 100 * YEAR;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;
const YEAR: u64 = 365 * DAY;

/// The units, largest first, as [`format_period`] picks them.
const UNITS: [(char, u64); 4] = [('y', YEAR), ('w', WEEK), ('d', DAY), ('h', HOUR)];

/// A rotation period that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    /// The text is not `<n>h|d|w|y` or `off`.
    #[error(
        "\"{0}\" is not a rotation period; write a whole number and a unit, h (hours), d (days), w (weeks) or y (365 days), e.g. 90d, or off"
    )]
    Syntax(String),
    /// The period is shorter than [`MIN_ROTATION_PERIOD_SECS`].
    #[error(
        "a rotation period of {0} s is shorter than the minimum of 1h; give at least 1h, or off"
    )]
    TooShort(u64),
    /// The period is longer than [`MAX_ROTATION_PERIOD_SECS`].
    #[error(
        "a rotation period of {0} s is longer than the maximum of 100y; give at most 100y, or off"
    )]
    TooLong(u64),
}

/// Reads a rotation period: `Some(seconds)`, or `None` for `off`.
///
/// # Errors
///
/// [`PeriodError`] for text that is not `<n>h|d|w|y` or `off`, and for a
/// period outside 1h..=100y.
pub fn parse_period(text: &str) -> Result<Option<u64>, PeriodError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let syntax = || PeriodError::Syntax(text.chars().take(64).collect());
    let unit = text.chars().last().ok_or_else(syntax)?;
    let number = &text[..text.len() - unit.len_utf8()];
    let (_, scale) = UNITS
        .iter()
        .find(|(name, _)| *name == unit.to_ascii_lowercase())
        .ok_or_else(syntax)?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    let secs = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(*scale))
        .ok_or(PeriodError::TooLong(u64::MAX))?;
    check_period(secs)?;
    Ok(Some(secs))
}

/// Checks a period in seconds against the bounds (1h..=100y).
///
/// # Errors
///
/// [`PeriodError::TooShort`] or [`PeriodError::TooLong`].
pub fn check_period(secs: u64) -> Result<(), PeriodError> {
    if secs < MIN_ROTATION_PERIOD_SECS {
        return Err(PeriodError::TooShort(secs));
    }
    if secs > MAX_ROTATION_PERIOD_SECS {
        return Err(PeriodError::TooLong(secs));
    }
    Ok(())
}

/// A period as [`parse_period`] reads it, in the largest unit that divides
/// it exactly (`7776000` is `90d`, `604800` is `1w`); a period of no whole
/// hours (only a hand-made request sets one) in seconds, e.g. `5400s`.
pub fn format_period(secs: u64) -> String {
    UNITS
        .iter()
        .find(|(_, scale)| secs > 0 && secs % scale == 0)
        .map_or_else(
            || format!("{secs}s"),
            |(unit, scale)| format!("{}{unit}", secs / scale),
        )
}

/// `Some(seconds)` as [`format_period`] shows it, `None` as `off`.
pub fn format_setting(period: Option<u64>) -> String {
    period.map_or_else(|| "off".to_string(), format_period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_read_in_every_unit_and_off() {
        assert_eq!(parse_period("1h"), Ok(Some(3600)));
        assert_eq!(parse_period("90d"), Ok(Some(90 * 86_400)));
        assert_eq!(parse_period("2w"), Ok(Some(14 * 86_400)));
        assert_eq!(parse_period("1y"), Ok(Some(365 * 86_400)));
        assert_eq!(parse_period(" 100y "), Ok(Some(MAX_ROTATION_PERIOD_SECS)));
        assert_eq!(parse_period("off"), Ok(None));
        assert_eq!(parse_period("OFF"), Ok(None));
    }

    #[test]
    fn bad_periods_are_refused_with_the_rule() {
        for bad in [
            "", "d", "90", "90m", "-1d", "+1d", "1.5d", "1 d", "ten d", "1dd", "é",
        ] {
            assert!(
                matches!(parse_period(bad), Err(PeriodError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(parse_period("0h"), Err(PeriodError::TooShort(0)));
        assert!(matches!(parse_period("101y"), Err(PeriodError::TooLong(_))));
        assert!(matches!(
            parse_period("99999999999999999999h"),
            Err(PeriodError::TooLong(_))
        ));
        assert!(
            PeriodError::Syntax("x".into())
                .to_string()
                .contains("e.g. 90d")
        );
    }

    #[test]
    fn periods_show_in_the_largest_exact_unit_and_read_back() {
        assert_eq!(format_period(90 * 86_400), "90d");
        assert_eq!(format_period(7 * 86_400), "1w");
        assert_eq!(format_period(365 * 86_400), "1y");
        assert_eq!(format_period(3600), "1h");
        assert_eq!(format_period(36 * 3600), "36h");
        assert_eq!(format_period(5400), "5400s");
        assert_eq!(format_setting(None), "off");
        for secs in [3600, 86_400, 90 * 86_400, 14 * 86_400, 730 * 86_400] {
            assert_eq!(parse_period(&format_period(secs)), Ok(Some(secs)));
        }
    }
}
