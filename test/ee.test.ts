// Equivariant encryption: keys derive the same permutations every time and without bias; an
// encrypted model computes the plaintext model's logits (bit for bit at L0, within float rounding
// at L1) in HF and GGUF form; deliberately wrong transforms break it; no key bytes or tokenizer
// leave with the encrypted model.
import assert from "node:assert/strict";
import { cp, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { EncryptedSession, VocabCipher } from "../src/ee/cipher.js";
import { encryptModel, type EncryptModelResult, keyFieldsFor } from "../src/ee/encrypt-model.js";
import {
  deriveModelPermutations,
  derivePairRotations,
  derivePermutation,
  EeKeyError,
  type EeKey,
  fisherYates,
  KeyStream,
  labelSeed,
  newKey,
  readKeyFile,
  writeKeyFile,
} from "../src/ee/key.js";
import { applyToF32, planTransforms, type TransformOptions } from "../src/ee/transform.js";
import { generate } from "../src/engine/generate.js";
import type { LogitsSession } from "../src/engine/interface.js";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { SpanRunner } from "../src/engine/runtime.js";
import { argmax, GREEDY } from "../src/engine/sampling.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { readGguf } from "../src/model/gguf.js";
import { quantizeQ8_0 } from "../src/model/quant.js";
import { readSafetensors } from "../src/model/safetensors.js";
import type { ModelConfig } from "../src/model/types.js";
import { SHIPPED_MODEL } from "../src/model/shipped.js";
import { loadTokenizer } from "../src/model/tokenizer.js";
import { ggufModel, hfModel, maxAbsDiff, sampleTokens, workDir } from "./support/fixtures.js";
import { tessera as runTessera } from "./support/cli.js";

const SECRET = new Uint8Array(32).map((_, i) => (i * 29 + 7) & 0xff);
const HASH = "ab".repeat(32);

let outputs = 0;
/** Encrypts a fixture (or any checkpoint) into a fresh path with a fresh key file. */
async function encrypt(model: string, level: "L0" | "L1", transform?: TransformOptions): Promise<EncryptModelResult & { out: string }> {
  const name = `enc-${++outputs}`;
  const out = join(workDir, model.endsWith(".gguf") ? `${name}.gguf` : name);
  const result = await encryptModel({ model, keyFile: join(workDir, `${name}.key`), level, out, transform });
  return { ...result, out };
}

async function withSession<T>(path: string, work: (s: LogitsSession, pipeline: LocalPipeline) => Promise<T>, format: "f32" | "q8" = "f32"): Promise<T> {
  const pipeline = await LocalPipeline.load(await openCheckpoint(path), { format, maxSequence: 256 });
  const session = pipeline.openSession(128);
  try {
    return await work(session, pipeline);
  } finally {
    session.close();
    await pipeline.release();
  }
}

const allLogits = (path: string, tokens: number[], key?: EeKey, format: "f32" | "q8" = "f32") =>
  withSession(path, (s) => (key ? new EncryptedSession(s, VocabCipher.fromKey(key)) : s).append(tokens, { allLogits: true }), format);

function maxAbs(x: Float32Array): number {
  let m = 0;
  for (const v of x) m = Math.max(m, Math.abs(v));
  return m;
}

function bitwiseEqual(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

const TOKENS = sampleTokens(24, 512, 5);

describe("key derivation", () => {
  test("the same secret and label give the same permutation; another label or secret gives an unrelated one", () => {
    const a = derivePermutation(SECRET, HASH, "ffn/0", 512);
    assert.deepEqual(derivePermutation(SECRET, HASH, "ffn/0", 512).map, a.map);
    const others = [
      derivePermutation(SECRET, HASH, "ffn/1", 512),
      derivePermutation(SECRET, "cd".repeat(32), "ffn/0", 512),
      derivePermutation(
        SECRET.map((x) => x ^ 1),
        HASH,
        "ffn/0",
        512,
      ),
    ];
    for (const b of others) {
      const same = a.map.filter((x, i) => x === b.map[i]).length;
      assert.ok(same < 8, `${same} of 512 positions agree; unrelated permutations agree in ~1`);
    }
    assert.deepEqual(derivePairRotations(SECRET, HASH, "qk/0/0", 64), derivePairRotations(SECRET, HASH, "qk/0/0", 64));
    const k = derivePairRotations(SECRET, HASH, "qk/0/0", 4096);
    for (let v = 0; v < 4; v++) assert.ok(Math.abs(k.filter((x) => x === v).length - 1024) < 150, `k = ${v} drawn about a quarter of the time`);
  });

  test("Fisher–Yates draws all 24 permutations of 4 equally often (chi-square over 240,000 draws)", () => {
    const stream = new KeyStream(labelSeed(SECRET, HASH, "chi-square"));
    const draws = 240_000;
    const counts = new Map<string, number>();
    for (let i = 0; i < draws; i++) {
      const key = fisherYates(4, stream).map.join("");
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    assert.equal(counts.size, 24);
    const expected = draws / 24;
    const chi2 = [...counts.values()].reduce((s, n) => s + (n - expected) ** 2 / expected, 0);
    assert.ok(chi2 < 49.73, `chi-square ${chi2.toFixed(1)} with 23 degrees of freedom (p = 0.001 bound 49.73)`);
  });

  test("the inverse undoes the vocabulary permutation for a 128,256-token vocabulary", () => {
    const { map, inverse } = derivePermutation(SECRET, HASH, "vocab", 128_256);
    const seen = new Uint8Array(map.length);
    for (let i = 0; i < map.length; i++) {
      assert.equal(inverse[map[i]!], i);
      seen[map[i]!]!++;
    }
    assert.ok(
      seen.every((n) => n === 1),
      "a bijection",
    );
  });

  test("key files are written owner-only, read back equal, and a bad field is named", async () => {
    const key = newKey({ baseModelHash: HASH, vocabHash: "cd".repeat(32), vocabSize: 512, level: "L1", ropeLayout: "half" }, SECRET);
    const file = join(workDir, "unit.key");
    await writeKeyFile(file, key);
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.deepEqual(await readKeyFile(file), key);
    await assert.rejects(writeKeyFile(file, key), /EEXIST/, "an existing key is never overwritten");
    const json = JSON.parse(await readFile(file, "utf8"));
    for (const [field, value] of [
      ["level", "L2"],
      ["secret", "00ff"],
      ["baseModelHash", "xyz"],
      ["ropeLayout", "rotate"],
      ["v", 3],
    ] as const) {
      const bad = join(workDir, `bad-${field}.key`);
      await writeFile(bad, JSON.stringify({ ...json, [field]: value }));
      await assert.rejects(readKeyFile(bad), (e: Error) => e instanceof EeKeyError && e.message.includes(`'${field}'`));
    }
  });
});

describe("vocabulary cipher", () => {
  test("decrypt(encrypt(p)) = p for every id, and cipher ids cover the vocabulary", () => {
    const cipher = new VocabCipher(derivePermutation(SECRET, HASH, "vocab", 4096));
    const ids = Array.from({ length: 4096 }, (_, i) => i);
    const encrypted = cipher.encrypt(ids);
    assert.deepEqual(cipher.decrypt(encrypted), ids);
    assert.equal(new Set(encrypted).size, 4096);
    assert.ok(encrypted.filter((c, p) => c === p).length < 10, "few fixed points");
    assert.throws(() => cipher.encrypt([4096]), /outside the vocabulary/);
    assert.throws(() => cipher.decrypt([-1]), /outside the vocabulary/);
    assert.throws(() => cipher.decryptLogits(new Float32Array(4095), 1), /4096 logits/);
  });

  test("text survives tokenize → encrypt → decrypt → detokenize with the shipped tokenizer", async () => {
    const tokenizer = await loadTokenizer(await openCheckpoint(SHIPPED_MODEL.hf));
    const cipher = new VocabCipher(derivePermutation(SECRET, HASH, "vocab", tokenizer.vocabSize));
    for (const text of ["In the beginning God created the heaven and the earth.", "And Jesus wept. 3:16 — ünïcödé ✓"]) {
      const ids = tokenizer.encode(text);
      const cipherIds = cipher.encrypt(ids);
      assert.notDeepEqual(cipherIds, ids);
      assert.equal(tokenizer.decode(cipher.decrypt(cipherIds)), tokenizer.decode(ids));
    }
  });
});

describe("L0: vocabulary permutation only", () => {
  for (const preset of ["tiny-llama", "tiny-gpt2"]) {
    for (const format of ["hf", "gguf"] as const) {
      test(`${preset} ${format}: logits gathered back equal the plain logits bit for bit, and greedy text is equal`, async () => {
        const model = format === "hf" ? await hfModel(preset) : await ggufModel(preset);
        const { key, out } = await encrypt(model, "L0");
        assert.ok(bitwiseEqual(await allLogits(out, TOKENS, key), await allLogits(model, TOKENS)));

        const tokenizer = await loadTokenizer(await openCheckpoint(model));
        const prompt = tokenizer.encode("The quick brown fox");
        const opts = { maxTokens: 16, sampling: GREEDY, seed: 0, stopAtEos: false };
        const plain = await withSession(model, (s) => generate(s, tokenizer, prompt, opts));
        const cipher = VocabCipher.fromKey(key, tokenizer);
        const encrypted = await withSession(out, (s) => generate(new EncryptedSession(s, cipher), tokenizer, prompt, opts));
        assert.deepEqual(encrypted.tokens, plain.tokens);
        assert.equal(encrypted.text, plain.text);
      });
    }
  }

  test("on a Q8_0 GGUF whole quantized rows move: logits bitwise equal on the q8 engine", async () => {
    const model = await ggufModel("tiny-llama", "Q8_0");
    const { key, out, requantized } = await encrypt(model, "L0");
    assert.deepEqual(requantized, []);
    assert.ok(bitwiseEqual(await allLogits(out, TOKENS, key, "q8"), await allLogits(model, TOKENS, undefined, "q8")));
  });
});

describe("L1: vocabulary and every hidden basis", () => {
  for (const preset of ["tiny-llama", "tiny-qwen2", "tiny-gpt2"]) {
    for (const format of ["hf", "gguf"] as const) {
      test(`${preset} ${format}: logits within 1e-4 of the logit scale`, async () => {
        const model = format === "hf" ? await hfModel(preset) : await ggufModel(preset);
        const { key, out } = await encrypt(model, "L1");
        const plain = await allLogits(model, TOKENS);
        const encrypted = await allLogits(out, TOKENS, key);
        const error = maxAbsDiff(plain, encrypted);
        const scale = maxAbs(plain);
        assert.ok(error <= 1e-4 * scale, `max logit error ${error.toExponential(2)}, scale ${scale.toFixed(2)}`);
        assert.ok(!bitwiseEqual(plain, encrypted), "L1 sums in permuted order, so it is not bitwise");
      });
    }
  }

  test("hidden states at a span boundary are the σ-permuted plaintext hidden states", async () => {
    const model = await hfModel("tiny-llama");
    const { key, out } = await encrypt(model, "L1");
    const span = { start: 0, end: 2, embed: true, head: false };
    const hidden = async (path: string, tokens: number[]) => {
      const runner = await SpanRunner.load(await openCheckpoint(path), span, { maxSequence: 64 });
      try {
        return (await runner.openSession(32).forward({ tokens })).hidden!;
      } finally {
        await runner.release();
      }
    };
    const c = (await openCheckpoint(model)).config;
    const sigma = deriveModelPermutations(key, c).hidden.map;
    const plain = await hidden(model, TOKENS);
    const encrypted = await hidden(out, VocabCipher.fromKey(key).encrypt(TOKENS));
    const gathered = new Float32Array(plain.length);
    for (let t = 0; t < TOKENS.length; t++) {
      for (let j = 0; j < c.hiddenSize; j++) gathered[t * c.hiddenSize + j] = plain[t * c.hiddenSize + sigma[j]!]!;
    }
    assert.ok(maxAbsDiff(gathered, encrypted) <= 1e-4 * maxAbs(plain), `max error ${maxAbsDiff(gathered, encrypted)}`);
    assert.ok(maxAbsDiff(plain, encrypted) > 0.1 * maxAbs(plain), "the node sees another basis");
  });

  /**
   * How an encrypted run at a quantized precision compares with the plain run at the same
   * precision and both with an f32 reference: the worst error no larger than the plain run's
   * (within 2x: an int8 activation that lands on a rounding boundary may round one step the
   * other way, as float noise from summing in another order can make it), the top tokens equal.
   */
  function quantizedAgreement(reference: Float32Array, plain: Float32Array, encrypted: Float32Array) {
    let agree = 0;
    for (let t = 0; t < TOKENS.length; t++) {
      if (argmax(plain.subarray(t * 512, (t + 1) * 512)) === argmax(encrypted.subarray(t * 512, (t + 1) * 512))) agree++;
    }
    return {
      worstVsReference: maxAbsDiff(reference, encrypted) / maxAbsDiff(reference, plain),
      agree,
    };
  }

  test("on a Q8_0 GGUF, L1 (v2 keys: block-structured σ, ν, μ) requantizes each block to itself: as exact as the plain file on the q8 engine", async () => {
    const model = await ggufModel("tiny-llama", "Q8_0");
    const { key, out, requantized } = await encrypt(model, "L1");
    assert.equal(key.v, 2);
    assert.ok(requantized.includes("blk.0.attn_q.weight") && requantized.includes("token_embd.weight"), "column-permuted tensors go through requantization");
    const a = quantizedAgreement(await allLogits(model, TOKENS), await allLogits(model, TOKENS, undefined, "q8"), await allLogits(out, TOKENS, key, "q8"));
    assert.ok(a.worstVsReference <= 2, `worst error against the f32 run ${a.worstVsReference.toFixed(2)}x the plain file's`);
    assert.ok(a.agree >= TOKENS.length - 1, `top token agrees at ${a.agree} of ${TOKENS.length}`);
  });

  test("v2 keys: every Q8_0 block of every transformed matrix quantizes to the plain block's scale and values, moved; v1 keys regroup them", async () => {
    const model = await hfModel("tiny-llama");
    const checkpoint = await openCheckpoint(model);
    const c = checkpoint.config;
    const made = newKey(await keyFieldsFor(checkpoint, "L1"));
    const mismatched: Record<number, { blocks: number; of: number }> = {};
    for (const v of [2, 1] as const) {
      const plan = planTransforms(c, deriveModelPermutations({ ...made, v }, c));
      let blocks = 0;
      let of = 0;
      for (const [name, t] of plan) {
        const shape = checkpoint.info(name).shape;
        if (shape.length !== 2 || !t.cols || shape[1]! % 32 !== 0) continue;
        const [rows, K] = shape as [number, number];
        const plain = await checkpoint.readF32(name);
        const q = quantizeQ8_0(plain);
        const qe = quantizeQ8_0(applyToF32(plain, shape, t));
        const int8 = (bytes: Uint8Array, row: number, col: number) => (bytes[Math.floor((row * K + col) / 32) * 34 + 2 + (col % 32)]! << 24) >> 24;
        const scale = (bytes: Uint8Array, row: number, col: number) =>
          bytes[Math.floor((row * K + col) / 32) * 34]! | (bytes[Math.floor((row * K + col) / 32) * 34 + 1]! << 8);
        for (let r = 0; r < rows; r++) {
          const from = t.rows?.map[r] ?? r;
          for (let b = 0; b < K / 32; b++) {
            of++;
            let same = true;
            for (let i = 0; i < 32 && same; i++) {
              const j = b * 32 + i;
              const col = t.cols.map[j]!;
              const sign = (t.rows?.signs?.[r] ?? 1) * (t.cols.signs?.[j] ?? 1);
              same = scale(qe, r, j) === scale(q, from, col) && int8(qe, r, j) === sign * int8(q, from, col);
            }
            if (!same) blocks++;
          }
        }
      }
      mismatched[v] = { blocks, of };
    }
    assert.ok(mismatched[2]!.of > 1000);
    assert.equal(mismatched[2]!.blocks, 0, `v2: ${mismatched[2]!.blocks} of ${mismatched[2]!.of} blocks quantize differently`);
    assert.ok(mismatched[1]!.blocks > mismatched[1]!.of / 2, `v1: ${mismatched[1]!.blocks} of ${mismatched[1]!.of} blocks regrouped`);
  });

  test("v2's block-structured permutations: each 32-block of the input maps onto one block; v1 keys keep their uniform permutations", () => {
    const key = newKey(
      { baseModelHash: "ab".repeat(32), vocabHash: "cd".repeat(32), vocabSize: 512, level: "L1", ropeLayout: "half" },
      new Uint8Array(32).fill(7),
    );
    const c = {
      vocabSize: 512,
      hiddenSize: 256,
      intermediateSize: 704,
      numLayers: 1,
      numHeads: 8,
      numKvHeads: 2,
      headDim: 32,
      architecture: "llama",
    } as ModelConfig;
    const blocksOf = (map: Uint32Array) =>
      Array.from({ length: map.length / 32 }, (_, j) => new Set(Array.from(map.subarray(j * 32, (j + 1) * 32), (i) => Math.floor(i / 32))).size);
    const v2 = deriveModelPermutations(key, c);
    for (const map of [v2.hidden.map, v2.layers[0]!.ffn.map, v2.layers[0]!.v[0]!.map]) assert.ok(blocksOf(map).every((n) => n === 1));
    assert.notDeepEqual(
      Array.from(v2.hidden.map.subarray(0, 32)),
      Array.from({ length: 32 }, (_, i) => i),
      "not the identity",
    );
    const v1 = deriveModelPermutations({ ...key, v: 1 }, c);
    assert.deepEqual(Array.from(v1.hidden.map), Array.from(derivePermutation(key.secret, key.baseModelHash, "hidden", 256).map), "v1: as before");
    assert.ok(blocksOf(v1.hidden.map).some((n) => n > 1));
  });

  for (const [format, path] of [
    ["hf", SHIPPED_MODEL.hf],
    ["gguf", SHIPPED_MODEL.gguf],
  ] as const) {
    test(`the shipped model (${format}): 40 greedy tokens equal plain wherever the top-1 margin exceeds 1e-3, logits within 1e-4 relative`, async (t) => {
      const t0 = performance.now();
      const { key, out } = await encrypt(path, "L1");
      const encryptMs = performance.now() - t0;
      const tokenizer = await loadTokenizer(await openCheckpoint(path));
      const cipher = VocabCipher.fromKey(key, tokenizer);
      await withSession(path, async (plain) => {
        await withSession(out, async (inner) => {
          const encrypted = new EncryptedSession(inner, cipher);
          let worst = 0;
          let asserted = 0;
          let next = tokenizer.encode("And God said,");
          for (let step = 0; step < 40; step++) {
            const p = await plain.append(next);
            const e = await encrypted.append(next);
            worst = Math.max(worst, maxAbsDiff(p, e) / maxAbs(p));
            const top = argmax(p);
            const margin = p[top]! - Math.max(...p.filter((_, i) => i !== top));
            if (margin > 1e-3) {
              assert.equal(argmax(e), top, `step ${step}`);
              asserted++;
            }
            next = [top]; // both follow the plaintext greedy path
          }
          assert.ok(asserted >= 30, `only ${asserted} of 40 steps had a clear top token`);
          assert.ok(worst <= 1e-4, `max relative logit error ${worst.toExponential(2)}`);
          t.diagnostic(
            `shipped model ${format} L1: encrypted in ${encryptMs.toFixed(0)} ms; max relative logit error ${worst.toExponential(2)}; ${asserted}/40 steps compared`,
          );
        });
      });
    });
  }
});

describe("negative controls: wrong transforms break equivariance", () => {
  const cases: [string, string, TransformOptions][] = [
    ["unsigned rotary permutation (τ without its signs)", "tiny-llama", { unsignedRotary: true }],
    ["query heads moved into another KV group", "tiny-llama", { crossGroupHeads: true }],
    ["σ on the norms but not on the weights", "tiny-llama", { sigmaOnNormsOnly: true }],
    ["rotary pairs placed as rotate-half on an interleaved GGUF", "tiny-llama.gguf", { assumeRopeLayout: "half" }],
  ];
  for (const [what, preset, transform] of cases) {
    test(what, async () => {
      const model = preset.endsWith(".gguf") ? await ggufModel(preset.replace(".gguf", "")) : await hfModel(preset);
      const { key, out } = await encrypt(model, "L1", transform);
      const error = maxAbsDiff(await allLogits(model, TOKENS), await allLogits(out, TOKENS, key));
      assert.ok(error > 1, `max logit error ${error.toFixed(3)}`);
    });
  }
});

describe("what leaves with the encrypted model", () => {
  /** Every HKDF output of a key for a model: the labels it derives, and the deployment id's. */
  function keyMaterial(key: EeKey, c: { numLayers: number; numKvHeads: number; numHeads: number }): Buffer[] {
    const labels = ["vocab", "hidden", "deploy-id"];
    for (let l = 0; l < c.numLayers; l++) {
      labels.push(`ffn/${l}`, `kvhead/${l}`);
      for (let h = 0; h < c.numKvHeads; h++) labels.push(`qgroup/${l}/${h}`, `v/${l}/${h}`, `qk/${l}/${h}`);
    }
    const raw = [Buffer.from(key.secret), ...labels.map((l) => Buffer.from(labelSeed(key.secret, key.baseModelHash, l)))];
    return raw.flatMap((b) => [b, Buffer.from(b.toString("hex")), Buffer.from(b.toString("hex").toUpperCase()), Buffer.from(b.toString("base64"))]);
  }

  test("a Hugging Face output holds config, weights and manifest only: no tokenizer, no key bytes, nothing that names the base model", async () => {
    // A copy of the fixture with what a downloaded folder carries: its Hub name and provenance.
    const model = join(workDir, "qwen2-named");
    await cp(await hfModel("tiny-qwen2"), model, { recursive: true });
    const named = JSON.parse(await readFile(join(model, "config.json"), "utf8"));
    Object.assign(named, { _name_or_path: "Qwen/Qwen2-0.5B-Instruct", transformers_version: "4.44.0", model_card: "Qwen2 0.5B" });
    await writeFile(join(model, "config.json"), JSON.stringify(named));
    const st = await readSafetensors(join(model, "model.safetensors"));
    const { key, out, manifest, manifestFile } = await encrypt(model, "L1");
    assert.deepEqual((await readdir(out)).sort(), ["config.json", "ee-manifest.json", "model.safetensors"]);
    assert.equal(manifestFile, join(out, "ee-manifest.json"));
    assert.deepEqual(Object.keys(manifest).sort(), ["deploymentId", "level", "modelHash", "ropeLayout"], "no base-model hash");
    assert.equal(JSON.parse(await readFile(manifestFile, "utf8")).baseModelHash, undefined);
    const config = JSON.parse(await readFile(join(out, "config.json"), "utf8"));
    assert.equal(config.eos_token_id, undefined, "plaintext special ids are not published");
    for (const k of ["_name_or_path", "transformers_version", "model_card"]) assert.equal(config[k], undefined, `${k} is not published`);
    const shape = ({ eosTokenIds: _e, bosTokenId: _b, ...rest }: ModelConfig) => rest;
    assert.deepEqual(shape((await openCheckpoint(out)).config), shape((await openCheckpoint(model)).config), "the loader reads the same config");
    assert.deepEqual(
      Object.keys((await readSafetensors(join(out, "model.safetensors"))).metadata),
      Object.keys(st.metadata).filter((k) => k === "format"),
    );
    assert.ok(!(await readFile(join(out, "config.json"), "utf8")).includes("Qwen2-0.5B"));
    const needles = keyMaterial(key, (await openCheckpoint(model)).config);
    for (const file of await readdir(out)) {
      const bytes = await readFile(join(out, file));
      for (const needle of needles) assert.equal(bytes.indexOf(needle), -1, `${file} holds key material`);
    }
    await assert.rejects(loadTokenizer(await openCheckpoint(out)), /tokenizer\.json/);
  });

  test("a GGUF output has no tokenizer metadata and no name, still loads, and its manifest holds no key bytes", async () => {
    const model = await ggufModel("tiny-gpt2");
    const { key, out, manifestFile } = await encrypt(model, "L1");
    const gguf = await readGguf(out);
    assert.ok((await readGguf(model)).metadata.has("general.name"), "the fixture names its model");
    assert.deepEqual(
      [...gguf.metadata.keys()].filter(
        (k) =>
          k.startsWith("tokenizer.") ||
          (k.startsWith("general.") && !["general.architecture", "general.alignment", "general.file_type", "general.quantization_version"].includes(k)),
      ),
      [],
    );
    const input = await readGguf(model);
    for (const [k, type] of gguf.metadataTypes) {
      if (input.metadata.has(k)) assert.deepEqual(type, input.metadataTypes.get(k), `${k} keeps its GGUF type`);
    }
    assert.equal((await openCheckpoint(out)).config.vocabSize, 512);
    const needles = keyMaterial(key, (await openCheckpoint(model)).config);
    for (const file of [out, manifestFile]) {
      const bytes = await readFile(file);
      for (const needle of needles) assert.equal(bytes.indexOf(needle), -1, `${file} holds key material`);
    }
  });

  test("tessera encrypt-model creates a key once, then refuses it for another level or checkpoint", async () => {
    const tessera = (...args: string[]) => runTessera(args, { timeout: 120_000 });
    const model = await hfModel("tiny-llama");
    const keyFile = join(workDir, "cli.key");
    const made = await tessera("encrypt-model", "-m", model, "--key", keyFile, "--level", "L0", "-o", join(workDir, "cli-l0"));
    assert.match(made.stderr, /creating key/);
    assert.equal((await readKeyFile(keyFile)).level, "L0");
    await assert.rejects(tessera("encrypt-model", "-m", model, "--key", keyFile, "--level", "L1", "-o", join(workDir, "cli-l1")), /key's level is "L0"/);
    await assert.rejects(
      tessera("encrypt-model", "-m", await hfModel("tiny-gpt2"), "--key", keyFile, "--level", "L0", "-o", join(workDir, "cli-gpt2")),
      /baseModelHash/,
    );
  });
});
