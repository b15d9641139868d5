// Reading an .onnx file's bytes in the browser: just enough protobuf to check it and take it apart, as
// rnnx.runtime.onnxfile does in Python. onnxruntime-web has no API for a model's custom metadata_props, so
// they are read here, before onnxruntime sees the file. Every length is checked against the buffer; a file
// whose tensors live in external files is refused (a page has no files beside the model to read).

import { ModelFileError } from "./errors.js";

// A self-contained ONNX file is one protobuf message, which protobuf caps at 2 GiB.
export const MAX_MODEL_BYTES = 2 ** 31 - 1;

// Field numbers from onnx.proto.
const MODEL = { ir: 1, producer: 2, producerVersion: 3, graph: 7, opset: 8, metadata: 14 };
const OPSET = { domain: 1, version: 2 };
const ENTRY = { key: 1, value: 2 };
const GRAPH = { node: 1, initializer: 5, input: 11, output: 12, valueInfo: 13, sparseInitializer: 15 };
const NODE = { input: 1, output: 2, attribute: 5 };
const ATTR = { t: 5, g: 6, tensors: 10, graphs: 11, sparseTensor: 22, sparseTensors: 23 };
const TENSOR = { name: 8, externalData: 13, dataLocation: 14 };
const SPARSE = { values: 1, indices: 2 };
const VALUE_NAME = 1;
const EXTERNAL = 1;
const MAX_DEPTH = 16; // graphs inside node attributes inside graphs: rnnx writes two levels

class Malformed extends Error {}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function text(bytes) {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new Malformed();
  }
}

function varint(buf, pos) {
  let result = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new Malformed();
    const byte = buf[pos++];
    result += (byte & 0x7f) * scale; // plain arithmetic: shifts would wrap at 32 bits
    if (!(byte & 0x80)) return [result, pos];
    scale *= 128;
  }
  throw new Malformed();
}

// Each field of one message: {field, wire, value, start, end}; buf.subarray(start, end) is the whole field,
// key included, so a kept field can be copied as it is. `value` is a number (varint) or a subarray (bytes).
function* spans(buf) {
  let pos = 0;
  while (pos < buf.length) {
    const start = pos;
    let key;
    [key, pos] = varint(buf, pos);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field === 0) throw new Malformed();
    let value = 0;
    if (wire === 0) {
      [value, pos] = varint(buf, pos);
    } else if (wire === 2) {
      let size;
      [size, pos] = varint(buf, pos);
      if (size > buf.length - pos) throw new Malformed();
      value = buf.subarray(pos, pos + size);
      pos += size;
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
      if (pos > buf.length) throw new Malformed();
    } else {
      throw new Malformed();
    }
    yield { field, wire, value, start, end: pos };
  }
}

function strings(buf, number) {
  const out = [];
  for (const f of spans(buf)) if (f.field === number && f.wire === 2) out.push(text(f.value));
  return out;
}

function named(buf, number) {
  const names = strings(buf, number);
  return names.length ? names[0] : "";
}

function tensorIsExternal(tensor) {
  for (const { field, value } of spans(tensor)) {
    if (field === TENSOR.externalData || (field === TENSOR.dataLocation && value === EXTERNAL)) return true;
  }
  return false;
}

function sparseIsExternal(sparse) {
  for (const { field, wire, value } of spans(sparse)) {
    if (wire === 2 && (field === SPARSE.values || field === SPARSE.indices) && tensorIsExternal(value)) return true;
  }
  return false;
}

function graphHasExternal(graph, depth = 0) {
  if (depth > MAX_DEPTH) throw new Malformed();
  for (const { field, wire, value } of spans(graph)) {
    if (wire !== 2) continue;
    if (field === GRAPH.initializer && tensorIsExternal(value)) return true;
    if (field === GRAPH.sparseInitializer && sparseIsExternal(value)) return true;
    if (field === GRAPH.node) {
      for (const n of spans(value)) {
        if (n.field === NODE.attribute && n.wire === 2 && attributeHasExternal(n.value, depth)) return true;
      }
    }
  }
  return false;
}

function attributeHasExternal(attr, depth) {
  for (const { field, wire, value } of spans(attr)) {
    if (wire !== 2) continue;
    if ((field === ATTR.t || field === ATTR.tensors) && tensorIsExternal(value)) return true;
    if ((field === ATTR.sparseTensor || field === ATTR.sparseTensors) && sparseIsExternal(value)) return true;
    if ((field === ATTR.g || field === ATTR.graphs) && graphHasExternal(value, depth + 1)) return true;
  }
  return false;
}

function oneGraph(data) {
  const graphs = [];
  for (const f of spans(data)) if (f.field === MODEL.graph && f.wire === 2) graphs.push(f.value);
  if (graphs.length !== 1) throw new Malformed();
  return graphs[0];
}

function notOnnx(source) {
  return new ModelFileError(`${source} is not an ONNX model (corrupt or another format): export one with rnn-export`);
}

/**
 * What a model file says about itself, once it is known to be a self-contained ONNX model:
 * {metadata (Map), opset, irVersion, producer, outputs (graph output names), sizeBytes}.
 */
