// Frequency analysis of cipher ids: a static π is a monoalphabetic substitution over the
// vocabulary. Rank matching, contest-style scoring, and the random permutations the harness uses.

export function countTokens(tokens: ArrayLike<number>, vocabSize: number): Float64Array {
  const counts = new Float64Array(vocabSize);
  for (let i = 0; i < tokens.length; i++) counts[tokens[i]!]!++;
  return counts;
}

/** Ids by descending count, ties by ascending id; ids never counted are left out when `dropZero`. */
export function rankByCount(counts: ArrayLike<number>, dropZero: boolean): Int32Array {
  const ids: number[] = [];
  for (let i = 0; i < counts.length; i++) if (!dropZero || counts[i]! > 0) ids.push(i);
  ids.sort((x, y) => counts[y]! - counts[x]! || x - y);
  return Int32Array.from(ids);
}

/**
 * Rank matching: the k-th most frequent observed cipher id is guessed to be the k-th most
 * frequent plain id of the reference text. guess[c] = plain id, −1 for ids never observed.
 */
export function frequencyAttack(referenceCounts: Float64Array | number[], observedCipherIds: ArrayLike<number>): Int32Array {
  const vocabSize = referenceCounts.length;
  const plainByRank = rankByCount(referenceCounts, false);
  const cipherByRank = rankByCount(countTokens(observedCipherIds, vocabSize), true);
  const guess = new Int32Array(vocabSize).fill(-1);
  cipherByRank.forEach((c, rank) => {
    guess[c] = plainByRank[rank]!;
  });
  return guess;
}

export interface GuessScore {
  distinctObserved: number;
  correctDistinct: number;
  /** Distinct observed ids with a wrong guess (−1 guesses are abstentions, not wrong). */
  wrongDistinct: number;
  tokens: number;
  correctTokens: number;
  /** Fraction of distinct observed cipher ids mapped correctly. */
  recoveredDistinct: number;
  /** Fraction of observed tokens (with multiplicity) whose id is mapped correctly. */
  recoveredTokens: number;
  /** The EE contest's rule: +10 per correct mapping, −1 per wrong one, over distinct observed ids. */
  contestScore: number;
}

/** Scores a guess (cipher → plain) against the true π (plain → cipher) on the observed traffic. */
export function scoreGuess(guess: Int32Array, truthPi: ArrayLike<number>, observedCipherIds: ArrayLike<number>): GuessScore {
  const counts = countTokens(observedCipherIds, guess.length);
  let distinctObserved = 0;
  let correctDistinct = 0;
  let wrongDistinct = 0;
  let correctTokens = 0;
  for (let c = 0; c < counts.length; c++) {
    if (counts[c] === 0) continue;
    distinctObserved++;
    const p = guess[c]!;
    if (p < 0) continue;
    if (truthPi[p] === c) {
      correctDistinct++;
      correctTokens += counts[c]!;
    } else wrongDistinct++;
  }
  const tokens = observedCipherIds.length;
  return {
    distinctObserved,
    correctDistinct,
    wrongDistinct,
    tokens,
    correctTokens,
    recoveredDistinct: distinctObserved === 0 ? 0 : correctDistinct / distinctObserved,
    recoveredTokens: tokens === 0 ? 0 : correctTokens / tokens,
    contestScore: 10 * correctDistinct - wrongDistinct,
  };
}

/** Uniform random permutation (Fisher–Yates) from an rng returning floats in [0, 1). */
export function randomPermutation(n: number, rng: () => number): Int32Array {
  const perm = new Int32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const t = perm[i]!;
    perm[i] = perm[j]!;
    perm[j] = t;
  }
  return perm;
}
