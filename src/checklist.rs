//! `coinpay check-config`: the seed's checklist (section 八), item by item, against the live
//! configuration, database and Redis. ✓ holds, ✗ does not, – cannot be checked from here (or
//! an optional item left at its default).

use crate::config::{ConfigError, Settings};
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

/// Runs every check. A configuration that does not even load is one failed item.
pub async fn run(settings: Result<Settings, ConfigError>) -> Vec<Item> {
    let s = match settings.and_then(|s| s.check_against_wechat().map(|_| s)) {
        Ok(s) => s,
        Err(e) => {
            return vec![Item::new(
                Mark::Bad,
                true,
                "后端服务已重启并加载新配置",
                format!("configuration does not load: {e}"),
            )];
        }
    };
    let mut items = Vec::new();
    let w = &s.wechat;

    // 数据库迁移脚本已执行
    let pending = store::pending_migrations(&s.database_url).await;
    let db = match &pending {
        Ok(0) => {
            items.push(Item::new(
                Mark::Ok,
                true,
                "数据库迁移脚本已执行",
                format!("no pending migrations ({})", backend(&s)),
            ));
            DbPool::connect(&s.database_url, 2).await.ok()
        }
        Ok(n) => {
            items.push(Item::new(
                Mark::Bad,
                true,
                "数据库迁移脚本已执行",
                format!("{n} migrations pending: run `coinpay migrate`"),
            ));
            None
        }
        Err(e) => {
            items.push(Item::new(
                Mark::Bad,
                true,
                "数据库迁移脚本已执行",
                format!("database unreachable: {e}"),
            ));
            None
        }
    };

    let set = |v: &Option<String>| v.is_some();
    items.push(match &w.mch_id {
        Some(_) => Item::new(Mark::Ok, true, "WECHAT_PAY_MCH_ID 已配置", "set"),
        None => Item::new(Mark::Bad, true, "WECHAT_PAY_MCH_ID 已配置", "not set"),
    });
    items.push(if set(&w.api_key) {
        Item::new(
            Mark::Ok,
            true,
            "WECHAT_PAY_API_KEY 已配置（32位字符串）",
            "set, 32 characters",
        )
    } else {
        Item::new(
            Mark::Bad,
            true,
            "WECHAT_PAY_API_KEY 已配置（32位字符串）",
            "not set",
        )
    });
    items.push(match &w.notify_url {
        Some(u)
            if u.starts_with("https://")
                && u.ends_with("/api/v1/client/coin/recharge/callback") =>
        {
            Item::new(
                Mark::Ok,
                true,
                "WECHAT_PAY_NOTIFY_URL 已配置（HTTPS地址）",
                u.clone(),
            )
        }
        Some(u) if u.starts_with("https://") => Item::new(
            Mark::Ok,
            true,
            "WECHAT_PAY_NOTIFY_URL 已配置（HTTPS地址）",
            format!("{u} (note: coinpay's callback path is /api/v1/client/coin/recharge/callback)"),
        ),
        Some(u) => Item::new(
            Mark::Bad,
            true,
            "WECHAT_PAY_NOTIFY_URL 已配置（HTTPS地址）",
            format!("{u} is not https"),
        ),
        None => Item::new(
            Mark::Bad,
            true,
            "WECHAT_PAY_NOTIFY_URL 已配置（HTTPS地址）",
            "not set",
        ),
    });
    let missing_ranges = s.whitelist_missing_current_ranges();
    items.push(match (&w.ip_whitelist, w.ip_whitelist_explicit) {
        (None, _) => Item::new(Mark::Bad, false, "WECHAT_PAY_IP_WHITELIST 已配置", "empty: the allow-list is OFF, any address may post notifications"),
        (Some(_), false) => Item::new(Mark::Skip, false, "WECHAT_PAY_IP_WHITELIST 已配置", "not set: the built-in list (seed's ranges + WeChat's current callback ranges) is used"),
        (Some(_), true) if !missing_ranges.is_empty() => Item::new(
            Mark::Bad,
            false,
            "WECHAT_PAY_IP_WHITELIST 已配置",
            format!("misses WeChat's current callback ranges {}: notifications from them will be refused", missing_ranges.join(",")),
        ),
        (Some(list), true) => Item::new(Mark::Ok, false, "WECHAT_PAY_IP_WHITELIST 已配置", format!("{} ranges, covering WeChat's current callback ranges", list.len())),
    });
    items.push(refund_certificate_item(w));
    items.push(match w.refund_notify_url() {
        Some(u) => Item::new(Mark::Ok, false, "WECHAT_PAY_REFUND_NOTIFY_URL 已配置", u),
        None => Item::new(
            Mark::Skip,
            false,
            "WECHAT_PAY_REFUND_NOTIFY_URL 已配置",
            "not set and no WECHAT_PAY_NOTIFY_URL to derive it from",
        ),
    });
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

    // Redis已配置（可选，用于订单号唯一性）: optional, but once configured it must answer.
    items.push(match &s.redis {
        None => Item::new(
            Mark::Skip,
            false,
            "Redis已配置",
            "not configured: order numbers use the time + instance + counter scheme",
        ),
        Some(r) => {
            let ping = match redis_pool(&r.url()) {
                Ok(pool) => redis_ping(&pool).await,
                Err(e) => Err(e),
            };
            match ping {
                Ok(()) => Item::new(
                    Mark::Ok,
                    true,
                    "Redis已配置",
                    format!("{}:{} db {} answers PING", r.host, r.port, r.db),
                ),
                Err(e) => Item::new(
                    Mark::Bad,
                    true,
                    "Redis已配置",
                    format!("{}:{} does not answer: {e}", r.host, r.port),
                ),
            }
        }
    });

    let login = w.app_id.is_some() && w.app_secret.is_some();
    let pay = w.pay_complete();
    items.push(if pay && login {
        Item::new(Mark::Ok, true, "后端服务已重启并加载新配置", "configuration loads; WeChat Pay and login are complete")
    } else {
        let mut missing = w.missing_pay();
        if w.app_secret.is_none() {
            missing.push("WECHAT_APP_SECRET");
        }
        Item::new(Mark::Bad, true, "后端服务已重启并加载新配置", format!("incomplete, the service would log 微信支付配置不完整，支付功能可能不可用; missing {}", missing.join(", ")))
    });
    items.push(match &db {
        Some(pool) => match packages::list_active(pool).await {
            Ok(list) if !list.is_empty() => Item::new(
                Mark::Ok,
                true,
                "测试接口调用正常",
                format!(
                    "GET /api/v1/client/coin/packages would list {} packages",
                    list.len()
                ),
            ),
            Ok(_) => Item::new(
                Mark::Bad,
                true,
                "测试接口调用正常",
                "no active package to sell",
            ),
            Err(e) => Item::new(
                Mark::Bad,
                true,
                "测试接口调用正常",
                format!("packages query failed: {e}"),
            ),
        },
        None => Item::new(Mark::Bad, true, "测试接口调用正常", "database not ready"),
    });

    // Beyond the seed: what coinpay itself needs.
    items.push(match &s.jwt_secret {
        Some(_) => Item::new(Mark::Ok, true, "JWT_SECRET 已配置", "set"),
        None => Item::new(
            Mark::Bad,
            true,
            "JWT_SECRET 已配置",
            "not set: login tokens would not survive a restart or work across instances",
        ),
    });
    for (name, v) in [
        ("INTERNAL_API_TOKEN", &s.internal_api_token),
        ("ADMIN_API_TOKEN", &s.admin_api_token),
    ] {
        let title = format!("{name} 已配置");
        items.push(match v {
            None => Item::new(Mark::Skip, false, &title, "not set: that API answers 404"),
            Some(t) if t.chars().count() < MIN_TOKEN_LEN => Item::new(
                Mark::Bad,
                false,
                &title,
                format!(
                    "WARNING: only {} characters; use at least {MIN_TOKEN_LEN} random characters",
                    t.chars().count()
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

/// 退款证书: WECHAT_PAY_CERT_PATH + WECHAT_PAY_KEY_PATH (and WECHAT_PAY_CA_PATH) load as a
/// matching pair; absent both, refunds are disabled (optional).
fn refund_certificate_item(w: &crate::config::WechatSettings) -> Item {
    const TITLE: &str = "WECHAT_PAY_CERT_PATH/WECHAT_PAY_KEY_PATH 退款证书已配置";
    if w.cert_path.is_none() && w.key_path.is_none() && w.ca_path.is_none() {
        return Item::new(
            Mark::Skip,
            false,
            TITLE,
            "not set: refunds are disabled (503 refunds_disabled)",
        );
    }
    match crate::wechat::tls::PayTls::from_paths(
        w.cert_path.as_deref(),
        w.key_path.as_deref(),
        w.ca_path.as_deref(),
    ) {
        Ok(t) if t.has_client_cert() => Item::new(
            Mark::Ok,
            false,
            TITLE,
            "client certificate and key load and match: refunds enabled",
        ),
        Ok(_) => Item::new(
            Mark::Skip,
            false,
            TITLE,
            "only WECHAT_PAY_CA_PATH is set: refunds are disabled",
        ),
        Err(e) => Item::new(Mark::Bad, true, TITLE, format!("{}: {e}", e.variable())),
    }
}

fn backend(s: &Settings) -> &'static str {
    if s.is_sqlite() { "sqlite" } else { "mysql" }
}
