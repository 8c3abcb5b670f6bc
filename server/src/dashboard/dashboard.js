// The live dashboard. It polls the query API once a second and shows what it answers.
//
// Invariant: every number on the page is a number the API answered, shown as it is. The only
// arithmetic is the campaign tables' exact integer sums of the ads in one top answer, which the
// page labels as such. Nothing here reads a clock to decide a count.
"use strict";

const POLL_INTERVAL_MS = 1000;
const FETCH_TIMEOUT_MS = 3000;
// The API's default http.top_n_max; the campaign sums cover this many ads per window. A server
// configured with a lower limit answers 400 naming it, and the page then asks for fewer.
const TOP_N_DEFAULT = 1000;
const TOP_ROWS_SHOWN = 10;
const SERIES_ROWS_SHOWN = 12;
const CHART_WINDOWS_MAX = 60;

const view = {
  // The campaign the user picked; null follows the top campaign.
  pickedCampaign: null,
  topN: TOP_N_DEFAULT,
  pollsOk: 0,
  pollsFailed: 0,
};

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attributes = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

/** The UTC clock time of a millisecond timestamp, e.g. "14:03:20". */
function clockTime(ms) {
  return new Date(ms).toISOString().slice(11, 19);
}

class ApiError extends Error {
  constructor(message, limit = null) {
    super(message);
    // The config key of the limit a 400 named, when it named one.
    this.limit = limit;
  }
}

async function getJson(path) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, { signal: controller.signal, cache: "no-store" });
  } catch (error) {
    throw new ApiError(`GET ${path} failed: ${error.name === "AbortError" ? "timed out" : error.message}`);
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok) {
    let body = {};
    try {
      body = await response.json();
    } catch (_) {
      // The body is not the API's JSON error; the status says enough.
    }
    const detail = body.error ? `: ${body.error}` : "";
    throw new ApiError(`GET ${path} answered ${response.status}${detail}`, body.limit || null);
  }
  return response.json();
}

/** Exact integer sums of one top answer's ads per campaign, biggest unique count first. */
function campaignsOf(top) {
  const byCampaign = new Map();
  for (const ad of top.ads) {
    const sums = byCampaign.get(ad.campaign_id) ||
      { campaign_id: ad.campaign_id, ads: 0, unique: 0, clicks: 0, fraud: 0 };
    sums.ads += 1;
    sums.unique += ad.unique;
    sums.clicks += ad.clicks;
    sums.fraud += ad.fraud;
    byCampaign.set(ad.campaign_id, sums);
  }
  return [...byCampaign.values()].sort(
    (a, b) => b.unique - a.unique || a.campaign_id - b.campaign_id,
  );
}

function numberCell(field, value) {
  return el("td", { class: "num", "data-field": field }, value);
}

function emptyRow(columns, text) {
  const row = el("tr", { class: "empty", "data-testid": "empty-row" });
  row.append(el("td", { colspan: columns }, text));
  return row;
}

function renderTop(container, top) {
  container.dataset.windowStartMs = top.window_start_ms;
  container.dataset.windowEndMs = top.window_end_ms;
  $(".window-range", container).textContent =
    `${clockTime(top.window_start_ms)}–${clockTime(top.window_end_ms)} UTC`;
  const rows = top.ads.slice(0, TOP_ROWS_SHOWN).map((ad, index) => {
    const row = el("tr", {
      "data-testid": "top-row",
      "data-campaign": ad.campaign_id,
      "data-ad": ad.ad_id,
    });
    row.append(
      el("td", {}, index + 1),
      el("td", { "data-field": "campaign_id" }, ad.campaign_id),
      el("td", { "data-field": "ad_id" }, ad.ad_id),
      numberCell("unique", ad.unique),
      numberCell("clicks", ad.clicks),
      numberCell("fraud", ad.fraud),
    );
    return row;
  });
  $("tbody", container).replaceChildren(
    ...(rows.length ? rows : [emptyRow(6, "no clicks in this window")]),
  );
}

