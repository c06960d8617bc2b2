//! The arithmetic of the `peers` benchmarks (benches/kiln_bench/peers_math.rs): the bench
//! binary has no test harness (`harness = false`), so its pure parts are tested here. No
//! cluster.

#[path = "../benches/kiln_bench/peers_math.rs"]
#[allow(dead_code)] // the benchmark uses all of it; these tests only some
mod peers_math;

use peers_math::*;

#[test]
fn quantiles_of_observed_latencies_are_nearest_rank() {
    let s: Vec<Option<f64>> = (1..=100).map(|i| Some(i as f64 / 100.0)).collect();
    assert_eq!(censored_quantile(&s, 0.5, 60.0), Quantile::Seconds(0.5));
    assert_eq!(censored_quantile(&s, 0.99, 60.0), Quantile::Seconds(0.99));
    assert_eq!(censored_quantile(&s, 1.0, 60.0), Quantile::Seconds(1.0));
    assert_eq!(
        censored_quantile(&s[..1], 0.99, 60.0),
        Quantile::Seconds(0.01)
    );
}

#[test]
fn unobserved_latencies_sort_last_and_make_quantiles_open_ended() {
    // 98 observed, 2 never: p50 and p98 are known, p99 only as "above the window".
    let mut s: Vec<Option<f64>> = (1..=98).map(|i| Some(i as f64)).collect();
    s.extend([None, None]);
    assert_eq!(censored_quantile(&s, 0.5, 120.0), Quantile::Seconds(50.0));
    assert_eq!(censored_quantile(&s, 0.98, 120.0), Quantile::Seconds(98.0));
    assert_eq!(censored_quantile(&s, 0.99, 120.0), Quantile::Above(120.0));
    // Order of the input does not matter.
    s.reverse();
    assert_eq!(censored_quantile(&s, 0.5, 120.0), Quantile::Seconds(50.0));
    assert_eq!(
        censored_quantile(&[None, None], 0.5, 30.0),
        Quantile::Above(30.0)
    );
    assert_eq!(censored_quantile(&[], 0.5, 30.0), Quantile::None);
    assert_eq!(Quantile::Above(120.0).label(), "> 120");
    assert_eq!(Quantile::Seconds(0.0625).label(), "0.062");
}

#[test]
fn at_rest_counts_periodic_reconciles_at_their_period_not_as_the_window_caught_them() {
    // 1,000 objects, 60 s window, control plane alone 2 req/s; the window held 300
    // requests: 120 the control plane's, 100 of 50 resyncs (2 each), 80 others.
    let a = AtRest {
        objects: 1000,
        window_secs: 60.0,
        requests: 300.0,
        idle_per_sec: 2.0,
        reconciles: 50.0,
        per_reconcile: 2.0,
        reconciles_per_object_hour: 6.0,
    };
    // others: 80 per minute over 1,000 objects = 4.8 per object-hour; resyncs: 2 × 6 = 12.
    assert!((a.per_object_hour() - 16.8).abs() < 1e-9);
    // The same world with a window that caught no resync: the same answer.
    let quiet = AtRest {
        requests: 200.0,
        reconciles: 0.0,
        ..a
    };
    assert!((quiet.per_object_hour() - 16.8).abs() < 1e-9);
    // Never negative when the control plane was busier than its idle rate said.
    let calm = AtRest {
        requests: 100.0,
        reconciles: 0.0,
        ..a
    };
    assert!((calm.per_object_hour() - 12.0).abs() < 1e-9);
    assert!(AtRest { objects: 0, ..a }.per_object_hour().is_nan());
}

#[test]
fn a_busy_window_gives_the_cost_of_one_reconcile() {
    // 10 s, idle 2 req/s, 5,020 requests, 1,000 reconciles: 5 each.
    assert!((per_reconcile(5020.0, 2.0, 10.0, 1000.0) - 5.0).abs() < 1e-9);
    assert!(per_reconcile(10.0, 2.0, 10.0, 0.0).is_nan());
    assert_eq!(per_reconcile(10.0, 2.0, 10.0, 4.0), 0.0);
}

#[test]
fn ratios_are_kiln_over_peer() {
    assert_eq!(ratio(1.0, 4.0), Some(0.25));
    assert_eq!(ratio(1.0, 0.0), None);
    assert_eq!(ratio(f64::NAN, 1.0), None);
    assert_eq!(ratio_label(Some(0.25)), "0.25×");
    assert_eq!(ratio_label(Some(250.0)), "250×");
    assert_eq!(ratio_label(Some(0.00123)), "0.0012×");
    assert_eq!(ratio_label(None), "n/a");
}

#[test]
fn cpu_time_is_read_after_the_command_name() {
    // A command name with a space and a parenthesis; utime 1500, stime 250.
    let stat = "4242 (odd) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 1500 250 0 0 39 19 \
                12 0 1000 123456789 5000";
    assert_eq!(cpu_ticks(stat), Some(1750));
    assert_eq!(cpu_ticks("4242 (x) S 1"), None);
    assert_eq!(cpu_ticks("no parenthesis"), None);
}
