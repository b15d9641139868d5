// Tokenizers from a model's metadata, the same rules as runtime/tokenizer.py: text <-> token ids, and the
// text a token adds after another (spacing and capitals for words). Id 0 is the unknown token.
//
// Python counts characters as code points: here strings are walked with for..of (code points too), never
// by UTF-16 index. The word rules are named by a version string ("words-1") that maps to rules this file
// owns; a model file cannot bring its own regular expression.

import { ModelFileError } from "./errors.js";

export const UNK = "<unk>";
export const UNK_ID = 0;
const MAX_WORD_CHARS = 100;
const MAX_RULE_ENTRIES = 256;
const MAX_RULE_CHARS = 16;

// Python's str.isspace(), spelled out: JavaScript's \s differs (it has U+FEFF, lacks U+001C-U+001F, U+0085).
const SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const SPACE_CHAR = new RegExp(`^[${SPACE}]$`, "u");
// Python's \w for text is exactly letters, numbers and "_" (\p{L}, \p{N}, "_"); "words-1" in Python:
//   [^\W_]+(?:['\-][^\W_]+)*|[^\w\s]|_
const WORDS_V1 = "words-1";
const WORD_PATTERN = "[^\\W_]+(?:['\\-][^\\W_]+)*|[^\\w\\s]|_";
const WORD_RULES = {
  [WORDS_V1]: `[\\p{L}\\p{N}]+(?:['\\-][\\p{L}\\p{N}]+)*|[^\\p{L}\\p{N}_${SPACE}]|_`,
};
const LETTER_OR_DIGIT = /[\p{L}\p{N}]/u;
const OPEN_QUOTE = "\u201c";
const CLOSE_QUOTE = "\u201d";
const QUOTE_MAP = { "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'" };
const SPACING_SETS = ["no_space_before", "no_space_after", "capitalize_after"];

const codePoints = (text) => Array.from(text);

export class CharTokenizer {
  constructor(vocab) {
    this.kind = "char";
    this.vocab = vocab;
    this.index = new Map(vocab.map((tok, i) => [tok, i]));
  }

  encode(text) {
    return codePoints(text).map((ch) => this.index.get(ch) ?? UNK_ID);
  }

  piece(prevId, id) {
    return id === UNK_ID ? "" : this.vocab[id];
  }

  isWord() {
    return true; // every character counts towards a length, an unknown one too
  }
}

export class WordTokenizer {
  constructor(vocab, { lowercase, rules, spacing }) {
    this.kind = "word";
    this.vocab = vocab;
    this.lowercase = lowercase;
    this.rules = rules;
    this.noSpaceBefore = spacing.no_space_before;
    this.noSpaceAfter = spacing.no_space_after;
    this.capitalizeAfter = spacing.capitalize_after;
    this.index = new Map(vocab.map((tok, i) => [tok, i]));
    this.words = vocab.map((tok, i) => i === UNK_ID || LETTER_OR_DIGIT.test(tok));
    this.regex = new RegExp(WORD_RULES[rules], "gu");
  }

  split(text) {
    text = text.replace(/[\u201c\u201d\u201e\u2018\u2019]/g, (q) => QUOTE_MAP[q]);
    if (this.lowercase) text = text.toLowerCase();
    const tokens = [];
    for (const match of text.matchAll(this.regex)) {
      let tok = match[0];
      if (tok === '"') {
        // the code point before it (a low surrogate alone is neither space nor a bracket, as its pair is not)
        const before = match.index ? text[match.index - 1] : " ";
        tok = SPACE_CHAR.test(before) || "([{".includes(before) ? OPEN_QUOTE : CLOSE_QUOTE;
      }
      tokens.push(tok);
    }
    return tokens;
  }

  encode(text) {
    return this.split(text).map((tok) => this.index.get(tok) ?? UNK_ID);
  }

