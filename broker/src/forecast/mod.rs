//! Load forecasting: cheap online models, chosen per series by how well they would
//! have done.
//!
//! A [`Selector`] runs every candidate of [`models`] on one series (naive last value,
//! exponential smoothing, Holt's trend, Holt-Winters with a season when one is known,
//! AR by recursive least squares) and scores each by its error at the horizon asked
//! for, measured as the series goes on (a rolling-origin backtest: a forecast made at
//! sample t is scored when sample t + h arrives). It forecasts with the model whose
//! recent mean absolute error is lowest, and gives a prediction interval from that
//! model's recent squared errors. Naive is one of the candidates, so on a series no
//! model can predict the selector falls back to it (or to a long mean, which does no
//! worse on noise).
//!
//! Pure maths, no I/O and no broker state: the broker's load history and `weir-bench
//! forecast` both use it. [`backtest`] replays a whole series and reports the
//! selector's and the naive forecast's errors, as `weir-bench forecast` prints them.

pub mod models;

use std::collections::VecDeque;

use models::{ArRls, Holt, HoltWinters, Model, Naive, Ses};

/// Window (in scored forecasts) of the moving error averages that pick a model.
const ERROR_WINDOW: f64 = 100.0;

/// Scored forecasts a model needs before it can be picked over naive.
const SCORED_MIN: usize = 30;

/// z of a two-sided 95 % interval under normal errors.
const Z_95: f64 = 1.96;

/// One forecast: the value, a 95 % interval, and the model that made it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub model: &'static str,
}

/// Runs the candidate models on one series and forecasts `horizon` samples ahead with
/// the one that has done best lately. Memory is fixed at construction.
#[derive(Debug)]
pub struct Selector {
    horizon: usize,
    models: Vec<Box<dyn Model>>,
    /// Forecasts not yet scored, oldest first: one per model, made `len` samples ago
    /// at most `horizon`.
    pending: VecDeque<Vec<f64>>,
    /// Moving mean absolute and squared error of each model at the horizon.
    abs_error: Vec<f64>,
    sq_error: Vec<f64>,
    scored: usize,
}

impl Selector {
    /// A selector for `horizon` ≥ 1 samples ahead; `period` (samples) adds Holt-Winters
    /// candidates with that season.
    pub fn new(horizon: usize, period: Option<usize>) -> Self {
        let mut models: Vec<Box<dyn Model>> = vec![
            Box::new(Naive::default()),
            Box::new(Ses::new(0.02)),
            Box::new(Ses::new(0.2)),
            Box::new(Holt::new(0.2, 0.02, 1.0)),
            Box::new(Holt::new(0.1, 0.01, 1.0)),
            Box::new(Holt::new(0.05, 0.01, 1.0)),
            Box::new(Holt::new(0.3, 0.05, 0.98)),
            Box::new(ArRls::new(3, 0.998)),
        ];
        if let Some(m) = period.filter(|&m| m >= 2) {
            models.push(Box::new(HoltWinters::new(m, 0.1, 0.005, 0.2)));
            models.push(Box::new(HoltWinters::new(m, 0.3, 0.01, 0.1)));
        }
        let n = models.len();
        Selector {
            horizon: horizon.max(1),
            models,
            pending: VecDeque::with_capacity(horizon.max(1) + 1),
            abs_error: vec![0.0; n],
            sq_error: vec![0.0; n],
            scored: 0,
        }
    }

    /// The horizon in samples.
    pub fn horizon(&self) -> usize {
        self.horizon
    }

    /// Takes the next sample: scores the forecasts made `horizon` samples ago, updates
    /// every model, and records their new forecasts.
    pub fn update(&mut self, y: f64) {
        if !y.is_finite() {
            return;
        }
        if self.pending.len() == self.horizon {
            if let Some(made) = self.pending.pop_front() {
                self.scored += 1;
                let w = 1.0 / (self.scored as f64).min(ERROR_WINDOW);
                for (i, f) in made.iter().enumerate() {
                    let e = y - f;
                    self.abs_error[i] += w * (e.abs() - self.abs_error[i]);
                    self.sq_error[i] += w * (e * e - self.sq_error[i]);
                }
            }
        }
        for m in &mut self.models {
            m.update(y);
        }
        let h = self.horizon;
        self.pending
            .push_back(self.models.iter().map(|m| m.forecast(h)).collect());
    }

