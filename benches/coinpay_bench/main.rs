//! coinpay benchmarks: how fast the service credits payments, against the limit of its own
//! database, measured in the same run on the same machine.
//!
//! Two modes:
//! - `--bench` (what `cargo bench` passes; scripts/bench.sh): the full settings against the
//!   binary cargo built for this target (`target/release/coinpay` under `cargo bench`).
//! - without `--bench` (what `cargo test --all-targets` runs): a smoke run, a few hundred requests
//!   per scenario, on SQLite and, when COINPAY_TEST_MYSQL_URL is set, on a fresh database of
//!   that MariaDB. No timing is asserted; errors and ledger invariant violations fail it.
//!
//! Scenarios (each with its own connections and request count):
//! - `db-baseline`: the paid-notification transaction (order compare-and-set, balance update,
//!   ledger row) run straight on a `DbPool` of the service's size, no HTTP, no actors;
//! - `notify-paid`: one signed SUCCESS notification per pending order, over keep-alive HTTP/1.1;
//! - `notify-dup-live` / `notify-dup-cold`: the same notifications again, with the orders' actors
//!   alive, then after a restart of the service (every actor loads its order from the DB);
//! - `create-order`: logged-in users creating orders (unifiedorder at the simulator included);
//! - `consume`: the internal API spending one coin per request.
//!
//! After each scenario the ledger invariant is checked on the database; a violation, an error
//! reply, or a request left unsent when the time limit ran out fails the run (exit code 1).

//!
//! Files: `opts` (the command line), `scenarios` (the table and one backend's run through it),
//! `setup` (data made through the library), `service` (the binary under load), `http1` (the load
//! generator's HTTP/1.1 client), `stats` (the load drivers and their figures), `record` (the
//! checks after each scenario), `report` (the printed tables). The database and the process
//! harness are the integration tests' (`tests/harness`), so the two cannot drift apart.

#[path = "../../tests/harness/mod.rs"]
mod harness;
mod http1;
mod opts;
mod record;
mod report;
mod scenarios;
mod service;
mod setup;
mod stats;

use std::process::ExitCode;
use std::time::Instant;

use harness::Backend;
use opts::Opts;

type BoxError = Box<dyn std::error::Error>;
type Res<T> = Result<T, BoxError>;

fn err(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

fn main() -> ExitCode {
    let o = match Opts::from_env() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.trim_end());
            return ExitCode::FAILURE;
        }
    };
    if o.full && o.bin.to_string_lossy().contains("/debug/") {
        eprintln!(
            "warning: measuring a debug build ({}): use `cargo bench` or scripts/bench.sh",
            o.bin.display()
        );
    }
    let started = Instant::now();
    let mut backends = Vec::new();
    if o.sqlite {
        backends.push(Backend::Sqlite);
    }
    if let Some(u) = &o.mysql {
        backends.push(Backend::Mysql(u.clone()));
    }
    let system = actix_rt::System::new();
    let (outs, failures, other) = system.block_on(async {
        let mut outs = Vec::new();
        let mut failures = Vec::new();
        let mut other = 0usize;
        for b in &backends {
            match scenarios::run_backend(&o, b).await {
                Ok(oc) => {
                    failures.extend(oc.failures.iter().cloned());
                    other += oc.other_failures;
                    outs.push(oc);
                }
                Err(e) => {
                    other += 1;
                    failures.push(format!("{}: {e}", b.name()));
                }
            }
        }
        (outs, failures, other)
    });
    if o.full {
        report::print_report(&o, &outs);
    }
    let rows = outs.iter().flat_map(|oc| oc.rows.iter());
    let passed = rows.clone().filter(|r| !r.failed).count();
    let failed = rows.filter(|r| r.failed).count() + other;
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    let mode = if o.full { "bench" } else { "bench smoke" };
    println!(
        "{mode}: {passed} passed, {failed} failed ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
