// 套餐 Packages: every package, active or not; create, edit, deactivate and reactivate.
// Prices are typed in yuan and sent in fen (exact digit arithmetic, see money.js), and shown
// both ways. A validation error of the API lands next to the field it names.

import { h, bi, put, section, table, field, confirmAction } from "./dom.js";
import * as api from "./api.js";
import { money, fenToYuan, yuanToFen, integer } from "./money.js";

export function packages(main) {
  const list = h("div", { id: "packages-list" }, bi("加载中…", "Loading…"));
  const formBox = h("div", { id: "package-form-box" });
  const notice = h("p", { class: "notice", id: "packages-notice", role: "status" });
  put(main, h("div", { class: "screen-head" }, h("h1", {}, bi("套餐", "Packages"))), notice, formBox, section("全部套餐（含已停用）", "All packages (inactive too)", list));
  const refresh = async (msg) => {
    put(notice, msg || "");
    try {
      const r = await api.get("/api/v1/admin/packages");
      put(list, packageTable(r.packages, { edit: (p) => showForm(p), toggle: (p) => toggle(p) }));
    } catch (err) {
      put(list, h("p", { class: "error" }, err.message));
    }
  };
  const showForm = (p) => {
    put(formBox, packageForm(p, (msg) => {
      showForm(null);
      refresh(msg);
    }));
    formBox.scrollIntoView({ block: "nearest" });
  };
  const toggle = async (p) => {
    const to = !p.active;
    const ok = await confirmAction(to ? "启用套餐" : "停用套餐", to ? "Activate package" : "Deactivate package", [
      [bi("套餐", "Package"), ` #${p.id} `, p.name],
      to ? bi("小程序将重新显示此套餐。", "The mini-program will offer it again.") : bi("小程序将不再显示此套餐；已下的订单不受影响。", "The mini-program stops offering it; existing orders are unaffected."),
    ]);
    if (!ok) return;
    try {
      await api.patch(`/api/v1/admin/packages/${p.id}`, { active: to, reason: to ? "console: activate" : "console: deactivate" });
      refresh(to ? `已启用 — Activated #${p.id}` : `已停用 — Deactivated #${p.id}`);
    } catch (err) {
      put(notice, h("span", { class: "error" }, bi("操作失败：", "Failed: "), err.message));
    }
  };
  showForm(null);
  refresh();
}

function packageTable(list, { edit, toggle }) {
  return table(
    [
      ["编号", "ID", (p) => String(p.id)],
      ["名称", "Name", (p) => h("span", { class: "package-name" }, p.name)],
      ["算力", "Coins", (p) => String(p.coins)],
      ["赠送", "Bonus", (p) => String(p.bonus_coins)],
      ["合计", "Total", (p) => String(p.total_coins)],
      ["价格", "Price", (p) => money(p.price_fen)],
      ["排序", "Sort", (p) => String(p.sort_order)],
      ["状态", "State", (p) => (p.active ? bi("在售", "active") : h("span", { class: "inactive" }, bi("已停用", "inactive")))],
      [
        "操作",
        "Actions",
        (p) =>
          h(
            "span",
            { class: "actions-cell" },
            h("button", { type: "button", class: "secondary", id: `edit-${p.id}`, "data-edit": p.id, on: { click: () => edit(p) } }, bi("编辑", "Edit")),
            h(
              "button",
              { type: "button", class: p.active ? "danger" : "secondary", id: `toggle-${p.id}`, "data-toggle": p.id, on: { click: () => toggle(p) } },
              p.active ? bi("停用", "Deactivate") : bi("启用", "Activate"),
            ),
          ),
      ],
    ],
    list,
    { id: "packages-table" },
  );
}

