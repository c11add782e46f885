// One execution (`/executions/{id}`): its header (refetched on every status event and at the end
// of the stream), the Cancel button, the live log pane fed from /ws, and the side panels
// (resources chart, status timeline, span waterfall) that appear once their events exist.

import { api } from '/assets/api.js';
import { follow } from '/assets/stream.js';
import { LogView, STREAMS } from '/assets/log-view.js';
import { LineChart } from '/assets/chart.js';
import { Waterfall } from '/assets/spans.js';
import { h, replace, agentLabel, fmtBytes, fmtDuration, fmtTime, fmtPercent, fmtCount, prettyJson, FINAL, DASH } from '/assets/dom.js';

const SEARCH_DEBOUNCE_MS = 150;
const RECORD_REFRESH_TICKS = 3;
const SPANS_REDRAW_MS = 200;

export function mount(main, id) {
  const ui = build(main, id);
  const st = { record: null, fetching: false, again: false, alive: true, final: false };
  const view = new LogView(ui.log, () => followButton(ui.follow, view.following));
  const panels = new Panels(ui);

  async function refresh() {
    if (st.fetching) { st.again = true; return; }
    st.fetching = true;
    try {
      const rec = await api(`/api/executions/${encodeURIComponent(id)}`);
      if (!st.alive) return;
      st.record = rec;
      showRecord(ui, rec);
      showPeaks(ui, rec, panels.peak);
      ui.problem.textContent = '';
    } catch (e) {
      ui.problem.textContent = e.message;
    } finally {
      st.fetching = false;
      if (st.again && st.alive) { st.again = false; refresh(); }
    }
  }

  const stream = follow(id, {
    onEvent(msg) {
      view.noteSeq(msg.seq);
      const d = msg.data || {};
      if (msg.type === 'log') view.push(msg.seq, d.stream, String(d.log ?? ''));
      else if (msg.type === 'status') {
        panels.status(msg);
        // A replayed status never undoes the final one the record already showed.
        if (!FINAL.has(ui.status.dataset.status)) setStatus(ui, d.status);
        refresh();
      }
      else if (msg.type === 'metrics') {
        panels.metrics(d);
        showPeaks(ui, st.record, panels.peak);
      }
      else if (msg.type === 'span') panels.span(d);
    },
    onState(state) { ui.connection.dataset.state = state; ui.connection.textContent = state; },
    onEnd() { st.final = true; refresh(); },
    onProblem(code, message) { ui.problem.textContent = `${code}: ${message}`; },
  });

  wireLogControls(ui, view);
  ui.cancel.addEventListener('click', () => cancel(ui, id, refresh));
  const onHash = () => {
    const m = /^#seq-(\d+)$/.exec(location.hash);
    if (m) view.target(Number(m[1]));
  };
  window.addEventListener('hashchange', onHash);
  view.onClearFilter = () => { ui.search.value = ''; ui.stream.value = ''; view.setFilter('', ''); };
  onHash();
  refresh();
  let ticks = 0;
  const ticker = setInterval(() => {
    tick(ui, st.record);
    // Peaks and usage grow while it runs; status events alone would leave them stale.
    if (++ticks % RECORD_REFRESH_TICKS === 0 && !FINAL.has(ui.status.dataset.status)) refresh();
  }, 1000);
  return () => {
    st.alive = false;
    stream.close();
    clearInterval(ticker);
    window.removeEventListener('hashchange', onHash);
  };
}

