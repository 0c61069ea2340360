//! Tests of the migrations, the schema and the test-database helper. They need the PostgreSQL
//! server of `testing::admin_url()`; each uses a database of its own and drops it.
//! Raw SQL where a test reads the catalog or writes what the CHECK constraints must reject.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use diesel::Connection as _;
use diesel::connection::SimpleConnection as _;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, HasSqlType, SqlType, Text, is_nullable};
use diesel_migrations::MigrationHarness as _;

use super::schema;
use super::testing::{TestDatabase, with_database};
use super::{MIGRATIONS, run_migrations};

const ALL_MIGRATIONS: [&str; 9] = [
    "2026-11-28-000001_ac_tables",
    "2026-11-28-000002_haproxy_tables",
    "2026-11-28-000003_sync_runs",
    "2026-11-28-000004_action_path_writes",
    "2026-12-02-000005_haproxy_process",
    "2026-12-02-000006_sweeper",
    "2026-12-02-000007_rollouts",
    "2026-12-02-000008_webhooks",
    "2026-12-02-000009_approvals",
];

const MODULE_TABLES: [&str; 18] = [
    "haproxy_instances",
    "haproxy_backends",
    "haproxy_servers",
    "haproxy_batches",
    "haproxy_actions",
    "haproxy_server_status_history",
    "haproxy_application_links",
    "haproxy_sync_runs",
    "haproxy_sweeps",
    "haproxy_rollouts",
    "haproxy_rollout_servers",
    "haproxy_settings",
    "haproxy_approvals",
    "haproxy_webhook_endpoints",
    "haproxy_webhook_callbacks",
    "haproxy_webhook_events",
    "haproxy_webhook_deliveries",
    "haproxy_webhook_attempts",
];

const AC_TABLES: [&str; 4] = [
    "servers",
    "applications",
    "application_groups",
    "application_group_members",
];

fn empty_db() -> (TestDatabase, PgConnection) {
    let db = TestDatabase::create_empty().expect("create test database");
    let conn = db.connect().expect("connect to test database");
    (db, conn)
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

fn tables(conn: &mut PgConnection) -> BTreeSet<String> {
    diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
         AND table_name <> '__diesel_schema_migrations'",
    )
    .load::<Name>(conn)
    .expect("list tables")
    .into_iter()
    .map(|n| n.name)
    .collect()
}

fn expected_tables() -> BTreeSet<String> {
    AC_TABLES
        .iter()
        .chain(MODULE_TABLES.iter())
        .map(|t| t.to_string())
        .collect()
}

#[test]
fn migrations_apply_on_a_fresh_database() {
    let (_db, mut conn) = empty_db();
    let applied = run_migrations(&mut conn).expect("migrations");
    assert_eq!(applied, ALL_MIGRATIONS);
    assert_eq!(tables(&mut conn), expected_tables());
    assert!(!conn.has_pending_migration(MIGRATIONS).expect("pending"));
}

#[test]
fn running_migrations_twice_is_a_no_op() {
    let (_db, mut conn) = empty_db();
    run_migrations(&mut conn).expect("first run");
    let columns_before = all_columns(&mut conn);
    let applied = run_migrations(&mut conn).expect("second run");
    assert!(applied.is_empty(), "second run applied {applied:?}");
    assert_eq!(all_columns(&mut conn), columns_before);
}

#[test]
fn migrations_revert_only_the_modules_tables_and_reapply() {
    let (_db, mut conn) = empty_db();
    run_migrations(&mut conn).expect("migrations");
    diesel::sql_query("INSERT INTO servers (hostname) VALUES ('web1')")
        .execute(&mut conn)
        .expect("insert server");
    conn.revert_all_migrations(MIGRATIONS).expect("revert");
    let left: BTreeSet<String> = AC_TABLES.iter().map(|t| t.to_string()).collect();
    assert_eq!(tables(&mut conn), left, "down.sql must keep AC's tables");
    let hostnames: Vec<String> = schema::servers::table
        .select(schema::servers::hostname)
        .load(&mut conn)
        .expect("servers");
    assert_eq!(hostnames, ["web1"]);
    assert_eq!(run_migrations(&mut conn).expect("re-apply"), ALL_MIGRATIONS);
    assert_eq!(tables(&mut conn), expected_tables());
}

