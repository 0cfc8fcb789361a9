use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coinpay::config::{LogFormat, Settings};

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
        to: std::path::PathBuf,
        /// MySQL: print the mysqldump command instead of running it.
        #[arg(long)]
        print_command: bool,
    },
    /// Restore a backup of `coinpay backup` into an empty database, then check the ledger.
    Restore {
        #[arg(long, value_name = "FILE")]
        from: std::path::PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A missing .env is normal; a broken one is reported.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: .env: {e}");
        return ExitCode::FAILURE;
    }
    let settings = Settings::from_env();
    let format = settings
        .as_ref()
        .map(|s| s.log_format)
        .unwrap_or(LogFormat::Text);
    init_tracing(format);
    let system = actix_rt::System::new();
    system.block_on(async move {
        match cli.command {
            Command::CheckConfig => {
                let items = coinpay::checklist::run(settings).await;
                let mut failed = 0;
                for item in &items {
                    println!("{}", item.line());
                    failed += item.fails() as usize;
                }
                if failed == 0 {
                    println!("all required items hold");
                    ExitCode::SUCCESS
                } else {
                    println!("{failed} required item(s) do not hold");
                    ExitCode::FAILURE
                }
            }
            Command::Migrate {
                print_sql: Some(dialect),
            } => {
                print!("{}", coinpay::schema_sql::script(dialect));
                ExitCode::SUCCESS
            }
            Command::Backup { to, print_command } => {
                let s = match settings {
                    Ok(s) => s,
                    Err(e) => return config_error(e),
                };
                match coinpay::backup::backup(&s.database_url, &to, print_command).await {
                    Ok(coinpay::backup::Backup::Written { path, summary }) => {
                        println!("backed up to {}: {summary}", path.display());
                        ExitCode::SUCCESS
                    }
                    Ok(coinpay::backup::Backup::Command(line)) => {
                        println!("{line}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => failure(e),
                }
            }
            Command::Restore { from } => {
                let s = match settings {
                    Ok(s) => s,
                    Err(e) => return config_error(e),
                };
                match coinpay::backup::restore(&s.database_url, &from).await {
                    Ok(report) => {
                        println!("{report}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => failure(e),
                }
            }
            Command::Healthcheck { url } => {
                let url = match (url, &settings) {
                    (Some(u), _) => u,
                    (None, Ok(s)) => coinpay::healthcheck::url_for(s.bind_addr),
                    (None, Err(e)) => return config_error_ref(e),
                };
                match coinpay::healthcheck::check(&url).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => failure(e),
                }
            }
            Command::Migrate { print_sql: None } => {
                let s = match settings {
                    Ok(s) => s,
                    Err(e) => return config_error(e),
                };
                match coinpay::store::run_migrations(&s.database_url).await {
                    Ok(n) => {
                        println!("applied {n} migration(s)");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Serve { sandbox } => {
                let s = match settings {
                    Ok(s) => s,
                    Err(e) => return config_error(e),
                };
                let app = match coinpay::startup::Application::build(s, sandbox).await {
                    Ok(app) => app,
                    Err(e) => {
                        tracing::error!(error = %e, "start-up failed");
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                // Machine-readable: tests and scripts read the bound port from here.
                println!("coinpay listening on http://{}", app.addr);
                if let Some(m) = app.metrics_addr {
                    println!("coinpay metrics on http://{m}/metrics");
                }
                if sandbox {
                    println!("coinpay sandbox on http://{}/sandbox", app.addr);
                }
                match app.run_until_stopped().await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Sandbox { bind } => {
                let cfg = match &settings {
                    Ok(s) => coinpay::startup::sandbox_config_from(s),
                    Err(e) => return config_error_ref(e),
                };
                match coinpay::sandbox::run_standalone(bind, cfg).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

fn failure(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

fn config_error(e: coinpay::config::ConfigError) -> ExitCode {
    config_error_ref(&e)
}

fn config_error_ref(e: &coinpay::config::ConfigError) -> ExitCode {
    tracing::error!(variable = e.var, "invalid configuration: {e}");
    eprintln!("error: invalid configuration: {e}");
    ExitCode::FAILURE
}
