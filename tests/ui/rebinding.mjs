// A hostile web page in real headless Chromium (Debian's, through
// playwright-core), for tests/tests/hardening.rs:
//   node rebinding.mjs API_PORT ENDPOINT_PORT OTHER_PORT TUNNEL
// `rebind.test` resolves to 127.0.0.1 (--host-resolver-rules), as an attacker's
// name does after DNS rebinding. The attacker's page is served (by request
// interception) as http://rebind.test:PORT/ and then fetches its "own" origin,
// which now is robbie-mesh's API or endpoint. A second page on another loopback
// port (http://127.0.0.1:OTHER_PORT/, another local web app) sends the
// state-changing requests a page can send without a preflight. Prints one JSON
// line: what each attempt saw.
import { createRequire } from "node:module";

const require = createRequire(`${process.env.MESH_PLAYWRIGHT ?? "/var/cache/robbie-mesh/node"}/`);
const { chromium } = require("playwright-core");
const [apiPort, endpointPort, otherPort, tunnel] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: process.env.MESH_CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--password-store=basic",
    "--host-resolver-rules=MAP rebind.test 127.0.0.1",
    // Chromium's own guard (Private/Local Network Access) would stop these
    // requests before they reach robbie-mesh; other browsers, and older
    // Chromiums, do not have it. Off, so that what is tested is robbie-mesh.
    "--disable-features=BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults,LocalNetworkAccessChecks,LocalNetworkAccessChecksWebSockets",
  ],
});
const attackerPage = "<!doctype html><title>attacker</title><p>hello";
const seen = {};
try {
  const page = await browser.newPage();
  // Only the navigation itself is the attacker's; every fetch goes to the network.
  await page.route("**/*", (route) =>
    route.request().isNavigationRequest()
      ? route.fulfill({ status: 200, contentType: "text/html", body: attackerPage })
      : route.continue());
  const read = async (origin, path) => {
    await page.goto(`${origin}/`);
    return page.evaluate(async (p) => {
      try {
        const r = await fetch(p);
        return { status: r.status, body: (await r.text()).slice(0, 300) };
      } catch (e) {
        return { error: String(e) };
      }
    }, path);
  };
  seen.api_conversations = await read(`http://rebind.test:${apiPort}`, "/v1/conversations");
  seen.api_status = await read(`http://rebind.test:${apiPort}`, "/v1/status");
  seen.endpoint_tags = await read(`http://rebind.test:${endpointPort}`, "/api/tags");

  // Another local web app's page: cross-port, same host.
  await page.goto(`http://127.0.0.1:${otherPort}/`);
  seen.cross_port = await page.evaluate(async ({ api, tunnel }) => {
    const out = {};
    const tryIt = async (name, url, init) => {
      try {
        const r = await fetch(url, init);
        out[name] = { status: r.status, type: r.type };
      } catch (e) {
        out[name] = { error: String(e) };
      }
    };
    // Simple requests (no preflight): the browser sends them, the page cannot read the answer.
    await tryIt("reconnect", `http://127.0.0.1:${api}/v1/tunnels/${tunnel}/reconnect`, { method: "POST", mode: "no-cors" });
    await tryIt("create_text", `http://127.0.0.1:${api}/v1/conversations`, {
      method: "POST", mode: "no-cors", headers: { "content-type": "text/plain" }, body: '{"title":"pwned"}',
    });
    // With JSON: a preflight, which gets no CORS approval.
    await tryIt("create_json", `http://127.0.0.1:${api}/v1/conversations`, {
      method: "POST", headers: { "content-type": "application/json" }, body: '{"title":"pwned"}',
    });
    return out;
  }, { api: apiPort, tunnel });
} finally {
  await browser.close();
}
process.stdout.write(`${JSON.stringify(seen)}\n`);
