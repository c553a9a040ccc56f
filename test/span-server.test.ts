// The span server as plain code over the engine interface: driven here by a stand-in runtime
// whose "hidden states" count the blocks they went through, so every decision (KV reservation,
// typed refusals, step order and dedupe, rollback, idle close, sub-ranges, moves) is visible
// without ONNX Runtime or a network.
import assert from "node:assert/strict";
import { test } from "node:test";
import { type ForwardInput, type ForwardOutput, SessionError, type SpanRuntime, type SpanSession } from "../src/engine/interface.js";
import { CONTENTION_WINDOW_MS, MAX_QUEUED_PUSHES, type ServerSession, SpanServer, type SpanServerOptions, type StepOutcome } from "../src/swarm/span-server.js";
import { decodeTensor } from "../src/wire/tensor-frame.js";

const HIDDEN = 4;
const VOCAB = 8;
const BLOCKS = 6;

/** Each block adds 1 to every hidden value; the head puts the sum of the last row into logit 0. */
function standIn(start: number, end: number, released: string[]): SpanRuntime {
  const span = { start, end, embed: start === 0, head: end === BLOCKS };
  return {
    span,
    maxSequence: 64,
    kvBytesPerToken: 8,
    openSession(maxLength: number): SpanSession {
      let length = 0;
      return {
        get length() {
          return length;
        },
        maxLength,
        async forward(input: ForwardInput): Promise<ForwardOutput> {
          const rows = span.embed ? (input.tokens?.length ?? 0) : (input.hidden?.length ?? 0) / HIDDEN;
          if (length + rows > maxLength) throw new SessionError("session full");
          const h = span.embed ? Float32Array.from({ length: rows * HIDDEN }, () => 0) : Float32Array.from(input.hidden!);
          for (let i = 0; i < h.length; i++) h[i]! += end - start;
          length += rows;
          if (!span.head) return { hidden: h };
          const logits = new Float32Array(VOCAB);
          logits[0] = h[h.length - 1]!;
          return { logits };
        },
        truncate(position: number) {
          length = position;
        },
        close() {},
      };
    },
    async release() {
      released.push(`${start}:${end}`);
    },
  };
}

async function server(opts: Partial<SpanServerOptions> = {}) {
  const loads: string[] = [];
  const released: string[] = [];
  let now = 1000;
  const s = await SpanServer.create({
    numBlocks: BLOCKS,
    hiddenSize: HIDDEN,
    vocabSize: VOCAB,
    start: 2,
    end: 6,
    maxSessionLength: 32,
    cacheTokens: 100,
    idleTimeoutMs: 60_000,
    load: async (a, b) => {
      loads.push(`${a}:${b}`);
      return standIn(a, b, released);
    },
    now: () => now,
    ...opts,
  });
  return { s, loads, released, tick: (ms: number) => (now += ms) };
}

const owner = (closed: string[] = []) => ({ closed: (code: string) => void closed.push(code) });

async function open(s: SpanServer, start: number, end: number, maxLength = 8, sessionId?: string): Promise<ServerSession> {
  const r = await s.open({ start, end, maxLength, codec: "none", sessionId }, owner());
  if (!r.ok) throw new Error(`${r.code}: ${r.message}`);
  return r.session;
}

async function step(
  s: SpanServer,
  session: ServerSession,
  stepId: number,
  rows: number,
  startFromPosition = session.engine.length,
  pushed = false,
): Promise<StepOutcome> {
  let got: StepOutcome | undefined;
  const hidden = { data: new Float32Array(rows * HIDDEN), shape: [1, rows, HIDDEN] };
  await s.step(session, { stepId, startFromPosition, allLogits: false, hidden }, async (o) => void (got = o), pushed);
  assert.ok(got, "every step is answered");
  return got;
}

test("opens are typed: a span the server lacks is BAD_SPAN, no KV room is CACHE_FULL, and the reservation is freed on close", async () => {
  const { s } = await server();
  assert.deepEqual(await s.open({ start: 1, end: 4, maxLength: 8, codec: "none" }, owner()), {
    ok: false,
    code: "BAD_SPAN",
    message: "this node serves blocks [2, 6), not [1, 4)",
  });
  const big = await open(s, 2, 6, 24); // 96 of 100 token-blocks
  const refused = await s.open({ start: 2, end: 6, maxLength: 8, codec: "none" }, owner());
  assert.equal(refused.ok || refused.code, "CACHE_FULL");
  s.close(big);
  assert.equal(s.cacheTokensLeft, 100);
  assert.equal((await s.open({ start: 2, end: 6, maxLength: 8, codec: "none" }, owner())).ok, true);
});

