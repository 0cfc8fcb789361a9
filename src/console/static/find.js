// 查找 Find: one box for an order number, a WeChat transaction id, a user id or an openid.
// The server decides what it is (GET /api/v1/admin/search); one match opens it.

import { h, bi, put, field, link, orderHref, userHref, status } from "./dom.js";
import * as api from "./api.js";

export function find(main, [initial]) {
  const { wrap, input, error } = field(
    "find-q",
    "订单号 / 微信支付单号 / 用户 ID / openid",
    "Order no. / transaction id / user id / openid",
    h("input", { type: "search", name: "q", autocomplete: "off", spellcheck: "false", value: initial || "" }),
  );
  const results = h("div", { id: "find-results" });
  const button = h("button", { type: "submit", id: "find-submit" }, bi("查找", "Find"));
  const form = h("form", { class: "card", id: "find-form", role: "search" }, h("h1", {}, bi("查找", "Find")), wrap, button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    put(error);
    put(results);
    const q = input.value.trim();
    if (!q) {
      put(error, bi("请输入要查找的内容", "Enter something to find"));
      return;
    }
    try {
      const r = await api.get(api.withQuery("/api/v1/admin/search", { q }));
      if (r.matches.length === 1) {
        location.hash = hrefOf(r.matches[0]);
        return;
      }
      put(
        results,
        h("p", {}, bi("找到多项：", "Several matches:")),
        h("ul", { class: "matches" }, r.matches.map((m) => h("li", {}, describe(m)))),
      );
    } catch (err) {
      if (err.status === 404) put(error, bi("未找到", "Nothing found"), ": ", q);
      else put(error, err.message);
    }
  });
  put(main, form, results);
  input.focus();
}

const hrefOf = (m) => (m.kind === "order" ? orderHref(m.order_no) : userHref(m.user_id));

function describe(m) {
  return m.kind === "order"
    ? link(hrefOf(m), bi("订单", "Order"), " ", m.order_no, " ", status(m.status))
    : link(hrefOf(m), bi("用户", "User"), " #", String(m.user_id), " ", m.openid);
}
