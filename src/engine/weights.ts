// Turns checkpoint tensors into the initializers of a span graph: fused projections in the
// engine's weight format (f32 MatMul, or MatMulNBits int8/int4 with 32-element blocks).
import type { Checkpoint } from "../model/checkpoint.js";
import { f32ArrayToF16 } from "../model/quant.js";
import { quantizeToMatMulNBits, toMatMulNBits } from "./matmul-nbits.js";
import { bytesOf, ElemType, type GraphBuilder, MS_DOMAIN } from "./onnx-builder.js";
import { transpose } from "../model/transpose.js";
import type { WeightFormat } from "./interface.js";

export { WEIGHT_FORMATS, type WeightFormat } from "./interface.js";

const BLOCK = 32;
const BITS = { q8: 8, q4: 4 } as const;
const NATIVE_BLOCKS = { q8: "Q8_0", q4: "Q4_0" } as const;

export class WeightLoader {
  constructor(
    private readonly checkpoint: Checkpoint,
    private readonly g: GraphBuilder,
    readonly format: WeightFormat,
    private readonly onTensorRead: (name: string) => void = () => {},
  ) {}

  private readF32(name: string): Promise<Float32Array> {
    this.onTensorRead(name);
    return this.checkpoint.readF32(name);
  }

  async vector(name: string, initializerName = name): Promise<string> {
    const values = await this.readF32(name);
    return this.g.f32(initializerName, [values.length], values);
  }

  /** Concatenated biases of fused projections. */
  async fusedVector(names: string[], initializerName: string): Promise<string> {
    const parts = await Promise.all(names.map((n) => this.readF32(n)));
    return this.g.f32(initializerName, [sum(parts.map((p) => p.length))], concat(parts));
  }

  /**
   * y = x · Wᵀ for the row-wise concatenation of the named [out, in] weights. Returns the output
   * name. Quantized checkpoints whose block type matches the engine format are repacked, never
   * requantized, so a GGUF Q8_0/Q4_0 file runs on exactly its stored values.
   */
  async linear(x: string, names: string[], initializerName: string): Promise<string> {
    const infos = names.map((n) => this.checkpoint.info(n));
    const K = infos[0]!.shape[1]!;
    const N = sum(infos.map((i) => i.shape[0]!));
    const format = this.format;
    if (format === "f32" || format === "f16" || K % BLOCK !== 0) {
      const wT = transpose(concat(await Promise.all(names.map((n) => this.readF32(n)))), N, K);
      if (format !== "f16") return this.g.op("MatMul", [x, this.g.f32(initializerName, [K, N], wT)]);
      const w16 = this.g.initializer(initializerName, ElemType.FLOAT16, [K, N], bytesOf(f32ArrayToF16(wT)));
      const x16 = this.g.op("Cast", [x], { to: ElemType.FLOAT16 });
      return this.g.op("Cast", [this.g.op("MatMul", [x16, w16])], { to: ElemType.FLOAT });
    }
    const bits = BITS[format];
    const native = infos.every((i) => i.dtype === NATIVE_BLOCKS[format]);
    const parts = await Promise.all(
      names.map(async (n, i) => {
        const rows = infos[i]!.shape[0]!;
        if (native) {
          this.onTensorRead(n);
          const raw = await this.checkpoint.readRaw(n);
          return toMatMulNBits(NATIVE_BLOCKS[format], raw.bytes, rows, K);
        }
        return quantizeToMatMulNBits(await this.readF32(n), rows, K, bits);
      }),
    );
    const blobSize = (BLOCK * bits) / 8;
    const weight = this.g.initializer(`${initializerName}.q`, ElemType.UINT8, [N, K / BLOCK, blobSize], concat(parts.map((p) => p.weight)));
    const scales = this.g.f32(`${initializerName}.scales`, [(N * K) / BLOCK], concat(parts.map((p) => p.scales)));
    return this.g.op(
      "MatMulNBits",
      [x, weight, scales],
      // accuracy_level 4: int8 activations in the dot products, as llama.cpp does for Q8_0/Q4_0.
      { K, N, bits, block_size: BLOCK, accuracy_level: 4 },
      MS_DOMAIN,
    );
  }

  /** Embedding rows as a Gather table: f32, or f16 (half the memory) for quantized formats. */
  async embedding(ids: string, name: string): Promise<string> {
    const info = this.checkpoint.info(name);
    const values = await this.readF32(name);
    if (this.format === "f32") {
      const table = this.g.f32(name, info.shape, values);
      return this.g.op("Gather", [table, ids]);
    }
    const table = this.g.initializer(name, ElemType.FLOAT16, info.shape, bytesOf(f32ArrayToF16(values)));
    return this.g.op("Cast", [this.g.op("Gather", [table, ids])], { to: ElemType.FLOAT });
  }
}

function sum(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

/** Concatenates typed arrays of one kind into one. */
function concat<T extends Float32Array | Uint8Array>(parts: T[]): T {
  if (parts.length === 1) return parts[0]!;
  const out = new (parts[0]!.constructor as new (n: number) => T)(sum(parts.map((p) => p.length)));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
