// Runs the `graphql-http` server audits (GraphQL over HTTP specification)
// against the gateway's /graphql, every request carrying the Authorization
// header, and prints one JSON document on stdout:
//   {"results":[{"id","name","status":"ok"|"notice"|"warn"|"error","reason"}…],
//    "counts":{"ok":n,…},"mustFailures":n}
// Exit 1 if any MUST audit failed.
//
//   node audit.mjs <graphqlURL> <authorization>
import { serverAudits } from 'graphql-http';
import { config, log } from './common.mjs';

const { url, auth } = config({ needInstance: false });

function authorizedFetch(input, init) {
  const req = new Request(input, init);
  req.headers.set('Authorization', auth);
  return fetch(req);
}

const results = [];
for (const audit of serverAudits({ url, fetchFn: authorizedFetch })) {
  let r;
  try {
    r = await audit.fn();
  } catch (err) {
    r = { id: audit.id, name: audit.name, status: 'error', reason: `the audit threw: ${err?.stack ?? err}` };
  }
  results.push({ id: r.id, name: r.name, status: r.status, reason: r.reason ?? null });
  if (r.status !== 'ok') log(`${r.status}: ${r.name}: ${r.reason}`);
}

const counts = {};
for (const r of results) counts[r.status] = (counts[r.status] ?? 0) + 1;
const mustFailures = results.filter((r) => r.name.startsWith('MUST') && r.status !== 'ok').length;
process.stdout.write(`${JSON.stringify({ results, counts, mustFailures })}\n`);
process.exit(mustFailures ? 1 : 0);
