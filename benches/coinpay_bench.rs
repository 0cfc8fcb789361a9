//! coinpay benchmarks: how fast the service credits payments, against the limit of its own
//! database, measured in the same run on the same machine.
//!
//! Two modes:
//! - `--bench` (what `cargo bench` passes; scripts/bench.sh): the full settings against the
//!   binary cargo built for this target (`target/release/coinpay` under `cargo bench`).
//! - without `--bench` (what `cargo test --all-targets` runs): a smoke run, a few hundred requests
//!   per scenario, on SQLite and, when COINPAY_TEST_MYSQL_URL is set, on a fresh database of
//!   that MariaDB. No timing is asserted; errors and ledger invariant violations fail it.
//!
//! Scenarios (each with its own connections and request count):
//! - `db-baseline`: the paid-notification transaction (order compare-and-set, balance update,
//!   ledger row) run straight on a `DbPool` of the service's size, no HTTP, no actors;
//! - `notify-paid`: one signed SUCCESS notification per pending order, over keep-alive HTTP/1.1;
//! - `notify-dup-live` / `notify-dup-cold`: the same notifications again, with the orders' actors
//!   alive, then after a restart of the service (every actor loads its order from the DB);
//! - `create-order`: logged-in users creating orders (unifiedorder at the simulator included);
//! - `consume`: the internal API spending one coin per request.
//!
//! After each scenario the ledger invariant is checked on the database; a violation, an error
//! reply, or a request left unsent when the time limit ran out fails the run (exit code 1).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_rt::net::TcpStream;
use coinpay::order::state::{Effect, OrderStatus};
use coinpay::sandbox::SandboxConfig;
use coinpay::store::orders::{self, NewOrder, OrderFilter, OrderRow};
use coinpay::store::{DbPool, ledger, packages, users};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INTERNAL_TOKEN: &str = "bench-internal-token-0123456789abcdefghij";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdefghijklm";
const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef-XYZ";
const CALLBACK: &str = "/api/v1/client/coin/recharge/callback";

type BoxError = Box<dyn std::error::Error>;
type Res<T> = Result<T, BoxError>;

