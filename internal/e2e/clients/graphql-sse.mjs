// The `graphql-sse` client (distinct connections mode: one POST with
// Accept: text/event-stream per subscription) subscribes to marketoEvents
// and prints the first event. See common.mjs.
import { createClient } from 'graphql-sse';
import { config, SUBSCRIPTION, emit, log, die, deadline, marketoEvent } from './common.mjs';

const { url, auth, instanceId, timeoutMs } = config();
let raw = '';
let connected = false;

deadline(timeoutMs, () => (connected ? 'an event' : 'the event stream to open'));

// fetchFn hands the client a copy of the response body and keeps the text
// of the stream, so the raw bytes of an event can be checked.
async function recordingFetch(input, init) {
  const res = await fetch(input, init);
  log(`POST ${typeof input === 'string' ? input : input.url} -> ${res.status} ${res.headers.get('content-type')}`);
  if (!res.body) return res;
  const [forClient, forRecord] = res.body.tee();
  (async () => {
    const dec = new TextDecoder();
    try {
      for await (const chunk of forRecord) raw += dec.decode(chunk, { stream: true });
    } catch {
      // the client cancelled the stream
    }
  })();
  return new Response(forClient, { status: res.status, statusText: res.statusText, headers: res.headers });
}

const client = createClient({
  url,
  headers: { Authorization: auth },
  fetchFn: recordingFetch,
  retryAttempts: 0,
  on: {
    connecting: () => log('connecting'),
    connected: () => {
      connected = true;
      log('connected (stream open)');
      emit('READY');
    },
  },
});

client.subscribe(
  { query: SUBSCRIPTION, variables: { id: instanceId } },
  {
    next(result) {
      const event = marketoEvent(result);
      const line = raw.split('\n').find((l) => l.startsWith('data:') && l.includes('"marketoEvents"'));
      emit('EVENT', { event, raw: line ? line.slice('data:'.length).trimStart() : null });
      client.dispose();
      process.exit(0);
    },
    error(err) {
      die(`subscription error: ${err instanceof Error ? err.stack : JSON.stringify(err)}`);
    },
    complete() {
      die('subscription completed before any event');
    },
  },
);
