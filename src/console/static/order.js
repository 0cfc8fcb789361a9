// 订单 Order: everything about one order, the ledger rows it caused and its refunds, with
// 向微信核实 Re-check with WeChat and 退款 Refund.
//
// A refund first asks the server what it would take back (GET .../refund-preview), shows that
// in the confirmation, and only then POSTs the refund. The form's request_id is made once and
// sent with every try, so a double click or a retry after a lost answer is one refund.

import { h, bi, put, section, details, table, field, when, status, link, userHref, requestId, confirmAction } from "./dom.js";
import * as api from "./api.js";
import { money, yuanToFen } from "./money.js";

export function order(main, [orderNo]) {
  const root = h("div", { id: "order" }, h("p", {}, bi("加载中…", "Loading…")));
  put(main, root);
  if (!orderNo) {
    put(root, h("p", { class: "error" }, bi("缺少订单号", "No order number")));
    return;
  }
  load(root, orderNo);
}

const enc = encodeURIComponent;

async function load(root, orderNo, notice) {
  let o;
  try {
    o = await api.get(`/api/v1/admin/orders/${enc(orderNo)}`);
  } catch (err) {
    put(root, h("p", { class: "error", id: "order-error" }, err.status === 404 ? bi("未找到订单", "Order not found") : err.message, " ", orderNo));
    return;
  }
  const ledger = h("div", { id: "order-ledger" }, bi("加载中…", "Loading…"));
  const refunds = h("div", { id: "order-refunds" }, bi("加载中…", "Loading…"));
  const reload = (msg) => load(root, orderNo, msg);
  put(
    root,
    h("div", { class: "screen-head" }, h("h1", {}, bi("订单", "Order"), " ", h("span", { class: "mono" }, o.order_no)), status(o.status)),
    notice ? h("p", { class: "notice", id: "order-notice", role: "status" }, notice) : null,
    section(
      "订单详情",
      "Details",
      details([
        ["状态", "Status", status(o.status), "order-status"],
        ["用户", "User", link(userHref(o.user_id), `#${o.user_id}`), "order-user"],
        ["套餐", "Package", `#${o.package_id}`],
        ["金额", "Amount", money(o.amount_fen), "order-amount"],
        ["已退款", "Refunded", o.refunded_fen === undefined ? bi("（此服务器无退款功能）", "(no refunds on this server)") : money(o.refunded_fen), "order-refunded"],
        ["算力", "Coins", `${o.coins} + ${o.bonus_coins} 赠送 bonus`, "order-coins"],
        ["创建时间", "Created", when(o.created_at)],
        ["过期时间", "Expires", when(o.expires_at)],
        ["支付时间", "Paid", when(o.paid_at), "order-paid-at"],
        ["预支付 ID", "prepay_id", o.prepay_id, "order-prepay"],
        ["微信支付单号", "transaction_id", o.transaction_id, "order-transaction"],
        ["错误码", "err_code", o.err_code],
        ["版本", "Version", String(o.version)],
      ]),
      recheckButton(o, reload),
    ),
    refundForm(o, reload),
    section("流水", "Ledger rows", ledger),
    section("退款记录", "Refunds", refunds),
  );
  api
    .get(`/api/v1/admin/orders/${enc(orderNo)}/ledger`)
    .then((r) => put(ledger, ledgerTable(r.logs, "order-ledger-table")))
    .catch((err) => put(ledger, h("p", { class: "error" }, err.message)));
  loadRefunds(refunds, o);
}

export function ledgerTable(logs, id) {
  return table(
    [
      ["编号", "ID", (l) => String(l.id)],
      ["类型", "Kind", (l) => l.kind],
      ["变动", "Delta", (l) => (l.delta > 0 ? `+${l.delta}` : String(l.delta))],
      ["变动后余额", "Balance after", (l) => String(l.balance_after)],
      ["订单", "Order", (l) => (l.order_no ? link(`#/order/${enc(l.order_no)}`, l.order_no) : null)],
      ["金额", "Amount", (l) => money(l.amount_fen)],
      ["请求 ID", "request_id", (l) => l.request_id],
      ["原因", "Reason", (l) => l.reason],
      ["时间", "Time", (l) => when(l.created_at)],
    ],
    logs,
    { id },
  );
}

function recheckButton(o, reload) {
  const error = h("p", { class: "error", id: "recheck-error", role: "alert" });
  const button = h("button", { type: "button", id: "recheck" }, bi("向微信核实", "Re-check with WeChat"));
  button.addEventListener("click", async () => {
    put(error);
    const ok = await confirmAction("向微信核实订单", "Re-check with WeChat", [
      [bi("订单", "Order"), " ", o.order_no],
      bi("向微信查询此订单并按结果处理（已支付则入账）。", "Ask WeChat about this order and apply the answer (credits it if paid)."),
    ]);
    if (!ok) return;
    button.disabled = true;
    try {
      const r = await api.post(`/api/v1/admin/orders/${enc(o.order_no)}/recheck`);
      reload(["已核实 — Re-checked: ", describeOutcome(r.outcome)]);
    } catch (err) {
      put(error, bi("核实失败：", "Re-check failed: "), err.message);
      button.disabled = false;
    }
  });
  return h("div", { class: "actions-row" }, button, error);
}

