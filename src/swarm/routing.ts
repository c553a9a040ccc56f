// Choosing the chain of nodes a session runs through (hybrid sharding, arXiv 2407.19775): min-latency Dijkstra
// over (peer, block) for interactive decoding, and throughput-weighted random walks for batch
// work. Pure: RTTs, bans and randomness come in as arguments.
import { type Hop, MissingBlocksError, type SpanRecord } from "./records.js";

/** Per-hop overhead assumed until the client has measured its own (Petals' constant). */
export const HOP_OVERHEAD_S = 0.018;
export const ALLOC_PENALTY_S = 10;
const UNKNOWN_RTT_S = 0.15;
const DEFAULT_RPS = 300;

export interface RouteRequest {
  start: number;
  end: number;
  /** Tokens the session will hold (its max length); spans without that much cache room are penalised. */
  needTokens: number;
  /** Client → peer round-trip times in seconds. */
  clientRtt: ReadonlyMap<string, number>;
  /** Peers not to use (banned, blocked, wrong model). */
  excluded?: ReadonlySet<string>;
  /** Measured per-hop overhead in seconds (serialization, streams, scheduling); default HOP_OVERHEAD_S. */
  hopOverheadS?: number;
  /** Extra seconds per hop on a peer, e.g. α·(1 − reputation). */
  hopPenalty?: (peerId: string) => number;
}

const delay = (rtt: number | undefined) => (rtt === undefined ? UNKNOWN_RTT_S : Math.min(rtt / 2, 5));

function usable(records: readonly SpanRecord[], req: RouteRequest): SpanRecord[] {
  return records.filter((r) => r.state === "online" && !req.excluded?.has(r.peerId) && r.start < r.end);
}

/** Throws MissingBlocksError naming the blocks of [start, end) no usable span covers. */
function checkCoverage(spans: readonly SpanRecord[], start: number, end: number): void {
  const missing: number[] = [];
  for (let i = start; i < end; i++) if (!spans.some((s) => s.start <= i && i < s.end)) missing.push(i);
  if (missing.length) throw new MissingBlocksError(missing);
}

/**
 * The route of least expected per-token latency. Graph nodes are (span, block); a route enters a
 * span at any block it covers, walks its blocks at 1/rps each, and leaves only at the span's end.
 */
export function minLatencyRoute(records: readonly SpanRecord[], req: RouteRequest): Hop[] {
  const spans = usable(records, req);
  checkCoverage(spans, req.start, req.end);
  const alloc = (s: SpanRecord) => (req.needTokens * 2 * (s.end - s.start) <= s.cacheTokensLeft ? 0 : ALLOC_PENALTY_S);
  const penalty = (s: SpanRecord) => req.hopPenalty?.(s.peerId) ?? 0;
  const hop = req.hopOverheadS ?? HOP_OVERHEAD_S;

  // State: (span index, block i) meaning "about to run block i on this span"; i == end means done with it.
  const key = (si: number, i: number) => si * (req.end + 1) + i;
  const dist = new Map<number, number>();
  const prev = new Map<number, number>();
  const queue = new MinQueue();
  const relax = (k: number, d: number, from: number) => {
    if (d < (dist.get(k) ?? Infinity)) {
      dist.set(k, d);
      prev.set(k, from);
      queue.push(d, k);
    }
  };
  const START = -1;
  spans.forEach((s, si) => {
    if (s.start <= req.start && req.start < s.end) {
      relax(key(si, req.start), delay(req.clientRtt.get(s.peerId)) + hop + alloc(s) + penalty(s), START);
    }
  });

  let best = Infinity;
  let bestEnd = -1;
  while (queue.size) {
    const [d, k] = queue.pop();
    if (d > (dist.get(k) ?? Infinity) || d >= best) continue;
    const si = Math.floor(k / (req.end + 1));
    const i = k % (req.end + 1);
    const s = spans[si]!;
    if (i === req.end) {
      const total = d + delay(req.clientRtt.get(s.peerId));
      if (total < best) {
        best = total;
        bestEnd = k;
      }
      continue;
    }
    // Run block i here.
    const next = key(si, i + 1);
    const stepCost = 1 / (s.inferenceRps ?? DEFAULT_RPS);
    if (i + 1 < s.end || i + 1 === req.end) {
      relax(next, d + stepCost, k);
    } else {
      // Block i is this span's last: hand over to spans covering block i + 1.
      spans.forEach((u, ui) => {
        if (ui !== si && u.start <= i + 1 && i + 1 < u.end) {
          relax(key(ui, i + 1), d + stepCost + delay(s.nextPings[u.peerId]) + hop + alloc(u) + penalty(u), k);
        }
      });
    }
  }
  if (bestEnd < 0) throw new MissingBlocksError([req.start]);
  return collapse(bestEnd, prev, spans, req.end);
}