fn err(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

// ------------------------------------------------------------------------------------------
// Options

const SCENARIOS: [&str; 6] = [
    "db-baseline",
    "notify-paid",
    "notify-dup-live",
    "notify-dup-cold",
    "create-order",
    "consume",
];

#[derive(Clone, Copy, Debug)]
struct Load {
    conc: usize,
    count: usize,
}

#[derive(Clone, Debug)]
struct Opts {
    full: bool,
    sqlite: bool,
    mysql: Option<String>,
    bin: PathBuf,
    load: HashMap<&'static str, Load>,
    only: Option<Vec<String>>,
    users: usize,
    /// Unmeasured credits before db-baseline and before notify-paid (a fresh database server
    /// and a fresh service are slower for their first thousand transactions).
    warmup: usize,
    db_pool_size: u32,
    max_secs: u64,
    req_timeout: Duration,
    rust_log: String,
    redis: Option<(String, u16)>,
    /// Extra environment for the service (KEY=VALUE), e.g. to compare settings.
    svc_env: Vec<(String, String)>,
}

fn usage() -> &'static str {
    "coinpay_bench [--bench] [--backend sqlite|mysql|both] [--only a,b] \
     [--concurrency C] [--count N] [--<scenario>-concurrency C] [--<scenario>-count N] \
     [--users U] [--warmup N] [--db-pool-size P] [--max-secs S] [--rust-log FILTER] [--svc-env K=V]...\n\
     scenarios: db-baseline notify-paid notify-dup-live notify-dup-cold create-order consume\n\
     MariaDB: COINPAY_BENCH_MYSQL_URL or COINPAY_TEST_MYSQL_URL (a server URL; a fresh \
     database coinpay_b_<random> is created on it). Redis (optional): COINPAY_BENCH_REDIS_HOST/PORT \
     or COINPAY_TEST_REDIS_HOST/PORT. Binary: COINPAY_BENCH_BIN, else the one cargo built."
}

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn parse_opts() -> Result<Option<Opts>, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let mysql_url =
        env_nonempty("COINPAY_BENCH_MYSQL_URL").or(env_nonempty("COINPAY_TEST_MYSQL_URL"));
    let redis = match (
        env_nonempty("COINPAY_BENCH_REDIS_HOST").or(env_nonempty("COINPAY_TEST_REDIS_HOST")),
        env_nonempty("COINPAY_BENCH_REDIS_PORT")
            .or(env_nonempty("COINPAY_TEST_REDIS_PORT"))
            .and_then(|p| p.parse().ok()),
    ) {
        (Some(h), Some(p)) => Some((h, p)),
        _ => None,
    };
    let (conc, defaults): (usize, [(&str, usize); 6]) = if full {
        (
            16,
            [
                ("db-baseline", 10_000),
                ("notify-paid", 10_000),
                ("notify-dup-live", 60_000),
                ("notify-dup-cold", 10_000),
                ("create-order", 3_000),
                ("consume", 10_000),
            ],
        )
    } else {
        (
            8,
            [
                ("db-baseline", 300),
                ("notify-paid", 300),
                ("notify-dup-live", 300),
                ("notify-dup-cold", 300),
                ("create-order", 200),
                ("consume", 300),
            ],
        )
    };
    let mut load: HashMap<&'static str, Load> = SCENARIOS
        .iter()
        .zip(defaults)
        .map(|(s, (_, n))| (*s, Load { conc, count: n }))
        .collect();
    let mut o = Opts {
        full,
        sqlite: true,
        mysql: mysql_url.clone(),
        bin: env_nonempty("COINPAY_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_coinpay"))),
        load: HashMap::new(),
        only: None,
        users: if full { 1000 } else { 50 },
        warmup: if full { 1000 } else { 20 },
        db_pool_size: 10,
        max_secs: if full { 180 } else { 40 },
        req_timeout: Duration::from_secs(if full { 30 } else { 15 }),
        rust_log: "info".into(),
        redis,
        svc_env: Vec::new(),
    };
    let mut i = 0;
    let mut filter_seen = false;
    let num = |v: Option<&String>, name: &str| -> Result<usize, String> {
        v.and_then(|s| s.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{name} needs a positive number\n{}", usage()))
    };
    while i < args.len() {
        let a = args[i].as_str();
        let v = args.get(i + 1);
        let mut take = true;
        match a {
            "--bench" => take = false,
            "--help" | "-h" => {
                println!("{}", usage());
                return Ok(None);
            }
            "--backend" => match v.map(String::as_str) {
                Some("sqlite") => {
                    o.sqlite = true;
                    o.mysql = None;
                }
                Some("mysql") => {
                    o.sqlite = false;
                    if o.mysql.is_none() {
                        return Err("--backend mysql needs COINPAY_BENCH_MYSQL_URL".into());
                    }
                }
                Some("both") => {
                    if o.mysql.is_none() {
                        return Err("--backend both needs COINPAY_BENCH_MYSQL_URL".into());
                    }
                }
                _ => return Err(format!("--backend sqlite|mysql|both\n{}", usage())),
            },
            "--only" => {
                let list: Vec<String> = v
                    .ok_or("--only needs a list")?
                    .split(',')
                    .map(str::to_string)
                    .collect();
                for s in &list {
                    if !SCENARIOS.contains(&s.as_str()) {
                        return Err(format!("unknown scenario {s}\n{}", usage()));
                    }
                }
                o.only = Some(list);
            }
            "--concurrency" => {
                let c = num(v, a)?;
                for l in load.values_mut() {
                    l.conc = c;
                }
            }
            "--count" => {
                let n = num(v, a)?;
                for l in load.values_mut() {
                    l.count = n;
                }
            }
            "--users" => o.users = num(v, a)?,
            "--warmup" => {
                o.warmup = v
                    .and_then(|s| s.parse().ok())
                    .ok_or("--warmup needs a number")?
            }
            "--db-pool-size" => o.db_pool_size = num(v, a)? as u32,
            "--max-secs" => o.max_secs = num(v, a)? as u64,
            "--rust-log" => o.rust_log = v.ok_or("--rust-log needs a filter")?.clone(),
            "--svc-env" => {
                let kv = v.ok_or("--svc-env needs K=V")?;
                let (k, val) = kv.split_once('=').ok_or("--svc-env needs K=V")?;
                o.svc_env.push((k.to_string(), val.to_string()));
            }
            _ => {
                let per = SCENARIOS.iter().find_map(|s| {
                    if a == format!("--{s}-concurrency") {
                        Some((*s, true))
                    } else if a == format!("--{s}-count") {
                        Some((*s, false))
                    } else {
                        None
                    }
                });
                match per {
                    Some((s, is_conc)) => {
                        let n = num(v, a)?;
                        let l = load.get_mut(s).ok_or("scenario")?;
                        if is_conc {
                            l.conc = n;
                        } else {
                            l.count = n;
                        }
                    }
                    None if full => return Err(format!("unknown argument {a}\n{}", usage())),
                    None => {
                        // `cargo test` hands its own arguments on (filters, --nocapture, ...):
                        // a name filter that does not match this target skips the smoke run.
                        take = false;
                        if !a.starts_with('-') {
                            filter_seen = true;
                            if "bench_smoke coinpay_bench".contains(a) {
                                filter_seen = false;
                            }
                        }
                    }
                }
            }
        }
        i += if take { 2 } else { 1 };
    }
    if filter_seen {
        println!("bench smoke: skipped (test name filter)");
        return Ok(None);
    }
    o.load = load;
    if !full && o.mysql.is_none() {
        eprintln!(
            "bench smoke: SKIPPING the MariaDB variant: COINPAY_TEST_MYSQL_URL is not set (run scripts/test.sh)"
        );
        if std::env::var("COINPAY_REQUIRE_SERVICES").as_deref() == Ok("1") {
            return Err("COINPAY_TEST_MYSQL_URL is not set but services are required".into());
        }
    }
    Ok(Some(o))
}

