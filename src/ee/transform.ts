// The EE model transform as per-tensor gathers (Equivariant Encryption, arXiv 2502.01013:
// GPT-2 and the Llama family). Pure: permutations and a config in, one TensorTransform per tensor out, plus the
// functions that apply one to stored values.
//
// Tensors are in the checkpoint's canonical orientation [out, in], so the design's row-vector
// W'[j, (h,i)] = s·W[σ(j), α(h,i)] becomes T'[(h,i), j] = s·T[α(h,i), σ(j)]: output rows gather by
// α (with signs), input columns by σ.
import { expectedShapes } from "../model/config.js";
import type { DType, ModelConfig } from "../model/types.js";
import { identity, ropeLayoutOf, type ModelPermutations, type QkMap } from "./key.js";

/** One axis: out[i] = signs[i] · in[map[i]] (signs absent: all +1). */
export interface AxisMap {
  map: Uint32Array;
  signs?: Int8Array;
}

/** A tensor's transform; an absent axis is left as it is. 1-D tensors use `rows` only. */
export interface TensorTransform {
  rows?: AxisMap;
  cols?: AxisMap;
}

/** Deliberately wrong transforms, for the negative controls that must break equivariance. */
export interface TransformOptions {
  /** Keep τ's column moves but drop its signs: q/k rotary dimensions get a plain permutation. */
  unsignedRotary?: boolean;
  /** Shift query heads by one KV group, so a query head reads another group's K and V. */
  crossGroupHeads?: boolean;
  /** σ on the norm gains (and LayerNorm biases) only; every other tensor keeps the plain basis. */
  sigmaOnNormsOnly?: boolean;
  /** Place the rotary pairs as if the checkpoint stored q/k rows in this layout. */
  assumeRopeLayout?: "half" | "interleaved";
}

/** The transform of every tensor that changes; tensors not in the map are copied as they are. */
export function planTransforms(c: ModelConfig, p: ModelPermutations, opts: TransformOptions = {}): Map<string, TensorTransform> {
  if (p.layers.length !== c.numLayers) throw new RangeError(`permutations for ${p.layers.length} layers, the model has ${c.numLayers}`);
  const plan = new Map<string, TensorTransform>();
  const sigmaNorm = p.hidden.map;
  const sigma = opts.sigmaOnNormsOnly ? identity(c.hiddenSize).map : p.hidden.map;
  const put = (name: string, rows?: AxisMap, cols?: AxisMap) => {
    const t: TensorTransform = {};
    if (rows && !isIdentity(rows)) t.rows = rows;
    if (cols && !isIdentity(cols)) t.cols = cols;
    if (t.rows || t.cols) plan.set(name, t);
  };

  put("token_embd.weight", { map: p.vocab.map }, { map: sigma });
  if (!c.tieWordEmbeddings) put("output.weight", { map: p.vocab.map }, { map: sigma });
  put("output_norm.weight", { map: sigmaNorm });
  if (c.architecture === "gpt2") {
    // Positions are not permuted (causality): σ on columns only.
    put("position_embd.weight", undefined, { map: sigma });
    put("output_norm.bias", { map: sigmaNorm });
  }

  for (let l = 0; l < c.numLayers; l++) {
    const b = `blk.${l}`;
    const lp = p.layers[l]!;
    const heads = headMaps(c, lp, opts);
    const ffn = { map: lp.ffn.map };
    put(`${b}.attn_norm.weight`, { map: sigmaNorm });
    put(`${b}.ffn_norm.weight`, { map: sigmaNorm });
    put(`${b}.attn_output.weight`, { map: sigma }, heads.o);
    put(`${b}.ffn_up.weight`, ffn, { map: sigma });
    put(`${b}.ffn_down.weight`, { map: sigma }, ffn);
    if (c.architecture === "llama") {
      put(`${b}.attn_q.weight`, heads.q, { map: sigma });
      put(`${b}.attn_k.weight`, heads.k, { map: sigma });
      put(`${b}.attn_v.weight`, heads.v, { map: sigma });
      put(`${b}.ffn_gate.weight`, ffn, { map: sigma });
      if (c.qkvBias) {
        put(`${b}.attn_q.bias`, heads.q);
        put(`${b}.attn_k.bias`, heads.k);
        put(`${b}.attn_v.bias`, heads.v);
      }
    } else {
      const qkv = concatAxes([heads.q, heads.k, heads.v]);
      put(`${b}.attn_qkv.weight`, qkv, { map: sigma });
      put(`${b}.attn_qkv.bias`, qkv);
      put(`${b}.attn_norm.bias`, { map: sigmaNorm });
      put(`${b}.ffn_norm.bias`, { map: sigmaNorm });
      put(`${b}.attn_output.bias`, { map: sigma });
      put(`${b}.ffn_up.bias`, ffn);
      put(`${b}.ffn_down.bias`, { map: sigma });
    }
  }
  const known = expectedShapes(c);
  for (const name of plan.keys()) if (!known.has(name)) throw new Error(`unreachable: planned unknown tensor ${name}`);
  return plan;
}

