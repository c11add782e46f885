// The virtualized log pane (#log): every line held in compact arrays (texts, a stream code per
// line, seqs), only the visible window in the DOM with a fixed row height, rendering at most once
// per animation frame, follow/pause, search and stream filter over an index array of matches,
// and `#seq-N` targets. Past ~15 million px the spacer is scaled and the scroll position mapped
// to a line index (browsers cap an element's height near 33 million px).

import { appendAnsi, hasEscapes } from '/assets/ansi.js';

export const ROW = 18;
const MAX_SPACER = 15e6;
const OVERSCAN = 4;
const MAX_RENDERED_CHARS = 4000;
const SCAN_SLICE_MS = 12;
export const STREAMS = ['stdout', 'stderr', 'system', 'otlp'];

export class LogView {
  /** `el` is #log (the scrolling element); `onChange(view)` runs after each render. */
  constructor(el, onChange = () => {}) {
    this.el = el;
    this.onChange = onChange;
    this.texts = [];
    this.streams = new Uint8Array(1024);
    this.seqs = new Float64Array(1024);
    this.count = 0;
    this.lastSeq = 0;
    this.query = '';
    this.stream = '';
    this.matches = null; // indexes of matching lines while a filter is on
    this.scan = null; // an unfinished search: {pos, token}
    this.following = true;
    this.targetSeq = null;
    this.expectScroll = -1;
    this.scheduled = false;
    this.rows = [];
    this.build();
  }

  build() {
    this.spacer = document.createElement('div');
    this.spacer.className = 'log-spacer';
    this.window = document.createElement('div');
    this.window.className = 'log-window';
    this.el.replaceChildren(this.spacer, this.window);
    this.el.dataset.lineCount = '0';
    this.el.dataset.lastSeq = '0';
    this.el.addEventListener('scroll', () => this.scrolled(), { passive: true });
    this.viewHeight = 0;
    this.spacerHeight = 0;
    this.previousSpacerHeight = 0;
    // Cached so that a frame reads no layout it has just invalidated.
    new ResizeObserver(() => {
      this.viewHeight = this.el.clientHeight;
      this.schedule();
    }).observe(this.el);
  }

  /** Adds one line: O(1), the DOM follows on the next frame. */
  push(seq, stream, text) {
    if (this.count === this.streams.length) this.grow();
    const i = this.count++;
    this.texts[i] = text;
    this.streams[i] = Math.max(0, STREAMS.indexOf(stream));
    this.seqs[i] = seq;
    if (this.matches && !this.scan && this.matchAt(i)) this.matches.push(i);
    this.schedule();
  }

  /** Records the seq of an event of any kind. */
  noteSeq(seq) {
    if (seq > this.lastSeq) this.lastSeq = seq;
    this.schedule();
  }

  grow() {
    const streams = new Uint8Array(this.streams.length * 2);
    streams.set(this.streams);
    const seqs = new Float64Array(this.seqs.length * 2);
    seqs.set(this.seqs);
    this.streams = streams;
    this.seqs = seqs;
  }

  matchAt(i) {
    if (this.stream && STREAMS[this.streams[i]] !== this.stream) return false;
    return !this.query || this.texts[i].toLowerCase().includes(this.query);
  }

  /** Shows only lines containing `query` (case-insensitive) from `stream` ('' = any). */
  setFilter(query, stream) {
    this.query = (query || '').toLowerCase();
    this.stream = stream || '';
    this.scan = null;
    if (!this.query && !this.stream) {
      this.matches = null;
      delete this.el.dataset.matchCount;
      delete this.el.dataset.searching;
    } else {
      this.matches = [];
      this.scan = { pos: 0, token: {} };
      this.el.dataset.searching = '';
      this.scanSlice(this.scan.token);
    }
    if (this.following) this.expectScroll = -1;
    this.schedule();
  }

