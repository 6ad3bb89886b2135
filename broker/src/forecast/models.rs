//! The candidate forecasting models: last value, simple exponential smoothing, Holt's
//! linear trend (optionally damped), additive Holt-Winters with one season, and an
//! autoregressive model fitted online by recursive least squares.
//!
//! Each is online and cheap: one update per sample in O(1) (O(p²) for AR(p)), fixed
//! memory (Holt-Winters keeps one season), no allocation after construction. None is
//! trusted on its own; [`super::Selector`] runs them side by side and forecasts with
//! whichever has the lowest recent error at the horizon asked for.

/// An online one-series forecaster.
pub trait Model: Send + std::fmt::Debug {
    /// Short name for reports (`holt_winters`, `ar`, ...).
    fn name(&self) -> &'static str;
    /// Takes the next sample.
    fn update(&mut self, y: f64);
    /// The value expected `h` samples (h ≥ 1) after the last one taken; the last
    /// value (or 0 before any) when the model has no opinion yet.
    fn forecast(&self, h: usize) -> f64;
}

/// The naive forecast: the last value, whatever the horizon.
#[derive(Debug, Default)]
pub struct Naive {
    last: f64,
}

impl Model for Naive {
    fn name(&self) -> &'static str {
        "naive"
    }
    fn update(&mut self, y: f64) {
        self.last = y;
    }
    fn forecast(&self, _h: usize) -> f64 {
        self.last
    }
}

/// Simple exponential smoothing: a level, no trend. With a small `alpha` it is a long
/// moving mean, the best one can do on white noise.
#[derive(Debug)]
pub struct Ses {
    alpha: f64,
    level: Option<f64>,
}

impl Ses {
    pub fn new(alpha: f64) -> Self {
        Ses { alpha, level: None }
    }
}

impl Model for Ses {
    fn name(&self) -> &'static str {
        "ses"
    }
    fn update(&mut self, y: f64) {
        self.level = Some(match self.level {
            None => y,
            Some(l) => self.alpha * y + (1.0 - self.alpha) * l,
        });
    }
    fn forecast(&self, _h: usize) -> f64 {
        self.level.unwrap_or(0.0)
    }
}

/// Holt's linear trend with damping `phi` (1 = undamped): level plus `h` steps of a
/// trend that shrinks by `phi` per step.
#[derive(Debug)]
pub struct Holt {
    alpha: f64,
    beta: f64,
    phi: f64,
    /// (level, trend) once two samples were seen; the first sample before that.
    state: Option<(f64, f64)>,
    first: Option<f64>,
}

impl Holt {
    pub fn new(alpha: f64, beta: f64, phi: f64) -> Self {
        Holt {
            alpha,
            beta,
            phi,
            state: None,
            first: None,
        }
    }
}

/// `phi + phi² + … + phi^h` (h when phi is 1).
fn damped_steps(phi: f64, h: usize) -> f64 {
    if (phi - 1.0).abs() < 1e-12 {
        return h as f64;
    }
    phi * (1.0 - phi.powi(h as i32)) / (1.0 - phi)
}

impl Model for Holt {
    fn name(&self) -> &'static str {
        if self.phi < 1.0 {
            "holt_damped"
        } else {
            "holt"
        }
    }
    fn update(&mut self, y: f64) {
        self.state = match (self.state, self.first) {
            (Some((l, b)), _) => {
                let l2 = self.alpha * y + (1.0 - self.alpha) * (l + self.phi * b);
                let b2 = self.beta * (l2 - l) + (1.0 - self.beta) * self.phi * b;
                Some((l2, b2))
            }
            (None, Some(f)) => Some((y, y - f)),
            (None, None) => {
                self.first = Some(y);
                None
            }
        };
    }
    fn forecast(&self, h: usize) -> f64 {
        match (self.state, self.first) {
            (Some((l, b)), _) => l + damped_steps(self.phi, h) * b,
            (None, Some(f)) => f,
            (None, None) => 0.0,
        }
    }
}

