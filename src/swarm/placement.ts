// Which blocks a node serves: "cover the weakest" on join and throughput-balancing moves
// (hybrid sharding, arXiv 2407.19775, after Petals' block_selection). Pure: randomness is passed in.
import type { SpanRecord } from "./records.js";

export const BALANCE_QUALITY = 0.75;
const EPS = 1e-3;

/** Per-block total throughput of the joining/online spans. */
export function blockThroughputs(records: readonly SpanRecord[], numBlocks: number): Float64Array {
  const t = new Float64Array(numBlocks);
  for (const r of records) {
    if (r.state === "offline") continue;
    for (let i = Math.max(0, r.start); i < Math.min(numBlocks, r.end); i++) t[i]! += r.throughput;
  }
  return t;
}

/** The start of the length-k window whose ascending-sorted throughputs are lexicographically smallest. */
export function bestStart(throughputs: ArrayLike<number>, length: number): number {
  const k = Math.min(length, throughputs.length);
  let best = 0;
  let bestKey: number[] | undefined;
  for (let s = 0; s + k <= throughputs.length; s++) {
    const key = Array.from({ length: k }, (_, i) => throughputs[s + i]!).sort((a, b) => a - b);
    if (!bestKey || lexLess(key, bestKey)) {
      best = s;
      bestKey = key;
    }
  }
  return best;
}

function lexLess(a: number[], b: number[]): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! < b[i]!;
  return false;
}

/** Where a joining node of capacity `length` blocks should start. */
export function chooseBlocks(records: readonly SpanRecord[], numBlocks: number, length: number): { start: number; end: number } {
  const k = Math.min(length, numBlocks);
  const start = bestStart(blockThroughputs(records, numBlocks), k);
  return { start, end: start + k };
}

/**
 * Whether `self` should move to a better start: it simulates the move and the swarm's reaction
 * (every node re-placing itself, in random order, until nobody moves) and moves only when the
 * weakest block improves by more than the balance threshold. Returns the new start or undefined.
 */
export function rebalance(
  records: readonly SpanRecord[],
  selfId: string,
  numBlocks: number,
  random: () => number,
  balanceQuality = BALANCE_QUALITY,
): number | undefined {
  const self = records.find((r) => r.peerId === selfId);
  if (!self) return undefined;
  const spans = records.filter((r) => r.state !== "offline").map((r) => ({ ...r }));
  const t = blockThroughputs(spans, numBlocks);
  const min0 = Math.min(...t);
  const me = spans.find((r) => r.peerId === selfId)!;
  const length = me.end - me.start;
  remove(t, me);
  if (Math.min(...t) <= 0) return undefined; // leaving would uncover a block
  const target = bestStart(t, length);
  if (target === me.start) return undefined;

  place(t, me, target);
  for (let moved = true, passes = 0; moved && passes < 100; passes++) {
    moved = false;
    for (const r of shuffle(spans, random)) {
      remove(t, r);
      const s = bestStart(t, r.end - r.start);
      if (s !== r.start) moved = true;
      place(t, r, s);
    }
  }
  const min1 = Math.min(...t);
  if (min1 < min0 || min1 < EPS) return undefined;
  return min0 / min1 < balanceQuality - EPS ? target : undefined;
}

function remove(t: Float64Array, r: SpanRecord): void {
  for (let i = r.start; i < r.end; i++) t[i]! -= r.throughput * (1 + EPS);
}

function place(t: Float64Array, r: { start: number; end: number; throughput: number }, start: number): void {
  const length = r.end - r.start;
  r.start = start;
  r.end = start + length;
  for (let i = r.start; i < r.end; i++) t[i]! += r.throughput * (1 + EPS);
}

function shuffle<T>(items: T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}
