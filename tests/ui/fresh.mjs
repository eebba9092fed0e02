// A fresh install's dashboard in real headless Chromium, for
// tests/tests/dashboard.rs: node fresh.mjs URL ARTIFACT_DIR. It prints
// SETUP <json of the setup banner's text, or null if hidden>, then waits for a
// line on stdin (the test has handed the service doctor's findings) and prints
// DOCTOR <json of the doctor section's rows> once they show (no reload), then
// ERRORS <json>.
import readline from "node:readline";
import { open, out } from "./chromium.mjs";

const [url, artifacts] = process.argv.slice(2);
const { browser, page, errors } = await open(url);
try {
  await page.waitForFunction(() => document.body.dataset.loaded === "1", null, { timeout: 15000 });
  const setup = page.locator("#setup");
  out(`SETUP ${JSON.stringify((await setup.isVisible()) ? (await setup.textContent()).replace(/\s+/g, " ").trim() : null)}`);
  await page.screenshot({ path: `${artifacts}/dashboard-fresh.png`, fullPage: true });

  const rl = readline.createInterface({ input: process.stdin });
  await new Promise((resolve) => rl.once("line", resolve));
  rl.close();
  await page.waitForSelector("#doctor [data-doctor]", { timeout: 15000 });
  const rows = await page.locator("#doctor .rows > div").allTextContents();
  await page.screenshot({ path: `${artifacts}/dashboard-doctor.png`, fullPage: true });
  out(`DOCTOR ${JSON.stringify(rows)}`);
  out(`ERRORS ${JSON.stringify(errors)}`);
} finally {
  await browser.close();
}
