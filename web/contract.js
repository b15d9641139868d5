// The rnnx ONNX contract as the browser reads it: names, metadata keys and their checks, mirroring
// runtime/contract.py (the Python runtime is the reference; docs/runtime.md describes the format).

import { ModelFileError } from "./errors.js";

export const FORMAT_VERSION = 2;
export const CELLS = ["rnn", "lstm", "gru"];
export const WEIGHT_FORMATS = ["fp32", "int8"];

export const TOKENS = "tokens";
export const PROMPT = "prompt";

export const META = {
  format: "rnnx.format_version",
  cell: "rnnx.cell",
  layers: "rnnx.layers",
  hidden: "rnnx.hidden",
  vocabSize: "rnnx.vocab_size",
  tokenizer: "rnnx.tokenizer",
  producer: "rnnx.producer",
  weights: "rnnx.weights", // optional: files exported before it existed are fp32
};
const REQUIRED = Object.values(META).filter((k) => k !== META.weights);
const KNOWN = new Set(Object.values(META));

export const stateInputs = (cell) => (cell === "lstm" ? ["h", "c"] : ["h"]);
export const stepOutputs = (cell) => ["logits", ...(cell === "lstm" ? ["h_next", "c_next"] : ["h_next"])];
export const promptOutputs = (cell) => ["prompt_logits", ...stepOutputs(cell).slice(1).map((n) => `prompt_${n}`)];

// A value echoed in an error line: quoted and cut (metadata values can be megabytes).
export function short(value, most = 40) {
  const quoted = JSON.stringify(value.length <= most ? value : value.slice(0, most));
  return value.length <= most ? quoted : `${quoted}... (${value.length} characters)`;
}

// A positive decimal size as the exporter writes it ("256"), nothing else ("2.5e3", "0x10", " 7").
function size(value) {
  if (!/^[0-9]{1,12}$/.test(value)) throw new TypeError(`${short(value, 20)} is not a size`);
  return Number(value);
}

/**
 * The model's facts from its metadata (a Map of strings), checked as the Python runtime checks them;
 * `fileBytes` bounds every size the metadata claims.
 */
export function modelInfo(meta, source, fileBytes) {
  if (!meta.has(META.format)) throw new ModelFileError(`${source} has no rnnx metadata: export it with rnn-export`);
  let version;
  try {
    version = size(meta.get(META.format));
  } catch {
    version = 0;
  }
  if (version < 1) throw new ModelFileError(`${source}: unreadable ${META.format} ${short(meta.get(META.format))}`);
  if (version > FORMAT_VERSION) {
    throw new ModelFileError(
      `${source} has rnnx format version ${version}, newer than this page reads (${FORMAT_VERSION}): upgrade rnnx-web`,
    );
  }
  const unknown = [...meta.keys()].filter((k) => !KNOWN.has(k)).sort();
  if (unknown.length) {
    const names = unknown.slice(0, 5).map((k) => short(k)).join(", ") + (unknown.length > 5 ? ", ..." : "");
    throw new ModelFileError(`${source} carries metadata rnnx did not write (${names}): refusing it`);
  }
  const missing = REQUIRED.filter((k) => !meta.has(k)).sort();
  if (missing.length) throw new ModelFileError(`${source} lacks rnnx metadata ${missing.join(", ")}: re-export it`);
  let info;
  try {
    info = {
      cell: meta.get(META.cell),
      layers: size(meta.get(META.layers)),
      hidden: size(meta.get(META.hidden)),
      vocabSize: size(meta.get(META.vocabSize)),
      tokenizer: JSON.parse(meta.get(META.tokenizer)),
      producer: meta.get(META.producer),
      weights: meta.has(META.weights) ? meta.get(META.weights) : "fp32",
      formatVersion: version,
    };
  } catch (err) {
    throw new ModelFileError(`${source} has malformed rnnx metadata (${err.message}): re-export it`);
  }
  if (!WEIGHT_FORMATS.includes(info.weights)) {
    throw new ModelFileError(
      `${source} stores its weights as ${short(info.weights)}, which this page does not know ` +
        `(${WEIGHT_FORMATS.join(", ")}): upgrade rnnx-web`,
    );
  }
  if (!CELLS.includes(info.cell) || Math.min(info.layers, info.hidden, info.vocabSize) < 1) {
    throw new ModelFileError(`${source} has inconsistent rnnx metadata: re-export it`);
  }
  // Every layer stores at least a hidden x hidden matrix (a byte a weight at int8), every vocabulary entry at
  // least a byte of metadata: sizes the file cannot hold are lies, refused before anything is allocated.
  if (info.layers * info.hidden * info.hidden > fileBytes || info.vocabSize > fileBytes) {
    throw new ModelFileError(
      `${source} claims ${info.layers} layers of ${info.hidden} units and ${info.vocabSize} tokens, ` +
        `more than its ${fileBytes} bytes can hold: refusing it`,
    );
  }
  return info;
}
