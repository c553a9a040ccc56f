// Giving memory back after a flood: the collection decision, and the watch in a real process.
import assert from "node:assert/strict";
import { test } from "node:test";
import { collected, initialReclaimState, measuredAfter, RECLAIM_DEFAULTS, reclaimFloor, sampled, shouldCollect, watchMemory } from "../src/swarm/memory.js";

const MiB = 2 ** 20;

test("a collection runs when RSS grew well above the floor, or after framing released many buffers", () => {
  let s = initialReclaimState(200 * MiB, 0);
  assert.equal(shouldCollect(s, 200 * MiB, 10_000), undefined, "no growth");
  assert.equal(shouldCollect(s, 206 * MiB, 10_000), undefined, "growth under 5%");
  assert.match(shouldCollect(s, 260 * MiB, 10_000) ?? "", /above its floor of 200\.0 MiB/);
  s = { ...s, released: RECLAIM_DEFAULTS.releasedBytes };
  assert.match(shouldCollect(s, 200 * MiB, 10_000) ?? "", /framing released 64\.0 MiB/);

  // After a collection: none within the minimum interval, and the released count starts again.
  s = collected(s, 10_000);
  assert.equal(s.released, 0);
  assert.equal(shouldCollect(s, 400 * MiB, 10_000 + RECLAIM_DEFAULTS.minIntervalMs - 1), undefined);
  assert.ok(shouldCollect(s, 400 * MiB, 10_000 + RECLAIM_DEFAULTS.minIntervalMs));
});

test("collections that free little back off (doubling up to 16 s); one that frees enough, or released buffers, collect again at once", () => {
  const o = RECLAIM_DEFAULTS;
  let s = initialReclaimState(200 * MiB, 0);
  let t = 10_000;
  const waits: number[] = [];
  for (let i = 0; i < 6; i++) {
    s = measuredAfter(collected(s, t), t, 260 * MiB, 261 * MiB);
    let next = t + o.minIntervalMs;
    while (!shouldCollect(s, 260 * MiB, next) && next < t + 2 * o.maxBackoffMs) next += 1000;
    waits.push(next - t);
    t = next;
  }
  assert.deepEqual(waits, [4000, 8000, 16_000, 16_000, 16_000, 16_000]);
  // RSS falling by itself (memory let go) skips the backoff.
  s = measuredAfter(collected(s, t), t, 260 * MiB, 261 * MiB);
  assert.equal(shouldCollect(s, 260 * MiB, t + o.minIntervalMs), undefined);
  assert.ok(shouldCollect(sampled(s, 280 * MiB), 270 * MiB, t + o.minIntervalMs), "fell 10 MiB since the last check");
  // Framing's released buffers are not held back by the backoff.
  assert.ok(shouldCollect({ ...s, released: o.releasedBytes }, 260 * MiB, t + o.minIntervalMs));
  // An effective collection resets it.
  s = measuredAfter(collected(s, t), t, 230 * MiB, 300 * MiB);
  assert.equal(s.backoffMs, 0);
  assert.ok(shouldCollect(s, 260 * MiB, t + o.minIntervalMs));
});

test("the floor is the lowest RSS after a recent collection: lasting growth stops triggering once the window passes", () => {
  const w = RECLAIM_DEFAULTS.floorWindowMs;
  let s = initialReclaimState(200 * MiB, 0);
  // A collection that freed nothing: the memory is in use (e.g. a bigger KV cache).
  s = measuredAfter(collected(s, 5000), 5000, 300 * MiB);
  assert.equal(reclaimFloor(s, 6000), 200 * MiB);
  assert.ok(shouldCollect(s, 300 * MiB, 10_000), "within the window the old floor still counts");
  assert.equal(reclaimFloor(s, w + 1), 300 * MiB);
  assert.equal(shouldCollect(s, 300 * MiB, w + 1), undefined, "the old floor is forgotten");
  // Every sample older than the window: the newest still stands.
  assert.equal(reclaimFloor(s, 10 * w), 300 * MiB);
});

test("watchMemory gives dropped buffers back to the system", async () => {
  const rss = () => process.memoryUsage.rss();
  const watch = watchMemory({ checkMs: 50, settleMs: 10, minIntervalMs: 0 });
  try {
    let buffers: Uint8Array[] | undefined = Array.from({ length: 3 }, () => new Uint8Array(64 * MiB).fill(1));
    const peak = rss();
    assert.ok(buffers.length === 3);
    buffers = undefined;
    watch.released(192 * MiB);
    const deadline = Date.now() + 10_000;
    while (!(watch.collections >= 1 && rss() < peak - 128 * MiB) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(watch.collections >= 1, "a collection ran");
    assert.ok(rss() < peak - 128 * MiB, `RSS ${(rss() / MiB).toFixed(0)} MiB, ${(peak / MiB).toFixed(0)} MiB with the buffers`);
  } finally {
    watch.stop();
  }
});
