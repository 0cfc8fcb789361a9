// 概览 Overview: today's takings (Beijing day), pending orders, refunds processing, the last
// reconciliation and the last hour's notifications — all from GET /api/v1/admin/overview,
// asked again every REFRESH_MS while the screen is open.

import { h, bi, put, section, table, when, age, status, link } from "./dom.js";
import * as api from "./api.js";
import { money } from "./money.js";

const REFRESH_MS = 10000;

const OUTCOMES = {
  ok: ["已入账", "credited"],
  duplicate: ["重复通知", "duplicate"],
  late_payment: ["过期后支付", "late payment"],
  double_payment: ["重复支付", "double payment"],
  bad_signature: ["签名错误", "bad signature"],
  amount_mismatch: ["金额不符", "amount mismatch"],
  unknown_order: ["未知订单", "unknown order"],
  ip_denied: ["IP 被拒", "IP denied"],
  storage_error: ["存储错误", "storage error"],
};

export function overview(main) {
  const body = h("div", { id: "overview-body" }, h("p", {}, bi("加载中…", "Loading…")));
  const updated = h("span", { id: "overview-updated", class: "hint" });
  const refresh = h("button", { type: "button", class: "secondary", id: "overview-refresh" }, bi("刷新", "Refresh"));
  put(
    main,
    h("div", { class: "screen-head" }, h("h1", {}, bi("概览", "Overview")), updated, refresh),
    body,
  );
  const load = async () => {
    try {
      render(body, updated, await api.get("/api/v1/admin/overview"));
    } catch (err) {
      put(updated, bi("刷新失败：", "Refresh failed: "), err.message);
    }
  };
  refresh.addEventListener("click", load);
  load();
  const timer = setInterval(load, REFRESH_MS);
  return () => clearInterval(timer);
}

function render(body, updated, o) {
  put(updated, bi("更新于", "Updated"), " ", when(o.generated_at), " · ", bi("每 10 秒自动刷新", "refreshes every 10 s"));
  const tile = (id, zh, en, value, sub) =>
    h("div", { class: "tile", id }, h("div", { class: "tile-label" }, bi(zh, en)), h("div", { class: "tile-value" }, value), sub ? h("div", { class: "tile-sub" }, sub) : null);
  const recon = o.last_reconciliation;
  const counts = Object.entries(o.notifications?.outcomes || {}).filter(([, n]) => n > 0);
  put(
    body,
    h(
      "div",
      { class: "tiles" },
      tile("tile-paid-orders", "今日已支付订单", "Paid orders today", String(o.today.paid_orders), [bi("北京时间", "Beijing day"), " ", o.today.date]),
      tile("tile-paid-fen", "今日收款", "Received today", money(o.today.paid_fen)),
      tile(
        "tile-pending",
        "待支付订单",
        "Pending orders",
        String(o.pending.count),
        o.pending.count > 0
          ? [bi("最早一笔已等待", "oldest waiting"), " ", age(o.pending.oldest_age_seconds), h("br"), bi("创建于", "created"), " ", when(o.pending.oldest_created_at)]
          : null,
      ),
      tile(
        "tile-refunds",
        "处理中的退款",
        "Refunds processing",
        o.refunds_processing === null || o.refunds_processing === undefined
          ? bi("未启用", "not available")
          : String(o.refunds_processing.count ?? o.refunds_processing),
      ),
      tile(
        "tile-recon",
        "最近一次对账",
        "Last reconciliation",
        recon ? [link(`#/recon/${encodeURIComponent(recon.bill_date)}`, recon.bill_date), " ", status(recon.status)] : bi("未启用", "not available"),
      ),
    ),
    section(
      "最近一小时的支付通知",
      "Payment notifications, last hour",
      h(
        "p",
        { class: "hint" },
        o.notifications?.since
          ? [bi("自", "since"), " ", when(o.notifications.since)]
          : bi("自本实例启动以来（不足一小时的记录）", "since this instance started (less than an hour recorded)"),
      ),
      counts.length === 0
        ? h("p", { class: "empty", id: "notifications-none" }, bi("没有通知", "No notifications"))
        : table(
            [
              ["结果", "Outcome", ([k]) => (OUTCOMES[k] ? bi(...OUTCOMES[k]) : k)],
              ["次数", "Count", ([, n]) => String(n)],
            ],
            counts,
            { id: "notifications" },
          ),
    ),
  );
}
