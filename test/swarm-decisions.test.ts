// Pure swarm decisions: block selection, rebalancing and routing (no network involved).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createRng } from "../src/engine/sampling.js";
import { bestStart, blockThroughputs, chooseBlocks, rebalance } from "../src/swarm/placement.js";
import { renderSwarm } from "../src/swarm/dashboard.js";
import { MissingBlocksError, type SpanRecord } from "../src/swarm/records.js";
import { CHAIN_MIN_GAIN_S, chainingGain, maxThroughputRoute, minLatencyRoute } from "../src/swarm/routing.js";

const span = (peerId: string, start: number, end: number, extra: Partial<SpanRecord> = {}): SpanRecord => ({
  peerId,
  start,
  end,
  state: "online",
  throughput: 10,
  inferenceRps: 100,
  cacheTokensLeft: 1e9,
  nextPings: {},
  ...extra,
});

describe("block selection", () => {
  test("per-block throughput sums the spans that are not offline", () => {
    const t = blockThroughputs([span("a", 0, 3), span("b", 2, 5, { throughput: 4 }), span("c", 0, 5, { state: "offline" })], 5);
    assert.deepEqual([...t], [10, 10, 14, 4, 4]);
  });

  test("the weakest window wins, compared by sorted throughputs, ties to the lowest start", () => {
    assert.equal(bestStart([5, 5, 1, 9, 9, 9], 2), 1); // [1,5] beats [1,9]
    assert.equal(bestStart([3, 3, 3, 3], 2), 0);
    assert.equal(bestStart([9, 1, 9, 1, 1, 9], 3), 1); // [1,1,9] at starts 1, 2 and 3: the lowest wins
  });

  test("a joining node covers the blocks nobody serves yet", () => {
    assert.deepEqual(chooseBlocks([], 8, 3), { start: 0, end: 3 });
    assert.deepEqual(chooseBlocks([span("a", 0, 4), span("b", 0, 4)], 8, 4), { start: 4, end: 8 });
    assert.deepEqual(chooseBlocks([span("a", 0, 8)], 8, 20), { start: 0, end: 8 }, "capacity above the model is clipped");
  });

  test("a node moves to the weakest blocks only when that lifts the swarm's minimum enough", () => {
    const random = createRng(1);
    const lopsided = [span("a", 0, 4), span("b", 0, 4), span("c", 4, 8, { throughput: 1 })];
    assert.equal(rebalance(lopsided, "b", 8, random), 4);
    const balanced = [span("a", 0, 4), span("b", 4, 8), span("c", 0, 4, { throughput: 9 }), span("d", 4, 8, { throughput: 9 })];
    assert.equal(rebalance(balanced, "c", 8, random), undefined);
    const sole = [span("a", 0, 4), span("b", 4, 8, { throughput: 1 })];
    assert.equal(rebalance(sole, "a", 8, random), undefined, "moving would uncover blocks 0-3");
  });
});

describe("routing", () => {
  const rtt = (entries: Record<string, number>) => new Map(Object.entries(entries));

  test("min-latency routing covers the range with the cheapest chain of sub-spans", () => {
    const records = [span("near", 0, 4, { nextPings: { b: 0.002, far: 0.002 } }), span("far", 0, 8), span("b", 4, 8)];
    const route = minLatencyRoute(records, { start: 0, end: 8, needTokens: 64, clientRtt: rtt({ near: 0.002, b: 0.002, far: 0.4 }) });
    assert.deepEqual(route, [
      { peerId: "near", start: 0, end: 4 },
      { peerId: "b", start: 4, end: 8 },
    ]);
    // With everyone equally near, one hop saves the 18 ms per-hop overhead.
    const oneHop = minLatencyRoute(records, { start: 0, end: 8, needTokens: 64, clientRtt: rtt({ near: 0.002, b: 0.002, far: 0.002 }) });
    assert.deepEqual(oneHop, [{ peerId: "far", start: 0, end: 8 }]);
  });

  test("spans without cache room for the session, excluded peers and offline nodes are avoided", () => {
    const records = [span("full", 0, 8, { cacheTokensLeft: 10 }), span("ok", 0, 8, { inferenceRps: 10 }), span("gone", 0, 8, { state: "offline" })];
    const req = { start: 0, end: 8, needTokens: 100, clientRtt: rtt({ full: 0.001, ok: 0.05, gone: 0 }) };
    assert.deepEqual(minLatencyRoute(records, req), [{ peerId: "ok", start: 0, end: 8 }]);
    assert.deepEqual(minLatencyRoute(records, { ...req, excluded: new Set(["ok"]) }), [{ peerId: "full", start: 0, end: 8 }]);
  });

  test("a sub-range can be routed on its own (failover of one span), starting mid-span", () => {
    const records = [span("a", 0, 6), span("b", 3, 8)];
    assert.deepEqual(minLatencyRoute(records, { start: 4, end: 6, needTokens: 1, clientRtt: rtt({}) }), [{ peerId: "a", start: 4, end: 6 }]);
  });

  test("uncovered blocks are named", () => {
    const records = [span("a", 0, 3), span("b", 5, 8), span("c", 3, 5)];
    assert.throws(
      () => minLatencyRoute(records, { start: 0, end: 8, needTokens: 1, clientRtt: rtt({}), excluded: new Set(["c"]) }),
      (e: unknown) => e instanceof MissingBlocksError && e.blocks.join() === "3,4",
    );
  });

  test("max-throughput routing walks contiguous sub-spans chosen in proportion to span length", () => {
    const records = [span("long", 0, 8), span("short", 0, 2), span("mid", 2, 8)];
    const counts = new Map<string, number>();
    const random = createRng(7);
    for (let trial = 0; trial < 2000; trial++) {
      const route = maxThroughputRoute(records, { start: 0, end: 8 }, random);
      assert.equal(route[0]!.start, 0);
      assert.equal(route.at(-1)!.end, 8);
      for (let i = 1; i < route.length; i++) assert.equal(route[i]!.start, route[i - 1]!.end);
      counts.set(route[0]!.peerId, (counts.get(route[0]!.peerId) ?? 0) + 1);
    }
    const longShare = counts.get("long")! / 2000;
    assert.ok(Math.abs(longShare - 0.8) < 0.04, `long chosen first ${longShare} of the time, expected 8/10`);
  });
});

