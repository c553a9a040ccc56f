// Checkpoint formats: safetensors, GGUF, numeric codecs and the MatMulNBits repacking.

import assert from "node:assert/strict";
import { mkdtemp, open, readFile, readdir, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import onnxProto from "onnx-proto";
import * as ort from "onnxruntime-node";
import { gguf, ggufTensor, readGguf, readGgufTensor, writeGguf, type GgufTensorInput, type GgufTyped } from "../src/model/gguf.js";
import {
  bf16ArrayToF32,
  bf16ToF32,
  dequantize,
  f16ArrayToF32,
  f16ToF32,
  f32ArrayToBf16,
  f32ArrayToF16,
  f32ToBf16,
  f32ToF16,
  quantizeQ4_0,
  quantizeQ8_0,
} from "../src/model/quant.js";
import { quantizeToMatMulNBits, toMatMulNBits } from "../src/engine/matmul-nbits.js";
import {
  readSafetensors,
  readSafetensorsDir,
  readSafetensorsHeader,
  writeSafetensors,
  writeSafetensorsSharded,
  type SafetensorsInput,
} from "../src/model/safetensors.js";
import { readTensorBytes, readTensorsBytes } from "../src/model/tensor-file.js";
import { CheckpointError, type TensorInfo } from "../src/model/types.js";

let dir: string;
let fileCounter = 0;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "tessera-formats-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});
const tempPath = (name: string) => join(dir, `${fileCounter++}-${name}`);

/** Deterministic pseudo-random floats in [-scale, scale). */
function randomFloats(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
  }
  return out;
}

function randomBytes(n: number, seed: number): Uint8Array {
  const f = randomFloats(n, seed);
  return Uint8Array.from(f, (v) => Math.floor((v + 1) * 128) & 0xff);
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** Asserts `promise` rejects with a CheckpointError whose message names the file, the tensor (if given) and `pattern`. */
async function rejectsCheckpoint(promise: Promise<unknown>, file: string, tensor: string | undefined, pattern: RegExp) {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof CheckpointError, `expected CheckpointError, got ${String(e)}`);
    assert.ok(e.message.includes(file), `message should name ${file}: ${e.message}`);
    if (tensor !== undefined) assert.ok(e.message.includes(`'${tensor}'`), `message should name '${tensor}': ${e.message}`);
    assert.match(e.message, pattern);
    return true;
  });
}

async function patchFile(file: string, position: number, bytes: Uint8Array) {
  const handle = await open(file, "r+");
  await handle.write(bytes, 0, bytes.length, position);
  await handle.close();
}

const u32le = (v: number) => bytesOf(Uint32Array.of(v));
const u64le = (v: bigint) => bytesOf(BigUint64Array.of(v));

// -------------------------------------------------------------------------------------------------

describe("half and bfloat16 conversions", () => {
  test("f32 -> f16 rounds to nearest even and handles subnormals, overflow, inf, nan", () => {
    const cases: [number, number][] = [
      [1, 0x3c00],
      [-2, 0xc000],
      [65504, 0x7bff],
      [65519.99, 0x7bff],
      [65520, 0x7c00], // rounds up to inf
      [1e10, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -24, 0x0001],
      [2 ** -25, 0x0000], // tie, to even (zero)
      [3 * 2 ** -26, 0x0001],
      [3 * 2 ** -25, 0x0002], // 1.5 ulp ties to even 2
      [2 ** -14, 0x0400],
      [1023 * 2 ** -24 + 2 ** -25, 0x0400], // largest subnormal + half ulp ties up into the normals
      [1 + 2 ** -11, 0x3c00], // tie, stays even
      [1 + 3 * 2 ** -11, 0x3c02], // tie, rounds up to even
      [-0, 0x8000],
      [1e-30, 0],
    ];
    for (const [x, bits] of cases) assert.equal(f32ToF16(x), bits, `f32ToF16(${x})`);
    assert.equal(f32ToF16(NaN) & 0x7e00, 0x7e00);
  });

  test("every finite half survives f16 -> f32 -> f16", () => {
    const halves = Uint16Array.from({ length: 65536 }, (_, i) => i).filter((h) => (h & 0x7c00) !== 0x7c00 || (h & 0x3ff) === 0);
    const back = f32ArrayToF16(f16ArrayToF32(halves));
    assert.deepEqual(back, halves);
    assert.equal(f16ToF32(0x0001), 2 ** -24);
    assert.ok(Number.isNaN(f16ToF32(0x7e00)));
  });

  test("bfloat16 rounds to nearest even and round-trips", () => {
    assert.equal(f32ToBf16(1), 0x3f80);
    assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80); // tie to even
    assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82); // tie up to even
    assert.equal(f32ToBf16(3.4e38), 0x7f80); // overflows to inf
    assert.equal(f32ToBf16(NaN) & 0x7fc0, 0x7fc0);
    assert.equal(bf16ToF32(0xc040), -3);
    const words = Uint16Array.from({ length: 65536 }, (_, i) => i).filter((h) => (h & 0x7f80) !== 0x7f80);
    assert.deepEqual(f32ArrayToBf16(bf16ArrayToF32(words)), words);
  });

  test("dequantize F32/F16/BF16 from unaligned bytes", () => {
    const values = Float32Array.of(1.5, -2.25, 1024, 0.099853515625);
    for (const [dtype, encoded] of [
      ["F32", bytesOf(values)],
      ["F16", bytesOf(f32ArrayToF16(values))],
      ["BF16", bytesOf(f32ArrayToBf16(Float32Array.of(1.5, -2.25, 1024, 0.099609375)))],
    ] as const) {
      const unaligned = new Uint8Array(encoded.length + 1).subarray(1);
      unaligned.set(encoded);
      const expected = dtype === "BF16" ? [1.5, -2.25, 1024, 0.099609375] : [...values];
      assert.deepEqual([...dequantize(dtype, unaligned, 4)], expected, dtype);
      assert.deepEqual([...dequantize(dtype, encoded, 4)], expected, `${dtype} aligned`);
    }
  });
});

