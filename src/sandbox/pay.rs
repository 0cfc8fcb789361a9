//! `/pay/unifiedorder`, `/pay/orderquery`, `/pay/closeorder`: XML in, XML out, like WeChat.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use chrono::NaiveDateTime;
use rand::Rng;
use secrecy::ExposeSecret;

use super::Sandbox;
use super::state::{SimOrder, SimTradeState};
use crate::wechat::Params;
use crate::wechat::client::format_beijing;
use crate::wechat::sign::{self, SignType};
use crate::wechat::xml;

#[derive(Clone, Copy, Debug)]
pub(super) enum Api {
    UnifiedOrder,
    OrderQuery,
    CloseOrder,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::UnifiedOrder => "unifiedorder",
            Api::OrderQuery => "orderquery",
            Api::CloseOrder => "closeorder",
        }
    }
}

/// A request that passed the communication-level checks (XML, merchant, signature).
pub(super) struct Verified {
    pub params: Params,
    pub sign_type: SignType,
}

/// A reply to send: unsigned `return_code=FAIL`, or a signed business result.
pub(super) enum Reply {
    /// return_code FAIL: WeChat does not sign these. `err_code` is an extension that
    /// lets clients tell SIGNERROR etc. apart.
    CommFail { code: &'static str, msg: String },
    /// result_code FAIL (signed).
    BizFail { code: &'static str, des: String },
    /// result_code SUCCESS with extra fields (signed).
    Ok(Params),
}

pub(super) fn xml_response(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/xml; charset=utf-8")
        .body(body)
}

pub(super) async fn handle(
    sb: web::Data<Sandbox>,
    api: web::Data<Api>,
    body: web::Bytes,
) -> HttpResponse {
    let api = **api;
    let latency = sb.state().faults.latency_ms;
    let (reply, verified) = match sb.check_request(&body) {
        Err(reply) => (reply, None),
        Ok(v) => {
            let reply = sb.process(api, &v);
            (reply, Some(v))
        }
    };
    let (result, code) = match &reply {
        Reply::CommFail { code, .. } | Reply::BizFail { code, .. } => ("FAIL", *code),
        Reply::Ok(_) => ("SUCCESS", ""),
    };
    let no = verified
        .as_ref()
        .and_then(|v| v.params.get("out_trade_no").cloned())
        .unwrap_or_default();
    tracing::info!(api = api.name(), out_trade_no = %no, result, err_code = code, "sandbox pay call");
    let out = sb.render(reply, verified.as_ref());
    if latency > 0 {
        actix_rt::time::sleep(Duration::from_millis(latency)).await;
    }
    xml_response(out)
}

pub(super) fn lack(field: &str) -> String {
    format!("缺少参数{field}")
}

pub(super) fn nonempty<'a>(p: &'a Params, k: &str) -> Option<&'a str> {
    p.get(k).map(String::as_str).filter(|v| !v.is_empty())
}