test("a session id is unique while its session is open", async () => {
  const { s } = await server();
  const id = "ab".repeat(16);
  const first = await open(s, 2, 6, 4, id);
  const again = await s.open({ start: 2, end: 6, maxLength: 4, codec: "none", sessionId: id }, owner());
  assert.equal(again.ok || again.code, "BAD_SPAN");
  assert.equal(s.session(id), first);
  s.close(first);
  assert.equal(s.session(id), undefined);
});

test("a step id runs once: the relayed copy of a pushed step is a silent duplicate; any other repeat, id 0 or an id past 2^32-1 gets BAD_STEP", async () => {
  const { s } = await server();
  const session = await open(s, 2, 4);
  const first = await step(s, session, 1, 2, 0, true);
  assert.equal(first.kind, "result");
  assert.deepEqual(await step(s, session, 1, 2), { kind: "duplicate", stepId: 1, raced: true });
  assert.equal(session.engine.length, 2, "the duplicate did not run");
  assert.equal(s.stats.steps, 1);
  assert.equal((await step(s, session, 2, 1)).kind, "result");
  for (const id of [2, 0, 2 ** 32]) {
    const o = await step(s, session, id, 1);
    assert.ok(o.kind === "error" && o.code === "BAD_STEP", `step id ${id}: ${JSON.stringify(o)}`);
  }
  assert.equal(session.engine.length, 3, "refused steps did not run");
  assert.equal((await step(s, session, 7, 1)).kind, "result", "ids may skip ahead");
});

test("one peer holds at most its share of the KV budget; other peers still open", async () => {
  const { s } = await server({ cacheTokens: 400, peerCacheShare: 0.25 });
  const as = (peer: string) => ({ peer, closed: () => undefined });
  const req = { start: 2, end: 6, maxLength: 8, codec: "none" as const }; // 32 token-blocks each
  const mine: ServerSession[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await s.open(req, as("attacker"));
    assert.ok(r.ok);
    mine.push(r.session);
  }
  const fourth = await s.open(req, as("attacker"));
  assert.ok(!fourth.ok && fourth.code === "CACHE_FULL" && /one peer may hold 100/.test(fourth.message), JSON.stringify(fourth));
  assert.equal((await s.open(req, as("honest"))).ok, true);
  s.close(mine[0]!);
  assert.equal((await s.open(req, as("attacker"))).ok, true, "closing frees the peer's share");
});

test("pushes get backpressure: past MAX_QUEUED_PUSHES queued on a session, pushes are refused until the queue drains", async () => {
  const { s } = await server();
  const session = await open(s, 2, 4);
  let hold!: () => void;
  const slow = new Promise<void>((r) => (hold = r));
  const deliveries: Promise<void>[] = [];
  // The first pushed step waits on `slow` in its delivery, so later pushes queue behind it.
  deliveries.push(
    s.step(session, { stepId: 1, startFromPosition: 0, allLogits: false, hidden: { data: new Float32Array(HIDDEN), shape: [1, 1, HIDDEN] } }, () => slow, true),
  );
  let accepted = 1;
  while (s.acceptsPush(session)) {
    accepted++;
    const id = accepted;
    deliveries.push(
      s.step(
        session,
        { stepId: id, startFromPosition: id - 1, allLogits: false, hidden: { data: new Float32Array(HIDDEN), shape: [1, 1, HIDDEN] } },
        async () => undefined,
        true,
      ),
    );
    assert.ok(accepted < 100, "backpressure never came");
  }
  assert.equal(accepted, MAX_QUEUED_PUSHES);
  hold();
  await Promise.all(deliveries);
  assert.ok(s.acceptsPush(session), "the queue drained");
});

