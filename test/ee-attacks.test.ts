// Threat-boundary tests for Equivariant Encryption: each PASSES WHEN THE ATTACK SUCCEEDS.
// They pin down what EE does not protect (SECURITY.md, src/ee/attacks/README.md):
// whoever holds E'/U' of a public model recovers π and σ, and a static π leaks the frequent
// tokens to frequency analysis. The measured numbers are printed for ATTACKS.md.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, test } from "node:test";
import {
  bigramAttack,
  frequencyAttack,
  frequencyCurve,
  matchRowsExact,
  matchRowsExactDetailed,
  matchRowsSorted,
  matchRowsSortedDetailed,
  randomPermutation,
  recoverHiddenFromEmbedding,
  recoverHiddenPermutation,
  scoreGuess,
  type CurveRow,
} from "../src/ee/attacks/index.js";
import { createRng } from "../src/engine/sampling.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { SHIPPED_MODEL } from "../src/model/shipped.js";
import { loadTokenizer } from "../src/model/tokenizer.js";

function inverse(perm: Int32Array): Int32Array {
  const inv = new Int32Array(perm.length);
  perm.forEach((c, p) => {
    inv[c] = p;
  });
  return inv;
}

/** E'[c, j] = E[π⁻¹(c), σ(j)]; σ = identity for L0. */
function encryptRows(rows: Float32Array, vocab: number, hidden: number, pi: Int32Array, sigma?: Int32Array): Float32Array {
  const piInverse = inverse(pi);
  const out = new Float32Array(vocab * hidden);
  for (let c = 0; c < vocab; c++) {
    const src = piInverse[c]! * hidden;
    for (let j = 0; j < hidden; j++) out[c * hidden + j] = rows[src + (sigma ? sigma[j]! : j)]!;
  }
  return out;
}

function gather(values: Float32Array, sigma: Int32Array): Float32Array {
  return Float32Array.from(sigma, (s) => values[s]!);
}

function randomMatrix(rows: number, cols: number, rng: () => number): Float32Array {
  return Float32Array.from({ length: rows * cols }, () => rng() * 2 - 1);
}

/** Places [A | B] side by side, row by row. */
function sideBySide(a: Float32Array, b: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols * 2);
  for (let r = 0; r < rows; r++) {
    out.set(a.subarray(r * cols, (r + 1) * cols), r * cols * 2);
    out.set(b.subarray(r * cols, (r + 1) * cols), r * cols * 2 + cols);
  }
  return out;
}

function countCorrect(recovered: Int32Array, truth: Int32Array): number {
  let correct = 0;
  recovered.forEach((v, i) => {
    if (v === truth[i]) correct++;
  });
  return correct;
}

function assertNoWrongGuesses(recovered: Int32Array, truth: Int32Array): void {
  recovered.forEach((v, i) => assert.ok(v === -1 || v === truth[i], `entry ${i}: recovered ${v}, truth ${truth[i]}`));
}

describe("weight matching (synthetic)", () => {
  const rng = createRng(7);
  const [vocab, hidden] = [500, 16];
  const plain = randomMatrix(vocab, hidden, rng);
  const pi = randomPermutation(vocab, rng);
  const sigma = randomPermutation(hidden, rng);

  test("row hashing recovers a vocabulary permutation exactly", () => {
    assert.deepEqual(matchRowsExact(plain, encryptRows(plain, vocab, hidden, pi), vocab, hidden), inverse(pi));
  });

  test("identical public rows are reported ambiguous, never guessed", () => {
    const withTwin = Float32Array.from(plain);
    withTwin.copyWithin(7 * hidden, 3 * hidden, 4 * hidden);
    const result = matchRowsExactDetailed(withTwin, encryptRows(withTwin, vocab, hidden, pi), vocab, hidden);
    assert.equal(result.ambiguous, 2);
    assert.equal(result.unmatched, 0);
    assert.equal(result.map[pi[3]!], -1);
    assert.equal(result.map[pi[7]!], -1);
    assert.equal(countCorrect(result.map, inverse(pi)), vocab - 2);
  });

  test("a hidden permutation defeats exact matching but not sorted-row matching", () => {
    const cipher = encryptRows(plain, vocab, hidden, pi, sigma);
    assert.equal(matchRowsExactDetailed(plain, cipher, vocab, hidden).unmatched, vocab);
    assert.deepEqual(matchRowsSorted(plain, cipher, vocab, hidden), inverse(pi));
  });

  test("sorted matching of [E | U] sorts each half on its own", () => {
    const head = randomMatrix(vocab, hidden, rng);
    const both = sideBySide(plain, head, vocab, hidden);
    const cipher = sideBySide(encryptRows(plain, vocab, hidden, pi, sigma), encryptRows(head, vocab, hidden, pi, sigma), vocab, hidden);
    assert.deepEqual(matchRowsSorted(both, cipher, vocab, 2 * hidden, hidden), inverse(pi));
    assert.throws(() => matchRowsSorted(both, cipher, vocab, 2 * hidden, 5), RangeError);
  });

  test("norm gains reveal σ wherever their values are distinct; several norms resolve the ties", () => {
    const gain = Float32Array.from({ length: hidden }, (_, j) => (j < 4 ? 1 : 1 + j / 100)); // positions 0-3 tie
    const single = recoverHiddenPermutation(gain, gather(gain, sigma));
    assert.equal(single.ambiguous, 4);
    assert.equal(single.unmatched, 0);
    assertNoWrongGuesses(single.sigma, sigma);
    assert.equal(countCorrect(single.sigma, sigma), hidden - 4);

    const second = Float32Array.from({ length: hidden }, (_, j) => j);
    const both = recoverHiddenPermutation([gain, second], [gather(gain, sigma), gather(second, sigma)]);
    assert.deepEqual(both.sigma, sigma);
  });

  test("once π is known, the columns of E' give σ exactly", () => {
    const cipher = encryptRows(plain, vocab, hidden, pi, sigma);
    const recovered = recoverHiddenFromEmbedding(plain, cipher, vocab, hidden, matchRowsSorted(plain, cipher, vocab, hidden), 32);
    assert.deepEqual(recovered.sigma, sigma);
  });
});

