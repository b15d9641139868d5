// rnnx in the browser: load an exported .onnx file (its bytes alone), run it on onnxruntime-web's wasm
// backend, stream text.
//
//   import { loadModel } from "./rnnx.js";
//   const model = await loadModel("model.onnx");          // a URL, a File/Blob, an ArrayBuffer or Uint8Array
//   const { text } = await model.generate("good", { length: 15, onText: (piece) => console.log(piece) });
//
// The model's vocabulary, tokenizer and sizes come from the file's metadata_props, read here (onnxruntime-web
// has no API for them). A two-path file (format version 2) opens its step path and its prompt path as two
// sessions, each cut out of the graph, because onnxruntime runs every node whatever outputs are asked for;
// a prompt is then read in one call. The Python runtime (runtime/) is the reference for every rule here.

import * as contract from "./contract.js";
import { ModelFileError, RnnxError, UsageError } from "./errors.js";
import { extract, MAX_MODEL_BYTES, readModel } from "./onnxfile.js";
import { Sampler, samplingConfig } from "./sampling.js";
import { StopText } from "./stoptext.js";
import { tokenizerFromDict, UNK_ID } from "./tokenizer.js";

export { ModelFileError, RnnxError, UsageError };

const ORT_MODULE = new URL("./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs", import.meta.url).href;
const WORD_TOKEN_CAP = 10; // with a length in words, also stop after this many tokens per word asked for
const PROMPT_CHUNK_BYTES = 32 << 20; // tokens per prompt call: the gathered input gates stay near this size
const GATES = { rnn: 1, gru: 3, lstm: 4 };

let ortPromise = null;

/** onnxruntime-web's wasm build from this folder's node_modules (what `npm ci` installed). */
async function defaultOrt() {
  ortPromise ??= import(ORT_MODULE).then((ort) => {
    ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
    ort.env.logLevel = "error";
    return ort;
  });
  return ortPromise;
}

async function readSource(source, maxBytes) {
  if (source instanceof Uint8Array) return { bytes: source, name: "the model file" };
  if (source instanceof ArrayBuffer) return { bytes: new Uint8Array(source), name: "the model file" };
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    if (source.size > maxBytes) throw tooBig(source.name ?? "the model file", source.size, maxBytes);
    return { bytes: new Uint8Array(await source.arrayBuffer()), name: source.name || "the model file" };
  }
  if (typeof source === "string" || source instanceof URL) {
    const url = String(source);
    let response;
    try {
      response = await fetch(url);
    } catch (err) {
      throw new ModelFileError(`${url} could not be fetched (${err.message}): check the address`);
    }
    if (!response.ok) throw new ModelFileError(`${url} answered ${response.status}: check the address`);
    const declared = Number(response.headers.get("content-length"));
    if (declared > maxBytes) throw tooBig(url, declared, maxBytes);
    return { bytes: new Uint8Array(await response.arrayBuffer()), name: url };
  }
  throw new UsageError("the model must be a URL, a File or Blob, an ArrayBuffer or a Uint8Array");
}

function tooBig(name, size, limit) {
  return new ModelFileError(
    `${name} is ${(size / 2 ** 20).toFixed(1)} MiB, over the limit of ${(limit / 2 ** 20).toFixed(1)} MiB: not a model this page loads`,
  );
}

/**
 * Load an rnnx model. options: threads (wasm threads; more than 1 needs a cross-origin isolated page),
 * maxBytes (refuse larger files), ort (an onnxruntime-web module to use instead of ./node_modules').
 */
export async function loadModel(source, { threads = 1, maxBytes = MAX_MODEL_BYTES, ort = null } = {}) {
  if (!Number.isSafeInteger(threads) || threads < 1) throw new UsageError(`threads must be 1 or more, got ${threads}`);
  const { bytes, name } = await readSource(source, maxBytes);
  const facts = readModel(bytes, name, maxBytes);
  const info = contract.modelInfo(facts.metadata, name, bytes.length);
  const tokenizer = tokenizerFromDict(info.tokenizer);
  if (tokenizer.vocab.length !== info.vocabSize) {
    throw new ModelFileError(`${name}: vocabulary size disagrees with the metadata: re-export it`);
  }
  ort ??= await defaultOrt();
  ort.env.wasm.numThreads = threads;
  const twoPaths = facts.outputs.includes("prompt_logits");
  const stepBytes = twoPaths ? extract(bytes, contract.stepOutputs(info.cell), name) : bytes;
  const step = await openSession(ort, stepBytes, name);
  checkIo(step, info, name, false);
  let prompt = null;
  if (twoPaths) {
    prompt = await openSession(ort, extract(bytes, contract.promptOutputs(info.cell), name), name);
    checkIo(prompt, info, name, true);
  }
  return new Model(ort, info, facts, tokenizer, step, prompt, name);
}

