// What the browser tests share: their arguments, Debian's Chromium started
// as this machine runs it (never a downloaded browser), and check().
'use strict';

const { chromium } = require('playwright-core');

// BASE_URL and SCREENSHOT.png from the command line, or the usage and exit.
function args(script) {
  const [base, screenshot] = process.argv.slice(2);
  if (!base || !screenshot) {
    console.error(`usage: ${script} BASE_URL SCREENSHOT.png`);
    process.exit(2);
  }
  return { base, screenshot };
}

function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}

function check(ok, what) {
  if (!ok) throw new Error(what);
  console.log(`ok: ${what}`);
}

// Run a test's main: any failure is printed and exits 1.
function run(main) {
  main().catch((e) => {
    console.error(`FAILED: ${e.message}`);
    process.exit(1);
  });
}

module.exports = { args, launch, check, run };
