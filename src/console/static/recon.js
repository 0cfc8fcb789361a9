// 对账 Reconciliation (issue 13): the days with their status, one day's report with its
// differences, and 重新对账 Run again. Talks to GET /api/v1/admin/reconciliations?from=&to=,
// GET /api/v1/admin/reconciliations/{date} and POST /api/v1/admin/reconciliations.

import { h, bi, put, section, details, table, field, status, link, confirmAction, orderHref } from "./dom.js";
import * as api from "./api.js";
import { money } from "./money.js";

const DATE = /^\d{4}-\d{2}-\d{2}$/;

const KINDS = {
  missing_local: ["本地缺失（已补入账）", "missing locally"],
  unknown_order: ["未知订单", "unknown order"],
  missing_remote: ["微信缺失", "missing at WeChat"],
  amount_mismatch: ["金额不符", "amount mismatch"],
  refund_missing_local: ["退款本地缺失", "refund missing locally"],
  refund_missing_remote: ["退款微信缺失", "refund missing at WeChat"],
  refund_amount_mismatch: ["退款金额不符", "refund amount mismatch"],
  status_mismatch: ["状态不符", "status mismatch"],
};

/** Today's date in Beijing, as YYYY-MM-DD (only to fill in the range's default). */
function beijingDate(offsetDays = 0) {
  const t = new Date(Date.now() + offsetDays * 86400000);
  return new Intl.DateTimeFormat("en-CA", { timeZone: "Asia/Shanghai" }).format(t);
}

export function recon(main, [date]) {
  if (date) return day(main, date);
  const from = field("recon-from", "起始日期", "From", h("input", { type: "date", value: beijingDate(-30) }));
  const to = field("recon-to", "结束日期", "To", h("input", { type: "date", value: beijingDate(0) }));
  const list = h("div", { id: "recon-list" });
  const show = h("button", { type: "submit", id: "recon-show" }, bi("查看", "Show"));
  const form = h("form", { id: "recon-range", novalidate: true }, h("div", { class: "row" }, from.wrap, to.wrap), show);
  const load = async () => {
    put(list, bi("加载中…", "Loading…"));
    try {
      const r = await api.get(api.withQuery("/api/v1/admin/reconciliations", { from: from.input.value, to: to.input.value }));
      const days = Array.isArray(r) ? r : r.reconciliations || r.days || [];
      put(
        list,
        table(
          [
            ["账单日期", "Bill date", (d) => link(`#/recon/${encodeURIComponent(d.bill_date)}`, d.bill_date)],
            ["状态", "Status", (d) => status(d.status)],
            ["差异数", "Differences", (d) => (Array.isArray(d.differences) ? String(d.differences.length) : d.difference_count ?? null)],
            ["错误", "Error", (d) => d.error],
          ],
          days,
          { id: "recon-table" },
        ),
      );
    } catch (err) {
      put(list, h("p", { class: err.missingRoute ? "hint" : "error", id: "recon-error" }, err.missingRoute ? bi("此服务器尚无对账功能", "Reconciliation is not available on this server") : err.message));
    }
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  put(
    main,
    h("div", { class: "screen-head" }, h("h1", {}, bi("对账", "Reconciliation"))),
    section("按日期", "By day", form, list),
    section("对账某一天", "Reconcile a day", runForm(beijingDate(-1))),
  );
  load();
}

/** Runs (or re-runs) the reconciliation of a day, after a confirmation; opens its report. */
function runForm(initial) {
  const d = field("recon-run-date", "账单日期", "Bill date", h("input", { type: "date", value: initial }));
  const error = h("p", { class: "error", id: "recon-run-error", role: "alert" });
  const button = h("button", { type: "submit", id: "recon-run" }, bi("开始对账", "Reconcile"));
  const form = h("form", { id: "recon-run-form", novalidate: true }, d.wrap, button, error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    put(error);
    const date = d.input.value;
    if (!DATE.test(date)) {
      put(d.error, bi("请选择日期", "Pick a date"));
      return;
    }
    try {
      await run(date);
      location.hash = `#/recon/${date}`;
    } catch (err) {
      if (err.cancelled) return;
      put(error, err.missingRoute ? bi("此服务器尚无对账功能", "Reconciliation is not available on this server") : [bi("对账失败：", "Reconciliation failed: "), err.message]);
    }
  });
  return form;
}

async function run(date) {
  const ok = await confirmAction("重新对账", "Run the reconciliation", [
    [bi("账单日期", "Bill date"), " ", date],
    bi("下载微信账单并与本地记录比对；该日已有的报告会被替换。", "Download WeChat's bill and compare it with our books; that day's report is replaced."),
  ]);
  if (!ok) throw Object.assign(new Error("已取消 — Cancelled"), { cancelled: true });
  return api.post("/api/v1/admin/reconciliations", { bill_date: date });
}

function day(main, date) {
  const root = h("div", { id: "recon-day" }, bi("加载中…", "Loading…"));
  const error = h("p", { class: "error", id: "recon-day-error", role: "alert" });
  const again = h("button", { type: "button", id: "recon-again" }, bi("重新对账", "Run again"));
  again.addEventListener("click", async () => {
    put(error);
    try {
      const report = await run(date);
      render(root, report);
    } catch (err) {
      if (!err.cancelled) put(error, bi("对账失败：", "Reconciliation failed: "), err.message);
    }
  });
  put(
    main,
    h("div", { class: "screen-head" }, h("h1", {}, bi("对账报告", "Reconciliation report"), " ", date), link("#/recon", bi("全部日期", "All days"))),
    h("div", { class: "actions-row" }, again, error),
    root,
  );
  api
    .get(`/api/v1/admin/reconciliations/${encodeURIComponent(date)}`)
    .then((r) => render(root, r))
    .catch((err) =>
      put(root, h("p", { class: err.missingRoute ? "hint" : "error" }, err.missingRoute ? bi("此服务器尚无对账功能", "Reconciliation is not available on this server") : err.status === 404 ? bi("该日尚未对账", "This day has not been reconciled") : err.message)),
    );
}

function render(root, r) {
  const side = (s) => (s ? `${s.count} 笔 · 收 ${money(s.paid_fen)} · 退 ${money(s.refund_fen)}${s.fee_fen !== undefined ? ` · 手续费 fee ${money(s.fee_fen)}` : ""}` : null);
  put(
    root,
    section(
      "汇总",
      "Summary",
      details([
        ["状态", "Status", status(r.status), "recon-status"],
        ["错误", "Error", r.error],
        ["微信账单", "WeChat", side(r.wechat), "recon-wechat"],
        ["本地记录", "coinpay", side(r.local), "recon-local"],
      ]),
    ),
    section(
      "差异",
      "Differences",
      table(
        [
          ["类型", "Kind", (d) => (KINDS[d.kind] ? bi(...KINDS[d.kind]) : d.kind)],
          ["订单号", "Order no.", (d) => (d.order_no ? link(orderHref(d.order_no), d.order_no) : null)],
          ["微信支付单号", "transaction_id", (d) => d.transaction_id],
          ["退款单号", "out_refund_no", (d) => d.out_refund_no],
          ["微信金额", "WeChat", (d) => money(d.wechat_fen)],
          ["本地金额", "coinpay", (d) => money(d.local_fen)],
          ["处理", "Action", (d) => d.action],
        ],
        r.differences || [],
        { id: "recon-differences" },
      ),
    ),
  );
}
