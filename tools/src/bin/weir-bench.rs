//! `weir-bench`: Weir's load generator. How it measures is in `weir_tools::bench`
//! (and BENCHMARKS.md); this file parses the flags, runs and prints.
//!
//! ```text
//! weir-bench produce --embedded --size 1024 --batch 1000 --messages 1000000
//! weir-bench consume --embedded --producers 8 --consumers 8 --shards 8 --size 100
//! weir-bench e2e --embedded --rate 100000 --duration 10 --linger-ms 1
//! weir-bench failover --nodes 3 --kills 20
//! weir-bench trace --embedded --profile ramp --duration 900 --rate 2000 --out ramp.csv
//! weir-bench forecast --trace benches/traces/ramp.csv --horizon-s 60
//! ```
//!
//! Exit codes: 0 ok, 1 the run failed, 2 bad flags, 3 the run reported errors.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use weir_tools::bench::args::Args;
use weir_tools::bench::report::Report;

fn main() -> ExitCode {
    let cli = Args::parse();
    if let Err(e) = cli.check() {
        eprintln!("weir-bench: {e:#}");
        return ExitCode::from(2);
    }
    // Before the runtime (and an embedded broker) allocate their working memory.
    if let Err(e) = weir_broker::huge_pages::set_disabled_for_process(!cli.huge_pages) {
        eprintln!("weir-bench: cannot set transparent huge pages: {e}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.mode == weir_tools::bench::args::Mode::Forecast {
        let trace = cli.trace.clone().unwrap_or_default();
        let report = weir_tools::bench::forecast::read_trace(&trace).and_then(|t| {
            weir_tools::bench::forecast::forecast_report(&t, cli.horizon_s, cli.season_s)
        });
        return printed(report);
    }
    if cli.mode == weir_tools::bench::args::Mode::Trace {
        let result = rt.block_on(weir_tools::bench::forecast::run_trace(cli));
        rt.shutdown_timeout(Duration::from_secs(2));
        return printed(result);
    }
    if cli.mode == weir_tools::bench::args::Mode::Ramp {
        let result = rt.block_on(weir_tools::bench::ramp::run_ramp(cli));
        rt.shutdown_timeout(Duration::from_secs(2));
        return printed(result);
    }
    if cli.mode == weir_tools::bench::args::Mode::Failover {
        let json = cli.json;
        let result = rt.block_on(weir_tools::bench::failover::run_failover(cli));
        rt.shutdown_timeout(Duration::from_secs(2));
        return match result {
            Ok(r) if json => {
                println!("{}", r.to_json());
                if r.has_errors() {
                    ExitCode::from(3)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Ok(r) => {
                print!("{}", r.human());
                if r.has_errors() {
                    ExitCode::from(3)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("weir-bench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (json, plot) = (cli.json, cli.plot.clone());
    let result = rt.block_on(weir_tools::bench::run(cli, rt.handle().clone()));
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(report) => print(&report, json, plot.as_deref()),
        Err(e) => {
            eprintln!("weir-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the plot (if asked), prints the report, and says whether it had errors.
fn print(report: &Report, json: bool, plot: Option<&std::path::Path>) -> ExitCode {
    if let Some(path) = plot {
        if let Err(e) = weir_tools::bench::write_plot(path, &report.plot) {
            eprintln!("weir-bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.human());
    }
    if report.errors > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints a mode's one JSON object (or its error) and the exit code for it.
fn printed(result: anyhow::Result<impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(r) => {
            println!("{r}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