async function openSession(ort, bytes, name) {
  try {
    return await ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
      logSeverityLevel: 3,
    });
  } catch (err) {
    throw new ModelFileError(`${name} could not be loaded by onnxruntime-web (${firstLine(err)}): re-export it`);
  }
}

function firstLine(err) {
  const line = String(err?.message ?? err).trim().split("\n")[0] || "unknown error";
  return line.length > 200 ? `${line.slice(0, 197)}...` : line;
}

// The inputs and outputs the contract names for the cell: names, element types, and fixed sizes equal to the
// metadata (batch and length dynamic), as the Python runtime's check_io.
function checkIo(session, info, name, prompt) {
  const tokens = prompt ? contract.PROMPT : contract.TOKENS;
  const wantIn = [tokens, ...contract.stateInputs(info.cell)];
  const wantOut = prompt ? contract.promptOutputs(info.cell) : contract.stepOutputs(info.cell);
  const same = (a, b) => a.length === b.length && [...a].sort().join() === [...b].sort().join();
  if (!same(session.inputNames, wantIn) || !same(session.outputNames, wantOut)) {
    throw new ModelFileError(
      `${name} does not match the rnnx contract: inputs ${session.inputNames}, outputs ${session.outputNames}; ` +
        `expected inputs ${wantIn} and outputs ${wantOut}`,
    );
  }
  const state = [info.layers, null, info.hidden];
  const shapes = { [tokens]: prompt ? [null, null] : [null], [wantOut[0]]: [null, info.vocabSize] };
  for (const n of [...wantIn.slice(1), ...wantOut.slice(1)]) shapes[n] = state;
  for (const meta of [...(session.inputMetadata ?? []), ...(session.outputMetadata ?? [])]) {
    const type = meta.name === tokens ? "int64" : "float32";
    if (!meta.isTensor || meta.type !== type) {
      throw new ModelFileError(`${name}: ${meta.name} is not a ${type} tensor as the rnnx contract says: re-export it`);
    }
    const want = shapes[meta.name];
    const fits =
      meta.shape.length === want.length &&
      meta.shape.every((d, i) => (want[i] === null ? typeof d !== "number" : d === want[i]));
    if (!fits) {
      throw new ModelFileError(
        `${name}: ${meta.name} has shape [${meta.shape}], which disagrees with its metadata (layers ${info.layers}, ` +
          `hidden ${info.hidden}, vocabulary ${info.vocabSize}): re-export it`,
      );
    }
  }
}

class Model {
  constructor(ort, info, facts, tokenizer, step, prompt, name) {
    this.ort = ort;
    this.info = { ...info, opset: facts.opset, sizeBytes: facts.sizeBytes, hasPromptPath: prompt !== null };
    this.tokenizer = tokenizer;
    this.name = name;
    this.stepSession = step;
    this.promptSession = prompt;
    this.stateNames = contract.stateInputs(info.cell);
  }

  /** A zero state: one Float32Array [layers, 1, hidden] per state input. */
  initialState() {
    return this.stateNames.map(() => new Float32Array(this.info.layers * this.info.hidden));
  }