    /// Index of the model forecasting now: the lowest moving error once enough
    /// forecasts were scored, naive (0) before.
    fn best(&self) -> usize {
        if self.scored < SCORED_MIN {
            return 0;
        }
        let mut best = 0;
        for i in 1..self.models.len() {
            if self.abs_error[i] < self.abs_error[best] {
                best = i;
            }
        }
        best
    }

    /// The forecast `horizon` samples after the last one taken.
    pub fn forecast(&self) -> Forecast {
        let b = self.best();
        let value = self.models[b].forecast(self.horizon);
        let half = Z_95 * self.sq_error[b].max(0.0).sqrt();
        Forecast {
            value,
            low: value - half,
            high: value + half,
            model: self.models[b].name(),
        }
    }

    /// The moving mean absolute error at the horizon of each model, by name.
    pub fn errors(&self) -> Vec<(&'static str, f64)> {
        self.models
            .iter()
            .zip(&self.abs_error)
            .map(|(m, e)| (m.name(), *e))
            .collect()
    }
}

/// The strongest season of a series, in samples: past the first lag (at least
/// `min_lag`) where the linearly detrended series' autocorrelation turns negative, the
/// lag up to `len / 2` where it peaks highest, if above 0.3; `None` otherwise (no
/// clear season).
pub fn detect_period(series: &[f64], min_lag: usize) -> Option<usize> {
    let n = series.len();
    if n < 2 * min_lag.max(2) + 2 {
        return None;
    }
    // Detrend by least squares.
    let tm = (n as f64 - 1.0) / 2.0;
    let ym = series.iter().sum::<f64>() / n as f64;
    let (mut sty, mut stt) = (0.0, 0.0);
    for (t, y) in series.iter().enumerate() {
        let dt = t as f64 - tm;
        sty += dt * (y - ym);
        stt += dt * dt;
    }
    let slope = if stt > 0.0 { sty / stt } else { 0.0 };
    let x: Vec<f64> = series
        .iter()
        .enumerate()
        .map(|(t, y)| y - ym - slope * (t as f64 - tm))
        .collect();
    let var: f64 = x.iter().map(|v| v * v).sum();
    if var <= 0.0 {
        return None;
    }
    let acf = |lag: usize| x.iter().zip(&x[lag..]).map(|(a, b)| a * b).sum::<f64>() / var;
    let max_lag = n / 2;
    // Short lags of a smooth series correlate by inertia alone: look only past the
    // first lag where the correlation drops below zero.
    let start = (min_lag.max(2)..=max_lag).find(|&l| acf(l) < 0.0)?;
    let values: Vec<f64> = (0..=max_lag + 1)
        .map(|l| if l >= start { acf(l) } else { f64::NAN })
        .collect();
    let mut best: Option<(usize, f64)> = None;
    for lag in start + 1..=max_lag {
        let v = values[lag];
        let peak = v >= values[lag - 1] && v >= values[lag + 1];
        if peak && v > 0.3 && best.is_none_or(|(_, b)| v > b) {
            best = Some((lag, v));
        }
    }
    best.map(|(lag, _)| lag)
}

/// What [`backtest`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Backtest {
    /// Forecasts scored (samples after the warm-up, less the horizon).
    pub samples: usize,
    pub mae_model: f64,
    pub mae_naive: f64,
    /// Share of scored samples inside the selector's 95 % interval.
    pub interval_coverage: f64,
    /// The model the selector used most over the scored samples.
    pub model: &'static str,
    /// The season used, in samples (`None`: no Holt-Winters candidates).
    pub period: Option<usize>,
    /// Each candidate's moving mean absolute error at the end of the series.
    pub model_errors: Vec<(&'static str, f64)>,
}

