import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { ServedSpan, SpanRunner } from "../src/engine/runtime.js";
import type { WeightFormat } from "../src/engine/weights.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { ggufModel, hfModel, maxAbsDiff, sampleTokens } from "./support/fixtures.js";

const ARCHS = ["tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-gpt2"];

async function logits(path: string, tokens: number[], opts: { splits?: number[]; allLogits?: boolean; format?: WeightFormat } = {}) {
  const pipeline = await LocalPipeline.load(await openCheckpoint(path), { splits: opts.splits, format: opts.format, maxSequence: 256 });
  const session = pipeline.openSession(128);
  try {
    return await session.append(tokens, { allLogits: opts.allLogits });
  } finally {
    session.close();
    await pipeline.release();
  }
}

for (const preset of ARCHS) {
  describe(preset, () => {
    test("cut at the edges (embedding alone, blocks alone, head alone) the model's logits are the same bits", async () => {
      const checkpoint = await openCheckpoint(await hfModel(preset));
      const L = checkpoint.config.numLayers;
      const load = (start: number, end: number, embed: boolean, head: boolean) => SpanRunner.load(checkpoint, { start, end, embed, head }, { maxSequence: 64 });
      const [whole, embedding, blocks, lmHead] = await Promise.all([
        load(0, L, true, true),
        load(0, 0, true, false),
        load(0, L, false, false),
        load(L, L, false, true),
      ]);
      try {
        assert.equal(embedding.kvBytesPerToken, 0, "an edge holds no KV cache");
        const tokens = sampleTokens(9, 512, 3);
        const w = whole.openSession(32);
        const [e, b, h] = [embedding.openSession(32), blocks.openSession(32), lmHead.openSession(32)];
        // A prefill, then two decode steps (the edges keep positions, as GPT-2's learned ones need).
        for (const part of [tokens.slice(0, 7), tokens.slice(7, 8), tokens.slice(8, 9)]) {
          const want = (await w.forward({ tokens: part }, { allLogits: true })).logits!;
          const hidden = (await e.forward({ tokens: part })).hidden!;
          const got = (await h.forward((await b.forward({ hidden })) as { hidden: Float32Array }, { allLogits: true })).logits!;
          assert.equal(got.length, part.length * 512);
          assert.ok(
            got.every((v, i) => Object.is(v, want[i])),
            `max diff ${maxAbsDiff(got, want)}`,
          );
        }
        assert.deepEqual([e.length, b.length, h.length], [9, 9, 9]);
      } finally {
        await Promise.all([whole, embedding, blocks, lmHead].map((r) => r.release()));
      }
      for (const [start, end, embed, head] of [
        [0, 0, false, false],
        [0, 0, true, true],
        [1, 1, true, false],
        [1, L, true, false],
        [0, L - 1, false, true],
      ] as const) {
        await assert.rejects(load(start, end, embed, head), /invalid span/, `[${start}, ${end}) embed ${embed} head ${head}`);
      }
    });

    test("a served span's plain sessions give the whole model's bits; its split sessions run the blocks only, hidden states in and out", async () => {
      const checkpoint = await openCheckpoint(await hfModel(preset));
      const L = checkpoint.config.numLayers;
      const opts = { maxSequence: 64 };
      const [whole, first, last, embedding, lmHead] = await Promise.all([
        SpanRunner.load(checkpoint, { start: 0, end: L, embed: true, head: true }, opts),
        ServedSpan.load(checkpoint, 0, 1, opts),
        ServedSpan.load(checkpoint, 1, L, opts),
        ServedSpan.load(checkpoint, 0, 0, opts),
        ServedSpan.load(checkpoint, L, L, opts),
      ]);
      try {
        assert.deepEqual(
          [first.span, last.span],
          [
            { start: 0, end: 1, embed: true, head: false },
            { start: 1, end: L, embed: false, head: true },
          ],
        );
        assert.equal(embedding.kvBytesPerToken, 0);
        const tokens = sampleTokens(9, 512, 5);
        const w = whole.openSession(32);
        const [p1, p2] = [first.openSession(32), last.openSession(32)];
        const [s1, s2] = [first.openSession(32, { split: true }), last.openSession(32, { split: true })];
        const [e, h] = [embedding.openSession(32), lmHead.openSession(32)];
        const same = (got: Float32Array, want: Float32Array) =>
          assert.ok(got.length === want.length && got.every((v, i) => Object.is(v, want[i])), `max diff ${maxAbsDiff(got, want)}`);
        for (const part of [tokens.slice(0, 7), tokens.slice(7, 8), tokens.slice(8, 9)]) {
          const want = (await w.forward({ tokens: part }, { allLogits: true })).logits!;
          // Plain: token ids in at block 0, logits out at block L.
          same((await p2.forward((await p1.forward({ tokens: part })) as { hidden: Float32Array }, { allLogits: true })).logits!, want);
          // Split: the client embeds, the spans run blocks on hidden states, the client runs the head.
          const hidden = (await e.forward({ tokens: part })).hidden!;
          const out = await s2.forward((await s1.forward({ hidden })) as { hidden: Float32Array });
          assert.equal(out.logits, undefined, "a split session returns no logits");
          same((await h.forward(out as { hidden: Float32Array }, { allLogits: true })).logits!, want);
        }
        assert.deepEqual([p1.length, p2.length, s1.length, s2.length], [9, 9, 9, 9]);
        // A rollback and a failed step keep a plain session's parts at one length.
        p1.truncate(7);
        await assert.rejects(p1.forward({ tokens: [600] }), /outside the vocabulary/);
        assert.equal(p1.length, 7);
        await assert.rejects(s1.forward({ tokens: [1] }), /hidden states/, "a split session takes no token ids");
        assert.throws(() => embedding.openSession(32, { split: true }), /holds none/);
        assert.throws(() => lmHead.openSession(32, { split: true }), /holds none/);
        await assert.rejects(ServedSpan.load(checkpoint, 1, 0, opts), /invalid span/);
      } finally {
        await Promise.all([whole, first, last, embedding, lmHead].map((r) => r.release()));
      }
    });

    test("running spans [0,k) then [k,L) equals running [0,L)", async () => {
      const model = await hfModel(preset);
      const tokens = sampleTokens(12, 512);
      const whole = await logits(model, tokens, { allLogits: true });
      const split = await logits(model, tokens, { splits: [1, 2], allLogits: true });
      assert.equal(whole.length, 12 * 512);
      assert.ok(maxAbsDiff(whole, split) <= 1e-5, `max diff ${maxAbsDiff(whole, split)}`);
    });

    test("prefill in one call equals feeding tokens one at a time and in chunks", async () => {
      const model = await hfModel(preset);
      const tokens = sampleTokens(10, 512, 7);
      const pipeline = await LocalPipeline.load(await openCheckpoint(model), { maxSequence: 256 });
      try {
        const oneShot = pipeline.openSession(64);
        const all = await oneShot.append(tokens, { allLogits: true });
        const stepwise = pipeline.openSession(64);
        const chunked = pipeline.openSession(64);
        await chunked.append(tokens.slice(0, 4));
        const chunkTail = await chunked.append(tokens.slice(4), { allLogits: true });
        for (let i = 0; i < tokens.length; i++) {
          const step = await stepwise.append([tokens[i]!]);
          const row = all.subarray(i * 512, (i + 1) * 512);
          assert.ok(maxAbsDiff(step, row) < 1e-4, `position ${i}: diff ${maxAbsDiff(step, row)}`);
        }
        assert.ok(maxAbsDiff(chunkTail, all.subarray(4 * 512)) < 1e-4);
      } finally {
        await pipeline.release();
      }
    });

    test("a Hugging Face folder and its GGUF conversion give the same logits", async () => {
      const tokens = sampleTokens(9, 512, 3);
      const fromHf = await logits(await hfModel(preset), tokens, { allLogits: true });
      const fromGguf = await logits(await ggufModel(preset), tokens, { allLogits: true });
      assert.ok(maxAbsDiff(fromHf, fromGguf) < 1e-4, `max diff ${maxAbsDiff(fromHf, fromGguf)}`);
    });
  });
}