/// AC's database already has `servers` and `applications`, without the columns the module
/// adds and with columns of its own. The migrations must add what is missing and keep the rest.
#[test]
fn migrations_apply_on_acs_existing_tables() {
    let (_db, mut conn) = empty_db();
    conn.batch_execute(
        "CREATE TABLE servers (
             id BIGSERIAL PRIMARY KEY,
             hostname VARCHAR(255) NOT NULL,
             ip TEXT NULL,
             datacenter TEXT NOT NULL,
             created_at TIMESTAMP NOT NULL DEFAULT now()
         );
         CREATE TABLE applications (
             id BIGSERIAL PRIMARY KEY,
             name TEXT NOT NULL,
             server_id BIGINT NULL REFERENCES servers (id),
             instance TEXT NULL,
             owner_team TEXT NOT NULL DEFAULT 'ops'
         );
         INSERT INTO servers (hostname, ip, datacenter) VALUES
             ('web1', '10.0.0.1', 'dc1'),
             ('lb1', '10.0.0.9', 'dc2');
         INSERT INTO applications (name, server_id, instance, owner_team)
             SELECT 'shop', id, '1', 'web' FROM servers WHERE hostname = 'web1';",
    )
    .expect("create AC's tables");

    let applied = run_migrations(&mut conn).expect("migrations on AC's database");
    assert_eq!(applied, ALL_MIGRATIONS);
    assert_eq!(tables(&mut conn), expected_tables());

    // AC's data and columns are untouched, the module's columns were added with defaults.
    #[derive(QueryableByName, Debug, PartialEq)]
    struct AcServer {
        #[diesel(sql_type = Text)]
        hostname: String,
        #[diesel(sql_type = Text)]
        datacenter: String,
        #[diesel(sql_type = Bool)]
        is_haproxy_node: bool,
    }
    let servers: Vec<AcServer> = diesel::sql_query(
        "SELECT hostname::text AS hostname, datacenter, is_haproxy_node FROM servers ORDER BY id",
    )
    .load(&mut conn)
    .expect("servers");
    assert_eq!(
        servers,
        [
            AcServer {
                hostname: "web1".into(),
                datacenter: "dc1".into(),
                is_haproxy_node: false
            },
            AcServer {
                hostname: "lb1".into(),
                datacenter: "dc2".into(),
                is_haproxy_node: false
            },
        ]
    );
    #[derive(QueryableByName)]
    struct Team {
        #[diesel(sql_type = Text)]
        owner_team: String,
    }
    let teams: Vec<Team> = diesel::sql_query("SELECT owner_team FROM applications")
        .load(&mut conn)
        .expect("applications");
    assert_eq!(teams.len(), 1);
    assert_eq!(teams[0].owner_team, "web");

    // The Diesel schema works against AC's tables.
    type Application = (i64, String, Option<i64>, Option<i32>, Option<String>);
    let apps: Vec<Application> = schema::applications::table
        .load(&mut conn)
        .expect("applications via Diesel");
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].1, "shop");
    assert_eq!(apps[0].3, None, "added port column is NULL");
    let lb: (i64, String, Option<String>, bool) = schema::servers::table
        .filter(schema::servers::hostname.eq("lb1"))
        .first(&mut conn)
        .expect("server via Diesel");
    assert_eq!(lb.2.as_deref(), Some("10.0.0.9"));
    let diff = compare_with_database(&mut conn, false);
    assert!(
        diff.is_empty(),
        "schema.rs does not fit AC's tables:\n{}",
        diff.join("\n")
    );

    // The module's tables reference AC's rows.
    diesel::insert_into(schema::haproxy_instances::table)
        .values((
            schema::haproxy_instances::server_id.eq(lb.0),
            schema::haproxy_instances::name.eq("lb1"),
            schema::haproxy_instances::fagent_url.eq("http://10.0.0.9:9100"),
            schema::haproxy_instances::fagent_token_ref.eq("env:FAGENT_TOKEN"),
        ))
        .execute(&mut conn)
        .expect("instance on AC's server");

    // Running again is still a no-op.
    assert!(run_migrations(&mut conn).expect("second run").is_empty());
}