/// Additive Holt-Winters: level, trend and a season of `period` samples. The first
/// season initialises it (level = its mean, season = deviations from it); until then
/// it forecasts the last value.
#[derive(Debug)]
pub struct HoltWinters {
    alpha: f64,
    beta: f64,
    gamma: f64,
    period: usize,
    level: f64,
    trend: f64,
    /// Indexed by sample number modulo `period`.
    season: Vec<f64>,
    /// Samples taken.
    n: usize,
    last: f64,
}

impl HoltWinters {
    /// `period` ≥ 2 samples.
    pub fn new(period: usize, alpha: f64, beta: f64, gamma: f64) -> Self {
        let period = period.max(2);
        HoltWinters {
            alpha,
            beta,
            gamma,
            period,
            level: 0.0,
            trend: 0.0,
            season: vec![0.0; period],
            n: 0,
            last: 0.0,
        }
    }

    pub fn period(&self) -> usize {
        self.period
    }
}

impl Model for HoltWinters {
    fn name(&self) -> &'static str {
        "holt_winters"
    }
    fn update(&mut self, y: f64) {
        let m = self.period;
        let t = self.n;
        self.n += 1;
        self.last = y;
        if t < m {
            // Collect the first season raw; initialise at its end.
            self.season[t] = y;
            if t + 1 == m {
                let mean = self.season.iter().sum::<f64>() / m as f64;
                self.level = mean;
                for s in &mut self.season {
                    *s -= mean;
                }
            }
            return;
        }
        let s_old = self.season[t % m];
        let l = self.alpha * (y - s_old) + (1.0 - self.alpha) * (self.level + self.trend);
        self.trend = self.beta * (l - self.level) + (1.0 - self.beta) * self.trend;
        self.level = l;
        self.season[t % m] = self.gamma * (y - l) + (1.0 - self.gamma) * s_old;
    }
    fn forecast(&self, h: usize) -> f64 {
        if self.n < self.period {
            return self.last;
        }
        // The last sample taken was number n - 1; the one asked for is n - 1 + h.
        let slot = (self.n - 1 + h) % self.period;
        self.level + h as f64 * self.trend + self.season[slot]
    }
}

/// AR(p) with an intercept, fitted by recursive least squares with forgetting factor
/// `lambda`: `y_t = c + a_1 y_{t-1} + … + a_p y_{t-p}`, forecast by iterating it.
/// Values are centred on the first sample so the intercept stays small.
#[derive(Debug)]
pub struct ArRls {
    p: usize,
    lambda: f64,
    /// Coefficients: intercept then a_1..a_p.
    theta: Vec<f64>,
    /// Inverse correlation matrix, (p+1)², row-major.
    cov: Vec<f64>,
    /// The last p centred samples, newest first.
    lags: Vec<f64>,
    centre: Option<f64>,
    n: usize,
}

impl ArRls {
    pub fn new(p: usize, lambda: f64) -> Self {
        let k = p + 1;
        let mut cov = vec![0.0; k * k];
        for i in 0..k {
            cov[i * k + i] = 1e4;
        }
        ArRls {
            p,
            lambda,
            theta: vec![0.0; k],
            cov,
            lags: vec![0.0; p],
            centre: None,
            n: 0,
        }
    }

    fn regressors(&self, lags: &[f64]) -> Vec<f64> {
        let mut x = Vec::with_capacity(self.p + 1);
        x.push(1.0);
        x.extend_from_slice(lags);
        x
    }
}

