//! Byte sizes as people type them (`352G`, `1.5GiB`, `352.8GB`) and as admins like to read them.
//!
//! Units: a bare number is bytes; `K`/`M`/`G`/`T`/`P`/`E` and `KiB`..`EiB` are powers of 1024;
//! `KB`..`EB` are powers of 1000 (README's contract). Case does not matter. A fraction is fine
//! when it comes out as whole bytes (`1.5K` = 1536); a fraction of a byte is an error.

use std::fmt;

/// Why a size did not parse; the message names the input and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size: expected a number of bytes, optionally with a unit like 352G or 1.5TiB")]
    Empty,
    #[error("size `{0}` is negative: sizes are byte counts (0 or more)")]
    Negative(String),
    #[error("size `{0}` is not a number: expected digits, optionally with a decimal point and a unit (e.g. 352G, 1.5TiB, 4096)")]
    NotANumber(String),
    #[error("size `{0}` uses exponent notation: write the digits out, or use a unit (e.g. 400G)")]
    Exponent(String),
    #[error("size `{input}` has an unknown unit `{unit}`: expected one of B, K, M, G, T, P, E (powers of 1024, also KiB..EiB) or KB, MB, GB, TB, PB, EB (powers of 1000)")]
    UnknownUnit { input: String, unit: String },
    #[error("size `{0}` is too large: the largest is 18446744073709551615 bytes (16 EiB minus one byte)")]
    TooLarge(String),
    #[error("size `{input}` is {bytes} and a fraction of a byte: give whole bytes (e.g. {rounded}), or a fraction that comes out whole (1.5K = 1536)")]
    FractionalBytes {
        input: String,
        bytes: u64,
        rounded: u64,
    },
}

/// Parses a size such as `352G`, `352.8GB`, `1.5 TiB`, `4096` into bytes.
/// Fractions are allowed when the result is whole bytes (`0.5K` = 512); `1.5` or `1.0001K`
/// name a fraction of a byte and are refused.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    if text.starts_with('-') {
        return Err(SizeError::Negative(input.to_string()));
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let number: String = number.chars().filter(|&c| c != '_').collect();
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(SizeError::NotANumber(input.to_string()));
    }
    if unit.starts_with(['e', 'E'])
        && unit[1..]
            .trim_start_matches(['+', '-'])
            .starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(SizeError::Exponent(input.to_string()));
    }
    let multiplier = unit_multiplier(unit).ok_or_else(|| SizeError::UnknownUnit {
        input: input.to_string(),
        unit: unit.to_string(),
    })?;
    let (whole, fraction) = number.split_once('.').unwrap_or((&number, ""));
    let too_large = || SizeError::TooLarge(input.to_string());
    // Exact arithmetic: whole * multiplier + fraction * multiplier, in u128.
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole
        .checked_mul(multiplier as u128)
        .ok_or_else(too_large)?;
    let fraction = fraction.trim_end_matches('0');
    if !fraction.is_empty() {
        if fraction.len() > 30 {
            return Err(SizeError::NotANumber(input.to_string()));
        }
        let numerator: u128 = fraction
            .parse()
            .map_err(|_| SizeError::NotANumber(input.to_string()))?;
        let denominator = 10u128.pow(fraction.len() as u32);
        let scaled = numerator
            .checked_mul(multiplier as u128)
            .ok_or_else(too_large)?;
        bytes = bytes
            .checked_add(scaled / denominator)
            .ok_or_else(too_large)?;
        if scaled % denominator != 0 {
            let bytes = u64::try_from(bytes).map_err(|_| too_large())?;
            return Err(SizeError::FractionalBytes {
                input: input.to_string(),
                bytes,
                rounded: bytes.saturating_add(1),
            });
        }
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    const KI: u64 = 1024;
    let lower = unit.to_ascii_lowercase();
    let value = match lower.as_str() {
        "" | "b" => 1,
        "k" | "kib" => KI,
        "m" | "mib" => KI.pow(2),
        "g" | "gib" => KI.pow(3),
        "t" | "tib" => KI.pow(4),
        "p" | "pib" => KI.pow(5),
        "e" | "eib" => KI.pow(6),
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "pb" => 1000u64.pow(5),
        "eb" => 1000u64.pow(6),
        _ => return None,
    };
    Some(value)
}

/// Displays bytes in binary units for people: `329.0 GiB`, `512.0 MiB`, `0 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let bytes = self.0;
        if bytes < 1024 {
            return f.pad(&format!("{bytes} B"));
        }
        let mut value = bytes as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        f.pad(&format!("{value:.1} {}", UNITS[unit]))
    }
}

/// Displays an integer with thousands separators (`352,800,000,000`), for exact figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouped(pub u64);