// -------------------------------------------------------------------------------------------------

/** Three blocks exercising sign handling, roundf ties and the first-largest-magnitude rule. */
function knownQuantInput(): Float32Array {
  const x = new Float32Array(96);
  for (let i = 0; i < 32; i++) x[i] = (((i * 37) % 101) - 50) / 16;
  x.set([127, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5], 32);
  for (let i = 8; i < 32; i++) x[32 + i] = (i - 16) * 3.25;
  for (let i = 0; i < 32; i++) x[64 + i] = i === 0 ? -3 : i === 1 ? 3 : ((i * 13) % 23) / 8 - 1.375;
  return x;
}

// Produced by ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref (ggml-quants.c) on knownQuantInput().
const GGML_Q8_0 =
  "4d2681df3d9af856b41270cd2b89e745a2005ebb1977d53390ee4caa0866c3217fdc003c7f03fd01ff02fe7fe6e9ecf0f3f6f9fd0003070a0d10" +
  "14171a1d2124272a2e310c26817fd61ae62af53a05d015e025f03500cb10db20eb30fbc60bd61ae62af53a05";
const GGML_Q4_0 = "4036e046acf258bd1379df358be046acf268f0cb80888878787878706a696969695958580036509f65aa76bb874c9855a966ba77cb88";

describe("Q8_0 / Q4_0", () => {
  test("quantizers reproduce ggml's reference bytes", () => {
    assert.equal(hex(quantizeQ8_0(knownQuantInput())), GGML_Q8_0);
    assert.equal(hex(quantizeQ4_0(knownQuantInput())), GGML_Q4_0);
  });

  test("all-zero blocks match ggml (Q4_0 stores d = -0) and decode to zero", () => {
    const zeros = new Float32Array(32);
    assert.equal(hex(quantizeQ8_0(zeros)), "00".repeat(34));
    assert.equal(hex(quantizeQ4_0(zeros)), "0080" + "88".repeat(16));
    for (const dtype of ["Q8_0", "Q4_0"] as const) {
      const q = dtype === "Q8_0" ? quantizeQ8_0(zeros) : quantizeQ4_0(zeros);
      assert.ok(
        dequantize(dtype, q, 32).every((v) => v === 0),
        dtype,
      );
    }
  });

  test("dequantization error stays within the block step", () => {
    const x = randomFloats(32 * 512, 11, 3);
    for (let i = 0; i < x.length; i += 97) x[i] = x[i]! * 40; // outliers to vary the block scales
    const q8 = dequantize("Q8_0", quantizeQ8_0(x), x.length);
    const q4 = dequantize("Q4_0", quantizeQ4_0(x), x.length);
    for (let b = 0; b < x.length / 32; b++) {
      const block = x.subarray(b * 32, b * 32 + 32);
      const amax = Math.max(...block.map(Math.abs));
      for (let j = 0; j < 32; j++) {
        const i = b * 32 + j;
        // half a step, plus the f16 rounding of the scale (relative 2^-11, times |q| <= 127)
        assert.ok(Math.abs(q8[i]! - x[i]!) <= (amax / 127) * (0.5 + 127 * 2 ** -11) + 1e-7, `Q8_0 element ${i}`);
        // one step: the value opposite the block maximum can clamp from q = 16 to 15
        assert.ok(Math.abs(q4[i]! - x[i]!) <= (amax / 8) * (1 + 8 * 2 ** -11) + 1e-7, `Q4_0 element ${i}`);
      }
    }
  });

  test("dequantize reads blocks at unaligned addresses", () => {
    const q = quantizeQ8_0(knownQuantInput());
    const shifted = new Uint8Array(q.length + 3).subarray(3);
    shifted.set(q);
    assert.deepEqual(dequantize("Q8_0", shifted, 96), dequantize("Q8_0", q, 96));
  });
});

// -------------------------------------------------------------------------------------------------

/** Decodes MatMulNBits B/scales as ORT's spec describes, with the default zero point 2^(bits-1). */
function decodeMatMulNBits(weight: Uint8Array, scales: Float32Array, n: number, k: number, bits: 4 | 8): Float32Array {
  const out = new Float32Array(n * k);
  const zeroPoint = 2 ** (bits - 1);
  for (let i = 0; i < n * k; i++) {
    const code = bits === 8 ? weight[i]! : (weight[i >> 1]! >> ((i & 1) * 4)) & 0x0f;
    out[i] = (code - zeroPoint) * scales[Math.floor(i / 32)]!;
  }
  return out;
}

