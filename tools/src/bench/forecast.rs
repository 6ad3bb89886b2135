//! `weir-bench forecast` and `weir-bench trace`: the forecaster's backtest on a
//! recorded load trace, and the recording of such traces against a real broker.
//!
//! `forecast --trace FILE.csv [--horizon-s 60] [--season-s S]` replays `unix_seconds,
//! value` lines through `weir_broker::forecast` (the same selector the broker's load
//! agents run) and prints one JSON object: the selector's and the naive forecast's mean
//! absolute error at the horizon, the interval coverage, the model used most. The
//! first half of the trace is the warm-up: without `--season-s` the season is detected
//! on it (autocorrelation), and errors are scored on the second half only, so no
//! scored sample helped choose the season.
//!
//! `trace --profile ramp|diurnal|bursty|noise --duration S --rate R --out FILE.csv`
//! produces to the broker (open loop, the rate following the profile second by second)
//! and writes, once a second, the broker's own measurement of its ingest rate: the
//! newest one-second sample of the LoadHistory api.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use weir_client::{Acks, Admin, Producer, ProducerBatch};

use super::args::{Args, Profile};
use super::target::Target;

/// Most lines read from a trace.
pub const TRACE_LINES_MAX: usize = 1_000_000;

/// Reads `unix_seconds,value` lines (a header line and blank lines are skipped).
pub fn read_trace(path: &Path) -> anyhow::Result<Vec<(i64, f64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with(|c: char| c.is_ascii_alphabetic())) {
            continue;
        }
        let (t, v) = line.split_once(',').with_context(|| {
            format!(
                "{}:{}: expected `unix_seconds,value`",
                path.display(),
                i + 1
            )
        })?;
        let t: i64 = t
            .trim()
            .parse()
            .with_context(|| format!("{}:{}: bad time", path.display(), i + 1))?;
        let v: f64 = v
            .trim()
            .parse()
            .with_context(|| format!("{}:{}: bad value", path.display(), i + 1))?;
        if !v.is_finite() {
            bail!("{}:{}: value is not finite", path.display(), i + 1);
        }
        out.push((t, v));
        if out.len() > TRACE_LINES_MAX {
            bail!("{}: more than {TRACE_LINES_MAX} lines", path.display());
        }
    }
    Ok(out)
}

/// The backtest of one trace as the JSON object `weir-bench forecast` prints.
pub fn forecast_report(
    trace: &[(i64, f64)],
    horizon_s: u64,
    season_s: Option<u64>,
) -> anyhow::Result<serde_json::Value> {
    if trace.len() < 4 {
        bail!(
            "the trace has {} samples; at least 4 are needed",
            trace.len()
        );
    }
    // The step: the median gap between samples (one per second or coarser).
    let mut gaps: Vec<i64> = trace.windows(2).map(|w| w[1].0 - w[0].0).collect();
    gaps.sort_unstable();
    let step_s = gaps[gaps.len() / 2].max(1) as u64;
    let horizon = (horizon_s / step_s).max(1) as usize;
    let series: Vec<f64> = trace.iter().map(|&(_, v)| v).collect();
    let warmup = series.len() / 2;
    let period = match season_s {
        Some(s) => Some((s / step_s).max(2) as usize),
        None => weir_broker::forecast::detect_period(&series[..warmup], 2 * horizon.min(30)),
    };
    let b = weir_broker::forecast::backtest(&series, horizon, period, warmup);
    let improvement = if b.mae_naive > 0.0 {
        1.0 - b.mae_model / b.mae_naive
    } else {
        0.0
    };
    Ok(json!({
        "samples": b.samples,
        "horizon_s": horizon as u64 * step_s,
        "step_s": step_s,
        "mae_model": round3(b.mae_model),
        "mae_naive": round3(b.mae_naive),
        "improvement": round3(improvement),
        "interval_coverage": round3(b.interval_coverage),
        "model": b.model,
        "season_s": b.period.map(|p| p as u64 * step_s),
        "warmup_samples": warmup,
        "model_errors": b
            .model_errors
            .iter()
            .map(|(m, e)| json!({"model": m, "mae_recent": round3(*e)}))
            .collect::<Vec<_>>(),
    }))
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// xorshift64: a fixed-seed pseudo-random stream (traces are reproducible).
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The rate asked for in each second of the run.
pub fn profile_rates(profile: Profile, seconds: usize, rate: f64, period_s: f64) -> Vec<f64> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut burst_left = 0usize;
    (0..seconds)
        .map(|t| {
            let x = t as f64;
            match profile {
                Profile::Ramp => rate * (0.2 + 0.8 * x / seconds.max(1) as f64),
                Profile::Diurnal => {
                    rate * (0.6 + 0.4 * (2.0 * std::f64::consts::PI * x / period_s).sin())
                }
                Profile::Bursty => {
                    if burst_left == 0 && rng.unit() < 0.03 {
                        burst_left = 5 + (rng.unit() * 15.0) as usize;
                    }
                    if burst_left > 0 {
                        burst_left -= 1;
                        rate
                    } else {
                        0.3 * rate
                    }
                }
                Profile::Noise => rate * (0.5 + rng.unit()),
            }
        })
        .collect()
}