  async run(session, tokensName, ids, dims, state) {
    const { ort, info } = this;
    const feeds = { [tokensName]: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), dims) };
    this.stateNames.forEach((n, i) => (feeds[n] = new ort.Tensor("float32", state[i], [info.layers, 1, info.hidden])));
    let out;
    try {
      out = await session.run(feeds);
    } catch (err) {
      throw new ModelFileError(`${this.name} failed while running (${firstLine(err)}): the file is broken; re-export it`);
    }
    const names = tokensName === contract.PROMPT ? contract.promptOutputs(info.cell) : contract.stepOutputs(info.cell);
    const [logitsName, ...stateOut] = names;
    const logits = out[logitsName];
    if (logits.dims.length !== 2 || logits.dims[0] !== 1 || logits.dims[1] !== info.vocabSize) {
      throw new ModelFileError(`${this.name} computed logits of shape [${logits.dims}], not [batch, vocabulary]`);
    }
    return { logits: logits.data, state: stateOut.map((n) => out[n].data) };
  }

  /** One step: token `id` from `state`; the logits (Float32Array [vocab]) and the next state. A test hook too. */
  async step(id, state) {
    this.checkIds([id]);
    return this.run(this.stepSession, contract.TOKENS, [id], [1], state);
  }

  /** Read token `ids` from `state`: the logits after the last and the state after all of them. */
  async read(ids, state) {
    this.checkIds(ids);
    if (!ids.length) throw new UsageError("read needs at least one token");
    if (this.promptSession === null) {
      let result;
      for (const id of ids) {
        result = await this.run(this.stepSession, contract.TOKENS, [id], [1], state);
        state = result.state;
      }
      return result;
    }
    const piece = Math.max(1, Math.floor(PROMPT_CHUNK_BYTES / (GATES[this.info.cell] * this.info.hidden * 4)));
    let result;
    for (let start = 0; start < ids.length; start += piece) {
      const chunk = ids.slice(start, start + piece);
      result = await this.run(this.promptSession, contract.PROMPT, chunk, [1, chunk.length], state);
      state = result.state;
    }
    return result;
  }

  checkIds(ids) {
    if (!ids.every((id) => Number.isSafeInteger(id) && id >= 0 && id < this.info.vocabSize)) {
      throw new UsageError(`token ids must be from 0 to ${this.info.vocabSize - 1} (the vocabulary)`);
    }
  }

  /** Token ids of `seed`, refused when it is empty or holds nothing the model knows. */
  encodeSeed(seed) {
    if (typeof seed !== "string") throw new UsageError("the seed must be text");
    const ids = this.tokenizer.encode(seed);
    if (!ids.length) throw new UsageError("the seed text is empty: give at least one token to start from");
    if (ids.every((id) => id === UNK_ID)) {
      const unit = this.tokenizer.kind === "word" ? "word" : "character";
      throw new UsageError(`the seed has no ${unit} this model knows: use text like what it was trained on`);
    }
    return ids;
  }

  /**
   * How many tokens (words for a word model: punctuation rides along uncounted) to generate so that the whole
   * text, the seed included, is `length` long, as rnn-run's --len counts.
   */
  newTokensForLength(seed, length) {
    const ids = this.encodeSeed(seed);
    if (!Number.isSafeInteger(length)) throw new UsageError(`the length must be a whole number, got ${length}`);
    const words = this.tokenizer.kind === "word";
    const have = words ? ids.filter((id) => this.tokenizer.isWord(id)).length : ids.length;
    if (length < have) {
      throw new UsageError(`length ${length} is shorter than the seed text (${have} ${words ? "words" : "tokens"})`);
    }
    return length - have;
  }

  /**
   * Generate after `seed`. options: length (the whole text's, as rnn-run --len) or maxNewTokens; sampling
   * (temperature, topK, topP, repetitionPenalty, stop, rngSeed); onText(piece) for each new piece of text;
   * signal (an AbortSignal). Returns {text (seed included), newText, tokens, seconds, tokensPerSecond}:
   * seconds and tokens/s count the generated tokens' steps, not the prompt.
   */
  async generate(seed, { length, maxNewTokens, onText = () => {}, signal = null, ...sampling } = {}) {
    const config = samplingConfig(sampling);
    const ids = this.encodeSeed(seed);
    const words = this.tokenizer.kind === "word" && length !== undefined;
    const budget = length !== undefined ? this.newTokensForLength(seed, length) : (maxNewTokens ?? 100);
    if (!Number.isSafeInteger(budget) || budget < 0) throw new UsageError(`maxNewTokens must be 0 or more, got ${budget}`);
    const sampler = new Sampler(config, this.info.vocabSize);
    sampler.remember(ids);
    const stops = config.stop.length ? new StopText(config.stop) : null;
    let { logits, state } = await this.read(ids, this.initialState());
    const pieces = [];
    let prev = ids[ids.length - 1];
    let left = budget;
    let tokensLeft = budget * WORD_TOKEN_CAP;
    let tokens = 0;
    const started = performance.now();
    while (left > 0) {
      if (signal?.aborted) break;
      const id = sampler.choose(logits);
      let piece = this.tokenizer.piece(prev, id);
      prev = id;
      tokens++;
      if (words) {
        tokensLeft--;
        left -= this.tokenizer.isWord(id) ? 1 : 0;
      } else {
        left--;
      }
      const spent = left === 0 || (words && tokensLeft === 0);
      let stopped = false;
      if (stops) {
        [piece, stopped] = stops.feed(piece);
        if (spent && !stopped) piece += stops.flush();
      }
      if (piece) {
        pieces.push(piece);
        onText(piece);
      }
      if (stopped || spent) break;
      ({ logits, state } = await this.step(id, state));
    }
    const seconds = (performance.now() - started) / 1000;
    const newText = pieces.join("");
    return { text: seed + newText, newText, tokens, seconds, tokensPerSecond: seconds > 0 ? tokens / seconds : 0 };
  }

  /** Logits after each of `ids` fed one step at a time from a zero state (a parity test hook). */
  async traceLogits(ids) {
    let state = this.initialState();
    const rows = [];
    for (const id of ids) {
      const result = await this.step(id, state);
      rows.push(Array.from(result.logits));
      state = result.state;
    }
    return rows;
  }

  async release() {
    await this.stepSession.release();
    if (this.promptSession) await this.promptSession.release();
  }
}
