//! `coinpay check-config`: the seed's checklist (section 八), item by item, against the live
//! configuration, database and Redis. ✓ holds, ✗ does not, – cannot be checked from here (or
//! an optional item left at its default).

use secrecy::ExposeSecret;

use crate::config::{ConfigError, INCOMPLETE_PAY_WARNING, Settings, WechatSettings};
use crate::redis::{redis_ping, redis_pool};
use crate::store::{self, DbPool, packages};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Ok,
    Bad,
    Skip,
}

pub struct Item {
    pub mark: Mark,
    pub required: bool,
    pub title: String,
    pub reason: String,
}

impl Item {
    fn new(mark: Mark, required: bool, title: &str, reason: impl Into<String>) -> Self {
        Item {
            mark,
            required,
            title: title.to_string(),
            reason: reason.into(),
        }
    }
    pub fn line(&self) -> String {
        let m = match self.mark {
            Mark::Ok => "✓",
            Mark::Bad => "✗",
            Mark::Skip => "–",
        };
        let opt = if self.required { "" } else { "（可选）" };
        format!("{m} {}{opt} — {}", self.title, self.reason)
    }
    pub fn fails(&self) -> bool {
        self.required && self.mark != Mark::Ok
    }
}

const MIN_TOKEN_LEN: usize = 32;

const MIGRATIONS: &str = "数据库迁移脚本已执行";
const MCH_ID: &str = "WECHAT_PAY_MCH_ID 已配置";
const API_KEY: &str = "WECHAT_PAY_API_KEY 已配置（32位字符串）";
const NOTIFY_URL: &str = "WECHAT_PAY_NOTIFY_URL 已配置（HTTPS地址）";
const WHITELIST: &str = "WECHAT_PAY_IP_WHITELIST 已配置";
const REDIS: &str = "Redis已配置";
const RESTARTED: &str = "后端服务已重启并加载新配置";
const TEST_CALL: &str = "测试接口调用正常";
const CALLBACK_PATH: &str = "/api/v1/client/coin/recharge/callback";

/// Runs every check, in the seed's order and then coinpay's own. A configuration that does
/// not even load is one failed item.
pub async fn run(settings: Result<Settings, ConfigError>) -> Vec<Item> {
    let s = match settings.and_then(|s| s.check_against_wechat().map(|_| s)) {
        Ok(s) => s,
        Err(e) => {
            return vec![Item::new(
                Mark::Bad,
                true,
                RESTARTED,
                format!("configuration does not load: {e}"),
            )];
        }
    };
    let (migrations, db) = migrations(&s).await;
    let mut items = vec![migrations];
    items.extend(pay_settings(&s.wechat));
    items.push(whitelist(&s));
    items.push(Item::new(
        Mark::Skip,
        false,
        "微信支付商户平台回调URL已配置",
        "set in the merchant platform (产品中心 → 开发配置); cannot be checked from here",
    ));
    items.push(Item::new(
        Mark::Skip,
        false,
        "微信支付商户平台IP白名单已配置",
        "set in the merchant platform (账户中心 → API安全); cannot be checked from here",
    ));
    items.push(redis(&s).await);
    items.push(restarted(&s.wechat));
    items.push(test_call(db.as_ref()).await);
    // Beyond the seed: what coinpay itself needs.
    items.extend(secrets(&s));
    items
}

/// 数据库迁移脚本已执行, and a pool for the later items when the schema is current.
async fn migrations(s: &Settings) -> (Item, Option<DbPool>) {
    match store::pending_migrations(&s.database_url).await {
        Ok(0) => (
            Item::new(
                Mark::Ok,
                true,
                MIGRATIONS,
                format!("no pending migrations ({})", s.database_url.backend()),
            ),
            DbPool::connect(&s.database_url, 2).await.ok(),
        ),
        Ok(n) => (
            Item::new(
                Mark::Bad,
                true,
                MIGRATIONS,
                format!("{n} migrations pending: run `coinpay migrate`"),
            ),
            None,
        ),
        Err(e) => (
            Item::new(
                Mark::Bad,
                true,
                MIGRATIONS,
                format!("database unreachable: {e}"),
            ),
            None,
        ),
    }
}

/// The merchant id, the API key and the notify URL.
fn pay_settings(w: &WechatSettings) -> [Item; 3] {
    let mch_id = match &w.mch_id {
        Some(_) => Item::new(Mark::Ok, true, MCH_ID, "set"),
        None => Item::new(Mark::Bad, true, MCH_ID, "not set"),
    };
    // A set key has 32 characters: config refuses any other length.
    let api_key = match &w.api_key {
        Some(_) => Item::new(Mark::Ok, true, API_KEY, "set, 32 characters"),
        None => Item::new(Mark::Bad, true, API_KEY, "not set"),
    };
    let notify_url = match &w.notify_url {
        Some(u) if u.starts_with("https://") && u.ends_with(CALLBACK_PATH) => {
            Item::new(Mark::Ok, true, NOTIFY_URL, u.clone())
        }
        Some(u) if u.starts_with("https://") => Item::new(
            Mark::Ok,
            true,
            NOTIFY_URL,
            format!("{u} (note: coinpay's callback path is {CALLBACK_PATH})"),
        ),
        Some(u) => Item::new(Mark::Bad, true, NOTIFY_URL, format!("{u} is not https")),
        None => Item::new(Mark::Bad, true, NOTIFY_URL, "not set"),
    };
    [mch_id, api_key, notify_url]
}