describe("frequency analysis (synthetic)", () => {
  test("rank matching recovers ids whose frequencies are distinct", () => {
    const referenceCounts = [40, 30, 20, 10];
    const pi = Int32Array.from([2, 0, 3, 1]); // plain p → cipher pi[p]
    const traffic = [2, 0, 1, 0, 1, 0, 2, 1, 3, 0].map((p) => pi[p]!);
    assert.deepEqual(frequencyAttack(referenceCounts, traffic), inverse(pi));
  });

  test("scores count distinct ids, tokens, and +10/−1 per correct/wrong mapping", () => {
    const pi = Int32Array.from([1, 2, 0, 3]); // cipher ids 1, 2, 0, 3 for plain 0..3
    const guess = Int32Array.from([2, 0, 3, -1]); // cipher 0 → 2 ✓, 1 → 0 ✓, 2 → 3 ✗, 3 abstains
    const observed = [0, 0, 0, 1, 2, 3]; // cipher ids
    const score = scoreGuess(guess, pi, observed);
    assert.equal(score.distinctObserved, 4);
    assert.equal(score.correctDistinct, 2);
    assert.equal(score.wrongDistinct, 1);
    assert.equal(score.recoveredDistinct, 0.5);
    assert.equal(score.recoveredTokens, 4 / 6);
    assert.equal(score.contestScore, 2 * 10 - 1);
  });

  test("bigram context recovers ids that rank matching confuses", () => {
    // A text where a and b are equally frequent; only context ("x a" vs "y b") tells them apart.
    const rng = createRng(3);
    const sentence = () => (rng() < 0.5 ? [4, 0, 5] : [6, 1, 5]).concat(rng() < 0.5 ? [2, 3] : [3, 2]);
    const text = (n: number) => Array.from({ length: n }, sentence).flat();
    const [reference, victim] = [text(400), text(400)];
    const pi = randomPermutation(7, rng);
    const traffic = victim.map((p) => pi[p]!);
    const guess = bigramAttack(reference, traffic, 7, { rng, minCount: 1, minCandidates: 7 });
    assert.deepEqual(guess, inverse(pi));
  });

  test("the curve scores a static key and per-session keys", () => {
    const rng = createRng(5);
    const tokens = Array.from({ length: 600 }, () => Math.floor(rng() ** 3 * 40));
    const rows = frequencyCurve({
      referenceTokens: tokens.slice(0, 300),
      victimTokens: tokens.slice(300),
      vocabSize: 40,
      observedCounts: [100, 300],
      rotatePerSession: 50,
      attacks: ["rank"],
      rng,
    });
    assert.deepEqual(
      rows.map((r) => `${r.key}/${r.attack}/${r.tokensObserved}`),
      ["static/rank/100", "static/rank/300", "per-session/rank/100", "per-session/rank/300"],
    );
    for (const r of rows) assert.ok(r.recoveredTokens >= 0 && r.recoveredTokens <= 1);
    assert.throws(() => frequencyCurve({ referenceTokens: tokens, victimTokens: tokens, vocabSize: 40, observedCounts: [601], rng }), RangeError);
  });
});

