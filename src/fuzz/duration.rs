//! The duration parser: it accepts exactly what the CRD pattern accepts, computes the value a
//! slower, independent calculation gives, and `format` round-trips through it.

use k8s_openapi::jiff::SignedDuration;
use proptest::prelude::*;

use super::run;
use crate::duration::{DURATION_PATTERN, DurationError, MIN_TTL, format, parse, parse_ttl};

fn pattern_matches(s: &str) -> bool {
    // A real regex engine (the JSON Schema validator's), as the API server would apply it.
    thread_local! {
        static VALIDATOR: jsonschema::Validator = jsonschema::validator_for(
            &serde_json::json!({ "type": "string", "pattern": DURATION_PATTERN }),
        )
        .expect("DURATION_PATTERN compiles");
    }
    VALIDATOR.with(|v| v.is_valid(&serde_json::json!(s)))
}

/// One `<number><unit>` component, as digits, fraction digits and unit.
fn component() -> impl Strategy<Value = (String, String, &'static str)> + Clone {
    (
        prop_oneof![3 => "[0-9]{1,4}", 1 => "[0-9]{1,25}"],
        prop_oneof![2 => Just(String::new()), 1 => "[0-9]{1,12}", 1 => "[0-9]{13,40}"],
        prop::sample::select(vec!["h", "m", "s", "ms"]),
    )
}

fn render((whole, fraction, unit): &(String, String, &'static str)) -> String {
    if fraction.is_empty() {
        format!("{whole}{unit}")
    } else {
        format!("{whole}.{fraction}{unit}")
    }
}

/// The value of a component by plain integer arithmetic (digits as one integer, times the
/// unit, divided by the power of ten), when it fits an i128; `None` when it does not.
fn reference_nanos(c: &(String, String, &'static str)) -> Option<i128> {
    let (whole, fraction, unit) = c;
    let unit: i128 = match *unit {
        "h" => 3_600_000_000_000,
        "m" => 60_000_000_000,
        "s" => 1_000_000_000,
        _ => 1_000_000,
    };
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = 10i128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    Some(digits.checked_mul(unit)? / scale)
}

#[derive(Debug, Clone)]
enum Input {
    /// Well-formed components (the value is checked against [`reference_nanos`]).
    Components(Vec<(String, String, &'static str)>),
    /// Anything: components mixed with noise, or arbitrary text.
    Text(String),
}

fn input() -> impl Strategy<Value = Input> {
    let noise = prop_oneof![
        3 => component().prop_map(|c| render(&c)),
        1 => "[0-9.hmsµnu +-]{1,3}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        2 => prop::collection::vec(component(), 1..5).prop_map(Input::Components),
        2 => prop::collection::vec(noise, 0..6).prop_map(|p| Input::Text(p.concat())),
        1 => any::<String>().prop_map(Input::Text),
    ]
}

#[test]
fn fuzz_durations() {
    run("duration", 1024, input(), |input| {
        let (text, expected) = match &input {
            Input::Components(cs) => {
                let expected = cs
                    .iter()
                    .map(reference_nanos)
                    .try_fold(0i128, |sum, n| sum.checked_add(n?));
                (cs.iter().map(render).collect::<String>(), expected)
            }
            Input::Text(t) => (t.clone(), None),
        };
        let parsed = parse(&text);
        match &parsed {
            Ok(d) => {
                prop_assert!(
                    pattern_matches(&text),
                    "{:?} accepted against the pattern",
                    text
                );
                prop_assert!(!d.is_negative());
                if let Some(nanos) = expected {
                    prop_assert_eq!(d.as_nanos(), nanos, "value of {:?}", text);
                }
                // Status shows `format(d)`; reading it back gives the same duration.
                prop_assert_eq!(parse(&format(*d)), Ok(*d), "format {:?}", format(*d));
                prop_assert_eq!(parse_ttl(&text).is_ok(), *d >= MIN_TTL);
            }
            Err(DurationError::Empty) => prop_assert!(text.is_empty()),
            Err(DurationError::Overflow { .. }) => {
                prop_assert!(
                    pattern_matches(&text),
                    "{:?} overflowed but is malformed",
                    text
                );
            }
            Err(DurationError::Syntax {
                input,
                offset,
                found,
                ..
            }) => {
                prop_assert!(!pattern_matches(&text), "{:?} refused but matches", text);
                prop_assert_eq!(input, &text);
                prop_assert!(text.is_char_boundary(*offset));
                prop_assert_eq!(*found, text[*offset..].chars().next());
            }
            Err(e @ DurationError::TooShort { .. }) => prop_assert!(false, "parse gave {}", e),
        }
        if let Err(e) = &parsed {
            // Messages go into conditions as they are; building one must not panic.
            let _ = e.to_string();
        }
        Ok(())
    });
}

#[test]
fn fuzz_duration_format_round_trip() {
    let duration = prop_oneof![
        (0i64..=i64::MAX, 0i32..1_000_000_000),
        (0i64..100_000, 0i32..1_000_000_000),
        (
            0i64..2,
            prop_oneof![Just(0), 0i32..1000, 0i32..1_000_000_000]
        ),
    ]
    .prop_map(|(secs, nanos)| SignedDuration::new(secs, nanos));
    run("duration-format", 4096, duration, |d| {
        prop_assert_eq!(
            parse(&format(d)),
            Ok(d),
            "{:?} formatted as {:?}",
            d,
            format(d)
        );
        Ok(())
    });
}

#[test]
fn fuzz_durations_add_up() {
    // Components add up: `ab` is `a` + `b` for any two durations a and b.
    let text = prop::collection::vec(component(), 1..3)
        .prop_map(|cs| cs.iter().map(render).collect::<String>());
    run("duration-sum", 1024, (text.clone(), text), |(a, b)| {
        if let (Ok(x), Ok(y)) = (parse(&a), parse(&b))
            && let Some(sum) = x.checked_add(y)
        {
            prop_assert_eq!(parse(&format!("{a}{b}")), Ok(sum));
        }
        Ok(())
    });
}
