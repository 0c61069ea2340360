//! Throw-away PostgreSQL databases for tests (unit tests and `tests/`).
//!
//! [`TestDatabase::create`] makes a uniquely named, fully migrated database in well under a
//! second by cloning a template database; dropping the value drops the database. The template
//! (`hc_tpl_<hash of migrations/>`) is built once per set of migrations, by whichever test
//! process gets there first, under an advisory lock so parallel processes (nextest runs every
//! test in its own) do not race; it is published by renaming, so nobody sees it half-built.
//!
//! The server is `postgres://postgres@127.0.0.1:5432/postgres`, or `$TEST_DATABASE_ADMIN_URL`;
//! its user must be allowed to create databases.
//!
//! Raw SQL throughout: `CREATE/DROP DATABASE` and advisory locks are not in Diesel's DSL.

use diesel::Connection as _;
use diesel::RunQueryDsl as _;
use diesel::pg::PgConnection;
use diesel::sql_types::{BigInt, Bool, Text};

use super::{DbError, PgPool};

/// Used when `TEST_DATABASE_ADMIN_URL` is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Environment variable naming the maintenance database to create test databases from.
pub const ADMIN_URL_ENV: &str = "TEST_DATABASE_ADMIN_URL";

/// Prefix of every test database's name.
pub const TEST_DATABASE_PREFIX: &str = "hc_test_";

/// Advisory lock (in the admin database) held while the template is built ("hapx-tpl").
const TEMPLATE_LOCK_KEY: i64 = 0x6861_7078_2d74_706c;

/// A database that exists for as long as this value does.
#[derive(Debug)]
pub struct TestDatabase {
    /// Connection URL of the database.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a new database with every migration applied.
    pub fn create() -> Result<Self, DbError> {
        Self::create_on(admin_url())
    }

    /// Creates a new database with every migration applied on the server
    /// of `admin_url` (a maintenance database, e.g. `…/postgres`), building
    /// the template there first if needed.
    pub fn create_on(admin_url: String) -> Result<Self, DbError> {
        let mut admin = PgConnection::establish(&admin_url)?;
        let template = ensure_template(&mut admin, &admin_url)?;
        Self::create_from(&mut admin, admin_url, &template)
    }

    /// Creates a new, empty database (from `template0`, no migrations applied).
    pub fn create_empty() -> Result<Self, DbError> {
        let admin_url = admin_url();
        let mut admin = PgConnection::establish(&admin_url)?;
        Self::create_from(&mut admin, admin_url, "template0")
    }

    fn create_from(
        admin: &mut PgConnection,
        admin_url: String,
        template: &str,
    ) -> Result<Self, DbError> {
        let name = format!("{TEST_DATABASE_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let url = with_database(&admin_url, &name)?;
        diesel::sql_query(format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote_ident(&name),
            quote_ident(template)
        ))
        .execute(admin)?;
        Ok(Self {
            url,
            name,
            admin_url,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a connection to the database.
    pub fn connect(&self) -> Result<PgConnection, DbError> {
        Ok(PgConnection::establish(&self.url)?)
    }

    /// Builds a pool of at most `max_size` connections to the database.
    pub fn pool(&self, max_size: u32) -> Result<PgPool, DbError> {
        super::pool(&self.url, max_size)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let result = PgConnection::establish(&self.admin_url)
            .map_err(DbError::from)
            .and_then(|mut admin| drop_database(&mut admin, &self.name));
        if let Err(e) = result {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

/// `$TEST_DATABASE_ADMIN_URL`, or [`DEFAULT_ADMIN_URL`].
pub fn admin_url() -> String {
    std::env::var(ADMIN_URL_ENV)
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
}

/// `url` with its database (the path) replaced by `database`; user, host and query are kept.
pub fn with_database(url: &str, database: &str) -> Result<String, DbError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).ok_or_else(|| {
        DbError::Connection(diesel::ConnectionError::InvalidConnectionUrl(format!(
            "not a postgres:// URL: {url}"
        )))
    })?;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// Name of the template database for the migrations this crate was built with.
pub fn template_name() -> String {
    format!("hc_tpl_{}", env!("HC_MIGRATIONS_HASH"))
}

/// Makes sure the migrated template exists and returns its name.
fn ensure_template(admin: &mut PgConnection, admin_url: &str) -> Result<String, DbError> {
    let name = template_name();
    if database_exists(admin, &name)? {
        return Ok(name);
    }
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(admin)?;
    let built = build_template(admin, admin_url, &name);
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(admin);
    built?;
    unlocked?;
    Ok(name)
}

/// Builds the template under a temporary name and renames it when complete. Caller holds the
/// template lock.
fn build_template(admin: &mut PgConnection, admin_url: &str, name: &str) -> Result<(), DbError> {
    if database_exists(admin, name)? {
        return Ok(()); // built by another process while we waited for the lock
    }
    let building = format!("{name}_building");
    // Left over by a builder that died; nobody else can be using it (we hold the lock).
    drop_database(admin, &building)?;
    diesel::sql_query(format!(
        "CREATE DATABASE {} TEMPLATE template0",
        quote_ident(&building)
    ))
    .execute(admin)?;
    let migrated = PgConnection::establish(&with_database(admin_url, &building)?)
        .map_err(DbError::from)
        .and_then(|mut conn| super::run_migrations(&mut conn).map(drop));
    // The connection is closed here. RENAME waits (up to 5 s) for its backend to go away.
    if let Err(e) = migrated {
        let _ = drop_database(admin, &building);
        return Err(e);
    }
    diesel::sql_query(format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(&building),
        quote_ident(name)
    ))
    .execute(admin)?;
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

fn database_exists(admin: &mut PgConnection, name: &str) -> Result<bool, DbError> {
    let row: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<Text, _>(name)
            .get_result(admin)?;
    Ok(row.exists)
}

/// Ends every session on database `name` and drops it (if it exists).
fn drop_database(admin: &mut PgConnection, name: &str) -> Result<(), DbError> {
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind::<Text, _>(name)
    .execute(admin)?;
    diesel::sql_query(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(name)
    ))
    .execute(admin)?;
    Ok(())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
