// The classic substitution-cipher solver, at token level: start from rank matching, then move
// frequent cipher ids to whichever plain ids make the decrypted traffic most likely under a
// bigram model of reference text. Solved in stages (the 12 most frequent ids first, then 25, …),
// each stage simulated annealing then greedy sweeps; several attempts, the most likely wins.
import { countTokens, frequencyAttack, rankByCount } from "./frequency.js";

export interface BigramAttackOptions {
  rng: () => number;
  /** Independent staged runs; the one whose decryption is most likely wins. */
  attempts?: number;
  /** How many of the most frequent cipher ids each stage solves. */
  stages?: number[];
  /** Each stage may map its ids onto this many times as many of the most frequent plain ids… */
  candidateFactor?: number;
  /** …but onto at least this many. */
  minCandidates?: number;
  /** Annealing proposals per stage (each moves one cipher id, swapping if its target is taken). */
  iterations?: number;
  /** Starting temperature in nats per observed token; it falls linearly to zero. */
  temperature?: number;
  /** Greedy passes over the stage's ids after annealing. */
  sweeps?: number;
  /** Ids seen fewer times are never solved: they count as unknown tokens. */
  minCount?: number;
  /** Weight of the unigram in the interpolated bigram model, in (0, 1]. */
  smoothing?: number;
  /** Guess −1 for ids not solved (what a contestant losing 1 per wrong guess does); default true. */
  abstain?: boolean;
}

class BigramModel {
  private readonly pairs = new Map<number, number>();
  private readonly firstCounts: Float64Array;
  private readonly logUnigrams: Float64Array;
  private readonly unigram: Float64Array;

  constructor(
    tokens: ArrayLike<number>,
    private readonly vocabSize: number,
    private readonly smoothing: number,
  ) {
    const total = tokens.length + 0.5 * vocabSize;
    this.unigram = Float64Array.from(countTokens(tokens, vocabSize), (n) => (n + 0.5) / total);
    this.logUnigrams = this.unigram.map(Math.log);
    this.firstCounts = new Float64Array(vocabSize);
    for (let i = 1; i < tokens.length; i++) {
      const x = tokens[i - 1]!;
      this.firstCounts[x]!++;
      const key = x * vocabSize + tokens[i]!;
      this.pairs.set(key, (this.pairs.get(key) ?? 0) + 1);
    }
  }

  /** log P(y | x), interpolated with the unigram so that unseen bigrams cost little. */
  logProb(x: number, y: number): number {
    const first = this.firstCounts[x]!;
    const bigram = first === 0 ? 0 : (this.pairs.get(x * this.vocabSize + y) ?? 0) / first;
    return Math.log((1 - this.smoothing) * bigram + this.smoothing * this.unigram[y]!);
  }

  logUnigram(y: number): number {
    return this.logUnigrams[y]!;
  }
}

interface Bigram {
  first: number;
  second: number;
  count: number;
}

/**
 * The search state over one cipher text. The score is the log-likelihood of the decrypted
 * traffic counting only tokens being solved ("targets"): log P(y | x) after a target x,
 * log P(y) after an unknown token.
 */
class SubstitutionSearch {
  private readonly bigrams: Bigram[] = [];
  private readonly bigramsById = new Map<number, Bigram[]>();
  /** Ids seen at least minCount times, most frequent first: the ones that may be solved. */
  readonly solvable: Int32Array;
  private readonly isTarget: Uint8Array;
  guess: Int32Array;
  private readonly cipherOf: Int32Array;

