// The dashboard's end-to-end test in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; `ci/browser-env` installs both). It checks that the page shows exactly what
// the query API answers, that it follows new clicks within 5 s, that it says so when the backend
// is unreachable and recovers, and that it fits a laptop and a phone, with a screenshot of each.
//
//   node ci/browser/dashboard.test.mjs --base http://127.0.0.1:8080 --screenshots DIR \
//       [--empty-base URL] [--node-modules DIR] [--campaign ID]
//
// --base        a server with clicks in it (the harness posted them); this script posts more
// --empty-base  a server with no clicks, to check the "no data yet" state
// --node-modules where playwright-core is (default: what ci/browser-env prints)
// --campaign    the campaign id this script posts new clicks for (one the data does not use)
// Exits 0 when every check passed, 1 with a message naming the failed check otherwise.
import { createRequire } from "node:module";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir, homedir } from "node:os";
import path from "node:path";

const LIVE_DEADLINE_MS = 5000;
const MATCH_DEADLINE_MS = 10000;
const CHROMIUM = "/usr/bin/chromium";
// Without the background-networking flags Chromium keeps dialing out, and this machine's closed
// network refuses it; a fresh profile per run keeps runs independent.
const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const LAPTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };

function parseArgs(argv) {
  const args = {};
  for (let index = 0; index < argv.length; index += 2) {
    const name = argv[index];
    const value = argv[index + 1];
    if (!name.startsWith("--") || value === undefined) fail(`bad argument ${name}: expected --name value`);
    args[name.slice(2)] = value;
  }
  if (!args.base) fail("--base URL is required");
  if (!args.screenshots) fail("--screenshots DIR is required");
  args.campaign = Number(args.campaign || 9001);
  args["node-modules"] ||= path.join(
    process.env.ADCLICK_CACHE || path.join(homedir(), ".cache/adclick"), "browser-env/node_modules",
  );
  return args;
}

class TestFailure extends Error {}

/** Stops the test; `main` closes the browser and exits 1 with the message. */
function fail(message) {
  throw new TestFailure(message);
}

const log = (message) => console.log(`dashboard test: ${message}`);

async function api(base, pathAndQuery) {
  const response = await fetch(base + pathAndQuery);
  if (!response.ok) throw new Error(`GET ${pathAndQuery} answered ${response.status}`);
  return response.json();
}

/** Retries `check` (null means it holds, a string says what differs) until the deadline. */
async function eventually(what, deadlineMs, check) {
  const deadline = Date.now() + deadlineMs;
  let last = "never checked";
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last === null) return;
    } catch (error) {
      last = `error: ${error.message}`;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  fail(`${what} did not hold within ${deadlineMs} ms; last difference: ${last}`);
}

function differs(label, shown, answered) {
  const a = JSON.stringify(shown), b = JSON.stringify(answered);
  return a === b ? null : `${label}: the page shows ${a}, the API answers ${b}`;
}

/** What one top table shows: its window and rows, read from the DOM as text. */
function readTop(page, testid) {
  return page.evaluate((testid) => {
    const box = document.querySelector(`[data-testid="${testid}"]`);
    const cell = (row, field) => row.querySelector(`[data-field="${field}"]`).textContent.trim();
    return {
      window_start_ms: Number(box.dataset.windowStartMs),
      rows: [...box.querySelectorAll('[data-testid="top-row"], [data-testid="campaign-row"]')]
        .map((row) => Object.fromEntries(
          [...row.querySelectorAll("[data-field]")].map((node) => [node.dataset.field, cell(row, node.dataset.field)]),
        )),
    };
  }, testid);
}

const text = (value) => String(value);

/** The API's top answer in the shape the ads table shows: the first ten ads. */
function expectedAds(top) {
  return top.ads.slice(0, 10).map((ad) => ({
    campaign_id: text(ad.campaign_id), ad_id: text(ad.ad_id),
    unique: text(ad.unique), clicks: text(ad.clicks), fraud: text(ad.fraud),
  }));
}

/** The per-campaign sums of one top answer, computed here independently of the page. */
function expectedCampaigns(top) {
  const sums = {};
  for (const ad of top.ads) {
    const entry = (sums[ad.campaign_id] ||= { campaign_id: ad.campaign_id, ads: 0, unique: 0, clicks: 0, fraud: 0 });
    entry.ads += 1; entry.unique += ad.unique; entry.clicks += ad.clicks; entry.fraud += ad.fraud;
  }
  return Object.values(sums)
    .sort((a, b) => b.unique - a.unique || a.campaign_id - b.campaign_id)
    .slice(0, 10)
    .map((entry) => Object.fromEntries(Object.entries(entry).map(([key, value]) => [key, text(value)])));
}

