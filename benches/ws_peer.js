// The peer for the WebSocket benches: a minimal Node.js `ws` server that broadcasts an agent's
// output the way the spec's system does — for every line, walk the clients and, for each one
// subscribed to the execution, JSON.stringify the message and send it. Heartbeat as in the spec:
// a ping to every client each interval, terminating those that did not answer the previous one.
//
// Usage: node ws_peer.js HEARTBEAT_MS [AGENT_COMMAND ARGS...]
// Prints `listening PORT`; runs the agent (if any) as execution `exec_peer` right away.
const WebSocket = require('ws');
const { spawn } = require('child_process');
const readline = require('readline');

const heartbeatMs = Number(process.argv[2]);
const agent = process.argv.slice(3);
const wss = new WebSocket.Server({ host: '127.0.0.1', port: 0, perMessageDeflate: false });

wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.subscriptions = new Set();
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('message', (data) => {
    let message;
    try { message = JSON.parse(data.toString()); } catch (e) { return; }
    if (message.type === 'subscribe') {
      ws.subscriptions.add(message.executionId);
      ws.send(JSON.stringify({ type: 'subscribed', executionId: message.executionId, timestamp: Date.now() }));
    } else if (message.type === 'unsubscribe') {
      ws.subscriptions.delete(message.executionId);
    }
  });
});

setInterval(() => {
  wss.clients.forEach((ws) => {
    if (!ws.isAlive) return ws.terminate();
    ws.isAlive = false;
    ws.ping();
  });
}, heartbeatMs);

function broadcast(executionId, type, data) {
  wss.clients.forEach((ws) => {
    if (ws.readyState === WebSocket.OPEN && ws.subscriptions.has(executionId)) {
      ws.send(JSON.stringify({ type, executionId, data, timestamp: Date.now() }));
    }
  });
}

wss.on('listening', () => {
  console.log('listening ' + wss.address().port);
  if (agent.length === 0) return;
  const id = 'exec_peer';
  const child = spawn(agent[0], agent.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  broadcast(id, 'status', { status: 'RUNNING' });
  readline.createInterface({ input: child.stdout })
    .on('line', (line) => broadcast(id, 'log', { log: line, stream: 'stdout' }))
    .on('close', () => broadcast(id, 'status', { status: 'COMPLETED' }));
});