test("chaining pays when the client is far from nodes that are near each other, not on loopback", () => {
  const route = [
    { peerId: "a", start: 0, end: 4 },
    { peerId: "b", start: 4, end: 8 },
    { peerId: "c", start: 8, end: 12 },
  ];
  const near = [span("a", 0, 4, { nextPings: { b: 0.002 } }), span("b", 4, 8, { nextPings: { c: 0.002 } }), span("c", 8, 12)];
  const farClient = new Map([
    ["a", 0.08],
    ["b", 0.08],
    ["c", 0.08],
  ]);
  // Each of the 2 pushed hops saves 40 + 40 ms of client legs and costs 1 ms between nodes.
  assert.ok(Math.abs(chainingGain(route, near, farClient) - 2 * (0.08 - 0.001)) < 1e-12);
  const loopback = new Map([
    ["a", 0.0002],
    ["b", 0.0002],
    ["c", 0.0002],
  ]);
  const sameRtt = [span("a", 0, 4, { nextPings: { b: 0.0002 } }), span("b", 4, 8, { nextPings: { c: 0.0002 } }), span("c", 8, 12)];
  assert.ok(chainingGain(route, sameRtt, loopback) < CHAIN_MIN_GAIN_S);
  assert.ok(chainingGain(route, [span("a", 0, 4), span("b", 4, 8), span("c", 8, 12)], loopback) < 0, "unknown node-to-node RTTs count as far");
  assert.equal(chainingGain(route.slice(0, 1), near, farClient), 0, "one hop has nothing to push");
});

test("the per-hop overhead decides between one slow span and two fast ones", () => {
  const records = [
    span("slow", 0, 4, { throughput: 100, inferenceRps: 100 }),
    span("b", 0, 2, { throughput: 1000, inferenceRps: 1000, nextPings: { c: 0.001 } }),
    span("c", 2, 4, { throughput: 1000, inferenceRps: 1000 }),
  ];
  const req = {
    start: 0,
    end: 4,
    needTokens: 16,
    clientRtt: new Map([
      ["slow", 0.001],
      ["b", 0.001],
      ["c", 0.001],
    ]),
  };
  // slow: 4 blocks × 10 ms + one hop; b then c: 4 × 1 ms + 0.5 ms between them + two hops.
  assert.deepEqual(
    minLatencyRoute(records, { ...req, hopOverheadS: 0.05 }).map((h) => h.peerId),
    ["slow"],
  );
  assert.deepEqual(
    minLatencyRoute(records, { ...req, hopOverheadS: 0.0007 }).map((h) => h.peerId),
    ["b", "c"],
  );
});

test("the dashboard shows each node's span and speeds, and flags the weakest and uncovered blocks", () => {
  const info = (peerId: string, start: number, end: number, inferenceRps: number) => ({
    peerId,
    state: "online" as const,
    modelId: "m",
    checkpointHash: "h",
    numBlocks: 6,
    start,
    end,
    inferenceRps,
    forwardRps: 10 * inferenceRps,
    cacheTokensLeft: 4096,
    nextPings: {},
    linkMbps: 0,
    version: "v",
    expiresAt: 0,
  });
  const text = renderSwarm({
    modelId: "m",
    numBlocks: 6,
    nodes: [
      { info: { ...info("12D3KooWAAAAAAbbbbbb", 0, 3, 300), nextPings: { "12D3KooWCCCCCCdddddd": 0.002 }, linkMbps: 940 }, rtt: 0.004 },
      { info: info("12D3KooWCCCCCCdddddd", 3, 5, 100) },
    ],
    barWidth: 30,
  });
  const lines = text.split("\n");
  assert.match(lines[0]!, /2 nodes online, 6 blocks/);
  assert.match(text, /…bbbbbb +\[0, 3\) +300 +3000 +4096 +4\.00 +940 +…dddddd 2\.00/);
  const bars = lines.filter((l) => l.startsWith("block "));
  assert.equal(bars.length, 6);
  assert.equal((bars[0]!.match(/█/g) ?? []).length, 30, "the strongest block fills the bar");
  assert.equal((bars[3]!.match(/█/g) ?? []).length, 10);
  assert.match(bars[3]!, /weakest/);
  assert.match(bars[5]!, /NO SERVER/);
});