impl Opts {
    fn wants(&self, s: &str) -> bool {
        self.only.as_ref().is_none_or(|l| l.iter().any(|x| x == s))
    }
    fn load(&self, s: &str) -> Load {
        self.load[s]
    }
    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.max_secs)
    }
}

// ------------------------------------------------------------------------------------------
// A minimal keep-alive HTTP/1.1 client: the load generator shares two cores with the service,
// so it must cost little per request (prebuilt request bytes, one buffer per connection).

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(4096),
        })
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut tmp = [0u8; 8192];
        let n = self.s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Sends one request and reads its reply. Returns `keep` = false when the server closes.
    async fn call(&mut self, req: &[u8]) -> std::io::Result<(Reply, bool)> {
        self.s.write_all(req).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| std::io::Error::other("non-UTF-8 response head"))?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let (mut len, mut chunked, mut keep) = (None, false, true);
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                } else if k.eq_ignore_ascii_case("connection") {
                    keep = !v.eq_ignore_ascii_case("close");
                }
            }
        }
        let body = if chunked {
            let mut body = Vec::new();
            let mut pos = head_end;
            loop {
                let line_end = loop {
                    if let Some(p) = find(&self.buf[pos..], b"\r\n") {
                        break pos + p;
                    }
                    self.fill().await?;
                };
                let size_str = std::str::from_utf8(&self.buf[pos..line_end]).unwrap_or("");
                let size =
                    usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| std::io::Error::other("bad chunk size"))?;
                let start = line_end + 2;
                while self.buf.len() < start + size + 2 {
                    self.fill().await?;
                }
                body.extend_from_slice(&self.buf[start..start + size]);
                pos = start + size + 2;
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            let len = len.unwrap_or(0);
            while self.buf.len() < head_end + len {
                self.fill().await?;
            }
            self.buf[head_end..head_end + len].to_vec()
        };
        Ok((Reply { status, body }, keep))
    }
}

fn request(method: &str, path: &str, ctype: &str, auth: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = auth {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    r.push_str("\r\n");
    let mut v = r.into_bytes();
    v.extend_from_slice(body);
    v
}

fn json_request(path: &str, auth: Option<&str>, body: &Value) -> Vec<u8> {
    request(
        "POST",
        path,
        "application/json",
        auth,
        body.to_string().as_bytes(),
    )
}

/// One request outside of any measurement (setup, login).
async fn call_once(addr: &str, req: &[u8]) -> Res<Reply> {
    let mut c = Conn::open(addr).await?;
    Ok(c.call(req).await?.0)
}

// ------------------------------------------------------------------------------------------
// Measurement

#[derive(Clone, Debug, Default)]
struct Stats {
    requested: usize,
    ok: usize,
    errors: usize,
    unsent: usize,
    secs: f64,
    lat_us: Vec<u32>,
    samples: Vec<String>,
    /// CPU time (user + system) the service process used per request, in microseconds.
    svc_cpu_us: Option<f64>,
}

impl Stats {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() as f64 * p).ceil() as usize).clamp(1, self.lat_us.len()) - 1;
        self.lat_us[i] as f64 / 1000.0
    }
    fn max(&self) -> f64 {
        self.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0
    }
    fn failed(&self) -> usize {
        self.errors + self.unsent
    }
}

type Check = Arc<dyn Fn(&Reply) -> bool>;

