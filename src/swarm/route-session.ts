// A client's inference session over a route of nodes: it chains their spans, keeps every input
// it sent to each span (the history), and when a span fails it bans the peer, re-routes only
// that span's blocks, replays the history to rebuild the replacement's KV cache, and goes on.
// Transport-agnostic: nodes are reached through a SpanProvider (libp2p, or in-process in tests).
import type { ForwardInput, ForwardOutput } from "../engine/interface.js";
import type { LogitsSession } from "../engine/interface.js";
import { BanList } from "./bans.js";
import { type Hop, MissingBlocksError, type SpanRecord } from "./records.js";
import { CHAIN_MIN_GAIN_S, chainingGain, maxThroughputRoute, minLatencyRoute } from "./routing.js";
import type { LinkRequest, PushTarget } from "./protocol.js";
import { errorMessage, logger } from "../log.js";
import type { Receipt } from "./receipt.js";

const log = logger("swarm:route");

export interface StepOptions {
  allLogits?: boolean;
  /** The route's step id (the same on every hop, so pushed and relayed copies are recognised). */
  stepId?: number;
  /** Ask the node to push its output to the next hop itself. */
  push?: boolean;
}

/** One open session on a node's sub-span; inputs and outputs as in the engine's KvSession. */
export interface RemoteSpan {
  forward(input: ForwardInput, opts: StepOptions): Promise<ForwardOutput>;
  truncate(position: number): Promise<void>;
  close(): Promise<void>;
  /** The session's id on its node, where the transport has one (for logs). */
  readonly sessionId?: string;
  /** Server-to-server chaining, where the transport has it. */
  chain?: {
    /** How the previous node reaches this session. */
    target(): PushTarget;
    link(link: LinkRequest): Promise<void>;
    /**
     * The result of a step pushed here by the previous node, or undefined if none came within
     * `graceMs`; `input` is the previous hop's output as the client received it (for the receipt).
     */
    pushed(stepId: number, tokens: number, allLogits: boolean, graceMs: number, input?: ForwardInput): Promise<ForwardOutput | undefined>;
  };
  /** The node's signed receipts of the steps it ran, where the transport has them. */
  readonly receipts?: readonly Receipt[];
  /** Resolves once the receipts received so far are checked; rejects (BAD_RECEIPT) if one is not the node's. */
  settle?(): Promise<void>;
}

/** Blocks [start, end). */
export interface BlockRange {
  start: number;
  end: number;
}

export interface SpanProvider {
  /**
   * Records of the swarm's nodes (from the DHT). With `range`, only the holders of blocks
   * [start, end) are looked up (a re-route after a failure needs no more): the result then holds
   * those, and may also hold records of other nodes the provider already knew. Without it, every
   * block's holders are looked up again (a full refresh).
   */
  records(range?: BlockRange): Promise<SpanRecord[]>;
  /** Opens a session on `hop`, whose first block takes token ids when hop.start is 0. */
  open(hop: Hop, maxLength: number): Promise<RemoteSpan>;
  rtts(): ReadonlyMap<string, number>;
}

/** Grace for a pushed result until the hop's pushed steps were timed (and the bound after). */
export const PUSH_GRACE_MS = 1000;
/** The grace is this many times a hop's recent pushed decode-step latency... */
export const PUSH_GRACE_FACTOR = 4;
/** ...and never below this (scheduling jitter, GC pauses). */
export const PUSH_GRACE_FLOOR_MS = 50;
/** Weight of the newest sample in a hop's pushed-step latency (exponential moving average). */
const PUSH_LATENCY_WEIGHT = 0.2;

/**
 * How long the client waits for a hop's pushed result before relaying the step itself: `factor`
 * times `latencyMs`, the hop's recent pushed decode-step latency (from receiving the previous
 * hop's output to receiving this hop's), within [`floorMs`, `capMs`]; `capMs` while nothing was
 * measured. A grace that turns out too short costs little: a node runs each step id once, so the
 * relayed copy of a step whose push was only slow is skipped and answered by the pushed run; only
 * the upload, and relays instead of pushes further down that step, are spent.
 */
