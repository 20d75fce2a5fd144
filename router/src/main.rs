//! `weft`: the router daemon (`weft router`) and the commands that talk to it.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use tracing_subscriber::EnvFilter;
use weft_router::cli::{Cli, Command, run_client_command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Cli { api, command } = cli;
    #[allow(clippy::wildcard_enum_match_arm)] // Every other subcommand is an API client.
    let result = match command {
        Command::Router(args) => {
            let config = match args.into_config() {
                Ok(c) => c,
                Err(msg) => Cli::command()
                    .error(clap::error::ErrorKind::ArgumentConflict, msg)
                    .exit(),
            };
            init_tracing();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(weft_router::run_router(config)))
        }
        Command::InstallCni(args) => args
            .into_install()
            .run()
            .map(print_lines)
            .map_err(anyhow::Error::from),
        Command::UninstallCni {
            conf_dir,
            conf_name,
            bin_dir,
            remove_plugin,
            remove_rules,
            wait,
        } => {
            weft_router::cni_install::uninstall_cni(&conf_dir, &conf_name, &bin_dir, remove_plugin)
                .map(print_lines)
                .map_err(anyhow::Error::from)
                .and_then(|()| {
                    if remove_rules {
                        weft_router::nft::Nft::open()
                            .and_then(|mut n| n.remove_table())
                            .map_err(|e| {
                                anyhow::anyhow!("removing nftables table inet weft: {e}")
                            })?;
                        print_lines(vec!["removed nftables table inet weft".to_owned()]);
                    }
                    Ok(())
                })
                .and_then(|()| if wait { wait_for_signal() } else { Ok(()) })
        }
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                let mut out = std::io::stdout().lock();
                rt.block_on(run_client_command(&api, &command, &mut out))
                    .map_err(anyhow::Error::from)
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, joined.
            let _ = writeln!(std::io::stderr().lock(), "weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            r = tokio::signal::ctrl_c() => r.map_err(anyhow::Error::from),
        }
    })
}

/// Prints what an install step did, one line each.
fn print_lines(lines: Vec<String>) {
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

/// Logs to stderr, filtered by `WEFT_LOG`, else `RUST_LOG`, else `info`.
fn init_tracing() {
    let filter = EnvFilter::try_from_env("WEFT_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
