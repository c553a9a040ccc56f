// Next-token selection from logits: logit bias, repetition penalty, temperature, top-k, top-p, min-p.
// Pure functions; randomness comes in as an rng so runs are reproducible.

export interface SamplingParams {
  /** 0 selects greedy decoding (argmax after the repetition penalty). */
  temperature: number;
  /** Keep only the k most likely tokens; 0 (or >= vocab size) disables. */
  topK: number;
  /** Keep the smallest set of most likely tokens whose mass reaches topP; 1 disables. */
  topP: number;
  /** Drop tokens whose probability is below minP times the top probability; 0/undefined disables. */
  minP?: number;
  /** > 1 discourages tokens seen in the window; 1 disables. */
  repetitionPenalty: number;
  /** How many of the most recent tokens the penalty looks at; undefined = all of them. */
  repetitionWindow?: number;
  /** Added to a token's logit before anything else (OpenAI/vLLM `logit_bias`); -Infinity bans it. */
  logitBias?: ReadonlyMap<number, number>;
}

export const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };

export function isGreedy(params: SamplingParams): boolean {
  return params.temperature <= 0;
}

/** mulberry32: a fast 32-bit generator returning floats in [0, 1). */
export function createRng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Index of the largest value; the first one on ties. NaN never wins. */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (value !== undefined && value > bestValue) {
      bestValue = value;
      best = i;
    }
  }
  return best;
}

export function logSoftmax(logits: ArrayLike<number>): Float32Array {
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = logits[i];
    if (x !== undefined && x > max) max = x;
  }
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp((logits[i] ?? NaN) - max);
  const logZ = max + Math.log(sum);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (logits[i] ?? NaN) - logZ;
  return out;
}

/**
 * The logits with the HF/llama.cpp repetition penalty applied to every token in the last
 * `window` entries of `previousTokens`: positive logits are divided by the penalty, negative
 * ones multiplied. Returns the input itself when there is nothing to penalize.
 */
export function applyRepetitionPenalty(logits: Float32Array, previousTokens: readonly number[], penalty: number, window?: number): Float32Array {
  if (penalty === 1 || previousTokens.length === 0) return logits;
  const start = window === undefined ? 0 : Math.max(0, previousTokens.length - window);
  if (start >= previousTokens.length) return logits;
  const out = logits.slice();
  const seen = new Set<number>();
  for (const id of previousTokens.slice(start)) {
    const logit = out[id]; // undefined for ids outside the vocabulary
    if (logit === undefined || seen.has(id)) continue;
    seen.add(id);
    out[id] = logit > 0 ? logit / penalty : logit * penalty;
  }
  return out;
}

/** The logits with `bias` added per token id; the input itself when there is no bias. */
export function applyLogitBias(logits: Float32Array, bias: ReadonlyMap<number, number> | undefined): Float32Array {
  if (!bias?.size) return logits;
  const out = logits.slice();
  for (const [id, b] of bias) {
    const logit = out[id]; // undefined unless id is an integer in [0, vocabulary size)
    if (logit === undefined) throw new RangeError(`logit bias for token ${id}, outside the vocabulary of ${out.length}`);
    out[id] = logit + b;
  }
  return out;
}

/** Tokens more than this many nats (after temperature) below the best get weight 0. */
const ZERO_WEIGHT_EXPONENT = 60;

