//! `haproxy-control rollout …`: start, list, look at and steer rollouts
//! from a shell. The same checks and service as the HTTP API
//! (`rollout::request::validate` with the `[rollout]` policy,
//! `rollout::service::Rollouts`), straight on PostgreSQL and RabbitMQ.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::follow;
use super::report;
use super::request::{RolloutBody, validate};
use super::service::{RolloutError, Rollouts};
use crate::config::Config;
use crate::db::{self, PgPool, rollouts};
use crate::queue::{Publisher, Topology};

/// Most rollouts `list` shows.
const MAX_LIST: i64 = 500;

/// `rollout` subcommands.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout from a JSON file: the body of POST /api/haproxy/rollouts.
    Start(StartArgs),
    /// List rollouts, newest first.
    List(ListArgs),
    /// Show a rollout and its servers; --follow watches it until it ends
    /// (exit 0: completed, 2: halted or aborted).
    Status(StatusArgs),
    /// Pause a running rollout: no server starts; those in a step finish it.
    Pause(IdArgs),
    /// Resume a paused or halted rollout; failed servers are retried from the
    /// step they failed in.
    Resume(IdArgs),
    /// Abort: no server starts; servers in a step end in a safe state.
    Abort(IdArgs),
    /// A manual update of this server is done: the rollout goes on with it.
    Continue(ServerArgs),
    /// Leave a failed server out (it stays out of traffic) and go on.
    Skip(ServerArgs),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The request as JSON (`-`: standard input); see docs/rollouts.md.
    #[arg(long)]
    pub file: PathBuf,
    /// Who asks [default: cli:$USER].
    #[arg(long)]
    pub actor: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// At most this many, newest first (1 to 500).
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The rollout's id.
    pub id: i64,
    /// Show its progress live until it completes, halts or is aborted.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The rollout's id.
    pub id: i64,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The rollout's id.
    pub id: i64,
    /// The server's id (`haproxy_servers.id`, as `status` lists it).
    #[arg(long)]
    pub server_id: i64,
}

/// Runs one `rollout` subcommand; prints its outcome on stdout.
///
/// # Errors
/// A one-line message: the request refused (with the reason the API would
/// answer), no such rollout, or PostgreSQL or RabbitMQ unreachable.
pub async fn run(config: &Config, command: &RolloutCommand) -> anyhow::Result<ExitCode> {
    match command {
        RolloutCommand::Start(args) => start(config, args).await?,
        RolloutCommand::List(args) => list(config, args.limit).await?,
        RolloutCommand::Status(args) if args.follow => {
            return follow::follow(&pool(config).await?, args.id).await;
        }
        RolloutCommand::Status(args) => status(config, args.id).await?,
        RolloutCommand::Pause(a) => steer(config, a.id, Steer::Pause).await?,
        RolloutCommand::Resume(a) => steer(config, a.id, Steer::Resume).await?,
        RolloutCommand::Abort(a) => steer(config, a.id, Steer::Abort).await?,
        RolloutCommand::Continue(a) => server(config, a, ServerMove::Continue).await?,
        RolloutCommand::Skip(a) => server(config, a, ServerMove::Skip).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One connection, used one statement after another, and none kept in
/// reserve ([`db::pool_for_command`]).
async fn pool(config: &Config) -> anyhow::Result<PgPool> {
    db::pool_for_command(&config.database.url, 1)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach PostgreSQL: {e}"))
}

/// What the service needs: the database and a publisher on RabbitMQ.
struct Connections {
    pool: PgPool,
    amqp: lapin::Connection,
    publisher: Publisher,
    topology: Topology,
}

impl Connections {
    async fn open(config: &Config) -> anyhow::Result<Self> {
        let pool = pool(config).await?;
        let topology = Topology::with_prefix(&config.amqp.prefix, config.amqp.delivery_limit);
        let amqp =
            crate::queue::connect_with(&config.amqp.brokers()?, "haproxy-control rollout", 0)
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach RabbitMQ: {e}"))?;
        let declared = async {
            topology.declare(&amqp.create_channel().await?).await?;
            Publisher::new(&amqp).await
        };
        let publisher = declared
            .await
            .map_err(|e| anyhow::anyhow!("cannot set up RabbitMQ: {e}"))?;
        Ok(Self {
            pool,
            amqp,
            publisher,
            topology,
        })
    }

    fn rollouts(&self) -> Rollouts<'_> {
        Rollouts {
            pool: &self.pool,
            publisher: &self.publisher,
            topology: &self.topology,
        }
    }

    async fn close(self) {
        let _ = self.amqp.close(200, "done".into()).await;
    }
}

/// The service's error as one line, as the API words it.
fn explain(e: RolloutError) -> anyhow::Error {
    match e {
        RolloutError::Invalid(m) => anyhow::anyhow!("invalid rollout: {m}"),
        RolloutError::NotFound(m) | RolloutError::Conflict(_, m) => anyhow::anyhow!(m),
        RolloutError::Db(e) => anyhow::anyhow!("PostgreSQL: {e}"),
        RolloutError::Publish(e) => anyhow::anyhow!(
            "RabbitMQ did not take the rollout's message ({e}); run the same command again"
        ),
    }
}

fn read_body(path: &Path) -> anyhow::Result<RolloutBody> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a rollout request: {e}", path.display()))
}

