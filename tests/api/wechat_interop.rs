//! Interop with wechatpy (an independent Python implementation), both directions, plus
//! wechatpy's own WeChatPay client against our sandbox.
//!
//! Needs `COINPAY_TEST_PYTHON` = a python with wechatpy installed. Unset: skipped locally,
//! a failure when `CI=true` (CI must not silently lose this coverage).

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use coinpay::sandbox::{self, Sandbox, SandboxConfig};
use coinpay::wechat::Params;
use coinpay::wechat::client::PayCredentials;
use coinpay::wechat::notify::{self, build_notification};
use coinpay::wechat::sign::{self, SignType};
use coinpay::wechat::xml;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const CHECK_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/wechatpy_check.py"
);
const SANDBOX_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/wechatpy_sandbox.py"
);

fn python() -> Option<String> {
    match std::env::var("COINPAY_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "COINPAY_TEST_PYTHON is not set: CI must provide a python with wechatpy \
                     installed for the WeChat Pay interop tests"
                );
            }
            eprintln!("SKIP wechatpy interop: set COINPAY_TEST_PYTHON to a python with wechatpy");
            None
        }
    }
}

fn run_python(py: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(py)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {py}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "{py} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

const K1: &str = "192006250b4c09247ec02edce69f6a2d";

fn params(pairs: &[(&str, &str)]) -> Params {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The V6 vector of the unit tests (src/wechat/sign.rs): a notify with Chinese text, coupons and
/// an unknown extra field.
fn notify_fields() -> Params {
    serde_json::from_str(include_str!("../interop/notify_v6.json")).expect("the V6 vector")
}

fn cases() -> Vec<(Params, SignType, bool)> {
    let v1 = params(&[
        ("appid", "wxd930ea5d5a258f4f"),
        ("mch_id", "10000100"),
        ("device_info", "1000"),
        ("body", "test"),
        ("nonce_str", "ibuaiVcKdpRxkhJA"),
    ]);
    let mut v3 = v1.clone();
    v3.insert("sign_type".into(), "HMAC-SHA256".into());
    let mut special = notify_fields();
    special.insert("attach".into(), "套餐=基础&count=<10> \"引号\" 'x'".into());
    special.insert("coupon_id_1".into(), "20001".into());
    special.insert("sub_is_subscribe".into(), "Y".into());
    let mut with_empty = notify_fields();
    with_empty.insert("device_info".into(), String::new());
    let mut out = Vec::new();
    for t in [SignType::Md5, SignType::HmacSha256] {
        out.push((v1.clone(), t, false));
        out.push((notify_fields(), t, true));
        out.push((special.clone(), t, true));
        out.push((with_empty.clone(), t, true));
    }
    out.push((v3, SignType::HmacSha256, false));
    out
}

#[test]
fn rust_signs_wechatpy_checks() {
    let Some(py) = python() else { return };
    let cases = cases();
    let input: Vec<Value> = cases
        .iter()
        .map(|(p, t, is_notify)| {
            let mut c = json!({
                "params": p,
                "key": K1,
                "sign_type": t.as_str(),
                "sign": sign::sign(p, K1, *t),
            });
            if *is_notify {
                c["notify_xml"] = json!(build_notification(p, K1, *t, false));
            }
            c
        })
        .collect();
    let out = run_python(&py, &[CHECK_PY, "check"], &json!(input).to_string());
    let results: Vec<Value> = serde_json::from_str(&out).expect("json from python");
    assert_eq!(results.len(), cases.len());
    for ((p, t, is_notify), r) in cases.iter().zip(&results) {
        assert_eq!(r["match"], true, "{t:?} {p:?}: {r}");
        if *t == SignType::Md5 {
            assert_eq!(r["check_signature"], true, "{p:?}: {r}");
            if *is_notify {
                assert_eq!(r["notify_accepted"], true, "{p:?}: {r}");
                // Empty elements come back as None in wechatpy: compare without them.
                if !p.values().any(String::is_empty) {
                    assert_eq!(r["notify_fields_equal"], true, "{p:?}: {r}");
                }
            }
        }
    }
    // The official vectors, as wechatpy computes them.
    assert_eq!(
        results[0]["wechatpy_sign"],
        "9A0A8659F005D6984697E2CA0A9CF3B7"
    );
    assert_eq!(
        results[1]["wechatpy_sign"],
        "6D73FCC02440C35DF46E43DBE82C0FF4"
    );
    assert_eq!(
        results[5]["wechatpy_sign"],
        "75007FA1A7AD61FABBA386C3AAEF169764760233DDE5A0A8CF347F696959FA0C"
    );
    assert_eq!(
        results[8]["wechatpy_sign"],
        "2C9DF1156522C0B2B03B4DBF3BCA5CACB602CBD5CA0F9E112458CF3E9855303B"
    );
}

#[test]
fn wechatpy_signs_rust_verifies() {
    let Some(py) = python() else { return };
    let cases = cases();
    let input: Vec<Value> = cases
        .iter()
        .map(|(p, t, _)| json!({ "params": p, "key": K1, "sign_type": t.as_str() }))
        .collect();
    let out = run_python(&py, &[CHECK_PY, "sign"], &json!(input).to_string());
    let results: Vec<Value> = serde_json::from_str(&out).expect("json from python");
    assert_eq!(results.len(), cases.len());
    for ((p, t, is_notify), r) in cases.iter().zip(&results) {
        let their_sign = r["sign"].as_str().expect("sign");
        assert_eq!(their_sign, sign::sign(p, K1, *t), "{p:?}");
        // wechatpy's XML: newlines between elements, bare numbers, CDATA elsewhere.
        let body = r["xml"].as_str().expect("xml");
        let decoded = xml::decode(body.as_bytes()).expect("decode wechatpy XML");
        let mut expected = p.clone();
        expected.insert("sign".into(), their_sign.to_owned());
        assert_eq!(decoded, expected);
        // Configured type deliberately the other one: the sign's length decides.
        let other = match t {
            SignType::Md5 => SignType::HmacSha256,
            SignType::HmacSha256 => SignType::Md5,
        };
        assert_eq!(sign::verify(&decoded, K1, other), Ok(*t), "{p:?}");
        let mut tampered = decoded.clone();
        tampered.insert("extra_field".into(), "1".into());
        assert!(sign::verify(&tampered, K1, *t).is_err());
        if *is_notify {
            let cfg = PayCredentials {
                app_id: "wxd930ea5d5a258f4f".into(),
                mch_id: "10000100".into(),
                api_key: K1.into(),
                sign_type: other,
            };
            let n = notify::parse(body.as_bytes(), &cfg).expect("wechatpy-signed notify");
            assert_eq!(n.sign_type, *t);
            assert_eq!(n.total_fee, 100);
        }
    }
}

#[actix_web::test]
async fn wechatpy_client_against_sandbox() {
    let Some(py) = python() else { return };
    let cfg = SandboxConfig::default_credentials();
    let sb = Sandbox::new(cfg.clone());
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (server, addrs) = sandbox::serve(bind, sb).expect("bind sandbox");
    let handle = server.handle();
    actix_rt::spawn(server);
    let base = format!("http://{}", addrs[0]);
    let args = [
        SANDBOX_PY.to_owned(),
        base,
        cfg.app_id.clone(),
        cfg.mch_id.clone(),
        cfg.api_key.expose_secret().to_owned(),
        "oWechatpyInteropUser000000001".to_owned(),
    ];
    // Python blocks; the sandbox runs on its own worker threads meanwhile.
    let out = actix_web::rt::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_python(&py, &refs, "")
    })
    .await
    .expect("python thread");
    let r: Value = serde_json::from_str(&out).expect("json from python");
    let prepay = r["unifiedorder"]["prepay_id"].as_str().expect("prepay_id");
    assert!(prepay.starts_with("wx"), "{r}");
    assert_eq!(r["unifiedorder"]["sign_ok"], true, "{r}");
    assert_eq!(r["unifiedorder"]["trade_type"], "JSAPI");
    assert_eq!(r["reentry_prepay_id"], prepay, "{r}");
    assert_eq!(r["changed_params"], "OUT_TRADE_NO_USED", "{r}");
    assert_eq!(r["query"]["trade_state"], "NOTPAY", "{r}");
    assert_eq!(r["query"]["sign_ok"], true, "{r}");
    assert_eq!(r["close"]["result_code"], "SUCCESS", "{r}");
    assert_eq!(r["close"]["sign_ok"], true, "{r}");
    assert_eq!(r["query_after_close"], "CLOSED", "{r}");
    assert_eq!(r["close_again"], "ORDERCLOSED", "{r}");
    assert_eq!(r["query_unknown"], "ORDERNOTEXIST", "{r}");
    assert!(r["hmac_unifiedorder"]["prepay_id"].is_string(), "{r}");
    assert_eq!(r["hmac_unifiedorder"]["sign_ok"], true, "{r}");
    assert_eq!(r["wrong_key"], "SIGNERROR", "{r}");
    handle.stop(false).await;
}