/// WeChat appids look like `wx` + 16 hex digits.
fn looks_like_appid(s: &str) -> bool {
    s.len() == 18 && s.starts_with("wx") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn valid_out_trade_no(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*'))
}

/// WeChat's `yyyyMMddHHmmss`.
pub(super) fn parse_time(s: &str) -> Option<NaiveDateTime> {
    if s.len() != 14 {
        return None;
    }
    NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok()
}

pub(super) fn random_digits(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

fn random_hex(n: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(HEX[rng.random_range(0..16usize)]))
        .collect()
}

pub(super) fn new_transaction_id() -> String {
    format!("4200{}", random_digits(24))
}

impl Sandbox {
    /// XML, required envelope fields, merchant, signature (with the request's sign_type,
    /// MD5 when absent — the server side never guesses). Failures here are unsigned.
    pub(super) fn check_request(&self, body: &[u8]) -> Result<Verified, Reply> {
        if body.is_empty() {
            return Err(Reply::CommFail {
                code: "POST_DATA_EMPTY",
                msg: "post数据为空".into(),
            });
        }
        let params = xml::decode(body).map_err(|e| Reply::CommFail {
            code: "XML_FORMAT_ERROR",
            msg: format!("XML格式错误: {e}"),
        })?;
        for f in ["appid", "mch_id", "nonce_str", "sign"] {
            if nonempty(&params, f).is_none() {
                return Err(Reply::CommFail {
                    code: "LACK_PARAMS",
                    msg: lack(f),
                });
            }
        }
        let cfg = &self.inner.cfg;
        if params.get("mch_id") != Some(&cfg.mch_id) {
            return Err(Reply::CommFail {
                code: "MCHID_NOT_EXIST",
                msg: "商户号不存在".into(),
            });
        }
        let sign_type = match nonempty(&params, "sign_type") {
            None => SignType::Md5,
            Some(s) => s.parse::<SignType>().map_err(|_| Reply::CommFail {
                code: "INVALID_REQUEST",
                msg: "sign_type参数错误".into(),
            })?,
        };
        let expected = sign::sign(&params, cfg.api_key.expose_secret(), sign_type);
        let got = params.get("sign").map(String::as_str).unwrap_or("");
        if !sign::constant_time_eq(expected.as_bytes(), got.as_bytes()) {
            return Err(Reply::CommFail {
                code: "SIGNERROR",
                msg: "签名错误".into(),
            });
        }
        Ok(Verified { params, sign_type })
    }

    /// The appid must be the one bound to our mch_id (every pay and secapi call).
    pub(super) fn check_appid(&self, v: &Verified) -> Result<(), Reply> {
        if v.params.get("appid") == Some(&self.inner.cfg.app_id) {
            return Ok(());
        }
        let appid = v.params.get("appid").map(String::as_str).unwrap_or("");
        Err(if looks_like_appid(appid) {
            Reply::BizFail {
                code: "APPID_MCHID_NOT_MATCH",
                des: "appid和mch_id不匹配".into(),
            }
        } else {
            Reply::BizFail {
                code: "APPID_NOT_EXIST",
                des: "APPID不存在".into(),
            }
        })
    }

    fn process(&self, api: Api, v: &Verified) -> Reply {
        if let Err(reply) = self.check_appid(v) {
            return reply;
        }
        {
            let mut st = self.state();
            if st.faults.systemerror > 0 {
                st.faults.systemerror -= 1;
                return Reply::BizFail {
                    code: "SYSTEMERROR",
                    des: "系统错误".into(),
                };
            }
        }
        match api {
            Api::UnifiedOrder => self.unified_order(v),
            Api::OrderQuery => self.order_query(v),
            Api::CloseOrder => self.close_order(v),
        }
    }

    fn unified_order(&self, v: &Verified) -> Reply {
        let p = &v.params;
        for f in [
            "body",
            "out_trade_no",
            "total_fee",
            "spbill_create_ip",
            "notify_url",
            "trade_type",
        ] {
            if nonempty(p, f).is_none() {
                return Reply::BizFail {
                    code: "LACK_PARAMS",
                    des: lack(f),
                };
            }
        }
        let get = |k: &str| nonempty(p, k).unwrap_or("");
        let invalid = |des: &str| Reply::BizFail {
            code: "INVALID_REQUEST",
            des: des.to_owned(),
        };
        let trade_type = get("trade_type");
        if !matches!(trade_type, "JSAPI" | "NATIVE" | "APP" | "MWEB") {
            return invalid("trade_type参数错误");
        }
        if trade_type == "JSAPI" && nonempty(p, "openid").is_none() {
            return Reply::BizFail {
                code: "LACK_PARAMS",
                des: lack("openid"),
            };
        }
        let out_trade_no = get("out_trade_no").to_owned();
        if !valid_out_trade_no(&out_trade_no) {
            return invalid("out_trade_no参数错误");
        }
        let total_fee = match get("total_fee") {
            s if s.bytes().all(|b| b.is_ascii_digit()) => s.parse::<i64>().ok(),
            _ => None,
        };
        let Some(total_fee) = total_fee.filter(|v| *v > 0) else {
            return invalid("total_fee参数错误，必须为正整数");
        };
        let start = match nonempty(p, "time_start") {
            Some(s) => match parse_time(s) {
                Some(t) => Some(t),
                None => return invalid("time_start时间格式错误"),
            },
            None => None,
        };
        if let Some(s) = nonempty(p, "time_expire") {
            let Some(expire) = parse_time(s) else {
                return invalid("time_expire时间格式错误");
            };
            if start.is_some_and(|st| expire < st) {
                return invalid("time_expire时间过短");
            }
        }
        let notify_ok = url::Url::parse(get("notify_url"))
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
        if !notify_ok {
            return invalid("notify_url参数错误，须为不带参数的http(s)地址");
        }

        let business: Params = p
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "nonce_str" | "sign" | "sign_type"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut st = self.state();
        if let Some(order) = st.orders.get(&out_trade_no) {
            return match order.trade_state {
                SimTradeState::Success => Reply::BizFail {
                    code: "ORDERPAID",
                    des: "该订单已支付".into(),
                },
                SimTradeState::Closed => Reply::BizFail {
                    code: "ORDERCLOSED",
                    des: "该订单已关闭".into(),
                },
                SimTradeState::NotPay | SimTradeState::UserPaying if order.business == business => {
                    Reply::Ok(prepay_fields(trade_type, &order.prepay_id))
                }
                SimTradeState::NotPay | SimTradeState::UserPaying => Reply::BizFail {
                    code: "OUT_TRADE_NO_USED",
                    des: "商户订单号重复".into(),
                },
            };
        }
        let prepay_id = format!("wx{}{}", format_beijing(chrono::Utc::now()), random_hex(20));
        let notify_sign_type = if nonempty(p, "sign_type").is_some() {
            v.sign_type
        } else {
            self.inner.cfg.sign_type
        };
        st.orders.insert(
            out_trade_no.clone(),
            SimOrder {
                business,
                appid: get("appid").to_owned(),
                out_trade_no,
                prepay_id: prepay_id.clone(),
                total_fee,
                openid: get("openid").to_owned(),
                attach: nonempty(p, "attach").map(str::to_owned),
                notify_url: get("notify_url").to_owned(),
                notify_sign_type,
                trade_state: SimTradeState::NotPay,
                transaction_id: None,
                time_end: None,
                notify_attempts: 0,
                acknowledged: false,
            },
        );
        Reply::Ok(prepay_fields(trade_type, &prepay_id))
    }

    fn order_query(&self, v: &Verified) -> Reply {
        let p = &v.params;
        let st = self.state();
        // transaction_id wins when both are given (§5).
        let key = match (nonempty(p, "transaction_id"), nonempty(p, "out_trade_no")) {
            (Some(tx), _) => st.by_transaction.get(tx).cloned(),
            (None, Some(no)) => Some(no.to_owned()),
            (None, None) => {
                return Reply::BizFail {
                    code: "LACK_PARAMS",
                    des: lack("out_trade_no"),
                };
            }
        };
        let Some(order) = key.and_then(|k| st.orders.get(&k)) else {
            return Reply::BizFail {
                code: "ORDERNOTEXIST",
                des: "此交易订单号不存在".into(),
            };
        };
        let mut f = Params::new();
        f.insert("out_trade_no".into(), order.out_trade_no.clone());
        f.insert("trade_state".into(), order.trade_state.as_str().into());
        f.insert("trade_state_desc".into(), order.trade_state.desc().into());
        if order.trade_state == SimTradeState::Success {
            f.extend(paid_fields(order));
        }
        Reply::Ok(f)
    }

    fn close_order(&self, v: &Verified) -> Reply {
        let Some(no) = nonempty(&v.params, "out_trade_no") else {
            return Reply::BizFail {
                code: "LACK_PARAMS",
                des: lack("out_trade_no"),
            };
        };
        let mut st = self.state();
        let Some(order) = st.orders.get_mut(no) else {
            return Reply::BizFail {
                code: "ORDERNOTEXIST",
                des: "此交易订单号不存在".into(),
            };
        };
        match order.trade_state {
            SimTradeState::Success => Reply::BizFail {
                code: "ORDERPAID",
                des: "订单已支付，不能发起关单".into(),
            },
            SimTradeState::Closed => Reply::BizFail {
                code: "ORDERCLOSED",
                des: "订单已关闭，无法重复关闭".into(),
            },
            // A payment in progress is closed too: the simulator does not shield a merchant
            // that closes without asking first, so that tests can see one that does.
            SimTradeState::NotPay | SimTradeState::UserPaying => {
                // WeChat's 5-minute minimum before closing is not enforced: tests need it fast.
                order.trade_state = SimTradeState::Closed;
                let mut f = Params::new();
                f.insert("result_msg".into(), "OK".into());
                Reply::Ok(f)
            }
        }
    }

    /// FAIL replies are unsigned; everything else is signed with the request's sign_type and
    /// echoes its appid/mch_id.
    pub(super) fn render(&self, reply: Reply, verified: Option<&Verified>) -> String {
        let mut f = Params::new();
        let (fields, result) = match reply {
            Reply::CommFail { code, msg } if verified.is_none() => {
                f.insert("return_code".into(), "FAIL".into());
                f.insert("return_msg".into(), msg);
                f.insert("err_code".into(), code.into());
                return xml::encode(&f);
            }
            Reply::CommFail { code, msg } | Reply::BizFail { code, des: msg } => {
                let mut e = Params::new();
                e.insert("err_code".into(), code.into());
                e.insert("err_code_des".into(), msg);
                (e, "FAIL")
            }
            Reply::Ok(fields) => (fields, "SUCCESS"),
        };
        let Some(v) = verified else {
            // Business results without a verified request cannot be signed: degrade to FAIL.
            f.insert("return_code".into(), "FAIL".into());
            f.insert("return_msg".into(), "请求无效".into());
            f.extend(fields);
            return xml::encode(&f);
        };
        f.extend(fields);
        f.insert("return_code".into(), "SUCCESS".into());
        f.insert("return_msg".into(), "OK".into());
        f.insert("result_code".into(), result.into());
        for k in ["appid", "mch_id"] {
            if let Some(val) = v.params.get(k) {
                f.insert(k.into(), val.clone());
            }
        }
        f.insert("nonce_str".into(), sign::nonce());
        let s = sign::sign(&f, self.inner.cfg.api_key.expose_secret(), v.sign_type);
        f.insert("sign".into(), s);
        xml::encode(&f)
    }
}

fn prepay_fields(trade_type: &str, prepay_id: &str) -> Params {
    let mut f = Params::new();
    f.insert("trade_type".into(), trade_type.to_owned());
    f.insert("prepay_id".into(), prepay_id.to_owned());
    f
}

/// Trade details shared by orderquery (paid) and notifications (§4.2, §5).
pub(super) fn paid_fields(order: &SimOrder) -> Params {
    let mut f = Params::new();
    f.insert("openid".into(), order.openid.clone());
    f.insert("is_subscribe".into(), "N".into());
    f.insert("trade_type".into(), "JSAPI".into());
    f.insert("bank_type".into(), "OTHERS".into());
    f.insert("total_fee".into(), order.total_fee.to_string());
    f.insert("fee_type".into(), "CNY".into());
    f.insert("cash_fee".into(), order.total_fee.to_string());
    if let Some(tx) = &order.transaction_id {
        f.insert("transaction_id".into(), tx.clone());
    }
    f.insert("out_trade_no".into(), order.out_trade_no.clone());
    if let Some(a) = &order.attach {
        f.insert("attach".into(), a.clone());
    }
    if let Some(t) = &order.time_end {
        f.insert("time_end".into(), t.clone());
    }
    f
}
