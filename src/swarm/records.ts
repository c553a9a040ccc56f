// What a node announces about the span it serves (hybrid sharding, arXiv 2407.19775), as the pure decision
// functions see it. Signing, expiry and the DHT live with the node; these are plain data.

export type NodeState = "joining" | "online" | "offline";

export interface SpanRecord {
  peerId: string;
  start: number;
  end: number;
  state: NodeState;
  /** Requests/s the node can serve on its span, for block selection. */
  throughput: number;
  /** Measured decode tokens/s per block. */
  inferenceRps?: number;
  /** Free KV capacity in per-block K-or-V token vectors. */
  cacheTokensLeft: number;
  /** RTTs in seconds to peers serving block `end`. */
  nextPings: Record<string, number>;
  usingRelay?: boolean;
}

/** A stretch of the route: `peerId` runs blocks [start, end). */
export interface Hop {
  peerId: string;
  start: number;
  end: number;
}

export class MissingBlocksError extends Error {
  override name = "MissingBlocksError";
  constructor(readonly blocks: number[]) {
    super(`no reachable node serves block${blocks.length > 1 ? "s" : ""} ${blocks.join(", ")}`);
  }
}