/**
 * Row maps of q, k, v (outputs of the projections) and the column map of o, per §6:
 * new KV slot s holds old KV head ρ_kv(s); new query head h = s·G + r holds ρ_q(h) = ρ_kv(s)·G + ι_s(r);
 * q and k dims move by τ of their old KV head, v dims and o's inputs by μ of it.
 */
function headMaps(c: ModelConfig, lp: ModelPermutations["layers"][number], opts: TransformOptions) {
  const d = c.headDim;
  const G = c.numHeads / c.numKvHeads;
  const rhoKv = lp.kvHead.map;
  const rhoQ = new Uint32Array(c.numHeads);
  for (let h = 0; h < c.numHeads; h++) {
    const s = Math.floor(h / G);
    rhoQ[h] = rhoKv[s]! * G + lp.queryGroup[s]!.map[h % G]!;
  }
  const queryHead = opts.crossGroupHeads ? (h: number) => rhoQ[(h + G) % c.numHeads]! : (h: number) => rhoQ[h]!;
  const layout = ropeLayoutOf(c) === "none" ? "none" : (opts.assumeRopeLayout ?? ropeLayoutOf(c));

  const qk = (heads: number, oldHead: (h: number) => number, oldKv: (h: number) => number): AxisMap => {
    const map = new Uint32Array(heads * d);
    const signs = new Int8Array(heads * d);
    for (let h = 0; h < heads; h++) {
      const { cols, signs: s } = qkDims(lp.qk[oldKv(h)]!, d, layout, opts);
      for (let i = 0; i < d; i++) {
        map[h * d + i] = oldHead(h) * d + cols[i]!;
        signs[h * d + i] = s[i]!;
      }
    }
    return { map, signs };
  };
  const vo = (heads: number, oldHead: (h: number) => number, oldKv: (h: number) => number): AxisMap => {
    const map = new Uint32Array(heads * d);
    for (let h = 0; h < heads; h++) {
      const mu = lp.v[oldKv(h)]!.map;
      for (let i = 0; i < d; i++) map[h * d + i] = oldHead(h) * d + mu[i]!;
    }
    return { map };
  };
  const kvOld = (s: number) => rhoKv[s]!;
  const qKv = (h: number) => Math.floor(queryHead(h) / G);
  return {
    q: qk(c.numHeads, queryHead, qKv),
    k: qk(c.numKvHeads, kvOld, kvOld),
    v: vo(c.numKvHeads, kvOld, kvOld),
    o: vo(c.numHeads, queryHead, qKv),
  };
}

/**
 * Source dim and sign of each new q/k dim of one head. Under RoPE, pair m = (a, b) — (m, m + d/2)
 * in the rotate-half layout, (2m, 2m+1) interleaved — becomes J^k(a, b) with J(a, b) = (−b, a):
 * k=0 (a, b), k=1 (−b, a), k=2 (−a, −b), k=3 (b, −a).
 */
function qkDims(m: QkMap, d: number, layout: "half" | "interleaved" | "none", opts: TransformOptions) {
  const cols = new Uint32Array(d);
  const signs = new Int8Array(d).fill(1);
  if (m.kind === "perm") {
    if (layout !== "none") throw new RangeError("a rotary model needs signed pair maps for q/k, not a permutation");
    cols.set(m.perm.map);
    return { cols, signs };
  }
  if (layout === "none") throw new RangeError("signed pair maps apply to rotary models only");
  const half = d / 2;
  for (let p = 0; p < half; p++) {
    const [a, b] = layout === "half" ? [p, p + half] : [2 * p, 2 * p + 1];
    const k = m.k[p]!;
    const [srcA, signA, srcB, signB] = k === 0 ? [a, 1, b, 1] : k === 1 ? [b, -1, a, 1] : k === 2 ? [a, -1, b, -1] : [b, 1, a, -1];
    cols[a] = srcA;
    cols[b] = srcB;
    signs[a] = opts.unsignedRotary ? 1 : signA;
    signs[b] = opts.unsignedRotary ? 1 : signB;
  }
  return { cols, signs };
}

/** Packed [q | k | v] rows (GPT-2's attn_qkv): each part's map offset into the packed tensor. */
function concatAxes(parts: AxisMap[]): AxisMap {
  const n = parts.reduce((a, p) => a + p.map.length, 0);
  const map = new Uint32Array(n);
  const signs = new Int8Array(n);
  let at = 0;
  for (const part of parts) {
    for (let i = 0; i < part.map.length; i++) {
      map[at + i] = at + part.map[i]!;
      signs[at + i] = part.signs?.[i] ?? 1;
    }
    at += part.map.length;
  }
  return { map, signs };
}

