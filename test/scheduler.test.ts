// The node's fair scheduler on its own: start-time fair queuing by tokens of work per peer.
import assert from "node:assert/strict";
import { test } from "node:test";
import { FairScheduler } from "../src/swarm/scheduler.js";

test("a peer's queue of big chunks does not hold back another peer's small steps; equal peers alternate; an idle peer gets no credit", async () => {
  const s = new FairScheduler(1);
  const order: string[] = [];
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const work = (label: string, wait?: Promise<void>) => async () => {
    order.push(label);
    await wait;
  };
  // A's first chunk runs (and holds the engine until the gate opens); then A queues 3 more, B 3 small steps.
  const all = [s.run("A", 128, work("A0", gate))];
  for (let i = 1; i <= 3; i++) all.push(s.run("A", 128, work(`A${i}`)));
  for (let i = 0; i < 3; i++) all.push(s.run("B", 1, work(`B${i}`)));
  assert.equal(s.queued, 6);
  release();
  await Promise.all(all);
  assert.deepEqual(order, ["A0", "B0", "B1", "B2", "A1", "A2", "A3"]);

  // Two peers with equal work alternate, whichever queued first; a peer that was idle starts at the current time.
  order.length = 0;
  let open!: () => void;
  const held = new Promise<void>((r) => (open = r));
  const more = [s.run("C", 10, work("C0", held))];
  for (const [p, i] of [
    ["C", 1],
    ["C", 2],
    ["D", 0],
    ["D", 1],
    ["D", 2],
  ] as const)
    more.push(s.run(p, 10, work(`${p}${i}`)));
  open();
  await Promise.all(more);
  assert.deepEqual(order, ["C0", "D0", "C1", "D1", "C2", "D2"]);
  assert.throws(() => new FairScheduler(0), RangeError);
});

test("concurrency 2 runs two pieces of work at once, never more", async () => {
  const s = new FairScheduler(2);
  let running = 0;
  let most = 0;
  await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      s.run(`p${i % 3}`, 1, async () => {
        running++;
        most = Math.max(most, running);
        await new Promise((r) => setTimeout(r, 2));
        running--;
      }),
    ),
  );
  assert.equal(most, 2);
});

test("a peer is contended while another peer has work waiting or asked for work within the window", async () => {
  const s = new FairScheduler(1);
  assert.equal(s.contended("A", 0, 1000), false, "no one else");
  await s.run("A", 1, async () => undefined, 0);
  assert.equal(s.contended("A", 10, 1000), false, "its own work does not count");
  assert.equal(s.contended("B", 10, 1000), true, "A asked 10 ms ago");
  assert.equal(s.contended("B", 1001, 1000), false, "A has been idle longer than the window");
  // Work waiting counts whatever the time.
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const held = s.run("A", 1, () => gate, 5000);
  const queued = s.run("B", 1, async () => undefined);
  assert.equal(s.contended("A", 99_999, 1000), true, "B is waiting");
  release();
  await Promise.all([held, queued]);
});
