// Our length-prefixed framing (src/swarm/framing.ts): bounded against endless or oversized length
// prefixes, stalled messages and many large ones at once; the same bytes on the wire as
// @libp2p/utils' lpStream, so both ends interoperate. In-memory stream pairs, and one real
// tcp + noise + yamux connection for backpressure.
import "../src/swarm/node20.js";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import v8 from "node:v8";
import vm from "node:vm";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import type { Stream } from "@libp2p/interface";
import { tcp } from "@libp2p/tcp";
import { lpStream, streamPair } from "@libp2p/utils";
import { createLibp2p } from "libp2p";
import { ByteBudget, EndOfStreamError, framed, type FramingOptions, guardFrames, varintLength } from "../src/swarm/framing.js";
import { framedStream, MAX_MESSAGE_BYTES } from "../src/swarm/protocol.js";
import { ProtocolError } from "../src/wire/errors.js";

const MiB = 1 << 20;

/** An in-memory stream pair, and a reader on the inbound end with its own budget. */
async function pair(opts: Partial<FramingOptions> = {}) {
  const [outbound, inbound] = await streamPair();
  const budget = opts.budget ?? new ByteBudget(64 * MiB);
  const reader = framed(inbound, { maxBytes: 16 * MiB, ...opts, budget });
  return { outbound, inbound, budget, reader };
}

/** The unsigned varint of `n`, written independently of the code under test. */
function varint(n: number): number[] {
  const out: number[] = [];
  for (; n >= 128; n = Math.floor(n / 128)) out.push((n % 128) | 128);
  out.push(n);
  return out;
}

function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return out;
}

async function send(stream: Stream, bytes: Uint8Array | number[]): Promise<void> {
  if (!stream.send(bytes instanceof Uint8Array ? bytes : Uint8Array.from(bytes))) await stream.onDrain();
}

/** Aborts after `ms` (unlike AbortSignal.timeout, its timer keeps the test's event loop alive). */
function abortAfter(ms: number): AbortSignal {
  const controller = new AbortController();
  setTimeout(() => controller.abort(), ms);
  return controller.signal;
}

function protocolError(code: string) {
  return (e: unknown) => e instanceof ProtocolError && e.code === code;
}

