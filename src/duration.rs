//! Go-style durations (`720h`, `1h30m`, `5s`) as used in Kiln specs.
//!
//! Specs keep the duration as the string the user wrote (so a GitOps tool never sees a
//! rewritten value); the CRD schema rejects malformed strings with [`DURATION_PATTERN`], and
//! the controllers turn them into a [`SignedDuration`] with [`parse`] or [`parse_ttl`]. Both
//! accept exactly the strings the pattern accepts; the only extra failure of [`parse`] is a
//! value too large to represent, which a regular expression cannot express. [`format`] gives
//! the compact form shown in `status`, which [`parse`] reads back.
//!
//! Differences from Go's `time.ParseDuration`, all deliberate: no sign (a negative TTL means
//! nothing), no `ns`/`us`/`µs` units (a TTL is measured in seconds or more; fractions such
//! as `0.5s` still reach nanoseconds), no bare `0`, and a digit is required on both sides of
//! a decimal point (`.5h` and `5.h` are rejected), so the schema's regular expression stays
//! simple enough to read.

use k8s_openapi::jiff::SignedDuration;

/// The regular expression the CRD schemas use (`pattern:`) for duration fields, so that the
/// API server rejects a malformed duration at `kubectl apply` time.
///
/// One or more `<number><unit>` components, units `h`, `m`, `s` and `ms`, in any order
/// (`1h30m`, `90m`, `1.5h`, `500ms`). Zero (`0s`) matches: a regular expression that refuses
/// an all-zero value is unreadable, so what only makes sense as a TTL is checked by
/// [`parse_ttl`] instead, and the controller reports it in `status`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// The shortest TTL or retention Kiln accepts; see [`parse_ttl`].
pub const MIN_TTL: SignedDuration = SignedDuration::from_secs(1);

const NANOS_PER_MILLI: i128 = 1_000_000;
const NANOS_PER_SECOND: i128 = 1_000_000_000;
const NANOS_PER_MINUTE: i128 = 60 * NANOS_PER_SECOND;
const NANOS_PER_HOUR: i128 = 60 * NANOS_PER_MINUTE;

/// Why a duration string was refused. The messages name the input and, for syntax errors,
/// what was expected where, so they can go into a condition message as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration: expected a duration such as `720h`, `1h30m` or `90s`")]
    Empty,
    /// The string does not match [`DURATION_PATTERN`].
    #[error(
        "invalid duration {input:?}: expected {expected} at offset {offset}, found {}; \
         a duration looks like `720h`, `1h30m` or `90s` (units h, m, s, ms)",
        found.map_or_else(|| "the end".to_owned(), |c| format!("{c:?}"))
    )]
    Syntax {
        /// The whole input.
        input: String,
        /// Character offset (0-based) of the first unexpected character.
        offset: usize,
        /// What would have been valid there.
        expected: &'static str,
        /// The unexpected character, or `None` at the end of the input.
        found: Option<char>,
    },
    /// The value does not fit a [`SignedDuration`] (about 292 billion years).
    #[error("duration {input:?} is too large")]
    Overflow {
        /// The whole input.
        input: String,
    },
    /// Well-formed, but shorter than [`MIN_TTL`] (see [`parse_ttl`]).
    #[error("duration {input:?} is too short: the minimum is {min}")]
    TooShort {
        /// The whole input.
        input: String,
        /// The minimum, formatted with [`format`].
        min: String,
    },
}

