//! The `coinpay` binary: reads the command line, `.env` and the settings (once, for every
//! subcommand), sets up logging, and hands the subcommand to the library.
//!
//! Each subcommand is one `async fn` returning `Result<ExitCode, Failure>`; every failure
//! ends in [`report`], which prints the one `error: …` line on stderr and exits with status 1.
//! `check-config` is the exception: it reports a configuration that does not load as a failed
//! checklist item instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coinpay::config::{ConfigError, LogFormat, Settings};
use coinpay::startup::{Application, StartupError};
use coinpay::store::StoreError;

/// coinpay: compute-credit packages for WeChat mini-program users, paid with WeChat Pay v2.
#[derive(Parser)]
#[command(name = "coinpay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (applies pending migrations first).
    Serve {
        /// Serve the WeChat Pay simulator under /sandbox and use it: no configuration needed.
        #[arg(long)]
        sandbox: bool,
    },
    /// Apply pending database migrations and exit (a second run does nothing).
    Migrate {
        /// Print the SQL of the embedded migrations for this dialect instead, to apply by hand.
        #[arg(long, value_name = "DIALECT")]
        print_sql: Option<coinpay::schema_sql::Dialect>,
    },
    /// Back the database up to FILE while the service runs (SQLite: VACUUM INTO; MySQL: mysqldump).
    Backup {
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// MySQL: print the mysqldump command instead of running it.
        #[arg(long)]
        print_command: bool,
    },
    /// Restore a backup of `coinpay backup` into an empty database, then check the ledger.
    Restore {
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// Exit 0 when the service on BIND_ADDR answers /healthz (the container's HEALTHCHECK).
    Healthcheck {
        /// Check this URL instead.
        #[arg(long)]
        url: Option<String>,
    },
    /// Walk the configuration checklist against the live settings, database and Redis.
    CheckConfig,
    /// Run the WeChat Pay simulator alone.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        bind: SocketAddr,
        /// Also serve over TLS here (refunds need a client certificate, hence TLS).
        #[arg(long, requires = "tls_dir")]
        tls_bind: Option<SocketAddr>,
        /// Where the TLS listener writes ca.pem, apiclient_cert.pem and apiclient_key.pem.
        #[arg(long, requires = "tls_bind")]
        tls_dir: Option<std::path::PathBuf>,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

/// Why a subcommand stopped; each is printed as `error: {self}`.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(".env: {0}")]
    DotEnv(#[from] dotenvy::Error),
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Backup(#[from] coinpay::backup::BackupError),
    #[error(transparent)]
    Health(#[from] coinpay::healthcheck::HealthError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A missing .env is normal; a broken one is reported (before logging is set up: LOG_FORMAT
    // may be in it).
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        return report(Failure::DotEnv(e));
    }
    let settings = Settings::from_env();
    init_tracing(settings.as_ref().map_or(LogFormat::Text, |s| s.log_format));
    let system = actix_rt::System::new();
    let outcome = system.block_on(async move {
        match cli.command {
            Command::CheckConfig => Ok(check_config(settings).await),
            Command::Migrate {
                print_sql: Some(dialect),
            } => {
                print!("{}", coinpay::schema_sql::script(dialect));
                Ok(ExitCode::SUCCESS)
            }
            Command::Migrate { print_sql: None } => migrate(settings?).await,
            Command::Backup { to, print_command } => backup(settings?, &to, print_command).await,
            Command::Restore { from } => {
                println!(
                    "{}",
                    coinpay::backup::restore(&settings?.database_url, &from).await?
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Healthcheck { url } => {
                let url = match url {
                    Some(u) => u,
                    None => coinpay::healthcheck::url_for(settings?.bind_addr),
                };
                coinpay::healthcheck::check(&url).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Serve { sandbox } => serve(settings?, sandbox).await,
            Command::Sandbox {
                bind,
                tls_bind,
                tls_dir,
            } => {
                let tls = tls_bind
                    .zip(tls_dir)
                    .map(|(bind, dir)| coinpay::sandbox::StandaloneTls { bind, dir });
                run_sandbox(&settings?, bind, tls).await
            }
        }
    });
    outcome.unwrap_or_else(report)
}

/// Logs what deserves a log line, then prints the error for the operator.
fn report(failure: Failure) -> ExitCode {
    match &failure {
        Failure::Config(e) => tracing::error!(variable = e.var, "invalid configuration: {e}"),
        Failure::Startup(e) => tracing::error!(error = %e, "start-up failed"),
        Failure::DotEnv(_)
        | Failure::Store(_)
        | Failure::Io(_)
        | Failure::Backup(_)
        | Failure::Health(_) => {}
    }
    eprintln!("error: {failure}");
    ExitCode::FAILURE
}

async fn check_config(settings: Result<Settings, ConfigError>) -> ExitCode {
    let items = coinpay::checklist::run(settings).await;
    for item in &items {
        println!("{}", item.line());
    }
    match items.iter().filter(|i| i.fails()).count() {
        0 => {
            println!("all required items hold");
            ExitCode::SUCCESS
        }
        failed => {
            println!("{failed} required item(s) do not hold");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(s: Settings) -> Result<ExitCode, Failure> {
    let n = coinpay::store::run_migrations(&s.database_url).await?;
    println!("applied {n} migration(s)");
    Ok(ExitCode::SUCCESS)
}

async fn backup(s: Settings, to: &std::path::Path, print_only: bool) -> Result<ExitCode, Failure> {
    match coinpay::backup::backup(&s.database_url, to, print_only).await? {
        coinpay::backup::Backup::Written { path, summary } => {
            println!("backed up to {}: {summary}", path.display());
        }
        coinpay::backup::Backup::Command(line) => println!("{line}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(s: Settings, sandbox: bool) -> Result<ExitCode, Failure> {
    let app = Application::build(s, sandbox).await?;
    // Machine-readable: tests and scripts read the bound port from here.
    println!("coinpay listening on http://{}", app.addr);
    if let Some(m) = app.metrics_addr {
        println!("coinpay metrics on http://{m}/metrics");
    }
    if sandbox {
        println!("coinpay sandbox on http://{}/sandbox", app.addr);
    }
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_sandbox(
    s: &Settings,
    bind: SocketAddr,
    tls: Option<coinpay::sandbox::StandaloneTls>,
) -> Result<ExitCode, Failure> {
    let cfg = coinpay::startup::sandbox_config_from(s);
    coinpay::sandbox::run_standalone_with_tls(bind, cfg, tls).await?;
    Ok(ExitCode::SUCCESS)
}