async function eventually(check: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

test("an endless 0xff length prefix fails at the first byte beyond what the cap needs, in well under a second", async () => {
  // One byte at a time: the reader gives up on the 4th continuation byte (128 MiB needs 4).
  {
    const { outbound, inbound, reader } = await pair({ maxBytes: MAX_MESSAGE_BYTES });
    assert.equal(varintLength(MAX_MESSAGE_BYTES), 4);
    let failed: unknown;
    reader.read().catch((e: unknown) => (failed = e));
    let sent = 0;
    while (!failed && sent < 100) {
      await send(outbound, [0xff]);
      sent++;
      await eventually(() => inbound.readBufferLength === 0, "the byte to be taken");
      await sleep(5);
    }
    assert.ok(protocolError("BAD_LENGTH")(failed), String(failed));
    assert.equal(sent, 4, "no byte is read past the 4th");
    await eventually(() => inbound.status === "aborted", "the stream to be aborted");
  }
  // A peer pouring 0xff as fast as it can: the stream is reset after a bounded amount.
  {
    const { outbound, budget, reader } = await pair({ maxBytes: MAX_MESSAGE_BYTES });
    const t0 = performance.now();
    const read = reader.read();
    const chunk = new Uint8Array(64 << 10).fill(0xff);
    let sent = 0;
    const pour = (async () => {
      while (outbound.writeStatus === "writable" && sent < 256 * MiB) {
        await send(outbound, chunk).catch((e: Error) => assert.ok(e instanceof Error));
        sent += chunk.byteLength;
        await new Promise((r) => setImmediate(r));
      }
    })();
    await assert.rejects(read, protocolError("BAD_LENGTH"));
    const ms = performance.now() - t0;
    await pour;
    assert.ok(ms < 1000, `failed after ${ms.toFixed(0)} ms`);
    assert.ok(sent <= 4 * MiB, `the peer got ${sent} bytes in before its stream was reset`);
    assert.equal(budget.used, 0);
    await assert.rejects(reader.read(), protocolError("BAD_LENGTH"), "later reads fail the same way");
  }
});

test("a declared length over the cap is refused from the prefix alone, before any payload is reserved or read", async () => {
  const reserved: number[] = [];
  class Spy extends ByteBudget {
    override tryReserve(bytes: number): boolean {
      reserved.push(bytes);
      return super.tryReserve(bytes);
    }
  }
  // A complete prefix one byte over the cap, and no payload at all.
  {
    const { outbound, inbound, reader } = await pair({ maxBytes: 1000, budget: new Spy(10 * MiB) });
    const read = reader.read();
    await send(outbound, varint(1001));
    await assert.rejects(read, protocolError("TOO_LARGE"));
    await eventually(() => inbound.status === "aborted", "the stream to be aborted");
  }
  // A prefix longer than the cap needs (2 bytes for 1000): refused at its 2nd byte.
  {
    const { outbound, reader } = await pair({ maxBytes: 1000 });
    const read = reader.read();
    await send(outbound, [0x81, 0x81]);
    await assert.rejects(read, protocolError("BAD_LENGTH"));
  }
  // The node's cap: 128 MiB + 1 announced, the payload following, refused before it is taken.
  {
    const [outbound, inbound] = await streamPair();
    const lp = framedStream(inbound, { budget: new Spy(512 * MiB) });
    const read = lp.read();
    await send(outbound, [...varint(MAX_MESSAGE_BYTES + 1), ...new Uint8Array(1000)]);
    await assert.rejects(read, protocolError("TOO_LARGE"));
  }
  // Exactly the cap is fine.
  {
    const { outbound, reader } = await pair({ maxBytes: 1000, budget: new Spy(10 * MiB) });
    const read = reader.read();
    await send(outbound, [...varint(1000), ...pattern(1000, 1)]);
    assert.deepEqual(await read, pattern(1000, 1));
  }
  assert.deepEqual(reserved, [1000], "only the message within the cap reserved anything");
});

test("a stalled partial message times out on a deadline that grows with its size, and its reservation is released", async () => {
  // Payload stalled: 2 MiB at 4 MiB/s gets 100 ms + 500 ms.
  {
    const { outbound, inbound, budget, reader } = await pair({ timeoutBaseMs: 100, minBytesPerSecond: 4 * MiB });
    const t0 = performance.now();
    const read = reader.read();
    let error: unknown;
    read.catch((e: unknown) => (error = e));
    await send(outbound, [...varint(2 * MiB), ...new Uint8Array(100_000)]);
    await eventually(() => budget.used === 2 * MiB, "the message's reservation");
    await sleep(300);
    assert.equal(error, undefined, "still within its deadline after the base timeout");
    assert.equal(budget.used, 2 * MiB);
    await assert.rejects(read, protocolError("TIMEOUT"));
    const ms = performance.now() - t0;
    assert.ok(ms >= 550 && ms < 3000, `timed out after ${ms.toFixed(0)} ms`);
    assert.equal(budget.used, 0, "the budget is full again");
    await eventually(() => inbound.status === "aborted" && outbound.status !== "open", "both ends to be reset");
  }
  // Prefix stalled: one continuation byte, then nothing.
  {
    const { outbound, budget, reader } = await pair({ timeoutBaseMs: 100 });
    const read = reader.read();
    await send(outbound, [0x80]);
    await assert.rejects(read, protocolError("TIMEOUT"));
    assert.equal(budget.used, 0);
  }
  // An idle stream (no byte of a next message) has no deadline.
  {
    const { outbound, reader } = await pair({ timeoutBaseMs: 50 });
    const read = reader.read();
    await sleep(200);
    await send(outbound, [1, 42]);
    assert.deepEqual(await read, Uint8Array.of(42));
  }
});

test("the shared budget refuses a message that does not fit (BUSY: skipped, the stream goes on) and recovers when memory is released", async () => {
  const budget = new ByteBudget(1 * MiB);
  const a = await pair({ budget });
  const b = await pair({ budget });
  const c = await pair({ budget });
  // A holds 768 KiB while its message comes in.
  const readA = a.reader.read();
  await send(a.outbound, [...varint(768 << 10), ...pattern(300 << 10, 2).subarray(0, 300 << 10)]);
  await eventually(() => budget.used === 768 << 10, "A's reservation");
  // B sends 512 KiB: refused, its payload skipped without being kept, and its stream goes on.
  const t0 = performance.now();
  const refusedB = assert.rejects(b.reader.read(), protocolError("BUSY"));
  await send(b.outbound, [...varint(512 << 10), ...pattern(512 << 10, 4)]);
  await refusedB;
  assert.ok(performance.now() - t0 < 500);
  assert.equal(budget.used, 768 << 10, "B reserved nothing");
  const nextB = b.reader.read();
  await send(b.outbound, [...varint(3), 7, 8, 9]);
  assert.deepEqual(await nextB, Uint8Array.of(7, 8, 9), "B's stream carries its next message");
  // A completes: delivered, released.
  await send(a.outbound, pattern(768 << 10, 2).subarray(300 << 10));
  const got = await readA;
  assert.equal(got.byteLength, 768 << 10);
  assert.deepEqual(got.subarray(300 << 10), pattern(768 << 10, 2).subarray(300 << 10));
  assert.equal(budget.used, 0);
  // And C's 512 KiB now fits.
  const readC = c.reader.read();
  await send(c.outbound, [...varint(512 << 10), ...pattern(512 << 10, 3)]);
  assert.deepEqual(await readC, pattern(512 << 10, 3));
  assert.equal(budget.used, 0);
  // A peer that dies mid-message releases its reservation too.
  const readD = a.reader.read();
  await send(a.outbound, [...varint(900 << 10), ...new Uint8Array(1000)]);
  await eventually(() => budget.used === 900 << 10, "D's reservation");
  a.outbound.abort(new Error("peer gone"));
  await assert.rejects(readD);
  assert.equal(budget.used, 0);
});

test("messages of 0, 1 and several MiB, many back to back and split at odd places round-trip", async () => {
  const { outbound, budget, reader } = await pair();
  const writer = framed(outbound, { maxBytes: 16 * MiB });
  const sizes = [0, 1, 2, 127, 128, 300, 16383, 16384, 65535, 65536, 70_000, 5 * MiB, 0, 1];
  for (const [i, size] of sizes.entries()) {
    const read = reader.read();
    await writer.write(pattern(size, i));
    assert.deepEqual(await read, pattern(size, i), `message ${i} of ${size} bytes`);
  }
  // 300 written before any is read (the reader pauses the stream meanwhile), then read in order.
  const many = Array.from({ length: 300 }, (_, i) => pattern((i * 7919) % 5000, i));
  for (const m of many) await writer.write(m);
  for (const [i, m] of many.entries()) assert.deepEqual(await reader.read(), m, `message ${i}`);
  // Raw wire bytes of several messages cut into chunks of 1, 2, 3, ... bytes: prefixes and payloads split anywhere.
  const messages = [pattern(0, 9), pattern(1, 8), pattern(200, 7), pattern(129, 6), pattern(20_000, 5), pattern(3, 4)];
  const wire = Uint8Array.from(messages.flatMap((m) => [...varint(m.byteLength), ...m]));
  const reads = (async () => {
    const out: Uint8Array[] = [];
    for (let i = 0; i < messages.length; i++) out.push(await reader.read());
    return out;
  })();
  for (let at = 0, size = 1; at < wire.byteLength; at += size, size = (size % 13) + 1) await send(outbound, wire.subarray(at, at + size));
  assert.deepEqual(await reads, messages);
  assert.equal(budget.used, 0);
  // A clean end between messages.
  await writer.write(Uint8Array.of(5));
  await outbound.close();
  assert.deepEqual(await reader.read(), Uint8Array.of(5));
  await assert.rejects(reader.read(), EndOfStreamError);
});

test("a stream ending inside a message, reads aborted idle or mid-message, and no buffer kept after a failure", async () => {
  // Truncated by a clean close.
  {
    const { outbound, budget, reader } = await pair();
    const read = reader.read();
    await send(outbound, [...varint(1000), 1, 2, 3]);
    await eventually(() => budget.used === 1000, "the reservation");
    await outbound.close();
    await assert.rejects(read, protocolError("BAD_LENGTH"));
    assert.equal(budget.used, 0);
  }
  // A read aborted while idle rejects alone; the reader goes on.
  {
    const { outbound, reader } = await pair();
    await assert.rejects(reader.read({ signal: abortAfter(30) }), { name: "AbortError" });
    const read = reader.read();
    await send(outbound, [2, 7, 8]);
    assert.deepEqual(await read, Uint8Array.of(7, 8));
    await assert.rejects(Promise.all([reader.read(), reader.read()]), /already pending/);
  }
  // Aborted mid-message: the stream goes, with the reservation.
  {
    const { outbound, inbound, budget, reader } = await pair();
    const read = reader.read({ signal: abortAfter(100) });
    await send(outbound, [...varint(5000), 1, 2]);
    await assert.rejects(read, { name: "AbortError" });
    assert.equal(budget.used, 0);
    await eventually(() => inbound.status === "aborted", "the stream to be aborted");
  }
  // A 64 MiB message's buffer is freed once its stream is reset (collected after a gc).
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc") as () => void;
  {
    const { outbound, budget, reader } = await pair({ maxBytes: 128 * MiB, budget: new ByteBudget(128 * MiB) });
    // V8 frees array buffers' memory after a collection, concurrently: collect until it settles.
    const settled = async (below?: number) => {
      let last = Infinity;
      for (let i = 0; i < 60; i++) {
        gc();
        await sleep(50);
        const now = process.memoryUsage().arrayBuffers;
        if (below === undefined ? Math.abs(now - last) < MiB / 4 : now < below) return now;
        last = now;
      }
      return last;
    };
    const before = await settled();
    const read = reader.read();
    await send(outbound, [...varint(64 * MiB), ...new Uint8Array(1 * MiB)]);
    await eventually(() => budget.used === 64 * MiB, "the reservation");
    assert.ok(process.memoryUsage().arrayBuffers - before >= 64 * MiB, "the message's buffer is allocated");
    outbound.abort(new Error("peer gone"));
    await assert.rejects(read);
    const after = await settled(before + 16 * MiB);
    assert.ok(after - before < 16 * MiB, `${((after - before) / MiB).toFixed(1)} MiB still held`);
  }
});

test("interop: our writer to lpStream's reader, lpStream's writer to our reader", async () => {
  const sizes = [0, 1, 300, 70_000, 3 * MiB];
  {
    const [outbound, inbound] = await streamPair();
    const writer = framed(outbound, { maxBytes: 16 * MiB });
    const lp = lpStream(inbound, { maxDataLength: 16 * MiB, maxBufferSize: 32 * MiB });
    for (const [i, size] of sizes.entries()) {
      const read = lp.read();
      await writer.write(pattern(size, i));
      assert.deepEqual((await read).subarray(), pattern(size, i), `${size} bytes, ours → lpStream`);
    }
  }
  {
    const [outbound, inbound] = await streamPair();
    const lp = lpStream(outbound);
    const reader = framed(inbound, { maxBytes: 16 * MiB, budget: new ByteBudget(64 * MiB) });
    for (const [i, size] of sizes.entries()) {
      const read = reader.read();
      await lp.write(pattern(size, i));
      assert.deepEqual(await read, pattern(size, i), `${size} bytes, lpStream → ours`);
    }
  }
});

test("over tcp + yamux: a reader that does not read pauses the peer instead of buffering; an endless prefix is reset", async () => {
  const host = () =>
    createLibp2p({ addresses: { listen: ["/ip4/127.0.0.1/tcp/0"] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] });
  const [a, b] = await Promise.all([host(), host()]);
  try {
    const budget = new ByteBudget(64 * MiB);
    const inbound: Stream[] = [];
    await b.handle("/test/framing", (stream) => void inbound.push(stream));
    // 48 messages of 1 MiB written while the far end reads none.
    const stream = await a.dialProtocol(b.getMultiaddrs()[0]!, "/test/framing");
    await eventually(() => inbound.length === 1, "the inbound stream");
    const reader = framed(inbound[0]!, { maxBytes: 4 * MiB, budget });
    const writer = framed(stream, { maxBytes: 4 * MiB });
    let written = 0;
    const writes = (async () => {
      for (let i = 0; i < 48; i++, written++) await writer.write(pattern(MiB, i));
    })();
    assert.deepEqual(await reader.read(), pattern(MiB, 0));
    await sleep(500);
    assert.ok(written < 8, `the writer was held back (${written} of 48 written)`);
    assert.ok(stream.writeBufferLength <= 2 * MiB, `the writer holds ${stream.writeBufferLength} bytes`);
    assert.ok(inbound[0]!.readBufferLength <= 17 * MiB, `${inbound[0]!.readBufferLength} bytes buffered while paused`);
    for (let i = 1; i < 48; i++) assert.deepEqual(await reader.read(), pattern(MiB, i));
    await writes;
    assert.equal(budget.used, 0);
    await stream.close();
    await assert.rejects(reader.read(), EndOfStreamError);
    // 0xff for ever on a real stream.
    const bad = await a.dialProtocol(b.getMultiaddrs()[0]!, "/test/framing");
    await eventually(() => inbound.length === 2, "the second inbound stream");
    const failure = framed(inbound[1]!, { maxBytes: MAX_MESSAGE_BYTES, budget })
      .read()
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    const chunk = new Uint8Array(64 << 10).fill(0xff);
    let sent = 0;
    while (bad.writeStatus === "writable" && sent < 256 * MiB) {
      await send(bad, chunk).catch((e: Error) => assert.ok(e instanceof Error));
      sent += chunk.byteLength;
      await new Promise((r) => setImmediate(r));
    }
    assert.ok(protocolError("BAD_LENGTH")(await failure));
    assert.ok(sent <= 32 * MiB, `${sent} bytes sent before the reset`);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

test("guardFrames lets another reader's messages through and aborts the stream before that reader sees a bad prefix", async () => {
  for (const [bad, code] of [
    [[0xff, 0xff, 0xff, 0xff], "BAD_LENGTH"],
    [varint(4 * MiB + 1), "TOO_LARGE"],
  ] as const) {
    const [outbound, inbound] = await streamPair();
    const refused: ProtocolError[] = [];
    guardFrames(inbound, 4 * MiB, (e) => refused.push(e));
    const reader = lpStream(inbound);
    const messages = [pattern(0, 1), pattern(5, 2), pattern(3 * MiB, 3)];
    // Split at odd places: prefix bytes and payloads across chunks.
    const wire = Uint8Array.from(messages.flatMap((m) => [...varint(m.byteLength), ...m]));
    for (let at = 0; at < wire.byteLength; at += 100_003) await send(outbound, wire.subarray(at, at + 100_003));
    for (const m of messages) assert.deepEqual((await reader.read()).subarray(), m);
    await send(outbound, [...bad, 1, 2, 3]);
    await assert.rejects(reader.read());
    assert.equal(refused.length, 1);
    assert.equal(refused[0]!.code, code);
    await eventually(() => inbound.status === "aborted", "the stream to be aborted");
  }
});