/// Parses a duration that matches [`DURATION_PATTERN`].
///
/// Components add up (`1h30m` = `90m` = `1.5h`; `1s1h` is 3601 seconds). Fractions are exact
/// down to the nanosecond; digits beyond that are truncated. Zero (`0s`) is accepted here:
/// use [`parse_ttl`] for a TTL.
pub fn parse(s: &str) -> Result<SignedDuration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let bytes = s.as_bytes();
    let syntax = |at: usize, expected: &'static str| DurationError::Syntax {
        input: s.to_owned(),
        // Everything before `at` is ASCII (only ASCII is ever consumed), so the byte index
        // is also the character offset and a char boundary.
        offset: at,
        expected,
        found: s[at..].chars().next(),
    };
    let overflow = || DurationError::Overflow {
        input: s.to_owned(),
    };

    let mut i = 0;
    // `None` once the sum overflowed. Parsing goes on to the end regardless: a malformed
    // string is a syntax error however large its numbers (found by the duration fuzz target:
    // `47300000000000000000000000h0` was reported as too large, not as missing a unit).
    let mut total: Option<i128> = Some(0);
    while i < bytes.len() {
        let whole = digits(bytes, i);
        if whole.is_empty() {
            return Err(syntax(i, "a digit"));
        }
        i += whole.len();

        let mut fraction: &[u8] = &[];
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            fraction = digits(bytes, i);
            if fraction.is_empty() {
                return Err(syntax(i, "a digit after the decimal point"));
            }
            i += fraction.len();
        }

        // `ms` before `m`: after a unit the pattern needs a digit, so an `m` followed by an
        // `s` can only be `ms`; taking the longest unit is therefore never wrong.
        let (unit, width) = match &bytes[i..] {
            [b'm', b's', ..] => (NANOS_PER_MILLI, 2),
            [b'h', ..] => (NANOS_PER_HOUR, 1),
            [b'm', ..] => (NANOS_PER_MINUTE, 1),
            [b's', ..] => (NANOS_PER_SECOND, 1),
            // Digits are also allowed here, but a missing or unknown unit is what went wrong.
            _ => return Err(syntax(i, "a unit (h, m, s or ms)")),
        };
        i += width;

        total = total.and_then(|t| t.checked_add(component_nanos(whole, fraction, unit)?));
    }
    total
        .and_then(SignedDuration::try_from_nanos_i128)
        .ok_or_else(overflow)
}

/// Parses a TTL or retention: [`parse`], then refuses anything shorter than [`MIN_TTL`].
///
/// A zero TTL would delete an object as soon as it is created, and a sub-second one is
/// shorter than the time a reconcile takes, so both are almost certainly mistakes; the
/// controller reports them instead of acting on them.
pub fn parse_ttl(s: &str) -> Result<SignedDuration, DurationError> {
    let ttl = parse(s)?;
    if ttl < MIN_TTL {
        return Err(DurationError::TooShort {
            input: s.to_owned(),
            min: format(MIN_TTL),
        });
    }
    Ok(ttl)
}

/// Formats a duration compactly for `status`, in a form [`parse`] reads back to the same
/// value (for non-negative durations): zero components are left out (`720h`, `1h30m`,
/// `1h5s`), seconds carry any fraction (`1m0.5s`), and durations under a second are in
/// milliseconds (`500ms`, `1.5ms`). Unlike Go, `1h0m0s` is written `1h`. A negative duration
/// gets a leading `-` (display only: [`parse`] refuses signs).
pub fn format(d: SignedDuration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let sign = if d.is_negative() { "-" } else { "" };
    let abs = d.unsigned_abs();
    let (secs, nanos) = (abs.as_secs(), abs.subsec_nanos());
    if secs == 0 {
        let (millis, rest) = (nanos / 1_000_000, nanos % 1_000_000);
        return format!("{sign}{millis}{}ms", fraction_digits(rest, 6));
    }
    let (hours, minutes, seconds) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = sign.to_owned();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || nanos > 0 {
        out.push_str(&format!("{seconds}{}s", fraction_digits(nanos, 9)));
    }
    out
}

