//! The arithmetic of the peers scenarios, apart from any cluster so that it can be tested:
//! quantiles of latencies some of which were never observed, API requests per object per hour
//! at rest, CPU time from `/proc/<pid>/stat`, and Kiln ÷ peer ratios. Tested by
//! tests/bench_peers.rs.

/// A quantile of latencies of which some did not happen within the observation window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Quantile {
    /// Observed: this many seconds.
    Seconds(f64),
    /// Not observed: more than this many seconds (the observation window).
    Above(f64),
    /// No samples at all.
    None,
}

impl Quantile {
    /// For tables: `0.123` or `> 120`.
    pub fn label(&self) -> String {
        match self {
            Quantile::Seconds(s) => format!("{s:.3}"),
            Quantile::Above(w) => format!("> {w:.0}"),
            Quantile::None => "n/a".into(),
        }
    }

    /// For JSON: the seconds, or a string saying what is known.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Quantile::Seconds(s) => serde_json::json!((s * 1000.0).round() / 1000.0),
            Quantile::Above(w) => serde_json::json!(format!("> {w:.0}")),
            Quantile::None => serde_json::Value::Null,
        }
    }

    pub fn seconds(&self) -> Option<f64> {
        match self {
            Quantile::Seconds(s) => Some(*s),
            _ => None,
        }
    }
}

/// The `q`-quantile (nearest rank, as `report::quantile`) of `samples`, where `None` is a
/// latency longer than `window` seconds: it sorts after every observed one, so a quantile
/// that falls on it is only known to be above the window.
pub fn censored_quantile(samples: &[Option<f64>], q: f64, window: f64) -> Quantile {
    if samples.is_empty() {
        return Quantile::None;
    }
    let mut seen: Vec<f64> = samples.iter().flatten().copied().collect();
    seen.sort_by(f64::total_cmp);
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    match seen.get(rank - 1) {
        Some(s) => Quantile::Seconds(*s),
        None => Quantile::Above(window),
    }
}

/// What one at-rest measurement saw, and what it is scaled with.
#[derive(Clone, Copy, Debug)]
pub struct AtRest {
    /// Objects the operator looks after.
    pub objects: usize,
    /// Length of the quiet window, seconds.
    pub window_secs: f64,
    /// Requests the API server counted in the window (everyone's).
    pub requests: f64,
    /// Requests per second the control plane sends by itself (no operator running).
    pub idle_per_sec: f64,
    /// The operator's periodic reconciles (resyncs, refreshes) in the window.
    pub reconciles: f64,
    /// Requests one such reconcile costs (measured where they are frequent).
    pub per_reconcile: f64,
    /// Periodic reconciles per object per hour at the configured period.
    pub reconciles_per_object_hour: f64,
}

impl AtRest {
    /// API requests per object per hour: the window's requests that are neither the control
    /// plane's own nor periodic reconciles (watches, leases, housekeeping), scaled to an hour,
    /// plus the periodic reconciles at the configured period and the measured cost of each.
    /// A window too short to hold a whole period would otherwise count none of them, or too
    /// many when it happens to hold one.
    pub fn per_object_hour(&self) -> f64 {
        if self.objects == 0 || self.window_secs <= 0.0 {
            return f64::NAN;
        }
        let own = self.requests - self.idle_per_sec * self.window_secs;
        let other = (own - self.reconciles * self.per_reconcile).max(0.0);
        let other_per_hour = other * 3600.0 / self.window_secs / self.objects as f64;
        other_per_hour + self.per_reconcile * self.reconciles_per_object_hour
    }
}

/// Requests per reconcile in a window full of reconciles, net of the control plane's own.
pub fn per_reconcile(requests: f64, idle_per_sec: f64, window_secs: f64, reconciles: f64) -> f64 {
    if reconciles <= 0.0 {
        return f64::NAN;
    }
    ((requests - idle_per_sec * window_secs) / reconciles).max(0.0)
}

/// Kiln ÷ peer, when both are finite and the peer is not zero.
pub fn ratio(kiln: f64, peer: f64) -> Option<f64> {
    (kiln.is_finite() && peer.is_finite() && peer != 0.0).then(|| kiln / peer)
}

/// `0.42×`, or `n/a`.
pub fn ratio_label(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 100.0 => format!("{r:.0}×"),
        Some(r) if r >= 0.01 => format!("{r:.2}×"),
        Some(r) => format!("{r:.4}×"),
        None => "n/a".into(),
    }
}

/// User + system CPU time, in clock ticks, from the text of `/proc/<pid>/stat`. The command
/// name (field 2) is in parentheses and may hold spaces and parentheses itself, so fields are
/// counted from the last `)`: utime and stime are fields 14 and 15.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}