async function checkTopTables(page, base) {
  for (const which of ["current", "last"]) {
    const ads = await readTop(page, `top-${which}`);
    if (!Number.isFinite(ads.window_start_ms)) return `top-${which} has no window yet`;
    // The same window and list length the page shows, so both read one answer.
    const topN = Number(await page.locator(".top-n").first().textContent());
    const top = await api(base, `/v1/top?window=${ads.window_start_ms}&n=${topN}`);
    const adsDiff = differs(`top ads (${which}, window ${ads.window_start_ms})`, ads.rows, expectedAds(top));
    if (adsDiff) return adsDiff;
    const campaigns = await readTop(page, `campaigns-${which}`);
    if (campaigns.window_start_ms !== ads.window_start_ms) return `campaigns-${which} shows another window`;
    const campaignsDiff = differs(`top campaigns (${which})`, campaigns.rows, expectedCampaigns(top));
    if (campaignsDiff) return campaignsDiff;
  }
  return null;
}

function readSeries(page) {
  return page.evaluate(() => {
    const section = document.querySelector('[data-testid="series"]');
    const field = (root, name) => root.querySelector(`[data-field="${name}"]`).textContent.trim();
    const names = ["clicks", "unique", "fraud", "late_unique", "late_clicks", "unverified_unique", "unverified_clicks"];
    const total = document.querySelector('[data-testid="series-total"]');
    return {
      campaign: section.dataset.campaign,
      from_ms: section.dataset.fromMs,
      to_ms: section.dataset.toMs,
      total: Object.fromEntries(names.map((name) => [name, field(total, name)])),
      rows: [...document.querySelectorAll('[data-testid="series-row"]')].map((row) => ({
        start_ms: row.dataset.startMs,
        ...Object.fromEntries([...names, "final"].map((name) => [name, field(row, name)])),
      })),
      bars: document.querySelectorAll('[data-testid="series-chart"] g[data-start-ms]').length,
    };
  });
}

async function checkSeries(page, base, campaign = null) {
  const shown = await readSeries(page);
  if (!shown.campaign) return "the series shows no campaign yet";
  if (campaign !== null && shown.campaign !== text(campaign)) return `the series shows campaign ${shown.campaign}, not ${campaign}`;
  const answer = await api(base,
    `/v1/campaigns/${shown.campaign}/clicks?from=${shown.from_ms}&to=${shown.to_ms}&granularity=minute`);
  const names = ["clicks", "unique", "fraud", "late_unique", "late_clicks", "unverified_unique", "unverified_clicks"];
  const totalDiff = differs(`series total of campaign ${shown.campaign}`, shown.total,
    Object.fromEntries(names.map((name) => [name, text(answer.total[name])])));
  if (totalDiff) return totalDiff;
  const rows = answer.windows.slice().reverse().slice(0, 12).map((window) => ({
    start_ms: text(window.start_ms),
    ...Object.fromEntries(names.map((name) => [name, text(window[name])])),
    final: window.final ? "final" : "open",
  }));
  const rowsDiff = differs(`series windows of campaign ${shown.campaign}`, shown.rows, rows);
  if (rowsDiff) return rowsDiff;
  const bars = Math.min(answer.windows.length, 60);
  return shown.bars === bars ? null : `the chart draws ${shown.bars} windows, the API has ${bars}`;
}

async function checkFreshness(page, base) {
  const shown = await page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="partition-row"]')].map((row) => ({
      partition: row.dataset.partition,
      hot: row.dataset.hot,
      lag_records: row.querySelector('[data-field="lag_records"]').textContent.trim(),
      end_offset: row.querySelector('[data-field="end_offset"]').textContent.trim(),
      next_offset: row.querySelector('[data-field="next_offset"]').textContent.trim(),
    })));
  const answer = await api(base, "/v1/freshness");
  const lagging = answer.partitions.filter((p) => (p.lag_records || 0) > 0);
  const pool = lagging.length ? lagging : answer.partitions.filter((p) => (p.end_offset || 0) > 0);
  const key = lagging.length ? "lag_records" : "end_offset";
  const hot = pool.length ? pool.reduce((a, b) => (b[key] > a[key] ? b : a)).partition : null;
  const expected = answer.partitions.map((p) => ({
    partition: text(p.partition),
    hot: text(p.partition === hot),
    lag_records: p.lag_records === null ? "–" : text(p.lag_records),
    end_offset: p.end_offset === null ? "–" : text(p.end_offset),
    next_offset: p.status ? text(p.status.next_offset) : "–",
  }));
  return differs("freshness per partition", shown, expected);
}