test("rolling a session back and re-feeding reproduces the logits", async () => {
  const pipeline = await LocalPipeline.load(await openCheckpoint(await hfModel("tiny-llama")), { maxSequence: 256 });
  try {
    const s = pipeline.openSession(32);
    const tokens = sampleTokens(8, 512, 11);
    await s.append(tokens.slice(0, 6));
    const first = await s.append(tokens.slice(6));
    s.truncate(3);
    const diverged = await s.append([1, 2, 3, 4, 5]);
    assert.ok(maxAbsDiff(diverged, first) > 1e-3, "different history must give different logits");
    s.truncate(3);
    await s.append(tokens.slice(3, 6));
    const again = await s.append(tokens.slice(6));
    assert.equal(s.length, 8);
    assert.ok(maxAbsDiff(first, again) < 1e-5, `diff ${maxAbsDiff(first, again)}`);
  } finally {
    await pipeline.release();
  }
});

test("the KV cache grows with the session without changing results", async () => {
  const pipeline = await LocalPipeline.load(await openCheckpoint(await hfModel("tiny-qwen2")), { maxSequence: 256 });
  try {
    const tokens = sampleTokens(150, 512, 13);
    const oneShot = await pipeline.openSession(200).append(tokens, { allLogits: true });
    const growing = pipeline.openSession(200);
    await growing.append(tokens.slice(0, 60));
    for (let i = 60; i < 150; i++) {
      const step = await growing.append([tokens[i]!]);
      const diff = maxAbsDiff(step, oneShot.subarray(i * 512, (i + 1) * 512));
      assert.ok(diff < 1e-4, `position ${i}: diff ${diff}`);
    }
    growing.truncate(100);
    const again = await growing.append(tokens.slice(100, 101));
    assert.ok(maxAbsDiff(again, oneShot.subarray(100 * 512, 101 * 512)) < 1e-4, "rollback after growth");
  } finally {
    await pipeline.release();
  }
});