/// `weir-bench trace`: produces along the profile and records the broker's measured
/// ingest rate, one line a second, into `--out`.
pub async fn run_trace(cli: Args) -> anyhow::Result<serde_json::Value> {
    let out_path = cli.out.clone().context("trace needs --out FILE.csv")?;
    let seconds = cli.duration.context("trace needs --duration")?.ceil() as usize;
    let rate = cli
        .rate
        .context("trace needs --rate (the profile's peak)")?;
    let rates = profile_rates(cli.profile, seconds, rate, cli.period_s);
    let target = Target::prepare(&cli).await?;
    let producer = Producer::builder(&target.admin)
        .linger(Duration::from_millis(5))
        .acks(Acks::Leader)
        .build()
        .await?;
    let admin = Admin::new(target.admin.clone());
    let mut file = std::fs::File::create(&out_path)
        .with_context(|| format!("creating {}", out_path.display()))?;
    writeln!(file, "unix_seconds,value")?;
    let payload = bytes::Bytes::from(vec![b'x'; cli.size]);
    let start = Instant::now();
    let tick = Duration::from_millis(20);
    let mut sent = 0f64;
    let mut due = 0f64;
    let mut written = 0usize;
    let mut last_at = 0i64;
    let mut pending = Vec::new();
    while start.elapsed().as_secs_f64() < seconds as f64 {
        tokio::time::sleep(tick).await;
        let now_s = start.elapsed().as_secs_f64();
        let sec = (now_s as usize).min(seconds.saturating_sub(1));
        due += rates[sec] * tick.as_secs_f64();
        let n = (due - sent).floor().max(0.0) as usize;
        if n > 0 {
            let mut batch = ProducerBatch::with_capacity(cli.topic.as_str(), n);
            for _ in 0..n {
                batch.push(payload.clone());
            }
            pending.push(producer.send_batch(batch).await?);
            sent += n as f64;
            if pending.len() > 64 {
                for f in pending.drain(..32) {
                    f.await?;
                }
            }
        }
        // Once a second, the broker's newest one-second node sample.
        if now_s as usize > written {
            written = now_s as usize;
            let h = admin.load_history(&cli.topic, 1, 1).await?;
            if let Some(s) = h.node.last() {
                if s.at_s > last_at {
                    last_at = s.at_s;
                    writeln!(file, "{},{}", s.at_s, s.records_in_per_s)?;
                }
            }
        }
    }
    for f in pending {
        f.await?;
    }
    producer.flush().await?;
    target.shutdown().await;
    Ok(json!({
        "profile": format!("{:?}", cli.profile).to_lowercase(),
        "seconds": seconds,
        "peak_rate": rate,
        "records_sent": sent as u64,
        "out": out_path.display().to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_reads_with_or_without_header_and_bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("weir-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.csv");
        std::fs::write(&p, "unix_seconds,value\n1,2.5\n2,3\n\n").unwrap();
        assert_eq!(read_trace(&p).unwrap(), vec![(1, 2.5), (2, 3.0)]);
        std::fs::write(&p, "1,2\nx,3\n").unwrap();
        let e = format!("{:#}", read_trace(&p).unwrap_err());
        assert!(e.contains(":2: bad time"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_report_beats_naive_on_a_ramp_and_names_its_fields() {
        let trace: Vec<(i64, f64)> = (0..1200).map(|t| (t, 100.0 + 10.0 * t as f64)).collect();
        let r = forecast_report(&trace, 60, None).unwrap();
        for k in ["mae_model", "mae_naive", "horizon_s", "samples", "model"] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        assert_eq!(r["horizon_s"], 60);
        assert!(r["mae_model"].as_f64().unwrap() < 0.7 * r["mae_naive"].as_f64().unwrap());
        assert!(forecast_report(&trace[..2], 60, None).is_err());
    }

    #[test]
    fn profiles_have_their_shape() {
        let ramp = profile_rates(Profile::Ramp, 100, 1000.0, 60.0);
        assert!((ramp[0] - 200.0).abs() < 1e-9 && ramp[99] > 980.0);
        let d = profile_rates(Profile::Diurnal, 120, 1000.0, 60.0);
        assert!((d[15] - 1000.0).abs() < 1e-6 && (d[45] - 200.0).abs() < 1e-6);
        let n = profile_rates(Profile::Noise, 1000, 1000.0, 60.0);
        assert!(n.iter().all(|&v| (500.0..1500.0).contains(&v)));
        let b = profile_rates(Profile::Bursty, 1000, 1000.0, 60.0);
        assert!(b.contains(&1000.0) && b.contains(&300.0));
    }
}