export function pushGrace(latencyMs: number | undefined, capMs: number, factor = PUSH_GRACE_FACTOR, floorMs = PUSH_GRACE_FLOOR_MS): number {
  if (latencyMs === undefined || !(latencyMs >= 0) || !Number.isFinite(latencyMs)) return capMs;
  return Math.min(capMs, Math.max(floorMs, factor * latencyMs));
}

export interface RouteSessionOptions {
  numBlocks: number;
  maxLength: number;
  /** Failovers allowed per step before giving up. */
  maxRetries?: number;
  now?: () => number;
  /**
   * Server-to-server: each node pushes its output straight to the next node; the client still
   * receives every hop's output (its replay history) and relays a step itself when a push does
   * not arrive within `pushGraceMs`. "auto" chains when `chainingGain` of the route exceeds
   * CHAIN_MIN_GAIN_S, i.e. when the client is farther from the nodes than they are from each other.
   */
  chained?: boolean | "auto";
  /**
   * "min-latency" (default): Dijkstra for interactive decoding. "max-throughput": a random walk
   * weighted by span length, spreading batch work (evaluation, many sessions) over the swarm.
   */
  routing?: "min-latency" | "max-throughput";
  /** Randomness for max-throughput routing (passed in, so a simulator can drive it). */
  random?: () => number;
  /**
   * Longest wait for a pushed result before the client relays the step (default PUSH_GRACE_MS):
   * the wait itself is `pushGrace` of the hop's measured pushed-step latency, this until measured.
   */
  pushGraceMs?: number;
  /** Called on every failover, for logs and dashboards. */
  onFailover?: (event: { peerId: string; blocks: [number, number]; error: Error; replacement: Hop[] }) => void;
}

interface Step {
  input: ForwardInput;
  tokens: number;
}

/** One append's way down the route. */
interface RouteStep {
  id: number;
  allLogits: boolean;
  /** The route chained when the step began (the client then times no relays: nodes were pushing). */
  chained: boolean;
  /**
   * Hops after the first receive the step pushed by their predecessor. Cleared once the client
   * relays the step to a hop or replaces one: it then relays the rest of this step hop by hop
   * rather than waiting for pushes further down.
   */
  pushing: boolean;
}

interface LiveHop {
  hop: Hop;
  span: RemoteSpan;
  /** Every input this hop received, in order (token ids or hidden rows), with its token count. */
  history: Step[];
}

/** "peer P session S" (or "peer P" where the transport has no session ids), for logs. */
function describe(live: LiveHop): string {
  return live.span.sessionId ? `peer ${live.hop.peerId} session ${live.span.sessionId}` : `peer ${live.hop.peerId}`;
}

export class RouteSession implements LogitsSession {
  /** Receipts of hops no longer on the route (failed, replaced or closed). */
  private retiredReceipts: Receipt[] = [];
  private hops: LiveHop[] = [];
  private position = 0;
  private stepCounter = 0;
  /** For chained: "auto": whether the current route gains from pushes (set when routing). */
  private chainPays = false;
  private lastRecords: SpanRecord[] = [];
  private hopOverheadS?: number;
  /** Per peer: moving average of how long its pushed decode results took to arrive, in ms. */
  private readonly pushLatencyMs = new Map<string, number>();
  private readonly bans = new BanList();

  private constructor(
    private readonly provider: SpanProvider,
    private readonly opts: RouteSessionOptions,
  ) {}

  static async open(provider: SpanProvider, opts: RouteSessionOptions): Promise<RouteSession> {
    const session = new RouteSession(provider, opts);
    session.hops = await session.connect(0, opts.numBlocks);
    await session.relink();
    return session;
  }

  get length(): number {
    return this.position;
  }

  get maxLength(): number {
    return this.opts.maxLength;
  }

  /** Every signed receipt this session received, from hops on the route and hops it left (the evidence of who computed what). */
  get receipts(): Receipt[] {
    return [...this.retiredReceipts, ...this.hops.flatMap((h) => h.span.receipts ?? [])];
  }

  /**
   * Waits until the current hops' receipts are checked; rejects with the first hop whose receipts
   * are not its own. Steps do not wait for this: a signature attributes an output, it does not
   * make it right (that is verification's job), so signatures are checked off the critical path
   * and a bad one fails that node's next step, which re-routes around it.
   */
  async settleReceipts(): Promise<void> {
    await Promise.all(this.hops.map((h) => h.span.settle?.()));
  }

