//! ShedLock-style leases: one row per job; whoever holds an unexpired lease runs the job.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::leases as le;
use super::{DbPool, StoreError};
use crate::with_read;

/// Takes or renews the lease when it is free, expired, or already ours. True when we hold it.
pub async fn try_acquire(
    pool: &DbPool,
    name: &str,
    holder: &str,
    now: i64,
    until: i64,
) -> Result<bool, StoreError> {
    let take = diesel::update(
        le::table
            .filter(le::name.eq(name.to_string()))
            .filter(le::until_ms.lt(now).or(le::holder.eq(holder.to_string()))),
    )
    .set((
        le::holder.eq(holder.to_string()),
        le::until_ms.eq(until),
        le::updated_at.eq(now),
    ));
    let n = super::execute(pool, take).await?;
    if n == 1 {
        return Ok(true);
    }
    // First use of this lease name: create the row; a concurrent creator wins the primary key.
    let exists = with_read!(pool, conn => le::table
        .filter(le::name.eq(name))
        .count()
        .get_result::<i64>(conn)
        .await?);
    if exists > 0 {
        return Ok(false);
    }
    let create = diesel::insert_into(le::table).values((
        le::name.eq(name.to_string()),
        le::holder.eq(holder.to_string()),
        le::until_ms.eq(until),
        le::updated_at.eq(now),
    ));
    match super::execute(pool, create).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up early (graceful shutdown) so another instance need not wait it out.
pub async fn release(pool: &DbPool, name: &str, holder: &str) -> Result<(), StoreError> {
    let give_up = diesel::update(
        le::table
            .filter(le::name.eq(name.to_string()))
            .filter(le::holder.eq(holder.to_string())),
    )
    .set(le::until_ms.eq(0));
    super::execute(pool, give_up).await?;
    Ok(())
}

/// Whether `holder` holds the lease at `now`: a read, for work that runs under a lease another
/// task of the same holder keeps (the sweeper's keeper). Writing the lease row from several
/// tasks of every instance would make them conflict on it (on Galera, a certification conflict
/// each time), and a keeper that meets such an error must take the lease for lost.
pub async fn held_by(
    pool: &DbPool,
    name: &str,
    holder: &str,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(current(pool, name)
        .await?
        .is_some_and(|(h, until)| h == holder && until > now))
}

/// (holder, until) of a lease, for metrics and tests.
pub async fn current(pool: &DbPool, name: &str) -> Result<Option<(String, i64)>, StoreError> {
    Ok(with_read!(pool, conn => le::table
        .filter(le::name.eq(name))
        .select((le::holder, le::until_ms))
        .get_result(conn)
        .await
        .optional()?))
}