/// The run of ASCII digits starting at `from`.
fn digits(bytes: &[u8], from: usize) -> &[u8] {
    let len = bytes[from..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    &bytes[from..from + len]
}

/// `whole.fraction` units, in nanoseconds, truncated; `None` on overflow.
fn component_nanos(whole: &[u8], fraction: &[u8], unit: i128) -> Option<i128> {
    let mut n: i128 = 0;
    for d in whole {
        n = n.checked_mul(10)?.checked_add(i128::from(d - b'0'))?;
    }
    // floor(0.d1d2…dk × unit), exactly and for any number of digits, by Horner's rule from
    // the last digit: floor((a + x) / 10) = floor((a + floor(x)) / 10) for an integer a, so
    // each step can drop its remainder. The accumulator stays below `unit`.
    let frac = fraction
        .iter()
        .rev()
        .fold(0, |acc, d| (i128::from(d - b'0') * unit + acc) / 10);
    n.checked_mul(unit)?.checked_add(frac)
}

/// `.ddd` for `value / 10^width`, without trailing zeros; empty for zero.
fn fraction_digits(value: u32, width: usize) -> String {
    if value == 0 {
        return String::new();
    }
    let digits = format!("{value:0width$}");
    format!(".{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern_matches(s: &str) -> bool {
        // The schema's pattern is checked with the JSON Schema validator Kiln already
        // depends on, a real regex engine, rather than a hand-written matcher that could
        // share the parser's mistakes.
        thread_local! {
            static VALIDATOR: jsonschema::Validator = jsonschema::validator_for(
                &serde_json::json!({ "type": "string", "pattern": DURATION_PATTERN }),
            )
            .expect("DURATION_PATTERN compiles");
        }
        VALIDATOR.with(|v| v.is_valid(&serde_json::json!(s)))
    }

    const fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }

    #[test]
    fn table_agrees_with_pattern_and_values() {
        let ok: &[(&str, SignedDuration)] = &[
            ("720h", secs(720 * 3600)),
            ("48h", secs(48 * 3600)),
            ("5s", secs(5)),
            ("1h30m", secs(5400)),
            ("90m", secs(5400)),
            ("1.5h", secs(5400)),
            ("500ms", SignedDuration::from_millis(500)),
            ("1.5ms", SignedDuration::from_micros(1500)),
            ("0.1s", SignedDuration::from_millis(100)),
            ("1.000000001s", SignedDuration::new(1, 1)),
            ("0.0000000019s", SignedDuration::from_nanos(1)),
            ("0.0000000001s", SignedDuration::ZERO),
            ("1s1h", secs(3601)),
            ("1h1h", secs(7200)),
            ("1m1ms", SignedDuration::from_millis(60_001)),
            ("0s", SignedDuration::ZERO),
            ("000001s", secs(1)),
            ("1.25m", secs(75)),
            (
                "0.3333333333333333333333333333h",
                SignedDuration::new(1199, 999_999_999),
            ),
            (
                "9223372036854775807s",
                SignedDuration::MAX - SignedDuration::new(0, 999_999_999),
            ),
            ("9223372036854775807.999999999s", SignedDuration::MAX),
        ];
        for (input, want) in ok {
            assert!(pattern_matches(input), "pattern should accept {input:?}");
            assert_eq!(parse(input).as_ref(), Ok(want), "parse({input:?})");
        }

        let malformed = [
            "", "0", "5", "h", "1", "1.h", ".5h", "1.5", "1d", "1w", "1ns", "1us", "1µs", "-1h",
            "+1h", " 1h", "1h ", "1h\n", "1H", "1 h", "1h30", "1hm", "1m s", "1..5h", "1.5.5h",
            "1,5h", "1e3s", "１h", "msh", "1mss",
        ];
        for input in malformed {
            assert!(!pattern_matches(input), "pattern should refuse {input:?}");
            assert!(parse(input).is_err(), "parse should refuse {input:?}");
        }

        // The one kind of failure the pattern cannot express.
        for input in [
            "9223372036854775808s",
            "2562047788015216h",
            "99999999999999999999999999999999999999999h",
        ] {
            assert!(pattern_matches(input));
            assert_eq!(
                parse(input),
                Err(DurationError::Overflow {
                    input: input.to_owned()
                })
            );
        }
    }

    /// Every string of up to five characters over an alphabet that covers the grammar's
    /// edges: the parser and the pattern must agree on each one.
    #[test]
    fn exhaustive_short_strings_agree_with_pattern() {
        let alphabet = ['0', '7', '.', 'm', 's', 'h', 'n', '-', 'x'];
        let mut current = vec![String::new()];
        let mut checked = 0;
        for _ in 0..5 {
            let mut next = Vec::with_capacity(current.len() * alphabet.len());
            for prefix in &current {
                for c in alphabet {
                    let s = format!("{prefix}{c}");
                    assert_eq!(
                        parse(&s).is_ok(),
                        pattern_matches(&s),
                        "parse and pattern disagree on {s:?}"
                    );
                    checked += 1;
                    next.push(s);
                }
            }
            current = next;
        }
        assert!(checked > 60_000);
    }

    #[test]
    fn syntax_errors_say_where_and_what() {
        let err = parse("1h30").unwrap_err();
        assert_eq!(
            err,
            DurationError::Syntax {
                input: "1h30".to_owned(),
                offset: 4,
                expected: "a unit (h, m, s or ms)",
                found: None,
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid duration \"1h30\": expected a unit (h, m, s or ms) at offset 4, \
             found the end; a duration looks like `720h`, `1h30m` or `90s` (units h, m, s, ms)"
        );
        let err = parse("3d").unwrap_err();
        assert!(err.to_string().contains("found 'd'"), "{err}");
        assert!(matches!(
            parse(".5h"),
            Err(DurationError::Syntax {
                offset: 0,
                expected: "a digit",
                ..
            })
        ));
        assert!(matches!(
            parse("5.h"),
            Err(DurationError::Syntax {
                offset: 2,
                expected: "a digit after the decimal point",
                ..
            })
        ));
        // A multi-byte character must not break the offset or the message.
        let err = parse("1µs").unwrap_err();
        assert!(matches!(
            err,
            DurationError::Syntax {
                offset: 1,
                found: Some('µ'),
                ..
            }
        ));
        assert_eq!(parse(""), Err(DurationError::Empty));
    }

    #[test]
    fn a_malformed_string_is_a_syntax_error_however_large() {
        // Regression (duration fuzz target): the overflow of the first component was reported
        // before the missing unit of the second.
        assert_eq!(
            parse("47300000000000000000000000h0"),
            Err(DurationError::Syntax {
                input: "47300000000000000000000000h0".into(),
                offset: 28,
                expected: "a unit (h, m, s or ms)",
                found: None,
            })
        );
        assert!(matches!(
            parse("47300000000000000000000000h1x"),
            Err(DurationError::Syntax { offset: 28, .. })
        ));
        assert!(matches!(
            parse("47300000000000000000000000h1s"),
            Err(DurationError::Overflow { .. })
        ));
    }

    #[test]
    fn ttl_refuses_below_one_second() {
        assert_eq!(parse_ttl("1s"), Ok(secs(1)));
        assert_eq!(parse_ttl("48h"), Ok(secs(48 * 3600)));
        for input in ["0s", "0h", "999ms", "0.5s"] {
            assert_eq!(
                parse_ttl(input),
                Err(DurationError::TooShort {
                    input: input.to_owned(),
                    min: "1s".to_owned()
                })
            );
        }
        assert!(matches!(parse_ttl("1d"), Err(DurationError::Syntax { .. })));
    }

    #[test]
    fn format_is_compact() {
        let cases = [
            (secs(720 * 3600), "720h"),
            (secs(48 * 3600), "48h"),
            (secs(5400), "1h30m"),
            (secs(3605), "1h5s"),
            (secs(5), "5s"),
            (secs(60), "1m"),
            (SignedDuration::from_millis(500), "500ms"),
            (SignedDuration::from_micros(1500), "1.5ms"),
            (SignedDuration::from_nanos(100), "0.0001ms"),
            (SignedDuration::from_millis(60_500), "1m0.5s"),
            (SignedDuration::new(3600, 1), "1h0.000000001s"),
            (SignedDuration::from_millis(17_280_000), "4h48m"),
            (SignedDuration::ZERO, "0s"),
            (secs(-90), "-1m30s"),
            (SignedDuration::MIN, "-2562047788015215h30m8.999999999s"),
        ];
        for (d, want) in cases {
            assert_eq!(format(d), want, "format({d:?})");
        }
    }

    #[test]
    fn format_round_trips_through_parse() {
        let samples = [
            "720h",
            "1.5h",
            "90m",
            "1s1h",
            "0.0000000019s",
            "1.000000001s",
            "123456h59m59.999999999s",
            "0.3333333333333333333333333333h",
            "9223372036854775807.999999999s",
        ];
        for input in samples {
            let d = parse(input).unwrap();
            let shown = format(d);
            assert!(
                pattern_matches(&shown),
                "{shown:?} should match the pattern"
            );
            assert_eq!(parse(&shown), Ok(d), "{input:?} → {shown:?}");
        }
    }
}