  /** The current route, for display. */
  get route(): Hop[] {
    return this.hops.map((h) => ({ ...h.hop }));
  }

  async append(tokens: readonly number[], opts: { allLogits?: boolean } = {}): Promise<Float32Array> {
    const chained = this.chaining;
    const route: RouteStep = { id: ++this.stepCounter, allLogits: Boolean(opts.allLogits), chained, pushing: chained };
    let input: ForwardInput = { tokens: [...tokens] };
    try {
      for (let i = 0; i < this.hops.length; i++) {
        const step = { input, tokens: tokens.length };
        const output = route.pushing && i > 0 ? await this.receivePushed(i, step, route) : await this.forwardWithFailover(i, step, route);
        const peer = this.hopAt(i).hop.peerId;
        if (i === this.hops.length - 1) {
          if (!output.logits) throw new Error(`peer ${peer} serves the last block but returned no logits`);
          this.position += tokens.length;
          return output.logits;
        }
        if (!output.hidden) throw new Error(`peer ${peer} returned no hidden states for the next hop`);
        input = { hidden: output.hidden };
      }
    } catch (e) {
      // The step failed part-way: hops that ran it roll back, so the session stays usable at its length.
      log("step %d failed (%s): rolling every hop back to %d tokens", route.id, errorMessage(e), this.position);
      this.truncate(this.position);
      throw e;
    }
    throw new Error("empty route");
  }

  truncate(position: number): void {
    if (!(position >= 0 && position <= this.position)) throw new RangeError(`cannot roll back to ${position} from ${this.position}`);
    for (const h of this.hops) {
      h.history = truncateHistory(h.history, position);
      void h.span.truncate(position).catch((e: unknown) => {
        // A dead node is replaced, from the (already truncated) history, on the next step.
        log("%s: rollback to %d failed, replaced on the next step: %s", describe(h), position, errorMessage(e));
      });
    }
    this.position = position;
  }

  close(): void {
    for (const h of this.hops) this.closeSpan(h, "session closed");
    this.hops = [];
  }

  /** Whether nodes push to each other on the current route. */
  get chaining(): boolean {
    const wanted = this.opts.chained === "auto" ? this.chainPays : Boolean(this.opts.chained);
    return wanted && this.hops.length > 1 && this.hops.every((h) => h.span.chain);
  }

  private now(): number {
    return this.opts.now?.() ?? Date.now();
  }

  private hopAt(index: number): LiveHop {
    const live = this.hops[index];
    if (!live) throw new RangeError(`no hop ${index} on a route of ${this.hops.length}`);
    return live;
  }

  /** Closes a hop's session, logging (not throwing) when the node is gone already. */
  private closeSpan(live: LiveHop, why: string): void {
    if (live.span.receipts) this.retiredReceipts.push(...live.span.receipts);
    void live.span.close().catch((e: unknown) => log.trace("%s: close (%s) failed: %s", describe(live), why, errorMessage(e)));
  }

  /**
   * The client's own per-hop overhead, for routing: a relayed decode step's time less the peer's
   * RTT and its announced compute time (blocks / decode rps), averaged over steps.
   */
  private measureHopOverhead(hop: Hop, seconds: number): void {
    const rtt = this.provider.rtts().get(hop.peerId);
    const rps = this.lastRecords.find((r) => r.peerId === hop.peerId)?.inferenceRps;
    if (rtt === undefined || !rps) return;
    const sample = Math.max(0, seconds - rtt - (hop.end - hop.start) / rps);
    this.hopOverheadS = this.hopOverheadS === undefined ? sample : 0.9 * this.hopOverheadS + 0.1 * sample;
  }

  /** Measured per-hop overhead in seconds (undefined until a relayed decode step was timed). */
  get measuredHopOverhead(): number | undefined {
    return this.hopOverheadS;
  }

  /** After (re)routing: decides whether chaining pays on this route and, if on, links the hops. */
  private async relink(): Promise<void> {
    const route = this.hops.map((h) => h.hop);
    this.chainPays = chainingGain(route, this.lastRecords, this.provider.rtts()) > CHAIN_MIN_GAIN_S;
    if (this.chaining) await this.linkHops();
  }