#[test]
fn concurrent_runners_both_succeed_and_apply_each_migration_once() {
    let (db, conn) = empty_db();
    drop(conn);
    let barrier = Arc::new(Barrier::new(2));
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let url = db.url.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).expect("connect");
                barrier.wait();
                run_migrations(&mut conn)
            })
        })
        .collect();
    let mut applied: Vec<String> = Vec::new();
    for runner in runners {
        let names = runner.join().expect("runner thread").expect("migrations");
        applied.extend(names);
    }
    applied.sort();
    assert_eq!(
        applied, ALL_MIGRATIONS,
        "each migration applied exactly once in total"
    );
    let mut conn = db.connect().expect("connect");
    assert_eq!(tables(&mut conn), expected_tables());
}

#[test]
fn schema_matches_migrations() {
    let (_db, mut conn) = empty_db();
    run_migrations(&mut conn).expect("migrations");
    let diff = compare_with_database(&mut conn, true);
    assert!(
        diff.is_empty(),
        "schema.rs and migrations/ disagree:\n{}",
        diff.join("\n")
    );
    let diesel_tables: BTreeSet<String> = describe_schema(&mut conn).into_keys().collect();
    assert_eq!(
        diesel_tables,
        tables(&mut conn),
        "every table is in schema.rs"
    );
}

#[test]
fn check_constraints_and_defaults() {
    let db = TestDatabase::create().expect("test database");
    let mut conn = db.connect().expect("connect");
    use schema::*;
    let instance: i64 = diesel::insert_into(haproxy_instances::table)
        .values((
            haproxy_instances::name.eq("lb1"),
            haproxy_instances::fagent_url.eq("http://127.0.0.1:9100"),
            haproxy_instances::fagent_token_ref.eq("token:secret"),
        ))
        .returning(haproxy_instances::id)
        .get_result(&mut conn)
        .expect("instance");
    let breaker: (String, i32, bool) = haproxy_instances::table
        .select((
            haproxy_instances::breaker_state,
            haproxy_instances::consecutive_failures,
            haproxy_instances::is_active,
        ))
        .first(&mut conn)
        .expect("breaker");
    assert_eq!(breaker, ("closed".to_owned(), 0, true));
    let backend: i64 = diesel::insert_into(haproxy_backends::table)
        .values((
            haproxy_backends::haproxy_id.eq(instance),
            haproxy_backends::backend_name.eq("web"),
        ))
        .returning(haproxy_backends::id)
        .get_result(&mut conn)
        .expect("backend");
    let server: i64 = diesel::insert_into(haproxy_servers::table)
        .values((
            haproxy_servers::backend_id.eq(backend),
            haproxy_servers::server_name.eq("web1"),
            haproxy_servers::admin_state.eq("ready"),
            haproxy_servers::op_state.eq("up"),
        ))
        .returning(haproxy_servers::id)
        .get_result(&mut conn)
        .expect("server");
    let now = chrono::Utc::now();
    let action: i64 = diesel::insert_into(haproxy_actions::table)
        .values((
            haproxy_actions::transaction_id.eq(uuid::Uuid::new_v4()),
            haproxy_actions::server_id.eq(server),
            haproxy_actions::action.eq("drain"),
            haproxy_actions::status.eq("pending"),
            haproxy_actions::actor.eq("test"),
            haproxy_actions::requested_at.eq(now),
        ))
        .returning(haproxy_actions::id)
        .get_result(&mut conn)
        .expect("action");
    let events: serde_json::Value = haproxy_actions::table
        .find(action)
        .select(haproxy_actions::events)
        .first(&mut conn)
        .expect("events");
    assert_eq!(events, serde_json::json!([]));

    let rejected = [
        "UPDATE haproxy_instances SET breaker_state = 'ajar'",
        "UPDATE haproxy_instances SET fagent_token_ref = 'secret'",
        "UPDATE haproxy_servers SET admin_state = 'up'",
        "UPDATE haproxy_servers SET op_state = 'ready'",
        "UPDATE haproxy_actions SET status = 'done'",
        "UPDATE haproxy_actions SET action = 'stop'",
        "INSERT INTO haproxy_server_status_history \
         (server_id, new_admin_state, new_op_state, source, actor) \
         SELECT id, 'ready', 'up', 'api', 'x' FROM haproxy_servers",
        "INSERT INTO haproxy_backends (haproxy_id, backend_name) \
         SELECT haproxy_id, backend_name FROM haproxy_backends",
    ];
    for statement in rejected {
        assert!(
            diesel::sql_query(statement).execute(&mut conn).is_err(),
            "accepted: {statement}"
        );
    }

    // Deleting the instance cascades to its backends and servers; the action keeps its row.
    diesel::delete(haproxy_instances::table)
        .execute(&mut conn)
        .expect("delete instance");
    let servers: i64 = haproxy_servers::table
        .count()
        .get_result(&mut conn)
        .expect("count");
    assert_eq!(servers, 0);
    let orphan: Option<i64> = haproxy_actions::table
        .find(action)
        .select(haproxy_actions::server_id)
        .first(&mut conn)
        .expect("action survives");
    assert_eq!(orphan, None);
}

