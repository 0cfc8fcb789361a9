//! Refunds, refund notifications and bills end to end between the real `WechatClient` and the
//! simulator over its TLS listener (mutual TLS for `secapi/pay/refund`): our request → the
//! simulator's parser → its reply → our parser.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use chrono::{NaiveDate, Utc};
use coinpay::sandbox::{Sandbox, SandboxConfig, SandboxTls, serve_tls};
use coinpay::wechat::bill::{BillDownload, BillError, BillRequest, BillTradeState};
use coinpay::wechat::client::{
    PayCredentials, UnifiedOrder, WechatClient, WechatConfig, WechatError,
};
use coinpay::wechat::refund::{
    RefundClient, RefundDisposition, RefundQueryKey, RefundRequest, RefundStatus,
};
use coinpay::wechat::refund_notify::{self, RefundNotifyInfo};
use coinpay::wechat::sign::SignType;
use coinpay::wechat::tls::PayTls;
use coinpay::wechat::xml;
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};

use crate::helpers::post_endpoint;

struct Sim {
    sb: Sandbox,
    tls: SandboxTls,
    base: String,
    handle: actix_web::dev::ServerHandle,
}

impl Sim {
    async fn start() -> Sim {
        let cfg = SandboxConfig {
            time_scale: 0.001,
            ..SandboxConfig::default_credentials()
        };
        let tls = SandboxTls::generate(&cfg.mch_id).expect("generate TLS");
        let sb = Sandbox::new(cfg);
        let bind: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (server, addr) = serve_tls(bind, sb.clone(), &tls).expect("bind TLS sandbox");
        let handle = server.handle();
        actix_rt::spawn(server);
        Sim {
            sb,
            tls,
            base: format!("https://{addr}"),
            handle,
        }
    }

    fn config(&self) -> WechatConfig {
        let c = self.sb.config();
        WechatConfig {
            credentials: PayCredentials {
                app_id: c.app_id.clone(),
                mch_id: c.mch_id.clone(),
                api_key: c.api_key.clone(),
                sign_type: SignType::Md5,
            },
            pay_api_base: self.base.clone(),
            notify_url: "https://example.com/notify".into(),
            timeout: Duration::from_secs(3),
            max_retries: 2,
        }
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![self.tls.ca_der()]
    }

    /// With the merchant certificate (and the test CA trusted).
    fn client(&self) -> WechatClient {
        let id = self.tls.merchant_identity().expect("identity");
        let tls = PayTls::new(&self.roots(), Some(&id)).expect("tls");
        WechatClient::new(self.config()).with_tls(tls)
    }

    fn refunds(&self) -> RefundClient {
        self.client().refunds().expect("a client certificate")
    }

    /// The test CA trusted, no client certificate.
    fn plain_client(&self) -> WechatClient {
        let tls = PayTls::new(&self.roots(), None).expect("tls");
        WechatClient::new(self.config()).with_tls(tls)
    }