function matMulNBitsModel(n: number, k: number, m: number, bits: 4 | 8, weight: Uint8Array, scales: Float32Array): Uint8Array {
  const { onnx } = onnxProto;
  const { INT } = onnx.AttributeProto.AttributeType;
  const { FLOAT, UINT8 } = onnx.TensorProto.DataType;
  const matrix = (rows: number, cols: number) => ({
    tensorType: { elemType: FLOAT, shape: { dim: [{ dimValue: rows }, { dimValue: cols }] } },
  });
  const model = onnx.ModelProto.create({
    irVersion: 10,
    opsetImport: [
      { domain: "", version: 21 },
      { domain: "com.microsoft", version: 1 },
    ],
    graph: {
      name: "matmul_nbits",
      node: [
        {
          opType: "MatMulNBits",
          domain: "com.microsoft",
          input: ["A", "B", "scales"],
          output: ["Y"],
          attribute: [
            { name: "K", type: INT, i: k },
            { name: "N", type: INT, i: n },
            { name: "bits", type: INT, i: bits },
            { name: "block_size", type: INT, i: 32 },
          ],
        },
      ],
      initializer: [
        { name: "B", dataType: UINT8, dims: [n, k / 32, bits * 4], rawData: weight },
        { name: "scales", dataType: FLOAT, dims: [n * (k / 32)], rawData: bytesOf(scales) },
      ],
      input: [{ name: "A", type: matrix(m, k) }],
      output: [{ name: "Y", type: matrix(m, n) }],
    },
  });
  return onnx.ModelProto.encode(model).finish();
}

describe("MatMulNBits repacking", () => {
  const n = 12;
  const k = 96;
  const weights = randomFloats(n * k, 5, 2);
  for (const bits of [4, 8] as const) {
    const dtype = bits === 4 ? "Q4_0" : "Q8_0";
    const stored = bits === 4 ? quantizeQ4_0(weights) : quantizeQ8_0(weights);

    test(`${bits}-bit layout decodes to exactly the GGUF ${dtype} values`, () => {
      const { weight, scales } = toMatMulNBits(dtype, stored, n, k);
      assert.equal(weight.length, (n * k * bits) / 8);
      assert.equal(scales.length, (n * k) / 32);
      assert.deepEqual(decodeMatMulNBits(weight, scales, n, k, bits), dequantize(dtype, stored, n * k));
      const direct = quantizeToMatMulNBits(weights, n, k, bits);
      assert.deepEqual(direct.weight, weight);
      assert.deepEqual(direct.scales, scales);
    });

    test(`ONNX Runtime MatMulNBits (${bits} bits, no zero_points) matches dequantize + matmul`, async () => {
      const m = 3;
      const a = randomFloats(m * k, 9);
      const { weight, scales } = toMatMulNBits(dtype, stored, n, k);
      const session = await ort.InferenceSession.create(matMulNBitsModel(n, k, m, bits, weight, scales));
      const { Y } = await session.run({ A: new ort.Tensor("float32", a, [m, k]) });
      await session.release();
      const y = Y!.data as Float32Array;
      const w = dequantize(dtype, stored, n * k);
      for (let r = 0; r < m; r++) {
        for (let c = 0; c < n; c++) {
          let expected = 0;
          let magnitude = 0;
          for (let i = 0; i < k; i++) {
            expected += a[r * k + i]! * w[c * k + i]!;
            magnitude += Math.abs(a[r * k + i]! * w[c * k + i]!);
          }
          const got = y[r * n + c]!;
          assert.ok(Math.abs(got - expected) <= 1e-5 * magnitude, `Y[${r},${c}] = ${got}, expected ${expected}`);
        }
      }
    });
  }
});

// -------------------------------------------------------------------------------------------------

function sampleTensors(): SafetensorsInput[] {
  return [
    { name: "z.bias", dtype: "F32", shape: [5], bytes: bytesOf(randomFloats(5, 1)) },
    { name: "a.weight", dtype: "F32", shape: [3, 4], bytes: bytesOf(randomFloats(12, 2)) },
    { name: "half", dtype: "F16", shape: [2, 3], bytes: bytesOf(f32ArrayToF16(randomFloats(6, 3))) },
    { name: "brain", dtype: "BF16", shape: [7], bytes: bytesOf(f32ArrayToBf16(randomFloats(7, 4))) },
    { name: "ids", dtype: "I64", shape: [2, 2], bytes: bytesOf(BigInt64Array.of(1n, -2n, 3n, 1n << 40n)) },
    { name: "positions", dtype: "I32", shape: [3], bytes: bytesOf(Int32Array.of(0, -1, 7)) },
    { name: "mask", dtype: "U8", shape: [1, 3], bytes: Uint8Array.of(1, 0, 1) },
    { name: "scalar", dtype: "F32", shape: [], bytes: bytesOf(Float32Array.of(42)) },
    { name: "empty", dtype: "F32", shape: [0, 4], bytes: new Uint8Array(0) },
  ];
}

async function assertSameTensors(read: Map<string, TensorInfo>, written: SafetensorsInput[]) {
  assert.deepEqual([...read.keys()].sort(), written.map((t) => t.name).sort());
  const infos = written.map((t) => read.get(t.name)!);
  const bytes = await readTensorsBytes(infos);
  written.forEach((t, i) => {
    assert.equal(infos[i]!.dtype, t.dtype, t.name);
    assert.deepEqual(infos[i]!.shape, t.shape, t.name);
    assert.deepEqual(bytes[i], t.bytes, t.name);
  });
}

