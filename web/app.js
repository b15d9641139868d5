// The demo page: load a model (a URL, a chosen or dropped file, or model.onnx beside the page), show what it
// is, generate with the sampling controls, stream the text into #output.
//
// Query parameters (the test contract): ?model=URL&seed=TEXT&len=N[&temperature=T&rng_seed=S&top_k=K
// &top_p=P&repetition_penalty=R&stop=TEXT&threads=N]. With model and seed the page loads and generates at
// once, writes the whole text (seed included) into #output and sets data-done="1" on it, or
// data-error="message" on any failure. threads > 1 needs a cross-origin isolated page (COOP/COEP headers).

import { loadModel, RnnxError, UsageError } from "./rnnx.js";

const $ = (id) => document.getElementById(id);
const output = $("output");
const status = $("status");
const params = new URLSearchParams(location.search);
let model = null;
let running = null; // the AbortController of the run in progress

function setStatus(text, isError = false) {
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function fail(err) {
  // our own errors carry a message written for the user; anything else is a bug, said as such
  const message = err instanceof RnnxError ? err.message : `unexpected error: ${err?.message ?? err}`;
  output.dataset.error = message;
  delete output.dataset.done;
  setStatus(message, true);
}

function resetOutput() {
  delete output.dataset.done;
  delete output.dataset.error;
  output.textContent = "";
}

function threadsWanted() {
  if (params.has("threads")) return wholeNumber("threads", params.get("threads"));
  return self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
}

function wholeNumber(name, text) {
  const value = Number(text);
  if (text.trim() === "" || !Number.isSafeInteger(value)) throw new UsageError(`${name} must be a whole number, got "${text}"`);
  return value;
}

function realNumber(name, text) {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value)) throw new UsageError(`${name} must be a number, got "${text}"`);
  return value;
}

function showInfo(m) {
  const i = m.info;
  const rows = [
    ["file", m.name],
    ["cell", `${i.cell.toUpperCase()}, ${i.layers} layer${i.layers > 1 ? "s" : ""} of ${i.hidden} units`],
    ["vocabulary", `${i.vocabSize} ${m.tokenizer.kind === "word" ? "words" : "characters"}`],
    ["weights", i.weights],
    ["format", `rnnx ${i.formatVersion}, opset ${i.opset}${i.hasPromptPath ? ", prompt path" : ""}`],
    ["size", `${(i.sizeBytes / 2 ** 20).toFixed(2)} MiB`],
    ["runs on", `onnxruntime-web wasm, ${model.threads} thread${model.threads > 1 ? "s" : ""}`],
  ];
  const dl = $("info");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    dl.append(Object.assign(document.createElement("dt"), { textContent: k }));
    dl.append(Object.assign(document.createElement("dd"), { textContent: v }));
  }
  $("len").title = `the whole text, the seed included, in ${m.tokenizer.kind === "word" ? "words" : "characters"}`;
}

async function load(source) {
  running?.abort();
  resetOutput();
  $("run").disabled = true;
  $("info").replaceChildren();
  const label = typeof source === "string" ? source : source.name;
  setStatus(`Loading ${label}…`);
  const threads = threadsWanted();
  const started = performance.now();
  const loaded = await loadModel(source, { threads });
  if (model) await model.release();
  model = loaded;
  model.threads = threads;
  showInfo(model);
  $("run").disabled = false;
  setStatus(`Loaded in ${((performance.now() - started) / 1000).toFixed(2)} s. Enter a seed and generate.`);
}

function samplingFromForm() {
  const rng = $("rng-seed").value.trim();
  const stop = $("stop").value.replaceAll("\\n", "\n");
  return {
    length: wholeNumber("length", $("len").value),
    temperature: realNumber("temperature", $("temperature").value),
    topK: wholeNumber("top-k", $("top-k").value),
    topP: realNumber("top-p", $("top-p").value),
    repetitionPenalty: realNumber("repetition penalty", $("repetition-penalty").value),
    stop: stop ? [stop] : [],
    rngSeed: rng === "" ? null : rng.match(/^[0-9]+$/) ? BigInt(rng) : wholeNumber("random seed", rng),
  };
}

async function generate() {
  if (!model) throw new UsageError("load a model first");
  const seed = $("seed").value;
  const options = samplingFromForm();
  resetOutput();
  const seedSpan = Object.assign(document.createElement("span"), { className: "seed", textContent: seed });
  const generated = document.createTextNode("");
  output.append(seedSpan, generated);
  running = new AbortController();
  $("run").disabled = true;
  $("stop-run").disabled = false;
  setStatus("Generating…");
  try {
    const result = await model.generate(seed, {
      ...options,
      signal: running.signal,
      onText: (piece) => generated.appendData(piece),
    });
    const speed = result.tokensPerSecond;
    status.dataset.tokensPerSecond = String(speed);
    setStatus(`${result.tokens} tokens in ${result.seconds.toFixed(2)} s: ${speed.toFixed(1)} tokens/s`);
    output.dataset.done = "1";
  } finally {
    running = null;
    $("run").disabled = false;
    $("stop-run").disabled = true;
  }
}

// Every handler reports its failure on the page: nothing escapes to the console as an uncaught error.
function guarded(fn) {
  return (...args) => fn(...args).catch(fail);
}

function setUpControls() {
  $("model-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(load)($("model-url").value.trim());
  });
  $("model-file").addEventListener("change", (e) => {
    if (e.target.files.length) guarded(load)(e.target.files[0]);
  });
  $("gen-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(generate)();
  });
  $("stop-run").addEventListener("click", () => running?.abort());
  addEventListener("dragover", (e) => {
    e.preventDefault();
    document.body.classList.add("dragging");
  });
  addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const file = e.dataTransfer?.files?.[0];
    if (file) guarded(load)(file);
  });
}

function formFromQuery() {
  const fields = { seed: "seed", len: "len", temperature: "temperature", top_k: "top-k", top_p: "top-p" };
  Object.assign(fields, { repetition_penalty: "repetition-penalty", stop: "stop", rng_seed: "rng-seed" });
  for (const [param, id] of Object.entries(fields)) if (params.has(param)) $(id).value = params.get(param);
  if (params.has("stop")) $("stop").value = params.get("stop").replaceAll("\n", "\\n");
}

async function start() {
  setUpControls();
  formFromQuery();
  if (params.has("model")) {
    $("model-url").value = params.get("model");
    await load(params.get("model"));
    if (params.has("seed")) await generate();
    return;
  }
  const beside = await fetch("model.onnx", { method: "HEAD" }).catch(() => null);
  if (beside?.ok) await load("model.onnx");
  else setStatus("Load a model: give its URL, choose a file, or drop one on the page.");
}

window.rnnxPage = { loadModel, model: () => model }; // a test hook: the page's model, and the module's loader
guarded(start)();
