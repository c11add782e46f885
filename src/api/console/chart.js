// A small SVG line chart (one series, last N points) built with createElementNS: used for the
// CPU and memory of an execution from its `metrics` events.

const NS = 'http://www.w3.org/2000/svg';
const W = 300;
const H = 80;

function svg(tag, attrs = {}) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

export class LineChart {
  /** `opts`: {title, format(v), max (fixed top, optional), points (kept, default 300), cls}. */
  constructor(opts) {
    this.opts = { points: 300, ...opts };
    this.values = [];
    this.el = document.createElement('figure');
    this.el.className = `chart ${opts.cls || ''}`;
    this.caption = document.createElement('figcaption');
    this.svg = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
    this.grid = svg('line', { x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5, class: 'axis' });
    this.line = svg('polyline', { class: 'series', fill: 'none' });
    this.svg.append(this.grid, this.line);
    this.el.append(this.caption, this.svg);
    this.caption.textContent = opts.title;
  }

  add(value) {
    if (typeof value !== 'number' || !isFinite(value)) return;
    this.values.push(value);
    if (this.values.length > this.opts.points) this.values.shift();
  }

  render() {
    const v = this.values;
    const top = Math.max(this.opts.max || 0, ...v, 1e-9) * (this.opts.max ? 1 : 1.1);
    const step = v.length > 1 ? W / (v.length - 1) : 0;
    const pts = v.map((y, i) => `${(i * step).toFixed(1)},${(H - (y / top) * (H - 4)).toFixed(1)}`);
    this.line.setAttribute('points', pts.join(' '));
    const lastValue = v.length ? this.opts.format(v[v.length - 1]) : '—';
    const peak = v.length ? this.opts.format(Math.max(...v)) : '—';
    this.caption.textContent = `${this.opts.title}: ${lastValue} (max ${peak})`;
    this.svg.setAttribute('aria-label', this.caption.textContent);
  }
}