#[test]
fn test_database_is_migrated_fast_and_dropped() {
    let started = Instant::now();
    let db = TestDatabase::create().expect("test database");
    let elapsed = started.elapsed();
    eprintln!("TestDatabase::create took {elapsed:?}");
    let mut conn = db.connect().expect("connect");
    assert!(!conn.has_pending_migration(MIGRATIONS).expect("pending"));
    assert_eq!(tables(&mut conn), expected_tables());
    let pool = db.pool(2).expect("pool");
    let _pooled = pool.get().expect("pooled connection");

    let name = db.name().to_owned();
    // Open connections must not stop the drop.
    drop(db);
    drop(conn);
    let mut admin =
        PgConnection::establish(&super::testing::admin_url()).expect("admin connection");
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let left: Count = diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(&name)
        .get_result(&mut admin)
        .expect("count");
    assert_eq!(left.n, 0, "{name} still exists");
    assert!(
        elapsed < Duration::from_secs(10),
        "creating took {elapsed:?}"
    );
}

#[test]
fn with_database_replaces_only_the_path() {
    let cases = [
        (
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@127.0.0.1:5432/x",
        ),
        (
            "postgres://u:p@h/db?sslmode=disable",
            "postgres://u:p@h/x?sslmode=disable",
        ),
        ("postgresql://h:5432", "postgresql://h:5432/x"),
        (
            "postgres://h?connect_timeout=2",
            "postgres://h/x?connect_timeout=2",
        ),
    ];
    for (url, expected) in cases {
        assert_eq!(with_database(url, "x").expect(url), expected);
    }
    assert!(with_database("host=localhost dbname=x", "y").is_err());
}

// ---- schema.rs against information_schema --------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ColumnShape {
    name: String,
    nullable: bool,
    /// OID of the column's type (`Nullable<T>` counts as `T`).
    type_oid: i64,
}

trait NullFlag {
    const NULLABLE: bool;
}
impl NullFlag for is_nullable::NotNull {
    const NULLABLE: bool = false;
}
impl NullFlag for is_nullable::IsNullable {
    const NULLABLE: bool = true;
}