/// Sends `reqs[i % reqs.len()]` for i in 0..count over `conc` keep-alive connections; bounded by
/// `count` and by `deadline`.
async fn run_http(
    addr: &str,
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
    for _ in 0..conc.max(1) {
        let (next, reqs, check, addr) =
            (next.clone(), reqs.clone(), check.clone(), addr.to_string());
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
async fn run_db(
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

// ------------------------------------------------------------------------------------------
// The database and the service

struct BenchDb {
    url: String,
    backend: &'static str,
    /// server URL and database name, to drop it at the end
    mysql: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

fn rand_suffix() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..10)
        .map(|_| (b'a' + r.random_range(0..26)) as char)
        .collect()
}

impl BenchDb {
    async fn new(mysql_base: Option<&str>) -> Res<BenchDb> {
        let dir = tempfile::Builder::new()
            .prefix("coinpay-bench.")
            .tempdir()?;
        Ok(match mysql_base {
            None => BenchDb {
                url: format!("sqlite://{}/coinpay.db", dir.path().display()),
                backend: "sqlite",
                mysql: None,
                _dir: dir,
            },
            Some(base) => {
                use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
                let name = format!("coinpay_b_{}", rand_suffix());
                let mut c = AsyncMysqlConnection::establish(base).await?;
                c.batch_execute(&format!(
                    "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                ))
                .await?;
                let (prefix, _) = base.rsplit_once('/').ok_or("MySQL URL has no path")?;
                BenchDb {
                    url: format!("{prefix}/{name}"),
                    backend: "mysql",
                    mysql: Some((base.to_string(), name)),
                    _dir: dir,
                }
            }
        })
    }

    async fn drop_db(&self) {
        if let Some((base, name)) = &self.mysql {
            use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
            if let Ok(mut c) = AsyncMysqlConnection::establish(base).await {
                let _ = c.batch_execute(&format!("DROP DATABASE {name}")).await;
            }
        }
    }
}

struct Service {
    child: Child,
    addr: String,
}

impl Service {
    fn start(o: &Opts, db: &BenchDb, log: &std::path::Path) -> Res<Service> {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut cmd = Command::new(&o.bin);
        cmd.args(["serve", "--sandbox"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db.url)
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("JWT_SECRET", JWT_SECRET)
            .env("INTERNAL_API_TOKEN", INTERNAL_TOKEN)
            .env("ADMIN_API_TOKEN", ADMIN_TOKEN)
            .env("DB_POOL_SIZE", o.db_pool_size.to_string())
            .env("RUST_LOG", &o.rust_log)
            .env("ORDER_SWEEP_CRON", "0 0 0 1 1 * 2099")
            .current_dir(db._dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(logf));
        if let Some((h, p)) = &o.redis {
            cmd.env("REDIS_HOST", h).env("REDIS_PORT", p.to_string());
        }
        for (k, v) in &o.svc_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| err(format!("spawn {}: {e}", o.bin.display())))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("coinpay listening on http://") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Service { child, addr }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: String = tail.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                Err(err(format!(
                    "coinpay did not start; log (last lines, newest first):\n{tail}"
                )))
            }
        }
    }

    fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
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
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(") ")?.1.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0)
    }

    /// Runs a load against this service and notes the service's CPU time per request.
    /// Sends `reqs` (cycling, `count` in all) over `conc` connections, bounded by the options'
    /// deadline and request timeout.
    async fn http(
        &self,
        o: &Opts,
        conc: usize,
        reqs: Arc<Vec<Vec<u8>>>,
        count: usize,
        check: Check,
    ) -> Stats {
        run_http(
            &self.addr,
            conc,
            reqs,
            count,
            check,
            o.deadline(),
            o.req_timeout,
        )
        .await
    }

    async fn measure(&self, load: impl std::future::Future<Output = Stats>) -> Stats {
        let before = self.cpu_ticks();
        let mut s = load.await;
        let ticks = self.cpu_ticks().saturating_sub(before);
        let n = (s.ok + s.errors).max(1);
        s.svc_cpu_us = Some(ticks as f64 * 10_000.0 / n as f64);
        s
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        let r = call_once(
            &self.addr,
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .await
        .ok()?;
        let text = String::from_utf8_lossy(&r.body).into_owned();
        text.lines().find_map(|l| {
            let v = l.strip_prefix(series)?.strip_prefix(' ')?;
            v.split_whitespace().next()?.parse().ok()
        })
    }

    /// SIGTERM (graceful), SIGKILL after 20 s.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------
// Setup through the library

/// `n` pending orders (package 1) spread over `users`, created `conc` at a time.
async fn pending_orders(pool: &DbPool, users: &[i64], n: usize, tag: &str) -> Res<Vec<OrderRow>> {
    let pkg = packages::get(pool, 1).await?.ok_or("package 1 missing")?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    let users = Arc::new(users.to_vec());
    for _ in 0..8 {
        let (next, users, pool, tag, pkg) = (
            next.clone(),
            users.clone(),
            pool.clone(),
            tag.to_string(),
            pkg.clone(),
        );
        handles.push(actix_rt::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let order_no = format!("{tag}{i:010}");
                let now = coinpay::store::now_ms();
                let new = NewOrder {
                    order_no: &order_no,
                    user_id: users[i % users.len()],
                    package_id: pkg.id,
                    amount_fen: pkg.price_fen,
                    coins: pkg.coins,
                    bonus_coins: pkg.bonus_coins,
                    created_at: now,
                    expires_at: now + 86_400_000,
                };
                orders::insert(&pool, &new).await?;
                let row = orders::get(&pool, &order_no)
                    .await?
                    .ok_or(coinpay::store::StoreError::Conflict)?;
                let row = orders::apply(
                    &pool,
                    &row,
                    OrderStatus::Pending,
                    &Effect::StorePrepay {
                        prepay_id: format!("wx_bench_{order_no}"),
                    },
                )
                .await?;
                out.push((i, row));
            }
            Ok::<_, coinpay::store::StoreError>(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for h in handles {
        all.extend(h.await.map_err(|e| err(e.to_string()))??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

fn notification(order: &OrderRow, txn: &str) -> Vec<u8> {
    let c = SandboxConfig::default_credentials();
    let p =
        coinpay::sandbox::paid_notification_fields(&c, &order.order_no, txn, order.amount_fen.0);
    let body = coinpay::wechat::notify::build_notification(&p, &c.api_key, c.sign_type, false);
    request("POST", CALLBACK, "text/xml", None, body.as_bytes())
}

async fn count_status(pool: &DbPool, status: OrderStatus) -> Res<i64> {
    let f = OrderFilter {
        status: Some(status),
        ..Default::default()
    };
    Ok(orders::list(pool, &f, 0, 1).await?.1)
}

// ------------------------------------------------------------------------------------------
// One backend, every scenario

struct Row {
    backend: &'static str,
    scenario: &'static str,
    conc: usize,
    stats: Stats,
    failed: bool,
}

#[derive(Default)]
struct Memory {
    idle_kb: u64,
    live_kb: u64,
    live_actors: f64,
    cold_before_kb: u64,
    cold_after_kb: u64,
    cold_actors: f64,
}

struct Outcome {
    rows: Vec<Row>,
    memory: Memory,
    failures: Vec<String>,
    /// Failures not tied to one scenario (setup, service start, errors in the service's log).
    other_failures: usize,
}

struct Ctx {
    backend: &'static str,
    check_pool: DbPool,
    out: Outcome,
}

impl Ctx {
    /// Records a scenario and checks the ledger invariant right after it.
    async fn record(&mut self, scenario: &'static str, conc: usize, stats: Stats) {
        let line = format!(
            "  {:<7} {:<16} c={:<3} ok {:>6}/{:<6} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  errors {}",
            self.backend,
            scenario,
            conc,
            stats.ok,
            stats.requested,
            stats.rate(),
            stats.pct(0.50),
            stats.pct(0.99),
            stats.max(),
            stats.failed()
        );
        eprintln!("{line}");
        self.out.rows.push(Row {
            backend: self.backend,
            scenario,
            conc,
            stats: Stats::default(),
            failed: false,
        });
        if stats.failed() > 0 {
            self.fail(format!(
                "{} {scenario}: {} errors, {} unsent; e.g. {:?}",
                self.backend, stats.errors, stats.unsent, stats.samples
            ));
        }
        match ledger::invariant_violations(&self.check_pool).await {
            Ok(v) if v.is_empty() => {}
            Ok(v) => self.fail(format!(
                "{} after {scenario}: ledger invariant violated ({} violations), e.g. {:?}",
                self.backend,
                v.len(),
                &v[..v.len().min(5)]
            )),
            Err(e) => self.fail(format!(
                "{} after {scenario}: invariant query failed: {e}",
                self.backend
            )),
        }
        if let Some(r) = self.out.rows.last_mut() {
            r.stats = stats;
        }
    }

    /// A failure of the scenario recorded last (or of the backend, before any).
    fn fail(&mut self, msg: String) {
        eprintln!("  FAILED: {msg}");
        match self.out.rows.last_mut() {
            Some(r) => r.failed = true,
            None => self.out.other_failures += 1,
        }
        self.out.failures.push(msg);
    }

    /// Counts a warm-up's credits (it is not reported); any error in it fails the run.
    fn warmed(&mut self, before: &str, s: Stats) -> i64 {
        if s.failed() > 0 {
            let msg = format!(
                "{} warm-up before {before}: {} errors, {} unsent {:?}",
                self.backend, s.errors, s.unsent, s.samples
            );
            eprintln!("  FAILED: {msg}");
            self.out.other_failures += 1;
            self.out.failures.push(msg);
        }
        s.ok as i64
    }

    async fn expect_paid(&mut self, after: &str, expected: i64) {
        match count_status(&self.check_pool, OrderStatus::Paid).await {
            Ok(n) if n == expected => {}
            Ok(n) => self.fail(format!(
                "{} after {after}: {n} paid orders, expected {expected} (one per acknowledged first notification)",
                self.backend
            )),
            Err(e) => self.fail(format!("{} after {after}: {e}", self.backend)),
        }
    }
}

fn is_success(r: &Reply) -> bool {
    r.status == 200 && r.body == coinpay::wechat::xml::SUCCESS_REPLY.as_bytes()
}

async fn run_backend(o: &Opts, mysql: Option<&str>) -> Res<Outcome> {
    let db = BenchDb::new(mysql).await?;
    let r = run_backend_on(o, &db).await;
    db.drop_db().await;
    r
}

async fn run_backend_on(o: &Opts, db: &BenchDb) -> Res<Outcome> {
    let backend = db.backend;
    let t0 = Instant::now();
    coinpay::store::run_migrations(&db.url).await?;
    let setup_pool = DbPool::connect(&db.url, 8).await?;
    let check_pool = DbPool::connect(&db.url, 2).await?;
    let tag = rand_suffix()[..4].to_uppercase();

    let want_dup = o.wants("notify-dup-live") || o.wants("notify-dup-cold");
    let want_notify = o.wants("notify-paid") || want_dup;
    let n_notify = if want_notify {
        o.load("notify-paid").count
    } else {
        0
    };
    let n_base = if o.wants("db-baseline") {
        o.load("db-baseline").count
    } else {
        0
    };

    // Users with openids of their own (not the bench-user-<i> logins of create-order).
    let mut user_ids = Vec::with_capacity(o.users);
    for i in 0..o.users {
        let u =
            users::upsert_by_openid(&setup_pool, &format!("o-bench-{tag}-{i:06}"), None).await?;
        user_ids.push(u.id);
    }
    let notify_rows = pending_orders(&setup_pool, &user_ids, n_notify, &format!("BN{tag}")).await?;
    let base_rows = pending_orders(&setup_pool, &user_ids, n_base, &format!("BD{tag}")).await?;
    let warm = |wanted: bool| if wanted { o.warmup } else { 0 };
    let base_warm = pending_orders(
        &setup_pool,
        &user_ids,
        warm(o.wants("db-baseline")),
        &format!("BW{tag}"),
    )
    .await?;
    let notify_warm = pending_orders(
        &setup_pool,
        &user_ids,
        warm(want_notify),
        &format!("NW{tag}"),
    )
    .await?;
    drop(setup_pool);
    eprintln!(
        "[{backend}] setup: {} users, {} + {} pending orders (+ {} for warm-ups) in {:.1} s",
        o.users,
        notify_rows.len(),
        base_rows.len(),
        base_warm.len() + notify_warm.len(),
        t0.elapsed().as_secs_f64()
    );

    let mut cx = Ctx {
        backend,
        check_pool,
        out: Outcome {
            rows: Vec::new(),
            memory: Memory::default(),
            failures: Vec::new(),
            other_failures: 0,
        },
    };
    let mut paid_expected = 0i64;

    // db-baseline: the same pool type and size as the service's, before the service runs.
    if o.wants("db-baseline") {
        let l = o.load("db-baseline");
        let pool = DbPool::connect(&db.url, o.db_pool_size).await?;
        let w = run_db(
            &pool,
            l.conc,
            Arc::new(base_warm),
            &format!("BU{tag}"),
            o.deadline(),
        )
        .await;
        paid_expected += cx.warmed("db-baseline", w);
        let s = run_db(
            &pool,
            l.conc,
            Arc::new(base_rows),
            &format!("BT{tag}"),
            o.deadline(),
        )
        .await;
        drop(pool);
        paid_expected += s.ok as i64;
        cx.record("db-baseline", l.conc, s).await;
        cx.expect_paid("db-baseline", paid_expected).await;
    }

    let log = db._dir.path().join("coinpay.log");
    let svc = Service::start(o, db, &log)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cx.out.memory.idle_kb = svc.rss_kb();

    let notify_reqs: Arc<Vec<Vec<u8>>> = Arc::new(
        notify_rows
            .iter()
            .enumerate()
            .map(|(i, r)| notification(r, &format!("42000{tag}{i:014}")))
            .collect(),
    );
    let success: Check = Arc::new(is_success);

    if want_notify {
        let l = o.load("notify-paid");
        let warm_reqs: Vec<Vec<u8>> = notify_warm
            .iter()
            .enumerate()
            .map(|(i, r)| notification(r, &format!("42009{tag}{i:014}")))
            .collect();
        let w = svc
            .http(
                o,
                l.conc,
                Arc::new(warm_reqs),
                notify_warm.len(),
                success.clone(),
            )
            .await;
        paid_expected += cx.warmed("notify-paid", w);
        let s = svc
            .measure(svc.http(
                o,
                l.conc,
                notify_reqs.clone(),
                notify_reqs.len(),
                success.clone(),
            ))
            .await;
        paid_expected += s.ok as i64;
        cx.record("notify-paid", l.conc, s).await;
        cx.expect_paid("notify-paid", paid_expected).await;
        cx.out.memory.live_kb = svc.rss_kb();
        cx.out.memory.live_actors = svc.metric("coinpay_order_actors").await.unwrap_or(0.0);
    }

    let mut svc = svc;
    if o.wants("notify-dup-live") {
        let l = o.load("notify-dup-live");
        let s = svc
            .measure(svc.http(o, l.conc, notify_reqs.clone(), l.count, success.clone()))
            .await;
        cx.record("notify-dup-live", l.conc, s).await;
        cx.expect_paid("notify-dup-live", paid_expected).await;
    }

    if o.wants("notify-dup-cold") {
        // A restart: every actor is gone; each notification starts one that loads its order.
        svc.stop();
        svc = Service::start(o, db, &log)?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cx.out.memory.cold_before_kb = svc.rss_kb();
        let l = o.load("notify-dup-cold");
        let n = l.count.min(notify_reqs.len());
        let s = svc
            .measure(svc.http(o, l.conc, notify_reqs.clone(), n, success.clone()))
            .await;
        cx.out.memory.cold_after_kb = svc.rss_kb();
        cx.out.memory.cold_actors = svc.metric("coinpay_order_actors").await.unwrap_or(0.0);
        cx.record("notify-dup-cold", l.conc, s).await;
        cx.expect_paid("notify-dup-cold", paid_expected).await;
    }

    if o.wants("create-order") {
        let l = o.load("create-order");
        // Logged-in users (created through the simulator's jscode2session).
        let n_users = l.count.min(200);
        let mut reqs = Vec::with_capacity(n_users);
        for i in 0..n_users {
            let r = call_once(
                &svc.addr,
                &json_request(
                    "/api/v1/client/auth/login",
                    None,
                    &json!({ "code": format!("bench-user-{i}") }),
                ),
            )
            .await?;
            if r.status != 200 {
                return Err(err(format!(
                    "login: HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                )));
            }
            let v: Value = serde_json::from_slice(&r.body)?;
            let token = v["token"].as_str().ok_or("no token")?.to_string();
            reqs.push(json_request(
                "/api/v1/client/coin/recharge/order",
                Some(&token),
                &json!({ "package_id": 1 }),
            ));
        }
        let check: Check = Arc::new(|r: &Reply| {
            r.status == 200
                && serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| {
                    v["status"] == "pending" && v["pay_params"]["package"].is_string()
                })
        });
        let s = svc
            .measure(svc.http(o, l.conc, Arc::new(reqs), l.count, check))
            .await;
        cx.record("create-order", l.conc, s).await;
    }

    if o.wants("consume") {
        let l = o.load("consume");
        // Every user needs balance for their share; top up through the admin API if not.
        let per_user = l.count.div_ceil(user_ids.len()) as i64;
        let balances: HashMap<i64, i64> = users::balances(&cx.check_pool)
            .await?
            .into_iter()
            .map(|(id, b)| (id, b.0))
            .collect();
        for (k, uid) in user_ids.iter().enumerate() {
            let have = balances.get(uid).copied().unwrap_or(0);
            if have < per_user {
                let body = json!({
                    "user_id": uid, "delta": per_user - have,
                    "request_id": format!("bench-topup-{tag}-{k}"), "reason": "bench top-up",
                });
                let r = call_once(
                    &svc.addr,
                    &json_request("/api/v1/admin/balance/adjust", Some(ADMIN_TOKEN), &body),
                )
                .await?;
                if r.status != 200 {
                    return Err(err(format!(
                        "top-up: HTTP {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )));
                }
            }
        }
        let reqs: Vec<Vec<u8>> = (0..l.count)
            .map(|i| {
                let body = json!({
                    "user_id": user_ids[i % user_ids.len()], "amount": 1,
                    "request_id": format!("bench-{tag}-{i:09}"), "reason": "bench",
                });
                json_request("/api/v1/internal/coin/consume", Some(INTERNAL_TOKEN), &body)
            })
            .collect();
        let check: Check = Arc::new(|r: &Reply| {
            r.status == 200
                && serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v["replayed"] == false)
        });
        let s = svc
            .measure(svc.http(o, l.conc, Arc::new(reqs), l.count, check))
            .await;
        cx.record("consume", l.conc, s).await;
    }

    svc.stop();
    let errors_in_log = std::fs::read_to_string(&log)
        .map(|s| s.lines().filter(|l| l.contains(" ERROR ")).count())
        .unwrap_or(0);
    if errors_in_log > 0 {
        let log_copy = std::env::temp_dir().join(format!("coinpay-bench-{backend}-{tag}.log"));
        let _ = std::fs::copy(&log, &log_copy);
        cx.out.other_failures += 1;
        cx.out.failures.push(format!(
            "{backend}: the service logged {errors_in_log} ERROR lines (log kept in {})",
            log_copy.display()
        ));
    }
    eprintln!("[{backend}] done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(cx.out)
}

// ------------------------------------------------------------------------------------------
// Report

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn print_report(o: &Opts, outs: &[Outcome]) {
    let mut out = String::new();
    let w = &mut out;
    use std::fmt::Write as _;
    let _ = writeln!(
        w,
        "| backend | scenario | conc | requests | ok | errors | seconds | per second | p50 ms | p99 ms | max ms | svc CPU µs/req | vs db-baseline |"
    );
    let _ = writeln!(
        w,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for oc in outs {
        let base = oc
            .rows
            .iter()
            .find(|r| r.scenario == "db-baseline")
            .map(|r| r.stats.rate());
        for r in &oc.rows {
            let s = &r.stats;
            let ratio = match (base, r.scenario) {
                (_, "db-baseline") => "1.00".to_string(),
                (Some(b), "notify-paid" | "notify-dup-live" | "notify-dup-cold") if b > 0.0 => {
                    format!("{:.2}", s.rate() / b)
                }
                _ => "–".to_string(),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
                r.backend,
                r.scenario,
                r.conc,
                s.requested,
                s.ok,
                s.failed(),
                s.secs,
                s.rate(),
                s.pct(0.50),
                s.pct(0.99),
                s.max(),
                s.svc_cpu_us.map_or("–".to_string(), |c| format!("{c:.0}")),
                ratio
            );
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "| backend | idle RSS MB | RSS MB with live actors (count) | per actor KB | cold: RSS MB before → after (actors) | per actor KB |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
    for (oc, r) in outs.iter().zip(outs.iter().filter_map(|o| o.rows.first())) {
        let m = &oc.memory;
        let per = |a: u64, b: u64, n: f64| {
            if n > 0.0 {
                format!("{:.2}", (b as f64 - a as f64) / n)
            } else {
                "–".into()
            }
        };
        let _ = writeln!(
            w,
            "| {} | {:.1} | {:.1} ({:.0}) | {} | {:.1} → {:.1} ({:.0}) | {} |",
            r.backend,
            mb(m.idle_kb),
            mb(m.live_kb),
            m.live_actors,
            per(m.idle_kb, m.live_kb, m.live_actors),
            mb(m.cold_before_kb),
            mb(m.cold_after_kb),
            m.cold_actors,
            per(m.cold_before_kb, m.cold_after_kb, m.cold_actors),
        );
    }
    let _ = writeln!(
        w,
        "\nservice: {} (DB_POOL_SIZE={}, RUST_LOG={}, Redis {}), {} users",
        o.bin.display(),
        o.db_pool_size,
        o.rust_log,
        if o.redis.is_some() { "on" } else { "off" },
        o.users
    );
    print!("{out}");
    let _ = std::io::stdout().flush();
}

fn main() -> ExitCode {
    let o = match parse_opts() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if o.full && o.bin.to_string_lossy().contains("/debug/") {
        eprintln!(
            "warning: measuring a debug build ({}): use `cargo bench` or scripts/bench.sh",
            o.bin.display()
        );
    }
    let started = Instant::now();
    let mut backends: Vec<Option<String>> = Vec::new();
    if o.sqlite {
        backends.push(None);
    }
    if let Some(u) = &o.mysql {
        backends.push(Some(u.clone()));
    }
    let system = actix_rt::System::new();
    let (outs, failures, other) = system.block_on(async {
        let mut outs = Vec::new();
        let mut failures = Vec::new();
        let mut other = 0usize;
        for b in &backends {
            match run_backend(&o, b.as_deref()).await {
                Ok(oc) => {
                    failures.extend(oc.failures.iter().cloned());
                    other += oc.other_failures;
                    outs.push(oc);
                }
                Err(e) => {
                    other += 1;
                    failures.push(format!(
                        "{}: {e}",
                        if b.is_some() { "mysql" } else { "sqlite" }
                    ));
                }
            }
        }
        (outs, failures, other)
    });
    if o.full {
        print_report(&o, &outs);
    }
    let rows = outs.iter().flat_map(|oc| oc.rows.iter());
    let passed = rows.clone().filter(|r| !r.failed).count();
    let failed = rows.filter(|r| r.failed).count() + other;
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    let mode = if o.full { "bench" } else { "bench smoke" };
    println!(
        "{mode}: {passed} passed, {failed} failed ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