  /** Tells every hop where to push and whom to accept pushes from. */
  private async linkHops(): Promise<void> {
    await Promise.all(
      this.hops.map((h, i) => {
        if (!h.span.chain) throw new Error(`${describe(h)} cannot chain`);
        const link: LinkRequest = {};
        const next = this.hops[i + 1];
        const prev = this.hops[i - 1];
        if (next?.span.chain) link.next = next.span.chain.target();
        if (prev) link.prev = prev.hop.peerId;
        return h.span.chain.link(link);
      }),
    );
  }

  /**
   * Hop `index`'s result for a step its predecessor pushed. When none comes within the grace, or
   * the hop fails, the client relays the step (to a replacement if need be), and relays the rest
   * of this step itself.
   */
  private async receivePushed(index: number, step: Step, route: RouteStep): Promise<ForwardOutput> {
    const live = this.hopAt(index);
    const peer = live.hop.peerId;
    const decode = step.tokens === 1;
    const cap = this.opts.pushGraceMs ?? PUSH_GRACE_MS;
    // Multi-token (prefill) steps take longer than decode steps: they get the whole cap.
    const graceMs = decode ? pushGrace(this.pushLatencyMs.get(peer), cap) : cap;
    const t0 = performance.now();
    try {
      const output = await live.span.chain?.pushed(route.id, step.tokens, route.allLogits, graceMs, step.input);
      if (output) {
        if (decode) {
          const ms = performance.now() - t0;
          const before = this.pushLatencyMs.get(peer);
          this.pushLatencyMs.set(peer, before === undefined ? ms : (1 - PUSH_LATENCY_WEIGHT) * before + PUSH_LATENCY_WEIGHT * ms);
        }
        live.history.push(step);
        return output;
      }
      log("%s: no push of step %d within %d ms, relaying it and the rest of the step", describe(live), route.id, Math.round(graceMs));
      route.pushing = false;
    } catch (error) {
      route.pushing = false;
      await this.replace(index, error instanceof Error ? error : new Error(String(error)));
    }
    return this.forwardWithFailover(index, step, route);
  }

  private async forwardWithFailover(index: number, step: Step, route: RouteStep): Promise<ForwardOutput> {
    const maxRetries = this.opts.maxRetries ?? 8;
    for (let attempt = 0; ; attempt++) {
      const live = this.hopAt(index);
      try {
        const t0 = performance.now();
        const output = await live.span.forward(step.input, { allLogits: route.allLogits, stepId: route.id, push: route.pushing });
        if (step.tokens === 1 && !route.chained) this.measureHopOverhead(live.hop, (performance.now() - t0) / 1000);
        live.history.push(step);
        return output;
      } catch (error) {
        if (attempt >= maxRetries) {
          log.error("%s: step %d failed, giving up after %d failovers: %s", describe(live), route.id, attempt, errorMessage(error));
          throw error;
        }
        // The replacement hops are not linked for this step's pushes: relay the rest of it.
        route.pushing = false;
        await this.replace(index, error instanceof Error ? error : new Error(String(error)));
      }
    }
  }

  /** Bans the failed hop's peer and splices in a new route for its blocks, rebuilt from history. */
  private async replace(index: number, error: Error): Promise<void> {
    const failed = this.hopAt(index);
    const { peerId, start, end } = failed.hop;
    const banMs = this.bans.ban(peerId, this.now());
    log("%s failed on blocks [%d, %d), banned for %d s: %s", describe(failed), start, end, banMs / 1000, error.message);
    this.closeSpan(failed, "failed");
    const replacement = await this.connect(start, end);
    // Replay: the first new hop gets the whole history; each later one gets its predecessor's outputs.
    if (failed.history.length) {
      let replay = concatSteps(failed.history);
      for (const [j, live] of replacement.entries()) {
        const out = await live.span.forward(replay.input, {});
        live.history = [replay];
        if (j === replacement.length - 1) break;
        if (!out.hidden) throw new Error(`${describe(live)} returned no hidden states replaying ${replay.tokens} tokens`);
        replay = { input: { hidden: out.hidden }, tokens: replay.tokens };
      }
    }
    this.hops.splice(index, 1, ...replacement);
    await this.relink();
    log("blocks [%d, %d) re-routed from %s to %s", start, end, peerId, replacement.map((h) => `${h.hop.peerId} [${h.hop.start}, ${h.hop.end})`).join(", "));
    this.opts.onFailover?.({ peerId, blocks: [start, end], error, replacement: replacement.map((h) => h.hop) });
  }

