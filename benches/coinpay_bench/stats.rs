//! Measurement: the figures of one scenario, and the two load drivers that produce them (HTTP
//! requests over keep-alive connections, and the paid-notification transaction straight on the
//! database). Each spreads `count` requests over `conc` tasks and stops sending at a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coinpay::order::state::{Effect, OrderStatus};
use coinpay::store::DbPool;
use coinpay::store::orders::{self, OrderRow};

use crate::http1::{Conn, Reply};

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requested: usize,
    pub ok: usize,
    pub errors: usize,
    pub unsent: usize,
    pub secs: f64,
    /// Latencies in microseconds, sorted.
    pub lat_us: Vec<u32>,
    /// Up to three errors per task, to show what went wrong.
    pub samples: Vec<String>,
    /// CPU time (user + system) the service process used per request, in microseconds.
    pub svc_cpu_us: Option<f64>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
    pub fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() as f64 * p).ceil() as usize).clamp(1, self.lat_us.len()) - 1;
        self.lat_us[i] as f64 / 1000.0
    }
    pub fn max(&self) -> f64 {
        self.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0
    }
    pub fn failed(&self) -> usize {
        self.errors + self.unsent
    }
}

/// Whether a reply is the one the scenario expects.
pub type Check = Arc<dyn Fn(&Reply) -> bool>;

/// Sends `reqs[i % reqs.len()]` for i in 0..count over `conc` keep-alive connections, spread
/// over the service instances at `addrs`; bounded by `count` and by `deadline`.
pub async fn run_http(
    addrs: &[String],
    conc: usize,
    reqs: Arc<Vec<Vec<u8>>>,
    count: usize,
    check: Check,
    deadline: Instant,
    req_timeout: Duration,
) -> Stats {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for c in 0..conc.max(1) {
        // Connection c goes to instance c mod n: the load is spread evenly over them.
        let addr = addrs[c % addrs.len()].clone();
        let (next, reqs, check) = (next.clone(), reqs.clone(), check.clone());
        handles.push(actix_rt::spawn(async move {
            let mut st = Stats::default();
            let mut conn: Option<Conn> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                if Instant::now() >= deadline {
                    st.unsent += 1;
                    continue;
                }
                let req = &reqs[i % reqs.len()];
                let t = Instant::now();
                let res = tokio::time::timeout(req_timeout, async {
                    if conn.is_none() {
                        conn = Some(Conn::open(&addr).await?);
                    }
                    match conn.as_mut() {
                        Some(c) => c.call(req).await,
                        None => Err(std::io::Error::other("no connection")),
                    }
                })
                .await;
                let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                match res {
                    Ok(Ok((reply, keep))) => {
                        st.lat_us.push(us);
                        if check(&reply) {
                            st.ok += 1;
                        } else {
                            st.errors += 1;
                            if st.samples.len() < 3 {
                                st.samples.push(format!(
                                    "HTTP {}: {}",
                                    reply.status,
                                    String::from_utf8_lossy(
                                        &reply.body[..reply.body.len().min(300)]
                                    )
                                ));
                            }
                        }
                        if !keep {
                            conn = None;
                        }
                    }
                    Ok(Err(e)) => {
                        st.errors += 1;
                        conn = None;
                        if st.samples.len() < 3 {
                            st.samples.push(format!("I/O: {e}"));
                        }
                    }
                    Err(_) => {
                        st.errors += 1;
                        conn = None;
                        if st.samples.len() < 3 {
                            st.samples.push(format!("timed out after {req_timeout:?}"));
                        }
                    }
                }
            }
            st
        }));
    }
    merge(count, handles, started).await
}

/// Adds up the per-task figures of one scenario.
async fn merge(
    requested: usize,
    handles: Vec<tokio::task::JoinHandle<Stats>>,
    started: Instant,
) -> Stats {
    let mut total = Stats {
        requested,
        ..Default::default()
    };
    for h in handles {
        if let Ok(s) = h.await {
            total.ok += s.ok;
            total.errors += s.errors;
            total.unsent += s.unsent;
            total.lat_us.extend(s.lat_us);
            total.samples.extend(s.samples);
        }
    }
    total.secs = started.elapsed().as_secs_f64();
    total.lat_us.sort_unstable();
    total
}

/// The paid-notification transaction straight on the database, `conc` at a time.
pub async fn run_db(
    pool: &DbPool,
    conc: usize,
    rows: Arc<Vec<OrderRow>>,
    tag: &str,
    deadline: Instant,
) -> Stats {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..conc.max(1) {
        let (next, rows, pool, tag) = (next.clone(), rows.clone(), pool.clone(), tag.to_string());
        handles.push(actix_rt::spawn(async move {
            let mut st = Stats::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= rows.len() {
                    break;
                }
                if Instant::now() >= deadline {
                    st.unsent += 1;
                    continue;
                }
                let effect = Effect::Credit {
                    transaction_id: format!("{tag}D{i:012}"),
                    paid_at: None,
                };
                let t = Instant::now();
                let r = orders::apply(&pool, &rows[i], OrderStatus::Paid, &effect).await;
                st.lat_us
                    .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                match r {
                    Ok(_) => st.ok += 1,
                    Err(e) => {
                        st.errors += 1;
                        if st.samples.len() < 3 {
                            st.samples.push(e.to_string());
                        }
                    }
                }
            }
            st
        }));
    }
    merge(rows.len(), handles, started).await
}