function describeOutcome(outcome) {
  if (outcome === "unchanged") return "无变化 unchanged";
  if (outcome && outcome.moved_to) return `状态变为 moved to ${outcome.moved_to}${outcome.late ? "（过期后支付 late）" : ""}`;
  if (outcome && outcome.stayed) return `未变 stayed (${outcome.stayed})`;
  if (outcome && outcome.refused) return `被拒 refused (${outcome.refused})`;
  return JSON.stringify(outcome);
}

function refundForm(o, reload) {
  let rid = requestId("console-refund");
  const amount = field("refund-amount", "退款金额（元）", "Amount (yuan)", h("input", { type: "text", inputmode: "decimal", autocomplete: "off" }));
  const reason = field("refund-reason", "原因", "Reason", h("input", { type: "text", maxlength: "255", autocomplete: "off" }));
  const error = h("p", { class: "error", id: "refund-error", role: "alert" });
  const button = h("button", { type: "submit", id: "refund-submit" }, bi("退款", "Refund"));
  const form = h("form", { id: "refund-form", novalidate: true }, h("div", { class: "row" }, amount.wrap, reason.wrap), button, error);
  let busy = false;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (busy) return;
    for (const x of [amount.error, reason.error, error]) put(x);
    let fen;
    try {
      fen = yuanToFen(amount.input.value);
    } catch (err) {
      put(amount.error, err.message);
      return;
    }
    if (!reason.input.value.trim()) {
      put(reason.error, bi("请填写原因", "A reason is required"));
      return;
    }
    busy = true;
    try {
      const preview = await api.get(api.withQuery(`/api/v1/admin/orders/${enc(o.order_no)}/refund-preview`, { refund_fen: fen }));
      const ok = await confirmAction("确认退款", "Confirm the refund", [
        [bi("订单", "Order"), " ", o.order_no],
        [bi("退款金额", "Refund"), " ", money(preview.refund_fen)],
        h("strong", { id: "refund-preview-coins" }, bi("将扣回算力", "Coins taken back"), " ", String(preview.coins)),
        [bi("可退余额", "Refundable before"), " ", money(preview.refundable_fen)],
        [bi("原因", "Reason"), " ", reason.input.value.trim()],
      ]);
      if (!ok) return;
      const r = await api.post(`/api/v1/admin/orders/${enc(o.order_no)}/refunds`, {
        refund_fen: fen,
        reason: reason.input.value.trim(),
        request_id: rid,
      });
      rid = requestId("console-refund");
      reload([`已提交退款 — Refund ${r.refund_no}: `, r.status, `, ${r.coins} 算力 coins`]);
    } catch (err) {
      if (err.field === "refund_fen") put(amount.error, err.message);
      else if (err.field === "reason") put(reason.error, err.message);
      else if (err.missingRoute) put(error, bi("此服务器尚无退款功能", "Refunds are not available on this server"));
      else put(error, bi("退款失败：", "Refund failed: "), err.message, err.details.balance !== undefined ? ` (余额 balance ${err.details.balance})` : "");
    } finally {
      busy = false;
    }
  });
  return section("退款", "Refund", o.status === "paid" ? form : h("p", { class: "hint" }, bi("只有已支付的订单可以退款", "Only a paid order can be refunded")));
}

async function loadRefunds(el, o) {
  let list = o.refunds;
  if (!Array.isArray(list)) {
    try {
      const r = await api.get(`/api/v1/admin/orders/${enc(o.order_no)}/refunds`);
      list = Array.isArray(r) ? r : r.refunds;
    } catch (err) {
      put(el, h("p", { class: err.missingRoute ? "hint" : "error" }, err.missingRoute ? bi("此服务器尚无退款功能", "Refunds are not available on this server") : err.message));
      return;
    }
  }
  put(
    el,
    table(
      [
        ["退款单号", "Refund no.", (r) => r.refund_no],
        ["金额", "Amount", (r) => money(r.refund_fen)],
        ["扣回算力", "Coins", (r) => String(r.coins)],
        ["状态", "Status", (r) => status(r.status)],
        ["原因", "Reason", (r) => r.reason],
        ["微信错误码", "WeChat error", (r) => r.wechat_err_code],
        ["时间", "Time", (r) => when(r.created_at)],
      ],
      list,
      { id: "order-refunds-table" },
    ),
  );
}