function build(main, id) {
  const field = (fid, label) => h('div', { class: 'field' }, h('dt', {}, label), h('dd', { id: fid }, DASH));
  const ui = {
    status: h('span', { id: 'status', class: 'badge', dataset: { status: '' } }, '…'),
    connection: h('span', { id: 'connection', class: 'connection', dataset: { state: 'connecting' } }, 'connecting'),
    cancel: h('button', { id: 'cancel', type: 'button', class: 'danger' }, 'Cancel'),
    cancelError: h('span', { id: 'cancel-error', class: 'error', role: 'alert' }),
    problem: h('p', { id: 'problem', class: 'error', role: 'alert' }),
    search: h('input', { id: 'log-search', type: 'search', placeholder: 'Search the log', autocomplete: 'off' }),
    stream: h('select', { id: 'log-stream' }, h('option', { value: '' }, 'all streams'),
      STREAMS.map((s) => h('option', { value: s }, s))),
    follow: h('button', { id: 'follow', type: 'button', 'aria-pressed': 'true' }, 'Following'),
    counts: h('span', { id: 'log-counts', class: 'muted' }),
    log: h('div', { id: 'log', class: 'log', tabindex: '0', role: 'log', 'aria-label': 'Log' }),
    resources: h('section', { id: 'resources', class: 'panel', hidden: true }),
    timeline: h('ol', { id: 'timeline', class: 'timeline' }),
    spans: h('div', { id: 'spans', class: 'waterfall' }),
    io: h('div', { id: 'io' }),
  };
  ui.timelinePanel = h('section', { class: 'panel', hidden: true }, h('h2', {}, 'Status'), ui.timeline);
  ui.spansPanel = h('section', { class: 'panel wide', hidden: true }, h('h2', {}, 'Spans'), ui.spans);
  const fields = [['agent', 'Agent'], ['user', 'User'], ['started', 'Started'], ['finished', 'Finished'],
    ['duration', 'Duration'], ['exit-code', 'Exit code'], ['error-kind', 'Error'], ['error-message', 'Error message'],
    ['peak-memory', 'Peak memory'], ['peak-cpu', 'Peak CPU'], ['tokens', 'Tokens'], ['cost', 'Cost (USD)']];
  main.append(
    h('div', { class: 'exec-head' }, h('h1', {}, 'Execution ', h('span', { class: 'mono' }, id)),
      ui.status, ui.connection, h('span', { class: 'spacer' }), ui.cancelError, ui.cancel),
    ui.problem,
    h('dl', { class: 'facts' }, fields.map(([f, l]) => field(f, l))),
    h('div', { class: 'panels' }, ui.resources, ui.timelinePanel),
    h('div', { class: 'toolbar' }, ui.search, ui.stream, ui.follow, h('span', { class: 'spacer' }), ui.counts),
    ui.log, ui.spansPanel, ui.io);
  return ui;
}

function setStatus(ui, status) {
  if (!status) return;
  ui.status.dataset.status = status;
  ui.status.className = `badge status-${status}`;
  ui.status.textContent = status;
  ui.cancel.disabled = FINAL.has(status);
}

function text(ui, fid, value) {
  const node = ui.log.ownerDocument.getElementById(fid);
  if (node) node.textContent = value === null || value === undefined || value === '' ? DASH : String(value);
}

function showRecord(ui, r) {
  setStatus(ui, r.status);
  text(ui, 'agent', agentLabel(r));
  text(ui, 'user', r.userId);
  text(ui, 'started', r.startedAt ? fmtTime(r.startedAt) : null);
  text(ui, 'finished', r.finishedAt ? fmtTime(r.finishedAt) : null);
  text(ui, 'duration', r.durationMs !== null && r.durationMs !== undefined ? fmtDuration(r.durationMs) : null);
  text(ui, 'exit-code', r.exitCode);
  text(ui, 'error-kind', r.error ? r.error.kind : null);
  text(ui, 'error-message', r.error ? r.error.message : null);
  const u = r.usage || {};
  text(ui, 'tokens', u.reported ? `${fmtCount(u.inputTokens)} in · ${fmtCount(u.outputTokens)} out · `
    + `${fmtCount(u.llmCalls)} LLM calls` : null);
  text(ui, 'cost', u.reported && u.costUsd !== null && u.costUsd !== undefined ? u.costUsd : null);
  showIo(ui, r);
}

/** The record's peaks once it has them (at the end); until then, the highest samples seen. */
function showPeaks(ui, r, seen) {
  const memory = r && r.peakMemoryBytes != null ? r.peakMemoryBytes : seen.memory;
  const cpu = r && r.peakCpuPercent != null ? r.peakCpuPercent : seen.cpu;
  text(ui, 'peak-memory', memory != null ? fmtBytes(memory) : null);
  text(ui, 'peak-cpu', cpu != null ? fmtPercent(cpu) : null);
}

