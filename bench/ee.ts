// EE benchmark: what equivariant encryption costs.
// - Serving: two in-process libp2p swarms of the shipped model in the same run, 3 nodes each on
//   the same spans, one serving the plaintext checkpoint and one its L1 encryption (reached
//   through EncryptedSession); decode ms/token (median step) and prefill latency (best of 3), plain
//   and encrypted runs interleaved over several rounds (order alternating), medians over rounds,
//   overheads paired per round. The same for the in-process engine, which isolates the cipher's
//   own cost from the transport's noise.
// - Encrypting: `encryptModel` wall time (both sha256 passes included) per GB of weights, on the
//   shipped model (several runs) and on the largest Hugging Face folder under bench/.models.
//   npm run bench -- ee [--rounds 9] [--decode 64] [--prefill 256] [--encrypt-runs 5] [--large-runs 2] [--large PATH|none]
import "../src/swarm/node20.js";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { EncryptedSession, VocabCipher } from "../src/ee/cipher.js";
import { encryptModel, keyFieldsFor } from "../src/ee/encrypt-model.js";
import { deploymentId, type EeLevel, newKey } from "../src/ee/key.js";
import type { LogitsSession } from "../src/engine/interface.js";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { argmax } from "../src/engine/sampling.js";
import { type Checkpoint, openCheckpoint } from "../src/model/checkpoint.js";
import { checkpointHash } from "../src/model/hash.js";
import { SHIPPED_MODEL } from "../src/model/shipped.js";
import { loadTokenizer } from "../src/model/tokenizer.js";
import { SwarmClient } from "../src/swarm/client.js";
import { defaultModelId } from "../src/swarm/model-id.js";
import { evenSpans, median, startSwarm } from "./_swarm-common.js";

const here = dirname(fileURLToPath(import.meta.url));

/**
 * Greedy decode after a short prompt: the median step latency over `steps` (after 4 warm-up
 * steps; the median, not the mean, so a burst of another process on the cores moves it little),
 * and the tokens.
 */
async function decode(session: LogitsSession, prompt: number[], steps: number): Promise<{ ms: number; tokens: number[] }> {
  session.truncate(0);
  let logits = await session.append(prompt);
  for (let i = 0; i < 4; i++) logits = await session.append([argmax(logits)]);
  const tokens: number[] = [];
  const ms: number[] = [];
  for (let i = 0; i < steps; i++) {
    tokens.push(argmax(logits));
    const t0 = performance.now();
    logits = await session.append([tokens.at(-1)!]);
    ms.push(performance.now() - t0);
  }
  return { ms: median(ms), tokens };
}

/** Latency of a prefill of `tokens` from an empty cache, ms: the best of `repeats` runs. */
async function prefill(session: LogitsSession, tokens: number[], repeats = 3): Promise<number> {
  const ms: number[] = [];
  for (let i = 0; i < repeats; i++) {
    session.truncate(0);
    const t0 = performance.now();
    await session.append(tokens);
    ms.push(performance.now() - t0);
  }
  return Math.min(...ms);
}

const weightBytes = (checkpoint: Checkpoint) => checkpoint.files.reduce((n, f) => n + statSync(f).size, 0);

/** Wall seconds of encryptModel (fresh output each run, removed after), and its seconds per GB (1e9 bytes) of weights. */
async function encryptTimes(model: string, level: EeLevel, runs: number, work: string) {
  const checkpoint = await openCheckpoint(model);
  const key = newKey(await keyFieldsFor(checkpoint, level));
  const seconds: number[] = [];
  for (let r = 0; r < runs; r++) {
    const out = join(work, `enc-${level}-${r}`);
    const t0 = performance.now();
    await encryptModel({ model, key, level, out });
    seconds.push((performance.now() - t0) / 1000);
    rmSync(out, { recursive: true, force: true });
  }
  const bytes = weightBytes(checkpoint);
  const t0 = performance.now();
  await checkpointHash(checkpoint);
  const hashSeconds = (performance.now() - t0) / 1000;
  const s = median(seconds);
  return { model, level, weight_bytes: bytes, runs: seconds, median_seconds: s, seconds_per_gb: s / (bytes / 1e9), sha256_pass_seconds: hashSeconds };
}

