//! The `opencti-stream-exporter` binary: parses the command line, loads the configuration and
//! dispatches. Exit codes: 0 on success (including a clean stop on SIGTERM/SIGINT), 1 on a
//! runtime failure, 2 on a configuration or usage error (one line naming the variable) or a WAL
//! directory this process may not write (one line naming the directory, its owner and the fix).
//! An error is printed once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use opencti_stream_exporter::cli::{Cli, Command};
use opencti_stream_exporter::config::{Config, ConfigError, LogFormat, Source};
use opencti_stream_exporter::wal_access::NotWritable;
use opencti_stream_exporter::{commands, daemon, logging};

fn main() -> ExitCode {
    opencti_stream_exporter::allocator::tune();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    // A blocking task stuck on a failed disk must not keep the process from exiting.
    runtime.shutdown_timeout(RUNTIME_STOP_GRACE);
    code
}

/// Longest wait for blocking tasks once the command finished.
const RUNTIME_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn dispatch(cli: Cli) -> ExitCode {
    let config_path = cli.config.clone();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let (config, source) = match load_config(config_path.as_ref()) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            logging::init(&config.connector.log_level, config.connector.log_format);
            for note in Config::ignored_settings(&source) {
                tracing::warn!("{note}");
            }
            let cancel = match daemon::shutdown_on_signals() {
                Ok(cancel) => cancel,
                Err(err) => return failure(&err),
            };
            report(daemon::run(config, cancel).await)
        }
        Command::Status(args) => {
            let (config, _) = match load_config(config_path.as_ref()) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            report(commands::status::run(&config, &args).await)
        }
        #[cfg(feature = "simulator")]
        Command::Demo(args) => {
            logging::init("info", LogFormat::Text);
            report(commands::demo::run(&args).await)
        }
        #[cfg(feature = "simulator")]
        Command::Simulate(args) => {
            logging::init("info", LogFormat::Text);
            let cancel = match daemon::shutdown_on_signals() {
                Ok(cancel) => cancel,
                Err(err) => return failure(&err),
            };
            report(simulator::run(args, cancel).await)
        }
        Command::Verify(args) => {
            logging::init("warn", LogFormat::Text);
            // With --dir no configuration is needed; otherwise it names the destination.
            let config = if args.dir.is_some() {
                try_load_config(config_path.as_ref())
                    .ok()
                    .map(|(config, _)| config)
            } else {
                match load_config(config_path.as_ref()) {
                    Ok((config, _)) => Some(config),
                    Err(code) => return code,
                }
            };
            report(commands::verify::run(config.as_ref(), &args).await)
        }
        Command::ImportState(args) => {
            let (config, _) = match load_config(config_path.as_ref()) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            report(commands::import_state::run(&config, &args))
        }
        Command::Healthcheck(args) => {
            report(commands::healthcheck::run(args.bind, args.port).await)
        }
        Command::Quarantine(args) => {
            let (config, _) = match load_config(config_path.as_ref()) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            logging::init(&config.connector.log_level, config.connector.log_format);
            report(commands::quarantine::run(&config, &args).await)
        }
    }
}

/// Loads and validates the configuration; on a problem prints one line and gives exit code 2.
fn load_config(path: Option<&PathBuf>) -> Result<(Config, Source), ExitCode> {
    try_load_config(path).map_err(|err| {
        eprintln!("configuration error: {err}");
        ExitCode::from(2)
    })
}

fn try_load_config(path: Option<&PathBuf>) -> Result<(Config, Source), ConfigError> {
    let explicit = path.is_some();
    let path = path.cloned().unwrap_or_else(|| PathBuf::from("config.yml"));
    let source = Source::from_process(&path, explicit)?;
    let config = Config::from_source(&source)?;
    Ok((config, source))
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failure(&err),
    }
}

/// Prints `err` once: as a log line when logging is set up (so a log shipper sees it in the
/// configured format), on stderr otherwise. A WAL directory this process may not write is a
/// deployment error (exit code 2), anything else a runtime failure (1).
fn failure(err: &anyhow::Error) -> ExitCode {
    if tracing::dispatcher::has_been_set() {
        tracing::error!("{err:#}");
    } else {
        eprintln!("error: {err:#}");
    }
    if err.downcast_ref::<NotWritable>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}
