import type { WeightFormat } from "../engine/weights.js";
import { openCheckpoint } from "../model/checkpoint.js";
import { SpanNode } from "../swarm/node.js";

interface NodeFlags {
  model: string;
  blocks: string;
  port: number;
  host: string;
  weights: WeightFormat;
  threads?: number;
  maxSession: number;
}

/** Serves a span until SIGINT/SIGTERM; prints its address as `listening <multiaddr>`. */
export async function nodeCommand(flags: NodeFlags): Promise<void> {
  const checkpoint = await openCheckpoint(flags.model);
  const L = checkpoint.config.numLayers;
  const match = /^(\d+):(\d+)$/.exec(flags.blocks);
  if (!match) throw new Error(`--blocks takes start:end (e.g. 0:4), got '${flags.blocks}'`);
  const [start, end] = [Number(match[1]), Number(match[2])];
  const node = await SpanNode.start({
    checkpoint,
    modelId: checkpoint.path,
    start,
    end: Math.min(end, L),
    format: flags.weights,
    threads: flags.threads,
    maxSessionLength: flags.maxSession,
    listen: [`/ip4/${flags.host}/tcp/${flags.port}`],
  });
  console.log(`serving blocks [${start}, ${Math.min(end, L)}) of ${L}`);
  for (const addr of node.addresses) console.log(`listening ${addr}`);
  const shutdown = async () => {
    await node.stop();
    process.exit(0);
  };
  process.once("SIGINT", shutdown);
  process.once("SIGTERM", shutdown);
}