    /// A raw HTTPS client without a client certificate, for `/simulate/*` and for bypassing
    /// our own refund client.
    fn https(&self) -> awc::Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.tls.ca_der()).expect("CA");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(Arc::new(config)))
            .finish()
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let mut resp = self
            .https()
            .post(format!("{}{path}", self.base))
            .send_json(&body)
            .await
            .expect("simulate call");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let mut resp = self
            .https()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("simulate call");
        resp.json().await.expect("json")
    }

    /// A unified order paid at the simulator (no payment notification); returns transaction_id.
    async fn paid_order(&self, no: &str, fee: i64, time_end: Option<&str>) -> String {
        let now = Utc::now();
        self.client()
            .unified_order(&UnifiedOrder {
                out_trade_no: no.to_owned(),
                body: "coinpay-算力充值".into(),
                total_fee: fee,
                spbill_create_ip: "127.0.0.1".into(),
                openid: "oTestOpenid0000000000000000x".into(),
                time_start: now,
                time_expire: now + chrono::Duration::minutes(30),
                attach: None,
            })
            .await
            .expect("unifiedorder");
        let q = match time_end {
            Some(t) => format!("?notify=false&time_end={t}"),
            None => "?notify=false".into(),
        };
        let (status, v) = self
            .post(&format!("/simulate/pay/{no}{q}"), json!({}))
            .await;
        assert_eq!(status, 200, "{v}");
        v["transaction_id"].as_str().expect("tx").to_owned()
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// A merchant refund-notify endpoint that decrypts with `refund_notify::parse`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<RefundNotifyInfo>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    async fn start(cfg: WechatConfig) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let (url, handle) = post_endpoint("/refund/callback", move |body: web::Bytes| {
            let g = g.clone();
            let cfg = cfg.clone();
            async move {
                let reply = match refund_notify::parse(&body, &cfg.credentials) {
                    Ok(n) => {
                        g.lock().expect("lock").push(n.info);
                        xml::SUCCESS_REPLY.to_owned()
                    }
                    Err(e) => xml::fail_reply(e.reply_msg()),
                };
                HttpResponse::Ok().content_type("text/xml").body(reply)
            }
        });
        Receiver { url, got, handle }
    }

    fn got(&self) -> Vec<RefundNotifyInfo> {
        self.got.lock().expect("lock").clone()
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

fn biz_code(e: &WechatError) -> &str {
    match e {
        WechatError::Business { code, .. } => code,
        _ => "",
    }
}

fn refund(no: &str, rno: &str, total: i64, fee: i64, notify: Option<&str>) -> RefundRequest {
    let r = RefundRequest::new(no, rno, total, fee)
        .expect("valid")
        .refund_desc("未使用算力退款")
        .expect("desc");
    match notify {
        Some(u) => r.notify_url(u).expect("url"),
        None => r,
    }
}

fn today_beijing() -> NaiveDate {
    (Utc::now() + chrono::Duration::hours(8)).date_naive()
}

#[actix_rt::test]
async fn refund_needs_the_client_certificate() {
    let sim = Sim::start().await;
    sim.paid_order("CRTLS0001", 100, None).await;
    let req = refund("CRTLS0001", "RFTLS0001", 100, 40, None);

    // Without a certificate there is no refund client…
    assert!(sim.plain_client().refunds().is_none());

    // …and the TLS listener refuses such a request as WeChat's nginx does.
    let body = xml::encode(&req.fields());
    let mut resp = sim
        .https()
        .post(format!("{}/secapi/pay/refund", sim.base))
        .send_body(body)
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.body().await.expect("body");
    assert!(String::from_utf8_lossy(&text).contains("No required SSL certificate was sent"));

    // A certificate from another CA fails the handshake.
    let other = SandboxTls::generate("1900000109").expect("other CA");
    let foreign = other.merchant_identity().expect("identity");
    let tls = PayTls::new(&sim.roots(), Some(&foreign)).expect("tls");
    let e = WechatClient::new(sim.config())
        .with_tls(tls)
        .refunds()
        .expect("a certificate")
        .refund(&req)
        .await
        .expect_err("foreign certificate");
    assert!(
        matches!(e, WechatError::Transport(_)),
        "foreign certificate: {e:?}"
    );
    assert_eq!(e.refund_disposition(), RefundDisposition::Retry);

    // With the merchant certificate it is accepted.
    let ok = sim.refunds().refund(&req).await.expect("accepted");
    assert_eq!(ok.out_refund_no, "RFTLS0001");
    assert_eq!((ok.refund_fee, ok.total_fee), (40, 100));
    assert!(ok.refund_id.starts_with("503"));

    let v = sim.get("/simulate/refunds").await;
    let results: Vec<&str> = v["received"]
        .as_array()
        .expect("received")
        .iter()
        .map(|c| c["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(results, ["NO_CLIENT_CERT", "SUCCESS"], "{v}");
    assert_eq!(v["refunds"].as_array().map(Vec::len), Some(1));
    sim.stop().await;
}

#[actix_rt::test]
async fn refund_is_notified_encrypted_and_queryable() {
    let sim = Sim::start().await;
    let rx = Receiver::start(sim.config()).await;
    let tx = sim.paid_order("CRNOTE0001", 300, None).await;
    let client = sim.refunds();
    let r1 = refund("CRNOTE0001", "RFNOTE0001", 300, 100, Some(&rx.url));
    let r2 = refund("CRNOTE0001", "RFNOTE0002", 300, 200, Some(&rx.url)).transaction_id(&tx);
    client.refund(&r1).await.expect("first partial");
    client.refund(&r2).await.expect("second partial");
    assert!(wait_for(|| rx.got().len() == 2).await, "two notifications");
    let got = rx.got();
    for info in &got {
        assert_eq!(info.out_trade_no, "CRNOTE0001");
        assert_eq!(info.transaction_id, tx);
        assert_eq!(info.total_fee, 300);
        assert_eq!(info.refund_status, RefundStatus::Success);
        assert!(info.success_time.is_some());
        assert_eq!(info.refund_request_source.as_deref(), Some("API"));
    }
    let mut fees: Vec<i64> = got.iter().map(|i| i.refund_fee).collect();
    fees.sort_unstable();
    assert_eq!(fees, [100, 200]);

    // Nothing is left to refund.
    let e = client
        .refund(&refund("CRNOTE0001", "RFNOTE0003", 300, 1, None))
        .await
        .expect_err("over the paid amount");
    assert_eq!(biz_code(&e), "ERROR");
    assert_eq!(e.refund_disposition(), RefundDisposition::Final);

    let one = client
        .pay()
        .refund_query(&RefundQueryKey::OutRefundNo("RFNOTE0002".into()))
        .await
        .expect("query one");
    assert_eq!(one.refunds.len(), 1);
    assert_eq!(one.refunds[0].status, RefundStatus::Success);
    assert_eq!(one.refunds[0].refund_fee, 200);
    let all = client
        .pay()
        .refund_query(&RefundQueryKey::OutTradeNo {
            out_trade_no: "CRNOTE0001".into(),
            offset: 0,
        })
        .await
        .expect("query order");
    assert_eq!(all.total_refund_count, Some(2));
    assert_eq!(
        all.refunds
            .iter()
            .map(|r| r.out_refund_no.as_str())
            .collect::<Vec<_>>(),
        ["RFNOTE0001", "RFNOTE0002"]
    );
    let e = client
        .pay()
        .refund_query(&RefundQueryKey::OutRefundNo("RFNOPE".into()))
        .await
        .expect_err("unknown");
    assert_eq!(biz_code(&e), "REFUNDNOTEXIST");

    let v = sim.get("/simulate/refunds/RFNOTE0001").await;
    assert_eq!(v["acknowledged"], true, "{v}");
    rx.handle.stop(false).await;
    sim.stop().await;
}

#[actix_rt::test]
async fn systemerror_is_resent_with_the_same_out_refund_no() {
    let sim = Sim::start().await;
    sim.paid_order("CRRETRY001", 100, None).await;
    let client = sim.refunds();

    // Refused twice before anything happened: the client's own retries (same bytes) win.
    let (s, _) = sim
        .post(
            "/simulate/refunds/faults",
            json!({"fail_code": "SYSTEMERROR", "fail_times": 2}),
        )
        .await;
    assert_eq!(s, 200);
    let ok = client
        .refund(&refund("CRRETRY001", "RFRETRY001", 100, 30, None))
        .await
        .expect("third attempt");
    let v = sim.get("/simulate/refunds/RFRETRY001").await;
    let calls = v["received"].as_array().expect("calls");
    assert_eq!(calls.len(), 3, "{v}");
    assert!(
        calls
            .iter()
            .all(|c| c["nonce_str"] == calls[0]["nonce_str"])
    );
    assert_eq!(v["requests"], 1);

    // Done at WeChat but answered SYSTEMERROR every time: the caller keeps the number, and the
    // re-sent request finds the same refund.
    sim.post(
        "/simulate/refunds/faults",
        json!({"fail_code": "SYSTEMERROR", "fail_times": 3, "fail_after_accept": true}),
    )
    .await;
    let req = refund("CRRETRY001", "RFRETRY002", 100, 70, None);
    let e = client.refund(&req).await.expect_err("systemerror");
    assert_eq!(biz_code(&e), "SYSTEMERROR");
    assert_eq!(e.refund_disposition(), RefundDisposition::Retry);
    let again = client.refund(&req).await.expect("re-sent");
    let v = sim.get("/simulate/refunds").await;
    let refunds = v["refunds"].as_array().expect("refunds");
    assert_eq!(
        refunds.len(),
        2,
        "exactly one refund per out_refund_no: {v}"
    );
    let second = &refunds[1];
    assert_eq!(second["out_refund_no"], "RFRETRY002");
    assert_eq!(second["refund_id"], again.refund_id.as_str());
    assert_eq!(second["requests"], 4);
    assert_ne!(ok.refund_id, again.refund_id);

    // The same number with another amount is refused, finally.
    let e = client
        .refund(&refund("CRRETRY001", "RFRETRY002", 100, 60, None))
        .await
        .expect_err("other amount");
    assert_eq!(biz_code(&e), "INVALID_REQUEST");
    assert_eq!(e.refund_disposition(), RefundDisposition::Final);
    sim.stop().await;
}

#[actix_rt::test]
async fn final_refusals_and_limits() {
    let sim = Sim::start().await;
    sim.paid_order("CRFINAL001", 60, None).await;
    let client = sim.refunds();

    sim.post(
        "/simulate/refunds/faults",
        json!({"fail_code": "NOTENOUGH"}),
    )
    .await;
    let e = client
        .refund(&refund("CRFINAL001", "RFFINAL000", 60, 10, None))
        .await
        .expect_err("notenough");
    assert_eq!(biz_code(&e), "NOTENOUGH");
    assert_eq!(e.refund_disposition(), RefundDisposition::Final);
    let (s, _) = sim
        .post("/simulate/refunds/faults", json!({"fail_code": "NOPE"}))
        .await;
    assert_eq!(s, 400, "unknown codes are refused");

    // Unpaid and unknown orders.
    let e = client
        .refund(&refund("CRNOTPAID1", "RFFINAL001", 60, 10, None))
        .await
        .expect_err("unknown order");
    assert_eq!(biz_code(&e), "ORDERNOTEXIST");
    // total_fee must be the order's.
    let e = client
        .refund(&refund("CRFINAL001", "RFFINAL002", 61, 10, None))
        .await
        .expect_err("total");
    assert_eq!(biz_code(&e), "PARAM_ERROR");

    // 50 refunds per order, the 51st refused.
    for i in 0..50 {
        client
            .refund(&refund("CRFINAL001", &format!("RFLIM{i:03}"), 60, 1, None))
            .await
            .expect("within 50");
    }
    let e = client
        .refund(&refund("CRFINAL001", "RFLIM050", 60, 1, None))
        .await
        .expect_err("51st");
    assert_eq!(biz_code(&e), "ERROR");
    sim.stop().await;
}

#[actix_rt::test]
async fn refundclose_change_processing_and_never_notified() {
    let sim = Sim::start().await;
    let rx = Receiver::start(sim.config()).await;
    sim.paid_order("CROUT00001", 400, None).await;
    let client = sim.refunds();
    let status_of = |no: &str| {
        rx.got()
            .into_iter()
            .find(|i| i.out_refund_no == no)
            .map(|i| i.refund_status)
    };

    sim.post(
        "/simulate/refunds/faults",
        json!({"outcome": "REFUNDCLOSE"}),
    )
    .await;
    client
        .refund(&refund("CROUT00001", "RFCLOSE01", 400, 100, Some(&rx.url)))
        .await
        .expect("accepted");
    assert!(wait_for(|| status_of("RFCLOSE01").is_some()).await);
    assert_eq!(status_of("RFCLOSE01"), Some(RefundStatus::RefundClose));

    sim.post("/simulate/refunds/faults", json!({"outcome": "CHANGE"}))
        .await;
    client
        .refund(&refund("CROUT00001", "RFCHANGE1", 400, 100, Some(&rx.url)))
        .await
        .expect("accepted");
    assert!(wait_for(|| status_of("RFCHANGE1").is_some()).await);
    assert_eq!(status_of("RFCHANGE1"), Some(RefundStatus::Change));

    // PROCESSING until settled by hand.
    sim.post("/simulate/refunds/faults", json!({"outcome": "PROCESSING"}))
        .await;
    client
        .refund(&refund("CROUT00001", "RFPROC001", 400, 100, Some(&rx.url)))
        .await
        .expect("accepted");
    let q = client
        .pay()
        .refund_query(&RefundQueryKey::OutRefundNo("RFPROC001".into()))
        .await
        .expect("query");
    assert_eq!(q.refunds[0].status, RefundStatus::Processing);
    let (s, v) = sim
        .post(
            "/simulate/refunds/RFPROC001/settle",
            json!({"status": "SUCCESS"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(wait_for(|| status_of("RFPROC001").is_some()).await);
    let (s, _) = sim
        .post(
            "/simulate/refunds/RFPROC001/settle",
            json!({"status": "SUCCESS"}),
        )
        .await;
    assert_eq!(s, 409, "settled once");

    // Settled but never notified: only refundquery tells.
    sim.post(
        "/simulate/refunds/faults",
        json!({"outcome": "SUCCESS", "never_notify": true}),
    )
    .await;
    client
        .refund(&refund("CROUT00001", "RFSILENT1", 400, 50, Some(&rx.url)))
        .await
        .expect("accepted");
    let q = client
        .pay()
        .refund_query(&RefundQueryKey::OutRefundNo("RFSILENT1".into()))
        .await
        .expect("query");
    assert_eq!(q.refunds[0].status, RefundStatus::Success);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status_of("RFSILENT1"), None);
    let v = sim.get("/simulate/refunds/RFSILENT1").await;
    assert_eq!(v["notify_attempts"], 0);

    // A closed refund gives its amount back: 100 (CHANGE) + 100 + 50 + 150 make the 400.
    client
        .refund(&refund("CROUT00001", "RFREST001", 400, 150, None))
        .await
        .expect("the rest");
    rx.handle.stop(false).await;
    sim.stop().await;
}

#[actix_rt::test]
async fn bill_of_the_simulators_own_payments_and_refunds() {
    let sim = Sim::start().await;
    let client = sim.refunds();
    let day = NaiveDate::from_ymd_opt(2025, 11, 30).expect("date");
    let tx1 = sim
        .paid_order("CRBILL0001", 100, Some("20251130235959"))
        .await;
    sim.paid_order("CRBILL0002", 250, Some("20251130080000"))
        .await;
    sim.paid_order("CRBILL0003", 999, Some("20251201000001"))
        .await;
    // Refunds are dated by submission: today, Beijing time.
    sim.paid_order("CRBILL0004", 500, None).await;
    client
        .refund(&refund("CRBILL0004", "RFBILL0001", 500, 120, None))
        .await
        .expect("refund");

    let BillDownload::Bill(raw) = client
        .pay()
        .download_bill(&BillRequest::all(day))
        .await
        .expect("bill")
    else {
        panic!("expected a bill");
    };
    assert!(raw.gzip);
    let bill = raw.parse().expect("parses");
    let mut nos: Vec<&str> = bill.rows.iter().map(|r| r.out_trade_no.as_str()).collect();
    nos.sort_unstable();
    assert_eq!(nos, ["CRBILL0001", "CRBILL0002"]);
    let late = bill
        .rows
        .iter()
        .find(|r| r.out_trade_no == "CRBILL0001")
        .expect("row");
    assert_eq!(late.transaction_id, tx1);
    assert_eq!((late.settlement_fen, late.order_fen), (100, 100));
    assert_eq!(late.fee_millifen, 600);
    assert_eq!(late.trade_time.to_rfc3339(), "2025-11-30T15:59:59+00:00");
    assert_eq!(bill.summary.count, 2);
    assert_eq!(bill.summary.settlement_fen, 350);

    // Today's bill, plain: the refund row.
    let plain = BillRequest {
        bill_date: today_beijing(),
        gzip: false,
    };
    let BillDownload::Bill(raw) = client.pay().download_bill(&plain).await.expect("bill") else {
        panic!("expected today's bill");
    };
    assert!(!raw.gzip);
    let today = raw.parse().expect("parses");
    let r = today.refunds().next().expect("refund row");
    assert_eq!(r.trade_state, BillTradeState::Refund);
    assert_eq!(r.out_refund_no.as_deref(), Some("RFBILL0001"));
    assert_eq!((r.refund_fen, r.settlement_fen), (120, 0));
    assert_eq!(r.fee_millifen, -720);
    assert!(today.payments().any(|p| p.out_trade_no == "CRBILL0004"));
    assert_eq!(today.summary.refund_fen, 120);

    // An empty day.
    let empty = NaiveDate::from_ymd_opt(2020, 1, 1).expect("date");
    assert_eq!(
        client.pay().download_bill(&BillRequest::all(empty)).await,
        Ok(BillDownload::NoBill)
    );
    sim.stop().await;
}

#[actix_rt::test]
async fn bill_faults() {
    let sim = Sim::start().await;
    let client = sim.refunds();
    let day = NaiveDate::from_ymd_opt(2026, 11, 29).expect("date");
    sim.paid_order("CRBF000001", 100, Some("20261129120000"))
        .await;
    sim.paid_order("CRBF000002", 200, Some("20261129130000"))
        .await;
    let fetch = || async {
        match client.pay().download_bill(&BillRequest::all(day)).await {
            Ok(BillDownload::Bill(raw)) => raw.parse(),
            Ok(BillDownload::NoBill) => panic!("expected a bill"),
            Err(e) => Err(e),
        }
    };

    // Extra payment, changed amount, dropped row: a well-formed bill that differs.
    let (s, v) = sim
        .post(
            "/simulate/bills/faults",
            json!({
                "extra_payment": {"out_trade_no": "CRSTRANGER1", "total_fee": 777,
                                  "time": "2026-11-29 09:00:00"},
                "extra_refund": {"out_trade_no": "CRBF000001", "out_refund_no": "RFPORTAL1",
                                 "refund_fee": 5},
                "change_amount": {"id": "CRBF000001", "fen": 101},
                "drop": ["CRBF000002"],
            }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let bill = fetch().await.expect("well-formed");
    let amounts: Vec<(&str, i64, i64)> = bill
        .rows
        .iter()
        .map(|r| (r.out_trade_no.as_str(), r.settlement_fen, r.refund_fen))
        .collect();
    assert_eq!(
        amounts,
        [
            ("CRSTRANGER1", 777, 0),
            ("CRBF000001", 101, 0),
            ("CRBF000001", 0, 5)
        ]
    );
    assert_eq!(bill.summary.settlement_fen, 878);

    for (fault, kind) in [
        (json!({"corrupt": true}), "bad_gzip"),
        (json!({"unknown_layout": true}), "unknown_layout"),
        (json!({"bad_amount": true}), "bad_amount"),
    ] {
        sim.post("/simulate/bills/faults", fault.clone()).await;
        let e = fetch().await.expect_err("fault");
        assert_eq!(e.kind(), kind, "{fault}: {e}");
        assert!(!e.is_retryable());
    }
    sim.post("/simulate/bills/faults", json!({"creating": true}))
        .await;
    let e = client
        .pay()
        .download_bill(&BillRequest::all(day))
        .await
        .expect_err("creating");
    assert_eq!(e, BillError::Creating);
    assert!(e.is_retryable());

    // A wrongly signed request is refused the downloadbill way.
    let mut bad = sim.config();
    bad.credentials.api_key = "x".repeat(32).into();
    let e = WechatClient::new(bad)
        .with_tls(PayTls::new(&sim.roots(), None).expect("tls"))
        .download_bill(&BillRequest::all(day))
        .await
        .expect_err("bad sign");
    assert!(
        matches!(e, BillError::Refused { ref return_msg, .. } if return_msg == "SIGN ERROR"),
        "{e}"
    );
    sim.stop().await;
}