trait DescribeColumn {
    fn describe(conn: &mut PgConnection) -> ColumnShape;
}

impl<C> DescribeColumn for C
where
    C: diesel::Column,
    C::SqlType: SqlType,
    <C::SqlType as SqlType>::IsNull: NullFlag,
    Pg: HasSqlType<C::SqlType>,
{
    fn describe(conn: &mut PgConnection) -> ColumnShape {
        let oid = <Pg as HasSqlType<C::SqlType>>::metadata(conn)
            .oid()
            .expect("type OID");
        ColumnShape {
            name: C::NAME.to_owned(),
            nullable: <<C::SqlType as SqlType>::IsNull as NullFlag>::NULLABLE,
            type_oid: i64::from(oid),
        }
    }
}

/// Implemented for the tuple `Table::AllColumns` of every table (up to 32 columns).
trait DescribeColumns {
    fn describe_all(conn: &mut PgConnection) -> Vec<ColumnShape>;
}

macro_rules! describe_tuple {
    ($($c:ident),+) => {
        impl<$($c: DescribeColumn),+> DescribeColumns for ($($c,)+) {
            fn describe_all(conn: &mut PgConnection) -> Vec<ColumnShape> {
                vec![$($c::describe(conn)),+]
            }
        }
    };
}

macro_rules! describe_tuples {
    ($head:ident) => { describe_tuple!($head); };
    ($head:ident, $($tail:ident),+) => {
        describe_tuple!($head, $($tail),+);
        describe_tuples!($($tail),+);
    };
}

describe_tuples!(
    C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13, C14, C15, C16, C17, C18, C19, C20, C21,
    C22, C23, C24, C25, C26, C27, C28, C29, C30, C31, C32
);

fn describe_table<T>(conn: &mut PgConnection) -> Vec<ColumnShape>
where
    T: diesel::Table,
    T::AllColumns: DescribeColumns,
{
    T::AllColumns::describe_all(conn)
}

/// Every table of schema.rs, by name, with its columns as Diesel sees them.
fn describe_schema(
    conn: &mut PgConnection,
) -> std::collections::BTreeMap<String, Vec<ColumnShape>> {
    macro_rules! tables {
        ($($table:ident),+ $(,)?) => {
            [$((stringify!($table).to_owned(), describe_table::<schema::$table::table>(conn))),+]
                .into_iter()
                .collect()
        };
    }
    tables!(
        servers,
        applications,
        application_groups,
        application_group_members,
        haproxy_instances,
        haproxy_backends,
        haproxy_servers,
        haproxy_batches,
        haproxy_actions,
        haproxy_server_status_history,
        haproxy_application_links,
        haproxy_sync_runs,
        haproxy_sweeps,
        haproxy_rollouts,
        haproxy_rollout_servers,
        haproxy_settings,
        haproxy_approvals,
        haproxy_webhook_endpoints,
        haproxy_webhook_callbacks,
        haproxy_webhook_events,
        haproxy_webhook_deliveries,
        haproxy_webhook_attempts,
    )
}

#[derive(QueryableByName)]
struct DbColumn {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Bool)]
    nullable: bool,
    #[diesel(sql_type = BigInt)]
    type_oid: i64,
    #[diesel(sql_type = Text)]
    type_name: String,
}

fn all_columns(conn: &mut PgConnection) -> Vec<(String, String, bool, i64, String)> {
    diesel::sql_query(
        "SELECT table_name::text AS table_name, column_name::text AS column_name, \
                is_nullable = 'YES' AS nullable, \
                (quote_ident(udt_schema) || '.' || quote_ident(udt_name))::regtype::oid::int8 \
                    AS type_oid, \
                udt_name::text AS type_name \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name <> '__diesel_schema_migrations' \
         ORDER BY table_name, ordinal_position",
    )
    .load::<DbColumn>(conn)
    .expect("information_schema.columns")
    .into_iter()
    .map(|c| {
        (
            c.table_name,
            c.column_name,
            c.nullable,
            c.type_oid,
            c.type_name,
        )
    })
    .collect()
}