/** A stand-in loader whose sessions call `onForward(maxLength, rows)` before each step runs. */
function watchedLoad(onForward: (maxLength: number, rows: number) => Promise<void> | void): SpanServerOptions["load"] {
  return async (a, b) => {
    const rt = standIn(a, b, []);
    return {
      ...rt,
      maxSequence: 64,
      openSession(n: number) {
        const inner = rt.openSession(n);
        return {
          get length() {
            return inner.length;
          },
          maxLength: inner.maxLength,
          forward: async (input: ForwardInput) => {
            await onForward(n, (input.hidden?.length ?? 0) / HIDDEN);
            return inner.forward(input);
          },
          truncate: (p: number) => inner.truncate(p),
          close: () => inner.close(),
        };
      },
    };
  };
}

test("fair scheduling: a peer's long prefill runs in chunks, and another peer's step runs between them", async () => {
  const order: string[] = [];
  const { s } = await server({
    maxSessionLength: 64,
    cacheTokens: 1000,
    prefillChunk: 4,
    load: watchedLoad(async (n, rows) => {
      order.push(`${n}:${rows}`);
      await new Promise((r) => setTimeout(r, 5));
    }),
  });
  order.length = 0;
  const as = (peer: string) => ({ peer, closed: () => undefined });
  const big = await s.open({ start: 2, end: 4, maxLength: 40, codec: "none" }, as("prefiller"));
  const small = await s.open({ start: 2, end: 4, maxLength: 8, codec: "none" }, as("decoder"));
  assert.ok(big.ok && small.ok);
  const long = step(s, big.session, 1, 32);
  await new Promise((r) => setTimeout(r, 1)); // the prefill's first chunk is running
  const short = step(s, small.session, 1, 1);
  const [outLong, outShort] = await Promise.all([long, short]);
  assert.equal(outLong.kind, "result");
  assert.equal(outShort.kind, "result");
  assert.equal(decodeTensor((outLong as { frame: Uint8Array }).frame).shape[1], 32, "the chunks' rows make up the step's output");
  const at = order.indexOf("8:1");
  assert.ok(at > 0 && at <= 2, `the decode step ran after at most two of the prefill's 8 chunks: ${order.join(" ")}`);
});

test("a long step runs in smaller chunks while another peer has used the engine recently, in full chunks otherwise", async () => {
  const sizes: number[] = [];
  let clock = 0;
  const { s } = await server({
    maxSessionLength: 64,
    cacheTokens: 1000,
    prefillChunk: 8,
    contendedChunk: 2,
    now: () => clock,
    load: watchedLoad((_, rows) => {
      sizes.push(rows);
    }),
  });
  const as = (peer: string) => ({ peer, closed: () => undefined });
  const big = await s.open({ start: 2, end: 4, maxLength: 40, codec: "none" }, as("prefiller"));
  const small = await s.open({ start: 2, end: 4, maxLength: 8, codec: "none" }, as("decoder"));
  assert.ok(big.ok && small.ok);
  sizes.length = 0;
  assert.equal((await step(s, big.session, 1, 16)).kind, "result");
  assert.deepEqual(sizes, [8, 8], "alone on the node: full chunks");
  assert.equal((await step(s, small.session, 1, 1)).kind, "result");
  sizes.length = 0;
  clock += 500;
  const out = await step(s, big.session, 2, 6);
  assert.equal(out.kind, "result");
  assert.equal(decodeTensor((out as { frame: Uint8Array }).frame).shape[1], 6);
  assert.deepEqual(sizes, [2, 2, 2], "a decoder stepped 500 ms ago: small chunks");
  sizes.length = 0;
  clock += CONTENTION_WINDOW_MS + 1;
  assert.equal((await step(s, big.session, 3, 8)).kind, "result");
  assert.deepEqual(sizes, [8], "the decoder has been idle longer than the window: full chunks again");
});

test("outputs are encoded frames: hidden states have been through exactly the session's blocks", async () => {
  const { s } = await server();
  const mid = await open(s, 2, 6);
  const out = await step(s, mid, 1, 3);
  assert.ok(out.kind === "result" && !out.hidden, "the span ends with the head: logits");
  const logits = decodeTensor(out.frame).data;
  assert.equal(logits[0], 4, "4 blocks ran");
});

