use std::process::ExitCode;

use clap::Parser;
use haproxy_control::cli::{Cli, Command, DeadLettersCommand, InstanceCommand};
use haproxy_control::config::Config;
use haproxy_control::{
    admin, api, dead_letters, fagent, rollout, scheduler, telemetry, webhooks, worker,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
        Command::Worker { args, metrics } => {
            args.apply(&mut config);
            metrics.apply(&mut config);
            worker::run(&config, shutdown_watch()).await?;
        }
        Command::Webhooks => {
            webhooks::run(&config, shutdown_watch()).await?;
        }
        Command::Scheduler { args, metrics } => {
            args.apply(&mut config);
            metrics.apply(&mut config);
            scheduler::run(&config, shutdown_watch()).await?;
        }
        Command::Serve(args) => {
            args.worker.apply(&mut config);
            args.scheduler.apply(&mut config);
            args.api.apply(&mut config);
            if let Some(listen) = config.metrics.listen.take() {
                tracing::info!(%listen, "serve: metrics.listen ignored, the API serves /metrics");
            }
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
        Command::DeadLetters(command) => dead_letters_command(&config, command).await?,
        Command::Rollout(command) => return rollout::cli::run(&config, command).await,
        Command::Fagent(args) => {
            let (listen, settings) = args.settings(&config)?;
            let tls = args.tls(&config)?;
            fagent::server::serve(listen, settings, tls, shutdown_signal()).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dead-letters list` prints JSON lines; `replay` what it replayed.
async fn dead_letters_command(config: &Config, command: &DeadLettersCommand) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::List(args) => {
            for m in dead_letters::list(config, args.limit).await? {
                println!("{}", serde_json::to_string(&m)?);
            }
        }
        DeadLettersCommand::Replay(args) => {
            let selection = match args.transaction_id {
                Some(id) => dead_letters::Selection::Transaction(id),
                None => dead_letters::Selection::All,
            };
            let report = dead_letters::replay(config, selection).await?;
            for (routing_key, transaction_id) in &report.replayed {
                println!(
                    "replayed {routing_key} {}",
                    transaction_id.as_deref().unwrap_or("-")
                );
            }
            println!(
                "{} replayed, {} left in the dead-letter queue",
                report.replayed.len(),
                report.kept
            );
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
