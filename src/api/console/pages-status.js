// The status page (`/status`): readiness from GET /health/ready every 2 s, the overall status
// and each check's status and details, as text.

import { api } from '/assets/api.js';
import { h, replace, fmtDuration, fmtTime } from '/assets/dom.js';

const REFRESH_MS = 2000;

export function mount(main) {
  const health = h('div', { id: 'health', class: 'health', dataset: { status: '' } }, '…');
  const meta = h('p', { class: 'muted' });
  const checks = h('div', { id: 'checks', class: 'checks' });
  const note = h('p', { class: 'error', role: 'alert' });
  main.append(h('h1', {}, 'Status'), health, meta, note, checks);
  let alive = true;

  async function load() {
    try {
      const r = await api('/health/ready', { accept: [503] });
      if (!alive) return;
      show(r);
      note.textContent = '';
    } catch (e) {
      note.textContent = e.message;
    }
  }

  function show(r) {
    health.dataset.status = String(r.status);
    health.className = `health status-${r.status}`;
    health.textContent = String(r.status);
    // `uptime` is in seconds.
    meta.textContent = `as of ${fmtTime(r.timestamp)} · up ${fmtDuration(r.uptime * 1000)}`;
    replace(checks, Object.entries(r.checks || {}).map(([name, c]) => check(name, c)));
  }

  load();
  const timer = setInterval(load, REFRESH_MS);
  return () => {
    alive = false;
    clearInterval(timer);
  };
}

function check(name, c) {
  const { status, ...details } = c && typeof c === 'object' ? c : { status: String(c) };
  const rows = flatten(details).map(([k, v]) => h('div', { class: 'detail' },
    h('span', { class: 'k' }, k), ' ', h('span', { class: 'v' }, v)));
  return h('section', { class: `check panel status-${status}`, dataset: { check: name, status: String(status) } },
    h('h2', {}, name, ' ', h('span', { class: 'badge' }, String(status))), rows);
}

/** `[key, text]` pairs of a check's details; `details` objects are opened in place, other
 * nested objects become `outer.inner` keys. */
function flatten(obj, prefix = '') {
  const out = [];
  for (const [k, v] of Object.entries(obj)) {
    const key = k === 'details' ? prefix : prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === 'object' && !Array.isArray(v)) out.push(...flatten(v, key));
    else out.push([key || k, typeof v === 'object' ? JSON.stringify(v) : String(v)]);
  }
  return out;
}