describe("safetensors", () => {
  test("writes the same bytes as the Rust library (its own test vectors)", async () => {
    const file = tempPath("rust-vector.safetensors");
    await writeSafetensors(file, [{ name: "attn.0", dtype: "F32", shape: [1, 2, 3], bytes: bytesOf(Float32Array.of(0, 1, 2, 3, 4, 5)) }]);
    // safetensors/src/tensor.rs, test_serialization
    const expected = [
      64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97,
      112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125,
      0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
    ];
    assert.deepEqual([...(await readFile(file))], expected);

    const empty = tempPath("rust-empty.safetensors");
    await writeSafetensors(empty, [], { framework: "pt" });
    // test_empty: metadata only, header padded with spaces
    assert.equal((await readFile(empty)).toString("latin1"), '(\0\0\0\0\0\0\0{"__metadata__":{"framework":"pt"}}     ');
  });

  test("round trip of every dtype, ordered by descending alignment then name", async () => {
    const file = tempPath("model.safetensors");
    const tensors = sampleTensors();
    await writeSafetensors(file, tensors, { format: "pt", note: "ünïcode" });
    const { tensors: read, metadata } = await readSafetensors(file);
    assert.deepEqual(metadata, { format: "pt", note: "ünïcode" });
    await assertSameTensors(read, tensors);
    const byOffset = [...read.values()].sort((a, b) => a.offset - b.offset || a.name.localeCompare(b.name)).map((t) => t.name);
    assert.deepEqual(byOffset, ["ids", "a.weight", "empty", "scalar", "z.bias", "positions", "brain", "half", "mask"]);
    const headerLength = Number((await readFile(file)).readBigUInt64LE(0));
    assert.equal(headerLength % 8, 0);
    assert.equal(read.get("ids")!.offset, 8 + headerLength);
  });

  test("sharded folder: shards, index as transformers writes it, and reading it back", async () => {
    const folder = tempPath("sharded");
    const tensors = sampleTensors();
    const files = await writeSafetensorsSharded(folder, tensors, 40);
    assert.deepEqual((await readdir(folder)).sort(), [...[1, 2, 3, 4, 5].map((i) => `model-0000${i}-of-00005.safetensors`), "model.safetensors.index.json"]);
    assert.equal(files.length, 6);
    const index = await readFile(join(folder, "model.safetensors.index.json"), "utf8");
    const totalSize = tensors.reduce((s, t) => s + t.bytes.length, 0);
    // json.dumps(index, indent=2, sort_keys=True) + "\n". Filled in order; a.weight (48 bytes) exceeds 40 and
    // gets its own shard at once, ahead of the shard being filled (huggingface_hub does the same).
    assert.equal(
      index,
      `{\n  "metadata": {\n    "total_size": ${totalSize}\n  },\n  "weight_map": {\n` +
        [
          ["a.weight", 1],
          ["brain", 3],
          ["empty", 5],
          ["half", 2],
          ["ids", 4],
          ["mask", 5],
          ["positions", 5],
          ["scalar", 5],
          ["z.bias", 2],
        ]
          .map(([name, shard]) => `    "${name}": "model-0000${shard}-of-00005.safetensors"`)
          .join(",\n") +
        "\n  }\n}\n",
    );
    await assertSameTensors(await readSafetensorsDir(folder), tensors);
    const { metadata } = await readSafetensors(join(folder, "model-00001-of-00005.safetensors"));
    assert.deepEqual(metadata, { format: "pt" });
  });

  test("sharded writer emits a single model.safetensors when everything fits", async () => {
    const folder = tempPath("single");
    const tensors = sampleTensors();
    await writeSafetensorsSharded(folder, tensors, 1 << 20);
    assert.deepEqual(await readdir(folder), ["model.safetensors"]);
    await assertSameTensors(await readSafetensorsDir(folder), tensors);
  });

  /** A valid two-tensor file and the offsets of its parts, for corrupting. */
  async function validFile(): Promise<{ file: string; header: string }> {
    const file = tempPath("victim.safetensors");
    await writeSafetensors(file, [
      { name: "first", dtype: "F32", shape: [2, 2], bytes: bytesOf(randomFloats(4, 1)) },
      { name: "second", dtype: "F32", shape: [3], bytes: bytesOf(randomFloats(3, 2)) },
    ]);
    const bytes = await readFile(file);
    return { file, header: bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString() };
  }

  async function withHeader(json: string, dataBytes = 64): Promise<string> {
    const file = tempPath("crafted.safetensors");
    const header = Buffer.from(json);
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(header.length));
    await writeFile(file, Buffer.concat([length, header, Buffer.alloc(dataBytes)]));
    return file;
  }

  test("truncated file: tensor data past the end names the tensor", async () => {
    const { file } = await validFile();
    const size = (await readFile(file)).length;
    await truncate(file, size - 4);
    await rejectsCheckpoint(readSafetensorsHeader(file), file, "second", /past the end of the file/);
  });

  test("short read of tensor bytes names file and tensor", async () => {
    const { file } = await validFile();
    const info = (await readSafetensorsHeader(file)).get("first")!;
    await truncate(file, info.offset + 3);
    await rejectsCheckpoint(readTensorBytes(info), file, "first", /truncated file: expected 16 bytes/);
  });

  test("header length past the end of the file, or absurd", async () => {
    const file = await withHeader("{}");
    await patchFile(file, 0, u64le(1000n));
    await rejectsCheckpoint(readSafetensorsHeader(file), file, undefined, /header length 1000 runs past the end of the file/);
    await patchFile(file, 0, u64le(1n << 60n));
    await rejectsCheckpoint(readSafetensorsHeader(file), file, undefined, /exceeds the 100000000-byte limit/);
    const tiny = tempPath("tiny.safetensors");
    await writeFile(tiny, Buffer.alloc(5));
    await rejectsCheckpoint(readSafetensorsHeader(tiny), tiny, undefined, /too short/);
  });

  test("header that lies about sizes, overlaps or dtypes", async () => {
    const cases: [string, string, RegExp][] = [
      ['{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}', "w", /needs 24 bytes, but data_offsets \[0, 20\] span 20/],
      ['{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}', "b", /overlaps tensor 'a'/],
      ['{"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}', "w", /unsupported dtype "F64"/],
      ['{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}}', "w", /shape must be an array of non-negative integers/],
      ['{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}', "w", /data_offsets must be \[begin, end\]/],
      ['{"w":{"dtype":"F32","shape":[32],"data_offsets":[0,128]}}', "w", /past the end of the file/],
      ['{"w":[1,2]}', "w", /expected an object/],
    ];
    for (const [json, tensor, pattern] of cases) {
      const file = await withHeader(json);
      await rejectsCheckpoint(readSafetensorsHeader(file), file, tensor, pattern);
    }
    const notJson = await withHeader("{not json");
    await rejectsCheckpoint(readSafetensorsHeader(notJson), notJson, undefined, /not valid UTF-8 JSON/);
    const badMetadata = await withHeader('{"__metadata__":{"n":1}}');
    await rejectsCheckpoint(readSafetensorsHeader(badMetadata), badMetadata, undefined, /object of strings/);
  });

  test("writer rejects sizes that do not match shapes and formats it cannot hold", async () => {
    const file = tempPath("bad-write.safetensors");
    await rejectsCheckpoint(writeSafetensors(file, [{ name: "w", dtype: "F32", shape: [2], bytes: new Uint8Array(7) }]), file, "w", /needs 8 bytes, got 7/);
    await rejectsCheckpoint(
      writeSafetensors(file, [{ name: "q", dtype: "Q8_0", shape: [32], bytes: new Uint8Array(34) }]),
      file,
      "q",
      /unsupported dtype Q8_0/,
    );
  });

  test("sharded folder errors: missing shard, tensor missing from a shard or from the index", async () => {
    const make = async () => {
      const folder = tempPath("broken");
      await writeSafetensorsSharded(folder, sampleTensors(), 40);
      return folder;
    };
    let folder = await make();
    const shard = (i: number) => join(folder, `model-0000${i}-of-00005.safetensors`);
    await rm(shard(2));
    await rejectsCheckpoint(readSafetensorsDir(folder), shard(2), "half", /shard file model-00002-of-00005.safetensors listed in the index is missing/);

    folder = await make();
    const indexFile = join(folder, "model.safetensors.index.json");
    const index = JSON.parse(await readFile(indexFile, "utf8"));
    index.weight_map["ghost"] = "model-00001-of-00005.safetensors";
    await writeFile(indexFile, JSON.stringify(index));
    await rejectsCheckpoint(readSafetensorsDir(folder), shard(1), "ghost", /listed in model.safetensors.index.json but not present in the shard/);

    delete index.weight_map["ghost"];
    delete index.weight_map["z.bias"];
    await writeFile(indexFile, JSON.stringify(index));
    await rejectsCheckpoint(readSafetensorsDir(folder), shard(2), "z.bias", /present in the shard but missing from the index/);

    index.weight_map["z.bias"] = "../escape.safetensors";
    await writeFile(indexFile, JSON.stringify(index));
    await rejectsCheckpoint(readSafetensorsDir(folder), indexFile, "z.bias", /must be a file name inside the folder/);

    const nothing = tempPath("nothing");
    await writeSafetensorsSharded(nothing, [], 10).then(() => rm(join(nothing, "model.safetensors")));
    await rejectsCheckpoint(readSafetensorsDir(nothing), nothing, undefined, /no model.safetensors or model.safetensors.index.json/);
  });
});

