// The console's entry point: routes location.pathname to a page module, marks the current nav
// link, and owns the API key prompt (shown on any 401; the key lives in sessionStorage only).

import { h, replace } from '/assets/dom.js';
import { getKey, setKey, forgetKey, onUnauthorized } from '/assets/api.js';
import * as executions from '/assets/pages-executions.js';
import * as execution from '/assets/pages-execution.js';
import * as agents from '/assets/pages-agents.js';
import * as status from '/assets/pages-status.js';

const main = document.getElementById('main');
let unmount = null;

function route(path) {
  const m = /^\/executions\/([^/]+)\/?$/.exec(path);
  if (m) return { name: 'execution', page: execution, arg: decodeURIComponent(m[1]), nav: 'executions' };
  if (path === '/agents' || path === '/agents/') return { name: 'agents', page: agents, nav: 'agents' };
  if (path === '/status' || path === '/status/') return { name: 'status', page: status, nav: 'status' };
  return { name: 'executions', page: executions, nav: 'executions' };
}

function mount() {
  if (unmount) unmount();
  const r = route(location.pathname);
  document.body.dataset.page = r.name;
  for (const a of document.querySelectorAll('#top nav a')) {
    a.classList.toggle('current', a.id === `nav-${r.nav}`);
  }
  main.replaceChildren();
  unmount = r.page.mount(main, r.arg) || null;
  showForget();
}

function showForget() {
  document.getElementById('forget-key').hidden = !getKey();
}

function askForKey() {
  const box = document.getElementById('key-prompt');
  if (document.getElementById('key-form')) return;
  const input = h('input', { id: 'key-input', type: 'password', autocomplete: 'off',
    placeholder: 'API key', required: true });
  const form = h('form', { id: 'key-form', class: 'key-form' },
    h('label', { for: 'key-input' }, 'This server needs an API key: '), input,
    h('button', { type: 'submit' }, 'Use key'),
    h('span', { class: 'hint' }, ' kept for this tab only (sessionStorage)'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!input.value) return;
    setKey(input.value);
    replace(box);
    mount();
  });
  replace(box, form);
  input.focus();
}

document.getElementById('forget-key').addEventListener('click', (e) => {
  e.preventDefault();
  forgetKey();
  location.reload();
});

onUnauthorized(askForKey);
mount();
