#!/usr/bin/env python3
"""Cross-check coinpay's WeChat Pay v2 signatures with wechatpy, an independent implementation.

Reads JSON from stdin, writes JSON to stdout.

Mode "check" (default) -- Rust signs, wechatpy checks. Input: a list of
  {"params": {...}, "key": "...", "sign_type": "MD5"|"HMAC-SHA256", "sign": "<ours>",
   "notify_xml": "<our signed notify XML>" (optional)}
Output: a list of
  {"wechatpy_sign": "...", "match": bool,
   "check_signature": bool|null,   # WeChatPay.check_signature on params+sign (MD5 only)
   "notify_accepted": bool|null,   # WeChatPay.parse_payment_result on notify_xml (MD5 only, wechatpy sec. 9.2)
   "notify_fields_equal": bool|null}

Mode "sign" -- wechatpy signs, Rust verifies. Input: a list of
  {"params": {...}, "key": "...", "sign_type": "MD5"|"HMAC-SHA256"}
Output: a list of {"sign": "...", "xml": "<wechatpy's dict_to_xml with sign>"}

Usage: python wechatpy_check.py [check|sign] < cases.json
"""
import json
import sys

from wechatpy.exceptions import InvalidSignatureException
from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac, dict_to_xml


def wechatpy_sign(params, key, sign_type):
    unsigned = {k: v for k, v in params.items() if k != "sign"}
    if sign_type == "MD5":
        return calculate_signature(unsigned, key)
    if sign_type == "HMAC-SHA256":
        return calculate_signature_hmac(unsigned, key)
    raise ValueError("unknown sign_type %r" % sign_type)


def pay_for(params, key):
    return WeChatPay(appid=params.get("appid", ""), api_key=key, mch_id=params.get("mch_id", ""))


def check(case):
    params, key, sign_type = case["params"], case["key"], case["sign_type"]
    ours = case["sign"]
    theirs = wechatpy_sign(params, key, sign_type)
    out = {"wechatpy_sign": theirs, "match": theirs == ours,
           "check_signature": None, "notify_accepted": None, "notify_fields_equal": None}
    if sign_type != "MD5":
        return out  # wechatpy's verifiers are MD5-only
    pay = pay_for(params, key)
    out["check_signature"] = bool(pay.check_signature(dict(params, sign=ours)))
    xml = case.get("notify_xml")
    if xml is not None:
        try:
            data = pay.parse_payment_result(xml)
        except InvalidSignatureException:
            out["notify_accepted"] = False
        else:
            out["notify_accepted"] = True
            # parse_payment_result turns amounts into ints and empty elements into None.
            got = {k: ("" if v is None else str(v)) for k, v in data.items() if k != "sign"}
            want = {k: v for k, v in params.items() if k != "sign"}
            out["notify_fields_equal"] = got == want
    return out


def sign(case):
    params, key, sign_type = case["params"], case["key"], case["sign_type"]
    s = wechatpy_sign(params, key, sign_type)
    return {"sign": s, "xml": dict_to_xml(dict(params), s)}


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "check"
    cases = json.load(sys.stdin)
    if mode == "check":
        result = [check(c) for c in cases]
    elif mode == "sign":
        result = [sign(c) for c in cases]
    else:
        sys.exit("unknown mode %r (check|sign)" % mode)
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