function collapse(endKey: number, prev: Map<number, number>, spans: SpanRecord[], end: number): Hop[] {
  const path: [number, number][] = [];
  for (let k = endKey; k !== -1; k = prev.get(k)!) path.push([Math.floor(k / (end + 1)), k % (end + 1)]);
  path.reverse();
  const hops: Hop[] = [];
  for (let j = 0; j + 1 < path.length; j++) {
    const [si, i] = path[j]!;
    const last = hops.at(-1);
    if (last && last.peerId === spans[si]!.peerId && last.end === i) last.end = i + 1;
    else hops.push({ peerId: spans[si]!.peerId, start: i, end: i + 1 });
  }
  return hops;
}

/** Batch routing: from each block, a random covering span (∝ its length), jumping to its end. */
/** Measured cost of a push on loopback (an extra encode and stream write on the pushing node). */
export const CHAIN_MIN_GAIN_S = 0.001;

/**
 * Expected per-token seconds saved by server-to-server pushes on `route`: relaying hop j's input
 * costs half the client's RTT to hop j−1 plus half its RTT to hop j; a push costs half the RTT
 * between the two nodes (from hop j−1's record; unknown counts as far). Positive when the client
 * is farther from the nodes than they are from each other.
 */
export function chainingGain(route: readonly Hop[], records: readonly SpanRecord[], clientRtt: ReadonlyMap<string, number>): number {
  let gain = 0;
  for (let j = 1; j < route.length; j++) {
    const [prev, hop] = [route[j - 1]!, route[j]!];
    const between = records.find((r) => r.peerId === prev.peerId)?.nextPings[hop.peerId];
    gain += delay(clientRtt.get(prev.peerId)) + delay(clientRtt.get(hop.peerId)) - delay(between);
  }
  return gain;
}

export function maxThroughputRoute(records: readonly SpanRecord[], req: Omit<RouteRequest, "needTokens" | "clientRtt">, random: () => number): Hop[] {
  const spans = usable(records, req as RouteRequest);
  checkCoverage(spans, req.start, req.end);
  const hops: Hop[] = [];
  for (let i = req.start; i < req.end;) {
    const candidates = spans.filter((s) => s.start <= i && i < s.end);
    const weights = candidates.map((s) => s.end - s.start);
    let pick = random() * weights.reduce((a, b) => a + b, 0);
    let chosen = candidates[candidates.length - 1]!;
    for (let c = 0; c < candidates.length; c++) {
      pick -= weights[c]!;
      if (pick < 0) {
        chosen = candidates[c]!;
        break;
      }
    }
    const end = Math.min(chosen.end, req.end);
    hops.push({ peerId: chosen.peerId, start: i, end });
    i = end;
  }
  return hops;
}

/** A binary min-heap of (priority, value). */
class MinQueue {
  private items: [number, number][] = [];
  get size(): number {
    return this.items.length;
  }
  push(priority: number, value: number): void {
    const a = this.items;
    a.push([priority, value]);
    for (let i = a.length - 1; i > 0;) {
      const p = (i - 1) >> 1;
      if (a[p]![0] <= a[i]![0]) break;
      [a[p], a[i]] = [a[i]!, a[p]!];
      i = p;
    }
  }
  pop(): [number, number] {
    const a = this.items;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length) {
      a[0] = last;
      for (let i = 0; ;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && a[l]![0] < a[m]![0]) m = l;
        if (r < a.length && a[r]![0] < a[m]![0]) m = r;
        if (m === i) break;
        [a[m], a[i]] = [a[i]!, a[m]!];
        i = m;
      }
    }
    return top;
  }
}
