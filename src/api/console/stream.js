// The /ws follower of one execution: opens the socket (key as a subprotocol, never in the URL),
// subscribes with `since` = the last seq seen, hands each event over exactly once (anything at
// or below the last seq is dropped), and reconnects with backoff (0.5 s doubling to 5 s) after
// any close until the execution's final status has arrived.

import { getKey } from '/assets/api.js';
import { FINAL } from '/assets/dom.js';

const MIN_DELAY = 500;
const MAX_DELAY = 5000;
const PING_MS = 15000;
/** No message at all for this long: the connection is dead even if the socket says otherwise. */
const SILENCE_MS = 45000;

function hexUtf8(s) {
  return Array.from(new TextEncoder().encode(s), (b) => b.toString(16).padStart(2, '0')).join('');
}

function socketUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

/**
 * Follows `executionId`. `h.onEvent(msg)` gets each new event once, in seq order; `h.onState(s)`
 * gets 'connecting' | 'open' | 'closed'; `h.onEnd()` runs once the stream is complete;
 * `h.onProblem(code, message)` reports an `error` message. Returns `{close()}`.
 */
export function follow(executionId, h) {
  const s = { lastSeq: 0, delay: MIN_DELAY, ws: null, timer: 0, ping: 0, heard: 0, over: false };

  const setState = (state) => h.onState && h.onState(state);

  function connect() {
    if (s.over) return;
    setState('connecting');
    const protocols = ['agentnexus'];
    const key = getKey();
    if (key) protocols.push(`agentnexus.bearer.${hexUtf8(key)}`);
    let ws;
    try {
      ws = new WebSocket(socketUrl(), protocols);
    } catch {
      retry();
      return;
    }
    s.ws = ws;
    ws.onopen = () => {
      s.heard = Date.now();
      ws.send(JSON.stringify({ type: 'subscribe', executionId, since: s.lastSeq }));
      s.ping = setInterval(() => keepAlive(ws), PING_MS);
    };
    ws.onmessage = (e) => {
      s.heard = Date.now();
      receive(e.data);
    };
    ws.onclose = () => {
      clearInterval(s.ping);
      if (s.ws !== ws) return;
      s.ws = null;
      if (s.over) setState('closed');
      else retry();
    };
    ws.onerror = () => {};
  }

  function keepAlive(ws) {
    if (Date.now() - s.heard > SILENCE_MS) ws.close();
    else if (ws.readyState === WebSocket.OPEN) ws.send('{"type":"ping"}');
  }

  function retry() {
    setState('connecting');
    clearTimeout(s.timer);
    s.timer = setTimeout(connect, s.delay);
    s.delay = Math.min(s.delay * 2, MAX_DELAY);
  }

  function receive(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { return; }
    switch (msg.type) {
      case 'subscribed': return subscribed(msg.data || {});
      case 'pong': case 'unsubscribed': return;
      case 'error': return problem(msg.data || {});
      default: return event(msg);
    }
  }

  function subscribed(data) {
    s.delay = MIN_DELAY;
    setState('open');
    if (FINAL.has(data.status) && Number(data.lastSeq) <= s.lastSeq) end();
  }

  function event(msg) {
    if (typeof msg.seq !== 'number' || msg.seq <= s.lastSeq) return;
    s.lastSeq = msg.seq;
    h.onEvent(msg);
    if (msg.type === 'status' && msg.data && FINAL.has(msg.data.status)) end();
  }

  function problem(data) {
    if (h.onProblem) h.onProblem(data.code, data.message);
    // Retrying helps with none of these; the record has the rest.
    if (['not_found', 'bad_request', 'end_not_stored', 'since_beyond_end'].includes(data.code)) end();
    else if (data.code === 'internal' || data.code === 'too_many_subscriptions') s.ws && s.ws.close();
  }

  function end() {
    if (s.over) return;
    s.over = true;
    clearTimeout(s.timer);
    if (s.ws) s.ws.close(1000);
    setState('closed');
    if (h.onEnd) h.onEnd();
  }

  connect();
  return {
    close() {
      s.over = true;
      clearTimeout(s.timer);
      if (s.ws) s.ws.close(1000);
    },
    get lastSeq() { return s.lastSeq; },
  };
}
