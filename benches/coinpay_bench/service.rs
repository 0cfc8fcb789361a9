//! The service under load: the real binary (started through the shared harness), one instance
//! or several on the same database, its memory and CPU time read from /proc, and the loads sent
//! to it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{self, ADMIN_TOKEN, Db, INTERNAL_TOKEN, Process};
use crate::http1::call_once;
use crate::opts::Opts;
use crate::stats::{Check, Stats, run_http};
use crate::{Res, err};

pub struct Service {
    process: Process,
    pub addr: String,
}

impl Service {
    /// Instance `k` of `serve --sandbox` on `db` with the internal and admin APIs open, its log
    /// appended to `log`, in `cwd`. On a multi-host (Galera) URL instance k starts from the
    /// k-th node, as the README advises to spread instances over the nodes.
    pub fn start(o: &Opts, db: &Db, k: usize, cwd: &Path, log: &Path) -> Res<Service> {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let (args, mut env) = harness::service_command(db);
        env.extend(
            [
                ("INTERNAL_API_TOKEN", INTERNAL_TOKEN.to_string()),
                ("ADMIN_API_TOKEN", ADMIN_TOKEN.to_string()),
                ("DB_POOL_SIZE", o.db_pool_size.to_string()),
                ("RUST_LOG", o.rust_log.clone()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        if let Some((h, p)) = &o.redis {
            env.push(("REDIS_HOST".into(), h.clone()));
            env.push(("REDIS_PORT".into(), p.to_string()));
        }
        if k > 0 {
            env.push(("DATABASE_URL".into(), rotate_hosts(&db.url, k)));
        }
        env.extend(o.svc_env.iter().cloned());
        match Process::spawn(&o.bin, &args, env, cwd, Some(logf)) {
            Ok((process, _stdout)) => Ok(Service {
                addr: process.addr.clone(),
                process,
            }),
            Err(e) => {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: String = tail.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                Err(err(format!("{e}\nlog (last lines, newest first):\n{tail}")))
            }
        }
    }

    /// Resident memory of the service process, in KiB.
    pub fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    /// utime + stime of the service process, in clock ticks (1/100 s).
    fn cpu_ticks(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid()))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(") ")?.1.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0)
    }

    /// One sample of the service's /metrics.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let r = call_once(
            &self.addr,
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .await
        .ok()?;
        harness::sample(&String::from_utf8_lossy(&r.body), series)
    }

    /// SIGTERM (graceful), SIGKILL after 20 s.
    pub fn stop(mut self) {
        self.process.terminate(Duration::from_secs(20));
    }
}

/// Sends `reqs` (cycling, `count` in all) over `conc` connections spread over the instances
/// `svcs`, bounded by the options' deadline and request timeout, and notes the service's CPU
/// time per request (of all instances together).
pub async fn load(
    svcs: &[Service],
    o: &Opts,
    conc: usize,
    reqs: Arc<Vec<Vec<u8>>>,
    count: usize,
    check: Check,
) -> Stats {
    let cpu = || svcs.iter().map(Service::cpu_ticks).sum::<u64>();
    let before = cpu();
    let mut s = http(svcs, o, conc, reqs, count, check).await;
    let ticks = cpu().saturating_sub(before);
    let n = (s.ok + s.errors).max(1);
    s.svc_cpu_us = Some(ticks as f64 * 10_000.0 / n as f64);
    s
}

/// The same load, unmeasured (a warm-up).
pub async fn http(
    svcs: &[Service],
    o: &Opts,
    conc: usize,
    reqs: Arc<Vec<Vec<u8>>>,
    count: usize,
    check: Check,
) -> Stats {
    let addrs: Vec<String> = svcs.iter().map(|s| s.addr.clone()).collect();
    run_http(
        &addrs,
        conc,
        reqs,
        count,
        check,
        o.deadline(),
        o.req_timeout,
    )
    .await
}

/// `url` with its host list rotated by `k` (`h1,h2,h3` becomes `h2,h3,h1` for 1); a URL of one
/// host comes back unchanged.
fn rotate_hosts(url: &str, k: usize) -> String {
    let Some(rest) = url.strip_prefix("mysql://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let mut hosts: Vec<&str> = hosts.split(',').collect();
    let n = hosts.len();
    hosts.rotate_left(k % n);
    format!("mysql://{user}{}{path}", hosts.join(","))
}
