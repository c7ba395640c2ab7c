//! `loadgen`: roomcast's bundled load generator.
//!
//! Scenarios: `fanout` (viewers in rooms, events published through the ingest socket on an
//! open-loop timetable, every delivery measured and checked), `comments` (viewers comment at
//! a fixed rate: comment -> ack and comment -> delivery latency), `idle` (hold connections;
//! with `--server-pid`, the server's RSS per connection), `storm` (connect as fast as
//! possible: connect and upgrade latency), `churn` (leave and rejoin with `since`). Progress
//! every second on stderr, a table on stdout, and `--json`, `--hgrm`, `--svg` files.
//! `--procs N` spreads the connections over N child processes.
//!
//! Exit status: 0 for a valid run; [`INVALID_RUN`] when the run completed but its figures do
//! not answer the question (the table's last line says why); 1 when it could not run.

use clap::Parser;
use loadgen::cli::Cli;
use loadgen::{clients, scenario};
use std::process::ExitCode;

/// Exit status of a run that completed but is invalid.
const INVALID_RUN: u8 = 2;

fn main() -> anyhow::Result<ExitCode> {
    let settings = Cli::parse().scenario.settings();
    if let Some(me) = settings.common.child {
        clients::run_child(&settings, me)?;
        return Ok(ExitCode::SUCCESS);
    }
    let report = scenario::run(&settings)?;
    print!("{}", report.table());
    Ok(if report.valid { ExitCode::SUCCESS } else { ExitCode::from(INVALID_RUN) })
}