  /** Scans the lines for matches in slices, so a long search never freezes the page. */
  scanSlice(token) {
    if (!this.scan || this.scan.token !== token) return;
    const end = performance.now() + SCAN_SLICE_MS;
    let i = this.scan.pos;
    while (i < this.count) {
      if (this.matchAt(i)) this.matches.push(i);
      i++;
      if ((i & 1023) === 0 && performance.now() > end) break;
    }
    this.scan.pos = i;
    if (i < this.count) {
      setTimeout(() => this.scanSlice(token), 0);
    } else {
      this.scan = null;
      delete this.el.dataset.searching;
    }
    this.schedule();
  }

  /** The number of lines shown (all, or the matches). */
  get shown() {
    return this.matches ? this.matches.length : this.count;
  }

  indexAt(row) {
    return this.matches ? this.matches[row] : row;
  }

  setFollowing(on) {
    this.following = on;
    this.schedule();
    this.onChange(this);
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    // A hidden tab gets no animation frames; the timer keeps the attributes current anyway.
    const run = (frame) => {
      if (!this.scheduled) return;
      this.scheduled = false;
      this.render();
      // After a render between frames, a scroll event still to come may mean the end before it.
      if (frame) this.previousSpacerHeight = this.spacerHeight;
    };
    requestAnimationFrame(() => run(true));
    setTimeout(() => run(false), 250);
  }

  scrolled() {
    const top = this.el.scrollTop;
    const moved = top !== this.lastTop; // a horizontal scroll is not a move
    this.lastTop = top;
    if (!moved || Math.abs(top - this.expectScroll) <= 1) return;
    this.expectScroll = -1;
    // A render between frames may have grown the log after the scroll: the end meant may be
    // the one before it.
    const end = Math.min(this.spacerHeight, this.previousSpacerHeight);
    const atEnd = top + this.viewHeight >= end - 2;
    // Scrolling away from the end pauses; scrolling back to it (with lines to scroll) follows.
    if (this.following !== atEnd && (!atEnd || this.spacerHeight > this.viewHeight)) {
      this.setFollowing(atEnd);
    }
    this.previousSpacerHeight = this.spacerHeight;
    this.schedule();
  }

  /** Scroll geometry: total spacer height and the px-per-row mapping. */
  geometry() {
    const n = this.shown;
    const view = this.viewHeight || this.el.clientHeight || ROW * 20;
    const full = n * ROW;
    const height = Math.min(full, MAX_SPACER);
    const visible = Math.ceil(view / ROW);
    return { n, view, full, height, visible, scaled: full > height };
  }

  /** The (fractional) row at the top for scroll position `top`. */
  rowAt(g, top) {
    if (!g.scaled) return top / ROW;
    const range = Math.max(1, g.height - g.view);
    return (Math.min(top, range) / range) * Math.max(0, g.n - g.view / ROW);
  }

  /** The scroll position that puts `row` at the top. */
  topFor(g, row) {
    if (!g.scaled) return row * ROW;
    const rows = Math.max(1, g.n - g.view / ROW);
    return (Math.min(row, rows) / rows) * Math.max(0, g.height - g.view);
  }

  render() {
    const g = this.geometry();
    if (g.height !== this.spacerHeight) {
      this.spacer.style.height = `${g.height}px`;
      this.spacerHeight = g.height;
    }
    this.applyTarget(g);
    if (this.following) this.scrollTo(Math.max(0, g.height - g.view));
    const top = this.el.scrollTop;
    const exact = this.rowAt(g, top);
    const last = Math.min(g.n, Math.floor(exact) + g.visible + OVERSCAN + 1);
    const first = Math.min(last, Math.max(0, Math.floor(exact) - OVERSCAN));
    const offset = g.scaled ? top - (exact - first) * ROW : first * ROW;
    this.window.style.transform = `translateY(${Math.max(0, offset)}px)`;
    this.fill(first, last);
    this.setData('lineCount', this.count);
    this.setData('lastSeq', this.lastSeq);
    if (this.matches && !this.scan) this.setData('matchCount', this.matches.length);
    this.onChange(this);
  }