  constructor(
    private readonly model: BigramModel,
    observed: ArrayLike<number>,
    vocabSize: number,
    minCount: number,
  ) {
    const counts = new Map<number, number>();
    for (let i = 1; i < observed.length; i++) {
      const key = observed[i - 1]! * vocabSize + observed[i]!;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    for (const [key, count] of counts) {
      const first = Math.floor(key / vocabSize);
      const bigram = { first, second: key - first * vocabSize, count };
      this.bigrams.push(bigram);
      this.listOf(first).push(bigram);
      if (bigram.second !== first) this.listOf(bigram.second).push(bigram);
    }
    const idCounts = countTokens(observed, vocabSize);
    this.solvable = rankByCount(idCounts, true).filter((c) => idCounts[c]! >= minCount);
    this.isTarget = new Uint8Array(vocabSize);
    this.guess = new Int32Array(vocabSize);
    this.cipherOf = new Int32Array(vocabSize);
  }

  private listOf(id: number): Bigram[] {
    let list = this.bigramsById.get(id);
    if (!list) this.bigramsById.set(id, (list = []));
    return list;
  }

  start(guess: Int32Array): void {
    this.guess.set(guess);
    this.cipherOf.fill(-1);
    guess.forEach((p, c) => {
      if (p >= 0) this.cipherOf[p] = c;
    });
  }

  /** Makes the k most frequent solvable ids the targets; returns them. */
  setTargets(k: number): Int32Array {
    this.isTarget.fill(0);
    const targets = this.solvable.subarray(0, k);
    for (const c of targets) this.isTarget[c] = 1;
    return targets;
  }

  private term({ first, second, count }: Bigram): number {
    if (!this.isTarget[second]) return 0;
    const y = this.guess[second]!;
    return count * (this.isTarget[first] ? this.model.logProb(this.guess[first]!, y) : this.model.logUnigram(y));
  }

  totalScore(): number {
    let score = 0;
    for (const bigram of this.bigrams) score += this.term(bigram);
    return score;
  }

  /** Score of the bigrams touching a or b, each counted once. */
  private localScore(a: number, b: number): number {
    let score = 0;
    for (const bigram of this.bigramsById.get(a) ?? []) score += this.term(bigram);
    if (b < 0 || b === a) return score;
    for (const bigram of this.bigramsById.get(b) ?? []) {
      if (bigram.first !== a && bigram.second !== a) score += this.term(bigram);
    }
    return score;
  }

  /** Gives cipher id a the plain id q; whoever held q gets a's old plain id. */
  private move(a: number, q: number): void {
    const from = this.guess[a]!;
    const b = this.cipherOf[q]!;
    this.guess[a] = q;
    this.cipherOf[q] = a;
    if (b >= 0) this.guess[b] = from;
    if (from >= 0) this.cipherOf[from] = b;
  }

  /** Score change of move(a, q), leaving the state as it was. */
  private gainOf(a: number, q: number): number {
    const from = this.guess[a]!;
    const b = this.cipherOf[q]!;
    const before = this.localScore(a, b);
    this.move(a, q);
    const after = this.localScore(a, b);
    if (b >= 0) this.move(a, from);
    else {
      this.guess[a] = from;
      this.cipherOf[q] = -1;
      if (from >= 0) this.cipherOf[from] = a;
    }
    return after - before;
  }

  anneal(targets: Int32Array, candidates: Int32Array, iterations: number, startTemperature: number, rng: () => number): void {
    for (let i = 0; i < iterations; i++) {
      const a = targets[Math.floor(rng() * targets.length)]!;
      const q = candidates[Math.floor(rng() * candidates.length)]!;
      if (q === this.guess[a]) continue;
      const gain = this.gainOf(a, q);
      const t = startTemperature * (1 - i / iterations);
      if (gain > 0 || (t > 0 && rng() < Math.exp(gain / t))) this.move(a, q);
    }
  }

  sweep(targets: Int32Array, candidates: Int32Array, passes: number): void {
    for (let pass = 0; pass < passes; pass++) {
      let moved = false;
      for (const a of targets) {
        let best = -1;
        let bestGain = 1e-9;
        for (const q of candidates) {
          if (q === this.guess[a]) continue;
          const gain = this.gainOf(a, q);
          if (gain > bestGain) {
            bestGain = gain;
            best = q;
          }
        }
        if (best >= 0) {
          this.move(a, best);
          moved = true;
        }
      }
      if (!moved) return;
    }
  }
}

/**
 * Frequency analysis with bigram context: cipher → plain guess, −1 for ids never observed and,
 * when abstaining, for ids too rare to solve (otherwise these keep their rank-matching guess).
 */
export function bigramAttack(
  referenceTokens: ArrayLike<number>,
  observedCipherIds: ArrayLike<number>,
  vocabSize: number,
  options: BigramAttackOptions,
): Int32Array {
  const { rng, attempts = 6, stages = [12, 25, 50, 100, 150], candidateFactor = 2, minCandidates = 20 } = options;
  const { iterations = 3000, temperature = 0.02, sweeps = 2, minCount = 3, smoothing = 0.5, abstain = true } = options;
  const referenceCounts = countTokens(referenceTokens, vocabSize);
  const initial = frequencyAttack(referenceCounts, observedCipherIds);
  const plainByRank = rankByCount(referenceCounts, false);
  const search = new SubstitutionSearch(new BigramModel(referenceTokens, vocabSize, smoothing), observedCipherIds, vocabSize, minCount);
  const stageSizes = [...new Set(stages.map((k) => Math.min(k, search.solvable.length)))].filter((k) => k > 0);
  const solved = search.solvable.subarray(0, Math.max(0, ...stageSizes));
  const withAbstentions = (guess: Int32Array) => {
    if (!abstain) return guess;
    const out = new Int32Array(vocabSize).fill(-1);
    for (const c of solved) out[c] = guess[c]!;
    return out;
  };
  if (stageSizes.length === 0) return withAbstentions(initial);

  const startTemperature = temperature * observedCipherIds.length;
  let best = initial;
  let bestScore = -Infinity;
  for (let attempt = 0; attempt < attempts; attempt++) {
    search.start(initial);
    for (const k of stageSizes) {
      const targets = search.setTargets(k);
      const candidates = plainByRank.subarray(0, Math.max(minCandidates, candidateFactor * k));
      search.anneal(targets, candidates, Math.min(iterations, 20 * k * candidates.length), startTemperature, rng);
      search.sweep(targets, candidates, sweeps);
    }
    const score = search.totalScore();
    if (score > bestScore) {
      bestScore = score;
      best = Int32Array.from(search.guess);
    }
  }
  return withAbstentions(best);
}
