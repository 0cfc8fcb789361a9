// Building the page. Every value lands on the page as text (text nodes, `textContent`,
// attribute values): nothing is ever parsed as HTML, so an order reason or a package name
// containing `<script>` shows as those characters.

/** An element: `props` are attributes (plus `on` for listeners, `value`/`checked` as
 * properties); children are nodes or values shown as text. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "on") {
      for (const [event, fn] of Object.entries(v)) el.addEventListener(event, fn);
    } else if (k === "checked") {
      el.checked = Boolean(v);
    } else if (k === "value") {
      el.value = v ?? "";
    } else if (v !== undefined && v !== null && v !== false) {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** A Chinese label with its English beside it. */
export function bi(zh, en) {
  return [zh, " ", h("span", { class: "en" }, en)];
}

/** Replaces an element's children. */
export function put(el, ...children) {
  el.replaceChildren();
  add(el, children);
  return el;
}

/** A table; `columns` are `[zh, en, row => value]`; an empty list says so. */
export function table(columns, rows, props = {}) {
  if (!rows || rows.length === 0) {
    return h("p", { class: "empty" }, bi("无记录", "Nothing here"));
  }
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      props,
      h("thead", {}, h("tr", {}, columns.map(([zh, en]) => h("th", { scope: "col" }, bi(zh, en))))),
      h(
        "tbody",
        {},
        rows.map((row) => h("tr", {}, columns.map(([, , get]) => h("td", {}, get(row) ?? "—")))),
      ),
    ),
  );
}

/** A list of label/value pairs; `[zh, en, value, id]`, the id on the value. */
export function details(pairs) {
  return h(
    "dl",
    { class: "details" },
    pairs.map(([zh, en, value, id]) => [
      h("dt", {}, bi(zh, en)),
      h("dd", { id }, value === undefined || value === null || value === "" ? "—" : value),
    ]),
  );
}

/** A labelled form field with a place for its error: `{ wrap, input, error }`. */
export function field(id, zh, en, input, hint) {
  input.id = id;
  const error = h("p", { class: "field-error", id: `${id}-error`, role: "alert" });
  if (!input.hasAttribute("aria-describedby")) input.setAttribute("aria-describedby", `${id}-error`);
  const wrap = h("div", { class: "field" }, h("label", { for: id }, bi(zh, en)), input, hint, error);
  return { wrap, input, error };
}

/** A request id for a form: made once, sent with every try of that form, so that a double
 * click or a retry after a lost answer is the same request to the server. */
export function requestId(prefix) {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return `${prefix}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** Asks before a write. `lines` are shown as text; resolves true when confirmed (Escape or
 * Cancel: false). */
export function confirmAction(zh, en, lines) {
  const dialog = document.getElementById("confirm");
  put(document.getElementById("confirm-title"), bi(zh, en));
  put(
    document.getElementById("confirm-body"),
    h("ul", {}, lines.map((l) => h("li", {}, l))),
  );
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

/** The dialog's two buttons, wired once. */
export function wireConfirm() {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-ok").addEventListener("click", () => dialog.open && dialog.close("ok"));
  document.getElementById("confirm-cancel").addEventListener("click", () => dialog.open && dialog.close("cancel"));
}

/** "2026/12/01 10:30:00" in Beijing time, from an RFC 3339 time of the API. */
const BEIJING = new Intl.DateTimeFormat("zh-CN", {
  timeZone: "Asia/Shanghai",
  year: "numeric",
  month: "2-digit",
  day: "2-digit",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});
export function when(iso) {
  if (!iso) return null;
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? String(iso) : BEIJING.format(t);
}

/** A duration of whole seconds given by the API, e.g. "2 小时 5 分 / 2 h 5 min". */
export function age(seconds) {
  if (seconds === null || seconds === undefined) return null;
  const m = Math.floor(seconds / 60);
  if (m < 1) return `${seconds} 秒 / ${seconds} s`;
  if (m < 60) return `${m} 分钟 / ${m} min`;
  return `${Math.floor(m / 60)} 小时 ${m % 60} 分 / ${Math.floor(m / 60)} h ${m % 60} min`;
}

const STATUS = {
  created: ["已创建", "created"],
  pending: ["待支付", "pending"],
  paid: ["已支付", "paid"],
  expired: ["已过期", "expired"],
  failed: ["失败", "failed"],
  closed: ["已关闭", "closed"],
  processing: ["处理中", "processing"],
  succeeded: ["已成功", "succeeded"],
  abnormal: ["异常", "abnormal"],
  balanced: ["已平账", "balanced"],
  differences: ["有差异", "differences"],
  no_bill: ["无账单", "no bill"],
  error: ["出错", "error"],
};

/** A status word of the API, labelled in Chinese first. */
export function status(s) {
  const [zh, en] = STATUS[s] || [String(s), String(s)];
  return h("span", { class: `status status-${String(s).replace(/[^a-z_]/g, "")}` }, zh, " ", h("span", { class: "en" }, en));
}

/** A link inside the console. */
export function link(hash, ...children) {
  return h("a", { href: hash }, children);
}
export const orderHref = (no) => `#/order/${encodeURIComponent(no)}`;
export const userHref = (id) => `#/user/${encodeURIComponent(id)}`;

/** A section with a heading. */
export function section(zh, en, ...children) {
  return h("section", { class: "card" }, h("h2", {}, bi(zh, en)), children);
}
