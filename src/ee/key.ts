// EE keys (Equivariant Encryption, arXiv 2502.01013): a 32-byte secret, the permutations derived from
// it per label, the key file, and the vocabulary hash that binds a key to one tokenizer.
import { type Cipher, createCipheriv, createHash, hkdfSync, randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import type { ModelConfig } from "../model/types.js";

export type EeLevel = "L0" | "L1";
export type RopeLayout = "half" | "interleaved" | "none";
export const EE_LEVELS: readonly EeLevel[] = ["L0", "L1"];

export class EeKeyError extends Error {
  override name = "EeKeyError";
}

/**
 * Key versions. 1: σ, ν and μ are uniform permutations. 2 (what new keys are): they are
 * block-structured (QUANT_BLOCK), so quantized weights and activations keep their blocks and L1
 * on q8/q4 engines or Q8_0/Q4_0 files is as exact as the plaintext model at the same precision.
 */
export type EeKeyVersion = 1 | 2;
export const EE_KEY_VERSION: EeKeyVersion = 2;

/** The block along the input dimension that quantized weights and activations share a scale over (MatMulNBits, Q8_0, Q4_0). */
export const QUANT_BLOCK = 32;

export interface EeKey {
  v: EeKeyVersion;
  /** checkpointHash (src/model/hash.ts) of the plaintext checkpoint. */
  baseModelHash: string;
  /** sha256 hex of the tokenizer vocabulary the vocabulary permutation applies to (vocabHash). */
  vocabHash: string;
  /** Rows of the embedding: the vocabulary permutation acts on [0, vocabSize). */
  vocabSize: number;
  level: EeLevel;
  ropeLayout: RopeLayout;
  secret: Uint8Array;
}

const SECRET_BYTES = 32;
const INFO_PREFIX = "tessera-ee/v1/";

// ---------------------------------------------------------------------------------------------
// Derivation

/** seed_label = HKDF-SHA256(ikm = secret, salt = baseModelHash bytes, info = "tessera-ee/v1/" + label). */
export function labelSeed(secret: Uint8Array, baseModelHash: string, label: string): Uint8Array {
  return new Uint8Array(hkdfSync("sha256", secret, hexBytes(baseModelHash, "baseModelHash"), INFO_PREFIX + label, 32));
}

/** The ChaCha20 keystream under a 32-byte seed with a zero nonce, read as little-endian u32. */
export class KeyStream {
  private readonly cipher: Cipher;
  private words = new Uint32Array(0);
  private at = 0;
  private static readonly ZEROS = new Uint8Array(4096);

  constructor(seed: Uint8Array) {
    if (seed.length !== 32) throw new EeKeyError(`a ChaCha20 seed is 32 bytes, got ${seed.length}`);
    // Node's 16-byte chacha20 IV is the 32-bit block counter then the 96-bit nonce; all zero.
    this.cipher = createCipheriv("chacha20", seed, new Uint8Array(16));
  }

  nextU32(): number {
    if (this.at === this.words.length) {
      const bytes = this.cipher.update(KeyStream.ZEROS);
      this.words = new Uint32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
      this.at = 0;
    }
    return this.words[this.at++]!;
  }

  /** Uniform integer in [0, bound) by rejection: r is redrawn while r ≥ ⌊2³²/bound⌋·bound. */
  below(bound: number): number {
    const limit = 2 ** 32 - (2 ** 32 % bound);
    for (;;) {
      const r = this.nextU32();
      if (r < limit) return r % bound;
    }
  }
}

/** A gather map and its inverse: x'[j] = x[map[j]], and inverse[map[j]] = j. */
export interface Permutation {
  map: Uint32Array;
  inverse: Uint32Array;
}

/** Fisher–Yates from i = n−1 down to 1, j uniform in [0, i], on the identity. */
export function fisherYates(n: number, stream: KeyStream): Permutation {
  const map = new Uint32Array(n);
  for (let i = 0; i < n; i++) map[i] = i;
  for (let i = n - 1; i >= 1; i--) {
    const j = stream.below(i + 1);
    const t = map[i]!;
    map[i] = map[j]!;
    map[j] = t;
  }
  return { map, inverse: invert(map) };
}

export function invert(map: Uint32Array): Uint32Array {
  const inverse = new Uint32Array(map.length);
  for (let i = 0; i < map.length; i++) inverse[map[i]!] = i;
  return inverse;
}

export function identity(n: number): Permutation {
  const map = new Uint32Array(n);
  for (let i = 0; i < n; i++) map[i] = i;
  return { map, inverse: map };
}

/** The permutation of size n that a key derives for a label. */
export function derivePermutation(secret: Uint8Array, baseModelHash: string, label: string, n: number): Permutation {
  return fisherYates(n, new KeyStream(labelSeed(secret, baseModelHash, label)));
}

/**
 * A permutation of size n that moves whole blocks of `block` and permutes within each: new block j
 * holds old block B[j]'s elements in the order w_j (B, then every w_j, Fisher–Yates on one stream).
 * A quantization block of the input then maps onto one block with the same elements, so its
 * scale and its rounded values are what they were. Sizes not divisible by `block` get a uniform
 * permutation.
 */
export function deriveBlockPermutation(secret: Uint8Array, baseModelHash: string, label: string, n: number, block = QUANT_BLOCK): Permutation {
  const stream = new KeyStream(labelSeed(secret, baseModelHash, label));
  if (n % block !== 0 || n <= block) return fisherYates(n, stream);
  const blocks = fisherYates(n / block, stream);
  const map = new Uint32Array(n);
  for (let j = 0; j < n / block; j++) {
    const within = fisherYates(block, stream);
    for (let i = 0; i < block; i++) map[j * block + i] = blocks.map[j]! * block + within.map[i]!;
  }
  return { map, inverse: invert(map) };
}

/** k_m ∈ {0,1,2,3} per rotary pair m: 2 bits each from the stream, 16 pairs per u32, low bits first. */
export function derivePairRotations(secret: Uint8Array, baseModelHash: string, label: string, pairs: number): Uint8Array {
  const stream = new KeyStream(labelSeed(secret, baseModelHash, label));
  const k = new Uint8Array(pairs);
  let word = 0;
  for (let m = 0; m < pairs; m++) {
    if (m % 16 === 0) word = stream.nextU32();
    k[m] = (word >>> (2 * (m % 16))) & 3;
  }
  return k;
}

/** How q/k dimensions of one KV head move: signed 90° pair rotations under RoPE, else any permutation. */
export type QkMap = { kind: "pairs"; k: Uint8Array } | { kind: "perm"; perm: Permutation };

export interface LayerPermutations {
  /** ν (label ffn/ℓ). */
  ffn: Permutation;
  /** ρ_kv: new KV slot s holds old KV head map[s] (label kvhead/ℓ). */
  kvHead: Permutation;
  /** ι_s per new slot s, over the G query heads of its group (label qgroup/ℓ/s). */
  queryGroup: Permutation[];
  /** μ per old KV head h (label v/ℓ/h). */
  v: Permutation[];
  /** τ per old KV head h (label qk/ℓ/h). */
  qk: QkMap[];
}

/**
 * All permutations of a deployment. `vocab.map` is the gather map of the embedding and head rows
 * (E'[c] = E[vocab.map[c]], i.e. π⁻¹), so a plaintext id p travels as c = vocab.inverse[p] = π(p).
 * L0 derives only the vocabulary permutation; the rest are identities.
 */
export interface ModelPermutations {
  vocab: Permutation;
  /** σ over the residual stream (label hidden). */
  hidden: Permutation;
  layers: LayerPermutations[];
}

export function ropeLayoutOf(c: ModelConfig): RopeLayout {
  if (c.architecture === "gpt2") return "none";
  return c.ropeInterleaved ? "interleaved" : "half";
}

export function deriveModelPermutations(key: EeKey, c: ModelConfig): ModelPermutations {
  if (key.vocabSize !== c.vocabSize) {
    throw new EeKeyError(`key is for a vocabulary of ${key.vocabSize} rows, the model has ${c.vocabSize}`);
  }
  const perm = (label: string, n: number) => derivePermutation(key.secret, key.baseModelHash, label, n);
  // Permutations of dimensions that are some matmul's input (σ, ν, μ): block-structured from v2.
  const inputPerm = (label: string, n: number) => (key.v >= 2 ? deriveBlockPermutation(key.secret, key.baseModelHash, label, n) : perm(label, n));
  const vocab = perm("vocab", c.vocabSize);
  const G = c.numHeads / c.numKvHeads;
  const l1 = key.level === "L1";
  const rotary = ropeLayoutOf(c) !== "none";
  const layers: LayerPermutations[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const heads = (n: number, f: (h: number) => Permutation) => Array.from({ length: n }, (_, h) => f(h));
    layers.push({
      ffn: l1 ? inputPerm(`ffn/${l}`, c.intermediateSize) : identity(c.intermediateSize),
      kvHead: l1 ? perm(`kvhead/${l}`, c.numKvHeads) : identity(c.numKvHeads),
      queryGroup: heads(c.numKvHeads, (s) => (l1 ? perm(`qgroup/${l}/${s}`, G) : identity(G))),
      v: heads(c.numKvHeads, (h) => (l1 ? inputPerm(`v/${l}/${h}`, c.headDim) : identity(c.headDim))),
      qk: Array.from({ length: c.numKvHeads }, (_, h): QkMap => {
        if (!rotary) return { kind: "perm", perm: l1 ? perm(`qk/${l}/${h}`, c.headDim) : identity(c.headDim) };
        const k = l1 ? derivePairRotations(key.secret, key.baseModelHash, `qk/${l}/${h}`, c.headDim / 2) : new Uint8Array(c.headDim / 2);
        return { kind: "pairs", k };
      }),
    });
  }
  return { vocab, hidden: l1 ? inputPerm("hidden", c.hiddenSize) : identity(c.hiddenSize), layers };
}

/** deploymentId = sha256("tessera-ee-deploy" ‖ labelSeed("deploy-id")), hex; public. */
export function deploymentId(key: EeKey): string {
  return createHash("sha256")
    .update("tessera-ee-deploy")
    .update(labelSeed(key.secret, key.baseModelHash, "deploy-id"))
    .digest("hex");
}

// ---------------------------------------------------------------------------------------------
// The vocabulary a key is bound to (the model: checkpointHash, src/model/hash.ts)

/** sha256 hex over the vocabulary: for each id, its token text as u32 LE length + UTF-8 (0xffffffff when absent). */
export function vocabHash(tokenizer: { vocabSize: number; tokenText(id: number): string | undefined }): string {
  const hash = createHash("sha256");
  const length = Buffer.alloc(4);
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    const text = tokenizer.tokenText(id);
    const bytes = text === undefined ? undefined : Buffer.from(text, "utf8");
    length.writeUInt32LE(bytes ? bytes.length : 0xffffffff);
    hash.update(length);
    if (bytes) hash.update(bytes);
  }
  return hash.digest("hex");
}

