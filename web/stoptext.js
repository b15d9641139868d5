// Holding back new text that could still grow into a stop string, so that no stop string is ever emitted
// (runtime/generator.py's StopText).

export class StopText {
  constructor(stops) {
    this.stops = stops;
    this.pending = "";
  }

  /** [the text safe to emit after `piece`, whether a stop string has been reached]. */
  feed(piece) {
    const text = this.pending + piece;
    const found = this.stops.map((stop) => text.indexOf(stop)).filter((i) => i >= 0);
    if (found.length) {
      this.pending = "";
      return [text.slice(0, Math.min(...found)), true];
    }
    const hold = Math.max(...this.stops.map((stop) => overlap(text, stop)));
    this.pending = text.slice(text.length - hold);
    return [text.slice(0, text.length - hold), false];
  }

  flush() {
    const text = this.pending;
    this.pending = "";
    return text;
  }
}

// The length of the longest end of `text` that is the start of `stop` (shorter than all of it).
function overlap(text, stop) {
  for (let n = Math.min(text.length, stop.length - 1); n > 0; n--) {
    if (text.endsWith(stop.slice(0, n))) return n;
  }
  return 0;
}
