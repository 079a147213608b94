// The console's own script: the balance chart (uPlot) and the product page's live updates.
// Everything else works without it; the page's CSP allows no inline script.

const chartData = () => {
  const element = document.getElementById("chart-data");
  return element ? JSON.parse(element.textContent) : null;
};

let chart = null;

function drawChart() {
  const holder = document.getElementById("balance-chart");
  const data = chartData();
  if (chart) {
    chart.destroy();
    chart = null;
  }
  if (!holder || !data || data.times.length === 0 || typeof uPlot === "undefined") {
    return;
  }
  const stepped = uPlot.paths.stepped({ align: 1 });
  const colours = ["#0b6bcb", "#b35c00", "#2f7d32", "#8e24aa", "#c62828", "#00838f"];
  const series = [
    {},
    ...data.labels.map((label, index) => ({
      label,
      stroke: colours[index % colours.length],
      width: 2,
      paths: stepped,
    })),
  ];
  const values = [data.times, ...data.series];
  // With one location the total is the same line, drawn over it.
  if (data.labels.length > 1) {
    series.push({ label: "All locations", stroke: "#1f2328", width: 2, dash: [6, 4], paths: stepped });
    values.push(data.total);
  }
  const width = Math.max(Math.min(holder.clientWidth || 720, 960), 280);
  chart = new uPlot(
    { width, height: 260, series, scales: { x: { time: true } }, axes: [{}, { label: "Units" }] },
    values,
    holder,
  );
}

// As the ledger shows a change: +5, −3 (a true minus sign), ±0.
function signed(number) {
  return number > 0 ? `+${number}` : number < 0 ? `\u2212${-number}` : "\u00b10";
}

function announce(text) {
  const region = document.getElementById("announcements");
  if (region) {
    region.textContent = text;
  }
}

// The page's live parts, fetched again when the feed reports a movement of this product.
const LIVE = ["live", "ledger-results"];

async function refreshLive() {
  const response = await fetch(window.location.href, { headers: { Accept: "text/html" } });
  if (!response.ok) {
    return;
  }
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const id of LIVE) {
    const current = document.getElementById(id);
    const replacement = fresh.getElementById(id);
    if (current && replacement) {
      current.replaceWith(document.adoptNode(replacement));
    }
  }
  drawChart();
}

function follow() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.feed || typeof EventSource === "undefined") {
    return;
  }
  // Same origin: the console's cookie authenticates it, and EventSource resumes after the last id.
  const feed = new EventSource(live.dataset.feed);
  feed.addEventListener("movement", (event) => {
    const movement = JSON.parse(event.data).movement;
    announce(`New movement: ${signed(movement.quantity)}, balance ${movement.balance_after}.`);
    refreshLive();
  });
  feed.addEventListener("low_stock", () => announce("The stock is now low at a location."));
}

document.addEventListener("DOMContentLoaded", () => {
  drawChart();
  follow();
});
// A filter the service refused answers 400, its refusal where the ledger's rows would be: show it.
document.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.xhr.status === 400 && event.detail.target.id === "ledger-results") {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});
// After htmx swaps the ledger (its filters), the chart's data is new.
document.addEventListener("htmx:afterSettle", drawChart);
