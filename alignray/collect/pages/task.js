// The task page: shows this annotator's next task, sends one label per answered form to
// the JSON API (session cookie + CSRF header), and shows "saved" only after the server
// has made the label durable. A failed send is retried with the same label ids, so it
// never counts twice.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);
let task = null, shownAt = 0, focused = 0, pending = null;
// Undo takes back the whole last submission: every label it sent.
let lastSent = 1;

function newId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function status(text, kind) {
  $("status").textContent = text;
  $("status").className = kind || "";
}

async function call(method, path, body) {
  const reply = await fetch(path, {
    method, credentials: "same-origin",
    headers: body ? {"Content-Type": "application/json", "X-CSRF-Token": csrf} : {"X-CSRF-Token": csrf},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (reply.status === 204) return null;
  const payload = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new Error(`${reply.status}: ${payload.detail || reply.statusText}`);
  return payload;
}

function element(tag, attributes, text) {
  const node = document.createElement(tag);
  Object.entries(attributes || {}).forEach(([key, value]) => node.setAttribute(key, value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function letter(i) { return String.fromCharCode(65 + i); }

function responseCard(text, i) {
  const card = element("div", {class: "response", id: `response-${i}`});
  card.append(element("h3", {}, `Response ${letter(i)}`), element("div", {class: "text"}, text));
  if (task.forms.includes("thumbs")) {
    const thumbs = element("fieldset", {class: "thumbs"});
    for (const [value, label] of [["up", "thumbs up"], ["down", "thumbs down"]]) {
      const option = element("label");
      option.append(element("input", {type: "radio", name: `thumb-${i}`, value}), ` ${label}`);
      thumbs.append(option);
    }
    card.append(thumbs);
  }
  if (task.forms.includes("rating")) card.append(ratingFields(i));
  return card;
}

function ratingFields(i) {
  const fields = element("fieldset", {class: "rating"});
  const [low, high] = task.scale;
  const select = element("select", {id: `score-${i}`, "aria-label": `rating of response ${letter(i)}`});
  select.append(element("option", {value: ""}, `rate ${low}..${high}`));
  for (let v = low; v <= high; v++) select.append(element("option", {value: String(v)}, String(v)));
  fields.append(select);
  for (const flaw of task.flaws) {
    const option = element("label");
    option.append(element("input", {type: "checkbox", name: `flaw-${i}`, value: flaw}), ` ${flaw.replace("_", " ")}`);
    fields.append(option);
  }
  return fields;
}

function show(next) {
  task = next; shownAt = performance.now(); focused = 0; pending = null;
  $("empty").hidden = task !== null;
  $("task").hidden = task === null;
  if (task === null) { $("progress").value = 1; return; }
  const {done, queued} = task.progress;
  $("progress").value = done / Math.max(1, done + queued);
  $("progress-text").textContent = `${done} done, ${queued} to go`;
  const turns = task.conversation || [{role: "user", content: task.prompt}];
  $("conversation").replaceChildren(...turns.map((t) => element("div", {class: `turn ${t.role}`}, t.content)));
  $("responses").replaceChildren(...task.responses.map(responseCard));
  $("pairwise").hidden = !task.forms.includes("pairwise");
  $("ranking").hidden = !task.forms.includes("ranking") || task.responses.length < 3;
  $("ranks").replaceChildren(...task.responses.map((_, i) => {
    const label = element("label", {}, `${letter(i)} `);
    label.append(element("input", {type: "number", min: "1", max: String(task.responses.length), id: `rank-${i}`}));
    return label;
  }));
  document.querySelectorAll('input[name="winner"]').forEach((input) => { input.checked = false; });
  focus(0);
}

function focus(i) {
  focused = (i + task.responses.length) % task.responses.length;
  document.querySelectorAll(".response").forEach((card, j) => card.classList.toggle("focused", j === focused));
}

function checked(name) {
  const input = document.querySelector(`input[name="${name}"]:checked`);
  return input ? input.value : null;
}

function rankingOrder() {
  const ranks = task.responses.map((_, i) => Number($(`rank-${i}`).value));
  if (ranks.some((r) => !r)) return null;
  return ranks.map((r, i) => [r, i]).sort((x, y) => x[0] - y[0]).map(([, i]) => i);
}

function answeredLabels() {
  const labels = [];
  const winner = task.forms.includes("pairwise") ? checked("winner") : null;
  if (winner) labels.push({kind: "pairwise", winner, strength: winner === "tie" ? null : Number($("strength").value)});
  if (!$("ranking").hidden) {
    const order = rankingOrder();
    if (order) labels.push({kind: "ranking", order});
  }
  task.responses.forEach((_, i) => {
    const thumb = checked(`thumb-${i}`);
    if (thumb) labels.push({kind: "thumbs", thumb, response: i});
    const score = task.forms.includes("rating") ? $(`score-${i}`).value : "";
    if (score) {
      const flaws = Array.from(document.querySelectorAll(`input[name="flaw-${i}"]:checked`), (box) => box.value);
      labels.push({kind: "rating", score: Number(score), flaws, response: i});
    }
  });
  return labels;
}

async function send(labels) {
  // Made once per submit: a retry after an error resends the same ids.
  if (pending === null) {
    const seconds = (performance.now() - shownAt) / 1000;
    pending = labels.map((label, i) => ({...label, label_id: newId(), task_id: task.task_id, seconds: i ? 0 : seconds}));
  }
  status("saving…");
  try {
    for (const label of pending) await call("POST", "api/labels", label);
    lastSent = pending.length;
    status(`saved ✓ (${pending.length} label${pending.length > 1 ? "s" : ""})`, "saved");
    await loadNext();
  } catch (error) {
    status(`not saved (${error.message}); press Submit again`, "error");
  }
}

async function submit() {
  if (pending !== null) return send(pending);
  const labels = answeredLabels();
  if (!labels.length) return status("answer at least one question first", "error");
  return send(labels);
}

async function skip() { if (task) { pending = null; await send([{kind: "skip"}]); } }

async function undo() {
  try {
    for (let i = 0; i < lastSent; i++) await call("POST", "api/undo");
    status(`undone: the last ${lastSent > 1 ? `${lastSent} labels` : "label"}`, "saved");
    lastSent = 1;
    await loadNext();
  } catch (error) {
    status(`nothing (more) undone (${error.message})`, "error");
    lastSent = 1;
  }
}

async function loadNext() {
  try {
    show(await call("GET", "api/task"));
  } catch (error) {
    status(`could not load a task (${error.message})`, "error");
  }
}

function setRating(value) {
  const select = $(`score-${focused}`);
  if (select && [...select.options].some((o) => o.value === value)) select.value = value;
}

function setThumb(value) {
  const input = document.querySelector(`input[name="thumb-${focused}"][value="${value}"]`);
  if (input) input.checked = true;
}

const KEYS = {
  a: () => { const r = document.querySelector('input[name="winner"][value="a"]'); r.checked = true; },
  b: () => { const r = document.querySelector('input[name="winner"][value="b"]'); r.checked = true; },
  t: () => { const r = document.querySelector('input[name="winner"][value="tie"]'); r.checked = true; },
  "[": () => focus(focused - 1), "]": () => focus(focused + 1),
  "+": () => setThumb("up"), "-": () => setThumb("down"),
  s: skip, u: undo, Enter: submit,
};

document.addEventListener("keydown", (event) => {
  if (!task || event.ctrlKey || event.metaKey || event.altKey) return;
  if (["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName) && event.key !== "Enter") return;
  if (/^[1-9]$/.test(event.key)) { setRating(event.key); return; }
  if (KEYS[event.key]) { event.preventDefault(); KEYS[event.key](); }
});
$("submit").addEventListener("click", submit);
$("skip").addEventListener("click", skip);
$("undo").addEventListener("click", undo);
$("undo-empty").addEventListener("click", undo);
loadNext();
