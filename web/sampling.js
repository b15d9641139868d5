// Choosing the next token from logits, with the options and rules of runtime/sampling.py: greedy,
// temperature, top-k (ties with the k-th kept), top-p (the smallest most likely set reaching p, ties kept),
// a repetition penalty (a seen token's positive logit divided by it, a negative one multiplied), and a
// seeded random generator. The unknown token is never chosen. The random stream is this module's own
// (xoshiro128** seeded through splitmix64), not numpy's: a seed repeats a text here, not rnn-run's text.

import { ModelFileError, UsageError } from "./errors.js";
import { UNK_ID } from "./tokenizer.js";

const GREEDY_BELOW = 1e-30;
const MAX_TEMPERATURE = 1e30;
const MAX_REPETITION_PENALTY = 1e30;
const MAX_SEED = 2n ** 64n - 1n;
const BELOW_ONE = 1 - 2 ** -52;

/** Checked sampling options; the same names and limits as the Python runtime's SamplingConfig. */
export function samplingConfig({
  temperature = 0,
  topK = 0,
  topP = 1,
  repetitionPenalty = 1,
  stop = [],
  rngSeed = null,
} = {}) {
  const real = (v) => typeof v === "number" && !Number.isNaN(v);
  if (!(real(temperature) && temperature >= 0 && temperature <= MAX_TEMPERATURE)) {
    throw new UsageError(`temperature must be 0 (greedy) or positive, at most ${MAX_TEMPERATURE}, got ${temperature}`);
  }
  if (!Number.isSafeInteger(topK) || topK < 0) throw new UsageError(`top-k must be 0 (off) or positive, got ${topK}`);
  if (!(real(topP) && topP > 0 && topP <= 1)) throw new UsageError(`top-p must be in (0, 1], got ${topP}`);
  if (!(real(repetitionPenalty) && repetitionPenalty >= 1 && repetitionPenalty <= MAX_REPETITION_PENALTY)) {
    throw new UsageError(
      `repetition penalty must be 1 (off) or more, at most ${MAX_REPETITION_PENALTY}, got ${repetitionPenalty}`,
    );
  }
  const stops = typeof stop === "string" ? [stop] : stop;
  if (!Array.isArray(stops) || !stops.every((s) => typeof s === "string" && s)) {
    throw new UsageError("stop must be a list of non-empty strings");
  }
  let seed = null;
  if (rngSeed !== null && rngSeed !== undefined) {
    try {
      seed = BigInt(rngSeed);
    } catch {
      seed = -1n;
    }
    if (seed < 0n || seed > MAX_SEED || (typeof rngSeed === "number" && !Number.isSafeInteger(rngSeed))) {
      throw new UsageError(`the random seed must be a whole number from 0 to 2**64-1, got ${rngSeed}`);
    }
  }
  return Object.freeze({
    temperature,
    topK,
    topP,
    repetitionPenalty,
    stop: Object.freeze([...stops]),
    rngSeed: seed,
    greedy: temperature < GREEDY_BELOW,
  });
}

function splitmix64(state) {
  const mask = 2n ** 64n - 1n;
  let z = (state.value = (state.value + 0x9e3779b97f4a7c15n) & mask);
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & mask;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & mask;
  return z ^ (z >> 31n);
}

/** xoshiro128**, seeded from a 64-bit seed; `random()` gives 53-bit doubles in [0, 1). */
export class Random {
  constructor(seed) {
    const sm = { value: BigInt.asUintN(64, BigInt(seed)) };
    const a = splitmix64(sm);
    const b = splitmix64(sm);
    this.s = Uint32Array.of(Number(a & 0xffffffffn), Number(a >> 32n), Number(b & 0xffffffffn), Number(b >> 32n));
    if (!this.s.some(Boolean)) this.s[0] = 1;
  }

  next32() {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  random() {
    return ((this.next32() >>> 5) * 67108864 + (this.next32() >>> 6)) / 9007199254740992;
  }
}

const rotl = (x, k) => (x << k) | (x >>> (32 - k));

function freshSeed() {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return (BigInt(words[0]) << 32n) | BigInt(words[1]);
}

function nothingToChoose() {
  return new ModelFileError(
    "the model gave no usable logits (all -inf or NaN besides <unk>'s): the model file is broken; re-export or re-train it",
  );
}

/** Picks tokens for one stream (batch 1). */
export class Sampler {
  constructor(config, vocab) {
    this.config = config;
    this.seen = config.repetitionPenalty !== 1 ? new Uint8Array(vocab) : null;
    this.rng = null; // made at the first draw: greedy never needs one
  }

  /** The prompt's (or appended text's) ids count as seen for the repetition penalty. */
  remember(ids) {
    if (this.seen) for (const id of ids) this.seen[id] = 1;
  }

  /** A token id for `logits` (Float32Array [vocab], modified in place), never the unknown token. */
  choose(logits) {
    logits[UNK_ID] = -Infinity;
    if (this.seen) this.penalize(logits);
    const id = this.config.greedy ? argmax(logits) : this.sample(logits);
    if (this.seen) this.seen[id] = 1;
    return id;
  }

  penalize(logits) {
    const penalty = Math.fround(this.config.repetitionPenalty);
    for (let i = 0; i < logits.length; i++) {
      if (!this.seen[i]) continue;
      const v = logits[i]; // a Float32Array rounds each result to float32, as numpy's float32 arithmetic does
      logits[i] = v > 0 ? v / penalty : v * penalty;
    }
  }

  sample(logits) {
    const { topK, topP, temperature } = this.config;
    const vocab = logits.length;
    const w = Float64Array.from(logits, (v) => (Number.isNaN(v) ? -Infinity : v));
    let top = -Infinity;
    for (const v of w) if (v > top) top = v;
    if (top === Infinity) {
      for (let i = 0; i < vocab; i++) w[i] = w[i] === Infinity ? 0 : -Infinity; // infinitely more likely
      top = 0;
    }
    if (top === -Infinity) throw nothingToChoose();
    if (topK > 0 && topK < vocab) {
      const kth = Float64Array.from(w).sort()[vocab - topK];
      for (let i = 0; i < vocab; i++) if (w[i] < kth) w[i] = -Infinity;
    }
    const inverse = 1 / temperature;
    let total = 0;
    for (let i = 0; i < vocab; i++) total += w[i] = Math.exp((w[i] - top) * inverse);
    if (topP < 1) total = keepTopP(w, topP * total);
    this.rng ??= new Random(this.config.rngSeed ?? freshSeed());
    const target = this.rng.random() * BELOW_ONE * total;
    let cum = 0;
    let last = -1;
    for (let i = 0; i < vocab; i++) {
      if (!w[i]) continue;
      cum += w[i];
      last = i;
      if (cum > target) return i;
    }
    return last; // rounding left the target at the very end: the last token with weight
  }
}

/** Zero the weights below the top-p cut (ties with it kept); the weights' new total. */
function keepTopP(w, target) {
  const sorted = Float64Array.from(w).sort().reverse();
  let mass = 0;
  let first = 0;
  while (first < sorted.length - 1 && (mass += sorted[first]) < target) first++;
  const cut = sorted[first];
  let total = 0;
  for (let i = 0; i < w.length; i++) {
    if (w[i] < cut) w[i] = 0;
    total += w[i];
  }
  return total;
}

function argmax(logits) {
  let best = -1;
  let value = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    if (logits[i] > value) {
      value = logits[i];
      best = i;
    }
  }
  if (best < 0) {
    // all -inf or NaN; +inf counts (the first one, as numpy's argmax takes it)
    throw nothingToChoose();
  }
  return best;
}

export { GREEDY_BELOW };
