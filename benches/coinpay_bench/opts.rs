//! The benchmark's options: a clap derive for the fixed ones, plus `--<scenario>-concurrency`
//! and `--<scenario>-count` generated from the scenario table, so that a new scenario gets its
//! options without an edit here.
//!
//! `cargo test --all-targets` runs this program too (the smoke run) and hands it the test
//! harness's arguments (`--nocapture`, a test name filter, ...): without `--bench` those are
//! set aside rather than refused, and a name filter that does not select this target skips it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches, Parser, ValueEnum};

use crate::scenarios::{SCENARIO_NAMES, SCENARIOS};

const ENVIRONMENT: &str = "\
MariaDB: COINPAY_BENCH_MYSQL_URL or COINPAY_TEST_MYSQL_URL (a server URL; a fresh database \
coinpay_b_<random> is created on it). Redis (optional): COINPAY_BENCH_REDIS_HOST/PORT or \
COINPAY_TEST_REDIS_HOST/PORT. Binary: COINPAY_BENCH_BIN, else the one cargo built.";

/// The names a test filter may use to select the smoke run.
const SELF_NAMES: &str = "bench_smoke coinpay_bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Mysql,
    Both,
}

/// coinpay's benchmark: how fast the service credits payments, against the limit of its own
/// database, measured in the same run on the same machine.
#[derive(Debug, Parser)]
#[command(name = "coinpay_bench", bin_name = "coinpay_bench", after_help = ENVIRONMENT)]
struct Cli {
    /// The full settings (what `cargo bench` passes); without it, a smoke run.
    #[arg(long)]
    bench: bool,
    /// Which databases to measure [default: SQLite, and MariaDB when it has a URL].
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = SCENARIO_NAMES)]
    only: Option<Vec<String>>,
    /// Connections (or tasks) of every scenario [default: 16, smoke 8].
    #[arg(long, value_name = "C", value_parser = positive)]
    concurrency: Option<usize>,
    /// Requests of every scenario.
    #[arg(long, value_name = "N", value_parser = positive)]
    count: Option<usize>,
    #[command(flatten)]
    per_scenario: PerScenario,
    /// Users the orders and consumes are spread over [default: 1000, smoke 50].
    #[arg(long, value_name = "U", value_parser = positive)]
    users: Option<usize>,
    /// Unmeasured credits before db-baseline and before notify-paid [default: 1000, smoke 20].
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,
    /// db-baseline is measured at each of these numbers of connections (its pool's size and its
    /// tasks) and its best rate is the limit [default: 1,16,64, smoke: its concurrency].
    #[arg(long, value_name = "C,C,..", value_delimiter = ',', value_parser = positive)]
    db_baseline_connections: Option<Vec<usize>>,
    /// Service instances on the one database, every load spread evenly over them; on a
    /// multi-host (Galera) URL instance k starts from the k-th node.
    #[arg(long, value_name = "N", value_parser = positive, default_value = "1")]
    instances: usize,
    /// DB_POOL_SIZE of the service.
    #[arg(long, value_name = "P", value_parser = positive, default_value = "10")]
    db_pool_size: usize,
    /// Time limit of each scenario, in seconds [default: 180, smoke 40].
    #[arg(long, value_name = "S", value_parser = positive)]
    max_secs: Option<usize>,
    /// RUST_LOG of the service.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    rust_log: String,
    /// Extra environment for the service, e.g. to compare settings (repeatable).
    #[arg(long, value_name = "K=V", value_parser = key_value)]
    svc_env: Vec<(String, String)>,
}

fn positive(s: &str) -> Result<usize, String> {
    s.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "needs a positive number".to_string())
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| "needs K=V".to_string())
}

