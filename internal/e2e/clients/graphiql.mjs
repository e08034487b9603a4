// Drives the gateway's GraphiQL in Chromium, as a person would:
//
//   node graphiql.mjs <baseURL> <authorization> <instanceId> <marker> <shotDir>
//
// The first screen makes no request that fails (none to /graphql at all)
// and loads nothing from outside; once the header is typed in, Docs and
// autocomplete work without a manual re-fetch; a query runs; a
// subscription runs over the websocket. Output on stdout, one line each:
//   SUBSCRIBED          the subscription is running: post a webhook carrying <marker>
//   EVENT               the event with <marker> is shown in the result pane
//   SHOT <path>         screenshot of GraphiQL showing that live event
// Exit 0 when all passed; on failure a screenshot is written to
// <shotDir>/graphiql-failure.png and the exit code is 1.
import { join } from 'node:path';
import { run, emit, log, check } from './browser.mjs';

const [base, auth, instanceId, marker, shotDir] = process.argv.slice(2);
if (!shotDir) {
  log('usage: node graphiql.mjs <baseURL> <authorization> <instanceId> <marker> <shotDir>');
  process.exit(2);
}
const origin = new URL(base).origin;
const isGraphQL = (u) => u.startsWith(origin) && new URL(u).pathname.endsWith('/graphql');

// setEditor replaces an editor's text with one line. insertText types no
// keys, so Monaco's auto-closing brackets and quotes do not interfere (a
// newline would still trigger them).
async function setEditor(page, editor, text) {
  await editor.click();
  await page.keyboard.press('Control+A');
  await page.keyboard.press('Delete');
  await page.keyboard.insertText(text);
}

// Monaco renders spaces as no-break spaces.
const resultText = async (page) => (await page.locator('.result-window').innerText()).replace(/\s+/g, ' ');

async function waitFor(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

await run('graphiql', shotDir, async ({ page, seen }) => {
  log('browser up');
  await page.goto(`${base}/`);
  const headersEditor = page.locator('.graphiql-editor-tool .graphiql-editor:not(.hidden)');
  const queryEditor = page.locator('.graphiql-query-editor .graphiql-editor');
  await headersEditor.locator('.monaco-editor').waitFor();
  await queryEditor.locator('.monaco-editor').waitFor();
  await page.waitForLoadState('networkidle');
  log('first screen loaded');

  const hint = await page.locator('#hint').innerText();
  check(/Headers/.test(hint) && /Authorization/.test(hint) && /Element/.test(hint), `the first line does not say where credentials go: ${hint}`);
  check(seen.failures.length === 0, `requests failed on the first screen: ${seen.failures.join('; ')}`);
  check(!seen.requests.some(isGraphQL), 'GraphiQL called /graphql before credentials were given');
  const foreign = seen.requests.filter((u) => !u.startsWith(origin) && !/^(data|blob):/.test(u));
  check(foreign.length === 0, `the page loaded from outside: ${foreign.join(', ')}`);

  // Credentials in the Headers tab: the schema loads by itself.
  await setEditor(page, headersEditor, JSON.stringify({ Authorization: auth }));
  await page.getByRole('button', { name: 'Show Documentation Explorer' }).click();
  const docs = page.locator('.graphiql-doc-explorer');
  await waitFor('the Docs to show the schema', async () => /Query/.test(await docs.innerText()) && /Subscription/.test(await docs.innerText()));
  await docs.getByText('Query', { exact: true }).first().click();
  await waitFor('Docs to list the Query fields', async () => /connectors/.test(await docs.innerText()) && /instances/.test(await docs.innerText()));
  log('docs ok');

  // Autocomplete from the schema.
  await setEditor(page, queryEditor, '{ conn');
  await page.keyboard.press('Control+Space');
  await waitFor('autocomplete to offer connectors', async () => /connectors/.test(await page.locator('.monaco-editor .suggest-widget').innerText()));
  await page.keyboard.press('Escape');
  log('autocomplete ok');

  // A query.
  await setEditor(page, queryEditor, '{ connectors { key name } instances { id name } }');
  await page.getByRole('button', { name: /^Execute query/ }).click();
  await waitFor('the query result', async () => {
    const t = await resultText(page);
    return /"key": "marketo"/.test(t) && t.includes(instanceId);
  });
  log('query ok');

  // A subscription; the Go test posts a webhook carrying the marker.
  await setEditor(page, queryEditor,
    `subscription { marketoEvents(instanceId: "${instanceId}") { cursor source eventType payload } }`);
  await page.getByRole('button', { name: /^Prettify query/ }).click();
  await page.getByRole('button', { name: /^Execute query/ }).click();
  emit('SUBSCRIBED');
  await waitFor('the webhook event in the result pane', async () => (await resultText(page)).includes(marker), 20000);
  emit('EVENT');
  const shot = join(shotDir, 'graphiql-live-event.png');
  await page.screenshot({ path: shot });
  emit('SHOT', shot);

  // Nothing secret in the browser's storage: headers are not persisted.
  const stored = await page.evaluate(() => JSON.stringify({ ...window.localStorage }) + JSON.stringify({ ...window.sessionStorage }));
  const secretPart = auth.split(/[\s,]+/).filter((w) => w.length > 8);
  check(!secretPart.some((s) => stored.includes(s)), 'the Authorization header was persisted in browser storage');

  // Opting in (Settings → Persist headers → On) does store them.
  await page.getByRole('button', { name: 'Open settings dialog' }).click();
  await page.locator('#enable-persist-headers').click();
  await waitFor('the headers to be persisted after opting in', async () =>
    page.evaluate((s) => JSON.stringify({ ...window.localStorage }).includes(s), secretPart[0]));
  await page.keyboard.press('Escape');

  check(seen.consoleErrors.length === 0, `console errors: ${seen.consoleErrors.join(' | ')}`);
  check(seen.failures.length === 0, `requests failed: ${seen.failures.join('; ')}`);
});
