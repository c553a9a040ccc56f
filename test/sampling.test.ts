import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { applyRepetitionPenalty, argmax, createRng, logSoftmax, sampleToken, type SamplingParams, StopMatcher, topIndices } from "../src/engine/sampling.js";

const params = (p: Partial<SamplingParams>): SamplingParams => ({
  temperature: 1,
  topK: 0,
  topP: 1,
  repetitionPenalty: 1,
  ...p,
});

/** Logits whose softmax is exactly `probs`. */
const logitsOf = (probs: number[]) => Float32Array.from(probs, (p) => Math.log(p));

function randomLogits(n: number, seed: number): Float32Array {
  const rng = createRng(seed);
  return Float32Array.from({ length: n }, () => (rng() - 0.5) * 20);
}

function histogram(logits: Float32Array, p: SamplingParams, draws: number, seed = 1): Map<number, number> {
  const rng = createRng(seed);
  const counts = new Map<number, number>();
  for (let i = 0; i < draws; i++) {
    const id = sampleToken(logits, p, [], rng);
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

describe("rng and helpers", () => {
  test("createRng is deterministic, in [0, 1), and roughly uniform", () => {
    const a = createRng(42);
    const b = createRng(42);
    const xs = Array.from({ length: 10000 }, () => a());
    assert.deepEqual(
      xs.slice(0, 100),
      Array.from({ length: 100 }, () => b()),
    );
    assert.ok(xs.every((x) => x >= 0 && x < 1));
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    assert.ok(Math.abs(mean - 0.5) < 0.02);
    assert.notEqual(createRng(43)(), createRng(42)());
  });

  test("argmax takes the first maximum", () => {
    assert.equal(argmax(Float32Array.from([1, 3, 3, 2])), 1);
    assert.equal(argmax(Float32Array.from([-Infinity, -5])), 1);
  });

  test("logSoftmax", () => {
    const out = logSoftmax(Float32Array.from([1000, 1000, 1000 - Math.log(2)]));
    const probs = Array.from(out, Math.exp);
    assert.ok(Math.abs(probs.reduce((s, x) => s + x, 0) - 1) < 1e-6);
    const expected = [0.4, 0.4, 0.2];
    assert.ok(
      probs.every((p, i) => Math.abs(p - (expected[i] ?? NaN)) < 1e-4),
      `${probs} ≈ ${expected}`,
    );
  });

  test("topIndices matches a full sort, lower index first on ties", () => {
    const logits = randomLogits(5000, 3);
    logits[10] = logits[20] = 100;
    const sorted = Array.from(logits, (score, id) => ({ score, id }))
      .sort((a, b) => b.score - a.score || a.id - b.id)
      .map(({ id }) => id);
    for (const m of [1, 7, 40, 1000, 2000, 5000]) assert.deepEqual(Array.from(topIndices(logits, m)), sorted.slice(0, m));
  });
});

describe("sampleToken", () => {
  test("logit bias: -inf bans a token, a large bias forces one, ids outside the vocabulary are refused", () => {
    const logits = randomLogits(1000, 3);
    const best = argmax(logits);
    const rng = createRng(5);
    const banned = sampleToken(logits, params({ temperature: 0, logitBias: new Map([[best, -Infinity]]) }), [], rng);
    assert.notEqual(banned, best);
    const second = argmax(Float32Array.from(logits, (v, i) => (i === best ? -Infinity : v)));
    assert.equal(banned, second);
    for (let i = 0; i < 50; i++) {
      assert.equal(sampleToken(logits, params({ temperature: 1, topK: 40, logitBias: new Map([[17, 1000]]) }), [], rng), 17);
      assert.notEqual(sampleToken(logits, params({ temperature: 1, topK: 2, logitBias: new Map([[best, -Infinity]]) }), [], rng), best);
    }
    assert.throws(() => sampleToken(logits, params({ logitBias: new Map([[1000, 1]]) }), [], rng), /token 1000, outside the vocabulary of 1000/);
    assert.equal(logits[best], Math.max(...logits), "the caller's logits are left as they were");
  });

  test("is deterministic with a seed", () => {
    const logits = randomLogits(32000, 1);
    const p = params({ temperature: 0.8, topK: 50, topP: 0.9 });
    const run = (seed: number) => {
      const rng = createRng(seed);
      return Array.from({ length: 50 }, () => sampleToken(logits, p, [], rng));
    };
    assert.deepEqual(run(7), run(7));
    assert.notDeepEqual(run(7), run(8));
  });

  test("temperature 0 is argmax, as is top-k 1", () => {
    const rng = createRng(1);
    for (let seed = 0; seed < 20; seed++) {
      const logits = randomLogits(1000, seed);
      const best = argmax(logits);
      assert.equal(sampleToken(logits, params({ temperature: 0 }), [], rng), best);
      assert.equal(sampleToken(logits, params({ temperature: 1.5, topK: 1 }), [], rng), best);
    }
  });

  test("top-k restricts to the k most likely", () => {
    const logits = logitsOf([0.3, 0.05, 0.25, 0.1, 0.3]);
    const counts = histogram(logits, params({ topK: 3 }), 3000);
    assert.deepEqual([...counts.keys()].sort(), [0, 2, 4]);
  });

  test("top-p keeps the nucleus and renormalizes", () => {
    // Sorted: 0.5, 0.3, 0.1, 0.05, 0.05 -> top-p 0.75 keeps {0, 1} (0.8 >= 0.75) with odds 5:3.
    const logits = logitsOf([0.05, 0.3, 0.5, 0.1, 0.05]);
    const draws = 20000;
    const counts = histogram(logits, params({ topP: 0.75 }), draws);
    assert.deepEqual([...counts.keys()].sort(), [1, 2]);
    assert.ok(Math.abs(counts.get(2)! / draws - 0.625) < 0.015);
    // Without filtering the empirical distribution matches the softmax.
    const all = histogram(logits, params({}), draws);
    assert.ok(Math.abs(all.get(3)! / draws - 0.1) < 0.01);
    // A tiny top-p always keeps the most likely token.
    assert.deepEqual([...histogram(logits, params({ topP: 0.01 }), 100).keys()], [2]);
  });

  test("top-p over a large vocabulary without top-k", () => {
    const n = 150000;
    const logits = new Float32Array(n).fill(-10);
    const hot = [12345, 99, 140000];
    hot.forEach((id, i) => (logits[id] = 10 - i));
    const counts = histogram(logits, params({ topP: 0.9 }), 200);
    assert.ok([...counts.keys()].every((id) => hot.includes(id)));
    // A flat distribution needs the widening path to cover most of the vocabulary.
    const flat = new Float32Array(n);
    const seen = histogram(flat, params({ topP: 0.5 }), 20);
    assert.ok([...seen.keys()].every((id) => id < n * 0.5));
  });

  test("min-p drops tokens far below the best", () => {
    const logits = logitsOf([0.6, 0.3, 0.04, 0.06]);
    const counts = histogram(logits, params({ minP: 0.2 }), 3000);
    assert.deepEqual([...counts.keys()].sort(), [0, 1]);
  });

  test("temperature sharpens and flattens", () => {
    const logits = logitsOf([0.6, 0.4]);
    const cold = histogram(logits, params({ temperature: 0.25 }), 5000).get(0)! / 5000;
    const hot = histogram(logits, params({ temperature: 4 }), 5000).get(0)! / 5000;
    // p0 = 0.6^4 / (0.6^4 + 0.4^4) = 0.835 and 0.6^.25 / (0.6^.25 + 0.4^.25) = 0.525
    assert.ok(Math.abs(cold - 0.835) < 0.02, String(cold));
    assert.ok(Math.abs(hot - 0.525) < 0.02, String(hot));
  });

  test("repetition penalty divides positive and multiplies negative logits in the window", () => {
    const logits = Float32Array.from([2, -1, 1.75, 0.5]);
    const out = applyRepetitionPenalty(logits, [3, 0, 1, 0], 2);
    assert.deepEqual(Array.from(out), [1, -2, 1.75, 0.25]);
    assert.deepEqual(Array.from(logits), [2, -1, 1.75, 0.5], "input untouched");
    assert.deepEqual(Array.from(applyRepetitionPenalty(logits, [3, 0, 1], 2, 1)), [2, -2, 1.75, 0.5]);
    const rng = createRng(1);
    assert.equal(sampleToken(logits, params({ temperature: 0 }), [], rng), 0);
    assert.equal(sampleToken(logits, params({ temperature: 0, repetitionPenalty: 1.3 }), [0], rng), 2);
    assert.equal(sampleToken(logits, params({ temperature: 0, repetitionPenalty: 1.3, repetitionWindow: 1 }), [0, 3], rng), 0);
  });

  test("is fast at 150k vocabulary", () => {
    const logits = randomLogits(150000, 5);
    const rng = createRng(1);
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) sampleToken(logits, params({ temperature: 0.7, topK: 40, topP: 0.95, repetitionPenalty: 1.1 }), [1, 2, 3], rng);
    for (let i = 0; i < 20; i++) sampleToken(logits, params({ temperature: 0.7, topP: 0.95 }), [], rng);
    assert.ok(performance.now() - t0 < 2000);
  });
});

describe("StopMatcher", () => {
  const run = (stops: string[], chunks: string[]) => {
    const m = new StopMatcher(stops);
    let out = "";
    for (const c of chunks) {
      const r = m.push(c);
      out += r.emit;
      if (r.stopped) return { out, stopped: true };
    }
    return { out: out + m.flush(), stopped: false };
  };

  test("truncates at a stop string split across chunks", () => {
    assert.deepEqual(run(["<|end|>"], ["Hello <|", "en", "d|> never"]), { out: "Hello ", stopped: true });
    assert.deepEqual(run(["\n\n"], ["a\n", "\nb"]), { out: "a", stopped: true });
  });

  test("holds back only a possible stop-string start", () => {
    const m = new StopMatcher(["STOP"]);
    assert.deepEqual(m.push("abcST"), { emit: "abc", stopped: false });
    assert.deepEqual(m.push("O"), { emit: "", stopped: false });
    assert.deepEqual(m.push("RM more"), { emit: "STORM more", stopped: false });
    assert.equal(m.flush(), "");
  });

  test("releases held text at flush when no stop came", () => {
    assert.deepEqual(run(["###"], ["text #", "#"]), { out: "text ##", stopped: false });
  });

  test("picks the earliest of several stops, and overlapping prefixes", () => {
    assert.deepEqual(run(["world", "lo w"], ["hel", "lo wor", "ld"]), { out: "hel", stopped: true });
    assert.deepEqual(run(["aab"], ["a", "a", "a", "b"]), { out: "a", stopped: true });
    const m = new StopMatcher(["x", "yz"]);
    assert.deepEqual(m.push("1y2x3"), { emit: "1y2", stopped: true, stop: "x" });
    assert.deepEqual(m.push("more"), { emit: "", stopped: true });
  });

  test("no stops passes everything through", () => {
    assert.deepEqual(run([], ["a", "b"]), { out: "ab", stopped: false });
    assert.deepEqual(run([""], ["a", "b"]), { out: "ab", stopped: false });
  });
});
