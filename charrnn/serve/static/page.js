// The page of `charrnn serve` (and, with its data embedded, of `charrnn activations --out`):
// next-token bars as you type, streamed generation, and text coloured by one unit's activation
// with the units ranked by their correlation with a feature of the text. No library, no build.
"use strict";

const $ = (id) => document.getElementById(id);
const embedded = JSON.parse($("data").textContent);
let info = null, view = null, probsCall = null, genCall = null;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function shown(token) {  // a token as it can be seen in a bar or a tooltip
  return {" ": "\u2423", "\n": "\u23ce", "\t": "\u21e5"}[token] ?? token;
}

function percent(p) {
  return (100 * p).toFixed(p < 0.001 ? 3 : 1) + "%";
}

function runField() {
  return $("run").value ? {run: $("run").value} : {};
}

async function postJSON(path, body, signal) {
  const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify(body), signal});
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

// ------------------------------------------------------------------ next token as you type

async function updateProbs() {
  const text = $("text").value;
  if (probsCall) probsCall.abort();
  if (!text) {
    $("bars").replaceChildren();
    $("notes").textContent = "Type to see the most likely next characters.";
    return;
  }
  probsCall = new AbortController();
  try {
    const answer = await postJSON("/api/probs", {text, top: 10, ...runField()}, probsCall.signal);
    drawBars(answer.top);
    $("bars").dataset.text = text;
    $("notes").textContent = answer.notes.join("; ");
  } catch (err) {
    if (err.name !== "AbortError") $("notes").textContent = err.message;
  }
}

function drawBars(top) {
  const cells = [];
  for (const [token, p] of top) {
    const track = el("span", "bar-track");
    const bar = el("span", "bar");
    bar.style.width = (100 * p).toFixed(2) + "%";
    track.append(bar);
    cells.push(el("span", "bar-token", shown(token)), track, el("span", "bar-value", percent(p)));
  }
  $("bars").replaceChildren(...cells);
}

// ------------------------------------------------------------------ streamed generation

async function generate() {
  if (genCall) genCall.abort();
  genCall = new AbortController();
  const out = $("generated"), status = $("gen-status");
  out.replaceChildren();
  status.textContent = "generating\u2026";
  const body = {prefix: $("text").value || undefined, length: Number($("length").value),
                temperature: Number($("temperature").value), seed: Number($("seed").value), ...runField()};
  try {
    const response = await fetch("/api/generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                                   body: JSON.stringify(body), signal: genCall.signal});
    if (!response.ok) throw new Error((await response.json()).error);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (event.startsWith("data: ")) onEvent(JSON.parse(event.slice(6)), out, status);
      }
    }
  } catch (err) {
    status.textContent = err.name === "AbortError" ? "stopped" : err.message;
  }
}

function onEvent(event, out, status) {
  if (event.prefix !== undefined) out.append(el("span", "prefix", event.prefix));
  if (event.text) out.append(document.createTextNode(event.text));
  if (event.done) status.textContent = "done";
  if (event.error) status.textContent = event.error;
}

// ------------------------------------------------------------------ activations

async function loadActivations() {
  $("act-status").textContent = "reading\u2026";
  try {
    showActivations(await postJSON("/api/activations", {text: $("text").value, ...runField()}));
    $("act-status").textContent = "";
  } catch (err) {
    $("act-status").textContent = err.message;
  }
}

function decodeStates(answer) {
  if (answer.encoding === "list") return Float64Array.from(answer.states.flat(3));
  const bytes = Uint8Array.from(atob(answer.states), (c) => c.charCodeAt(0));
  return answer.dtype === "float64" ? new Float64Array(bytes.buffer) : new Float32Array(bytes.buffer);
}

function options(select, labels) {
  select.replaceChildren(...labels.map((label, k) => {
    const option = el("option", "", label);
    option.value = String(k);
    return option;
  }));
}

function showActivations(answer) {
  view = {answer, values: decodeStates(answer), spans: []};
  $("activations").hidden = false;
  const features = Object.keys(answer.features);
  options($("feature"), features);
  features.forEach((name, k) => { $("feature").options[k].value = name; });
  options($("layer"), Array.from({length: answer.layers}, (_, l) => String(l)));
  options($("state"), answer.state_names);
  $("unit").max = answer.units - 1;
  const colored = $("colored");
  colored.replaceChildren();
  answer.tokens.forEach((token, i) => {
    if (i && answer.level === "word") colored.append(" ");
    const span = el("span", "", token);
    span.dataset.i = i;
    view.spans.push(span);
    colored.append(span);
  });
  if (!features.length) $("ranking").replaceChildren(el("li", "", "no features for a word-level run"));
  rankUnits();
}

