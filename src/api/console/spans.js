// The span waterfall (#spans): spans from `span` events as a tree by parentSpanId, each a row
// with its name, duration, key GenAI attributes (model, tokens) as text, and a bar placed by its
// start and end within the whole trace's time range.

import { h, fmtDuration } from '/assets/dom.js';

const KEY_ATTRIBUTES = [
  'gen_ai.operation.name', 'gen_ai.request.model', 'gen_ai.response.model',
  'gen_ai.usage.input_tokens', 'gen_ai.usage.output_tokens', 'gen_ai.tool.name',
];

/** Rows drawn at most: a trace may hold 100,000 spans, the page stays light. */
const MAX_ROWS = 1000;

export class Waterfall {
  constructor(el) {
    this.el = el;
    this.spans = new Map();
  }

  add(span) {
    if (span && span.spanId) this.spans.set(span.spanId, span);
  }

  get size() {
    return this.spans.size;
  }

  render() {
    const spans = [...this.spans.values()];
    if (!spans.length) return;
    let start = Infinity;
    let end = -Infinity;
    for (const s of spans) {
      start = Math.min(start, Number(s.startTimeMs));
      end = Math.max(end, Number(s.endTimeMs ?? s.startTimeMs));
    }
    const range = Math.max(1, end - start);
    const ordered = this.ordered(spans);
    const rows = ordered.slice(0, MAX_ROWS).map(([span, depth]) => this.row(span, depth, start, range));
    const more = ordered.length > MAX_ROWS
      ? h('div', { class: 'muted' }, `${(ordered.length - MAX_ROWS).toLocaleString()} more spans not drawn`)
      : null;
    this.el.replaceChildren(h('div', { class: 'span-head' }, h('span', {}, `${spans.length} spans`),
      h('span', {}, `0 — ${fmtDuration(range)}`)), ...rows, ...(more ? [more] : []));
  }

  /** Depth-first: roots (no parent, or a parent never seen), children by start time. */
  ordered(spans) {
    const children = new Map();
    const roots = [];
    for (const s of spans) {
      const parent = s.parentSpanId && this.spans.has(s.parentSpanId) ? s.parentSpanId : null;
      if (!parent) roots.push(s);
      else (children.get(parent) || children.set(parent, []).get(parent)).push(s);
    }
    const byStart = (a, b) => Number(a.startTimeMs) - Number(b.startTimeMs);
    const out = [];
    const walk = (s, depth) => {
      out.push([s, depth]);
      for (const c of (children.get(s.spanId) || []).sort(byStart)) walk(c, depth + 1);
    };
    roots.sort(byStart).forEach((r) => walk(r, 0));
    return out;
  }

  row(span, depth, start, range) {
    const s0 = Number(span.startTimeMs);
    const s1 = Number(span.endTimeMs ?? span.startTimeMs);
    const failed = span.status && (span.status.code === 2 || span.status.code === 'ERROR'
      || span.status.code === 'STATUS_CODE_ERROR');
    const bar = h('div', { class: `span-bar${failed ? ' failed' : ''}` });
    bar.style.left = `${((s0 - start) / range) * 100}%`;
    bar.style.width = `${Math.max(0.3, ((s1 - s0) / range) * 100)}%`;
    const name = h('div', { class: 'span-name' }, h('span', { class: 'span-title' }, String(span.name)),
      ` ${fmtDuration(s1 - s0)}`, h('span', { class: 'span-attrs' }, attributesText(span)));
    name.style.paddingLeft = `${depth * 14}px`;
    const title = failed && span.status.message ? `error: ${span.status.message}` : '';
    return h('div', { class: 'span-row', dataset: { spanId: String(span.spanId) }, title: title || undefined },
      name, h('div', { class: 'span-track' }, bar));
  }
}

function attributesText(span) {
  const a = span.attributes || {};
  const parts = [];
  for (const k of KEY_ATTRIBUTES) {
    if (a[k] !== undefined) parts.push(`${k.replace('gen_ai.', '')}=${scalar(a[k])}`);
  }
  return parts.length ? ` ${parts.join(' ')}` : '';
}

function scalar(v) {
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}