function click(n, campaign, ad, eventTimeMs) {
  const hex = (value, width) => value.toString(16).padStart(width, "0");
  return JSON.stringify({
    click_id: `${hex(campaign, 8)}-0000-4000-8000-${hex(n + 1, 12)}`,
    campaign_id: campaign, ad_id: ad, user_id: n, ip: `10.9.${Math.floor(n / 250) % 250}.${(n % 250) + 1}`,
    user_agent: "dashboard-test", country: "DE", event_time_ms: eventTimeMs,
  });
}

async function postClicks(base, lines) {
  const response = await fetch(`${base}/v1/clicks`, {
    method: "POST", headers: { "content-type": "application/x-ndjson" }, body: lines.join("\n"),
  });
  const answer = await response.json();
  if (response.status !== 202 || answer.accepted !== lines.length) {
    fail(`POST /v1/clicks answered ${response.status}: ${JSON.stringify(answer)}`);
  }
}

async function checkNoData(context, emptyBase) {
  const page = await context.newPage();
  await page.goto(emptyBase + "/");
  await page.locator('[data-testid="no-data"]').waitFor({ state: "visible", timeout: MATCH_DEADLINE_MS });
  const state = await page.locator('[data-testid="status"]').getAttribute("data-state");
  if (state !== "empty") fail(`an empty backend's status is ${state}, not "empty"`);
  if (await page.locator('[data-testid="banner-unreachable"]').isVisible()) fail("an empty backend shows the unreachable banner");
  if (await page.locator('[data-testid="top-row"]').count() !== 0) fail("an empty backend shows top rows");
  await page.close();
  log("no data yet: shown on an empty backend");
}

/**
 * New clicks for a campaign no one else uses; the page must show them within 5 s, both in the
 * campaign's series (picked by typing its id first) and in a top table.
 */
async function checkLiveUpdate(page, base, campaign) {
  const count = 37, ad = 5;
  await page.fill('[data-testid="campaign-input"]', text(campaign));
  await page.click('[data-testid="campaign-go"]');
  await eventually(`the page to show campaign ${campaign}, still without clicks`, LIVE_DEADLINE_MS, async () => {
    const shown = await readSeries(page);
    if (shown.campaign !== text(campaign)) return `shows campaign ${shown.campaign}`;
    return shown.total.unique === "0" ? null : `shows ${shown.total.unique} unique clicks before any was sent`;
  });
  // The last millisecond of the window before now's: the click and the watermark it moves fall
  // in one window, which becomes the current one.
  const top = await readTop(page, "top-current");
  const windowMs = Number(await page.locator('[data-testid="top-current"]').getAttribute("data-window-end-ms")) -
    top.window_start_ms;
  const eventTimeMs = Math.floor(Date.now() / windowMs) * windowMs - 1;
  await postClicks(base, Array.from({ length: count }, (_, n) => click(n, campaign, ad, eventTimeMs)));
  const postedAt = Date.now();
  await eventually(`campaign ${campaign}'s series to show ${count} unique clicks`, LIVE_DEADLINE_MS, async () => {
    const shown = await readSeries(page);
    return shown.total.unique === text(count) ? null : `shows ${shown.total.unique} unique clicks`;
  });
  const seriesMs = Date.now() - postedAt;
  const row = page.locator(`[data-testid="top-row"][data-campaign="${campaign}"][data-ad="${ad}"]`);
  await eventually(`the new ad ${campaign}/${ad} with ${count} unique clicks in a top table`, LIVE_DEADLINE_MS - seriesMs, async () => {
    if (await row.count() === 0) return "not shown yet";
    const unique = await row.first().locator('[data-field="unique"]').textContent();
    return unique === text(count) ? null : `shows ${unique} unique clicks`;
  });
  log(`live: ${count} new clicks showed in the series after ${seriesMs} ms and in the top ads after ` +
    `${Date.now() - postedAt} ms`);
  await eventually("the picked campaign's series equals the API", MATCH_DEADLINE_MS, () => checkSeries(page, base, campaign));
  await eventually("the top tables equal the API after the new clicks", MATCH_DEADLINE_MS, () => checkTopTables(page, base));
}

