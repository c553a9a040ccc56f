// An adversarial node as a child process, for tests and benchmarks (spawnAdversary in
// adversary.ts runs it): starts a SpanNode as `tessera node` does, but over adversarialModel, and
// announces the honest model's checkpoint hash and, with --manifest, its manifest id without
// checking the weights against it (the lie a verifier has to catch).
//
//   node --import tsx test/support/adversary-node.ts --model DIR --blocks a:b --mode MODE
//     [--seed N] [--manifest FILE] [--bootstrap ADDR]... [--model-id ID] [--weights f32] [--threads N]
//     [--max-session N] [--throughput RPS] [--delay-ms MS] [--block I] [--host IP] [--port N] [--log-level LEVEL]
//
// stdout, as `tessera node`: `serving blocks [a, b) of L of ID`, then `listening <multiaddr>` per address.
// stderr: the node's log (--log-level, default error), one `cheated <session> <step> <mode> <start>:<end>`
// line per step that cheated, and on SIGTERM/SIGINT a last `summary {"mode":…,"sessions":…,"steps":…,"cheated":…}`
// line before it exits 0.
import { parseArgs } from "node:util";
import { type WeightFormat, WEIGHT_FORMATS } from "../../src/engine/interface.js";
import { servedCheckpoint } from "../../src/engine/runtime.js";
import { errorMessage, type LogLevel, LOG_LEVELS, setLogLevel } from "../../src/log.js";
import { openCheckpoint } from "../../src/model/checkpoint.js";
import { modelIdFor } from "../../src/swarm/model-id.js";
import { SpanNode } from "../../src/swarm/node.js";
import { readManifest } from "../../src/verify/manifest.js";
import { ADVERSARY_MODES, type AdversaryMode, adversarialModel } from "./adversary.js";

/** KV budget per block, in tokens (as `tessera node`). */
const CACHE_TOKENS = 16384;
/** What a throughput-lie node announces unless --throughput says otherwise (tokens/s per block). */
const LIED_THROUGHPUT = 1e6;

async function main(): Promise<void> {
  const { values: f } = parseArgs({
    options: {
      model: { type: "string" },
      blocks: { type: "string" },
      mode: { type: "string", default: "honest" },
      seed: { type: "string", default: "1" },
      manifest: { type: "string" },
      bootstrap: { type: "string", multiple: true, default: [] },
      "model-id": { type: "string" },
      weights: { type: "string", default: "f32" },
      threads: { type: "string" },
      "max-session": { type: "string", default: "2048" },
      throughput: { type: "string" },
      "delay-ms": { type: "string" },
      block: { type: "string" },
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "0" },
      "log-level": { type: "string", default: "error" },
    },
    strict: true,
  });
  if (!f.model) throw new Error("--model is required");
  const blocks = /^(\d+):(\d+)$/.exec(f.blocks ?? "");
  if (!blocks) throw new Error(`--blocks takes start:end (e.g. 0:4), got '${f.blocks ?? ""}'`);
  const mode = f.mode as AdversaryMode;
  if (!ADVERSARY_MODES.includes(mode)) throw new Error(`--mode takes one of ${ADVERSARY_MODES.join(", ")}, got '${f.mode}'`);
  const weights = f.weights as WeightFormat;
  if (!WEIGHT_FORMATS.includes(weights)) throw new Error(`--weights takes one of ${WEIGHT_FORMATS.join(", ")}, got '${f.weights}'`);
  const logLevel = f["log-level"] as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new Error(`--log-level takes one of ${LOG_LEVELS.join(", ")}, got '${logLevel}'`);
  setLogLevel(logLevel);

  const checkpoint = await openCheckpoint(f.model);
  const L = checkpoint.config.numLayers;
  const start = Number(blocks[1]);
  const end = Math.min(Number(blocks[2]), L);
  const maxSession = int(f["max-session"], "--max-session");
  const engine = { format: weights, threads: f.threads === undefined ? undefined : int(f.threads, "--threads"), maxSequence: maxSession };
  const honest = await servedCheckpoint(checkpoint, engine);
  const model = adversarialModel(honest, mode, {
    seed: int(f.seed, "--seed"),
    checkpoint,
    engine,
    block: f.block === undefined ? undefined : int(f.block, "--block"),
    delayMs: f["delay-ms"] === undefined ? undefined : Number(f["delay-ms"]),
    // SpanServer.create measures the span's throughput on a session of its own before the node listens.
    ownSessions: 1,
    onCheat: (c) => process.stderr.write(`cheated ${c.session} ${c.step} ${c.mode} ${c.start}:${c.end}\n`),
  });
  // The lie: the honest manifest's id, announced without checking the weights against it.
  const manifest = f.manifest ? await readManifest(f.manifest) : undefined;
  const modelId = f["model-id"] ?? (await modelIdFor(f.model));
  const throughput = f.throughput !== undefined ? Number(f.throughput) : mode === "throughput-lie" ? LIED_THROUGHPUT : undefined;
  const node = await SpanNode.start({
    model,
    manifestId: manifest?.id,
    modelId,
    bootstrap: f.bootstrap,
    throughput,
    start,
    end,
    cacheTokens: CACHE_TOKENS * (end - start),
    maxSessionLength: maxSession,
    listen: [`/ip4/${f.host}/tcp/${int(f.port, "--port")}`],
  });
  console.log(`serving blocks [${start}, ${end}) of ${L} of ${modelId}`);
  for (const addr of node.addresses) console.log(`listening ${addr}`);
  const shutdown = async () => {
    await node.stop();
    process.stderr.write(`summary ${JSON.stringify({ mode, ...model.stats })}\n`);
    process.exit(0);
  };
  process.once("SIGINT", shutdown);
  process.once("SIGTERM", shutdown);
}

function int(value: string, flag: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new Error(`${flag} takes an integer, got '${value}'`);
  return n;
}

main().catch((e) => {
  process.stderr.write(`adversary-node: ${errorMessage(e)}\n`);
  process.exit(1);
});