fn whitelist(s: &Settings) -> Item {
    let w = &s.wechat;
    let missing_ranges = s.whitelist_missing_current_ranges();
    match (&w.ip_whitelist, w.ip_whitelist_explicit) {
        (None, _) => Item::new(
            Mark::Bad,
            false,
            WHITELIST,
            "empty: the allow-list is OFF, any address may post notifications",
        ),
        (Some(_), false) => Item::new(
            Mark::Skip,
            false,
            WHITELIST,
            "not set: the built-in list (seed's ranges + WeChat's current callback ranges) is used",
        ),
        (Some(_), true) if !missing_ranges.is_empty() => Item::new(
            Mark::Bad,
            false,
            WHITELIST,
            format!(
                "misses WeChat's current callback ranges {}: notifications from them will be refused",
                missing_ranges.join(",")
            ),
        ),
        (Some(list), true) => Item::new(
            Mark::Ok,
            false,
            WHITELIST,
            format!(
                "{} ranges, covering WeChat's current callback ranges",
                list.len()
            ),
        ),
    }
}

/// Redis已配置（可选，用于订单号唯一性）: optional, but once configured it must answer.
async fn redis(s: &Settings) -> Item {
    let Some(r) = &s.redis else {
        return Item::new(
            Mark::Skip,
            false,
            REDIS,
            "not configured: order numbers use the time + instance + counter scheme",
        );
    };
    let ping = match redis_pool(r.url().expose_secret()) {
        Ok(pool) => redis_ping(&pool).await,
        Err(e) => Err(e),
    };
    match ping {
        Ok(()) => Item::new(
            Mark::Ok,
            true,
            REDIS,
            format!("{}:{} db {} answers PING", r.host, r.port, r.db),
        ),
        Err(e) => Item::new(
            Mark::Bad,
            true,
            REDIS,
            format!("{}:{} does not answer: {e}", r.host, r.port),
        ),
    }
}

/// Complete means what the service needs for both payment and login.
fn restarted(w: &WechatSettings) -> Item {
    if w.pay_complete() && w.login_complete() {
        return Item::new(
            Mark::Ok,
            true,
            RESTARTED,
            "configuration loads; WeChat Pay and login are complete",
        );
    }
    let mut missing = w.missing_pay();
    if w.app_secret.is_none() {
        missing.push("WECHAT_APP_SECRET");
    }
    Item::new(
        Mark::Bad,
        true,
        RESTARTED,
        format!(
            "incomplete, the service would log {INCOMPLETE_PAY_WARNING}; missing {}",
            missing.join(", ")
        ),
    )
}

/// 测试接口调用正常: the package list a client would see.
async fn test_call(db: Option<&DbPool>) -> Item {
    let Some(pool) = db else {
        return Item::new(Mark::Bad, true, TEST_CALL, "database not ready");
    };
    match packages::list_active(pool).await {
        Ok(list) if !list.is_empty() => Item::new(
            Mark::Ok,
            true,
            TEST_CALL,
            format!(
                "GET /api/v1/client/coin/packages would list {} packages",
                list.len()
            ),
        ),
        Ok(_) => Item::new(Mark::Bad, true, TEST_CALL, "no active package to sell"),
        Err(e) => Item::new(
            Mark::Bad,
            true,
            TEST_CALL,
            format!("packages query failed: {e}"),
        ),
    }
}

/// JWT_SECRET, and the two static API tokens (optional, but not short).
fn secrets(s: &Settings) -> Vec<Item> {
    let mut items = vec![match &s.jwt_secret {
        Some(_) => Item::new(Mark::Ok, true, "JWT_SECRET 已配置", "set"),
        None => Item::new(
            Mark::Bad,
            true,
            "JWT_SECRET 已配置",
            "not set: login tokens would not survive a restart or work across instances",
        ),
    }];
    for (name, v) in [
        ("INTERNAL_API_TOKEN", &s.internal_api_token),
        ("ADMIN_API_TOKEN", &s.admin_api_token),
    ] {
        let title = format!("{name} 已配置");
        let chars = v.as_ref().map(|t| t.expose_secret().chars().count());
        items.push(match chars {
            None => Item::new(Mark::Skip, false, &title, "not set: that API answers 404"),
            Some(n) if n < MIN_TOKEN_LEN => Item::new(
                Mark::Bad,
                false,
                &title,
                format!(
                    "WARNING: only {n} characters; use at least {MIN_TOKEN_LEN} random characters"
                ),
            ),
            Some(_) => Item::new(
                Mark::Ok,
                false,
                &title,
                format!("set, at least {MIN_TOKEN_LEN} characters"),
            ),
        });
    }
    items
}
