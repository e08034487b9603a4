// Walks the hosted connect page in Chromium, from the link oauthUrl gave
// to the redirect carrying a code:
//
//   node connect-page.mjs <link> <identityURL> <restURL> <clientID> <clientSecret> <callbackURL> <shotDir>
//
// First with a wrong secret (the page must say Marketo refused it and issue
// no code), then with the right one. Prints `REDIRECT <url>` with the URL
// the browser landed on. Exit 0 when all passed; on failure a screenshot is
// written to <shotDir>/connect-page-failure.png and the exit code is 1.
import { run, emit, log, check } from './browser.mjs';

const [link, identityURL, restURL, clientID, clientSecret, callbackURL, shotDir] = process.argv.slice(2);
if (!shotDir) {
  log('usage: node connect-page.mjs <link> <identityURL> <restURL> <clientID> <clientSecret> <callbackURL> <shotDir>');
  process.exit(2);
}

await run('connect-page', shotDir, async ({ page }) => {
  await page.goto(link);
  await page.getByRole('heading', { name: 'Connect your Marketo instance' }).waitFor();
  await page.getByLabel('Identity URL').fill(identityURL);
  await page.getByLabel('REST API URL').fill(restURL);
  await page.getByLabel('Client ID').fill(clientID);
  await page.getByLabel('Client secret').fill(`${clientSecret}-wrong`);
  await page.getByRole('button', { name: 'Connect' }).click();
  const alert = page.getByRole('alert');
  await alert.waitFor();
  const msg = await alert.innerText();
  check(/Marketo refused these credentials/.test(msg), `wrong secret: the page said ${JSON.stringify(msg)}`);
  check(!page.url().startsWith(callbackURL), 'a wrong secret redirected to the application');
  log('wrong secret refused');

  // The page keeps what was typed, except the secret.
  check((await page.getByLabel('Identity URL').inputValue()) === identityURL, 'the Identity URL was not kept');
  await page.getByLabel('Client secret').fill(clientSecret);
  await Promise.all([
    page.waitForURL((u) => u.href.startsWith(callbackURL), { timeout: 15000 }),
    page.getByRole('button', { name: 'Connect' }).click(),
  ]);
  emit('REDIRECT', page.url());
});
