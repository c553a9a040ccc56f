// How much of π frequency analysis recovers as encrypted traffic accumulates, under a static
// key and under per-session key rotation.
import { bigramAttack } from "./bigram.js";
import { countTokens, frequencyAttack, randomPermutation, scoreGuess } from "./frequency.js";

export type FrequencyAttackKind = "rank" | "bigram";

export interface FrequencyCurveOptions {
  /** Plaintext the attacker already has (public text of the same kind). */
  referenceTokens: ArrayLike<number>;
  /** The victim's plaintext; the attacker sees it encrypted. */
  victimTokens: ArrayLike<number>;
  vocabSize: number;
  /** Prefix lengths of the victim's traffic to attack (each ≤ victimTokens.length). */
  observedCounts: number[];
  /** When set, also score a fresh π every this many tokens (per-session rotation). */
  rotatePerSession?: number;
  /** Which attacks to run; both by default. */
  attacks?: FrequencyAttackKind[];
  rng: () => number;
}

export interface CurveRow {
  key: "static" | "per-session";
  attack: FrequencyAttackKind;
  tokensObserved: number;
  recoveredDistinct: number;
  recoveredTokens: number;
  /** Contest score per key: the one static key, or the mean over the session keys. */
  contestScore: number;
}

/**
 * Frequency attacks against growing prefixes of the victim's traffic. Static key: one π for all
 * traffic, attacked as a whole. Per-session key: each session has its own π, so the attacker's
 * best is to attack each session alone; fractions are pooled over sessions.
 */
export function frequencyCurve(options: FrequencyCurveOptions): CurveRow[] {
  const { referenceTokens, victimTokens, vocabSize, observedCounts, rotatePerSession, rng } = options;
  const attacks = options.attacks ?? ["rank", "bigram"];
  for (const n of observedCounts) {
    if (n < 0 || n > victimTokens.length) throw new RangeError(`observed count ${n} outside [0, ${victimTokens.length}]`);
  }
  if (rotatePerSession !== undefined && rotatePerSession <= 0) throw new RangeError("rotatePerSession must be positive");
  const referenceCounts = countTokens(referenceTokens, vocabSize);
  const attack = (kind: FrequencyAttackKind, traffic: Int32Array) =>
    kind === "rank" ? frequencyAttack(referenceCounts, traffic) : bigramAttack(referenceTokens, traffic, vocabSize, { rng });
  const encrypt = (pi: Int32Array, start: number, end: number) => {
    const out = new Int32Array(end - start);
    for (let i = start; i < end; i++) out[i - start] = pi[victimTokens[i]!]!;
    return out;
  };

  const rows: CurveRow[] = [];
  const staticPi = randomPermutation(vocabSize, rng);
  // One key per session index, drawn once, so longer prefixes extend shorter ones.
  const sessionKeys: Int32Array[] = [];
  const sessionKey = (s: number) => (sessionKeys[s] ??= randomPermutation(vocabSize, rng));
  for (const kind of attacks) {
    for (const n of observedCounts) {
      const traffic = encrypt(staticPi, 0, n);
      const score = scoreGuess(attack(kind, traffic), staticPi, traffic);
      const { recoveredDistinct, recoveredTokens, contestScore } = score;
      rows.push({ key: "static", attack: kind, tokensObserved: n, recoveredDistinct, recoveredTokens, contestScore });
    }
    if (rotatePerSession === undefined) continue;
    for (const n of observedCounts) {
      let distinct = 0;
      let correctDistinct = 0;
      let correctTokens = 0;
      let contestScore = 0;
      let sessions = 0;
      for (let start = 0; start < n; start += rotatePerSession, sessions++) {
        const pi = sessionKey(sessions);
        const traffic = encrypt(pi, start, Math.min(n, start + rotatePerSession));
        const score = scoreGuess(attack(kind, traffic), pi, traffic);
        distinct += score.distinctObserved;
        correctDistinct += score.correctDistinct;
        correctTokens += score.correctTokens;
        contestScore += score.contestScore;
      }
      rows.push({
        key: "per-session",
        attack: kind,
        tokensObserved: n,
        recoveredDistinct: distinct === 0 ? 0 : correctDistinct / distinct,
        recoveredTokens: n === 0 ? 0 : correctTokens / n,
        contestScore: sessions === 0 ? 0 : contestScore / sessions,
      });
    }
  }
  return rows;
}
