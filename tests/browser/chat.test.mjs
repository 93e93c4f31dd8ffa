// End-to-end test of the demo chat page (functions/web) in headless Chromium, against the real host
// running the real `chat` function under its local Lambda runtime. Plain Node, no test framework.
//
//   node tests/browser/chat.test.mjs          (from anywhere; tests/run.sh --only browser builds first)
//
// Environment:
//   BROWSER_TEST_HOST_BIN   host binary (default ${CARGO_TARGET_DIR:-target}/debug/connection-host)
//   BROWSER_TEST_CONFIG   host configuration (default functions/demo.toml), relative to the repository root
//   BROWSER_TEST_PORT     port for the host (default: a free loopback port)
//   CHROMIUM_PATH         browser (default /usr/bin/chromium, Debian's package)
//   BROWSER_TEST_TIMEOUT  overall bound in seconds (default 120)
// The host's output goes to .test-run/browser-host.log. Exit status 0 on success, 1 on failure.
//
// What it checks: two users (two browser contexts) chat in `lobby`; markup in a message is shown as
// text; a message sent while the host is down is queued and delivered after the reconnect; after the
// host is stopped and started again on the same port, both pages reconnect by themselves, re-join the
// room, and chat again both ways.

import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { HostProcess, ROOT, TestFailure, fail, freePort, progressFor, sleep } from "./harness.mjs";

const CONFIG = process.env.BROWSER_TEST_CONFIG || "functions/demo.toml";
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const OVERALL_S = Number(process.env.BROWSER_TEST_TIMEOUT || 120);
const LOG_PATH = path.join(ROOT, ".test-run", "browser-host.log");

const MARKUP = "<b>hi</b> & <img src=x onerror=alert(1)>";
const progress = progressFor("browser");

// ---- pages --------------------------------------------------------------------------------------
const pageProblems = [];

async function openPage(browser, url, name, { fakeClock = false } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  if (fakeClock) await page.clock.install();
  page.setDefaultTimeout(10_000);
  page.on("pageerror", (e) => pageProblems.push(`${name}: uncaught ${e.message}`));
  page.on("dialog", (d) => { pageProblems.push(`${name}: a dialog opened (${d.type()}: ${d.message()})`); d.dismiss().catch(() => {}); });
  await page.goto(url, { waitUntil: "load", timeout: 15_000 });
  return page;
}

async function state(page) {
  return page.locator("#state").getAttribute("data-state", { timeout: 2_000 });
}

async function waitState(page, name, want, timeoutMs) {
  try {
    await page.locator(`#state[data-state="${want}"]`).waitFor({ timeout: timeoutMs });
  } catch {
    const text = await page.locator("#state").textContent({ timeout: 1_000 }).catch(() => "?");
    fail(`${name}: state is not "${want}" after ${timeoutMs / 1000} s (data-state="${await state(page).catch(() => "?")}", text "${text}")`);
  }
}

async function waitJoined(page, name, room, timeoutMs) {
  try {
    await page.locator(`#rooms button[data-room="${room}"][data-joined="true"]`).waitFor({ timeout: timeoutMs });
    await page.locator("#current-room").filter({ hasText: room }).waitFor({ timeout: 1_000 });
  } catch {
    fail(`${name}: room "${room}" not joined within ${timeoutMs / 1000} s`);
  }
}

async function login(page, name) {
  await page.fill("#nickname", name);
  await page.click("#connect");
}

async function join(page, room) {
  await page.fill("#room", room);
  await page.click("#join");
}

async function say(page, text) {
  await page.fill("#message", text);
  await page.click("#send");
}

// Waits until the page shows a message from `from` whose text is exactly `text`.
async function waitMessage(page, name, from, text, timeoutMs = 10_000) {
  try {
    await page.waitForFunction(([from, text]) => [...document.querySelectorAll("#logs .msg")].some((m) =>
      m.querySelector(".nick")?.textContent === from && m.querySelector(".text")?.textContent === text),
    [from, text], { timeout: timeoutMs, polling: 100 });
  } catch {
    const seen = await page.locator("#logs .msg").allTextContents().catch(() => []);
    fail(`${name}: no message from ${from} with text ${JSON.stringify(text)} within ${timeoutMs / 1000} s; messages shown: ${JSON.stringify(seen)}`);
  }
}

// Waits until the page shows the room event (a join or a leave) whose text is exactly `text`.
async function waitEvent(page, name, text, timeoutMs = 10_000) {
  try {
    await page.waitForFunction((text) => [...document.querySelectorAll("#logs .event")].some((e) => e.textContent.trim() === text),
      text, { timeout: timeoutMs, polling: 100 });
  } catch {
    const seen = await page.locator("#logs .event").allTextContents().catch(() => []);
    fail(`${name}: no "${text}" within ${timeoutMs / 1000} s; events shown: ${JSON.stringify(seen)}`);
  }
}

