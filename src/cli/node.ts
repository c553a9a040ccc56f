import { threadedCheckpoint } from "../engine/engine-thread.js";
import { type LogLevel, setLogLevel } from "../log.js";
import { checkedModel, readManifest } from "../verify/manifest.js";
import type { WeightFormat } from "../engine/interface.js";
import { openCheckpoint } from "../model/checkpoint.js";
import { checkpointHash } from "../model/hash.js";
import type { ModelConfig } from "../model/types.js";
import { blocksThatFit } from "../swarm/capacity.js";
import { SwarmClient } from "../swarm/client.js";
import { framingDefaults } from "../swarm/framing.js";
import { watchMemory } from "../swarm/memory.js";
import { SpanNode } from "../swarm/node.js";
import { modelIdFor } from "../swarm/model-id.js";
import { chooseBlocks } from "../swarm/placement.js";

/** KV budget per block, in tokens (Petals' default for GQA models is 16384). */
const CACHE_TOKENS = 16384;

interface NodeFlags {
  model: string;
  blocks: string;
  port: number;
  host: string;
  weights: WeightFormat;
  threads?: number;
  maxSession: number;
  bootstrap: string[];
  maxBlocks?: number;
  modelId?: string;
  rebalanceInterval: number;
  throughput?: number;
  idleTimeout: number;
  logLevel: LogLevel;
  manifest?: string;
  peerCacheShare: number;
  prefillChunk: number;
}

/** Serves a span until SIGINT/SIGTERM; prints its address as `listening <multiaddr>`. */
export async function nodeCommand(flags: NodeFlags): Promise<void> {
  setLogLevel(flags.logLevel);
  if (!(flags.peerCacheShare > 0 && flags.peerCacheShare <= 1))
    throw new RangeError(`--peer-cache-share takes a fraction in (0, 1], got ${flags.peerCacheShare}`);
  if (!(flags.prefillChunk >= 1)) throw new RangeError(`--prefill-chunk takes a positive number of tokens, got ${flags.prefillChunk}`);
  const checkpoint = await openCheckpoint(flags.model);
  const L = checkpoint.config.numLayers;
  const modelId = flags.modelId ?? (await modelIdFor(flags.model));
  const [start, end] = flags.blocks === "auto" ? await chooseSpan(flags, modelId, checkpoint.config) : parseSpan(flags.blocks);
  // The engine runs on a thread of its own, so no step stops the node reading the network (engine-thread.ts).
  const served = threadedCheckpoint(flags.model, checkpoint.config, await checkpointHash(checkpoint), {
    format: flags.weights,
    threads: flags.threads,
    maxSequence: flags.maxSession,
  });
  const manifest = flags.manifest ? await readManifest(flags.manifest) : undefined;
  const node = await SpanNode.start({
    model: manifest ? checkedModel(served, checkpoint, manifest, flags.weights) : served,
    manifestId: manifest?.id,
    modelId,
    bootstrap: flags.bootstrap,
    throughput: flags.throughput,
    idleTimeoutMs: flags.idleTimeout * 1000,
    start,
    end: Math.min(end, L),
    cacheTokens: CACHE_TOKENS * (Math.min(end, L) - start),
    maxSessionLength: flags.maxSession,
    peerCacheShare: flags.peerCacheShare,
    prefillChunk: flags.prefillChunk,
    listen: [`/ip4/${flags.host}/tcp/${flags.port}`],
  });
  // The node is this process: it gives memory a flood left behind back to the system (memory.ts).
  const memory = watchMemory({ alsoCollect: () => served.collect() });
  framingDefaults.budget.onRelease = (bytes) => memory.released(bytes);
  console.log(`serving blocks [${start}, ${Math.min(end, L)}) of ${L} of ${modelId}`);
  for (const addr of node.addresses) console.log(`listening ${addr}`);
  if (flags.blocks === "auto" && flags.rebalanceInterval > 0) {
    node.rebalanceEvery(flags.rebalanceInterval * 1000, Math.random, (a, b) => console.log(`rebalanced: now serving blocks [${a}, ${b})`));
  }
  const shutdown = async () => {
    memory.stop();
    await node.stop();
    await served.stop();
    process.exit(0);
  };
  process.once("SIGINT", shutdown);
  process.once("SIGTERM", shutdown);
}

function parseSpan(blocks: string): [number, number] {
  const match = /^(\d+):(\d+)$/.exec(blocks);
  if (!match) throw new Error(`--blocks takes start:end (e.g. 0:4) or auto, got '${blocks}'`);
  return [Number(match[1]), Number(match[2])];
}

/** As many blocks as free memory allows, placed on the swarm's weakest blocks. */
async function chooseSpan(flags: NodeFlags, modelId: string, config: ModelConfig): Promise<[number, number]> {
  const { freemem } = await import("node:os");
  const capacity = Math.min(blocksThatFit(config, flags.weights, freemem(), CACHE_TOKENS), flags.maxBlocks ?? Infinity);
  let records: Awaited<ReturnType<SwarmClient["provider"]["records"]>> = [];
  if (flags.bootstrap.length) {
    const client = await SwarmClient.connect(flags.bootstrap, config, { modelId });
    records = await client.provider.records();
    await client.close();
  }
  const { start, end } = chooseBlocks(records, config.numLayers, capacity);
  console.log(`auto: room for ${capacity} of ${config.numLayers} blocks; ${records.length} known spans; taking [${start}, ${end})`);
  return [start, end];
}
