//! The progress bar on stderr and the throughput samples `--plot` draws.
//!
//! One task samples `Run::progress` every half second; the bar appears only when
//! stderr is a terminal, so JSON on stdout and logs stay clean.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report::group_digits;
use super::run::Run;

/// Samples progress every half second until the returned flag is set.
pub fn spawn_progress(run: Arc<Run>, label: &'static str, total: Option<u64>) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| new_bar(label, total));
    let flag = done.clone();
    tokio::spawn(async move {
        let mut last = 0u64;
        let mut last_t = Instant::now();
        while !flag.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let n = run.progress.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = (n - last) as f64 / (now - last_t).as_secs_f64();
            last = n;
            last_t = now;
            if let Ok(mut v) = run.samples.lock() {
                v.push(((now - run.base).as_secs_f64(), rate));
            }
            if let Some(bar) = &bar {
                bar.set_position(n);
                bar.set_message(format!("{} msgs/s", group_digits(rate as u64)));
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    });
    done
}

/// A bar when the total is known, else a spinner.
fn new_bar(label: &'static str, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{prefix}: [{bar:30}] {human_pos}/{human_len} msgs  {msg}  {elapsed}"
    } else {
        "{prefix}: {spinner} {human_pos} msgs  {msg}  {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label);
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    bar
}
