// The admin page: polls the quality report every few seconds and redraws the table.
"use strict";
const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);

function cell(value, digits) {
  const td = document.createElement("td");
  if (value === null || value === undefined) td.textContent = "–";
  else td.textContent = typeof value === "number" && digits !== undefined ? value.toFixed(digits) : String(value);
  return td;
}

function row(a, currency) {
  const tr = document.createElement("tr");
  tr.id = `annotator-${a.annotator_id}`;
  if (!["ok", "too_few_items", "no_labels"].includes(a.verdict)) tr.className = "flagged";
  tr.append(cell(a.annotator_id), cell(a.group), cell(a.labels), cell(a.skips), cell(a.undone),
            cell(a.gold_items), cell(a.gold_accuracy, 2), cell(a.preference_agreement, 2));
  const verdict = cell(a.verdict);
  verdict.className = "verdict text";
  verdict.title = a.reason;
  tr.append(verdict, cell(a.weight, 2), cell(a.seconds_per_label, 1), cell(a.labels_per_hour, 0),
            cell(`${a.cost.toFixed(2)} ${currency}`));
  return tr;
}

function draw(report) {
  const t = report.totals;
  $("totals").textContent = `${t.labels} labels from ${t.annotators} annotators; ${t.hours.toFixed(2)} h of work, ` +
    `${t.labels_per_hour === null ? "–" : t.labels_per_hour.toFixed(0)} labels/h, ` +
    `cost ${t.cost.toFixed(2)} ${t.currency} at ${t.hourly_rate} ${t.currency}/h; flagged annotators: ${t.policy}`;
  $("annotators").tBodies[0].replaceChildren(...report.annotators.map((a) => row(a, t.currency)));
  $("alpha").textContent = "Krippendorff's alpha: " + (Object.entries(report.alpha)
    .map(([family, value]) => `${family} ${value === null ? "–" : value.toFixed(2)}`).join(", ") || "–");
  $("accuracy").tBodies[0].replaceChildren(...report.accuracy.map((point) => {
    const tr = document.createElement("tr");
    const model = cell(point.model);
    model.className = "text";
    tr.append(cell(point.labels), cell(point.accuracy, 3), model);
    return tr;
  }));
  $("warnings").replaceChildren(...report.warnings.map((w) => { const li = document.createElement("li"); li.textContent = w; return li; }));
  $("updated").textContent = `updated ${new Date(report.updated * 1000).toLocaleTimeString()}`;
}

async function poll() {
  try {
    const reply = await fetch("admin/api/quality", {credentials: "same-origin"});
    if (!reply.ok) throw new Error(`${reply.status}`);
    draw(await reply.json());
  } catch (error) {
    $("updated").textContent = `could not update (${error.message}); retrying`;
  }
  setTimeout(poll, POLL_MS);
}
poll();
