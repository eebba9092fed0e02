// What the dashboard scripts share: Debian's Chromium through Playwright's
// playwright-core, one page at 1100×800 whose errors are collected.
import { createRequire } from "node:module";

const require = createRequire(`${process.env.MESH_PLAYWRIGHT ?? "/var/cache/robbie-mesh/node"}/`);
const { chromium } = require("playwright-core");

export const out = (line) => process.stdout.write(`${line}\n`);

/// The browser and a page on `url`; `errors` fills with page errors and console errors.
export async function open(url) {
  const browser = await chromium.launch({
    executablePath: process.env.MESH_CHROMIUM ?? "/usr/bin/chromium",
    // Not the session keyring: the tests own it (and Chromium has no passwords to keep).
    args: ["--no-sandbox", "--disable-gpu", "--password-store=basic"],
  });
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(url);
  return { browser, page, errors };
}
