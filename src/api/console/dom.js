// Small DOM helpers: elements built from text only (never HTML strings), and value formatting
// shared by the pages.

/** `h('div', {class: 'x', dataset: {a: 1}}, 'text', child)`: an element; strings become text. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'disabled' || k === 'checked' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces every child of `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const DASH = '—';

/** How an execution's agent is named: `Name (id)`, or the id alone when it has no other name. */
export function agentLabel(e) {
  return e.agentName && e.agentName !== e.agentId ? `${e.agentName} (${e.agentId})` : String(e.agentId ?? DASH);
}
export const FINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);
export const STATUSES = ['PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED'];

export function fmtBytes(n) {
  if (n === null || n === undefined) return DASH;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined) return DASH;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtTime(t) {
  if (t === null || t === undefined || t === '') return DASH;
  const d = typeof t === 'number' ? new Date(t) : new Date(String(t));
  return isNaN(d) ? String(t) : d.toLocaleString();
}

export function fmtPercent(p) {
  return p === null || p === undefined ? DASH : `${Number(p).toFixed(1)} %`;
}

export function fmtCount(n) {
  return n === null || n === undefined ? DASH : Number(n).toLocaleString();
}

/** `key: value` text of a JSON value, pretty-printed. */
export function prettyJson(v) {
  try { return JSON.stringify(v, null, 2); } catch { return String(v); }
}