impl Model for ArRls {
    fn name(&self) -> &'static str {
        "ar_rls"
    }
    fn update(&mut self, y: f64) {
        let c = *self.centre.get_or_insert(y);
        let y = y - c;
        if self.n >= self.p {
            let k = self.p + 1;
            let x = self.regressors(&self.lags);
            // P x
            let px: Vec<f64> = (0..k)
                .map(|i| (0..k).map(|j| self.cov[i * k + j] * x[j]).sum())
                .collect();
            let denom = self.lambda + x.iter().zip(&px).map(|(a, b)| a * b).sum::<f64>();
            let err = y - x.iter().zip(&self.theta).map(|(a, b)| a * b).sum::<f64>();
            if denom.is_finite() && denom > 1e-12 {
                for (t, p) in self.theta.iter_mut().zip(&px) {
                    *t += p / denom * err;
                }
                for (i, row) in self.cov.chunks_mut(k).enumerate() {
                    for (c, pj) in row.iter_mut().zip(&px) {
                        *c = (*c - px[i] * pj / denom) / self.lambda;
                    }
                }
            }
            if !self.theta.iter().all(|t| t.is_finite()) || !self.cov.iter().all(|v| v.is_finite())
            {
                // Numerical trouble: start the fit over rather than forecast nonsense.
                *self = ArRls::new(self.p, self.lambda);
                self.centre = Some(c);
            }
        }
        self.lags.rotate_right(1);
        if let Some(first) = self.lags.first_mut() {
            *first = y;
        }
        self.n += 1;
    }
    fn forecast(&self, h: usize) -> f64 {
        let c = self.centre.unwrap_or(0.0);
        if self.n <= self.p {
            return c + self.lags.first().copied().unwrap_or(0.0);
        }
        let mut lags = self.lags.clone();
        let mut y = 0.0;
        for _ in 0..h.max(1) {
            let x = self.regressors(&lags);
            y = x.iter().zip(&self.theta).map(|(a, b)| a * b).sum();
            lags.rotate_right(1);
            if let Some(first) = lags.first_mut() {
                *first = y;
            }
        }
        c + y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(m: &mut dyn Model, ys: impl IntoIterator<Item = f64>) {
        for y in ys {
            m.update(y);
        }
    }

    #[test]
    fn holt_extrapolates_a_line() {
        let mut m = Holt::new(0.5, 0.3, 1.0);
        feed(&mut m, (0..200).map(|t| 10.0 + 2.0 * t as f64));
        // Last sample 408; 60 ahead 528.
        assert!((m.forecast(60) - 528.0).abs() < 1e-6, "{}", m.forecast(60));
        let mut d = Holt::new(0.5, 0.3, 0.9);
        feed(&mut d, (0..200).map(|t| 10.0 + 2.0 * t as f64));
        // Damped: the trend's steps sum to at most phi/(1-phi) = 9, so the forecast
        // stays near the last value instead of running 60 steps on.
        let f = d.forecast(60);
        assert!(f > 400.0 && f < 440.0, "{f}");
        assert!((damped_steps(0.9, 60) - 9.0).abs() < 0.05);
    }

    #[test]
    fn holt_winters_repeats_a_pure_season() {
        let season = [5.0, 9.0, 1.0, 3.0, 7.0];
        let mut m = HoltWinters::new(5, 0.2, 0.01, 0.3);
        feed(&mut m, (0..100).map(|t| 100.0 + season[t % 5]));
        // Sample 99 was slot 4; h ahead is slot (99 + h) % 5.
        for h in 1..=12 {
            let want = 100.0 + season[(99 + h) % 5];
            assert!((m.forecast(h) - want).abs() < 1e-6, "h {h}");
        }
    }

    #[test]
    fn ar_learns_an_ar1_process_and_a_line() {
        let mut m = ArRls::new(1, 1.0);
        let mut y = 50.0;
        for _ in 0..300 {
            m.update(y);
            y = 5.0 + 0.9 * y;
        }
        // y converges to 50 exactly, so feed a fresh perturbed trajectory instead.
        let mut m2 = ArRls::new(1, 1.0);
        let mut y = 0.0;
        let mut last = 0.0;
        for _ in 0..60 {
            m2.update(y);
            last = y;
            y = 5.0 + 0.9 * y;
        }
        assert!((m2.forecast(1) - (5.0 + 0.9 * last)).abs() < 1e-3);
        let mut line = ArRls::new(2, 1.0);
        feed(&mut line, (0..100).map(|t| 3.0 * t as f64));
        assert!(
            (line.forecast(10) - 3.0 * 109.0).abs() < 0.5,
            "{}",
            line.forecast(10)
        );
        let _ = m.forecast(3);
    }

    #[test]
    fn ses_and_naive_hold_their_level() {
        let mut n = Naive::default();
        let mut s = Ses::new(0.5);
        assert_eq!(n.forecast(1), 0.0);
        feed(&mut n, [1.0, 2.0, 3.0]);
        feed(&mut s, [4.0, 4.0, 4.0]);
        assert_eq!(n.forecast(60), 3.0);
        assert_eq!(s.forecast(60), 4.0);
    }
}
