// The todo page as a person uses it, in headless Chromium (Debian's, driven
// by playwright-core; no browser is downloaded), against a real server:
//
// - signed out, a public todo made through the API shows within 3 s without
//   a reload, a private one never; a title holding markup shows as text and
//   runs nothing;
// - sign up in the page; add, edit, toggle, toggle-all, filter,
//   clear-completed and delete through TodoMVC's markup, and after each the
//   API (mine=true) agrees; a todo the same user makes through the API shows
//   in her open page within 3 s;
// - no request leaves the origin, no page error, the CSP header is there;
// - axe-core finds no serious or critical accessibility violation.
//
//   node scripts/browser/app.test.js BASE_URL SCREENSHOT.png
//
// Run by scripts/contract.sh (NODE_PATH holds playwright-core and
// axe-core, as package.json here pins them). Exits non-zero on any failure.
'use strict';

const fs = require('fs');
const { args, check, launch, run } = require('./common');

const { base, screenshot } = args('app.test.js');
// How soon a change made elsewhere must show in an open page.
const LIVE_MS = 3000;
// Each other wait is for something the page does, bounded; none is a pause.
const WAIT_MS = 15000;

// The API, as a second device: ids as strings (they are 64-bit).
async function api(method, path, token, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(`${base}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = (await r.text()).replace(/"(id|todo_id|command_id|category_id)":(\d+)/g, '"$1":"$2"');
  return { status: r.status, json: text ? JSON.parse(text) : null };
}

async function session(username, password) {
  const r = await api('POST', '/sessions', null, { username, password });
  if (r.status !== 200) throw new Error(`POST /sessions: ${r.status}`);
  return r.json.access_token;
}

// Her todos as the API says, once every write it accepted is applied.
async function mine(token) {
  const r = await api('GET', '/todos?mine=true&limit=1000', token);
  return r.json.map((t) => ({ title: t.title, completed: t.completed, public: t.public }));
}

// Wait until `probe` holds (the page's writes are accepted before they are
// applied), failing with `what` after WAIT_MS.
async function until(what, probe, limit = WAIT_MS) {
  const deadline = Date.now() + limit;
  for (;;) {
    const got = await probe();
    if (got) return got;
    if (Date.now() > deadline) throw new Error(`not within ${limit} ms: ${what}`);
    await new Promise((done) => setTimeout(done, 25));
  }
}

async function agrees(page, token, what) {
  const fromApi = (list) => JSON.stringify(list.map((t) => [t.title, t.completed]).sort());
  let last = '';
  await until(`${what}: the API agrees with the page`, async () => {
    const shown = await page.$$eval('.todo-list li', (items) =>
      items.map((li) => [li.querySelector('label').textContent, li.classList.contains('completed')]),
    );
    const listed = fromApi(await mine(token));
    last = `page ${JSON.stringify(shown.sort())} api ${listed}`;
    return JSON.stringify(shown.sort()) === listed;
  }).catch((e) => {
    throw new Error(`${e.message} (${last})`);
  });
  check(true, `${what}: the page and the API agree`);
}

async function main() {
  // A writer of public and private todos, through the API.
  const writer = `writer${Date.now() % 100000}`;
  await api('POST', '/users', null, { username: writer, password: 'writer password' });
  const writerToken = await session(writer, 'writer password');

  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 1000 } });
    const elsewhere = [];
    page.on('request', (req) => {
      if (!req.url().startsWith(`${base}/`)) elsewhere.push(req.url());
    });
    const errors = [];
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && !/status of 40[19]|status of 429/.test(m.text())) errors.push(`console: ${m.text()}`);
    });
    // Set by an onerror handler in a todo's title, were it run as markup.
    await page.exposeFunction('pwned', () => errors.push('script in a todo ran'));

    const answer = await page.goto(`${base}/app`, { waitUntil: 'load', timeout: WAIT_MS });
    check(answer.status() === 200, `GET /app answers 200 (${answer.status()})`);
    const policy = answer.headers()['content-security-policy'] || '';
    check(
      /script-src 'self'/.test(policy) && !/unsafe-inline/.test(policy),
      `a Content-Security-Policy with script-src 'self' and no unsafe-inline (${policy})`,
    );
    check(answer.headers()['x-content-type-options'] === 'nosniff', 'X-Content-Type-Options: nosniff');
    await page.waitForSelector('.status:has-text("live")', { timeout: WAIT_MS });

    // Signed out: the public list, live.
    const stamp = Date.now();
    const publicTitle = `Public from elsewhere ${stamp}`;
    const privateTitle = `Private from elsewhere ${stamp}`;
    await api('POST', '/todos', writerToken, { title: privateTitle });
    const made = Date.now();
    await api('POST', '/todos', writerToken, { title: publicTitle, public: true });
    await page.locator('.todo-list li label', { hasText: publicTitle }).waitFor({ timeout: LIVE_MS });
    check(true, `a public todo made through the API shows within ${Date.now() - made} ms, no reload`);
    const markup = `<img src=x onerror="window.pwned()"> ${stamp}`;
    await api('POST', '/todos', writerToken, { title: markup, public: true });
    await page.locator('.todo-list li label', { hasText: String(stamp) }).nth(1).waitFor({ timeout: LIVE_MS });
    const labels = await page.$$eval('.todo-list li label', (ls) => ls.map((l) => l.textContent));
    check(labels.includes(markup), 'a title holding markup shows as its text');
    check((await page.$$('.todo-list img')).length === 0, 'and makes no element');
    check(!labels.includes(privateTitle), 'a private todo never shows to a reader signed out');

    // Sign up in the page.
    const user = `page${stamp % 100000}`;
    await page.fill('input[name=username]', user);
    await page.fill('input[name=password]', 'page password');
    await page.click('button[value=sign-up]');
    await page.waitForSelector('.new-todo:not([hidden])', { timeout: WAIT_MS });
    check(true, `signed up and in as ${user}`);
    const token = await session(user, 'page password');
    await page.waitForSelector('.status:has-text("Your todos")', { timeout: WAIT_MS });

    // Add (Enter), three of them.
    for (const title of ['buy milk', 'walk the dog', 'file taxes']) {
      await page.fill('.new-todo', title);
      await page.press('.new-todo', 'Enter');
    }
    await agrees(page, token, 'three added');
    const apiTodos = await mine(token);
    check(apiTodos.every((t) => t.public === false), 'what the page adds is private');

    // Edit: double-click, type, Enter; Escape cancels.
    const milk = page.locator('.todo-list li', { hasText: 'buy milk' });
    await milk.locator('label').dblclick();
    await milk.locator('.edit').fill('buy oat milk');
    await milk.locator('.edit').press('Enter');
    await agrees(page, token, 'edited');
    const dog = page.locator('.todo-list li', { hasText: 'walk the dog' });
    await dog.locator('label').dblclick();
    await dog.locator('.edit').fill('something else');
    await dog.locator('.edit').press('Escape');
    check((await dog.count()) === 1, 'Escape leaves the title as it was');
    await agrees(page, token, 'edit cancelled');

    // Toggle one, then filter.
    await page.locator('.todo-list li', { hasText: 'file taxes' }).locator('.toggle').check();
    await agrees(page, token, 'toggled');
    // A filter shows on the hash change that follows the click.
    const lists = async (n, what) => {
      await until(what, async () => (await page.locator('.todo-list li').count()) === n);
      check(true, what);
    };
    await page.click('.filters a[href="#/active"]');
    await lists(2, 'Active lists the two open ones');
    await page.click('.filters a[href="#/completed"]');
    await lists(1, 'Completed lists the done one');
    await page.click('.filters a[href="#/"]');
    await lists(3, 'All lists the three');
    check((await page.textContent('.todo-count')).trim() === '2 items left', '2 items left');

    // Toggle all, clear completed.
    await page.check('.toggle-all');
    await until('every item done', async () => (await page.locator('.todo-list li.completed').count()) === 3);
    await agrees(page, token, 'toggle-all');
    await page.uncheck('.toggle-all');
    await agrees(page, token, 'toggle-all back');
    await page.locator('.todo-list li', { hasText: 'walk the dog' }).locator('.toggle').check();
    await agrees(page, token, 'one done again');
    await page.click('.clear-completed');
    await agrees(page, token, 'clear-completed');

    // Public, then delete.
    const oat = page.locator('.todo-list li', { hasText: 'buy oat milk' });
    await oat.locator('.visibility').click();
    await until('made public', async () => (await mine(token)).some((t) => t.title === 'buy oat milk' && t.public));
    check(true, 'made public through the page');
    await oat.locator('.destroy').click();
    await agrees(page, token, 'deleted');

    // The same user on another device: shows here without a reload.
    const fromElsewhere = `from my phone ${stamp}`;
    const sent = Date.now();
    await api('POST', '/todos', token, { title: fromElsewhere });
    await page.locator('.todo-list li label', { hasText: fromElsewhere }).waitFor({ timeout: LIVE_MS });
    check(true, `her todo made through the API shows within ${Date.now() - sent} ms, no reload`);
    await agrees(page, token, 'after another device');

    // Accessibility: axe-core run in the page (evaluated over the devtools
    // protocol, which the page's CSP does not govern).
    await page.evaluate(fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8'));
    const found = await page.evaluate(async () => {
      const result = await window.axe.run(document, { resultTypes: ['violations'] });
      return result.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
    });
    const grave = found.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    check(grave.length === 0, `axe-core: no serious or critical violation (${JSON.stringify(found)})`);

    await page.screenshot({ path: screenshot });

    // Sign out forgets the token: the public list again, nothing kept.
    await page.click('.sign-out');
    await page.waitForSelector('.status:has-text("public list")', { timeout: WAIT_MS });
    const kept = await page.evaluate(() => JSON.stringify({ ...sessionStorage }));
    check(kept === '{}', `signed out, nothing kept (${kept})`);
    check(await page.isVisible('input[name=username]'), 'the sign-in form is back');
    const after = await page.$$eval('.todo-list li label', (ls) => ls.map((l) => l.textContent));
    check(!after.includes(fromElsewhere), 'her private todo is gone from the page');
    check(elsewhere.length === 0, `no request left ${base} (${elsewhere.join(', ')})`);
    check(errors.length === 0, `no page error (${errors.join('; ')})`);
    console.log(`screenshot: ${screenshot}`);
  } finally {
    await browser.close();
  }
}

run(main);
