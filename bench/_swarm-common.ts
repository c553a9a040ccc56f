// Helpers shared by the swarm and EE benchmarks: in-process swarms and robust statistics.
import type { ServedModel } from "../src/engine/interface.js";
import type { Checkpoint } from "../src/model/checkpoint.js";
import { servedCheckpoint } from "../src/engine/runtime.js";
import { SpanNode } from "../src/swarm/node.js";

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** `nodes` contiguous spans covering `blocks` blocks as evenly as possible. */
export function evenSpans(blocks: number, nodes: number): [number, number][] {
  return Array.from({ length: nodes }, (_, i) => [Math.round((i * blocks) / nodes), Math.round(((i + 1) * blocks) / nodes)]);
}

/** A swarm of one node per span in this process, the first started alone and the others joining through it (`model`: default the in-process engine). */
export async function startSwarm(checkpoint: Checkpoint, modelId: string, spans: [number, number][], served?: ServedModel): Promise<SpanNode[]> {
  const model = served ?? (await servedCheckpoint(checkpoint));
  const opts = (start: number, end: number) => ({ model, modelId, start, end, maxSessionLength: 512 });
  const first = await SpanNode.start(opts(...spans[0]!));
  return [first, ...(await Promise.all(spans.slice(1).map(([a, b]) => SpanNode.start({ ...opts(a, b), bootstrap: first.addresses.slice(0, 1) }))))];
}