async function chat(pages, round) {
  const [alice, bob] = pages;
  const a = `${round}: hello bob`, b = `${round}: hello alice`;
  await say(alice, a);
  await waitMessage(bob, "bob", "alice", a);
  await say(bob, b);
  await waitMessage(alice, "alice", "bob", b);
  progress(`${round}: alice -> bob and bob -> alice delivered`);
}

// ---- the test -----------------------------------------------------------------------------------
async function run(ctx) {
  if (!fs.existsSync(CHROMIUM)) fail(`Chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  if (!fs.existsSync(path.resolve(ROOT, CONFIG))) fail(`host configuration not found: ${CONFIG}`);

  const port = Number(process.env.BROWSER_TEST_PORT) || (await freePort());
  const host = (ctx.host = new HostProcess({ config: CONFIG, port, logPath: LOG_PATH }));
  await host.start();
  progress(`host pid ${host.child.pid} healthy on 127.0.0.1:${port} (config ${CONFIG}, log ${path.relative(ROOT, LOG_PATH)})`);

  // playwright-core never downloads a browser: it drives Debian's Chromium. launch() gives it a fresh,
  // temporary --user-data-dir of its own (passing one in args is refused by Playwright).
  ctx.browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    handleSIGINT: false, handleSIGTERM: false, handleSIGHUP: false, // our handler cleans up
    timeout: 30_000,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  progress(`chromium ${ctx.browser.version()} started`);

  const url = `http://127.0.0.1:${port}/`;
  const alice = await openPage(ctx.browser, url, "alice");
  const bob = await openPage(ctx.browser, url, "bob");
  // A nickname outside the rules is refused on the page, which stays disconnected.
  await waitState(alice, "alice", "disconnected", 5_000);
  await login(alice, "<bad nick>");
  await alice.locator("#notice").filter({ hasText: "Nickname refused" }).waitFor({ timeout: 2_000 })
    .catch(() => fail("alice: no notice after an invalid nickname"));
  await sleep(300);
  if ((await state(alice)) !== "disconnected") fail("alice: an invalid nickname did not leave the page disconnected");

  for (const [page, name] of [[alice, "alice"], [bob, "bob"]]) {
    await waitState(page, name, "disconnected", 5_000);
    await login(page, name);
    await waitState(page, name, "connected", 15_000);
    await join(page, "lobby");
    await waitJoined(page, name, "lobby", 10_000);
  }
  progress("alice and bob connected and in lobby");

  // Markup in a message is text, not elements.
  await say(alice, MARKUP);
  await waitMessage(bob, "bob", "alice", MARKUP);
  for (const [page, name] of [[alice, "alice"], [bob, "bob"]]) {
    const html = await page.evaluate(() => document.querySelectorAll("#logs b, #logs img, #logs script").length);
    if (html !== 0) fail(`${name}: the message's markup created ${html} element(s) in the message list`);
  }
  await waitMessage(alice, "alice", "alice", MARKUP);
  progress("markup shown as text on both pages; no <b>/<img> elements created");
  await chat([alice, bob], "before restart");

  // Stop the host: both pages must notice and start reconnecting.
  const r = await host.stop();
  progress(`host stopped (${r.signal ? `signal ${r.signal}` : `exit ${r.code}`})`);
  if (r.code !== 0) fail(`host exited with ${JSON.stringify(r)} after SIGTERM; expected status 0`);
  await waitState(alice, "alice", "reconnecting", 10_000);
  await waitState(bob, "bob", "reconnecting", 10_000);
  progress(`both pages reconnecting (alice: "${await alice.locator("#state").textContent()}")`);
  // Let at least one retry fail against the closed port, to exercise the backoff.
  await alice.locator("#state").filter({ hasText: /attempt ([2-9]|\d\d)/ }).waitFor({ timeout: 10_000 })
    .catch(() => fail("alice: no second reconnect attempt within 10 s"));
  progress(`a retry failed; alice: "${await alice.locator("#state").textContent()}"`);

  // Sent while disconnected: queued, and sent once connected again.
  const queued = "sent while the host was down";
  await say(alice, queued);
  const queueText = await alice.locator("#queue").textContent();
  if (queueText !== "1 message waiting to be sent") fail(`alice: the queue indicator says ${JSON.stringify(queueText)}, expected 1 message waiting`);
  progress("alice queued a message while disconnected");

  await host.start();
  progress(`host pid ${host.child.pid} started again on 127.0.0.1:${port}`);
  await waitState(alice, "alice", "connected", 60_000);
  await waitState(bob, "bob", "connected", 60_000);
  progress("both pages reconnected by themselves");
  await waitJoined(alice, "alice", "lobby", 10_000);
  await waitJoined(bob, "bob", "lobby", 10_000);
  // The server echoes a message to its sender: the queued one went out after the re-join.
  await waitMessage(alice, "alice", "alice", queued);
  const left = await alice.locator("#queue").textContent();
  if (left !== "") fail(`alice: queue not empty after reconnecting: ${JSON.stringify(left)}`);
  progress("both pages re-joined lobby; the queued message was delivered");
  await chat([alice, bob], "after restart");

  // Keep-alive: with nothing sent for 5 minutes (on a fake clock), the page sends {"action":"ping"}.
  const carol = await openPage(ctx.browser, url, "carol", { fakeClock: true });
  const pings = [];
  const pongs = [];
  carol.on("websocket", (ws) => {
    ws.on("framesent", (f) => { if (f.payload === '{"action":"ping"}') pings.push(Date.now()); });
    ws.on("framereceived", (f) => { if (String(f.payload).includes('"pong"')) pongs.push(Date.now()); });
  });
  await login(carol, "carol");
  await waitState(carol, "carol", "connected", 15_000);
  await waitJoined(carol, "carol", "lobby", 10_000);
  // The host announces the join (presence = "frames"); the page names the guest from its principal.
  await waitEvent(alice, "alice", "carol joined");
  await carol.clock.fastForward("04:50");
  await sleep(300);
  if (pings.length !== 0) fail("carol: a ping was sent before 5 minutes without messages");
  await carol.clock.fastForward("00:15");
  for (let i = 0; i < 50 && pings.length === 0; i++) await sleep(100);
  if (pings.length !== 1) fail(`carol: expected one ping after 5 minutes without messages, saw ${pings.length}`);
  // The pong first: jumping 5 minutes ahead before it arrives would also pass the ping's answer timeout.
  for (let i = 0; i < 100 && pongs.length === 0; i++) await sleep(100);
  if (pongs.length !== 1) fail(`carol: expected a pong for the ping, saw ${pongs.length}`);
  await carol.clock.fastForward("05:00");
  for (let i = 0; i < 50 && pings.length < 2; i++) await sleep(100);
  if (pings.length !== 2) fail(`carol: expected a second ping 5 minutes after the first, saw ${pings.length} in all`);
  await waitState(carol, "carol", "connected", 1_000);
  progress("carol's page sent a ping after each 5 minutes without messages (fake clock)");

  // Disconnect is final: no reconnecting afterwards.
  await bob.click("#disconnect");
  await waitState(bob, "bob", "disconnected", 5_000);
  await sleep(2_000);
  if ((await state(bob)) !== "disconnected") fail(`bob: state "${await state(bob)}" after Disconnect, expected it to stay disconnected`);
  progress("bob disconnected and stayed disconnected");
  await waitEvent(alice, "alice", "bob left");
  progress("the host's presence notices shown: carol joined, bob left");

  if (pageProblems.length) fail(`problems on the pages:\n  ${pageProblems.join("\n  ")}`);
}

// At most ~10 s in all (tests/run.sh gives a test it interrupts 15 s before SIGKILL).
async function cleanup(ctx) {
  if (ctx.browser) {
    await Promise.race([ctx.browser.close().catch(() => {}), sleep(5_000)]);
    ctx.browser = null;
  }
  if (ctx.host) {
    await Promise.race([ctx.host.stop(4_000).catch(() => {}), sleep(5_000)]);
    ctx.host.killNow();
  }
}

const ctx = { browser: null, host: null };
let finishing = false;

async function finish(code, message) {
  if (finishing) return;
  finishing = true;
  if (message) console.error(message);
  await cleanup(ctx).catch(() => {});
  ctx.host?.killNow();
  if (code !== 0 && ctx.host) console.error(`--- last lines of ${path.relative(ROOT, LOG_PATH)} ---\n${ctx.host.tail()}`);
  process.exit(code);
}

for (const [sig, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]]) {
  process.on(sig, () => finish(code, `browser test: interrupted by ${sig}`));
}
process.on("exit", () => ctx.host?.killNow()); // last resort: never leave the host behind

const overall = setTimeout(() => finish(1, `browser test FAILED: did not finish within ${OVERALL_S} s`), OVERALL_S * 1000);

try {
  await run(ctx);
  clearTimeout(overall);
  progress("PASSED");
  await finish(0);
} catch (e) {
  clearTimeout(overall);
  const what = e instanceof TestFailure ? e.message : (e && e.stack) || String(e);
  await finish(1, `browser test FAILED: ${what}`);
}