// ---------------------------------------------------------------------------------------------
// Key files

export function newKey(fields: Omit<EeKey, "v" | "secret">, secret: Uint8Array = randomBytes(SECRET_BYTES)): EeKey {
  return { v: EE_KEY_VERSION, ...fields, secret: new Uint8Array(secret) };
}

/** Writes the key as JSON, readable by its owner only (mode 0600); refuses to overwrite. */
export async function writeKeyFile(file: string, key: EeKey): Promise<void> {
  checkKey(key, file);
  const json = {
    v: key.v,
    baseModelHash: key.baseModelHash,
    vocabHash: key.vocabHash,
    vocabSize: key.vocabSize,
    level: key.level,
    ropeLayout: key.ropeLayout,
    secret: Buffer.from(key.secret).toString("hex"),
  };
  await writeFile(file, JSON.stringify(json, null, 2) + "\n", { mode: 0o600, flag: "wx" });
}

export async function readKeyFile(file: string): Promise<EeKey> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    throw new EeKeyError(`${file}: cannot read key file: ${(e as Error).message}`);
  }
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new EeKeyError(`${file}: key file is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new EeKeyError(`${file}: key file must be a JSON object`);
  const secret = json.secret;
  if (typeof secret !== "string" || !/^[0-9a-f]{64}$/i.test(secret)) {
    throw new EeKeyError(`${file}: field 'secret' must be ${SECRET_BYTES} bytes as 64 hex digits`);
  }
  const key = {
    v: json.v,
    baseModelHash: json.baseModelHash,
    vocabHash: json.vocabHash,
    vocabSize: json.vocabSize,
    level: json.level,
    ropeLayout: json.ropeLayout,
    secret: new Uint8Array(Buffer.from(secret, "hex")),
  } as EeKey;
  checkKey(key, file);
  return key;
}

function checkKey(key: EeKey, file: string): void {
  const fail = (field: string, expected: string, found: unknown) =>
    new EeKeyError(`${file}: field '${field}' must be ${expected}, found ${JSON.stringify(found)}`);
  if (key.v !== 1 && key.v !== 2) throw fail("v", "1 or 2 (the key versions)", key.v);
  for (const field of ["baseModelHash", "vocabHash"] as const) {
    if (typeof key[field] !== "string" || !/^[0-9a-f]{64}$/.test(key[field])) throw fail(field, "a sha256 in lowercase hex", key[field]);
  }
  if (!Number.isSafeInteger(key.vocabSize) || key.vocabSize < 2) throw fail("vocabSize", "an integer ≥ 2", key.vocabSize);
  if (!EE_LEVELS.includes(key.level)) throw fail("level", `one of ${EE_LEVELS.join(", ")}`, key.level);
  if (!["half", "interleaved", "none"].includes(key.ropeLayout)) throw fail("ropeLayout", "half, interleaved or none", key.ropeLayout);
  if (!(key.secret instanceof Uint8Array) || key.secret.length !== SECRET_BYTES) {
    throw new EeKeyError(`${file}: field 'secret' must be ${SECRET_BYTES} bytes`);
  }
}

function hexBytes(hex: string, what: string): Uint8Array {
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new EeKeyError(`${what} must be a sha256 in lowercase hex, got ${JSON.stringify(hex)}`);
  return new Uint8Array(Buffer.from(hex, "hex"));
}
