// Money: the API counts fen (integers); people type and read yuan. The conversion is done on
// the digits, never with floating point (0.1 + 0.2 is not 0.3, and 19.99 * 100 is not 1999).

const YUAN = /^(\d{1,10})(?:\.(\d{1,2}))?$/;

/** Exact fen of a yuan amount typed by a person ("19.9" → 1990); throws a bilingual message. */
export function yuanToFen(text) {
  const s = String(text).trim().replace(/^¥/, "");
  const m = YUAN.exec(s);
  if (!m) {
    throw new Error("请输入金额（元），最多两位小数，例如 19.90 — Enter yuan with at most two decimals, e.g. 19.90");
  }
  const fen = Number(m[1]) * 100 + Number((m[2] || "").padEnd(2, "0"));
  if (!Number.isSafeInteger(fen)) throw new Error("金额过大 — Amount too large");
  return fen;
}

/** "19.90" for 1990 fen (integer arithmetic only). */
export function fenToYuan(fen) {
  const n = Number(fen);
  if (!Number.isSafeInteger(n)) return String(fen);
  const abs = Math.abs(n);
  return `${n < 0 ? "-" : ""}${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, "0")}`;
}

/** Both ways: "¥19.90 (1990 分 fen)". */
export function money(fen) {
  if (fen === null || fen === undefined) return null;
  return `¥${fenToYuan(fen)} (${fen} 分 fen)`;
}

/** An integer typed by a person (coins, a delta, a sort order); throws a bilingual message. */
export function integer(text) {
  const s = String(text).trim();
  if (!/^[+-]?\d{1,15}$/.test(s)) throw new Error("请输入整数 — Enter a whole number");
  return Number(s);
}