// -------------------------------------------------------------------------------------------------

const everyMetadataType: Array<[string, GgufTyped]> = [
  ["general.architecture", gguf.str("llama")],
  ["test.u8", gguf.u8(250)],
  ["test.i8", gguf.i8(-120)],
  ["test.u16", gguf.u16(65000)],
  ["test.i16", gguf.i16(-32000)],
  ["test.u32", gguf.u32(4_000_000_000)],
  ["test.i32", gguf.i32(-2_000_000_000)],
  ["test.f32", gguf.f32(0.5)],
  ["test.f64", gguf.f64(Math.PI)],
  ["test.u64", gguf.u64(2n ** 64n - 1n)],
  ["test.i64", gguf.i64(-(2n ** 63n))],
  ["test.bool", gguf.bool(true)],
  ["test.str", gguf.str("héllo ✓ {{ template }}")],
  ["test.empty_str", gguf.str("")],
  ["test.arr_str", gguf.arr("str", ["<s>", "</s>", "Ġthe", "▁a", ""])],
  ["test.arr_i32", gguf.arr("i32", [1, -2, 3])],
  ["test.arr_f32", gguf.arr("f32", [0.25, -1.5])],
  ["test.arr_u32", gguf.arr("u32", [0, 4_294_967_295])],
  ["test.arr_u8", gguf.arr("u8", [1, 2, 255])],
  ["test.arr_bool", gguf.arr("bool", [true, false])],
  ["test.arr_i64", gguf.arr("i64", [-1n, 5n])],
  ["test.arr_empty", gguf.arr("f32", [])],
];