/// `--<scenario>-concurrency C` and `--<scenario>-count N` for each scenario of the table:
/// (concurrency, count) by scenario name, where given.
#[derive(Debug, Default)]
struct PerScenario(HashMap<&'static str, (Option<usize>, Option<usize>)>);

impl Args for PerScenario {
    fn augment_args(cmd: Command) -> Command {
        SCENARIOS.iter().fold(cmd, |cmd, s| {
            cmd.arg(
                Arg::new(s.conc_flag)
                    .long(s.conc_flag)
                    .value_name("C")
                    .value_parser(positive)
                    .help(format!("Connections of {}", s.name)),
            )
            .arg(
                Arg::new(s.count_flag)
                    .long(s.count_flag)
                    .value_name("N")
                    .value_parser(positive)
                    .help(format!(
                        "Requests of {} [default: {}, smoke {}]",
                        s.name, s.full_count, s.smoke_count
                    )),
            )
        })
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for PerScenario {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut p = PerScenario::default();
        p.update_from_arg_matches(m)?;
        Ok(p)
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for s in &SCENARIOS {
            let conc = m.get_one::<usize>(s.conc_flag).copied();
            let count = m.get_one::<usize>(s.count_flag).copied();
            self.0.insert(s.name, (conc, count));
        }
        Ok(())
    }
}

/// Connections and requests of one scenario.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub conc: usize,
    pub count: usize,
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub full: bool,
    pub sqlite: bool,
    pub mysql: Option<String>,
    pub bin: PathBuf,
    load: HashMap<&'static str, Load>,
    only: Option<Vec<String>>,
    pub users: usize,
    /// Unmeasured credits before db-baseline and before notify-paid (a fresh database server
    /// and a fresh service are slower for their first thousand transactions).
    pub warmup: usize,
    pub db_pool_size: u32,
    /// The connections db-baseline is measured at, one row each.
    pub baseline_connections: Vec<usize>,
    pub instances: usize,
    max_secs: u64,
    pub req_timeout: Duration,
    pub rust_log: String,
    pub redis: Option<(String, u16)>,
    /// Extra environment for the service (KEY=VALUE), e.g. to compare settings.
    pub svc_env: Vec<(String, String)>,
}

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Parses `args` (the program name first). Without `--bench`, arguments it does not know are
/// set aside and returned, the test harness's; with `--bench` they are an error.
fn parse(mut args: Vec<String>) -> Result<(Cli, Vec<String>), clap::Error> {
    let full = args.iter().skip(1).any(|a| a == "--bench");
    let mut foreign = Vec::new();
    loop {
        match Cli::try_parse_from(&args) {
            Err(e) if !full && e.kind() == ErrorKind::UnknownArgument => {
                let Some(ContextValue::String(bad)) = e.get(ContextKind::InvalidArg) else {
                    return Err(e);
                };
                // `--flag=value` is reported as `--flag`.
                let is_bad = |a: &String| {
                    a == bad
                        || a.strip_prefix(bad.as_str())
                            .is_some_and(|r| r.starts_with('='))
                };
                let at = args.iter().skip(1).position(is_bad).map(|i| i + 1);
                let Some(at) = at else { return Err(e) };
                foreign.push(args.remove(at));
            }
            r => return r.map(|cli| (cli, foreign)),
        }
    }
}

impl Opts {
    /// The options of this run from the command line and the environment; None when there is
    /// nothing to run (`--help`, or a test filter that does not select the smoke run). The error
    /// is the message to print.
    pub fn from_env() -> Result<Option<Opts>, String> {
        let (cli, foreign) = match parse(std::env::args().collect()) {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::DisplayHelp => {
                print!("{}", e.render());
                return Ok(None);
            }
            Err(e) => return Err(e.render().to_string()),
        };
        if foreign
            .iter()
            .any(|a| !a.starts_with('-') && !SELF_NAMES.contains(a.as_str()))
        {
            println!("bench smoke: skipped (test name filter)");
            return Ok(None);
        }
        let o = Opts::new(cli)?;
        if !o.full && o.mysql.is_none() {
            eprintln!(
                "bench smoke: SKIPPING the MariaDB variant: COINPAY_TEST_MYSQL_URL is not set (run scripts/test.sh)"
            );
            if std::env::var("COINPAY_REQUIRE_SERVICES").as_deref() == Ok("1") {
                return Err(
                    "error: COINPAY_TEST_MYSQL_URL is not set but services are required".into(),
                );
            }
        }
        Ok(Some(o))
    }

    fn new(cli: Cli) -> Result<Opts, String> {
        let full = cli.bench;
        let mut mysql =
            env_nonempty("COINPAY_BENCH_MYSQL_URL").or(env_nonempty("COINPAY_TEST_MYSQL_URL"));
        let sqlite = match cli.backend {
            None => true,
            Some(BackendChoice::Sqlite) => {
                mysql = None;
                true
            }
            Some(b) if mysql.is_none() => {
                let name = if b == BackendChoice::Mysql {
                    "mysql"
                } else {
                    "both"
                };
                return Err(format!(
                    "error: --backend {name} needs COINPAY_BENCH_MYSQL_URL"
                ));
            }
            Some(b) => b == BackendChoice::Both,
        };
        let redis = match (
            env_nonempty("COINPAY_BENCH_REDIS_HOST").or(env_nonempty("COINPAY_TEST_REDIS_HOST")),
            env_nonempty("COINPAY_BENCH_REDIS_PORT")
                .or(env_nonempty("COINPAY_TEST_REDIS_PORT"))
                .and_then(|p| p.parse().ok()),
        ) {
            (Some(h), Some(p)) => Some((h, p)),
            _ => None,
        };
        // Defaults, then the options for every scenario, then those of one scenario.
        let load: HashMap<&'static str, Load> = SCENARIOS
            .iter()
            .map(|s| {
                let (conc, count) = cli.per_scenario.0.get(s.name).copied().unwrap_or_default();
                let default = if full { s.full_count } else { s.smoke_count };
                let load = Load {
                    conc: conc
                        .or(cli.concurrency)
                        .unwrap_or(if full { 16 } else { 8 }),
                    count: count.or(cli.count).unwrap_or(default),
                };
                (s.name, load)
            })
            .collect();
        let baseline_connections = cli.db_baseline_connections.unwrap_or_else(|| {
            if full {
                vec![1, 16, 64]
            } else {
                vec![load["db-baseline"].conc]
            }
        });
        let pick = |given: Option<usize>, full_value: usize, smoke_value: usize| {
            given.unwrap_or(if full { full_value } else { smoke_value })
        };
        Ok(Opts {
            full,
            sqlite,
            mysql,
            bin: env_nonempty("COINPAY_BENCH_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(crate::harness::BIN)),
            load,
            only: cli.only,
            users: pick(cli.users, 1000, 50),
            warmup: pick(cli.warmup, 1000, 20),
            db_pool_size: u32::try_from(cli.db_pool_size)
                .map_err(|_| "error: --db-pool-size is too large".to_string())?,
            baseline_connections,
            instances: cli.instances,
            max_secs: pick(cli.max_secs, 180, 40) as u64,
            req_timeout: Duration::from_secs(if full { 30 } else { 15 }),
            rust_log: cli.rust_log,
            redis,
            svc_env: cli.svc_env,
        })
    }

    /// Whether `--only` (if given) names the scenario.
    pub fn wants(&self, s: &str) -> bool {
        self.only.as_ref().is_none_or(|l| l.iter().any(|x| x == s))
    }
    pub fn load(&self, s: &str) -> Load {
        self.load[s]
    }
    /// When a scenario starting now must stop sending.
    pub fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.max_secs)
    }
}