function rankUnits() {
  const feature = view.answer.features[$("feature").value];
  const list = $("ranking");
  list.replaceChildren();
  if (feature && !feature.varies) list.append(el("li", "", "this feature does not vary in the text"));
  for (const unit of feature ? feature.units : []) {
    const item = el("li", "", `layer ${unit.layer} ${unit.state} #${unit.unit}: r = ${unit.r.toFixed(3)}`);
    item.dataset.key = `${unit.layer}/${unit.state}/${unit.unit}`;
    item.addEventListener("click", () => pickUnit(unit));
    list.append(item);
  }
  if (feature && feature.units.length) pickUnit(feature.units[0]);
  else colorText();
}

function pickUnit(unit) {
  $("layer").value = String(unit.layer);
  $("state").value = String(view.answer.state_names.indexOf(unit.state));
  $("unit").value = String(unit.unit);
  colorText();
}

function chosenUnit() {
  const a = view.answer;
  const unit = Math.min(Math.max(0, Math.floor(Number($("unit").value)) || 0), a.units - 1);
  return {layer: Number($("layer").value), state: Number($("state").value), unit};
}

function color(v) {  // blue (-1), white (0), red (+1)
  const t = Math.min(1, Math.abs(v)), fade = Math.round(255 - 200 * t);
  return v >= 0 ? `rgb(255,${fade},${fade})` : `rgb(${fade},${fade},255)`;
}

function colorText() {
  const a = view.answer, [, L, S, H] = a.shape, {layer, state, unit} = chosenUnit();
  const values = view.spans.map((_, i) => view.values[((i * L + layer) * S + state) * H + unit]);
  // h lies in [-1, 1]; an LSTM's c does not: scaled by its largest |c| in the text when that is over 1
  const scale = Math.max(1, ...values.map(Math.abs));
  view.spans.forEach((span, i) => {
    span.style.backgroundColor = color(values[i] / scale);
    span.dataset.v = values[i];
  });
  const key = `${layer}/${a.state_names[state]}/${unit}`;
  for (const item of $("ranking").children) item.classList.toggle("chosen", item.dataset.key === key);
  const name = $("feature").value, feature = a.features[name];
  const r = feature ? feature.r[(layer * S + state) * H + unit] : null;
  $("unit-caption").textContent = `layer ${layer}, ${a.state_names[state]}, unit ${unit}` +
    (r === null || r === undefined ? "" : `: correlation with \u201c${name}\u201d r = ${r.toFixed(3)}`) +
    (scale > 1 ? ` (colours: value / ${scale.toFixed(2)}, its largest magnitude here)` : "");
}

function showGuesses(event) {
  const span = event.target, tip = $("tooltip");
  if (!view || span.dataset.i === undefined) return;
  const i = Number(span.dataset.i);
  const lines = view.answer.top[i].map(([token, p]) => `${shown(token).padEnd(4)} ${percent(p)}`);
  tip.textContent = `after \u201c${shown(view.answer.tokens[i])}\u201d  (${Number(span.dataset.v).toFixed(3)})\n` +
                    lines.join("\n");
  tip.style.left = `${event.clientX + 12}px`;
  tip.style.top = `${event.clientY + 14}px`;
  tip.hidden = false;
}

// ------------------------------------------------------------------ start

function describeRun() {
  const run = info.runs.find((r) => r.name === $("run").value) || info.runs[0];
  $("run-info").textContent = `${run.cell}, ${run.num_layers} \u00d7 ${run.num_hiddens} units, ` +
    `${run.vocab_size} tokens (${run.level} level, ${run.preprocess} preprocessing)`;
  if (!$("text").value && run.sample_prefix) $("text").value = run.sample_prefix;
  updateProbs();
}

async function start() {
  $("feature").addEventListener("change", rankUnits);
  for (const id of ["layer", "state", "unit"]) $(id).addEventListener("input", colorText);
  $("colored").addEventListener("mouseover", showGuesses);
  $("colored").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  if (embedded) {
    document.body.classList.add("static");
    $("live").hidden = true;
    $("run-info").textContent = `${embedded.run}: ${embedded.layers} \u00d7 ${embedded.units} units`;
    showActivations(embedded);
    return;
  }
  info = await (await fetch("/api/info")).json();
  options($("run"), info.runs.map((run) => run.name));
  info.runs.forEach((run, k) => { $("run").options[k].value = run.name; });
  $("run").addEventListener("change", describeRun);
  $("text").addEventListener("input", updateProbs);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => genCall && genCall.abort());
  $("show-activations").addEventListener("click", loadActivations);
  describeRun();
  document.body.dataset.ready = "yes";
}

start();
