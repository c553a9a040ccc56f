// Tensor frames and the dynamic blockwise 8-bit codec.
import assert from "node:assert/strict";
import { test } from "node:test";
import { BLOCK_SIZE, DYNAMIC_CODE } from "../src/wire/blockwise8.js";
import { ProtocolError } from "../src/wire/errors.js";
import { decodeTensor, encodeTensor, frameBytes } from "../src/wire/tensor-frame.js";

function activations(n: number, seed = 1): Float32Array {
  let s = seed;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
  // Mostly small values with a few large outliers, as hidden states look.
  return Float32Array.from({ length: n }, (_, i) => rnd() * (i % 997 === 0 ? 40 : 1.5));
}

test("the dynamic codebook has the documented landmarks", () => {
  assert.equal(DYNAMIC_CODE.length, 256);
  assert.equal(DYNAMIC_CODE[127], 0);
  assert.equal(DYNAMIC_CODE[255], 1);
  assert.ok(Math.abs(DYNAMIC_CODE[254]! - 0.99296874) < 1e-7);
  assert.ok(Math.abs(DYNAMIC_CODE[0]! + 0.99296874) < 1e-7);
  assert.ok(Math.abs(DYNAMIC_CODE[128]! - 5.5e-7) < 1e-12 && Math.abs(DYNAMIC_CODE[126]! + 5.5e-7) < 1e-12);
  let gap = 0;
  for (let i = 1; i < 256; i++) {
    assert.ok(DYNAMIC_CODE[i]! > DYNAMIC_CODE[i - 1]!, "sorted, no duplicates");
    gap = Math.max(gap, DYNAMIC_CODE[i]! - DYNAMIC_CODE[i - 1]!);
  }
  assert.ok(Math.abs(gap - 0.0140625) < 1e-6, `largest gap ${gap}`);
});

test("blockwise8 picks the nearest code value of x / absmax in every block", () => {
  const x = activations(2 * BLOCK_SIZE + 123, 3);
  const frame = encodeTensor(x, [x.length], "blockwise8", { explicitCodebook: true });
  const body = frame.subarray(12);
  const blocks = 3;
  const absmax = new Float32Array(new Uint8Array(body.subarray(16, 16 + 4 * blocks)).buffer);
  const indices = body.subarray(16 + 4 * blocks + 1024);
  for (let i = 0; i < x.length; i += 7) {
    const a = absmax[Math.floor(i / BLOCK_SIZE)]!;
    const v = x[i]! / a;
    let best = 0;
    for (let k = 1; k < 256; k++) if (Math.abs(DYNAMIC_CODE[k]! - v) < Math.abs(DYNAMIC_CODE[best]! - v)) best = k;
    assert.equal(indices[i], best, `element ${i}`);
  }
});

test("round trips: none is exact, f16/bf16 round, blockwise8 stays within 0.71% of each block's absmax", () => {
  const shape = [3, 2, 5000];
  const x = activations(30000);
  assert.deepEqual(decodeTensor(encodeTensor(x, shape, "none")), { data: x, shape, codec: "none" });
  const f16 = decodeTensor(encodeTensor(x, shape, "f16"));
  assert.equal(f16.codec, "f16");
  for (let i = 0; i < x.length; i++) assert.ok(Math.abs(f16.data[i]! - x[i]!) <= Math.abs(x[i]!) * 2 ** -11 + 1e-7);
  const bf16 = decodeTensor(encodeTensor(x, shape, "bf16"));
  for (let i = 0; i < x.length; i++) assert.ok(Math.abs(bf16.data[i]! - x[i]!) <= Math.abs(x[i]!) * 2 ** -8 + 1e-7);
  for (const explicitCodebook of [false, true]) {
    const q = decodeTensor(encodeTensor(x, shape, "blockwise8", { explicitCodebook }));
    assert.deepEqual(q.shape, shape);
    for (let b = 0; b * BLOCK_SIZE < x.length; b++) {
      const block = x.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE);
      const absmax = Math.max(...block.map(Math.abs));
      for (let i = 0; i < block.length; i++) {
        assert.ok(Math.abs(q.data[b * BLOCK_SIZE + i]! - block[i]!) <= 0.0071 * absmax, `block ${b} element ${i}`);
      }
    }
  }
});

