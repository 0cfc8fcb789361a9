//! Users, keyed by their openid under our mini-program.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;

use super::schema::users as u;
use super::{DbPool, StoreError, now_ms};
use crate::money::Coins;
use crate::with_read;

#[derive(Queryable, Selectable, Serialize, Clone, Debug)]
#[diesel(table_name = u, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct User {
    pub id: i64,
    pub openid: String,
    pub unionid: Option<String>,
    pub balance: Coins,
    pub created_at: i64,
    pub updated_at: i64,
}

pub async fn get(pool: &DbPool, id: i64) -> Result<Option<User>, StoreError> {
    Ok(with_read!(pool, conn => u::table
        .find(id)
        .select(User::as_select())
        .get_result(conn)
        .await
        .optional()?))
}

pub async fn by_openid(pool: &DbPool, openid: &str) -> Result<Option<User>, StoreError> {
    Ok(with_read!(pool, conn => u::table
        .filter(u::openid.eq(openid))
        .select(User::as_select())
        .get_result(conn)
        .await
        .optional()?))
}

/// Finds or creates the user. Two first logins racing both end on the one row: the unique
/// index on openid refuses the second insert, which then reads the winner's row.
pub async fn upsert_by_openid(
    pool: &DbPool,
    openid: &str,
    unionid: Option<&str>,
) -> Result<User, StoreError> {
    if let Some(user) = by_openid(pool, openid).await? {
        return Ok(user);
    }
    let now = now_ms();
    let insert = diesel::insert_into(u::table).values((
        u::openid.eq(openid.to_string()),
        u::unionid.eq(unionid.map(str::to_string)),
        u::balance.eq(Coins(0)),
        u::created_at.eq(now),
        u::updated_at.eq(now),
    ));
    match super::execute(pool, insert).await {
        Ok(_) => {}
        Err(e) if e.is_unique_violation() => {}
        Err(e) => return Err(e),
    }
    by_openid(pool, openid).await?.ok_or(StoreError::Conflict)
}

/// (user id, balance) of every user: for invariant checks and the admin API.
pub async fn balances(pool: &DbPool) -> Result<Vec<(i64, Coins)>, StoreError> {
    Ok(with_read!(pool, conn => u::table
        .select((u::id, u::balance))
        .order(u::id.asc())
        .load(conn)
        .await?))
}
