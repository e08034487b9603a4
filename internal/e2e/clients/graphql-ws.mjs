// The `graphql-ws` client (protocol graphql-transport-ws) subscribes to
// marketoEvents and prints the first event. See common.mjs for the protocol.
import { createClient } from 'graphql-ws';
import { config, SUBSCRIPTION, wsURL, emit, log, die, deadline, recordingWebSocket, marketoEvent } from './common.mjs';

const { url, auth, instanceId, timeoutMs } = config();
const frames = [];
let attempts = 0;
let lastClose = null;
const RETRIES = 3;

deadline(timeoutMs, () => (attempts ? 'an event' : 'a connection'));

const client = createClient({
  url: wsURL(url),
  webSocketImpl: recordingWebSocket(frames),
  connectionParams: { Authorization: auth },
  lazy: true,
  // Retries stay on (and fast) so the test sees whether an auth refusal
  // stops them, as a fatal close code must.
  retryAttempts: RETRIES,
  retryWait: () => new Promise((resolve) => setTimeout(resolve, 200)),
  on: {
    connecting: () => {
      attempts++;
      log(`connecting (attempt ${attempts})`);
    },
    connected: () => {
      log('connected (connection_ack)');
      emit('READY');
    },
    closed: (e) => {
      lastClose = { code: e?.code, reason: e?.reason, wasClean: e?.wasClean };
      log('closed', lastClose);
    },
    error: (e) => log('socket error', e),
  },
});

client.subscribe(
  { query: SUBSCRIPTION, variables: { id: instanceId } },
  {
    next(result) {
      const event = marketoEvent(result);
      emit('EVENT', { event, raw: frames.find((f) => f.includes('"marketoEvents"')) ?? null });
      client.dispose();
      process.exit(0);
    },
    error(err) {
      // The client gave up: report the close and how many connections it
      // tried, after a pause that would show one more retry.
      const close = err && typeof err === 'object' && 'code' in err ? { code: err.code, reason: err.reason } : lastClose;
      if (!close) die(`subscription error: ${err instanceof Error ? err.stack : JSON.stringify(err)}`);
      setTimeout(() => {
        emit('CLOSED', { ...close, attempts, retryAttempts: RETRIES });
        process.exit(3);
      }, 1000);
    },
    complete() {
      die('subscription completed before any event');
    },
  },
);
