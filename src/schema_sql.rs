//! `coinpay migrate --print-sql DIALECT`: the SQL of the embedded migrations, for teams that
//! apply their schema by hand (the seed's `mysql ... < backend/scripts/migration_add_recharge_system.sql`).
//!
//! diesel's `EmbeddedMigrations` keeps each migration's SQL private, so the same files are
//! embedded here a second time with `include_str!`. A unit test checks that this list and the
//! one `embed_migrations!` found name the same migrations in the same order, so a migration
//! added to `migrations/` without being added here fails the build's tests.
//!
//! The script also records every migration in `__diesel_schema_migrations`, exactly as diesel's
//! harness does: a `coinpay serve` or `coinpay migrate` started afterwards finds nothing
//! pending instead of creating the tables a second time.

use std::fmt::Write as _;

/// The SQL dialects coinpay ships migrations for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// MySQL 8 / MariaDB 10.5+ (`migrations/mysql`).
    Mysql,
    /// SQLite 3.35+ (`migrations/sqlite`).
    Sqlite,
}

/// One migration: its directory name and its `up.sql`.
struct Migration {
    name: &'static str,
    up: &'static str,
}

/// The same migration directories for both dialects, in the order diesel runs them.
macro_rules! migrations {
    ($dialect:literal: $($name:literal),+ $(,)?) => {
        &[$(Migration {
            name: $name,
            up: include_str!(concat!("../migrations/", $dialect, "/", $name, "/up.sql")),
        }),+]
    };
}

const MYSQL: &[Migration] = migrations!("mysql":
    "2026-11-26-000001_create_tables",
    "2026-11-26-000002_seed_packages",
    "2026-12-01-000001_refunds",
    "2026-12-01-000002_reconciliations",
    "2026-12-01-000003_ledger_ref",
);
const SQLITE: &[Migration] = migrations!("sqlite":
    "2026-11-26-000001_create_tables",
    "2026-11-26-000002_seed_packages",
    "2026-12-01-000001_refunds",
    "2026-12-01-000002_reconciliations",
    "2026-12-01-000003_ledger_ref",
);

/// diesel's bookkeeping table (diesel's `setup_migration_table.sql`, valid on both dialects).
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (\n    \
    version VARCHAR(50) PRIMARY KEY NOT NULL,\n    \
    run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP\n);";

fn list(d: Dialect) -> &'static [Migration] {
    match d {
        Dialect::Mysql => MYSQL,
        Dialect::Sqlite => SQLITE,
    }
}

/// diesel's version of a migration: its name up to the first `_`, without the dashes.
fn version(name: &str) -> String {
    name.split('_').next().unwrap_or(name).replace('-', "")
}

/// The whole script: the bookkeeping table, then each migration followed by its record.
pub fn script(d: Dialect) -> String {
    let (label, apply) = match d {
        Dialect::Mysql => (
            "MySQL / MariaDB",
            "mysql -u USER -p DATABASE < coinpay-schema.sql",
        ),
        Dialect::Sqlite => ("SQLite", "sqlite3 data/coinpay.db < coinpay-schema.sql"),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- coinpay {} schema for {label}: the migrations embedded in the binary, in order.\n\
         -- Apply to an EMPTY database: {apply}\n\
         -- Each migration is recorded in __diesel_schema_migrations, so that coinpay finds\n\
         -- nothing pending afterwards.\n",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "{MIGRATIONS_TABLE}\n");
    for m in list(d) {
        let _ = writeln!(out, "-- migration {}", m.name);
        let _ = writeln!(out, "{}", m.up.trim_end());
        let _ = writeln!(
            out,
            "INSERT INTO __diesel_schema_migrations (version) VALUES ('{}');\n",
            version(m.name)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::migration::MigrationSource;

    fn embedded<DB: diesel::backend::Backend>(
        src: &diesel_migrations::EmbeddedMigrations,
    ) -> Vec<(String, String)> {
        MigrationSource::<DB>::migrations(src)
            .expect("embedded migrations")
            .iter()
            .map(|m| (m.name().to_string(), m.name().version().to_string()))
            .collect()
    }

    fn ours(d: Dialect) -> Vec<(String, String)> {
        list(d)
            .iter()
            .map(|m| (m.name.to_string(), version(m.name)))
            .collect()
    }

    #[test]
    fn lists_the_embedded_migrations_in_order() {
        assert_eq!(
            ours(Dialect::Mysql),
            embedded::<diesel::mysql::Mysql>(&crate::store::MYSQL_MIGRATIONS)
        );
        assert_eq!(
            ours(Dialect::Sqlite),
            embedded::<diesel::sqlite::Sqlite>(&crate::store::SQLITE_MIGRATIONS)
        );
    }

    #[test]
    fn script_creates_the_tables_and_records_each_version() {
        let s = script(Dialect::Mysql);
        assert!(s.contains("CREATE TABLE recharge_packages"), "{s}");
        assert!(s.contains("ENGINE=InnoDB"), "{s}");
        assert!(s.contains("VALUES ('20261126000001');"), "{s}");
        assert!(s.contains("VALUES ('20261126000002');"), "{s}");
        assert!(!script(Dialect::Sqlite).contains("ENGINE=InnoDB"));
    }
}
