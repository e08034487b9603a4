// The legacy `subscriptions-transport-ws` client (subprotocol graphql-ws)
// subscribes to marketoEvents and prints the first event. See common.mjs.
import { createRequire } from 'node:module';
import { config, SUBSCRIPTION, wsURL, emit, log, die, deadline, recordingWebSocket, marketoEvent } from './common.mjs';

const require = createRequire(import.meta.url);
const { SubscriptionClient } = require('subscriptions-transport-ws');

const { url, auth, instanceId, timeoutMs } = config();
const frames = [];
let connected = false;

deadline(timeoutMs, () => (connected ? 'an event' : 'connection_ack'));

const client = new SubscriptionClient(
  wsURL(url),
  {
    connectionParams: { Authorization: auth },
    reconnect: false,
    connectionCallback: (err) => {
      if (err) die(`connection_error: ${JSON.stringify(err)}`);
    },
  },
  recordingWebSocket(frames),
);
client.onConnected(() => {
  connected = true;
  log('connected (connection_ack)');
  emit('READY');
});
client.onDisconnected(() => log('disconnected'));
client.onError((e) => log('socket error', e?.message ?? e));

client.request({ query: SUBSCRIPTION, variables: { id: instanceId } }).subscribe({
  next(result) {
    const event = marketoEvent(result);
    emit('EVENT', { event, raw: frames.find((f) => f.includes('"marketoEvents"')) ?? null });
    client.close();
    process.exit(0);
  },
  error(err) {
    die(`subscription error: ${JSON.stringify(err?.message ?? err)} ${err instanceof Error ? '' : JSON.stringify(err)}`);
  },
  complete() {
    die('subscription completed before any event');
  },
});