impl fmt::Display for Grouped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        f.pad(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_binary_and_decimal_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("352G"), Ok(352 << 30));
        assert_eq!(parse_size("352g"), Ok(352 << 30));
        assert_eq!(parse_size("352GiB"), Ok(352 << 30));
        assert_eq!(parse_size("352.8GB"), Ok(352_800_000_000));
        assert_eq!(parse_size("1.5 TiB"), Ok(3 << 39));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size("1_000"), Ok(1000));
        assert_eq!(parse_size(".5K"), Ok(512));
    }

    #[test]
    fn fractions_must_come_out_as_whole_bytes() {
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("2.0"), Ok(2));
        assert_eq!(parse_size("1.25KB"), Ok(1250));
        assert_eq!(
            parse_size("1.5"),
            Err(SizeError::FractionalBytes {
                input: "1.5".into(),
                bytes: 1,
                rounded: 2
            })
        );
        assert!(matches!(
            parse_size("1.0001K"),
            Err(SizeError::FractionalBytes { bytes: 1024, .. })
        ));
        assert!(matches!(
            parse_size("0.1"),
            Err(SizeError::FractionalBytes { .. })
        ));
        let message = parse_size("1.5").unwrap_err().to_string();
        assert!(message.contains("fraction of a byte"), "{message}");
    }

    #[test]
    fn the_unit_family_goes_up_to_exbibytes() {
        assert_eq!(parse_size("1E"), Ok(1 << 60));
        assert_eq!(parse_size("15EiB"), Ok(15 << 60));
        assert_eq!(parse_size("18EB"), Ok(18_000_000_000_000_000_000));
        assert!(matches!(parse_size("16E"), Err(SizeError::TooLarge(_))));
        assert!(matches!(parse_size("16EiB"), Err(SizeError::TooLarge(_))));
        assert!(matches!(parse_size("19EB"), Err(SizeError::TooLarge(_))));
        let message = parse_size("16EiB").unwrap_err().to_string();
        assert!(
            message.contains("18446744073709551615 bytes"),
            "the limit named is the largest size accepted: {message}"
        );
    }

    #[test]
    fn rejects_bad_sizes_with_specific_errors() {
        assert!(
            matches!(parse_size("12Q"), Err(SizeError::UnknownUnit { unit, .. }) if unit == "Q")
        );
        assert!(matches!(parse_size("-5G"), Err(SizeError::Negative(_))));
        assert!(matches!(parse_size("1e400"), Err(SizeError::Exponent(_))));
        assert!(matches!(parse_size("1E9"), Err(SizeError::Exponent(_))));
        assert!(matches!(parse_size("abc"), Err(SizeError::NotANumber(_))));
        assert!(matches!(
            parse_size("1.2.3G"),
            Err(SizeError::NotANumber(_))
        ));
        assert!(matches!(parse_size(""), Err(SizeError::Empty)));
        assert!(matches!(
            parse_size("17ZB"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(parse_size("16385P"), Err(SizeError::TooLarge(_))));
        assert!(matches!(
            parse_size("99999999999999999999999999999999999999999"),
            Err(SizeError::TooLarge(_))
        ));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert!(matches!(
            parse_size("18446744073709551616"),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn error_messages_name_the_input_and_valid_units() {
        let message = parse_size("12Q").unwrap_err().to_string();
        assert!(
            message.contains("12Q") && message.contains("KiB"),
            "{message}"
        );
    }

    #[test]
    fn human_bytes_pick_a_binary_unit() {
        assert_eq!(HumanBytes(0).to_string(), "0 B");
        assert_eq!(HumanBytes(1023).to_string(), "1023 B");
        assert_eq!(HumanBytes(1024).to_string(), "1.0 KiB");
        assert_eq!(HumanBytes(352_800_000_000).to_string(), "328.6 GiB");
        assert_eq!(HumanBytes(512 << 20).to_string(), "512.0 MiB");
    }

    #[test]
    fn grouped_inserts_separators() {
        assert_eq!(Grouped(0).to_string(), "0");
        assert_eq!(Grouped(999).to_string(), "999");
        assert_eq!(Grouped(1000).to_string(), "1,000");
        assert_eq!(Grouped(352_800_000_000).to_string(), "352,800,000,000");
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_errors_without_panic(text in "\\PC{0,24}") {
            let _ = parse_size(&text);
        }

        #[test]
        fn whole_numbers_with_binary_units_are_exact(n in 0u64..(1 << 20), unit in 0usize..5) {
            let suffix = ["", "K", "M", "G", "T"][unit];
            proptest::prop_assert_eq!(parse_size(&format!("{n}{suffix}")), Ok(n << (10 * unit)));
        }
    }
}