const expectedMetadata: Record<string, unknown> = {
  "general.architecture": "llama",
  "test.u8": 250,
  "test.i8": -120,
  "test.u16": 65000,
  "test.i16": -32000,
  "test.u32": 4_000_000_000,
  "test.i32": -2_000_000_000,
  "test.f32": 0.5,
  "test.f64": Math.PI,
  "test.u64": 2n ** 64n - 1n,
  "test.i64": -(2n ** 63n),
  "test.bool": true,
  "test.str": "héllo ✓ {{ template }}",
  "test.empty_str": "",
  "test.arr_str": ["<s>", "</s>", "Ġthe", "▁a", ""],
  "test.arr_i32": [1, -2, 3],
  "test.arr_f32": [0.25, -1.5],
  "test.arr_u32": [0, 4_294_967_295],
  "test.arr_u8": [1, 2, 255],
  "test.arr_bool": [true, false],
  "test.arr_i64": [-1n, 5n],
  "test.arr_empty": [],
};

function ggufSampleTensors(): Array<GgufTensorInput & { bytes: Uint8Array }> {
  const w = randomFloats(4 * 64, 21);
  return [
    { name: "token_embd.weight", dtype: "F32", shape: [3, 5], bytes: bytesOf(randomFloats(15, 22)) },
    { name: "f16", dtype: "F16", shape: [2, 3], bytes: bytesOf(f32ArrayToF16(randomFloats(6, 23))) },
    { name: "bf16", dtype: "BF16", shape: [5], bytes: bytesOf(f32ArrayToBf16(randomFloats(5, 24))) },
    { name: "blk.0.attn_q.weight", dtype: "Q8_0", shape: [4, 64], bytes: quantizeQ8_0(w) },
    { name: "blk.0.ffn_up.weight", dtype: "Q4_0", shape: [2, 2, 64], bytes: quantizeQ4_0(w) },
    { name: "i32", dtype: "I32", shape: [3], bytes: bytesOf(Int32Array.of(-1, 0, 1)) },
    { name: "i64", dtype: "I64", shape: [1, 2], bytes: bytesOf(BigInt64Array.of(-5n, 1n << 50n)) },
  ];
}

