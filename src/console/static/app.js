// The console's entry point: sign-in, the navigation bar and the router (`#/screen/param`).
// The hash holds only what is on screen (an order number, a user id, a date), never the token.

import { h, bi, put, field, wireConfirm } from "./dom.js";
import * as api from "./api.js";
import { overview } from "./overview.js";
import { find } from "./find.js";
import { order } from "./order.js";
import { user } from "./user.js";
import { packages } from "./packages.js";
import { recon } from "./recon.js";

const SCREENS = { "": overview, find, order, user, packages, recon };

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let stop = null;

function route(notice) {
  if (stop) stop();
  stop = null;
  if (document.getElementById("confirm").open) document.getElementById("confirm").close("cancel");
  if (!api.token()) {
    nav.hidden = true;
    signIn(notice);
    return;
  }
  nav.hidden = false;
  let parts;
  try {
    parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  } catch {
    parts = ["find"];
  }
  const [name, ...params] = parts;
  for (const a of nav.querySelectorAll("a[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === name);
  }
  const screen = SCREENS[name] || find;
  put(main);
  stop = screen(main, params) || null;
}

function signIn(notice) {
  const { wrap, input } = field(
    "token",
    "管理令牌",
    "Admin token",
    h("input", { type: "password", name: "token", autocomplete: "current-password", required: true }),
  );
  const error = h("p", { class: "error", id: "signin-error", role: "alert" }, notice || "");
  const button = h("button", { type: "submit", id: "signin-submit" }, bi("登录", "Sign in"));
  const form = h(
    "form",
    { class: "card signin", id: "signin", novalidate: true },
    h("h1", {}, bi("登录", "Sign in")),
    h("p", { class: "hint" }, bi("令牌只保存在本标签页中，关闭即忘记。", "The token is kept in this tab only and forgotten when it closes.")),
    wrap,
    error,
    button,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const t = input.value.trim();
    if (!t) {
      put(error, bi("请输入令牌", "Enter the token"));
      return;
    }
    button.disabled = true;
    put(error, bi("正在验证…", "Checking…"));
    try {
      await api.call("GET", "/api/v1/admin/overview", undefined, t);
      api.remember(t);
      input.value = "";
      route();
    } catch (err) {
      if (err.status === 401) put(error, bi("令牌错误", "Wrong token"));
      else if (err.status === 404) put(error, bi("此服务器未开启管理接口", "The admin API is not enabled on this server"));
      else put(error, bi("无法登录：", "Cannot sign in: "), err.message);
    } finally {
      button.disabled = false;
    }
  });
  put(main, form);
  input.focus();
}

api.whenUnauthorized(() => {
  api.forget();
  route("令牌已失效，请重新登录 — The token is no longer accepted; sign in again");
});

document.getElementById("signout").addEventListener("click", () => {
  api.forget();
  // No hashchange: the notice below stays.
  history.replaceState(null, "", "#/");
  route("已退出 — Signed out");
});

wireConfirm();
window.addEventListener("hashchange", () => route());
route();
