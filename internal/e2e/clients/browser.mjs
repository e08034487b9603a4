// Shared helpers of the browser scripts: Debian's Chromium driven by
// playwright-core (which downloads no browser), with a fresh profile and the
// flags a machine without internet needs (no background networking).
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const flags = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

export function log(...args) {
  process.stderr.write(`[${new Date().toISOString()}] ${args.map((a) => (typeof a === 'string' ? a : a instanceof Error ? a.stack : JSON.stringify(a))).join(' ')}\n`);
}

export function emit(kind, value) {
  process.stdout.write(value === undefined ? `${kind}\n` : `${kind} ${JSON.stringify(value)}\n`);
}

// launch opens a page on a fresh profile and records every request, every
// failed or refused one, and console errors (CSP violations among them).
export async function launch({ shotDir }) {
  const profile = mkdtempSync(join(tmpdir(), 'leadstream-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath, headless: true, args: flags, ignoreDefaultArgs: ['--enable-automation'],
    viewport: { width: 1400, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const seen = { requests: [], failures: [], consoleErrors: [] };
  context.on('request', (r) => seen.requests.push(r.url()));
  context.on('requestfailed', (r) => seen.failures.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  context.on('response', (r) => {
    if (r.status() >= 400) seen.failures.push(`${r.request().method()} ${r.url()}: HTTP ${r.status()}`);
  });
  page.on('console', (m) => {
    if (m.type() === 'error') seen.consoleErrors.push(m.text().slice(0, 300));
  });
  page.on('pageerror', (e) => seen.consoleErrors.push(`uncaught: ${e.message}`));
  if (shotDir) mkdirSync(shotDir, { recursive: true });
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, page, seen, close };
}

// run wraps a script: on any failure it writes a screenshot to
// shotDir/<name>-failure.png, prints FAIL and exits 1.
export async function run(name, shotDir, fn) {
  let b;
  const timer = setTimeout(async () => {
    log(`FAIL: ${name} timed out`);
    if (b) await b.page.screenshot({ path: join(shotDir, `${name}-failure.png`) }).catch(() => {});
    process.exit(1);
  }, Number(process.env.LEADSTREAM_BROWSER_TIMEOUT_MS || 80000));
  try {
    log('starting chromium');
    b = await launch({ shotDir });
    await fn(b);
    clearTimeout(timer);
    log(`${name}: passed`);
    await b.close();
    log('browser closed');
    process.exit(0);
  } catch (e) {
    clearTimeout(timer);
    log(`FAIL: ${name}:`, e);
    if (b) {
      const path = join(shotDir, `${name}-failure.png`);
      await b.page.screenshot({ path }).catch(() => {});
      log(`screenshot: ${path}`);
      await b.close();
    }
    process.exit(1);
  }
}

export function check(cond, msg) {
  if (!cond) throw new Error(msg);
}