function renderCampaigns(container, top) {
  container.dataset.windowStartMs = top.window_start_ms;
  const rows = campaignsOf(top).slice(0, TOP_ROWS_SHOWN).map((sums, index) => {
    const row = el("tr", { "data-testid": "campaign-row", "data-campaign": sums.campaign_id });
    row.append(
      el("td", {}, index + 1),
      el("td", { "data-field": "campaign_id" }, sums.campaign_id),
      numberCell("ads", sums.ads),
      numberCell("unique", sums.unique),
      numberCell("clicks", sums.clicks),
      numberCell("fraud", sums.fraud),
    );
    return row;
  });
  $("tbody", container).replaceChildren(
    ...(rows.length ? rows : [emptyRow(6, "no clicks in this window")]),
  );
}

/** The select lists the campaigns of both top answers; the picked one stays even if absent. */
function renderCampaignChoices(current, last, shownCampaign) {
  const select = $("#campaign-select");
  const ids = [];
  for (const sums of [...campaignsOf(current), ...campaignsOf(last)]) {
    if (!ids.includes(sums.campaign_id)) ids.push(sums.campaign_id);
  }
  if (shownCampaign !== null && !ids.includes(shownCampaign)) ids.push(shownCampaign);
  const wanted = ids.join(",");
  if (select.dataset.options !== wanted) {
    select.replaceChildren(...ids.map((id) => el("option", { value: id }, `campaign ${id}`)));
    select.dataset.options = wanted;
  }
  if (shownCampaign !== null) select.value = String(shownCampaign);
  select.disabled = ids.length === 0;
}

function chooseCampaign(current, last) {
  if (view.pickedCampaign !== null) return view.pickedCampaign;
  const top = campaignsOf(current)[0] || campaignsOf(last)[0];
  return top ? top.campaign_id : null;
}

/** The counts of a window, in the order the totals and the table show them. */
const SERIES_FIELDS = [
  "clicks", "unique", "fraud", "late_unique", "late_clicks", "unverified_unique", "unverified_clicks",
];

function renderSeries(series) {
  const section = $('[data-testid="series"]');
  section.dataset.campaign = series.campaign_id;
  section.dataset.fromMs = series.from_ms;
  section.dataset.toMs = series.to_ms;
  $('[data-testid="series-campaign"]').textContent = series.campaign_id;
  for (const field of SERIES_FIELDS) {
    $(`[data-testid="series-total"] [data-field="${field}"]`).textContent = series.total[field];
  }
  $('[data-testid="series-range"]').textContent =
    `${series.windows.length} ${series.windows.length === 1 ? "window" : "windows"} with clicks from ${clockTime(series.from_ms)} to ` +
    `${clockTime(series.to_ms)} UTC (granularity ${series.granularity}); totals over the range` +
    (series.total.final ? ", all final" : ", some windows still open");
  const newestFirst = series.windows.slice().reverse().slice(0, SERIES_ROWS_SHOWN);
  const rows = newestFirst.map((window) => {
    const row = el("tr", { "data-testid": "series-row", "data-start-ms": window.start_ms });
    row.append(
      el("td", {}, clockTime(window.start_ms)),
      ...SERIES_FIELDS.map((field) => numberCell(field, window[field])),
      el("td", { "data-field": "final", class: window.final ? "final" : "open" },
        window.final ? "final" : "open"),
    );
    return row;
  });
  $('[data-testid="series-table"] tbody').replaceChildren(
    ...(rows.length ? rows : [emptyRow(SERIES_FIELDS.length + 2, "no clicks for this campaign in the range")]),
  );
  drawChart(series.windows, series.from_ms);
}

function clearSeries() {
  $('[data-testid="series-campaign"]').textContent = "–";
  $('[data-testid="series-range"]').textContent = "";
  for (const node of document.querySelectorAll('[data-testid="series-total"] dd')) {
    node.textContent = "–";
  }
  $('[data-testid="series-table"] tbody').replaceChildren(emptyRow(SERIES_FIELDS.length + 2, "no campaign yet"));
  drawChart([], 0);
}

/**
 * Bars per window on a continuous time axis of at most 60 windows ending with the newest one:
 * unique, late unique, unverified unique (not known unique: billing decides) and fraud side by
 * side. The SVG is drawn at its on-screen pixel size, so
 * its text is never stretched on a narrow screen.
 */
