//! `weir`: the admin, produce and consume command-line tool. The commands live in
//! `weir_tools::cli`, one module per command family; this file parses, runs, and
//! turns the outcome into an exit code.
//!
//! Errors are printed as their message and causes, never with a backtrace (even with
//! `RUST_BACKTRACE` set: a CLI user wants the reason, not the stack).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;
use weir_tools::cli::{Cli, Failed, Interrupted};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Err(e) = rt.block_on(weir_tools::cli::run(cli)) else {
        return ExitCode::SUCCESS;
    };
    // `weir consume | head` closing the pipe early is not an error.
    if e.downcast_ref::<std::io::Error>().map(|e| e.kind()) == Some(std::io::ErrorKind::BrokenPipe)
    {
        return ExitCode::SUCCESS;
    }
    if let Some(i) = e.downcast_ref::<Interrupted>() {
        return ExitCode::from((128 + i.signal).clamp(0, 255) as u8);
    }
    if let Some(f) = e.downcast_ref::<Failed>() {
        return ExitCode::from(f.code);
    }
    eprintln!("{}", error_text(&e));
    ExitCode::FAILURE
}

/// `Error: <message>` and, below it, the causes (anyhow's layout without the
/// backtrace its `Debug` would add).
fn error_text(e: &anyhow::Error) -> String {
    let mut s = format!("Error: {e}");
    let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
    match causes.len() {
        0 => {}
        1 => s.push_str(&format!("\n\nCaused by:\n    {}", causes[0])),
        _ => {
            s.push_str("\n\nCaused by:");
            for (i, c) in causes.iter().enumerate() {
                s.push_str(&format!("\n    {i}: {c}"));
            }
        }
    }
    s
}
