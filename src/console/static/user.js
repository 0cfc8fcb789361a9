// 用户 User: balance, orders, the ledger (paginated) and 调整余额 Adjust balance. The adjustment
// form makes its request_id once and sends it with every try (POST /api/v1/admin/balance/adjust
// answers a repeat with the first result), so a double click is one ledger row.

import { h, bi, put, section, details, table, field, when, status, link, orderHref, requestId, confirmAction } from "./dom.js";
import * as api from "./api.js";
import { money, integer } from "./money.js";
import { ledgerTable } from "./order.js";

const PAGE_SIZE = 10;

export function user(main, [id]) {
  const root = h("div", { id: "user" }, h("p", {}, bi("加载中…", "Loading…")));
  put(main, root);
  load(root, id);
}

async function load(root, id, notice) {
  let u;
  try {
    u = (await api.get(`/api/v1/admin/users/${encodeURIComponent(id)}`)).user;
  } catch (err) {
    put(root, h("p", { class: "error", id: "user-error" }, err.status === 404 ? bi("未找到用户", "User not found") : err.message, " ", id));
    return;
  }
  const orders = h("div", { id: "user-orders" });
  const ledger = h("div", { id: "user-ledger" });
  put(
    root,
    h("div", { class: "screen-head" }, h("h1", {}, bi("用户", "User"), " #", String(u.id))),
    notice ? h("p", { class: "notice", id: "user-notice", role: "status" }, notice) : null,
    section(
      "用户详情",
      "Details",
      details([
        ["余额（算力）", "Balance (coins)", h("strong", {}, String(u.balance)), "user-balance"],
        ["openid", "openid", u.openid, "user-openid"],
        ["unionid", "unionid", u.unionid],
        ["注册时间", "Joined", when(u.created_at)],
      ]),
    ),
    adjustForm(u, (msg) => load(root, id, msg)),
    section("订单", "Orders", orders),
    section("流水", "Ledger", ledger),
  );
  pager(orders, (page) =>
    api.get(api.withQuery(`/api/v1/admin/users/${u.id}/orders`, { page, page_size: PAGE_SIZE })).then((r) => [
      r.total,
      table(
        [
          ["订单号", "Order no.", (o) => link(orderHref(o.order_no), o.order_no)],
          ["状态", "Status", (o) => status(o.status)],
          ["金额", "Amount", (o) => money(o.amount_fen)],
          ["算力", "Coins", (o) => `${o.coins} + ${o.bonus_coins}`],
          ["创建时间", "Created", (o) => when(o.created_at)],
          ["支付时间", "Paid", (o) => when(o.paid_at)],
        ],
        r.orders,
        { id: "user-orders-table" },
      ),
    ]),
  );
  pager(ledger, (page) =>
    api
      .get(api.withQuery(`/api/v1/admin/users/${u.id}/ledger`, { page, page_size: PAGE_SIZE }))
      .then((r) => [r.total, ledgerTable(r.logs, "user-ledger-table")]),
  );
}

/** Pages through a list; `fetchPage(page)` resolves to [total, content]. */
function pager(el, fetchPage) {
  let page = 1;
  const body = h("div");
  const info = h("span", { class: "hint" });
  const prev = h("button", { type: "button", class: "secondary" }, bi("上一页", "Previous"));
  const next = h("button", { type: "button", class: "secondary" }, bi("下一页", "Next"));
  const show = async () => {
    try {
      const [total, content] = await fetchPage(page);
      const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
      put(body, content);
      put(info, `第 ${page} / ${pages} 页 · page ${page} of ${pages} · 共 ${total} 条 total`);
      prev.disabled = page <= 1;
      next.disabled = page >= pages;
    } catch (err) {
      put(body, h("p", { class: "error" }, err.message));
    }
  };
  prev.addEventListener("click", () => {
    page -= 1;
    show();
  });
  next.addEventListener("click", () => {
    page += 1;
    show();
  });
  if (el.id) {
    prev.id = `${el.id}-prev`;
    next.id = `${el.id}-next`;
    info.id = `${el.id}-info`;
  }
  put(el, body, h("div", { class: "pager" }, prev, info, next));
  show();
}

function adjustForm(u, reload) {
  let rid = requestId("console-adjust");
  const delta = field("adjust-delta", "变动（算力，可为负）", "Delta (coins, may be negative)", h("input", { type: "text", inputmode: "numeric", autocomplete: "off" }));
  const reason = field("adjust-reason", "原因", "Reason", h("input", { type: "text", maxlength: "255", autocomplete: "off" }));
  const error = h("p", { class: "error", id: "adjust-error", role: "alert" });
  const button = h("button", { type: "submit", id: "adjust-submit" }, bi("调整余额", "Adjust balance"));
  const form = h("form", { id: "adjust-form", novalidate: true }, h("div", { class: "row" }, delta.wrap, reason.wrap), button, error);
  let busy = false;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (busy) return;
    for (const x of [delta.error, reason.error, error]) put(x);
    let d;
    try {
      d = integer(delta.input.value);
    } catch (err) {
      put(delta.error, err.message);
      return;
    }
    busy = true;
    try {
      const ok = await confirmAction("确认调整余额", "Confirm the adjustment", [
        [bi("用户", "User"), ` #${u.id} (${u.openid})`],
        [bi("当前余额", "Balance now"), ` ${u.balance}`],
        h("strong", {}, bi("变动", "Delta"), ` ${d > 0 ? "+" : ""}${d}`),
        [bi("原因", "Reason"), " ", reason.input.value.trim()],
      ]);
      if (!ok) return;
      const r = await api.post("/api/v1/admin/balance/adjust", {
        user_id: u.id,
        delta: d,
        reason: reason.input.value,
        request_id: rid,
      });
      rid = requestId("console-adjust");
      reload([
        r.replayed ? "已处理过（同一请求）— Already applied (same request): " : "已调整 — Adjusted: ",
        `余额 balance ${r.balance}`,
      ]);
    } catch (err) {
      if (err.field === "delta") put(delta.error, err.message);
      else if (err.field === "reason") put(reason.error, err.message);
      else put(error, bi("调整失败：", "Adjustment failed: "), err.message);
    } finally {
      busy = false;
    }
  });
  return section("调整余额", "Adjust balance", form);
}
