// Shared helpers of the client scripts the Go tests in internal/e2e drive.
//
// Every script takes the gateway's GraphQL URL, the Authorization value and
// (for subscriptions) the instance id, as arguments or from the environment:
//
//   node <script>.mjs <graphqlURL> <authorization> [instanceId]
//   LEADSTREAM_URL=… LEADSTREAM_AUTH=… LEADSTREAM_INSTANCE=… node <script>.mjs
//
// Output protocol on stdout, one line each:
//   READY                         the subscription request is out and acknowledged
//   EVENT {"event":…,"raw":…}     the first marketoEvents event, and the raw
//                                 frame text (websocket message or SSE stream)
//                                 it arrived in
//   CLOSED {"code":…,…}           the connection was refused or closed
// Diagnostics go to stderr. Exit 0 after EVENT, 1 on error or time-out,
// 3 after CLOSED.
import WebSocket from 'ws';

export const SUBSCRIPTION = `subscription ($id: ID) {
  marketoEvents(instanceId: $id) { id cursor instanceId source eventType objectType payload }
}`;

export function config({ needInstance = true } = {}) {
  const [url = process.env.LEADSTREAM_URL, auth = process.env.LEADSTREAM_AUTH, instanceId = process.env.LEADSTREAM_INSTANCE] =
    process.argv.slice(2);
  if (!url || auth === undefined || (needInstance && !instanceId)) {
    die(`usage: node ${process.argv[1]} <graphqlURL> <authorization>${needInstance ? ' <instanceId>' : ''}`);
  }
  const timeoutMs = Number(process.env.LEADSTREAM_TIMEOUT_MS || 15000);
  return { url, auth, instanceId, timeoutMs };
}

// wsURL turns http(s)://… into ws(s)://….
export function wsURL(url) {
  return url.replace(/^http/, 'ws');
}

export function emit(kind, value) {
  process.stdout.write(value === undefined ? `${kind}\n` : `${kind} ${JSON.stringify(value)}\n`);
}

export function log(...args) {
  process.stderr.write(`[${new Date().toISOString()}] ${args.map((a) => (typeof a === 'string' ? a : inspect(a))).join(' ')}\n`);
}

export function die(msg, code = 1) {
  log(`FAIL: ${msg}`);
  process.exit(code);
}

// deadline ends the process with exit 1 if nothing ended it first.
export function deadline(ms, what) {
  return setTimeout(() => die(`timed out after ${ms} ms waiting for ${what()}`), ms);
}

function inspect(v) {
  if (v instanceof Error) return v.stack || String(v);
  if (v && typeof v === 'object' && 'code' in v && 'reason' in v) return `close ${v.code} ${JSON.stringify(v.reason)}`;
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}

// recordingWebSocket is the ws WebSocket class, remembering the text of
// every message received so the raw bytes of an event can be checked.
export function recordingWebSocket(frames) {
  return class RecordingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (e) => frames.push(String(e.data)));
    }
  };
}

// marketoEvent picks the event out of an ExecutionResult, or dies on errors.
export function marketoEvent(result) {
  if (result?.errors?.length) die(`subscription answered errors: ${JSON.stringify(result.errors)}`);
  const ev = result?.data?.marketoEvents;
  if (!ev) die(`result without data.marketoEvents: ${JSON.stringify(result)}`);
  return ev;
}
