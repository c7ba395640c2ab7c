// Drives the admin dashboard in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core; no browser is downloaded) and checks that what it shows follows the server
// without a reload.
//
//   node tests/browser/dashboard.mjs URL [--token TOKEN] [--screenshot PATH] [--step-timeout-ms N]
//                                        [--color-scheme dark|light]
//
// URL is the dashboard page (http://HOST:PORT/admin). With --token the script answers the
// page's token prompt. The test that runs it (tests/admin_dashboard.rs) changes what the
// server reports, then sends one step per line on stdin:
//
//   {"step": "name", "open_room": "live-1"?, "outage": true?, "expect": {TESTID: EXPECTED, ...}}
//
// TESTID is a data-testid of the page (its first match); EXPECTED is the exact text, or
// {"contains": TEXT}, or {"count": N} (elements with that testid). The script waits until
// every expectation holds, checks that the page was not reloaded meanwhile, and answers one
// line on stdout: {"step": "name", "ok": true}, or {"step": "name", "ok": false, "error":
// ..., "seen": {...}} and exits 1. When stdin ends it saves a screenshot and exits 0. Page
// errors, console errors and failed or foreign requests (the page may fetch nothing from
// elsewhere) fail the run, except connection failures during a step that says
// "outage": true (the test stopped the server on purpose, or is about to).

import { chromium } from "playwright-core";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";

const CHROMIUM = "/usr/bin/chromium";

function parseArgs(argv) {
  const args = { url: null, token: null, screenshot: "target/admin.png", stepTimeoutMs: 20000, colorScheme: "dark" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--token") args.token = argv[++i];
    else if (a === "--screenshot") args.screenshot = argv[++i];
    else if (a === "--step-timeout-ms") args.stepTimeoutMs = Number(argv[++i]);
    else if (a === "--color-scheme") args.colorScheme = argv[++i];
    else if (!args.url) args.url = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (!args.url) throw new Error("usage: dashboard.mjs URL [--token TOKEN] [--screenshot PATH]");
  return args;
}

const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

// Runs in the page (so it must be self-contained): whether every expectation holds, or with
// `report`, what each expected testid shows now.
function inspect({ expect, report }) {
  const seen = {};
  let all = true;
  for (const [id, want] of Object.entries(expect)) {
    const found = document.querySelectorAll(`[data-testid="${CSS.escape(id)}"]`);
    const counting = want && typeof want === "object" && "count" in want;
    const got = counting ? found.length : found.length ? found[0].textContent.trim() : null;
    seen[id] = got;
    let ok;
    if (counting) ok = got === want.count;
    else if (want && typeof want === "object" && "contains" in want) ok = typeof got === "string" && got.includes(want.contains);
    else ok = got === want;
    all = all && ok;
  }
  return report ? seen : all;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const profile = await mkdtemp(join(tmpdir(), "roomcast-chromium-"));
  const problems = [];
  let outage = false;
  const OUTAGE = /ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE|WebSocket connection to|Failed to fetch/;
  const problem = (text) => {
    if (!(outage && OUTAGE.test(text))) problems.push(text);
  };
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1440, height: 900 },
      colorScheme: args.colorScheme,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => {
      // The page itself is answered with 401 until it has the token: that is the design.
      if (m.type() === "error" && !/status of 401/.test(m.text())) problem(`console error: ${m.text()}`);
    });
    page.on("requestfailed", (r) => {
      // The stream is closed on purpose when the page switches rooms.
      if (!r.url().includes("/admin/stream")) problem(`request failed: ${r.url()} (${r.failure()?.errorText})`);
    });
    const origin = new URL(args.url).origin;
    page.on("request", (r) => {
      const url = r.url();
      if (!url.startsWith(origin) && !url.startsWith(origin.replace(/^http/, "ws")) && !url.startsWith("data:")) {
        problem(`the page asked for something elsewhere: ${url}`);
      }
    });
    // A reload (or any new document) fires `load` again; a hash change does not.
    let loads = 0;
    page.on("load", () => {
      loads += 1;
    });

    await page.goto(args.url, { waitUntil: "load" });
    if (args.token) {
      const input = page.getByTestId("token-input");
      await input.waitFor({ state: "visible", timeout: args.stepTimeoutMs });
      await input.fill(args.token);
      await page.getByTestId("token-submit").click();
      await page.locator("#token-dialog").waitFor({ state: "hidden", timeout: args.stepTimeoutMs });
    }
    await page.evaluate(() => {
      window.__roomcastNoReload = true;
    });
    say({ ready: true });

    const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
    for await (const text of lines) {
      if (!text.trim()) continue;
      const step = JSON.parse(text);
      const expect = step.expect ?? {};
      outage = step.outage === true;
      try {
        if (step.open_room) {
          const row = page.locator(`[data-testid="heat-row"][data-room="${step.open_room.replace(/"/g, '\\"')}"]`);
          await row.click({ timeout: args.stepTimeoutMs });
        }
        // Re-checked on every animation frame until it holds (no fixed sleeps).
        const shown = await page
          .waitForFunction(inspect, { expect, report: false }, { timeout: args.stepTimeoutMs })
          .then(() => true, () => false);
        const seen = await page.evaluate(inspect, { expect, report: true });
        if (!shown) throw Object.assign(new Error("the page did not show what was expected"), { seen });
        const kept = await page.evaluate(() => window.__roomcastNoReload === true);
        if (!kept || loads !== 1) throw Object.assign(new Error(`the page was reloaded (${loads} loads)`), { seen });
        if (problems.length) throw Object.assign(new Error(problems.join("; ")), { seen });
        say({ step: step.step, ok: true });
      } catch (e) {
        say({ step: step.step, ok: false, error: e.message, seen: e.seen ?? null, expect });
        await mkdir(dirname(args.screenshot), { recursive: true });
        await page.screenshot({ path: args.screenshot.replace(/\.png$/, "-failed.png") }).catch(() => {});
        process.exitCode = 1;
        return;
      }
    }
    await mkdir(dirname(args.screenshot), { recursive: true });
    await page.screenshot({ path: args.screenshot });
    if (problems.length) {
      say({ done: false, error: problems.join("; ") });
      process.exitCode = 1;
      return;
    }
    say({ done: true, screenshot: args.screenshot });
  } finally {
    if (context) await context.close().catch(() => {});
    await rm(profile, { recursive: true, force: true }).catch(() => {});
  }
}

main().catch((e) => {
  say({ ok: false, error: String(e && e.stack ? e.stack : e) });
  process.exitCode = 1;
});
