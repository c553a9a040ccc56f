// The engine on its own thread (what `tessera node` runs): the same numbers as the in-process
// engine, refusals still typed SessionErrors, rollback and close carried over, a stopped thread
// failing its requests with a clear error.
import assert from "node:assert/strict";
import { test } from "node:test";
import { threadedCheckpoint } from "../src/engine/engine-thread.js";
import { SessionError } from "../src/engine/interface.js";
import { servedCheckpoint } from "../src/engine/runtime.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { checkpointHash } from "../src/model/hash.js";
import { hfModel, maxAbsDiff, sampleTokens } from "./support/fixtures.js";

test("spans on the engine thread give the in-process engine's numbers; refusals, rollback and close carry over", async () => {
  const path = await hfModel("tiny-llama");
  const checkpoint = await openCheckpoint(path);
  const L = checkpoint.config.numLayers;
  const local = await servedCheckpoint(checkpoint, { maxSequence: 128 });
  const threaded = threadedCheckpoint(path, checkpoint.config, await checkpointHash(checkpoint), { maxSequence: 128 });
  try {
    assert.equal(threaded.checkpointHash, local.checkpointHash);
    const [a0, a1, b0, b1] = await Promise.all([local.load(0, 1), local.load(1, L), threaded.load(0, 1), threaded.load(1, L)]);
    assert.deepEqual([b0.span, b0.maxSequence, b0.kvBytesPerToken], [a0.span, a0.maxSequence, a0.kvBytesPerToken]);
    const tokens = sampleTokens(20, checkpoint.config.vocabSize);
    const run = async (first: typeof a0, last: typeof a1) => {
      const s0 = first.openSession(64);
      const s1 = last.openSession(64);
      const h = await s0.forward({ tokens: tokens.slice(0, 16) });
      // A view into a larger buffer, as a received frame gives the server.
      const frame = new Float32Array(h.hidden!.length + 8);
      frame.set(h.hidden!, 4);
      const prefill = await s1.forward({ hidden: frame.subarray(4, 4 + h.hidden!.length) }, { allLogits: true });
      // Roll back 4 positions on both and go on from there.
      s0.truncate(12);
      s1.truncate(12);
      const h2 = await s0.forward({ tokens: tokens.slice(12, 20) });
      const next = await s1.forward({ hidden: h2.hidden! });
      return { prefill: prefill.logits!, next: next.logits!, lengths: [s0.length, s1.length], s0, s1 };
    };
    const want = await run(a0, a1);
    const got = await run(b0, b1);
    assert.deepEqual(got.lengths, [20, 20]);
    assert.equal(got.prefill.length, 16 * checkpoint.config.vocabSize);
    assert.equal(maxAbsDiff(got.prefill, want.prefill), 0, "prefill logits");
    assert.equal(maxAbsDiff(got.next, want.next), 0, "logits after the rollback");

    // A refusal is a SessionError and leaves the session as it was.
    await assert.rejects(
      got.s0.forward({ tokens: [checkpoint.config.vocabSize + 5] }),
      (e: unknown) => e instanceof SessionError && /outside the vocabulary/.test(e.message),
    );
    await assert.rejects(got.s1.forward({ hidden: new Float32Array(3) }), SessionError);
    assert.throws(() => got.s0.truncate(21), SessionError);
    assert.equal(got.s0.length, 20);
    assert.ok((await got.s0.forward({ tokens: [1] })).hidden, "still usable");
    assert.throws(() => b0.openSession(129), SessionError);
    await assert.rejects(threaded.load(0, L + 1), (e: unknown) => e instanceof SessionError && /invalid span/.test(e.message));

    // Split sessions (hidden states in at block 0, out at block L) cross the thread too.
    const hidden = (await got.s0.forward({ tokens: [2] })).hidden!;
    const split = async (first: typeof a0, last: typeof a1) => {
      const [x0, x1] = [first.openSession(8, { split: true }), last.openSession(8, { split: true })];
      const out = await x1.forward((await x0.forward({ hidden: hidden.slice() })) as { hidden: Float32Array });
      await assert.rejects(x0.forward({ tokens: [1] }), SessionError);
      return out;
    };
    const [inProcess, onThread] = [await split(a0, a1), await split(b0, b1)];
    assert.equal(onThread.logits, undefined);
    assert.equal(onThread.hidden?.length, checkpoint.config.hiddenSize);
    assert.equal(maxAbsDiff(onThread.hidden!, inProcess.hidden!), 0, "split hidden states");

    got.s1.close();
    await assert.rejects(got.s1.forward({ hidden: new Float32Array(checkpoint.config.hiddenSize) }), /closed/);
    await b1.release();
  } finally {
    await threaded.stop();
  }
  await assert.rejects(threaded.load(0, 1), /engine thread was stopped/);
});