export function readModel(data, source, maxBytes = MAX_MODEL_BYTES) {
  if (!(data instanceof Uint8Array)) throw new TypeError("model bytes must be a Uint8Array");
  if (data.length > maxBytes) {
    throw new ModelFileError(
      `${source} is ${(data.length / 2 ** 20).toFixed(1)} MiB, over the limit of ` +
        `${(maxBytes / 2 ** 20).toFixed(1)} MiB: not an rnnx model this page can load`,
    );
  }
  let external;
  const facts = { metadata: new Map(), opset: 0, irVersion: 0, producer: "", outputs: [], sizeBytes: data.length };
  try {
    external = graphHasExternal(oneGraph(data));
    const producer = [];
    for (const { field, wire, value } of spans(data)) {
      if (field === MODEL.ir && wire === 0) facts.irVersion = value;
      else if ((field === MODEL.producer || field === MODEL.producerVersion) && wire === 2) producer.push(text(value));
      else if (field === MODEL.opset && wire === 2) readOpset(value, facts);
    }
    facts.producer = producer.filter(Boolean).join(" ");
    for (const f of spans(oneGraph(data))) {
      if (f.field === GRAPH.output && f.wire === 2) facts.outputs.push(named(f.value, VALUE_NAME));
    }
  } catch (err) {
    if (err instanceof Malformed) throw notOnnx(source);
    throw err;
  }
  if (external) {
    throw new ModelFileError(
      `${source} keeps tensors in external data files, which rnnx refuses: export a single .onnx file`,
    );
  }
  facts.metadata = readMetadata(data, source);
  return facts;
}

function readOpset(value, facts) {
  let domain = "";
  let version = 0;
  for (const f of spans(value)) {
    if (f.field === OPSET.domain && f.wire === 2) domain = text(f.value);
    if (f.field === OPSET.version && f.wire === 0) version = f.value;
  }
  if (domain === "" || domain === "ai.onnx") facts.opset = version;
}

function readMetadata(data, source) {
  const meta = new Map();
  try {
    for (const { field, wire, value } of spans(data)) {
      if (field !== MODEL.metadata || wire !== 2) continue;
      const parts = new Map();
      for (const f of spans(value)) if (f.wire === 2) parts.set(f.field, text(f.value));
      meta.set(parts.get(ENTRY.key) ?? "", parts.get(ENTRY.value) ?? "");
    }
  } catch (err) {
    if (err instanceof Malformed) throw new ModelFileError(`${source} has unreadable metadata: re-export it`);
    throw err;
  }
  return meta;
}

// Every name the nodes of `graph` and of its subgraphs read: a subgraph may read outer names directly.
function graphNames(graph, depth, into) {
  if (depth > MAX_DEPTH) throw new Malformed();
  for (const { field, wire, value } of spans(graph)) {
    if (field === GRAPH.node && wire === 2) nodeReads(value, depth, into);
  }
}

function nodeReads(node, depth, into) {
  for (const name of strings(node, NODE.input)) into.add(name);
  for (const n of spans(node)) {
    if (n.field !== NODE.attribute || n.wire !== 2) continue;
    for (const a of spans(n.value)) {
      if ((a.field === ATTR.g || a.field === ATTR.graphs) && a.wire === 2) graphNames(a.value, depth + 1, into);
    }
  }
  return into;
}

function encodeVarint(value) {
  const out = [];
  do {
    const byte = value % 128;
    value = Math.floor(value / 128);
    out.push(byte | (value ? 0x80 : 0));
  } while (value);
  return Uint8Array.from(out);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * The model with only what computing `outputs` needs: those graph outputs, the nodes they depend on, and the
 * inputs and initializers those nodes read; everything else is copied as it is. onnxruntime runs every node
 * of a graph whatever outputs are asked for, so each path of a two-path file becomes a session of its own.
 */
export function extract(data, outputs, source) {
  const want = new Set(outputs);
  try {
    const fields = [...spans(oneGraph(data))];
    const needed = new Set(want);
    const keep = new Set();
    for (let i = fields.length - 1; i >= 0; i--) {
      // nodes are stored in topological order
      const { field, wire, value } = fields[i];
      if (field === GRAPH.node && wire === 2 && strings(value, NODE.output).some((n) => needed.has(n))) {
        keep.add(i);
        nodeReads(value, 0, needed);
      }
    }
    const found = new Set(fields.filter((f) => f.field === GRAPH.output && f.wire === 2).map((f) => named(f.value, VALUE_NAME)));
    const missing = [...want].filter((n) => !found.has(n));
    if (missing.length) throw new ModelFileError(`${source} lacks the outputs ${missing.sort().join(", ")}: re-export it`);
    const graph = oneGraph(data);
    const parts = [];
    fields.forEach(({ field, wire, value, start, end }, i) => {
      if (wire === 2 && dropped(field, value, i, keep, needed, want)) return;
      parts.push(graph.subarray(start, end));
    });
    const newGraph = concat(parts);
    const out = [];
    for (const { field, wire, start, end } of spans(data)) {
      if (field === MODEL.graph && wire === 2) out.push(encodeVarint(MODEL.graph * 8 + 2), encodeVarint(newGraph.length), newGraph);
      else out.push(data.subarray(start, end));
    }
    return concat(out);
  } catch (err) {
    if (err instanceof Malformed) throw notOnnx(source);
    throw err;
  }
}

function dropped(field, value, index, keep, needed, want) {
  if (field === GRAPH.node) return !keep.has(index);
  if (field === GRAPH.input || field === GRAPH.valueInfo) return !needed.has(named(value, VALUE_NAME));
  if (field === GRAPH.output) return !want.has(named(value, VALUE_NAME));
  if (field === GRAPH.initializer) return !needed.has(named(value, TENSOR.name));
  return false;
}