describe("on the shipped model (threat boundary)", async () => {
  const checkpoint = await openCheckpoint(SHIPPED_MODEL.hf);
  const { vocabSize: vocab, hiddenSize: hidden, numLayers } = checkpoint.config;
  const embedding = await checkpoint.readF32("token_embd.weight");
  const head = await checkpoint.readF32("output.weight");
  const normNames = ["output_norm.weight"];
  for (let l = 0; l < numLayers; l++) normNames.push(`blk.${l}.attn_norm.weight`, `blk.${l}.ffn_norm.weight`);
  const norms = await Promise.all(normNames.map((name) => checkpoint.readF32(name)));
  const rng = createRng(2025);
  const pi = randomPermutation(vocab, rng);
  const sigma = randomPermutation(hidden, rng);
  const piInverse = inverse(pi);

  test("L0: anyone holding E' or U' of the public model recovers π completely", () => {
    for (const [name, rows] of [
      ["E'", embedding],
      ["U'", head],
    ] as const) {
      const recovered = matchRowsExact(rows, encryptRows(rows, vocab, hidden, pi), vocab, hidden);
      console.log(`L0 ${name}: π recovered for ${countCorrect(recovered, piInverse)}/${vocab} ids`);
      assert.deepEqual(recovered, piInverse);
    }
  });

  test("L1: sorted-row matching recovers π through the hidden permutation σ", () => {
    for (const [name, rows] of [
      ["E'", embedding],
      ["U'", head],
    ] as const) {
      const result = matchRowsSortedDetailed(rows, encryptRows(rows, vocab, hidden, pi, sigma), vocab, hidden);
      const correct = countCorrect(result.map, piInverse);
      console.log(`L1 ${name}: π recovered for ${correct}/${vocab} ids (${result.ambiguous} ambiguous, ${result.unmatched} unmatched)`);
      assertNoWrongGuesses(result.map, piInverse);
      assert.ok(correct >= 0.999 * vocab);
    }
  });

  test("L1: norm gains reveal σ; all norms together or E' columns reveal all of it", () => {
    const report = (label: string, recovered: { sigma: Int32Array; ambiguous: number }) => {
      assertNoWrongGuesses(recovered.sigma, sigma);
      const correct = countCorrect(recovered.sigma, sigma);
      console.log(`L1 σ from ${label}: ${correct}/${hidden} positions (${recovered.ambiguous} ambiguous)`);
      return correct;
    };
    const cipherNorms = norms.map((g) => gather(g, sigma));
    const fromOneNorm = report("blk.0.attn_norm", recoverHiddenPermutation(norms[1]!, cipherNorms[1]!));
    report("output_norm", recoverHiddenPermutation(norms[0]!, cipherNorms[0]!));
    assert.ok(fromOneNorm > hidden / 4, "one norm alone pins down a good part of σ");
    assert.equal(report(`all ${norms.length} norms`, recoverHiddenPermutation(norms, cipherNorms)), hidden);

    const cipherEmbedding = encryptRows(embedding, vocab, hidden, pi, sigma);
    const piFound = matchRowsSorted(embedding, cipherEmbedding, vocab, hidden);
    assert.equal(report("E' columns", recoverHiddenFromEmbedding(embedding, cipherEmbedding, vocab, hidden, piFound)), hidden);
  });

  test("frequency analysis reads more of a static key's traffic as it accumulates; per-session keys cap it", async () => {
    const tokenizer = await loadTokenizer(checkpoint);
    const tokens = tokenizer.encode(await readFile(SHIPPED_MODEL.evalText, "utf8"), { addSpecial: false });
    const half = tokens.length >> 1;
    const victim = tokens.slice(half);
    const observedCounts = [64, 256, 1024, 4096, victim.length];
    const rows = frequencyCurve({
      referenceTokens: tokens.slice(0, half),
      victimTokens: victim,
      vocabSize: vocab,
      observedCounts,
      rotatePerSession: 64,
      rng: createRng(1),
    });
    console.log(`frequency analysis: reference ${half} tokens, victim ${victim.length} tokens, sessions of 64 tokens`);
    console.table(
      rows.map((r) => ({
        ...r,
        recoveredDistinct: r.recoveredDistinct.toFixed(3),
        recoveredTokens: r.recoveredTokens.toFixed(3),
        contestScore: Math.round(r.contestScore),
      })),
    );

    const curve = (key: CurveRow["key"], attack: CurveRow["attack"]) => rows.filter((r) => r.key === key && r.attack === attack).map((r) => r.recoveredTokens);
    const staticBigram = curve("static", "bigram");
    const rotatedBigram = curve("per-session", "bigram");
    const chance = 1 / vocab;
    for (let i = 1; i < staticBigram.length; i++) assert.ok(staticBigram[i]! >= staticBigram[i - 1]! - 0.02, `curve falls at ${observedCounts[i]} tokens`);
    const largest = staticBigram.at(-1)!;
    assert.ok(largest > staticBigram[0]! + 0.1, "more traffic, more recovered");
    assert.ok(largest > 0.25 && largest > 1000 * chance, "well above chance");
    assert.ok(rotatedBigram.at(-1)! < largest / 2, "per-session keys recover markedly less");
    assert.ok(curve("static", "rank").at(-1)! < largest, "bigram context beats plain rank matching");
  });
});