test("frame sizes follow the formula; blockwise8 is ≥ 3.9x smaller than f32 for a hidden state", () => {
  for (const [n, shape] of [
    [4096, [1, 1, 4096]],
    [8 * 4096, [1, 8, 4096]],
    [100, [100]],
  ] as const) {
    const x = activations(n);
    for (const codec of ["none", "f16", "bf16", "blockwise8"] as const) {
      assert.equal(encodeTensor(x, shape, codec).byteLength, frameBytes(n, shape.length, codec), `${codec} ${n}`);
    }
  }
  // The design's worked example: one decode token at d = 4096 → a 4116-byte body (5140 with the codebook).
  assert.equal(frameBytes(4096, 1, "blockwise8") - 12, 4116);
  assert.equal(frameBytes(4096, 1, "blockwise8", true) - 12, 5140);
  const ratio = frameBytes(8 * 4096, 3, "none") / frameBytes(8 * 4096, 3, "blockwise8");
  assert.ok(ratio >= 3.9, `ratio ${ratio}`);
});

test("zero blocks and empty tensors encode and decode", () => {
  const zeros = new Float32Array(5000);
  assert.deepEqual(decodeTensor(encodeTensor(zeros, [5000], "blockwise8")).data, zeros);
  assert.deepEqual(decodeTensor(encodeTensor(new Float32Array(0), [0, 16], "none")).shape, [0, 16]);
});

test("non-finite values are refused on both sides", () => {
  assert.throws(() => encodeTensor(Float32Array.of(1, NaN), [2], "blockwise8"), { name: "ProtocolError", code: "NON_FINITE_TENSOR" });
  const frame = encodeTensor(Float32Array.of(1, 2), [2], "none");
  new DataView(frame.buffer).setFloat32(12, Infinity, true);
  assert.throws(() => decodeTensor(frame), { code: "NON_FINITE_TENSOR" });
});

test("malformed frames fail with typed errors naming what was wrong", () => {
  const good = encodeTensor(activations(5000), [5, 1000], "blockwise8");
  const mutate = (f: (b: Uint8Array, v: DataView) => void) => {
    const b = new Uint8Array(good);
    f(b, new DataView(b.buffer));
    return b;
  };
  const cases: [Uint8Array, string][] = [
    [good.subarray(0, 5), "BAD_LENGTH"],
    [good.subarray(0, good.length - 1), "BAD_LENGTH"],
    [mutate((b) => (b[0] = 0)), "BAD_MAGIC"],
    [mutate((b) => (b[1] = 2)), "BAD_VERSION"],
    [mutate((b) => (b[2] = 9)), "BAD_DTYPE"],
    [mutate((b) => (b[3] = 7)), "BAD_CODEC"],
    [mutate((b) => (b[4] = 200)), "BAD_SHAPE"],
    [mutate((b) => (b[5] = 1)), "BAD_CODEBOOK"],
    [mutate((_, v) => v.setUint32(8, 0xffffffff, true)), "TOO_LARGE"],
    [mutate((_, v) => v.setUint32(8, 6, true)), "BAD_LENGTH"],
    [mutate((_, v) => v.setBigInt64(16, 7n, true)), "BAD_LENGTH"],
    [mutate((_, v) => v.setFloat32(32, -1, true)), "NON_FINITE_TENSOR"],
  ];
  for (const [frame, code] of cases) {
    assert.throws(
      () => decodeTensor(frame),
      (e: unknown) => e instanceof ProtocolError && e.code === code,
      `expected ${code}`,
    );
  }
  assert.throws(() => decodeTensor(good, { maxElements: 4999 }), { code: "TOO_LARGE" });
});

test("random garbage never escapes as anything but a ProtocolError", () => {
  let s = 99;
  const byte = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 24;
  const base = encodeTensor(activations(300), [300], "blockwise8");
  for (let trial = 0; trial < 2000; trial++) {
    const frame = trial % 2 ? Uint8Array.from({ length: byte() }, byte) : base.map((b) => (byte() < 8 ? byte() : b));
    try {
      decodeTensor(frame);
    } catch (e) {
      assert.ok(e instanceof ProtocolError, `trial ${trial}: ${String(e)}`);
    }
  }
});
