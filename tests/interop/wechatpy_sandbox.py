#!/usr/bin/env python3
"""Drive coinpay's WeChat Pay sandbox with wechatpy's own, unchanged WeChatPay client.

Usage: python wechatpy_sandbox.py BASE_URL APPID MCH_ID API_KEY OPENID
Prints one JSON object with what wechatpy saw; the Rust test asserts on it.
wechatpy 1.8.18 builds URLs as API_BASE_URL + endpoint, so API_BASE_URL is set on the instance.
"""
import json
import random
import sys
from datetime import datetime, timedelta, timezone

from wechatpy.exceptions import WeChatPayException
from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature_hmac


def client(base, appid, mch_id, key):
    pay = WeChatPay(appid=appid, api_key=key, mch_id=mch_id, timeout=10)
    pay.API_BASE_URL = base.rstrip("/") + "/"
    return pay


def error_code(fn):
    try:
        fn()
    except WeChatPayException as e:
        return e.errcode or e.return_code
    return None


def hmac_ok(data, key):
    d = {k: v for k, v in dict(data).items() if k != "sign"}
    return calculate_signature_hmac(d, key) == data.get("sign")


def main():
    base, appid, mch_id, key, openid = sys.argv[1:6]
    pay = client(base, appid, mch_id, key)
    out = {}
    no = "WXPY%d" % random.randint(10**11, 10**12 - 1)
    # Beijing time without pytz (wechatpy treats pytz/dateutil as optional).
    now = datetime.now(timezone(timedelta(hours=8)))
    order = dict(trade_type="JSAPI", body="算力充值-wechatpy", total_fee=1,
                 notify_url="https://example.com/notify", client_ip="127.0.0.1",
                 user_id=openid, out_trade_no=no, attach="附加数据",
                 time_start=now, time_expire=now + timedelta(minutes=30))
    r = pay.order.create(**order)
    out["unifiedorder"] = {"prepay_id": r.get("prepay_id"), "sign_ok": pay.check_signature(dict(r)),
                           "trade_type": r.get("trade_type")}
    # Re-entry with identical parameters must give the same prepay_id.
    out["reentry_prepay_id"] = pay.order.create(**order).get("prepay_id")
    out["changed_params"] = error_code(lambda: pay.order.create(**dict(order, total_fee=2)))

    q = pay.order.query(out_trade_no=no)
    out["query"] = {"trade_state": q.get("trade_state"), "sign_ok": pay.check_signature(dict(q))}
    c = pay.order.close(no)
    out["close"] = {"result_code": c.get("result_code"), "sign_ok": pay.check_signature(dict(c))}
    q2 = pay.order.query(out_trade_no=no)
    out["query_after_close"] = q2.get("trade_state")
    out["close_again"] = error_code(lambda: pay.order.close(no))
    out["query_unknown"] = error_code(lambda: pay.order.query(out_trade_no="NOPE%d" % random.randint(0, 10**9)))

    # HMAC-SHA256 request (wechatpy signs with HMAC when sign_type is passed through kwargs).
    no2 = no + "H"
    r2 = pay.order.create(**dict(order, out_trade_no=no2, sign_type="HMAC-SHA256"))
    out["hmac_unifiedorder"] = {"prepay_id": r2.get("prepay_id"), "sign_ok": hmac_ok(r2, key)}

    wrong = client(base, appid, mch_id, "W" * 32)
    out["wrong_key"] = error_code(lambda: wrong.order.query(out_trade_no=no))
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
