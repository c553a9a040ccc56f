// The pure parts of verification: the row comparison and its tolerance, the consensus decision,
// and the generation loop's rewind after a caught cheat (with a stand-in checked session).
import assert from "node:assert/strict";
import { test } from "node:test";
import { generate } from "../src/engine/generate.js";
import type { LogitsSession, SettleResult } from "../src/engine/interface.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { loadTokenizer } from "../src/model/tokenizer.js";
import { consensusVerdict, DEFAULT_TOLERANCE, firstMismatch, rowErrors } from "../src/verify/compare.js";
import { decodeTensor, encodeTensor } from "../src/wire/tensor-frame.js";
import { hfModel } from "./support/fixtures.js";

function row(width: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: width }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s / 2 ** 32 - 0.5) * 4;
  });
}

test("rows: equal rows pass; a rounding flip on a few elements is left out; noise, a shifted row, NaN or one wild element fail", () => {
  const width = 512;
  const ref = row(width, 3);
  assert.equal(firstMismatch(ref.slice(), ref, width), undefined);
  // Two elements one 8-bit code step (1.4% of the row's largest value) off: what a rounding flip does.
  const flipped = ref.slice();
  flipped[10]! += 0.028;
  flipped[300]! -= 0.028;
  assert.equal(rowErrors(flipped, ref, width)[0], 0);
  assert.equal(firstMismatch(flipped, ref, width), undefined);
  // 1% noise on every element.
  const noisy = ref.map((v, i) => v * (1 + 0.01 * Math.sin(i * 7.3)));
  assert.ok(rowErrors(noisy, ref, width)[0]! > 100 * DEFAULT_TOLERANCE.maxRelativeError);
  assert.ok(firstMismatch(noisy, ref, width));
  // Another row entirely, one non-finite value, one element far off (beyond what trimming forgives).
  assert.equal(firstMismatch(row(width, 4), ref, width)?.row, 0);
  const nan = ref.slice();
  nan[5] = NaN;
  assert.equal(rowErrors(nan, ref, width)[0], Infinity);
  const wild = ref.slice();
  wild[7]! += 1;
  assert.equal(rowErrors(wild, ref, width)[0], Infinity);
  // The first bad row of several is named.
  const two = new Float32Array([...ref, ...ref]);
  const twoBad = new Float32Array([...ref, ...noisy]);
  assert.equal(firstMismatch(twoBad, two, width)?.row, 1);
  assert.throws(() => rowErrors(ref, two, width), RangeError);
});

test("rows: an honest node's blockwise-8-bit output against the verifier's requantized row passes; 1% noise does not", () => {
  const width = 512;
  const ref = row(width, 9);
  // The verifier's value differs from the node's by float reordering (1e-6), then both go through the codec.
  const nodeRow = decodeTensor(
    encodeTensor(
      ref.map((v, i) => v * (1 + 1e-6 * Math.cos(i))),
      [1, 1, width],
      "blockwise8",
    ),
  ).data;
  const verifierRow = decodeTensor(encodeTensor(ref, [1, 1, width], "blockwise8")).data;
  assert.equal(firstMismatch(nodeRow, verifierRow, width), undefined);
  const cheat = decodeTensor(
    encodeTensor(
      ref.map((v, i) => v + 0.01 * 1.15 * Math.sin(i * 3.1)),
      [1, 1, width],
      "blockwise8",
    ),
  ).data;
  assert.ok(firstMismatch(cheat, verifierRow, width));
});

