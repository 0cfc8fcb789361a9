//! Recharge packages: what a user can buy.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::recharge_packages as p;
use super::{DbPool, Statement, StoreError, now_ms};
use crate::money::{Coins, Fen};
use crate::with_read;

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
        .get_result(conn)
        .await
        .optional()?))
}

fn insert_package(f: PackageFields, now: i64) -> impl Statement + 'static {
    diesel::insert_into(p::table).values((
        p::name.eq(f.name),
        p::coins.eq(f.coins),
        p::bonus_coins.eq(f.bonus_coins),
        p::price_fen.eq(f.price_fen),
        p::sort_order.eq(f.sort_order),
        p::active.eq(f.active),
        p::created_at.eq(now),
        p::updated_at.eq(now),
    ))
}

/// The id of the row the connection inserted last (MySQL has no RETURNING).
fn last_insert_id(sql: &'static str) -> diesel::expression::SqlLiteral<diesel::sql_types::BigInt> {
    diesel::dsl::sql(sql)
}

pub async fn create(pool: &DbPool, f: &PackageFields) -> Result<Package, StoreError> {
    let insert = insert_package(f.clone(), now_ms());
    let id: i64 = match pool {
        DbPool::Sqlite { writer, .. } => {
            writer
                .run(move |c| {
                    c.transaction(|c| {
                        super::execute_blocking(insert, c)?;
                        let id = diesel::select(last_insert_id("last_insert_rowid()"));
                        diesel::RunQueryDsl::get_result(id, c)
                    })
                })
                .await?
        }
        DbPool::Mysql(pool) => {
            let mut c = pool.get().await?;
            c.transaction::<i64, StoreError, _>(async |c| {
                insert.execute(c).await?;
                let id = diesel::select(last_insert_id("LAST_INSERT_ID()"));
                Ok(id.get_result(c).await?)
            })
            .await?
        }
    };
    get(pool, id).await?.ok_or(StoreError::Conflict)
}

pub async fn update(
    pool: &DbPool,
    id: i64,
    f: &PackageFields,
) -> Result<Option<Package>, StoreError> {
    let f = f.clone();
    let update = diesel::update(p::table.find(id)).set((
        p::name.eq(f.name),
        p::coins.eq(f.coins),
        p::bonus_coins.eq(f.bonus_coins),
        p::price_fen.eq(f.price_fen),
        p::sort_order.eq(f.sort_order),
        p::active.eq(f.active),
        p::updated_at.eq(now_ms()),
    ));
    if super::execute(pool, update).await? == 0 {
        return Ok(None);
    }
    get(pool, id).await
}