export function sampleToken(logits: Float32Array, params: SamplingParams, previousTokens: readonly number[], rng: () => number): number {
  const biased = applyLogitBias(logits, params.logitBias);
  const scores = applyRepetitionPenalty(biased, previousTokens, params.repetitionPenalty, params.repetitionWindow);
  const best = argmax(scores);
  const maxScore = scores[best]; // undefined for empty logits
  if (isGreedy(params) || maxScore === undefined || !(maxScore > -Infinity)) return best;

  const n = scores.length;
  const invTemperature = 1 / params.temperature;
  // Unnormalized probability after temperature; the most likely token has weight 1.
  const weightOf = (score: number) => {
    const x = (score - maxScore) * invTemperature;
    return x > -ZERO_WEIGHT_EXPONENT ? Math.exp(x) : 0;
  };
  const k = params.topK > 0 ? Math.min(params.topK, n) : n;
  const minP = params.minP ?? 0;

  if (k < n) {
    const sorted = topIndices(scores, k);
    const weights = gather(scores, sorted).map(weightOf);
    const keep = params.topP < 1 ? nucleusLength(weights, params.topP * sum(weights)) : k;
    return draw(sorted.subarray(0, keep), weights.subarray(0, keep), minP, rng) ?? best;
  }
  const weights = new Float64Array(n);
  for (let id = 0; id < n; id++) weights[id] = weightOf(scores[id] ?? NaN);
  if (params.topP >= 1) return draw(undefined, weights, minP, rng) ?? best;
  const nucleus = nucleusOfAll(scores, weights, maxScore, invTemperature, params.topP);
  return draw(nucleus, gather(weights, nucleus), minP, rng) ?? best;
}

/** `values[id]` for each of `ids`, in order. */
function gather(values: ArrayLike<number>, ids: ArrayLike<number>): Float64Array {
  const out = new Float64Array(ids.length);
  for (let i = 0; i < out.length; i++) {
    const id = ids[i] ?? -1;
    const value = values[id];
    if (value === undefined) throw new RangeError(`index ${id} outside 0..${values.length - 1}`);
    out[i] = value;
  }
  return out;
}

/**
 * Draws one of `ids` (0..weights.length-1 when undefined) in proportion to its weight,
 * `weights[i]` belonging to `ids[i]`; weights below minP are left out.
 */
function draw(ids: ArrayLike<number> | undefined, weights: Float64Array, minP: number, rng: () => number): number | undefined {
  const n = weights.length;
  let mass = 0;
  for (let i = 0; i < n; i++) {
    const w = weightAt(weights, i);
    if (w >= minP) mass += w;
  }
  let r = rng() * mass;
  for (let i = 0; i < n; i++) {
    const w = weightAt(weights, i);
    if (w < minP || w === 0) continue;
    r -= w;
    if (r < 0) return ids ? ids[i] : i;
  }
  return undefined;
}

function sum(values: Float64Array): number {
  let total = 0;
  for (let i = 0; i < values.length; i++) total += weightAt(values, i);
  return total;
}

/** How many of the best-first `weights` it takes to reach `target` mass (at least one). */
function nucleusLength(weights: Float64Array, target: number): number {
  let mass = 0;
  let i = 0;
  while (i < weights.length && mass < target) mass += weightAt(weights, i++);
  return Math.max(1, i);
}

/**
 * Top-p over the whole vocabulary without sorting it: ids are bucketed by weight (on a log
 * scale), whole buckets are taken from the top while they fit under the target mass, and only
 * the bucket that crosses it is sorted. Same result as cutting a best-first sorted list.
 */
function nucleusOfAll(scores: Float32Array, weights: Float64Array, maxScore: number, invTemperature: number, topP: number): number[] {
  const BUCKETS = 1024;
  const scale = (invTemperature * BUCKETS) / ZERO_WEIGHT_EXPONENT;
  // Each id's bucket; BUCKETS (past the last) for ids of weight 0, which are never kept.
  const buckets = new Uint16Array(scores.length).fill(BUCKETS);
  const bucketMass = new Float64Array(BUCKETS);
  let total = 0;
  for (let id = 0; id < weights.length; id++) {
    const w = weightAt(weights, id);
    const score = scores[id];
    if (w === 0 || score === undefined) continue;
    const b = Math.min(BUCKETS - 1, Math.floor((maxScore - score) * scale));
    buckets[id] = b;
    bucketMass[b] = weightAt(bucketMass, b) + w;
    total += w;
  }
  const target = topP * total;
  let mass = 0;
  let boundary = 0;
  while (boundary < BUCKETS - 1 && mass + weightAt(bucketMass, boundary) < target) mass += weightAt(bucketMass, boundary++);

  const kept: number[] = [];
  const crossing: number[] = [];
  for (let id = 0; id < buckets.length; id++) {
    const b = buckets[id];
    if (b === undefined) continue;
    if (b < boundary) kept.push(id);
    else if (b === boundary) crossing.push(id);
  }
  crossing.sort((a, b) => weightAt(weights, b) - weightAt(weights, a) || a - b);
  for (const id of crossing) {
    if (mass >= target && kept.length > 0) break;
    kept.push(id);
    mass += weightAt(weights, id);
  }
  return kept;
}