  piece(prevId, id) {
    if (id === UNK_ID) return "";
    let tok = this.vocab[id];
    // an unknown previous token (a seed word outside the vocabulary) is spaced like an ordinary word
    const prev = prevId === null ? null : prevId === UNK_ID ? "" : this.vocab[prevId];
    if (this.lowercase && (prev === null || this.capitalizeAfter.has(prev) || tok === "i" || tok.startsWith("i'"))) {
      const [first, ...rest] = codePoints(tok);
      tok = first.toUpperCase() + rest.join("");
    }
    if (prev === null || this.noSpaceBefore.has(tok) || this.noSpaceAfter.has(prev)) return tok;
    return " " + tok;
  }

  isWord(id) {
    return this.words[id];
  }
}

function wordRulesName(data) {
  const { rules, pattern } = data;
  if (pattern !== undefined && pattern !== WORD_PATTERN) {
    throw new ModelFileError(
      "the word tokenizer's pattern is not the one rnnx wrote (a model file cannot bring its own splitting rules): re-train the model",
    );
  }
  if (rules === undefined && pattern !== undefined) return WORDS_V1;
  if (rules === undefined) throw new ModelFileError("the word tokenizer names no splitting rules: re-train or re-export the model");
  if (typeof rules !== "string" || !Object.hasOwn(WORD_RULES, rules)) {
    throw new ModelFileError(
      `unknown word tokenizer rules ${JSON.stringify(rules).slice(0, 40)}: this page knows ${Object.keys(WORD_RULES).join(", ")}`,
    );
  }
  return rules;
}

function spacingSet(data, name) {
  const entries = data[name];
  if (!Array.isArray(entries) || !entries.every((t) => typeof t === "string")) {
    throw new ModelFileError("the word tokenizer's spacing rules are malformed: re-train or re-export the model");
  }
  if (entries.length > MAX_RULE_ENTRIES || !entries.every((t) => t.length > 0 && codePoints(t).length <= MAX_RULE_CHARS)) {
    throw new ModelFileError(
      `the word tokenizer's ${name} set holds more than ${MAX_RULE_ENTRIES} entries, or an empty one or one ` +
        `longer than ${MAX_RULE_CHARS} characters: re-train or re-export the model`,
    );
  }
  return new Set(entries);
}

function checkVocab(vocab, kind) {
  if (!Array.isArray(vocab) || !vocab.length || vocab[UNK_ID] !== UNK) {
    throw new ModelFileError("the tokenizer's vocabulary is missing or malformed: re-train or re-export the model");
  }
  if (!vocab.every((t) => typeof t === "string") || new Set(vocab).size !== vocab.length) {
    throw new ModelFileError("the tokenizer's vocabulary holds non-text or repeated entries: re-train the model");
  }
  const longest = kind === "char" ? 1 : MAX_WORD_CHARS;
  if (!vocab.slice(1).every((t) => t.length > 0 && codePoints(t).length <= longest)) {
    throw new ModelFileError(
      `the ${kind} tokenizer's vocabulary holds an empty entry or one longer than ${longest} characters: re-train the model`,
    );
  }
  if (!vocab.every((t) => t.isWellFormed())) {
    throw new ModelFileError("the tokenizer's vocabulary holds text that is not valid Unicode: re-train the model");
  }
  return vocab;
}

/** The tokenizer a model's `rnnx.tokenizer` metadata (parsed JSON) describes. */
export function tokenizerFromDict(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new ModelFileError("the tokenizer description is malformed: re-train or re-export the model");
  }
  const kind = data.kind;
  if (kind !== "char" && kind !== "word") {
    throw new ModelFileError(`unknown tokenizer kind ${JSON.stringify(kind ?? null).slice(0, 40)}: this page reads 'char' and 'word'`);
  }
  const vocab = checkVocab(data.vocab, kind);
  if (kind === "char") return new CharTokenizer(vocab);
  const spacing = Object.fromEntries(SPACING_SETS.map((name) => [name, spacingSet(data, name)]));
  if (typeof data.lowercase !== "boolean") {
    throw new ModelFileError("the word tokenizer's rules are malformed: re-train or re-export the model");
  }
  return new WordTokenizer(vocab, { lowercase: data.lowercase, rules: wordRulesName(data), spacing });
}