async function checkUnreachable(page, base, screenshots) {
  // Every query fails as a refused connection would, until the route is lifted.
  await page.route("**/v1/**", (route) => route.abort("connectionrefused"));
  const banner = page.locator('[data-testid="banner-unreachable"]');
  await banner.waitFor({ state: "visible", timeout: LIVE_DEADLINE_MS });
  const message = await banner.textContent();
  if (!/unreachable/i.test(message)) fail(`the banner says ${JSON.stringify(message)}`);
  await page.screenshot({ path: path.join(screenshots, "dashboard-unreachable.png"), fullPage: false });
  await page.unroute("**/v1/**");
  await banner.waitFor({ state: "hidden", timeout: LIVE_DEADLINE_MS });
  const state = await page.locator('[data-testid="status"]').getAttribute("data-state");
  if (state !== "live") fail(`after the backend came back the status is ${state}, not "live"`);
  await eventually("the top tables equal the API after recovery", MATCH_DEADLINE_MS, () => checkTopTables(page, base));
  log(`unreachable: the banner said ${JSON.stringify(message.trim().slice(0, 60))}…, and went away on recovery`);
}

async function checkFits(page, viewport, file) {
  await page.setViewportSize(viewport);
  // Wait for a poll at the new size, then check nothing spills sideways out of the page.
  const polls = Number(await page.locator("body").getAttribute("data-polls-ok"));
  await page.waitForFunction((polls) => Number(document.body.dataset.pollsOk) > polls, polls, { timeout: LIVE_DEADLINE_MS });
  const scrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  if (scrollWidth > viewport.width) fail(`at ${viewport.width} px the page is ${scrollWidth} px wide`);
  await page.screenshot({ path: file, fullPage: true });
  log(`${viewport.width} px: fits (${scrollWidth} px wide), screenshot ${file}`);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const base = args.base.replace(/\/$/, "");
  mkdirSync(args.screenshots, { recursive: true });
  const require = createRequire(path.join(args["node-modules"], "noop.js"));
  const { chromium } = require("playwright-core");
  const profile = mkdtempSync(path.join(tmpdir(), "adclick-chromium-"));
  const startedAt = Date.now();
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: LAPTOP,
  });
  const pageErrors = [];
  context.on("weberror", (error) => pageErrors.push(error.error().message));
  try {
    if (args["empty-base"]) await checkNoData(context, args["empty-base"].replace(/\/$/, ""));
    const page = await context.newPage();
    page.on("pageerror", (error) => pageErrors.push(error.message));
    await page.goto(base + "/");
    await page.locator('[data-testid="top-row"]').first().waitFor({ timeout: MATCH_DEADLINE_MS });
    await eventually("the top tables equal the API", MATCH_DEADLINE_MS, () => checkTopTables(page, base));
    await eventually("the top campaign's series equals the API", MATCH_DEADLINE_MS, () => checkSeries(page, base));
    await eventually("freshness and the hot partition equal the API", MATCH_DEADLINE_MS, () => checkFreshness(page, base));
    if (await page.locator('[data-testid="hot-badge"]').count() !== 1) fail("no partition is marked hot");
    log("equal: top ads, top campaigns, the series and freshness show exactly what the API answers");
    // The screenshots show the harness's data, before this script adds its own campaign.
    await checkFits(page, LAPTOP, path.join(args.screenshots, "dashboard-laptop.png"));
    await checkFits(page, PHONE, path.join(args.screenshots, "dashboard-phone.png"));
    await page.setViewportSize(LAPTOP);
    await checkLiveUpdate(page, base, args.campaign);
    await checkUnreachable(page, base, args.screenshots);
    if (pageErrors.length) fail(`the page threw: ${pageErrors.join("; ")}`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
  log(`all checks passed in ${Date.now() - startedAt} ms`);
}

main().catch((error) => {
  console.error(`dashboard test FAILED: ${error instanceof TestFailure ? error.message : error.stack}`);
  process.exit(1);
});
