// The API docs page as a person uses it, in headless Chromium (Debian's,
// driven by playwright-core; no browser is downloaded):
// open BASE/docs, see every operation of /openapi.json listed, open
// GET /todos, "Try it out" -> "Execute", and see todos in the response.
// Every request the page makes must go to BASE: the page works offline.
//
//   node scripts/browser/docs.test.js BASE_URL SCREENSHOT.png
//
// Run by scripts/contract.sh, which installs playwright-core (package.json
// here pins it) and puts it on NODE_PATH. Exits non-zero on any failure.
'use strict';

const { args, check, launch, run } = require('./common');

const { base, screenshot } = args('docs.test.js');
// Each wait is for something the page does, bounded; none is a pause.
const WAIT_MS = 30000;
const METHODS = ['get', 'head', 'post', 'put', 'delete', 'patch', 'options'];

async function main() {
  const spec = await (await fetch(`${base}/openapi.json`)).json();
  const documented = [];
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const method of Object.keys(item)) {
      if (METHODS.includes(method)) documented.push(`${method.toUpperCase()} ${path}`);
    }
  }

  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
    const elsewhere = [];
    page.on('request', (req) => {
      const url = req.url();
      if (!url.startsWith(`${base}/`) && !url.startsWith("data:")) elsewhere.push(url);
    });
    const failed = [];
    page.on('requestfailed', (req) => failed.push(`${req.url()}: ${req.failure().errorText}`));
    page.on('pageerror', (e) => failed.push(`page error: ${e.message}`));

    const answer = await page.goto(`${base}/docs`, { waitUntil: 'load', timeout: WAIT_MS });
    check(answer.status() === 200, `GET /docs answers 200 (${answer.status()})`);
    await page.waitForSelector('.opblock', { timeout: WAIT_MS });
    const listed = await page.$$eval('.opblock', (blocks) =>
      blocks.map((b) => {
        const method = b.querySelector('.opblock-summary-method').textContent.trim();
        const path = b.querySelector('.opblock-summary-path').getAttribute('data-path');
        return `${method} ${path}`;
      }),
    );
    const missing = documented.filter((op) => !listed.includes(op));
    check(
      missing.length === 0 && listed.length === documented.length,
      `the page lists all ${documented.length} operations${missing.length ? `; missing ${missing}` : ''}`,
    );

    const op = page.locator('#operations-todos-listTodos');
    await op.locator('.opblock-summary').first().click();
    const tryOut = op.locator('button.try-out__btn');
    await tryOut.waitFor({ timeout: WAIT_MS });
    // The page starts in "Try it out" mode (tryItOutEnabled); the button
    // then says Cancel.
    if ((await tryOut.textContent()).trim() === 'Try it out') await tryOut.click();
    await op.locator('input[placeholder="limit"]').fill('3');
    await op.locator('button.execute').click();
    const status = op.locator('.live-responses-table .response .response-col_status');
    await status.first().waitFor({ timeout: WAIT_MS });
    const code = (await status.first().textContent()).trim();
    check(code.startsWith('200'), `Execute on GET /todos answers 200 (${code})`);
    const body = await op.locator('.live-responses-table .response-col_description pre').first().textContent();
    const todos = JSON.parse(body);
    check(
      Array.isArray(todos) && todos.length === 3 && todos.every((t) => t.id && typeof t.title === 'string'),
      `the response shows 3 todos (first: ${JSON.stringify(todos[0] && todos[0].title)})`,
    );

    check(elsewhere.length === 0, `every request went to the server itself${elsewhere.length ? `: ${elsewhere}` : ''}`);
    check(failed.length === 0, `no request or script failed${failed.length ? `: ${failed}` : ''}`);

    // The picture: the request as sent and the todos it got back.
    await status.first().evaluate((e) => e.scrollIntoView({ block: 'center' }));
    await page.screenshot({ path: screenshot, fullPage: false });
    console.log(`screenshot: ${screenshot}`);
  } finally {
    await browser.close();
  }
}

run(main);
