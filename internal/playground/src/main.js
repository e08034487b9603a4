// GraphiQL for the gateway. Nothing is fetched before the user gave an
// Authorization header (no request can fail on the first screen); once
// one is set, a new fetcher makes GraphiQL introspect at once, so Docs and
// autocomplete need no manual re-fetch. Subscriptions go over graphql-ws
// with the same header in connection_init.
import 'graphiql/setup-workers/vite';
import 'graphiql/style.css';
import './page.css';
import { createElement, useEffect, useMemo, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import { createClient } from 'graphql-ws';

const httpURL = new URL('graphql', window.location.href).href;
const wsURL = httpURL.replace(/^http/, 'ws');

const defaultHeaders = '{\n  "Authorization": ""\n}';
const defaultQuery = `# Put your Authorization header in the Headers tab below, then run:
{
  connectors { key name }
  instances { id name valid poller { lastSuccessAt lastError } }
}
`;

// The header editor holds JSON (GraphiQL also accepts comments in it).
function authorizationOf(text) {
  let headers;
  try {
    headers = JSON.parse(String(text || '').replace(/^\s*\/\/.*$/gm, ''));
  } catch {
    return null;
  }
  if (!headers || typeof headers !== 'object') return null;
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() === 'authorization' && typeof v === 'string' && v.trim() !== '') return v.trim();
  }
  return '';
}

const noCredentials = {
  errors: [{
    message: 'Add your Authorization header in the Headers tab first (see the line at the top of the page).',
    extensions: { code: 'UNAUTHENTICATED' },
  }],
};

function makeFetcher(auth) {
  if (!auth) {
    return async () => noCredentials;
  }
  // lazy: the socket opens with the first subscription; it carries the
  // header in connection_init, as the gateway expects.
  const wsClient = createClient({ url: wsURL, lazy: true, connectionParams: { Authorization: auth } });
  const fetcher = createGraphiQLFetcher({ url: httpURL, wsClient, enableIncrementalDelivery: false });
  fetcher.dispose = () => wsClient.dispose();
  return fetcher;
}

// Headers are persisted only after the user turns that on in Settings
// (GraphiQL remembers the choice under this key).
const persistKey = 'graphiql:shouldPersistHeaders';
const persist = window.localStorage.getItem(persistKey) === 'true';

// GraphiQL's history keeps each run's headers whatever the setting says:
// this storage drops them (and the headers key) until the user opts in.
// GraphiQL saves headers just before it records the opt-in, so what was
// held back is written then.
const heldBack = new Map();
const storage = {
  getItem: (k) => window.localStorage.getItem(k),
  setItem: (k, v) => {
    if (k === persistKey && v === 'true') {
      for (const [hk, hv] of heldBack) window.localStorage.setItem(hk, hv);
      heldBack.clear();
    } else if (window.localStorage.getItem(persistKey) !== 'true') {
      const scrubbed = withoutHeaders(k, v);
      heldBack.delete(k);
      if (scrubbed !== v) {
        heldBack.set(k, v);
        if (scrubbed === null) return;
        v = scrubbed;
      }
    }
    window.localStorage.setItem(k, v);
  },
  removeItem: (k) => window.localStorage.removeItem(k),
  clear: () => {
    for (const k of Object.keys(window.localStorage)) if (k.startsWith('graphiql:')) window.localStorage.removeItem(k);
  },
  get length() {
    return Object.keys(window.localStorage).filter((k) => k.startsWith('graphiql:')).length;
  },
};

function withoutHeaders(k, v) {
  if (k === 'graphiql:headers') return null;
  if (!/^[[{]/.test(v)) return v;
  try {
    return JSON.stringify(JSON.parse(v, (key, value) => (key === 'headers' ? undefined : value)));
  } catch {
    return v; // not JSON after all
  }
}

function initialAuth() {
  if (!persist) return '';
  return authorizationOf(window.localStorage.getItem('graphiql:headers')) || '';
}

function Playground() {
  const [auth, setAuth] = useState(initialAuth);
  const fetcher = useMemo(() => makeFetcher(auth), [auth]);
  useEffect(() => () => fetcher.dispose?.(), [fetcher]);
  return createElement(GraphiQL, {
    fetcher,
    // null: no schema and no introspection until there are credentials.
    schema: auth ? undefined : null,
    defaultHeaders,
    defaultQuery,
    defaultEditorToolsVisibility: 'headers',
    storage,
    shouldPersistHeaders: persist,
    showPersistHeadersSettings: true,
    onEditHeaders: (text) => {
      const a = authorizationOf(text);
      if (a !== null) setAuth(a);
    },
  });
}

createRoot(document.getElementById('graphiql')).render(createElement(Playground));