function drawChart(windows, fromMs) {
  const chart = $("#series-chart");
  const width = Math.max(200, Math.round(chart.clientWidth || 800));
  const height = Math.max(120, Math.round(chart.clientHeight || 240));
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const left = 44, right = 8, top = 10, bottom = 26;
  const nodes = [];
  const shown = windows.slice(-CHART_WINDOWS_MAX);
  if (shown.length === 0) {
    nodes.push(svg("text", { x: width / 2, y: height / 2, class: "chart-empty", "text-anchor": "middle" }));
    nodes[0].textContent = "no windows to draw";
    chart.replaceChildren(...nodes);
    return;
  }
  const step = shown[0].end_ms - shown[0].start_ms;
  const axisEnd = shown[shown.length - 1].end_ms;
  const rangeStart = Math.ceil(fromMs / step) * step;
  // From the first window drawn, but at least 12 windows wide so one window is not one wall.
  const axisStart = Math.min(shown[0].start_ms, Math.max(rangeStart, axisEnd - 12 * step));
  const slots = Math.max(1, Math.round((axisEnd - axisStart) / step));
  const peak = Math.max(1, ...shown.map((w) => Math.max(w.unique, w.late_unique, w.unverified_unique, w.fraud)));
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const slotWidth = plotWidth / slots;
  const barWidth = Math.max(1, (slotWidth * 0.8) / 4);
  const y = (value) => top + plotHeight - (value / peak) * plotHeight;
  nodes.push(svg("line", { x1: left, y1: top + plotHeight, x2: width - right, y2: top + plotHeight, class: "axis" }));
  for (const value of [0, peak]) {
    const label = svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end", class: "tick" });
    label.textContent = value;
    nodes.push(label, svg("line", { x1: left, y1: y(value), x2: width - right, y2: y(value), class: "grid" }));
  }
  for (const [ms, anchor, x] of [[axisStart, "start", left], [axisEnd, "end", width - right]]) {
    const label = svg("text", { x, y: height - 8, "text-anchor": anchor, class: "tick" });
    label.textContent = clockTime(ms);
    nodes.push(label);
  }
  for (const window of shown) {
    const slot = Math.round((window.start_ms - axisStart) / step);
    const x0 = left + slot * slotWidth + slotWidth * 0.1;
    const group = svg("g", { "data-start-ms": window.start_ms });
    const title = svg("title");
    title.textContent = `${clockTime(window.start_ms)}: ${window.unique} unique, ` +
      `${window.late_unique} late unique, ${window.unverified_unique} unverified unique, ` +
      `${window.fraud} fraud, ${window.clicks} clicks`;
    group.append(title);
    [["unique", window.unique], ["late", window.late_unique],
      ["unverified", window.unverified_unique], ["fraud", window.fraud]]
      .forEach(([kind, value], index) => {
        group.append(svg("rect", {
          x: x0 + index * barWidth, y: y(value), width: barWidth,
          height: top + plotHeight - y(value), class: `bar ${kind}`,
        }));
      });
    nodes.push(group);
  }
  chart.replaceChildren(...nodes);
}

/** The hot partition: the most lag; when nothing lags, the most records. Null when all empty. */
function hotPartition(partitions) {
  const byLag = partitions.filter((p) => (p.lag_records || 0) > 0);
  if (byLag.length) {
    const hot = byLag.reduce((a, b) => (b.lag_records > a.lag_records ? b : a));
    return { partition: hot.partition, reason: `most lag: ${hot.lag_records} records` };
  }
  const byRecords = partitions.filter((p) => (p.end_offset || 0) > 0);
  if (byRecords.length) {
    const hot = byRecords.reduce((a, b) => (b.end_offset > a.end_offset ? b : a));
    return { partition: hot.partition, reason: `most records: ${hot.end_offset}, no lag` };
  }
  return null;
}

const dash = (value) => (value === null || value === undefined ? "–" : value);