/** The create form (`p` null) or the edit form of `p`. */
function packageForm(p, done) {
  const text = (attrs) => h("input", { type: "text", autocomplete: "off", ...attrs });
  const fenHint = h("p", { class: "hint", id: "pkg-price-fen" });
  const f = {
    name: field("pkg-name", "名称", "Name", text({ maxlength: "64", value: p ? p.name : "" })),
    coins: field("pkg-coins", "算力", "Coins", text({ inputmode: "numeric", value: p ? p.coins : "" })),
    bonus_coins: field("pkg-bonus", "赠送算力", "Bonus coins", text({ inputmode: "numeric", value: p ? p.bonus_coins : "0" })),
    price_fen: field("pkg-price", "价格（元）", "Price (yuan)", text({ inputmode: "decimal", value: p ? fenToYuan(p.price_fen) : "" }), fenHint),
    sort_order: field("pkg-sort", "排序", "Sort order", text({ inputmode: "numeric", value: p ? p.sort_order : "0" })),
    reason: field("pkg-reason", "原因（审计）", "Reason (audit)", text({ maxlength: "255" })),
  };
  const active = h("input", { type: "checkbox", id: "pkg-active", checked: p ? p.active : true });
  const error = h("p", { class: "error", id: "pkg-error", role: "alert" });
  const showFen = () => {
    try {
      put(fenHint, `= ${yuanToFen(f.price_fen.input.value)} 分 fen`);
    } catch {
      put(fenHint);
    }
  };
  f.price_fen.input.addEventListener("input", showFen);
  showFen();
  const submit = h("button", { type: "submit", id: "pkg-submit" }, p ? bi("保存修改", "Save changes") : bi("创建套餐", "Create package"));
  const cancel = p ? h("button", { type: "button", class: "secondary", id: "pkg-cancel", on: { click: () => done("") } }, bi("取消编辑", "Cancel edit")) : null;
  const form = h(
    "form",
    { id: "package-form", novalidate: true },
    h("div", { class: "row" }, f.name.wrap, f.price_fen.wrap),
    h("div", { class: "row" }, f.coins.wrap, f.bonus_coins.wrap, f.sort_order.wrap),
    h("div", { class: "row" }, f.reason.wrap, h("div", { class: "field check" }, active, h("label", { for: "pkg-active" }, bi("在售", "Active")))),
    h("div", { class: "actions-row" }, submit, cancel),
    error,
  );
  let busy = false;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (busy) return;
    put(error);
    for (const x of Object.values(f)) put(x.error);
    const body = { name: f.name.input.value, active: active.checked, reason: f.reason.input.value.trim() || (p ? "console: edit" : "console: create") };
    // Only what a person cannot have meant is refused here; the rest is the API's to judge.
    const parsers = { coins: integer, bonus_coins: integer, sort_order: integer, price_fen: yuanToFen };
    let bad = false;
    for (const [k, parse] of Object.entries(parsers)) {
      try {
        body[k] = parse(f[k].input.value);
      } catch (err) {
        put(f[k].error, err.message);
        bad = true;
      }
    }
    if (bad) return;
    busy = true;
    try {
      const ok = await confirmAction(p ? "保存套餐修改" : "创建套餐", p ? "Save the package" : "Create the package", [
        [bi("名称", "Name"), " ", body.name],
        [bi("价格", "Price"), " ", money(body.price_fen)],
        [bi("算力", "Coins"), ` ${body.coins} + ${body.bonus_coins}`],
        body.active ? bi("在售", "Active") : bi("停用", "Inactive"),
      ]);
      if (!ok) return;
      const r = p ? await api.patch(`/api/v1/admin/packages/${p.id}`, body) : await api.post("/api/v1/admin/packages", body);
      done(p ? `已保存 — Saved #${r.id}` : `已创建 — Created #${r.id}`);
    } catch (err) {
      const target = err.field && f[err.field];
      if (target) put(target.error, err.message);
      else put(error, bi("保存失败：", "Save failed: "), err.message);
    } finally {
      busy = false;
    }
  });
  return section(p ? `编辑套餐 #${p.id}` : "新建套餐", p ? `Edit package #${p.id}` : "New package", form);
}