describe("GGUF", () => {
  test("round trip of every metadata type and every dtype", async () => {
    const file = tempPath("model.gguf");
    const tensors = ggufSampleTensors();
    let lazyCalls = 0;
    const inputs = tensors.map((t, i) => (i % 2 ? { ...t, bytes: () => (lazyCalls++, t.bytes) } : t));
    await writeGguf(file, everyMetadataType, inputs);
    assert.equal(lazyCalls, 3);
    const read = await readGguf(file);
    assert.equal(read.version, 3);
    assert.equal(read.alignment, 32);
    assert.deepEqual(Object.fromEntries(read.metadata), expectedMetadata);
    assert.equal(read.unsupportedTensors.size, 0);
    assert.deepEqual(
      [...read.tensors.keys()],
      tensors.map((t) => t.name),
    );
    for (const t of tensors) {
      const info = ggufTensor(read, t.name);
      assert.equal(info.dtype, t.dtype);
      assert.deepEqual(info.shape, t.shape);
      assert.equal((info.offset - read.dataOffset) % 32, 0);
      assert.deepEqual((await readGgufTensor(read, t.name)).bytes, t.bytes, t.name);
    }
    assert.equal(read.dataOffset % 32, 0);
    const last = read.tensors.get("i64")!;
    assert.equal((await readFile(file)).length, last.offset + 32); // 16 bytes + padding to 32
  });

  test("a multi-megabyte vocabulary header crosses the reader's 1 MiB chunks intact", async () => {
    const file = tempPath("vocab.gguf");
    const tokens = Array.from({ length: 120_000 }, (_, i) => (i % 5 === 0 ? `▁wörd${i}` : `t${i}`) + "x".repeat(i % 40));
    const scores = Float32Array.from(tokens, (_, i) => -i / 7);
    const template = "{% for m in messages %}".repeat(20_000); // one string larger than a chunk boundary gap
    await writeGguf(
      file,
      [
        ["tokenizer.ggml.tokens", gguf.arr("str", tokens)],
        ["tokenizer.chat_template", gguf.str(template)],
        ["tokenizer.ggml.scores", gguf.arr("f32", [...scores])],
      ],
      [{ name: "w", dtype: "F32", shape: [2], bytes: bytesOf(Float32Array.of(1, 2)) }],
    );
    const read = await readGguf(file);
    assert.ok(read.dataOffset > 3 << 20);
    assert.deepEqual(read.metadata.get("tokenizer.ggml.tokens"), tokens);
    assert.equal(read.metadata.get("tokenizer.chat_template"), template);
    assert.deepEqual(read.metadata.get("tokenizer.ggml.scores"), [...scores]);
    assert.deepEqual(await readTensorBytes(ggufTensor(read, "w")), bytesOf(Float32Array.of(1, 2)));
  });

  test("node-llama-cpp's GGUF parser reads the same file identically", async () => {
    const { readGgufFileInfo } = await import("node-llama-cpp");
    const file = tempPath("cross.gguf");
    const tensors = ggufSampleTensors();
    await writeGguf(file, everyMetadataType, tensors);
    const theirs = await readGgufFileInfo(file, { logWarnings: false });
    const ours = await readGguf(file);
    assert.equal(theirs.version, 3);
    const ggmlIds: Record<string, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, I32: 26, I64: 27, BF16: 30 };
    assert.deepEqual(
      theirs.tensorInfo!.map((t) => [t.name, t.dimensions.map(Number), t.ggmlType, Number(t.fileOffset)]),
      [...ours.tensors.values()].map((t) => [t.name, [...t.shape].reverse(), ggmlIds[t.dtype], t.offset]),
    );
    const theirTestKeys = (theirs.metadata as unknown as { test: Record<string, unknown> }).test;
    assert.equal(theirTestKeys.str, expectedMetadata["test.str"]);
    assert.deepEqual(theirTestKeys.arr_str, expectedMetadata["test.arr_str"]);
    assert.equal(Number(theirTestKeys.u32), 4_000_000_000);
  });

  test("exact byte layout of a minimal file", async () => {
    const file = tempPath("minimal.gguf");
    const weight = bytesOf(Float32Array.of(1, 2, 3, 4, 5, 6));
    await writeGguf(file, [["a", gguf.u32(7)]], [{ name: "w", dtype: "F32", shape: [2, 3], bytes: weight }]);
    const expectedHeader = Buffer.concat([
      Buffer.from("GGUF"),
      u32le(3),
      u64le(1n), // tensors
      u64le(1n), // metadata pairs
      u64le(1n),
      Buffer.from("a"),
      u32le(4),
      u32le(7), // "a": u32 7
      u64le(1n),
      Buffer.from("w"),
      u32le(2),
      u64le(3n),
      u64le(2n),
      u32le(0),
      u64le(0n), // ne = [3, 2], F32, offset 0
    ]);
    const bytes = await readFile(file);
    assert.equal(hex(bytes.subarray(0, expectedHeader.length)), hex(expectedHeader));
    assert.equal(bytes.length, 96 + 32); // 82-byte header padded to 96, 24 data bytes padded to 32
    assert.deepEqual(bytes.subarray(96, 120), Buffer.from(weight));
    assert.ok(bytes.subarray(expectedHeader.length, 96).every((b) => b === 0));
  });

  test("honours general.alignment", async () => {
    const file = tempPath("aligned.gguf");
    const tensors = ggufSampleTensors();
    await writeGguf(file, [["general.alignment", gguf.u32(64)]], tensors);
    const read = await readGguf(file);
    assert.equal(read.alignment, 64);
    for (const info of read.tensors.values()) assert.equal(info.offset % 64, 0);
    const bytes = await readTensorsBytes([...read.tensors.values()]);
    assert.deepEqual(
      bytes,
      tensors.map((t) => t.bytes),
    );
    await rejectsCheckpoint(writeGguf(tempPath("x.gguf"), [["general.alignment", gguf.u32(48)]], []), ".gguf", undefined, /power of two/);
  });

  test("tensors of unsupported ggml types are listed and fail only when used", async () => {
    const file = tempPath("q4k.gguf");
    await writeGguf(
      file,
      [],
      [
        { name: "exotic", dtype: "F32", shape: [256], bytes: new Uint8Array(1024) },
        { name: "plain", dtype: "F32", shape: [2], bytes: new Uint8Array(8) },
      ],
    );
    // Retype "exotic" to Q4_K (ggml id 12): 256 elements in one 144-byte block.
    const typeAt = 24 + 8 + "exotic".length + 4 + 8;
    await patchFile(file, typeAt, u32le(12));
    const read = await readGguf(file);
    assert.deepEqual([...read.tensors.keys()], ["plain"]);
    assert.deepEqual(read.unsupportedTensors.get("exotic"), {
      name: "exotic",
      ggmlType: 12,
      ggmlTypeName: "Q4_K",
      shape: [256],
      offset: read.dataOffset,
      byteLength: 144,
      file,
    });
    assert.throws(
      () => ggufTensor(read, "exotic"),
      (e: unknown) => {
        assert.ok(e instanceof CheckpointError);
        assert.match(e.message, new RegExp(`${file}: tensor 'exotic': ggml type 12 \\(Q4_K\\) is not supported`));
        return true;
      },
    );
    assert.throws(() => ggufTensor(read, "missing"), /tensor 'missing': no such tensor/);
  });

  describe("bad files", () => {
    /** A valid file: one u32 metadata pair "k", then tensors "first" (Q8_0 [2, 32]) and "second" (F32 [4]). */
    async function validGguf(): Promise<string> {
      const file = tempPath("victim.gguf");
      await writeGguf(
        file,
        [["k", gguf.u32(1)]],
        [
          { name: "first", dtype: "Q8_0", shape: [2, 32], bytes: quantizeQ8_0(randomFloats(64, 3)) },
          { name: "second", dtype: "F32", shape: [4], bytes: new Uint8Array(16) },
        ],
      );
      return file;
    }
    const KEY_LENGTH_AT = 24;
    const FIRST_INFO_AT = 24 + 8 + 1 + 4 + 4; // after the "k" pair
    const FIRST_NE0_AT = FIRST_INFO_AT + 8 + "first".length + 4;
    const FIRST_OFFSET_AT = FIRST_NE0_AT + 16 + 4;
    const SECOND_OFFSET_AT = FIRST_OFFSET_AT + 8 + 8 + "second".length + 4 + 8 + 4;

    test("wrong magic and unsupported versions", async () => {
      const file = await validGguf();
      await patchFile(file, 0, Buffer.from("GGML"));
      await rejectsCheckpoint(readGguf(file), file, undefined, /bad magic "GGML", expected "GGUF"/);
      await patchFile(file, 0, Buffer.from("GGUF"));
      await patchFile(file, 4, u32le(1));
      await rejectsCheckpoint(readGguf(file), file, undefined, /unsupported GGUF version 1 \(GGUF v1 is obsolete\)/);
      await patchFile(file, 4, u32le(0x03000000));
      await rejectsCheckpoint(readGguf(file), file, undefined, /big-endian/);
      await patchFile(file, 4, u32le(2));
      assert.equal((await readGguf(file)).version, 2);
    });

    test("absurd counts and lengths fail fast", async () => {
      const cases: [number, Uint8Array, RegExp][] = [
        [8, u64le(10n ** 12n), /tensor count is 1000000000000, at most \d+ is possible/],
        [16, u64le(1n << 62n), /metadata count is \d+, at most \d+ is possible/],
        [KEY_LENGTH_AT, u64le(10n * 2n ** 30n), /metadata key #0 length is 10737418240, at most \d+ is possible/],
      ];
      for (const [at, bytes, pattern] of cases) {
        const file = await validGguf();
        await patchFile(file, at, bytes);
        const started = Date.now();
        await rejectsCheckpoint(readGguf(file), file, undefined, pattern);
        assert.ok(Date.now() - started < 1000);
      }
      const file = tempPath("huge-array.gguf");
      await writeGguf(file, [["arr", gguf.arr("str", ["a"])]], []);
      await patchFile(file, 24 + 8 + 3 + 4 + 4, u64le(1n << 40n));
      await rejectsCheckpoint(readGguf(file), file, undefined, /element count of array 'arr' is 1099511627776/);
    });

    test("truncated header and truncated tensor data", async () => {
      let file = await validGguf();
      await truncate(file, SECOND_OFFSET_AT);
      await rejectsCheckpoint(readGguf(file), file, "second", /truncated header: shape, type and offset needs 20 bytes at offset 104, only 12 left/);
      file = await validGguf();
      const size = (await readFile(file)).length;
      await truncate(file, size - 20);
      await rejectsCheckpoint(readGguf(file), file, "second", /F32 \[4\] needs bytes \[\d+, \d+\), past the end of the file/);
    });

    test("shapes inconsistent with the block size, misaligned or overlapping data, too many dims", async () => {
      let file = await validGguf();
      await patchFile(file, FIRST_NE0_AT, u64le(31n));
      await rejectsCheckpoint(readGguf(file), file, "first", /Q8_0 stores blocks of 32, but the innermost dimension is 31/);

      file = await validGguf();
      await patchFile(file, FIRST_NE0_AT, u64le(1n << 40n));
      await rejectsCheckpoint(readGguf(file), file, "first", /past the end of the file/);

      file = await validGguf();
      await patchFile(file, SECOND_OFFSET_AT, u64le(4n));
      await rejectsCheckpoint(readGguf(file), file, "second", /data offset 4 is not a multiple of the alignment 32/);

      file = await validGguf();
      await patchFile(file, SECOND_OFFSET_AT, u64le(32n));
      await rejectsCheckpoint(readGguf(file), file, "second", /overlaps tensor 'first'/);

      file = await validGguf();
      await patchFile(file, FIRST_NE0_AT - 4, u32le(5));
      await rejectsCheckpoint(readGguf(file), file, "first", /has 5 dimensions, at most 4 allowed/);
    });

    test("writer rejects byte counts that do not match, and dtypes ggml lacks", async () => {
      const file = tempPath("bad-write.gguf");
      await rejectsCheckpoint(
        writeGguf(file, [], [{ name: "w", dtype: "Q4_0", shape: [2, 32], bytes: () => new Uint8Array(35) }]),
        file,
        "w",
        /Q4_0 \[2,32\] needs 36 bytes, got 35/,
      );
      await rejectsCheckpoint(writeGguf(file, [], [{ name: "w", dtype: "Q8_0", shape: [2, 30], bytes: new Uint8Array(0) }]), file, "w", /multiple of 32/);
      await rejectsCheckpoint(writeGguf(file, [], [{ name: "m", dtype: "U8", shape: [1], bytes: new Uint8Array(1) }]), file, "m", /no ggml type/);
      await rejectsCheckpoint(writeGguf(file, [["x", gguf.u8(256)]], []), file, undefined, /metadata 'x': 256 is not a valid u8/);
      const misspelt = { type: "arr", elementType: "string", values: ["a"] } as unknown as GgufTyped;
      await rejectsCheckpoint(writeGguf(file, [["y", misspelt]], []), file, undefined, /metadata 'y': unknown GGUF type "string"/);
      await assert.rejects(readFile(file), { code: "ENOENT" }); // failed writes leave nothing behind
    });
  });
});
