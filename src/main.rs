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
    Migrate,
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
            Command::Migrate => {
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
            Command::Sandbox {
                bind,
                tls_bind,
                tls_dir,
            } => {
                let cfg = match &settings {
                    Ok(s) => coinpay::startup::sandbox_config_from(s),
                    Err(e) => return config_error_ref(e),
                };
                let tls = tls_bind
                    .zip(tls_dir)
                    .map(|(bind, dir)| coinpay::sandbox::StandaloneTls { bind, dir });
                match coinpay::sandbox::run_standalone_with_tls(bind, cfg, tls).await {
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

fn config_error(e: coinpay::config::ConfigError) -> ExitCode {
    config_error_ref(&e)
}

fn config_error_ref(e: &coinpay::config::ConfigError) -> ExitCode {
    tracing::error!(variable = e.var, "invalid configuration: {e}");
    eprintln!("error: invalid configuration: {e}");
    ExitCode::FAILURE
}