async fn start(config: &Config, args: &StartArgs) -> anyhow::Result<()> {
    let body = read_body(&args.file)?;
    let valid = validate(&body, &config.rollout.policy())
        .map_err(|m| anyhow::anyhow!("invalid rollout: {m}"))?;
    let actor = crate::admin::cli_actor(args.actor.as_deref());
    let conns = Connections::open(config).await?;
    let started = conns.rollouts().start(&actor, &valid).await;
    conns.close().await;
    let started = started.map_err(|e| match e {
        // Recorded, but its first tick may be lost: the same transaction id
        // again publishes it without starting a second rollout.
        RolloutError::Publish(p) if body.transaction_id.is_none() => anyhow::anyhow!(
            "RabbitMQ did not take the rollout's message ({p}); add \"transaction_id\": \"{}\" \
             to {} and run the same command again",
            valid.transaction_id,
            args.file.display()
        ),
        e => explain(e),
    })?;
    let r = &started.rollout;
    let how = if started.created {
        "started"
    } else {
        "already recorded for this transaction id"
    };
    println!(
        "rollout {} {how}: {} servers in {} waves, status {}, transaction {}",
        r.id, r.total, r.waves, r.status, r.transaction_id
    );
    println!(
        "follow it with: haproxy-control rollout status {} --follow",
        r.id
    );
    Ok(())
}

async fn list(config: &Config, limit: i64) -> anyhow::Result<()> {
    if !(1..=MAX_LIST).contains(&limit) {
        anyhow::bail!("--limit must be 1 to {MAX_LIST}, not {limit}");
    }
    let pool = pool(config).await?;
    let rows = db::run(&pool, move |c| rollouts::list(c, None, limit)).await?;
    print!("{}", report::list_table(&rows));
    Ok(())
}

async fn status(config: &Config, id: i64) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    let snap = follow::snapshot(&pool, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no rollout with id {id}"))?;
    let names = follow::names(&pool, id).await?;
    print!("{}", report::status_text(&snap, &names));
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Steer {
    Pause,
    Resume,
    Abort,
}

async fn steer(config: &Config, id: i64, how: Steer) -> anyhow::Result<()> {
    let conns = Connections::open(config).await?;
    let service = conns.rollouts();
    let done = match how {
        Steer::Pause => service.pause(id).await,
        Steer::Resume => service.resume(id).await,
        Steer::Abort => service.abort(id).await,
    };
    conns.close().await;
    let row = done.map_err(explain)?;
    println!(
        "rollout {} is {} ({})",
        row.id,
        row.status,
        report::wave_label(&row)
    );
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum ServerMove {
    Continue,
    Skip,
}

async fn server(config: &Config, args: &ServerArgs, how: ServerMove) -> anyhow::Result<()> {
    let conns = Connections::open(config).await?;
    let service = conns.rollouts();
    let (done, what) = match how {
        ServerMove::Continue => (
            service.continue_server(args.id, args.server_id).await,
            "continues after its manual update",
        ),
        ServerMove::Skip => (
            service.skip_server(args.id, args.server_id).await,
            "is skipped (left as it is, out of traffic)",
        ),
    };
    conns.close().await;
    done.map_err(explain)?;
    println!("server {} of rollout {} {what}", args.server_id, args.id);
    Ok(())
}
