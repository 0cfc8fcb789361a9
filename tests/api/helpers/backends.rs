//! Which backends and services this run has, and the macro that makes a test per backend.
//!
//! SQLite is always there. MariaDB and Redis are there when scripts/test.sh started them; in CI
//! (`CI=true` or `COINPAY_REQUIRE_SERVICES=1`) a missing one fails the tests that need it, and
//! anywhere else they skip, loudly, so that no run loses coverage without saying so.

use crate::harness::Backend;

fn required() -> bool {
    std::env::var("COINPAY_REQUIRE_SERVICES").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true")
}

/// The test MariaDB, or None (with a SKIPPING line) when this run has none. Panics when the
/// run requires services and COINPAY_TEST_MYSQL_URL is unset.
pub fn mysql() -> Option<Backend> {
    match std::env::var("COINPAY_TEST_MYSQL_URL") {
        Ok(url) if !url.is_empty() => Some(Backend::Mysql(url)),
        _ if required() => {
            panic!("COINPAY_TEST_MYSQL_URL is not set: run the suite with scripts/test.sh")
        }
        _ => {
            eprintln!(
                "SKIPPING the MariaDB variant: COINPAY_TEST_MYSQL_URL is not set (run scripts/test.sh)"
            );
            None
        }
    }
}

/// (host, port) of the test Redis, when there is one (required in CI).
pub fn redis() -> Option<(String, u16)> {
    let host = std::env::var("COINPAY_TEST_REDIS_HOST").ok();
    let port = std::env::var("COINPAY_TEST_REDIS_PORT")
        .ok()
        .and_then(|p| p.parse().ok());
    match (host, port) {
        (Some(h), Some(p)) => Some((h, p)),
        _ if required() => {
            panic!("COINPAY_TEST_REDIS_HOST/PORT are not set: run the suite with scripts/test.sh")
        }
        _ => {
            eprintln!("SKIPPING the Redis part: COINPAY_TEST_REDIS_HOST is not set");
            None
        }
    }
}

/// `backend_test!(name);` next to `async fn name(backend: Backend)` makes two tests of it,
/// `name::sqlite` and `name::mysql`, so that each backend passes or fails under its own name and
/// can be run alone (`cargo test ::mysql`). The MariaDB one follows [`mysql`]: it fails in CI
/// without a MariaDB and skips elsewhere.
///
/// (A module per test rather than `name_sqlite`/`name_mysql`: `macro_rules!` cannot glue
/// identifiers together, and a crate for that is not worth it.)
macro_rules! backend_test {
    ($name:ident) => {
        mod $name {
            use $crate::harness::Backend;

            #[actix_web::test]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await
            }

            #[actix_web::test]
            async fn mysql() {
                if let Some(backend) = $crate::helpers::mysql() {
                    super::$name(backend).await
                }
            }
        }
    };
}
pub(crate) use backend_test;
