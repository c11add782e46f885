// ANSI SGR colours of log lines: turns `ESC[...m` sequences into spans with classes (or a colour
// set through the style object for 256/true colours); other escape sequences are dropped. All
// text goes in through textContent, so a line can never become markup.

// eslint-disable-next-line no-control-regex
const ESCAPE = /\x1b\[([0-9;:?]*)([A-Za-z])|\x1b[\]P^_][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;

// Black is a dark grey: the log's background is near black, and text must stay readable.
const PALETTE = [
  '#5c6370', '#cd3131', '#0dbc79', '#e5e510', '#2472c8', '#bc3fbc', '#11a8cd', '#e5e5e5',
  '#666666', '#f14c4c', '#23d18b', '#f5f543', '#3b8eea', '#d670d6', '#29b8db', '#ffffff',
];

/** Whether `text` has an escape sequence at all (most lines do not: they skip the parser). */
export function hasEscapes(text) {
  return text.indexOf('\x1b') !== -1;
}

/** `text` without its escape sequences. */
export function stripAnsi(text) {
  return hasEscapes(text) ? text.replace(ESCAPE, '') : text;
}

/** Appends `text` to `parent`, styled after its SGR sequences. */
export function appendAnsi(parent, text) {
  if (!hasEscapes(text)) {
    parent.append(text);
    return;
  }
  let style = {};
  let last = 0;
  ESCAPE.lastIndex = 0;
  for (let m = ESCAPE.exec(text); m; m = ESCAPE.exec(text)) {
    if (m.index > last) emit(parent, text.slice(last, m.index), style);
    last = ESCAPE.lastIndex;
    if (m[2] === 'm') style = applySgr(style, m[1]);
    if (m[0].length === 0) ESCAPE.lastIndex++;
  }
  if (last < text.length) emit(parent, text.slice(last), style);
}

function emit(parent, text, style) {
  if (!style.fg && !style.bg && !style.bold && !style.dim && !style.italic && !style.underline
      && !style.inverse) {
    parent.append(text);
    return;
  }
  const span = document.createElement('span');
  span.textContent = text;
  const cls = [];
  const fg = style.inverse ? style.bg || '#ffffff' : style.fg;
  const bg = style.inverse ? style.fg || '#000000' : style.bg;
  if (style.bold) cls.push('ansi-bold');
  if (style.dim) cls.push('ansi-dim');
  if (style.italic) cls.push('ansi-italic');
  if (style.underline) cls.push('ansi-underline');
  if (cls.length) span.className = cls.join(' ');
  if (fg) span.style.color = fg;
  if (bg) span.style.backgroundColor = bg;
  parent.append(span);
}

/** The style after the SGR parameters `params` (e.g. `1;31`, `38;5;208`, `38;2;255;0;0`). */
export function applySgr(style, params) {
  const p = params === '' ? [0] : params.split(/[;:]/).map((n) => parseInt(n, 10) || 0);
  const s = { ...style };
  for (let i = 0; i < p.length; i++) {
    const n = p[i];
    if (n === 0) Object.keys(s).forEach((k) => delete s[k]);
    else if (n === 1) s.bold = true;
    else if (n === 2) s.dim = true;
    else if (n === 3) s.italic = true;
    else if (n === 4) s.underline = true;
    else if (n === 7) s.inverse = true;
    else if (n === 22) { s.bold = false; s.dim = false; }
    else if (n === 23) s.italic = false;
    else if (n === 24) s.underline = false;
    else if (n === 27) s.inverse = false;
    else if (n >= 30 && n <= 37) s.fg = PALETTE[n - 30];
    else if (n >= 90 && n <= 97) s.fg = PALETTE[n - 90 + 8];
    else if (n >= 40 && n <= 47) s.bg = PALETTE[n - 40];
    else if (n >= 100 && n <= 107) s.bg = PALETTE[n - 100 + 8];
    else if (n === 39) s.fg = null;
    else if (n === 49) s.bg = null;
    else if (n === 38 || n === 48) {
      const [colour, used] = extended(p, i + 1);
      // An incomplete colour (`38;5` with no index) is garbage: it must not paint text black.
      if (colour !== undefined) {
        if (n === 38) s.fg = colour; else s.bg = colour;
      }
      i += used;
    }
  }
  return s;
}

/**
 * A 256-colour (`5;n`) or true-colour (`2;r;g;b`) parameter run; returns [css, params used],
 * css `undefined` when the run is cut short.
 */
function extended(p, i) {
  if (p[i] === 5) return p.length > i + 1 ? [colour256(p[i + 1]), 2] : [undefined, 1];
  if (p[i] === 2) {
    if (p.length < i + 4) return [undefined, p.length - i];
    const [r, g, b] = [p[i + 1], p[i + 2], p[i + 3]].map((v) => Math.max(0, Math.min(255, v || 0)));
    return [`rgb(${r}, ${g}, ${b})`, 4];
  }
  return [null, 0];
}

function colour256(n) {
  if (n < 16) return PALETTE[n];
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return `rgb(${v}, ${v}, ${v})`;
  }
  const c = n - 16;
  const level = (x) => (x === 0 ? 0 : 55 + x * 40);
  return `rgb(${level(Math.floor(c / 36))}, ${level(Math.floor(c / 6) % 6)}, ${level(c % 6)})`;
}