test("consensus: the majority decides and the minority loses; no majority, no verdict; absent verifiers do not vote", () => {
  // Answers: 0 the prover's, 1..3 the verifiers'; `same` groups answers that agree.
  const verdict = (present: boolean[], groups: number[]) => consensusVerdict(present, (i, j) => groups[i] === groups[j]);
  assert.deepEqual(verdict([true, true, true, true], [0, 0, 0, 0]), { decided: true, majority: [0, 1, 2, 3], losers: [] });
  // The prover cheats: all three verifiers agree with each other.
  assert.deepEqual(verdict([true, true, true, true], [1, 0, 0, 0]), { decided: true, majority: [1, 2, 3], losers: [0] });
  // One lying verifier is outvoted.
  assert.deepEqual(verdict([true, true, true, true], [0, 0, 1, 0]), { decided: true, majority: [0, 1, 3], losers: [2] });
  // Two colluding verifiers with the same wrong answer win against an honest prover and verifier
  // out of 4 answers only with a strict majority: 2 of 4 is none (the known limit is a colluding majority).
  assert.deepEqual(verdict([true, true, true, true], [0, 1, 1, 0]), { decided: false });
  assert.deepEqual(verdict([true, true, true, false], [0, 1, 1, 9]), { decided: true, majority: [1, 2], losers: [0] });
  // An absent verifier (no reveal) is not counted.
  assert.deepEqual(verdict([true, false, true, true], [0, 9, 0, 1]), { decided: true, majority: [0, 2], losers: [3] });
  assert.deepEqual(verdict([true, false, false, false], [0, 0, 0, 0]), { decided: true, majority: [0], losers: [] });
});

/** A stand-in checked session: logits favour token (position + shift) % vocab; it "catches" a cheat once at a set position. */
class CheckedStandIn implements LogitsSession {
  length = 0;
  readonly maxLength = 64;
  private corrupted = true;
  appends: number[][] = [];
  constructor(
    private readonly vocab: number,
    private readonly catchAt: number,
    private readonly lag: number,
  ) {}
  async append(tokens: readonly number[]): Promise<Float32Array> {
    this.appends.push([...tokens]);
    this.length += tokens.length;
    const logits = new Float32Array(this.vocab);
    // Before the catch, outputs from position catchAt on are wrong (another token wins).
    const wrong = this.corrupted && this.length - 1 >= this.catchAt;
    logits[(this.length + (wrong ? 7 : 1)) % this.vocab] = 10;
    return logits;
  }
  truncate(position: number): void {
    this.length = position;
  }
  close(): void {}
  async settle(opts: { wait: boolean }): Promise<SettleResult> {
    if (this.corrupted && this.length > this.catchAt && (opts.wait || this.length >= this.catchAt + this.lag)) {
      this.corrupted = false;
      this.length = this.catchAt;
      return { settledLength: this.catchAt, rewoundTo: this.catchAt };
    }
    return { settledLength: this.corrupted ? Math.min(this.length, this.catchAt) : this.length };
  }
}

test("generate rewinds on a caught cheat: tokens equal an honest run's and no text from wrong logits is ever shown", async () => {
  const tokenizer = await loadTokenizer(await openCheckpoint(await hfModel("tiny-llama")));
  const vocab = 300;
  const prompt = [5, 6, 7, 8];
  const greedy = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };
  const honest = (n: number) => Array.from({ length: n }, (_, i) => (prompt.length + i + 1) % vocab);
  const run = async (catchAt: number, lag: number) => {
    const session = new CheckedStandIn(vocab, catchAt, lag);
    const shown: string[] = [];
    const result = await generate(session, tokenizer, prompt, { maxTokens: 12, sampling: greedy, seed: 1, stopAtEos: false, onText: (t) => shown.push(t) });
    return { result, shown: shown.join("") };
  };
  const clean = await run(Infinity, 0);
  assert.deepEqual(clean.result.tokens, honest(12));
  for (const [catchAt, lag] of [
    [9, 3],
    [2, 1],
    [9, 100],
  ] as const) {
    const { result, shown } = await run(catchAt, lag);
    assert.deepEqual(result.tokens, honest(12), `catch at ${catchAt}, lag ${lag}`);
    // Everything shown, in order, is the honest text: nothing derived from a wrong position was shown.
    assert.equal(shown, clean.result.text);
    assert.equal(result.text, clean.result.text);
  }
});
