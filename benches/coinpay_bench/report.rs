//! The printed report: one Markdown table of the scenarios, one of memory, and the settings.

use std::io::Write as _;

use crate::opts::Opts;
use crate::record::Outcome;

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub fn print_report(o: &Opts, outs: &[Outcome]) {
    let mut out = String::new();
    let w = &mut out;
    use std::fmt::Write as _;
    let _ = writeln!(
        w,
        "| backend | scenario | conc | requests | ok | errors | seconds | per second | p50 ms | p99 ms | max ms | svc CPU µs/req | vs db-baseline |"
    );
    let _ = writeln!(
        w,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for oc in outs {
        let base = oc
            .rows
            .iter()
            .find(|r| r.scenario == "db-baseline")
            .map(|r| r.stats.rate());
        for r in &oc.rows {
            let s = &r.stats;
            let ratio = match (base, r.scenario) {
                (_, "db-baseline") => "1.00".to_string(),
                (Some(b), "notify-paid" | "notify-dup-live" | "notify-dup-cold") if b > 0.0 => {
                    format!("{:.2}", s.rate() / b)
                }
                _ => "–".to_string(),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
                r.backend,
                r.scenario,
                r.conc,
                s.requested,
                s.ok,
                s.failed(),
                s.secs,
                s.rate(),
                s.pct(0.50),
                s.pct(0.99),
                s.max(),
                s.svc_cpu_us.map_or("–".to_string(), |c| format!("{c:.0}")),
                ratio
            );
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "| backend | idle RSS MB | RSS MB with live actors (count) | per actor KB | cold: RSS MB before → after (actors) | per actor KB |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
    for (oc, r) in outs.iter().zip(outs.iter().filter_map(|o| o.rows.first())) {
        let m = &oc.memory;
        let per = |a: u64, b: u64, n: f64| {
            if n > 0.0 {
                format!("{:.2}", (b as f64 - a as f64) / n)
            } else {
                "–".into()
            }
        };
        let _ = writeln!(
            w,
            "| {} | {:.1} | {:.1} ({:.0}) | {} | {:.1} → {:.1} ({:.0}) | {} |",
            r.backend,
            mb(m.idle_kb),
            mb(m.live_kb),
            m.live_actors,
            per(m.idle_kb, m.live_kb, m.live_actors),
            mb(m.cold_before_kb),
            mb(m.cold_after_kb),
            m.cold_actors,
            per(m.cold_before_kb, m.cold_after_kb, m.cold_actors),
        );
    }
    let _ = writeln!(
        w,
        "\nservice: {} (DB_POOL_SIZE={}, RUST_LOG={}, Redis {}), {} users",
        o.bin.display(),
        o.db_pool_size,
        o.rust_log,
        if o.redis.is_some() { "on" } else { "off" },
        o.users
    );
    print!("{out}");
    let _ = std::io::stdout().flush();
}
