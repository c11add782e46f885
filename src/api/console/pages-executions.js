// The executions list (`/`): newest first, filtered by status and agent (kept in the query
// string), paged with nextCursor (a stack of earlier cursors for "newer"), refreshed every
// second while the tab is visible.

import { api, listAgents, query } from '/assets/api.js';
import { h, replace, agentLabel, fmtTime, fmtDuration, STATUSES, DASH } from '/assets/dom.js';

const LIMIT = 50;
const REFRESH_MS = 1000;

export function mount(main) {
  const params = new URLSearchParams(location.search);
  const st = { cursor: null, older: [], next: null, busy: false, alive: true };
  const status = h('select', { id: 'filter-status' }, h('option', { value: '' }, 'any status'),
    STATUSES.map((s) => h('option', { value: s }, s)));
  const agent = h('select', { id: 'filter-agent' }, h('option', { value: '' }, 'any agent'));
  status.value = params.get('status') || '';
  addAgentOption(agent, params.get('agent'));
  agent.value = params.get('agent') || '';
  const newer = h('button', { id: 'page-newer', type: 'button', disabled: true }, '← Newer');
  const older = h('button', { id: 'page-older', type: 'button', disabled: true }, 'Older →');
  const body = h('tbody');
  const table = h('table', { id: 'executions', class: 'grid' }, h('thead', {}, h('tr', {},
    ['Execution', 'Agent', 'User', 'Status', 'Created', 'Duration', 'Exit'].map((t) => h('th', {}, t)))), body);
  const note = h('p', { id: 'list-error', class: 'error', role: 'alert' });
  main.append(h('h1', {}, 'Executions'),
    h('div', { class: 'toolbar' }, h('label', {}, 'Status ', status), h('label', {}, 'Agent ', agent),
      h('span', { class: 'spacer' }), newer, older), note, table);

  async function load() {
    if (st.busy || !st.alive) return;
    st.busy = true;
    try {
      const res = await api(`/api/executions${query({ status: status.value, agentId: agent.value,
        limit: LIMIT, cursor: st.cursor })}`);
      if (!st.alive) return;
      st.next = res.nextCursor || null;
      renderRows(body, res.executions || []);
      note.textContent = '';
    } catch (e) {
      note.textContent = e.message;
    } finally {
      st.busy = false;
      newer.disabled = st.older.length === 0;
      older.disabled = !st.next;
    }
  }

  function filtersChanged() {
    st.cursor = null;
    st.older = [];
    const q = query({ status: status.value, agent: agent.value });
    history.replaceState(null, '', `/${q}`);
    load();
  }

  status.addEventListener('change', filtersChanged);
  agent.addEventListener('change', filtersChanged);
  older.addEventListener('click', () => {
    if (!st.next) return;
    st.older.push(st.cursor);
    st.cursor = st.next;
    load();
  });
  newer.addEventListener('click', () => {
    if (!st.older.length) return;
    st.cursor = st.older.pop();
    load();
  });

  loadAgents(agent);
  load();
  const timer = setInterval(() => {
    if (document.visibilityState === 'visible') load();
  }, REFRESH_MS);
  return () => {
    st.alive = false;
    clearInterval(timer);
  };
}

function addAgentOption(select, id) {
  if (!id || [...select.options].some((o) => o.value === id)) return;
  select.append(h('option', { value: id }, id));
}

async function loadAgents(select) {
  try {
    for (const a of await listAgents()) addAgentOption(select, a.id);
    const wanted = new URLSearchParams(location.search).get('agent');
    if (wanted) select.value = wanted;
  } catch {
    // The list still works without the agent names.
  }
}

/** Rows for `executions`, reusing those that did not change (a click in progress survives). */
function renderRows(body, executions) {
  const old = new Map([...body.children].map((tr) => [tr.sig, tr]));
  const rows = executions.map((e) => {
    const sig = JSON.stringify(e);
    const tr = old.get(sig) || row(e);
    tr.sig = sig;
    return tr;
  });
  if (!rows.length) rows.push(h('tr', { class: 'empty' }, h('td', { colspan: 7 }, 'No executions.')));
  const same = rows.length === body.children.length && rows.every((r, i) => body.children[i] === r);
  if (!same) replace(body, rows);
}

function row(e) {
  const id = String(e.executionId);
  return h('tr', { dataset: { executionId: id, status: String(e.status) } },
      h('td', { class: 'mono' }, h('a', { href: `/executions/${encodeURIComponent(id)}` }, id)),
      h('td', {}, agentLabel(e)),
      h('td', {}, String(e.userId ?? DASH)),
      h('td', {}, h('span', { class: `badge status-${e.status}` }, String(e.status))),
      h('td', {}, fmtTime(e.createdAt)),
      h('td', {}, fmtDuration(e.durationMs)),
      h('td', {}, e.exitCode === null || e.exitCode === undefined ? DASH : String(e.exitCode)));
}
