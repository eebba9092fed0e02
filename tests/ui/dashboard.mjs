// Drives the dashboard in real headless Chromium (Debian's, through Playwright's
// playwright-core) for tests/tests/dashboard.rs, talking over stdin/stdout:
//   node dashboard.mjs URL ARTIFACT_DIR
// It prints READY <route> once the page shows who serves Ollama, waits for a line
// on stdin (the test has just killed that node's sshd), then prints
// CHANGED <ms> <route> when the page shows another node — without a reload — and
// NARROW <scrollWidth> for the 360 px tray-popover layout. Screenshots go to
// ARTIFACT_DIR.
import readline from "node:readline";
import { open, out } from "./chromium.mjs";

const [url, artifacts] = process.argv.slice(2);
const { browser, page, errors } = await open(url);
try {
  const route = page.locator('[data-service="ollama"] .route');
  await page.waitForFunction(() => document.querySelector('[data-service="ollama"] .route')?.dataset.node, null, { timeout: 15000 });
  await page.waitForFunction(() => document.querySelector("#live")?.dataset.state === "live", null, { timeout: 15000 });
  const before = await route.getAttribute("data-node");
  await page.evaluate(() => { window.__noReload = true; });
  await page.screenshot({ path: `${artifacts}/dashboard-before.png`, fullPage: true });
  out(`READY ${before}`);

  const rl = readline.createInterface({ input: process.stdin });
  await new Promise((resolve) => rl.once("line", resolve));
  rl.close();
  const t0 = Date.now();
  await page.waitForFunction((b) => {
    const n = document.querySelector('[data-service="ollama"] .route')?.dataset.node;
    return n && n !== b;
  }, before, { timeout: 10000, polling: 20 });
  const ms = Date.now() - t0;
  const after = await route.getAttribute("data-node");
  const same = await page.evaluate(() => window.__noReload === true);
  const timeline = await page.locator("#events .timeline li").allTextContents();
  await page.screenshot({ path: `${artifacts}/dashboard-after.png`, fullPage: true });
  out(`CHANGED ${ms} ${after} ${same ? "same-page" : "reloaded"}`);
  out(`TIMELINE ${JSON.stringify(timeline.slice(0, 5))}`);

  await page.setViewportSize({ width: 360, height: 640 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  await page.screenshot({ path: `${artifacts}/dashboard-360px.png`, fullPage: true });
  out(`NARROW ${width}`);
  out(`ERRORS ${JSON.stringify(errors)}`);
} finally {
  await browser.close();
}
