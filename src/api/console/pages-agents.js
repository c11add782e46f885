// The agents page (`/agents`): the list of agents and the Run form, whose JSON input is parsed
// as it is typed (a syntax error shows at once); the server's answer to a submission is shown
// as `code: message`, and a 202 opens the new execution.

import { api, listAgents } from '/assets/api.js';
import { h, replace, prettyJson, DASH } from '/assets/dom.js';

export function mount(main) {
  const ui = {
    body: h('tbody'),
    agent: h('select', { id: 'run-agent', required: true }),
    input: h('textarea', { id: 'run-input', rows: 8, spellcheck: 'false', class: 'mono' }, '{}'),
    submit: h('button', { id: 'run-submit', type: 'submit' }, 'Run'),
    error: h('div', { id: 'run-error', class: 'error', role: 'alert' }),
    schema: h('pre', { id: 'run-schema', class: 'json' }),
    note: h('p', { class: 'error', role: 'alert' }),
  };
  const form = h('form', { id: 'run-form', class: 'panel run-form' }, h('h2', {}, 'Run an agent'),
    h('label', {}, 'Agent ', ui.agent), h('label', { for: 'run-input' }, 'Input (JSON)'), ui.input,
    h('div', { class: 'toolbar' }, ui.submit, ui.error),
    h('h3', {}, 'Input schema'), ui.schema);
  main.append(h('h1', {}, 'Agents'), ui.note,
    h('table', { id: 'agents', class: 'grid' }, h('thead', {}, h('tr', {},
      ['Id', 'Name', 'Runtime', 'Timeout', 'Price (wei)'].map((t) => h('th', {}, t)))), ui.body),
    form);
  const st = { agents: [] };

  ui.input.addEventListener('input', () => check(ui));
  ui.agent.addEventListener('change', () => showSchema(ui, st.agents));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    run(ui);
  });
  load(ui, st);
}

async function load(ui, st) {
  try {
    st.agents = await listAgents();
    ui.note.textContent = '';
  } catch (e) {
    ui.note.textContent = e.message;
    return;
  }
  replace(ui.body, st.agents.map((a) => h('tr', { dataset: { agentId: String(a.id) } },
    h('td', { class: 'mono' }, String(a.id)), h('td', {}, String(a.name ?? DASH)),
    h('td', { class: 'mono' }, runtimeText(a.runtime)),
    h('td', {}, a.timeoutSecs ? `${a.timeoutSecs} s` : DASH), h('td', {}, String(a.priceWei ?? DASH)))));
  const wanted = new URLSearchParams(location.search).get('agent');
  replace(ui.agent, st.agents.map((a) => h('option', { value: String(a.id) }, `${a.name ?? a.id} (${a.id})`)));
  if (wanted && st.agents.some((a) => a.id === wanted)) ui.agent.value = wanted;
  showSchema(ui, st.agents);
}

function runtimeText(rt) {
  if (!rt) return DASH;
  if (rt.type === 'process') return ['process:', rt.command, ...(rt.args || [])].join(' ');
  if (rt.type === 'docker') return `docker: ${rt.image ?? ''}`;
  return String(rt.type ?? JSON.stringify(rt));
}

function showSchema(ui, agents) {
  const a = agents.find((x) => String(x.id) === ui.agent.value);
  ui.schema.textContent = a && a.inputSchema ? prettyJson(a.inputSchema) : 'none: any JSON input';
}

/** The parsed input, or undefined with the syntax error shown. */
function check(ui) {
  try {
    const value = JSON.parse(ui.input.value.trim() === '' ? '{}' : ui.input.value);
    ui.error.textContent = '';
    ui.input.removeAttribute('aria-invalid');
    return { value };
  } catch (e) {
    ui.error.textContent = `invalid JSON: ${e.message}`;
    ui.input.setAttribute('aria-invalid', 'true');
    return undefined;
  }
}

async function run(ui) {
  const parsed = check(ui);
  if (!parsed || !ui.agent.value) return;
  ui.submit.disabled = true;
  try {
    const res = await api('/api/executions', { method: 'POST', json: { agentId: ui.agent.value, input: parsed.value } });
    location.assign(`/executions/${encodeURIComponent(res.executionId)}`);
  } catch (e) {
    ui.error.textContent = e.message;
  } finally {
    ui.submit.disabled = false;
  }
}