  /** Routes [start, end) and opens a session on every hop; a node that refuses is banned and routed around. */
  private async connect(start: number, end: number): Promise<LiveHop[]> {
    const maxRetries = this.opts.maxRetries ?? 8;
    for (let attempt = 0; ; attempt++) {
      const route = await this.planRoute(start, end);
      const opened = await Promise.allSettled(route.map((hop) => this.provider.open(hop, this.opts.maxLength)));
      const live: LiveHop[] = [];
      let refused: { hop: Hop; reason: unknown } | undefined;
      route.forEach((hop, i) => {
        const o = opened[i];
        if (o?.status === "fulfilled") live.push({ hop, span: o.value, history: [] });
        else refused ??= { hop, reason: o?.reason };
      });
      if (!refused) return live;
      for (const h of live) this.closeSpan(h, `another hop of blocks [${start}, ${end}) refused`);
      if (attempt >= maxRetries) throw refused.reason;
      log("peer %s refused blocks [%d, %d), routing around it: %s", refused.hop.peerId, refused.hop.start, refused.hop.end, errorMessage(refused.reason));
      this.bans.ban(refused.hop.peerId, this.now());
    }
  }

  private async planRoute(start: number, end: number): Promise<Hop[]> {
    // Only the holders of these blocks are looked up; what was known of the others stays.
    const fresh = await this.provider.records({ start, end });
    const records = mergeRecords(this.lastRecords, fresh, { start, end });
    this.lastRecords = records;
    const route = (excluded?: ReadonlySet<string>) =>
      this.opts.routing === "max-throughput"
        ? maxThroughputRoute(records, { start, end, excluded }, this.opts.random ?? Math.random)
        : minLatencyRoute(records, { start, end, needTokens: this.opts.maxLength, clientRtt: this.provider.rtts(), hopOverheadS: this.hopOverheadS, excluded });
    try {
      return route(this.bans.banned(this.now()));
    } catch (e) {
      if (!(e instanceof MissingBlocksError)) throw e;
      // Every server of some block is banned: ignore bans rather than fail (Petals' rule).
      log("every server of block(s) %s is banned: routing [%d, %d) without bans", e.blocks.join(", "), start, end);
      return route();
    }
  }
}

/**
 * The records to route with after looking up the holders of `range`: the fresh ones, and the
 * earlier ones of nodes that serve no block of `range` (a node that served some but was not
 * found again is gone).
 */
export function mergeRecords(earlier: readonly SpanRecord[], fresh: readonly SpanRecord[], range: BlockRange): SpanRecord[] {
  const ids = new Set(fresh.map((r) => r.peerId));
  const kept = earlier.filter((r) => !ids.has(r.peerId) && !(r.start < range.end && range.start < r.end));
  return [...kept, ...fresh].sort((a, b) => a.peerId.localeCompare(b.peerId));
}

/** The steps' inputs as one step (all token ids, or all hidden rows). */
function concatSteps(steps: readonly Step[]): Step {
  const tokens = steps.reduce((n, s) => n + s.tokens, 0);
  const ids: number[] = [];
  const rows: Float32Array[] = [];
  for (const s of steps) {
    if (s.input.tokens) ids.push(...Array.from(s.input.tokens));
    else if (s.input.hidden) rows.push(s.input.hidden);
  }
  if (ids.length && rows.length) throw new Error("a hop's history mixes token ids and hidden states");
  if (!rows.length) return { input: { tokens: ids }, tokens };
  const hidden = new Float32Array(rows.reduce((n, r) => n + r.length, 0));
  let at = 0;
  for (const r of rows) {
    hidden.set(r, at);
    at += r.length;
  }
  return { input: { hidden }, tokens };
}

/** Keeps the inputs of the first `position` tokens. */
function truncateHistory(history: Step[], position: number): Step[] {
  if (!history.length || position === 0) return [];
  const all = concatSteps(history);
  if (all.input.hidden) {
    const width = all.input.hidden.length / all.tokens;
    return [{ input: { hidden: all.input.hidden.slice(0, position * width) }, tokens: position }];
  }
  return [{ input: { tokens: Array.from(all.input.tokens ?? []).slice(0, position) }, tokens: position }];
}