/** `weights[i]`, or 0 past the end (weight 0 is never drawn or kept). */
function weightAt(weights: Float64Array, i: number): number {
  return weights[i] ?? 0;
}

/**
 * The `m` highest-scoring indices, best first (lower index first on ties), by partial
 * selection with a size-m min-heap: O(n log m) rather than a full sort.
 */
export function topIndices(scores: ArrayLike<number>, m: number): Uint32Array {
  const n = scores.length;
  m = Math.min(m, n);
  if (m <= 0) return new Uint32Array(0);
  // Ids are < n; NaN (what a read past the end would give) is never better than anything.
  const scoreOf = (id: number) => scores[id] ?? NaN;
  const better = (a: number, b: number) => {
    const sa = scoreOf(a);
    const sb = scoreOf(b);
    return sa > sb || (sa === sb && a < b);
  };
  if (m * 4 >= n) {
    const all = Array.from({ length: n }, (_, i) => i);
    all.sort((a, b) => (better(a, b) ? -1 : better(b, a) ? 1 : 0));
    return Uint32Array.from(all.slice(0, m));
  }
  // heap[0] is the worst of the current best m.
  const heap = Uint32Array.from({ length: m }, (_, i) => i);
  const at = (i: number): number => {
    const id = heap[i];
    if (id === undefined) throw new RangeError(`heap slot ${i} outside 0..${m - 1}`);
    return id;
  };
  const siftDown = (i: number) => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let worst = i;
      if (l < m && better(at(worst), at(l))) worst = l;
      if (r < m && better(at(worst), at(r))) worst = r;
      if (worst === i) return;
      const id = at(i);
      heap[i] = at(worst);
      heap[worst] = id;
      i = worst;
    }
  };
  for (let i = (m >> 1) - 1; i >= 0; i--) siftDown(i);
  // Later indices lose ties, so only a strictly greater score displaces the current worst.
  let worst = scoreOf(at(0));
  for (let i = m; i < n; i++) {
    if (scoreOf(i) > worst) {
      heap[0] = i;
      siftDown(0);
      worst = scoreOf(at(0));
    }
  }
  return heap.sort((a, b) => (better(a, b) ? -1 : 1));
}

/**
 * Watches streamed text for stop strings. Text that might be the start of a stop string is
 * held back until the following text decides it; on a match the output ends just before it.
 */
export class StopMatcher {
  private readonly stops: string[];
  private pending = "";
  private done = false;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  get stopped(): boolean {
    return this.done;
  }

  push(text: string): { emit: string; stopped: boolean; stop?: string } {
    if (this.done) return { emit: "", stopped: true };
    this.pending += text;
    let cut = -1;
    let matched: string | undefined;
    for (const stop of this.stops) {
      const at = this.pending.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) {
        cut = at;
        matched = stop;
      }
    }
    if (cut >= 0) {
      this.done = true;
      const emit = this.pending.slice(0, cut);
      this.pending = "";
      return { emit, stopped: true, stop: matched };
    }
    const held = this.heldBackLength();
    const emit = this.pending.slice(0, this.pending.length - held);
    this.pending = this.pending.slice(this.pending.length - held);
    return { emit, stopped: false };
  }

  /** Releases text held back as a possible stop-string start (call at end of generation). */
  flush(): string {
    const rest = this.done ? "" : this.pending;
    this.pending = "";
    return rest;
  }

  /** Length of the longest suffix of `pending` that is a proper prefix of some stop string. */
  private heldBackLength(): number {
    let best = 0;
    for (const stop of this.stops) {
      for (let len = Math.min(stop.length - 1, this.pending.length); len > best; len--) {
        if (this.pending.endsWith(stop.slice(0, len))) {
          best = len;
          break;
        }
      }
    }
    return best;
  }
}