function isIdentity(a: AxisMap): boolean {
  for (let i = 0; i < a.map.length; i++) if (a.map[i] !== i || (a.signs && a.signs[i] !== 1)) return false;
  return true;
}

/** The same transform for a tensor stored transposed ([in, out], as GPT-2's Conv1D). */
export function transposeTransform(t: TensorTransform): TensorTransform {
  return { rows: t.cols, cols: t.rows };
}

// ---------------------------------------------------------------------------------------------
// Applying a transform

type Elements = Float32Array | Uint16Array | Uint32Array;

/** [rows, cols] row-major (1-D: [n, 1]) of the given tensor shape. */
function matrixOf(shape: readonly number[]): [number, number] {
  if (shape.length === 1) return [shape[0]!, 1];
  if (shape.length === 2) return [shape[0]!, shape[1]!];
  throw new RangeError(`EE transforms 1-D and 2-D tensors, got shape [${shape}]`);
}

function checkAxes(t: TensorTransform, R: number, C: number, shape: readonly number[]): void {
  if (t.rows && t.rows.map.length !== R) throw new RangeError(`row map of ${t.rows.map.length} for shape [${shape}]`);
  if (t.cols && (t.cols.map.length !== C || shape.length !== 2)) throw new RangeError(`column map of ${t.cols.map.length} for shape [${shape}]`);
}

function gather<T extends Elements>(src: T, shape: readonly number[], t: TensorTransform, negate: (x: number) => number): T {
  const [R, C] = matrixOf(shape);
  checkAxes(t, R, C, shape);
  const out = new (src.constructor as new (n: number) => T)(src.length);
  const rows = t.rows?.map;
  const rowSigns = t.rows?.signs;
  const cols = t.cols?.map;
  const colSigns = t.cols?.signs;
  for (let r = 0; r < R; r++) {
    const from = (rows ? rows[r]! : r) * C;
    const to = r * C;
    if (cols) {
      for (let j = 0; j < C; j++) {
        const x = src[from + cols[j]!]!;
        out[to + j] = colSigns && colSigns[j]! < 0 ? negate(x) : x;
      }
    } else {
      out.set(src.subarray(from, from + C), to);
    }
    if (rowSigns && rowSigns[r]! < 0) for (let j = 0; j < C; j++) out[to + j] = negate(out[to + j]!);
  }
  return out;
}

/** Applies a transform to float values (row-major, canonical shape). Exact: only moves and negations. */
export function applyToF32(values: Float32Array, shape: readonly number[], t: TensorTransform): Float32Array {
  return gather(values, shape, t, (x) => -x);
}

/**
 * Applies a transform to stored F32/F16/BF16 bytes without decoding them: elements move as bit
 * patterns and a negation flips the sign bit, so the result is exact in the stored type.
 */
export function applyToStored(bytes: Uint8Array, dtype: DType, shape: readonly number[], t: TensorTransform): Uint8Array {
  const size = dtype === "F32" ? 4 : dtype === "F16" || dtype === "BF16" ? 2 : 0;
  if (!size) throw new RangeError(`applyToStored moves F32, F16 or BF16 elements, not ${dtype}`);
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const count = aligned.length / size;
  if (size === 4) {
    const out = gather(new Uint32Array(aligned.buffer, aligned.byteOffset, count), shape, t, (x) => (x ^ 0x80000000) >>> 0);
    return new Uint8Array(out.buffer);
  }
  const out = gather(new Uint16Array(aligned.buffer, aligned.byteOffset, count), shape, t, (x) => x ^ 0x8000);
  return new Uint8Array(out.buffer);
}

const QUANT_BLOCK = { Q8_0: 34, Q4_0: 18 } as const;

/**
 * Moves whole rows of a Q8_0/Q4_0 matrix (32-element blocks run along a row), negating a row by
 * flipping the sign of each block's f16 scale: exact. Column permutations cross blocks and need
 * dequantize → permute → requantize instead.
 */
export function moveQuantizedRows(bytes: Uint8Array, dtype: "Q8_0" | "Q4_0", shape: readonly number[], rows: AxisMap): Uint8Array {
  const [R, C] = matrixOf(shape);
  if (rows.map.length !== R) throw new RangeError(`row map of ${rows.map.length} for shape [${shape}]`);
  const blockBytes = QUANT_BLOCK[dtype];
  const rowBytes = (C / 32) * blockBytes;
  if (bytes.length !== R * rowBytes) throw new RangeError(`${dtype} [${shape}] needs ${R * rowBytes} bytes, got ${bytes.length}`);
  const out = new Uint8Array(bytes.length);
  for (let r = 0; r < R; r++) {
    const from = rows.map[r]! * rowBytes;
    out.set(bytes.subarray(from, from + rowBytes), r * rowBytes);
    if (rows.signs && rows.signs[r]! < 0) {
      for (let at = r * rowBytes; at < (r + 1) * rowBytes; at += blockBytes) out[at + 1]! ^= 0x80;
    }
  }
  return out;
}
