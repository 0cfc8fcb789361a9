//! The simulator exercised through the real `WechatClient`, plus a notification receiver.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use chrono::Utc;
use coinpay::sandbox::{self, Sandbox, SandboxConfig};
use coinpay::wechat::client::{
    CallObserver, LoginClient, LoginConfig, LoginCredentials, PayCredentials, TradeState,
    UnifiedOrder, WechatClient, WechatConfig, WechatError,
};
use coinpay::wechat::notify::{self, Notification};
use coinpay::wechat::sign::SignType;
use coinpay::wechat::xml;
use secrecy::ExposeSecret;

use crate::helpers::post_endpoint;

/// The pay client's configuration for the simulator's merchant at `base`.
fn pay_config(c: &SandboxConfig, base: &str, notify_url: &str) -> WechatConfig {
    WechatConfig {
        credentials: PayCredentials {
            app_id: c.app_id.clone(),
            mch_id: c.mch_id.clone(),
            api_key: c.api_key.clone(),
            sign_type: SignType::Md5,
        },
        pay_api_base: base.to_owned(),
        notify_url: notify_url.to_owned(),
        timeout: Duration::from_secs(3),
        max_retries: 2,
    }
}

/// The login client's configuration for the simulator's mini-program at `base`.
fn login_config(c: &SandboxConfig, base: &str) -> LoginConfig {
    LoginConfig {
        credentials: LoginCredentials {
            app_id: c.app_id.clone(),
            app_secret: c.app_secret.clone(),
        },
        api_base: base.to_owned(),
        timeout: Duration::from_secs(3),
        max_retries: 2,
    }
}

struct Sim {
    sb: Sandbox,
    base: String,
    handle: actix_web::dev::ServerHandle,
}

impl Sim {
    async fn start(cfg: SandboxConfig) -> Sim {
        let sb = Sandbox::new(cfg);
        let bind: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (server, addrs) = sandbox::serve(bind, sb.clone()).expect("bind sandbox");
        let handle = server.handle();
        actix_rt::spawn(server);
        Sim {
            sb,
            base: format!("http://{}", addrs[0]),
            handle,
        }
    }

    fn client_config(&self, notify_url: &str) -> WechatConfig {
        pay_config(self.sb.config(), &self.base, notify_url)
    }

    fn client(&self) -> WechatClient {
        WechatClient::new(self.client_config("https://example.com/notify"))
    }

    fn login_config(&self) -> LoginConfig {
        login_config(self.sb.config(), &self.base)
    }

    fn login(&self) -> LoginClient {
        LoginClient::new(self.login_config())
    }

