//! Slurm's time-limit formats, as `sbatch --time` takes them and `squeue -o %l` and
//! `scontrol show job` print them, for a lease that lives as long as a job may. Parsed here,
//! in decimal, rather than in a prolog's shell arithmetic (where `08` is an invalid octal
//! number and a failed prolog drains the node).

use std::time::Duration;

/// A job's time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLimit {
    /// A limit: the job is killed after it.
    Limit(Duration),
    /// `UNLIMITED`, `INFINITE`, `NOT_SET` (no limit given and none from the partition), or
    /// `Partition_Limit` (the partition's, not known here): no limit this side can see.
    Unlimited,
}

/// Longest limit accepted: more than any TTL a lease may have (366 days).
const MAX_SECONDS: u64 = 400 * 86400;

/// Parses `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`, `UNLIMITED`, `INFINITE`, `NOT_SET`,
/// `Partition_Limit`. Numbers are decimal whatever their leading zeros.
pub fn parse_time_limit(text: &str) -> Result<TimeLimit, String> {
    let text = text.trim();
    let bad = |why: &str| {
        format!(
            "Slurm time limit `{text}` {why}: expected M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, UNLIMITED, INFINITE or NOT_SET"
        )
    };
    if ["UNLIMITED", "INFINITE", "NOT_SET", "PARTITION_LIMIT"]
        .iter()
        .any(|word| text.eq_ignore_ascii_case(word))
    {
        return Ok(TimeLimit::Unlimited);
    }
    let number = |part: &str| -> Result<u64, String> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 12 {
            return Err(bad("is not made of whole numbers"));
        }
        part.parse().map_err(|_| bad("is out of range"))
    };
    let (days, clock) = match text.split_once('-') {
        Some((days, clock)) => (Some(number(days)?), clock),
        None => (None, text),
    };
    let parts: Vec<u64> = clock.split(':').map(number).collect::<Result<_, _>>()?;
    let (hours, minutes, seconds) = match (days, parts.as_slice()) {
        (None, [m]) => (0, *m, 0),
        (None, [m, s]) => (0, *m, *s),
        (None, [h, m, s]) => (*h, *m, *s),
        (Some(_), [h]) => (*h, 0, 0),
        (Some(_), [h, m]) => (*h, *m, 0),
        (Some(_), [h, m, s]) => (*h, *m, *s),
        _ => return Err(bad("has too many fields")),
    };
    let total = days
        .unwrap_or(0)
        .checked_mul(86400)
        .and_then(|d| d.checked_add(hours.checked_mul(3600)?))
        .and_then(|t| t.checked_add(minutes.checked_mul(60)?))
        .and_then(|t| t.checked_add(seconds))
        .filter(|&t| t <= MAX_SECONDS)
        .ok_or_else(|| bad("is longer than 400 days"))?;
    Ok(TimeLimit::Limit(Duration::from_secs(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> u64 {
        match parse_time_limit(text).unwrap() {
            TimeLimit::Limit(d) => d.as_secs(),
            TimeLimit::Unlimited => panic!("{text}: unlimited"),
        }
    }

    #[test]
    fn every_format_slurm_takes_in_decimal() {
        assert_eq!(secs("90"), 90 * 60, "M");
        assert_eq!(secs("08"), 8 * 60, "no octal");
        assert_eq!(secs("09:30"), 9 * 60 + 30, "M:S");
        assert_eq!(secs("00:08:00"), 8 * 60, "H:M:S");
        assert_eq!(secs("08:00:00"), 8 * 3600);
        assert_eq!(secs("09:09:09"), 9 * 3600 + 9 * 60 + 9);
        assert_eq!(secs("2-08"), 2 * 86400 + 8 * 3600, "D-H");
        assert_eq!(secs("1-09:05"), 86400 + 9 * 3600 + 5 * 60, "D-H:M");
        assert_eq!(secs("1-09:05:00"), 86400 + 9 * 3600 + 5 * 60, "D-H:M:S");
        assert_eq!(secs(" 0-00:00:01 "), 1);
    }

    #[test]
    fn unlimited_words() {
        for word in [
            "UNLIMITED",
            "INFINITE",
            "NOT_SET",
            "Partition_Limit",
            "unlimited",
        ] {
            assert_eq!(parse_time_limit(word), Ok(TimeLimit::Unlimited), "{word}");
        }
    }

    #[test]
    fn everything_else_is_an_error_that_says_what_would_be_valid() {
        for bad in [
            "",
            "-",
            "1-",
            "-5",
            "1:2:3:4",
            "1-2:3:4:5",
            "1h",
            "08:0x",
            "+5",
            "1.5",
            "3-",
            ":",
            "99999999999999999999",
            "401-00",
        ] {
            let e = parse_time_limit(bad).unwrap_err();
            assert!(e.contains("expected M, M:S, H:M:S"), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn d_h_m_s_adds_up(d in 0u64..400, h in 0u64..24, m in 0u64..60, s in 0u64..60) {
            let text = format!("{d}-{h:02}:{m:02}:{s:02}");
            proptest::prop_assert_eq!(secs(&text), d * 86400 + h * 3600 + m * 60 + s);
        }

        #[test]
        fn any_text_is_parsed_or_refused_never_a_panic(text in "\\PC{0,24}") {
            let _ = parse_time_limit(&text);
        }
    }
}
