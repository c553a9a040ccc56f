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
  /** Server-to-server chaining, where the transport has it. */
  chain?: {
    /** How the previous node reaches this session. */
    target(): PushTarget;
    link(link: LinkRequest): Promise<void>;
    /** The result of a step pushed here by the previous node, or undefined if none came within `graceMs`. */
    pushed(stepId: number, tokens: number, allLogits: boolean, graceMs: number): Promise<ForwardOutput | undefined>;
  };
}

export interface SpanProvider {
  /** Current records of the swarm (from the DHT). */
  records(): Promise<SpanRecord[]>;
  /** Opens a session on `hop`, whose first block takes token ids when hop.start is 0. */
  open(hop: Hop, maxLength: number): Promise<RemoteSpan>;
  rtts(): ReadonlyMap<string, number>;
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
  pushGraceMs?: number;
  /** Called on every failover, for logs and dashboards. */
  onFailover?: (event: { peerId: string; blocks: [number, number]; error: Error; replacement: Hop[] }) => void;
}

interface Step {
  input: ForwardInput;
  tokens: number;
}

interface LiveHop {
  hop: Hop;
  span: RemoteSpan;
  /** Every input this hop received, in order (token ids or hidden rows), with its token count. */
  history: Step[];
}

export class RouteSession implements LogitsSession {
  private hops: LiveHop[] = [];
  private position = 0;
  private stepCounter = 0;
  /** For chained: "auto": whether the current route gains from pushes (set when routing). */
  private chainPays = false;
  private lastRecords: SpanRecord[] = [];
  private hopOverheadS?: number;
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

  /** The current route, for display. */
  get route(): Hop[] {
    return this.hops.map((h) => ({ ...h.hop }));
  }

  async append(tokens: readonly number[], opts: { allLogits?: boolean } = {}): Promise<Float32Array> {
    const chained = this.chaining;
    const stepOpts: StepOptions = { ...opts, stepId: ++this.stepCounter, push: chained };
    let input: ForwardInput = { tokens: [...tokens] };
    for (let i = 0; i < this.hops.length; i++) {
      const step = { input, tokens: tokens.length };
      const output = chained && i > 0 ? await this.receivePushed(i, step, stepOpts) : await this.forwardWithFailover(i, step, stepOpts);
      if (i === this.hops.length - 1) {
        this.position += tokens.length;
        return output.logits!;
      }
      input = { hidden: output.hidden! };
    }
    throw new Error("empty route");
  }

  truncate(position: number): void {
    if (!(position >= 0 && position <= this.position)) throw new RangeError(`cannot roll back to ${position} from ${this.position}`);
    for (const h of this.hops) {
      h.history = truncateHistory(h.history, position);
      void h.span.truncate(position).catch(() => {}); // a dead node is replaced, from the history, on the next step
    }
    this.position = position;
  }

  close(): void {
    for (const h of this.hops) void h.span.close().catch(() => {});
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
        const link: LinkRequest = {};
        if (i + 1 < this.hops.length) link.next = this.hops[i + 1]!.span.chain!.target();
        if (i > 0) link.prev = this.hops[i - 1]!.hop.peerId;
        return h.span.chain!.link(link);
      }),
    );
  }

  /** Hop `index`'s result for a step its predecessor pushed; relayed by the client if the push is late. */
  private async receivePushed(index: number, step: Step, opts: StepOptions): Promise<ForwardOutput> {
    const live = this.hops[index]!;
    try {
      const output = await live.span.chain!.pushed(opts.stepId!, step.tokens, Boolean(opts.allLogits), this.opts.pushGraceMs ?? 1000);
      if (output) {
        live.history.push(step);
        return output;
      }
    } catch (error) {
      await this.replace(index, error as Error);
    }
    return this.forwardWithFailover(index, step, opts);
  }

  private async forwardWithFailover(index: number, step: Step, opts: StepOptions): Promise<ForwardOutput> {
    const maxRetries = this.opts.maxRetries ?? 8;
    for (let attempt = 0; ; attempt++) {
      const live = this.hops[index]!;
      try {
        const t0 = performance.now();
        const output = await live.span.forward(step.input, opts);
        if (step.tokens === 1 && !opts.push) this.measureHopOverhead(live.hop, (performance.now() - t0) / 1000);
        live.history.push(step);
        return output;
      } catch (error) {
        if (attempt >= maxRetries) throw error;
        await this.replace(index, error as Error);
      }
    }
  }

  /** Bans the failed hop's peer and splices in a new route for its blocks, rebuilt from history. */
  private async replace(index: number, error: Error): Promise<void> {
    const failed = this.hops[index]!;
    this.bans.ban(failed.hop.peerId, this.now());
    void failed.span.close().catch(() => {});
    const replacement = await this.connect(failed.hop.start, failed.hop.end);
    // Replay: the first new hop gets the whole history; each later one gets its predecessor's outputs.
    if (failed.history.length) {
      let replay = concatSteps(failed.history);
      for (const [j, live] of replacement.entries()) {
        const out = await live.span.forward(replay.input, {});
        live.history = [replay];
        if (j < replacement.length - 1) replay = { input: { hidden: out.hidden! }, tokens: replay.tokens };
      }
    }
    this.hops.splice(index, 1, ...replacement);
    await this.relink();
    this.opts.onFailover?.({ peerId: failed.hop.peerId, blocks: [failed.hop.start, failed.hop.end], error, replacement: replacement.map((h) => h.hop) });
  }

  /** Routes [start, end) and opens a session on every hop; a node that refuses is banned and routed around. */
  private async connect(start: number, end: number): Promise<LiveHop[]> {
    const maxRetries = this.opts.maxRetries ?? 8;
    for (let attempt = 0; ; attempt++) {
      const route = await this.planRoute(start, end);
      const opened = await Promise.allSettled(route.map((hop) => this.provider.open(hop, this.opts.maxLength)));
      const failed = opened.findIndex((o) => o.status === "rejected");
      if (failed < 0) return route.map((hop, i) => ({ hop, span: (opened[i] as PromiseFulfilledResult<RemoteSpan>).value, history: [] }));
      for (const o of opened) if (o.status === "fulfilled") void o.value.close().catch(() => {});
      if (attempt >= maxRetries) throw (opened[failed] as PromiseRejectedResult).reason;
      this.bans.ban(route[failed]!.peerId, this.now());
    }
  }

  private async planRoute(start: number, end: number): Promise<Hop[]> {
    const records = await this.provider.records();
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
      return route();
    }
  }
}

function concatSteps(steps: Step[]): Step {
  const tokens = steps.reduce((n, s) => n + s.tokens, 0);
  if (steps[0]!.input.tokens) return { input: { tokens: steps.flatMap((s) => Array.from(s.input.tokens!)) }, tokens };
  const hidden = new Float32Array(steps.reduce((n, s) => n + s.input.hidden!.length, 0));
  let at = 0;
  for (const s of steps) {
    hidden.set(s.input.hidden!, at);
    at += s.input.hidden!.length;
  }
  return { input: { hidden }, tokens };
}

/** Keeps the inputs of the first `position` tokens. */
function truncateHistory(history: Step[], position: number): Step[] {
  if (!history.length || position === 0) return [];
  const all = concatSteps(history);
  if (all.input.tokens) return [{ input: { tokens: Array.from(all.input.tokens).slice(0, position) }, tokens: position }];
  const width = all.input.hidden!.length / all.tokens;
  return [{ input: { hidden: all.input.hidden!.slice(0, position * width) }, tokens: position }];
}