    async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let mut resp = awc::Client::default()
            .post(format!("{}{path}", self.base))
            .send_json(&body)
            .await
            .expect("simulate call");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json"))
    }

    async fn get_json(&self, path: &str) -> serde_json::Value {
        let mut resp = awc::Client::default()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("simulate call");
        resp.json().await.expect("json")
    }

    /// The simulator's state of an order once its notification is acknowledged, polling up to
    /// `tries` times 20 ms apart (the last state seen when it never is).
    async fn acknowledged_state(&self, out_trade_no: &str, tries: usize) -> serde_json::Value {
        let path = format!("/simulate/orders/{out_trade_no}");
        let mut state = serde_json::Value::Null;
        for _ in 0..tries {
            state = self.get_json(&path).await;
            if state["acknowledged"] == true {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        state
    }

    async fn pay(&self, out_trade_no: &str, query: &str) -> (u16, serde_json::Value) {
        self.post_json(
            &format!("/simulate/pay/{out_trade_no}{query}"),
            serde_json::json!({}),
        )
        .await
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn order(no: &str, fee: i64) -> UnifiedOrder {
    let now = Utc::now();
    UnifiedOrder {
        out_trade_no: no.to_owned(),
        body: "coinpay-算力充值".into(),
        total_fee: fee,
        spbill_create_ip: "127.0.0.1".into(),
        openid: "oTestOpenid0000000000000000x".into(),
        time_start: now,
        time_expire: now + chrono::Duration::minutes(30),
        attach: Some("pkg=basic&x=<1>".into()),
    }
}

fn biz_code(e: &WechatError) -> &str {
    match e {
        WechatError::Business { code, .. } => code,
        _ => "",
    }
}

async fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if cond() {
            return true;
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    cond()
}

#[derive(Default)]
struct Received {
    calls: usize,
    valid: Vec<Notification>,
    invalid: usize,
}

/// A tiny merchant notify endpoint: verifies with `notify::parse`, answers FAIL to the first
/// `fail_first` valid deliveries and sleeps `slow_first` on the first one.
struct Receiver {
    url: String,
    state: Arc<Mutex<Received>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    async fn start(cfg: WechatConfig, fail_first: usize, slow_first: Duration) -> Receiver {
        let state = Arc::new(Mutex::new(Received::default()));
        let st = state.clone();
        let (url, handle) = post_endpoint("/notify", move |body: web::Bytes| {
            let st = st.clone();
            let cfg = cfg.clone();
            async move {
                let call = {
                    let mut s = st.lock().expect("lock");
                    s.calls += 1;
                    s.calls
                };
                if call == 1 && !slow_first.is_zero() {
                    actix_rt::time::sleep(slow_first).await;
                }
                let reply = match notify::parse(&body, &cfg.credentials) {
                    Ok(n) => {
                        let mut s = st.lock().expect("lock");
                        s.valid.push(n);
                        if s.valid.len() <= fail_first {
                            xml::fail_reply("busy")
                        } else {
                            xml::SUCCESS_REPLY.to_owned()
                        }
                    }
                    Err(e) => {
                        st.lock().expect("lock").invalid += 1;
                        xml::fail_reply(e.reply_msg())
                    }
                };
                HttpResponse::Ok().content_type("text/xml").body(reply)
            }
        });
        Receiver { url, state, handle }
    }

    fn valid(&self) -> usize {
        self.state.lock().expect("lock").valid.len()
    }
}

fn fast_config() -> SandboxConfig {
    SandboxConfig {
        time_scale: 0.001,
        ..SandboxConfig::default_credentials()
    }
}

#[actix_web::test]
async fn full_flow_login_order_pay_notify_query() {
    let sim = Sim::start(fast_config()).await;
    let recv_cfg = sim.client_config("unused");
    let recv = Receiver::start(recv_cfg, 0, Duration::ZERO).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c2 = calls.clone();
    let observer: CallObserver =
        Arc::new(move |api, outcome, _lat| c2.lock().expect("lock").push((api, outcome)));
    let client = WechatClient::new(sim.client_config(&recv.url)).with_observer(observer.clone());
    let login = sim.login().with_observer(observer);

    let s1 = login.code_to_session("081code-A").await.expect("login");
    let s2 = login.code_to_session("081code-A").await.expect("login");
    assert_eq!(s1, s2);
    assert_eq!(s1.openid.len(), 28);
    assert!(s1.openid.starts_with('o'));

    let mut o = order("CR20260101000001", 600);
    o.openid = s1.openid.clone();
    let prepay = client.unified_order(&o).await.expect("unifiedorder");
    assert!(prepay.starts_with("wx"));
    // Re-entry with identical parameters (new nonce) gives the same prepay_id.
    assert_eq!(client.unified_order(&o).await.expect("re-entry"), prepay);

    let q = client.order_query(&o.out_trade_no).await.expect("query");
    assert_eq!(q.trade_state, TradeState::NotPay);
    assert_eq!(q.transaction_id, None);

    let (status, paid) = sim.pay(&o.out_trade_no, "").await;
    assert_eq!(status, 200);
    let tx = paid["transaction_id"].as_str().expect("tx").to_owned();
    assert_eq!(tx.len(), 28);
    assert!(wait_for(|| recv.valid() == 1).await);
    {
        let r = recv.state.lock().expect("lock");
        let n = &r.valid[0];
        assert_eq!(n.out_trade_no, o.out_trade_no);
        assert_eq!(n.transaction_id, tx);
        assert_eq!(n.total_fee, 600);
        assert_eq!(n.openid, s1.openid);
        assert_eq!(n.sign_type, SignType::Md5);
        assert_eq!(n.raw.get("attach"), o.attach.as_ref());
        assert!(!n.raw.contains_key("sign_type"));
        assert_eq!(r.invalid, 0);
    }

    let q = client.order_query(&o.out_trade_no).await.expect("query");
    assert_eq!(q.trade_state, TradeState::Success);
    assert_eq!(q.transaction_id.as_deref(), Some(tx.as_str()));
    assert_eq!(q.total_fee, Some(600));
    assert!(q.time_end.as_ref().is_some_and(|t| t.len() == 14));
    assert_eq!(q.raw.get("attach"), o.attach.as_ref());

    // Paid: closeorder and unifiedorder both say ORDERPAID.
    let e = client.close_order(&o.out_trade_no).await.expect_err("paid");
    assert_eq!(biz_code(&e), "ORDERPAID");
    assert!(e.is_final());
    let e = client.unified_order(&o).await.expect_err("paid");
    assert_eq!(biz_code(&e), "ORDERPAID");

    // Paying twice keeps the transaction id.
    let (_, again) = sim.pay(&o.out_trade_no, "?notify=false").await;
    assert_eq!(again["transaction_id"].as_str(), Some(tx.as_str()));

    let state = sim
        .get_json(&format!("/simulate/orders/{}", o.out_trade_no))
        .await;
    assert_eq!(state["trade_state"], "SUCCESS");
    assert_eq!(state["acknowledged"], true);
    assert_eq!(state["notify_attempts"], 1);
    let seen = calls.lock().expect("lock").clone();
    assert!(seen.contains(&("jscode2session", "ok")));
    assert!(seen.contains(&("unifiedorder", "ok")));
    assert!(seen.contains(&("closeorder", "business_error")));
    recv.handle.stop(false).await;
    sim.stop().await;
}

#[actix_web::test]
async fn business_errors() {
    let sim = Sim::start(fast_config()).await;
    let client = sim.client();

    // Wrong key ⇒ SIGNERROR (unsigned FAIL reply carrying err_code).
    let mut bad = sim.client_config("https://example.com/notify");
    bad.credentials.api_key = "W".repeat(32).into();
    let e = WechatClient::new(bad)
        .unified_order(&order("CR_SIGNERR_1", 100))
        .await
        .expect_err("signerror");
    assert_eq!(biz_code(&e), "SIGNERROR");
    assert!(e.is_final());

    // Other appid / mch_id.
    let mut other_app = sim.client_config("https://example.com/notify");
    other_app.credentials.app_id = "wx0123456789abcdef".into();
    let e = WechatClient::new(other_app)
        .order_query("X123456")
        .await
        .expect_err("appid");
    assert_eq!(biz_code(&e), "APPID_MCHID_NOT_MATCH");
    let mut other_mch = sim.client_config("https://example.com/notify");
    other_mch.credentials.mch_id = "1234567890".into();
    let e = WechatClient::new(other_mch)
        .order_query("X123456")
        .await
        .expect_err("mch");
    assert_eq!(biz_code(&e), "MCHID_NOT_EXIST");

    // OUT_TRADE_NO_USED: same number, other amount.
    client
        .unified_order(&order("CR_USED_0001", 100))
        .await
        .expect("first");
    let e = client
        .unified_order(&order("CR_USED_0001", 200))
        .await
        .expect_err("used");
    assert_eq!(biz_code(&e), "OUT_TRADE_NO_USED");
    assert!(e.is_final());

    // Invalid amount.
    let e = client
        .unified_order(&order("CR_ZERO_0001", 0))
        .await
        .expect_err("zero");
    assert_eq!(biz_code(&e), "INVALID_REQUEST");

    // ORDERNOTEXIST.
    let e = client.order_query("CR_NOPE_0001").await.expect_err("none");
    assert_eq!(biz_code(&e), "ORDERNOTEXIST");
    let e = client.close_order("CR_NOPE_0001").await.expect_err("none");
    assert_eq!(biz_code(&e), "ORDERNOTEXIST");

    // Close: NOTPAY → CLOSED; again is fine (ORDERCLOSED → Ok); re-order → ORDERCLOSED.
    let o = order("CR_CLOSE_001", 100);
    client.unified_order(&o).await.expect("order");
    client.close_order(&o.out_trade_no).await.expect("close");
    client
        .close_order(&o.out_trade_no)
        .await
        .expect("close again");
    let q = client.order_query(&o.out_trade_no).await.expect("query");
    assert_eq!(q.trade_state, TradeState::Closed);
    let e = client.unified_order(&o).await.expect_err("closed");
    assert_eq!(biz_code(&e), "ORDERCLOSED");
    let (status, body) = sim.pay(&o.out_trade_no, "").await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "ORDERCLOSED");
    let (status, _) = sim.pay("CR_NOPE_0001", "").await;
    assert_eq!(status, 409);

    // Login errors.
    for code in ["invalid-code", "bad code", "invalidABC"] {
        let e = sim.login().code_to_session(code).await.expect_err("40029");
        assert!(
            matches!(e, WechatError::Login { errcode: 40029, .. }),
            "{e:?}"
        );
        assert!(e.is_final());
        assert_eq!(e.code(), "40029");
    }
    let mut bad_secret = sim.login_config();
    bad_secret.credentials.app_secret = "nope".into();
    let e = LoginClient::new(bad_secret)
        .code_to_session("081ok")
        .await
        .expect_err("40125");
    assert!(matches!(e, WechatError::Login { errcode: 40125, .. }));
    sim.stop().await;
}

#[actix_web::test]
async fn userpaying_until_the_payment_completes() {
    let sim = Sim::start(fast_config()).await;
    let client = sim.client();
    let o = order("CR_PAYING_001", 100);
    let prepay = client.unified_order(&o).await.expect("order");
    let (status, body) = sim.pay(&o.out_trade_no, "?userpaying=true").await;
    assert_eq!(status, 200);
    assert_eq!(body["notification_chains"], 0);
    let q = client.order_query(&o.out_trade_no).await.expect("query");
    assert_eq!(q.trade_state, TradeState::UserPaying);
    assert_eq!(q.transaction_id, None);
    // Re-entry while paying keeps the prepay_id.
    assert_eq!(client.unified_order(&o).await.expect("re-entry"), prepay);
    let (_, paid) = sim.pay(&o.out_trade_no, "?notify=false").await;
    let q = client.order_query(&o.out_trade_no).await.expect("query");
    assert_eq!(q.trade_state, TradeState::Success);
    assert_eq!(q.transaction_id.as_deref(), paid["transaction_id"].as_str());
    // Paid: it cannot go back to paying.
    let (status, body) = sim.pay(&o.out_trade_no, "?userpaying=true").await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "ORDERPAID");
    sim.stop().await;
}

#[actix_web::test]
async fn lack_params_and_garbage() {
    let sim = Sim::start(fast_config()).await;
    let cfg = sim.sb.config().clone();
    let post = |body: String| {
        let url = format!("{}/pay/unifiedorder", sim.base);
        async move {
            let mut r = awc::Client::default()
                .post(url)
                .send_body(body)
                .await
                .expect("post");
            let b = r.body().await.expect("body");
            xml::decode(&b).expect("xml reply")
        }
    };
    let mut p = coinpay::wechat::Params::new();
    for (k, v) in [
        ("appid", cfg.app_id.as_str()),
        ("mch_id", cfg.mch_id.as_str()),
        ("nonce_str", "abc"),
        ("out_trade_no", "CR_LACK_0001"),
        ("total_fee", "1"),
        ("spbill_create_ip", "127.0.0.1"),
        ("notify_url", "https://example.com/n"),
        ("trade_type", "JSAPI"),
        ("openid", "oX"),
    ] {
        p.insert(k.into(), v.into());
    }
    let signed = |p: &coinpay::wechat::Params| {
        let mut p = p.clone();
        let s = coinpay::wechat::sign::sign(&p, cfg.api_key.expose_secret(), SignType::Md5);
        p.insert("sign".into(), s);
        xml::encode(&p)
    };
    let r = post(signed(&p)).await;
    assert_eq!(r.get("return_code").map(String::as_str), Some("SUCCESS"));
    assert_eq!(r.get("err_code").map(String::as_str), Some("LACK_PARAMS"));
    assert!(r.get("err_code_des").is_some_and(|d| d.contains("body")));
    assert!(coinpay::wechat::sign::verify(&r, cfg.api_key.expose_secret(), SignType::Md5).is_ok());

    let r = post("<xml><a>".into()).await;
    assert_eq!(r.get("return_code").map(String::as_str), Some("FAIL"));
    assert_eq!(
        r.get("err_code").map(String::as_str),
        Some("XML_FORMAT_ERROR")
    );
    let r = post("<!DOCTYPE x [<!ENTITY e 'x'>]><xml/>".into()).await;
    assert_eq!(
        r.get("err_code").map(String::as_str),
        Some("XML_FORMAT_ERROR")
    );
    sim.stop().await;
}

#[actix_web::test]
async fn systemerror_retried_then_final() {
    let sim = Sim::start(fast_config()).await;
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let o2 = outcomes.clone();
    let client = sim.client().with_observer(Arc::new(move |api, outcome, _| {
        o2.lock().expect("lock").push((api, outcome))
    }));
    // max_retries = 2: two SYSTEMERRORs are absorbed with identical parameters.
    sim.post_json("/simulate/faults", serde_json::json!({"systemerror": 2}))
        .await;
    let prepay = client
        .unified_order(&order("CR_SYSERR_001", 100))
        .await
        .expect("retried");
    assert!(!prepay.is_empty());
    assert_eq!(
        outcomes.lock().expect("lock").as_slice(),
        &[("unifiedorder", "ok")]
    );

    // Three in a row exceed max_retries: non-final error.
    sim.post_json("/simulate/faults", serde_json::json!({"systemerror": 3}))
        .await;
    let e = client
        .order_query("CR_SYSERR_001")
        .await
        .expect_err("systemerror");
    assert_eq!(biz_code(&e), "SYSTEMERROR");
    assert!(!e.is_final());
    assert_eq!(
        outcomes.lock().expect("lock").last(),
        Some(&("orderquery", "business_error"))
    );
    // The fault budget is spent: the next call works.
    assert!(client.order_query("CR_SYSERR_001").await.is_ok());

    // Latency beyond the client timeout ⇒ Timeout (not final), retried then given up.
    sim.post_json("/simulate/faults", serde_json::json!({"latency_ms": 800}))
        .await;
    let mut slow = sim.client_config("https://example.com/notify");
    slow.timeout = Duration::from_millis(300);
    slow.max_retries = 1;
    let e = WechatClient::new(slow)
        .order_query("CR_SYSERR_001")
        .await
        .expect_err("timeout");
    assert_eq!(e, WechatError::Timeout);
    assert!(!e.is_final());
    let cleared = awc::Client::default()
        .delete(format!("{}/simulate/faults", sim.base))
        .send()
        .await
        .expect("clear");
    assert!(cleared.status().is_success());
    assert!(client.order_query("CR_SYSERR_001").await.is_ok());

    // Nothing listening ⇒ Transport (not final).
    let mut dead = sim.client_config("https://example.com/notify");
    dead.pay_api_base = "http://127.0.0.1:9".into();
    dead.max_retries = 0;
    let e = WechatClient::new(dead)
        .order_query("X")
        .await
        .expect_err("transport");
    assert!(matches!(e, WechatError::Transport(_)), "{e:?}");
    assert!(!e.is_final());
    sim.stop().await;
}

#[actix_web::test]
async fn hmac_orders_and_notifications() {
    let sim = Sim::start(SandboxConfig {
        notify_sign_type_field: true,
        ..fast_config()
    })
    .await;
    // The receiver is configured for MD5: the notification's sign_type field decides.
    let recv = Receiver::start(sim.client_config("unused"), 0, Duration::ZERO).await;
    let mut cfg = sim.client_config(&recv.url);
    cfg.credentials.sign_type = SignType::HmacSha256;
    let client = WechatClient::new(cfg);
    let o = order("CR_HMAC_00001", 990);
    client.unified_order(&o).await.expect("hmac order");
    let q = client.order_query(&o.out_trade_no).await.expect("query");
    assert_eq!(q.trade_state, TradeState::NotPay);
    sim.pay(&o.out_trade_no, "").await;
    assert!(wait_for(|| recv.valid() == 1).await);
    {
        let r = recv.state.lock().expect("lock");
        assert_eq!(r.valid[0].sign_type, SignType::HmacSha256);
        assert_eq!(
            r.valid[0].raw.get("sign_type").map(String::as_str),
            Some("HMAC-SHA256")
        );
        assert_eq!(r.valid[0].raw.get("sign").map(String::len), Some(64));
    }
    recv.handle.stop(false).await;
    sim.stop().await;
}

#[actix_web::test]
async fn hmac_notify_without_sign_type_field() {
    // Sandbox-wide HMAC for orders created without sign_type, no sign_type field (WxJava#1585).
    let sim = Sim::start(SandboxConfig {
        sign_type: SignType::HmacSha256,
        ..fast_config()
    })
    .await;
    let recv = Receiver::start(sim.client_config("unused"), 0, Duration::ZERO).await;
    let client = WechatClient::new(sim.client_config(&recv.url));
    let o = order("CR_HMAC_00002", 5);
    client.unified_order(&o).await.expect("order");
    sim.pay(&o.out_trade_no, "").await;
    assert!(wait_for(|| recv.valid() == 1).await);
    {
        let r = recv.state.lock().expect("lock");
        assert_eq!(r.valid[0].sign_type, SignType::HmacSha256);
        assert!(!r.valid[0].raw.contains_key("sign_type"));
    }
    recv.handle.stop(false).await;
    sim.stop().await;
}

#[actix_web::test]
async fn notification_retries_duplicates_drops_and_slow_replies() {
    let sim = Sim::start(fast_config()).await;

    // Retries: the receiver answers FAIL twice, WeChat's schedule (×0.001) retries.
    let recv = Receiver::start(sim.client_config("unused"), 2, Duration::ZERO).await;
    let client = WechatClient::new(sim.client_config(&recv.url));
    let o = order("CR_RETRY_0001", 100);
    client.unified_order(&o).await.expect("order");
    sim.pay(&o.out_trade_no, "").await;
    assert!(wait_for(|| recv.valid() == 3).await);
    let s = sim.acknowledged_state(&o.out_trade_no, 100).await;
    assert_eq!(s["acknowledged"], true);
    assert_eq!(s["notify_attempts"], 3);

    // Duplicates: 1 + 2 concurrent chains, each acknowledged; same transaction everywhere.
    let o = order("CR_DUP_00001", 100);
    client.unified_order(&o).await.expect("order");
    let (_, paid) = sim.pay(&o.out_trade_no, "?duplicates=2&delay_ms=10").await;
    assert_eq!(paid["notification_chains"], 3);
    assert!(wait_for(|| recv.valid() == 6).await);
    {
        let r = recv.state.lock().expect("lock");
        let dups: Vec<_> = r
            .valid
            .iter()
            .filter(|n| n.out_trade_no == o.out_trade_no)
            .collect();
        assert_eq!(dups.len(), 3);
        assert!(
            dups.iter()
                .all(|n| Some(n.transaction_id.as_str()) == paid["transaction_id"].as_str())
        );
        assert_eq!(r.invalid, 0);
    }

    // Dropped: the first delivery is never sent but counts as an attempt.
    sim.post_json(
        "/simulate/faults",
        serde_json::json!({"drop_notifications": 1}),
    )
    .await;
    let o = order("CR_DROP_00001", 100);
    client.unified_order(&o).await.expect("order");
    sim.pay(&o.out_trade_no, "").await;
    assert!(wait_for(|| recv.valid() == 7).await);
    let s = sim.acknowledged_state(&o.out_trade_no, 100).await;
    assert_eq!(s["acknowledged"], true);
    assert_eq!(s["notify_attempts"], 2);

    // notify=false: paid at WeChat, never told.
    let o = order("CR_SILENT_001", 100);
    client.unified_order(&o).await.expect("order");
    let (_, paid) = sim.pay(&o.out_trade_no, "?notify=false").await;
    assert_eq!(paid["notification_chains"], 0);
    let q = client.order_query(&o.out_trade_no).await.expect("query");
    assert_eq!(q.trade_state, TradeState::Success);
    assert_eq!(recv.valid(), 7);

    let mut summary = serde_json::Value::Null;
    for _ in 0..100 {
        summary = sim.get_json("/simulate/notifications").await;
        if summary["pending_chains"] == 0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(summary["pending_chains"], 0);
    assert_eq!(summary["attempts"], 3 + 3 + 2);
    assert_eq!(summary["acknowledged"], 1 + 3 + 1);
    recv.handle.stop(false).await;

    // Slow reply (> the 1 s floor of 5 s × time_scale) counts as failure, then retried.
    let slow = Receiver::start(sim.client_config("unused"), 0, Duration::from_millis(1500)).await;
    let client = WechatClient::new(sim.client_config(&slow.url));
    let o = order("CR_SLOW_00001", 100);
    client.unified_order(&o).await.expect("order");
    sim.pay(&o.out_trade_no, "").await;
    let state = sim.acknowledged_state(&o.out_trade_no, 150).await;
    assert_eq!(state["acknowledged"], true);
    assert_eq!(state["notify_attempts"], 2);
    slow.handle.stop(false).await;
    sim.stop().await;
}

#[actix_web::test]
async fn mounted_under_a_scope() {
    // How the service mounts it: web::scope("/sandbox").configure(...).
    let sb = Sandbox::new(fast_config());
    let sb2 = sb.clone();
    let server = HttpServer::new(move || {
        let sb = sb2.clone();
        App::new().service(web::scope("/sandbox").configure(move |c| sb.configure(c)))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .expect("bind");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    let c = sb.config();
    let client = WechatClient::new(WechatConfig {
        max_retries: 0,
        ..pay_config(
            c,
            &format!("http://{addr}/sandbox"),
            "https://example.com/notify",
        )
    });
    client
        .unified_order(&order("CR_SCOPE_0001", 1))
        .await
        .expect("order");
    let login = LoginClient::new(LoginConfig {
        max_retries: 0,
        ..login_config(c, &format!("http://{addr}/sandbox/"))
    });
    login.code_to_session("abc").await.expect("login");
    handle.stop(false).await;
}