/** The largest Hugging Face folder under bench/.models (written by `npm run bench -- engine`). */
function largestBenchHfModel(): string | undefined {
  const root = join(here, ".models");
  if (!existsSync(root)) return undefined;
  let best: { dir: string; size: number } | undefined;
  for (const preset of readdirSync(root)) {
    const presetDir = join(root, preset);
    if (!statSync(presetDir).isDirectory()) continue;
    for (const name of readdirSync(presetDir)) {
      const dir = join(presetDir, name);
      if (!statSync(dir).isDirectory() || !existsSync(join(dir, "config.json")) || !existsSync(join(dir, "tokenizer.json"))) continue;
      const size = readdirSync(dir)
        .filter((f) => f.endsWith(".safetensors"))
        .reduce((n, f) => n + statSync(join(dir, f)).size, 0);
      if (size > 0 && (!best || size > best.size)) best = { dir, size };
    }
  }
  return best?.dir;
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      rounds: { type: "string", default: "9" },
      decode: { type: "string", default: "64" },
      prefill: { type: "string", default: "256" },
      "encrypt-runs": { type: "string", default: "5" },
      "large-runs": { type: "string", default: "2" },
      large: { type: "string" },
    },
  });
  const rounds = Number(values.rounds);
  const steps = Number(values.decode);
  const prefillTokens = Number(values.prefill);

  // Built span models of a throwaway key are worthless afterwards: keep them in the work folder.
  const work = mkdtempSync(join(tmpdir(), "tessera-bench-ee-"));
  process.env.TESSERA_CACHE = join(work, "cache");
  try {
    const plain = await openCheckpoint(SHIPPED_MODEL.hf);
    const c = plain.config;
    const tokenizer = await loadTokenizer(plain);
    const heldOut = tokenizer.encode(readFileSync(SHIPPED_MODEL.evalText, "utf8"), { addSpecial: false });
    const prompt = heldOut.slice(0, 32);
    const long = heldOut.slice(1000, 1000 + prefillTokens);

    const encryptedPath = join(work, "tessera-kjv-ee-l1");
    const { key } = await encryptModel({ model: SHIPPED_MODEL.hf, level: "L1", out: encryptedPath });
    const encrypted = await openCheckpoint(encryptedPath);
    const cipher = VocabCipher.fromKey(key, tokenizer);

    // Both swarms up at once, same spans; each client joins its own swarm.
    const spans = evenSpans(c.numLayers, 3);
    const [plainNodes, encryptedNodes] = await Promise.all([
      startSwarm(plain, defaultModelId(SHIPPED_MODEL.hf), spans),
      startSwarm(encrypted, deploymentId(key), spans),
    ]);
    const plainClient = await SwarmClient.connect(plainNodes[0]!.addresses, c, { modelId: defaultModelId(SHIPPED_MODEL.hf) });
    const encryptedClient = await SwarmClient.connect(encryptedNodes[0]!.addresses, c, { modelId: deploymentId(key) });
    const plainLocal = await LocalPipeline.load(plain, { maxSequence: 512 });
    const encryptedLocal = await LocalPipeline.load(encrypted, { maxSequence: 512 });
    const sessions: Record<string, LogitsSession> = {
      swarm_plain: await plainClient.openSession(512),
      swarm_encrypted: new EncryptedSession(await encryptedClient.openSession(512), cipher),
      local_plain: plainLocal.openSession(512),
      local_encrypted: new EncryptedSession(encryptedLocal.openSession(512), cipher),
    };

    const decodeMs: Record<string, number[]> = {};
    const prefillMs: Record<string, number[]> = {};
    let agree = 0;
    let compared = 0;
    // Round 0 warms up (JIT, ORT arenas, connections) and is not counted.
    for (let r = 0; r <= rounds; r++) {
      const record = r > 0;
      for (const where of ["swarm", "local"]) {
        const order = r % 2 === 0 ? ["plain", "encrypted"] : ["encrypted", "plain"];
        const tokens: Record<string, number[]> = {};
        for (const kind of order) {
          const name = `${where}_${kind}`;
          const d = await decode(sessions[name]!, prompt, steps);
          const p = await prefill(sessions[name]!, long);
          if (!record) continue;
          (decodeMs[name] ??= []).push(d.ms);
          (prefillMs[name] ??= []).push(p);
          tokens[kind] = d.tokens;
        }
        if (!record) continue;
        agree += tokens.plain!.filter((t, i) => t === tokens.encrypted![i]).length;
        compared += steps;
      }
      if (record)
        console.log(
          `round ${r}/${rounds}: ` +
            Object.entries(decodeMs)
              .map(([k, v]) => `${k} ${v.at(-1)!.toFixed(2)}`)
              .join(", ") +
            " ms/token",
        );
    }
    for (const s of Object.values(sessions)) s.close();
    await plainClient.close();
    await encryptedClient.close();
    for (const n of [...plainNodes, ...encryptedNodes]) await n.stop();
    await plainLocal.release();
    await encryptedLocal.release();

    const med = (m: Record<string, number[]>) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, median(v)]));
    const dec = med(decodeMs);
    const pre = med(prefillMs);
    // Overheads are paired: the median over rounds of encrypted/plain within the same round, so a
    // drift of the machine's speed during the run (other processes, memory) cancels out.
    const paired = (m: Record<string, number[]>, where: string) => 100 * (median(m[`${where}_encrypted`]!.map((e, r) => e / m[`${where}_plain`]![r]!)) - 1);

    // Encrypt-model time.
    const encryptRuns = Number(values["encrypt-runs"]);
    const encryptShipped = [await encryptTimes(SHIPPED_MODEL.hf, "L1", encryptRuns, work), await encryptTimes(SHIPPED_MODEL.hf, "L0", encryptRuns, work)];
    const largePath = values.large === "none" ? undefined : (values.large ?? largestBenchHfModel());
    const encryptLarge = [];
    if (largePath) {
      console.log(`encrypting ${largePath} (L1, ${values["large-runs"]} runs)…`);
      encryptLarge.push(await encryptTimes(largePath, "L1", Number(values["large-runs"]), work));
    } else {
      console.log("no larger Hugging Face model under bench/.models (npm run bench -- engine writes one); encrypt time on the shipped model only");
    }

    const result = {
      benchmark: "ee",
      date: new Date().toISOString(),
      machine: { cpu: cpus()[0]?.model, cores: cpus().length, ram_bytes: totalmem(), node: process.version },
      model: { path: "models/tessera-kjv", blocks: c.numLayers, hidden: c.hiddenSize, vocab: c.vocabSize },
      settings: {
        level: "L1",
        spans,
        rounds,
        decode_steps: steps,
        prefill_tokens: prefillTokens,
        transport: "js-libp2p tcp+noise+yamux on loopback, 3 nodes per swarm in this process, client-relayed, codec none",
        order: "plain and encrypted interleaved per round, order alternating; one untimed warm-up round",
        estimators:
          "decode: median step latency per round; prefill: best of 3 per round; values: median over rounds; overhead: median over rounds of encrypted/plain in the same round",
      },
      plain_ms_per_token: dec.swarm_plain!,
      encrypted_ms_per_token: dec.swarm_encrypted!,
      overhead_pct: paired(decodeMs, "swarm"),
      plain_prefill_ms: pre.swarm_plain!,
      encrypted_prefill_ms: pre.swarm_encrypted!,
      prefill_overhead_pct: paired(prefillMs, "swarm"),
      local: {
        plain_ms_per_token: dec.local_plain!,
        encrypted_ms_per_token: dec.local_encrypted!,
        overhead_pct: paired(decodeMs, "local"),
        plain_prefill_ms: pre.local_plain!,
        encrypted_prefill_ms: pre.local_encrypted!,
        prefill_overhead_pct: paired(prefillMs, "local"),
      },
      greedy_agreement: agree / compared,
      rounds_ms_per_token: decodeMs,
      rounds_prefill_ms: prefillMs,
      encrypt_model: [...encryptShipped, ...encryptLarge].map((e) => ({ ...e, model: e.model.replace(`${dirname(here)}/`, "") })),
      encrypt_seconds_per_gb: (encryptLarge[0] ?? encryptShipped[0]!).seconds_per_gb,
    };

    console.table({
      "swarm decode ms/token": { plain: dec.swarm_plain, encrypted: dec.swarm_encrypted, "overhead %": result.overhead_pct },
      [`swarm prefill ${prefillTokens} ms`]: { plain: pre.swarm_plain, encrypted: pre.swarm_encrypted, "overhead %": result.prefill_overhead_pct },
      "local decode ms/token": { plain: dec.local_plain, encrypted: dec.local_encrypted, "overhead %": result.local.overhead_pct },
      [`local prefill ${prefillTokens} ms`]: { plain: pre.local_plain, encrypted: pre.local_encrypted, "overhead %": result.local.prefill_overhead_pct },
    });
    console.table(
      Object.fromEntries(
        result.encrypt_model.map((e) => [
          `${e.model} ${e.level}`,
          { GB: e.weight_bytes / 1e9, "median s": e.median_seconds, "s/GB": e.seconds_per_gb, "one sha256 pass s": e.sha256_pass_seconds },
        ]),
      ),
    );
    console.log(`greedy agreement plain vs encrypted: ${(100 * result.greedy_agreement).toFixed(2)}% of ${compared} tokens`);
    mkdirSync(join(here, "results"), { recursive: true });
    writeFileSync(join(here, "results", "ee.json"), JSON.stringify(result, null, 2) + "\n");
    console.log("wrote bench/results/ee.json");
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
