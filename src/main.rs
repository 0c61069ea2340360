use std::process::ExitCode;

use clap::Parser;
use haproxy_control::cli::{Cli, Command, InstanceCommand};
use haproxy_control::config::Config;
use haproxy_control::{admin, api, fagent, scheduler, telemetry, worker};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    cli.apply(&mut config);
    match &cli.command {
        Command::Migrate => {
            let applied = admin::migrate(&config).await?;
            if applied.is_empty() {
                println!("database is up to date");
            }
            for name in applied {
                println!("applied {name}");
            }
        }
        Command::Worker(args) => {
            args.apply(&mut config);
            worker::run(&config, shutdown_watch()).await?;
        }
        Command::Scheduler(args) => {
            args.apply(&mut config);
            scheduler::run(&config, shutdown_watch()).await?;
        }
        Command::Serve(args) => {
            args.worker.apply(&mut config);
            args.scheduler.apply(&mut config);
            args.api.apply(&mut config);
            let rx = shutdown_watch();
            tokio::try_join!(
                worker::run(&config, rx.clone()),
                scheduler::run(&config, rx.clone()),
                api::run(&config, rx)
            )?;
        }
        Command::Api(args) => {
            args.apply(&mut config);
            api::run(&config, shutdown_watch()).await?;
        }
        Command::Events(args) => {
            admin::tail_events(&config, args).await?;
        }
        Command::Action(args) => {
            println!("{}", admin::send_action(&config, args).await?);
        }
        Command::Instance(InstanceCommand::Add(args)) => {
            println!("{}", admin::add_instance(&config, args).await?);
        }
        Command::Instance(InstanceCommand::List) => {
            print!("{}", admin::list_instances(&config).await?);
        }
        Command::Fagent(args) => {
            let (listen, settings) = args.settings(&config)?;
            let tls = args.tls(&config)?;
            fagent::server::serve(listen, settings, tls, shutdown_signal()).await?;
        }
    }
    Ok(())
}

/// A watch that turns true on SIGINT or SIGTERM.
fn shutdown_watch() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    rx
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
