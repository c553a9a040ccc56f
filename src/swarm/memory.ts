// Giving memory back after a flood. V8 collects its old generation only when it allocates: a node
// whose peers made it buffer hundreds of MiB (messages announced and then abandoned, thousands of
// connection objects) keeps that memory, dead but uncollected, for as long as it stays quiet
// afterwards: RSS stayed at its peak after every flood of the abuse benchmark. A node process
// therefore watches its RSS and runs a full collection when it has grown well above the lowest
// level seen after recent collections, or when its message framing has just released a lot of
// buffer memory; ArrayBuffers' backing stores are then freed (and unmapped) by V8's sweeper.
//
// The decision is a pure function of the state, the RSS, the clock and the options, so it can be
// tested and simulated; `watchMemory` drives it with process.memoryUsage.rss() and a timer.
import { fullCollection } from "../gc.js";
import { logger } from "../log.js";

const log = logger("swarm:memory");

export interface ReclaimOptions {
  /** Collect when RSS exceeds the floor by this fraction... */
  growthFraction: number;
  /** ...and by at least this many bytes. */
  growthBytes: number;
  /** Collect soon after framing released this many bytes of message buffers since the last collection. */
  releasedBytes: number;
  /** Never two collections closer than this. */
  minIntervalMs: number;
  /**
   * A growth-triggered collection that freed less than half of `growthBytes` doubles the wait
   * before the next growth-triggered one, up to this (the memory is in use, or not yet let go:
   * a quiet node does not collect every few seconds for nothing); an effective one resets it, and
   * RSS falling by `growthBytes` between two checks skips it (the program let go of memory).
   */
  maxBackoffMs: number;
  /** The floor is the lowest RSS measured after a collection within this window (older ones are forgotten, so lasting growth, e.g. a bigger KV cache in use, stops triggering collections). */
  floorWindowMs: number;
}

export const RECLAIM_DEFAULTS: ReclaimOptions = {
  growthFraction: 0.05,
  growthBytes: 8 << 20,
  releasedBytes: 64 << 20,
  minIntervalMs: 2000,
  maxBackoffMs: 16_000,
  floorWindowMs: 5 * 60_000,
};

export interface ReclaimState {
  /** When the last collection ran (-Infinity: never). */
  lastCollectAt: number;
  /** RSS measured shortly after each recent collection (and at the start), oldest first. */
  afterCollect: { at: number; bytes: number }[];
  /** Message buffer bytes released by framing since the last collection. */
  released: number;
  /** Wait after the last collection before a growth-triggered one (minIntervalMs, or more after ineffective ones). */
  backoffMs: number;
  /** RSS at the previous check: a fall of growthBytes means the program let go of memory, and a collection gets the rest. */
  lastRss?: number;
}

/** The state after a check that measured `rss`. */
export function sampled(state: ReclaimState, rss: number): ReclaimState {
  return { ...state, lastRss: rss };
}

export function initialReclaimState(rss: number, now: number): ReclaimState {
  return { lastCollectAt: -Infinity, afterCollect: [{ at: now, bytes: rss }], released: 0, backoffMs: 0 };
}

/** The lowest RSS after a collection within the window (the newest one if all are older). */
export function reclaimFloor(state: ReclaimState, now: number, opts: ReclaimOptions = RECLAIM_DEFAULTS): number {
  const recent = state.afterCollect.filter((s) => now - s.at <= opts.floorWindowMs);
  const samples = recent.length ? recent : state.afterCollect.slice(-1);
  return Math.min(...samples.map((s) => s.bytes));
}

/** Why a collection should run now, or undefined if it should not. */
export function shouldCollect(state: ReclaimState, rss: number, now: number, opts: ReclaimOptions = RECLAIM_DEFAULTS): string | undefined {
  if (now - state.lastCollectAt < opts.minIntervalMs) return undefined;
  if (state.released >= opts.releasedBytes) return `framing released ${mib(state.released)} of message buffers`;
  const fell = state.lastRss !== undefined && state.lastRss - rss >= opts.growthBytes;
  if (now - state.lastCollectAt < state.backoffMs && !fell) return undefined;
  const floor = reclaimFloor(state, now, opts);
  if (rss > floor * (1 + opts.growthFraction) && rss - floor >= opts.growthBytes) return `RSS ${mib(rss)} is above its floor of ${mib(floor)}`;
  return undefined;
}

/** The state after a collection at `now`: the released count restarts, old floor samples are dropped. */
export function collected(state: ReclaimState, now: number, opts: ReclaimOptions = RECLAIM_DEFAULTS): ReclaimState {
  return { ...state, lastCollectAt: now, afterCollect: state.afterCollect.filter((s) => now - s.at <= opts.floorWindowMs), released: 0 };
}

/**
 * The state once the RSS after the collection at `at` is measured (`before`: the RSS it started
 * from): a new floor sample, and the backoff doubled if it freed little, reset if it freed enough.
 */
export function measuredAfter(state: ReclaimState, at: number, rss: number, before = rss, opts: ReclaimOptions = RECLAIM_DEFAULTS): ReclaimState {
  const effective = before - rss >= opts.growthBytes / 2;
  const backoffMs = effective ? 0 : Math.min(opts.maxBackoffMs, Math.max(opts.minIntervalMs, state.backoffMs) * 2);
  return { ...state, afterCollect: [...state.afterCollect, { at, bytes: rss }], backoffMs };
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

export interface MemoryWatch {
  /** Counts message buffer bytes released (wired to the framing budget). */
  released(bytes: number): void;
  stop(): void;
  /** Collections run so far. */
  readonly collections: number;
}

/**
 * Watches this process's RSS every `checkMs` and collects as `shouldCollect` decides; the RSS after
 * a collection is measured `settleMs` later (V8 frees ArrayBuffer memory on a background thread).
 */
export function watchMemory(
  opts: Partial<ReclaimOptions> & {
    checkMs?: number;
    settleMs?: number;
    /** Collects the process's other heaps with the main thread's (the engine thread's: its KV caches and outputs). */
    alsoCollect?: () => void;
  } = {},
): MemoryWatch {
  const o = { ...RECLAIM_DEFAULTS, ...opts };
  const checkMs = opts.checkMs ?? 1000;
  const settleMs = opts.settleMs ?? 500;
  const gc = fullCollection();
  let state = initialReclaimState(process.memoryUsage.rss(), Date.now());
  let collections = 0;
  const timers = new Set<NodeJS.Timeout>();
  const check = setInterval(() => {
    if (!gc) return;
    const now = Date.now();
    const before = process.memoryUsage.rss();
    const why = shouldCollect(state, before, now, o);
    state = sampled(state, before);
    if (!why) return;
    const t0 = performance.now();
    gc();
    opts.alsoCollect?.();
    collections++;
    const pauseMs = performance.now() - t0;
    state = collected(state, now, o);
    const settle = setTimeout(() => {
      timers.delete(settle);
      const after = process.memoryUsage.rss();
      state = measuredAfter(state, now, after, before, o);
      log("collected (%s) in %s ms: RSS %s → %s", why, pauseMs.toFixed(1), mib(before), mib(after));
    }, settleMs);
    settle.unref();
    timers.add(settle);
  }, checkMs);
  check.unref();
  return {
    released(bytes: number) {
      state = { ...state, released: state.released + bytes };
    },
    stop() {
      clearInterval(check);
      for (const t of timers) clearTimeout(t);
      timers.clear();
    },
    get collections() {
      return collections;
    },
  };
}