/// Differences between schema.rs and the database. With `exact` (a fresh database), columns the
/// database has and schema.rs lacks count too, and types must be identical; without (AC's
/// database), only schema.rs's columns are checked, and a type Diesel reads the same way counts
/// as the same (AC's `VARCHAR` for our `TEXT`).
fn compare_with_database(conn: &mut PgConnection, exact: bool) -> Vec<String> {
    let database = all_columns(conn);
    let mut diff = Vec::new();
    for (table, columns) in describe_schema(conn) {
        let actual: Vec<&(String, String, bool, i64, String)> =
            database.iter().filter(|c| c.0 == table).collect();
        if actual.is_empty() {
            diff.push(format!("{table}: no such table in the database"));
            continue;
        }
        for column in &columns {
            match actual.iter().find(|c| c.1 == column.name) {
                None => diff.push(format!("{table}.{}: not in the database", column.name)),
                Some(c) => {
                    if c.2 != column.nullable {
                        diff.push(format!(
                            "{table}.{}: nullable {} in the database, {} in schema.rs",
                            column.name, c.2, column.nullable
                        ));
                    }
                    let same_type = c.3 == column.type_oid
                        || (!exact && wire_compatible(c.3) == wire_compatible(column.type_oid));
                    if !same_type {
                        diff.push(format!(
                            "{table}.{}: type {} (oid {}) in the database, oid {} in schema.rs",
                            column.name, c.4, c.3, column.type_oid
                        ));
                    }
                }
            }
        }
        if exact {
            for c in &actual {
                if !columns.iter().any(|column| column.name == c.1) {
                    diff.push(format!("{table}.{}: not in schema.rs", c.1));
                }
            }
        }
    }
    diff
}

/// Types with the same binary representation: `varchar` and `bpchar` decode like `text`.
fn wire_compatible(oid: i64) -> i64 {
    const TEXT: i64 = 25;
    const BPCHAR: i64 = 1042;
    const VARCHAR: i64 = 1043;
    match oid {
        BPCHAR | VARCHAR => TEXT,
        other => other,
    }
}

#[test]
fn schema_check_detects_drift() {
    let (_db, mut conn) = empty_db();
    run_migrations(&mut conn).expect("migrations");
    conn.batch_execute(
        "ALTER TABLE haproxy_servers ALTER COLUMN check_status SET NOT NULL;
         ALTER TABLE haproxy_servers ALTER COLUMN weight TYPE BIGINT;
         ALTER TABLE haproxy_servers ADD COLUMN surprise TEXT;
         ALTER TABLE haproxy_backends DROP COLUMN removed_at;",
    )
    .expect("alter");
    let mut diff = compare_with_database(&mut conn, true);
    diff.sort();
    assert_eq!(diff.len(), 4, "{diff:#?}");
    assert!(diff[0].starts_with("haproxy_backends.removed_at: not in the database"));
    assert!(diff[1].starts_with("haproxy_servers.check_status: nullable false"));
    assert!(diff[2].starts_with("haproxy_servers.surprise: not in schema.rs"));
    assert!(diff[3].starts_with("haproxy_servers.weight: type int8"));
}

#[test]
fn test_databases_are_distinct() {
    let a = TestDatabase::create().expect("a");
    let b = TestDatabase::create().expect("b");
    assert_ne!(a.name(), b.name());
    let mut conn = a.connect().expect("connect a");
    diesel::sql_query("CREATE TABLE only_in_a (id INT)")
        .execute(&mut conn)
        .expect("create");
    let mut conn = b.connect().expect("connect b");
    assert!(!tables(&mut conn).contains("only_in_a"));
}