function showIo(ui, r) {
  const block = (title, v) => h('details', { class: 'panel', open: true }, h('summary', {}, title),
    h('pre', { class: 'json' }, prettyJson(v)));
  const parts = [block('Input', r.input ?? {})];
  if (r.output !== null && r.output !== undefined) parts.push(block('Output', r.output));
  replace(ui.io, parts);
}

/** While running, the duration grows by the second. */
function tick(ui, r) {
  if (!r || FINAL.has(ui.status.dataset.status) || !r.startedAt) return;
  const started = Date.parse(r.startedAt);
  if (!isNaN(started)) text(ui, 'duration', fmtDuration(Math.max(0, Date.now() - started)));
}

async function cancel(ui, id, refresh) {
  ui.cancelError.textContent = '';
  ui.cancel.disabled = true;
  try {
    await api(`/api/executions/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
  } catch (e) {
    ui.cancelError.textContent = e.message;
    ui.cancel.disabled = FINAL.has(ui.status.dataset.status);
  }
  refresh();
}

function followButton(button, on) {
  const v = on ? 'true' : 'false';
  if (button.getAttribute('aria-pressed') !== v) {
    button.setAttribute('aria-pressed', v);
    button.textContent = on ? 'Following' : 'Follow';
  }
}

function wireLogControls(ui, view) {
  let timer = 0;
  const apply = () => view.setFilter(ui.search.value, ui.stream.value);
  ui.search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(apply, SEARCH_DEBOUNCE_MS);
  });
  ui.stream.addEventListener('change', apply);
  ui.follow.addEventListener('click', () => view.setFollowing(!view.following));
  const counts = () => {
    const held = view.count.toLocaleString();
    ui.counts.textContent = view.matches
      ? `${view.matches.length.toLocaleString()} of ${held} lines${view.scan ? ' (searching…)' : ''}`
      : `${held} lines`;
  };
  const previous = view.onChange;
  view.onChange = (v) => { previous(v); counts(); };
}

/** The resources chart, status timeline and span waterfall, redrawn in batches. */
class Panels {
  constructor(ui) {
    this.ui = ui;
    this.cpu = new LineChart({ title: 'CPU', format: (v) => fmtPercent(v), cls: 'cpu' });
    this.mem = new LineChart({ title: 'Memory', format: (v) => fmtBytes(v), cls: 'mem' });
    ui.resources.append(h('h2', {}, 'Resources'), this.cpu.el, this.mem.el);
    this.waterfall = new Waterfall(ui.spans);
    this.dirty = new Set();
    /** The highest samples seen, for the header while the record has no peaks yet. */
    this.peak = { memory: null, cpu: null };
  }

  metrics(d) {
    const cpu = Number(d.cpuUsage);
    const memory = Number(d.memoryUsage);
    if (isFinite(cpu)) this.peak.cpu = Math.max(this.peak.cpu ?? 0, cpu);
    if (isFinite(memory)) this.peak.memory = Math.max(this.peak.memory ?? 0, memory);
    this.cpu.add(cpu);
    this.mem.add(memory);
    this.ui.resources.hidden = false;
    this.later('charts');
  }

  span(d) {
    this.waterfall.add(d);
    this.ui.spansPanel.hidden = false;
    // A trace can bring thousands of spans a second: redrawn a few times a second at most.
    if (!this.spansTimer) {
      this.spansTimer = setTimeout(() => {
        this.spansTimer = 0;
        this.waterfall.render();
      }, SPANS_REDRAW_MS);
    }
  }

  status(msg) {
    const d = msg.data || {};
    const when = msg.timestamp ? fmtTime(msg.timestamp) : '';
    const detail = d.error ? ` — ${d.error.kind || ''}: ${d.error.message || ''}` : '';
    this.ui.timeline.append(h('li', { dataset: { status: String(d.status) }, class: `status-${d.status}` },
      h('span', { class: 'badge' }, String(d.status)), ` ${when}${detail}`));
    this.ui.timelinePanel.hidden = false;
  }

  later(what) {
    if (!this.dirty.size) {
      requestAnimationFrame(() => this.draw());
      setTimeout(() => this.draw(), 250);
    }
    this.dirty.add(what);
  }

  draw() {
    if (!this.dirty.size) return;
    if (this.dirty.has('charts')) { this.cpu.render(); this.mem.render(); }
    this.dirty.clear();
  }
}