/// Replays `series` through a [`Selector`] and scores its forecasts `horizon` samples
/// ahead, and the naive ones, on every sample from `warmup` on (the selector sees the
/// warm-up too, but its errors there are not counted).
pub fn backtest(series: &[f64], horizon: usize, period: Option<usize>, warmup: usize) -> Backtest {
    let horizon = horizon.max(1);
    let mut sel = Selector::new(horizon, period);
    let (mut abs_model, mut abs_naive, mut inside, mut samples) = (0.0, 0.0, 0usize, 0usize);
    let mut used: Vec<(&'static str, usize)> = Vec::new();
    for t in 0..series.len() {
        sel.update(series[t]);
        let target = t + horizon;
        if t + 1 < warmup.max(1) || target >= series.len() {
            continue;
        }
        let f = sel.forecast();
        let actual = series[target];
        abs_model += (actual - f.value).abs();
        abs_naive += (actual - series[t]).abs();
        if actual >= f.low && actual <= f.high {
            inside += 1;
        }
        samples += 1;
        match used.iter_mut().find(|(n, _)| *n == f.model) {
            Some(u) => u.1 += 1,
            None => used.push((f.model, 1)),
        }
    }
    let div = |v: f64| {
        if samples == 0 {
            0.0
        } else {
            v / samples as f64
        }
    };
    Backtest {
        samples,
        mae_model: div(abs_model),
        mae_naive: div(abs_naive),
        interval_coverage: div(inside as f64),
        model: used
            .iter()
            .max_by_key(|(_, n)| *n)
            .map_or("naive", |(n, _)| n),
        period,
        model_errors: sel.errors(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence (xorshift), uniform in [-1, 1).
    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed.max(1);
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
    }

    #[test]
    fn a_noisy_trend_is_forecast_far_better_than_naive() {
        let mut n = noise(7);
        let series: Vec<f64> = (0..2000)
            .map(|t| 1000.0 + 5.0 * t as f64 + 50.0 * n())
            .collect();
        let b = backtest(&series, 60, None, 500);
        assert!(b.mae_model < 0.3 * b.mae_naive, "{b:?}");
        assert!(b.model.starts_with("holt") || b.model == "ar_rls", "{b:?}");
    }

    #[test]
    fn a_season_is_found_and_forecast_better_than_naive() {
        let mut n = noise(11);
        let series: Vec<f64> = (0..3000)
            .map(|t| {
                let phase = 2.0 * std::f64::consts::PI * t as f64 / 300.0;
                500.0 + 200.0 * phase.sin() + 10.0 * n()
            })
            .collect();
        let period = detect_period(&series[..1500], 10);
        assert!(
            period.is_some_and(|p| (295..=305).contains(&p)),
            "{period:?}"
        );
        let b = backtest(&series, 60, period, 1500);
        assert!(b.mae_model < 0.5 * b.mae_naive, "{b:?}");
        assert!(b.interval_coverage > 0.8, "{b:?}");
    }

    #[test]
    fn white_noise_is_no_worse_than_naive_and_has_no_season() {
        let mut n = noise(3);
        let series: Vec<f64> = (0..3000).map(|_| 100.0 + 20.0 * n()).collect();
        assert_eq!(detect_period(&series[..1500], 10), None);
        let b = backtest(&series, 60, None, 1500);
        assert!(b.mae_model <= 1.05 * b.mae_naive, "{b:?}");
    }

    #[test]
    fn the_selector_starts_naive_and_ignores_non_finite_samples() {
        let mut s = Selector::new(5, None);
        s.update(3.0);
        s.update(f64::NAN);
        let f = s.forecast();
        assert_eq!((f.value, f.model), (3.0, "naive"));
        assert_eq!(s.horizon(), 5);
        assert_eq!(s.errors().len(), 8);
    }
}