function renderFreshness(freshness) {
  const hot = hotPartition(freshness.partitions);
  $('[data-testid="hot-summary"]').textContent = hot
    ? `Hot partition: ${hot.partition} (${hot.reason}). Answered at ${clockTime(freshness.now_ms)} UTC.`
    : "No partition has records yet.";
  const rows = freshness.partitions.map((p) => {
    const isHot = hot !== null && hot.partition === p.partition;
    const row = el("tr", {
      "data-testid": "partition-row",
      "data-partition": p.partition,
      "data-hot": isHot,
      class: isHot ? "hot" : "",
    });
    const name = el("td", { "data-field": "partition" }, p.partition);
    if (isHot) name.append(" ", el("span", { class: "badge", "data-testid": "hot-badge" }, "hot"));
    const status = p.status;
    const watermarkMs = status ? status.watermark.watermark_ms : 0;
    row.append(
      name,
      numberCell("lag_records", dash(p.lag_records)),
      numberCell("end_offset", dash(p.end_offset)),
      numberCell("next_offset", status ? status.next_offset : "–"),
      el("td", { "data-field": "watermark" }, watermarkMs > 0 ? clockTime(watermarkMs) : "–"),
      numberCell("watermark_delay_ms",
        p.watermark_delay_ms === null || p.watermark_delay_ms === undefined ? "–" : `${p.watermark_delay_ms} ms`),
      numberCell("epoch", status ? status.epoch : "–"),
    );
    return row;
  });
  $('[data-testid="freshness-table"] tbody').replaceChildren(...rows);
}

function showReachable(hasData) {
  $("#banner").hidden = true;
  $("#no-data").hidden = hasData;
  const status = $("#status");
  status.dataset.state = hasData ? "live" : "empty";
  status.textContent = `${hasData ? "live" : "waiting for clicks"} · updated ${clockTime(Date.now())} UTC`;
}

function showUnreachable(error) {
  const banner = $("#banner");
  banner.textContent = `Backend unreachable: ${error.message}. Showing the last answers; ` +
    "retrying every second.";
  banner.hidden = false;
  const status = $("#status");
  status.dataset.state = "unreachable";
  status.textContent = "backend unreachable";
}

async function poll() {
  const [current, last, freshness] = await Promise.all([
    getJson(`/v1/top?window=current&n=${view.topN}`),
    getJson(`/v1/top?window=last&n=${view.topN}`),
    getJson("/v1/freshness"),
  ]);
  const campaign = chooseCampaign(current, last);
  const series = campaign === null
    ? null
    : await getJson(`/v1/campaigns/${campaign}/clicks?granularity=minute`);
  // Render only once every answer is in, so the page never mixes a failed poll's leftovers.
  renderTop($('[data-testid="top-current"]'), current);
  renderTop($('[data-testid="top-last"]'), last);
  renderCampaigns($('[data-testid="campaigns-current"]'), current);
  renderCampaigns($('[data-testid="campaigns-last"]'), last);
  for (const node of document.querySelectorAll(".top-n")) node.textContent = view.topN;
  for (const node of document.querySelectorAll(".partial")) {
    node.hidden = current.ads.length < view.topN && last.ads.length < view.topN;
  }
  renderCampaignChoices(current, last, campaign);
  if (series) renderSeries(series); else clearSeries();
  renderFreshness(freshness);
  const hasData = freshness.partitions.some((p) => (p.end_offset || 0) > 0) ||
    current.ads.length > 0 || last.ads.length > 0;
  showReachable(hasData);
}

async function loop() {
  try {
    await poll();
    view.pollsOk += 1;
    document.body.dataset.pollsOk = view.pollsOk;
  } catch (error) {
    if (error.limit === "http.top_n_max" && view.topN > 10) {
      view.topN = Math.max(10, Math.floor(view.topN / 10));
    }
    view.pollsFailed += 1;
    document.body.dataset.pollsFailed = view.pollsFailed;
    showUnreachable(error);
  } finally {
    setTimeout(loop, POLL_INTERVAL_MS);
  }
}

function pick(campaign) {
  view.pickedCampaign = campaign;
  $("#campaign-select").value = String(campaign);
}

$("#campaign-select").addEventListener("change", (event) => {
  pick(Number(event.target.value));
});

$("#campaign-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("#campaign-input").value.trim();
  if (/^\d+$/.test(text)) pick(Number(text));
});

clearSeries();
loop();
