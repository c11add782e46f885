// REST access: the API key kept in sessionStorage, the Bearer header, the error shape
// `{error: {code, message}}`, and the 401 hook that makes the page ask for a key.

const KEY = 'agentnexus.key';
let unauthorized = () => {};

export function getKey() {
  try { return sessionStorage.getItem(KEY) || ''; } catch { return ''; }
}

export function setKey(key) { sessionStorage.setItem(KEY, key); }
export function forgetKey() { sessionStorage.removeItem(KEY); }

/** What to do when the server answers 401 (the app shows the key form). */
export function onUnauthorized(f) { unauthorized = f; }

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

/**
 * Calls the API at `path`; resolves with the parsed JSON body. `opts.json` is sent as the body;
 * `opts.accept` lists non-2xx statuses whose JSON body is still an answer (readiness: 503).
 */
export async function api(path, opts = {}) {
  const headers = { Accept: 'application/json' };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method: opts.method || 'GET', headers, cache: 'no-store' };
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(opts.json);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `the server is unreachable (${e.message})`);
  }
  const body = await readBody(res);
  if (res.ok || (opts.accept || []).includes(res.status)) return body;
  if (res.status === 401) unauthorized();
  const err = body && body.error ? body.error : {};
  throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText, body);
}

async function readBody(res) {
  const text = await res.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return { text }; }
}

/** The agents (`GET /api/agents` answers `{agents: [...]}`). */
export async function listAgents() {
  return (await api('/api/agents')).agents;
}

/** The query string of `params`, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}