  setData(key, value) {
    const text = String(value);
    if (this.el.dataset[key] !== text) this.el.dataset[key] = text;
  }

  scrollTo(top) {
    if (Math.abs(this.el.scrollTop - top) <= 1) return;
    this.expectScroll = top;
    this.el.scrollTop = top;
    this.expectScroll = this.el.scrollTop;
  }

  /** Puts rows `first..last` in the window, reusing row elements whose line did not change. */
  fill(first, last) {
    const need = last - first;
    while (this.rows.length < need) {
      const row = document.createElement('div');
      row.seq = -1;
      this.rows.push(row);
      this.window.append(row);
    }
    while (this.rows.length > need) this.rows.pop().remove();
    for (let r = 0; r < need; r++) this.paint(this.rows[r], this.indexAt(first + r));
  }

  paint(row, i) {
    const seq = this.seqs[i];
    const target = seq === this.targetSeq;
    if (row.seq === seq && row.target === target && row.query === this.query) return;
    row.seq = seq;
    row.target = target;
    row.query = this.query;
    row.className = `line ${STREAMS[this.streams[i]]}${target ? ' target' : ''}`;
    row.dataset.seq = String(seq);
    const link = document.createElement('a');
    link.className = 'seq';
    link.href = `#seq-${seq}`;
    link.textContent = String(seq);
    const text = document.createElement('span');
    text.className = 'text';
    const line = this.texts[i];
    const shown = line.length > MAX_RENDERED_CHARS ? `${line.slice(0, MAX_RENDERED_CHARS)} …` : line;
    if (this.query && !hasEscapes(shown)) appendMarked(text, shown, this.query);
    else appendAnsi(text, shown);
    row.replaceChildren(link, text);
  }

  /** Asks to scroll to and highlight the line with `seq` (as soon as it is held). */
  target(seq) {
    this.targetSeq = seq;
    this.pendingTarget = seq;
    this.setFollowing(false);
    this.schedule();
  }

  applyTarget(g) {
    if (this.pendingTarget === undefined || this.pendingTarget === null) return;
    let row = this.rowOfSeq(this.pendingTarget);
    if (row < 0 && this.matches && this.findSeq(this.pendingTarget) >= 0) {
      this.onClearFilter && this.onClearFilter();
      return;
    }
    if (row < 0) return;
    this.pendingTarget = null;
    const centred = Math.max(0, row - Math.floor(g.visible / 2));
    this.scrollTo(this.topFor(g, centred));
  }

  /** The index of the line with `seq`, or -1 (seqs only grow, so a binary search). */
  findSeq(seq) {
    let lo = 0, hi = this.count - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.seqs[mid] === seq) return mid;
      if (this.seqs[mid] < seq) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
  }

  /** The row showing the line with `seq` among those shown, or -1. */
  rowOfSeq(seq) {
    const i = this.findSeq(seq);
    if (i < 0 || !this.matches) return i;
    let lo = 0, hi = this.matches.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.matches[mid] === i) return mid;
      if (this.matches[mid] < i) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
  }
}

/** Appends `text` with each occurrence of `query` (lowercase) in a <mark>. */
function appendMarked(parent, text, query) {
  const lower = text.toLowerCase();
  if (lower.length !== text.length) {
    parent.append(text); // lowercasing moved the offsets (rare scripts): no marks
    return;
  }
  let from = 0;
  for (let at = lower.indexOf(query); at !== -1; at = lower.indexOf(query, from)) {
    if (at > from) parent.append(text.slice(from, at));
    const mark = document.createElement('mark');
    mark.textContent = text.slice(at, at + query.length);
    parent.append(mark);
    from = at + query.length;
  }
  if (from < text.length) parent.append(text.slice(from));
}
