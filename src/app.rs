//! Start-up wiring every role shares: the database pool (migrated when the
//! role migrates), the broker connection, the declared topology and a
//! publisher with confirms.

use std::sync::Arc;

use crate::config::Config;
use crate::db::{self, PgPool};
use crate::queue::{Publisher, Topology};

/// What a role asks of start-up.
#[derive(Debug, Clone, Copy)]
pub struct Role {
    /// The broker connection's name.
    pub name: &'static str,
    /// The worker's sessions: commit without waiting for the WAL flush (see
    /// [`db::pool_async_commit`]) and bounded lock and statement waits
    /// ([`crate::config::DatabaseConfig::worker_session`]).
    pub async_commit: bool,
    /// Run the migrations (under their advisory lock) before anything else.
    pub migrate: bool,
}

impl Role {
    pub const API: Role = Role {
        name: "haproxy-control api",
        async_commit: false,
        migrate: true,
    };
    pub const WORKER: Role = Role {
        name: "haproxy-control worker",
        async_commit: true,
        migrate: true,
    };
    pub const WEBHOOKS: Role = Role {
        name: "haproxy-control webhooks",
        async_commit: false,
        migrate: true,
    };
    pub const SCHEDULER: Role = Role {
        name: "haproxy-control scheduler",
        async_commit: false,
        migrate: false,
    };
}

/// A role's connected pieces.
pub struct App {
    pub pool: PgPool,
    pub conn: lapin::Connection,
    pub topology: Arc<Topology>,
    pub publisher: Publisher,
}

impl App {
    /// Connects to PostgreSQL with a pool of `pool_size` (and migrates) and to RabbitMQ, declares the
    /// topology and opens a publisher.
    ///
    /// # Errors
    /// When PostgreSQL or RabbitMQ cannot be reached, or a migration fails.
    pub async fn connect(config: &Config, role: Role, pool_size: u32) -> anyhow::Result<Self> {
        let settings = if role.async_commit {
            config.database.worker_session()
        } else {
            db::SessionSettings::default()
        };
        let pool = db::pool_off_runtime(&config.database.url, pool_size, settings).await?;
        if role.migrate {
            // Migrations wait for each other's lock and may run long: not
            // on the bounded sessions.
            let unbounded = if settings == db::SessionSettings::default() {
                pool.clone()
            } else {
                db::pool_off_runtime(&config.database.url, 1, db::SessionSettings::default())
                    .await?
            };
            let applied = db::run(&unbounded, db::run_migrations).await?;
            if !applied.is_empty() {
                tracing::info!(?applied, "migrations applied");
            }
        }
        let topology = Arc::new(Topology::with_prefix(
            &config.amqp.prefix,
            config.amqp.delivery_limit,
        ));
        let conn = crate::queue::connect_with(
            &config.amqp.brokers()?,
            role.name,
            config.amqp.reconnect_attempts,
        )
        .await?;
        topology.declare(&conn.create_channel().await?).await?;
        let publisher = Publisher::new(&conn).await?;
        Ok(Self {
            pool,
            conn,
            topology,
            publisher,
        })
    }
}