test("F16 and BF16 folders and sharded folders load and agree with F32 within rounding", async () => {
  const tokens = sampleTokens(6, 512, 5);
  const f32 = await logits(await hfModel("tiny-llama"), tokens);
  const f16 = await logits(await hfModel("tiny-llama", "F16"), tokens);
  const bf16 = await logits(await hfModel("tiny-llama", "BF16"), tokens);
  const sharded = await logits(await hfModel("tiny-llama", "F32", 200_000), tokens);
  assert.equal(maxAbsDiff(f32, sharded), 0);
  assert.ok(maxAbsDiff(f32, f16) < 0.05, `f16 diff ${maxAbsDiff(f32, f16)}`);
  assert.ok(maxAbsDiff(f32, bf16) < 0.5, `bf16 diff ${maxAbsDiff(f32, bf16)}`);
});

test("f16, int8 and int4 engine weights stay close to f32", async () => {
  const tokens = sampleTokens(8, 512, 9);
  const hf = await hfModel("tiny-llama");
  const f32 = await logits(hf, tokens);
  const f16 = await logits(hf, tokens, { format: "f16" });
  const q8 = await logits(hf, tokens, { format: "q8" });
  const q4 = await logits(hf, tokens, { format: "q4" });
  const spread = Math.max(...f32) - Math.min(...f32);
  assert.ok(maxAbsDiff(f32, f16) < 0.01 * spread, `f16 diff ${maxAbsDiff(f32, f16)} of spread ${spread}`);
  assert.ok(maxAbsDiff(f32, q8) < 0.05 * spread, `q8 diff ${maxAbsDiff(f32, q8)} of spread ${spread}`);
  assert.ok(maxAbsDiff(f32, q4) < 0.3 * spread, `q4 diff ${maxAbsDiff(f32, q4)} of spread ${spread}`);
  const fromGgufQ8 = await logits(await ggufModel("tiny-llama", "Q8_0"), tokens, { format: "q8" });
  assert.ok(maxAbsDiff(f32, fromGgufQ8) < 0.05 * spread, `gguf q8 diff ${maxAbsDiff(f32, fromGgufQ8)}`);
});