test("a bad step fails alone with BAD_STEP; rollback via startFromPosition works", async () => {
  const { s } = await server();
  const session = await open(s, 2, 4);
  await step(s, session, 1, 3);
  const past = await step(s, session, 2, 1, 9);
  assert.equal(past.kind === "error" && past.code, "BAD_STEP");
  const rolled = await step(s, session, 3, 1, 1);
  assert.equal(rolled.kind, "result");
  assert.equal(session.engine.length, 2, "rolled back to 1, then one token");
});

test("steps of a session are delivered in order, each before the next starts", async () => {
  const { s } = await server();
  const session = await open(s, 2, 4);
  const order: string[] = [];
  const hidden = { data: new Float32Array(HIDDEN), shape: [1, 1, HIDDEN] };
  await Promise.all(
    [1, 2, 3].map((id) =>
      s.step(session, { stepId: id, startFromPosition: id - 1, allLogits: false, hidden }, async (o) => {
        order.push(`start ${o.stepId}`);
        await new Promise((r) => setImmediate(r));
        order.push(`end ${o.stepId}`);
      }),
    ),
  );
  assert.deepEqual(order, ["start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]);
});

test("idle sessions are closed, their owners told IDLE_TIMEOUT, their KV room freed", async () => {
  const { s, tick } = await server();
  const closed: string[] = [];
  const r = await s.open({ start: 2, end: 6, maxLength: 8, codec: "none" }, owner(closed));
  assert.ok(r.ok);
  tick(30_000);
  assert.equal(s.closeIdle(1000 + 59_999), 0, "not idle yet");
  assert.equal(s.closeIdle(1000 + 60_000), 1);
  assert.deepEqual(closed, ["IDLE_TIMEOUT"]);
  assert.equal(s.cacheTokensLeft, 100);
});

test("a sub-range loads its own runtime on first use and releases it with its last session", async () => {
  const { s, loads, released } = await server();
  const a = await open(s, 3, 5);
  const b = await open(s, 3, 5);
  assert.deepEqual(loads, ["2:6", "3:5"], "loaded once for both sessions");
  const out = await step(s, a, 1, 1);
  assert.ok(out.kind === "result" && out.hidden);
  assert.equal(decodeTensor(out.frame).data[0], 2, "2 blocks ran");
  s.close(a);
  assert.deepEqual(released, []);
  s.close(b);
  assert.deepEqual(released, ["3:5"]);
  assert.deepEqual(s.loadedRanges, [[2, 6]]);
});

test("sub-ranges are bounded: past maxSubSpans only the whole span opens", async () => {
  const { s } = await server({ maxSubSpans: 1 });
  await open(s, 3, 5);
  const refused = await s.open({ start: 2, end: 4, maxLength: 4, codec: "none" }, owner());
  assert.equal(refused.ok || refused.code, "CACHE_FULL");
  assert.ok((await s.open({ start: 2, end: 6, maxLength: 4, codec: "none" }, owner())).ok);
});

test("a move hands over: sessions opened before it finish on the old span, released when they close", async () => {
  const { s, released } = await server({ start: 0, end: 2 });
  const before = await open(s, 0, 2);
  await s.moveTo(4);
  assert.deepEqual([s.start, s.end], [4, 6]);
  const refused = await s.open({ start: 0, end: 2, maxLength: 4, codec: "none" }, owner());
  assert.equal(refused.ok || refused.code, "BAD_SPAN", "new sessions only on the new span");
  let got: StepOutcome | undefined;
  await s.step(before, { stepId: 1, startFromPosition: 0, allLogits: false, tokens: [1, 2] }, async (o) => void (got = o));
  assert.equal(got?.kind, "result", "the old session still runs");
  s.close(before);
  assert.deepEqual(released, ["0:2"]);
  await assert.rejects(s.moveTo(5), SessionError);
});

test("a sub-range the engine cannot load fails that open only, and gives its KV room back", async () => {
  const { s } = await server({
    load: async (a, b) => {
      if (a === 3) throw new Error("out of memory");
      return standIn(a, b, []);
    },
  });
  await assert.rejects(s.open({ start: 3, end: 5, maxLength: 8, codec: "none" }, owner()), /out of memory/);
  assert.equal(s.cacheTokensLeft, 100);
  assert.deepEqual(s.loadedRanges, [[2, 6]]);
  assert.ok((await s.open({ start: 2, end: 6, maxLength: 8, codec: "none" }, owner())).ok, "the whole span still opens");
});
