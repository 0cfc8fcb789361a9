//! Recharge packages: what a user can buy.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::recharge_packages as p;
use super::{DbPool, StoreError, now_ms};
use crate::money::{Coins, Fen};
use crate::{with_read, with_write};

#[derive(Queryable, Selectable, Serialize, Clone, Debug)]
#[diesel(table_name = p, check_for_backend(diesel::mysql::Mysql, diesel::sqlite::Sqlite))]
pub struct Package {
    pub id: i64,
    pub name: String,
    pub coins: Coins,
    pub bonus_coins: Coins,
    pub price_fen: Fen,
    pub sort_order: i32,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The editable fields of a package (admin create / update).
#[derive(Clone, Debug)]
pub struct PackageFields {
    pub name: String,
    pub coins: Coins,
    pub bonus_coins: Coins,
    pub price_fen: Fen,
    pub sort_order: i32,
    pub active: bool,
}

pub async fn list_active(pool: &DbPool) -> Result<Vec<Package>, StoreError> {
    Ok(with_read!(pool, conn => p::table
        .filter(p::active.eq(true))
        .order((p::sort_order.asc(), p::id.asc()))
        .select(Package::as_select())
        .load(conn)
        .await?))
}

pub async fn list_all(pool: &DbPool) -> Result<Vec<Package>, StoreError> {
    Ok(with_read!(pool, conn => p::table
        .order((p::sort_order.asc(), p::id.asc()))
        .select(Package::as_select())
        .load(conn)
        .await?))
}

pub async fn get(pool: &DbPool, id: i64) -> Result<Option<Package>, StoreError> {
    Ok(with_read!(pool, conn => p::table
        .find(id)
        .select(Package::as_select())
        .first(conn)
        .await
        .optional()?))
}

pub async fn create(pool: &DbPool, f: &PackageFields) -> Result<Package, StoreError> {
    let now = now_ms();
    let id: i64 = with_write!(pool, conn => {
        conn.transaction::<i64, StoreError, _>(async move |conn| {
            diesel::insert_into(p::table)
                .values((
                    p::name.eq(&f.name),
                    p::coins.eq(f.coins),
                    p::bonus_coins.eq(f.bonus_coins),
                    p::price_fen.eq(f.price_fen),
                    p::sort_order.eq(f.sort_order),
                    p::active.eq(f.active),
                    p::created_at.eq(now),
                    p::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
            let last = super::last_insert_id_sql(conn);
            Ok(diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(last))
                .get_result(conn)
                .await?)
        })
        .await?
    });
    get(pool, id).await?.ok_or(StoreError::Conflict)
}

pub async fn update(
    pool: &DbPool,
    id: i64,
    f: &PackageFields,
) -> Result<Option<Package>, StoreError> {
    let n = with_write!(pool, conn => diesel::update(p::table.find(id))
        .set((
            p::name.eq(&f.name),
            p::coins.eq(f.coins),
            p::bonus_coins.eq(f.bonus_coins),
            p::price_fen.eq(f.price_fen),
            p::sort_order.eq(f.sort_order),
            p::active.eq(f.active),
            p::updated_at.eq(now_ms()),
        ))
        .execute(conn)
        .await?);
    if n == 0 {
        return Ok(None);
    }
    get(pool, id).await
}
