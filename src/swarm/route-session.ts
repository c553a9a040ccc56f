// A client's inference session over a route of nodes: it chains their spans, keeps every input
// it sent to each span (the history), and when a span fails it bans the peer, re-routes only
// that span's blocks, replays the history to rebuild the replacement's KV cache, and goes on.
// Transport-agnostic: nodes are reached through a SpanProvider (libp2p, or in-process in tests).
import type { ForwardInput, ForwardOutput, LogitsSession, SettleResult } from "../engine/interface.js";
import type { Outcome } from "../verify/reputation.js";
import { routingPenaltySeconds } from "../verify/reputation.js";
import { DEFAULT_TOLERANCE, rowErrors } from "../verify/compare.js";
import type { KnownAnswer } from "../verify/ledger.js";
import { decodeTensor, encodeTensor } from "../wire/tensor-frame.js";
import type { Codec } from "../wire/tensor-frame.js";
import { BanList } from "./bans.js";
import { type Hop, MissingBlocksError, type SpanRecord } from "./records.js";
import { CHAIN_MIN_GAIN_S, chainingGain, maxThroughputRoute, minLatencyRoute } from "./routing.js";
import type { LinkRequest, PushTarget } from "./protocol.js";
import { errorMessage, logger } from "../log.js";
import type { Receipt } from "./receipt.js";
import { type Finding, SpanCheck, type Verifier, type VerifyPolicy } from "./span-check.js";

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
  /**
   * Commit-reveal (consensus verification): runs a step like `forward` but the node first answers
   * with only its signed receipt (the commitment: the hash of its input and of its output frame),
   * holding the output; `reveal()` then fetches the output, which must hash to the committed value.
   */
  commit?(input: ForwardInput, opts: StepOptions): Promise<Commitment>;
}

/** A node's answer to a committed step before the reveal. */
export interface Commitment {
  stepId: number;
  /** SHA-256 of the output frame the node holds (signed in its receipt). */
  outputHash: Uint8Array;
  /** Asks the node for the output; rejects (BAD_REVEAL) when it does not hash to `outputHash`. */
  reveal(): Promise<ForwardOutput>;
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
   * block's holders are looked up again (a full refresh). With `maxAgeMs`, a provider may answer
   * from what it looked up within that time instead of looking up again.
   */
  records(range?: BlockRange, opts?: { maxAgeMs?: number }): Promise<SpanRecord[]>;
  /** Opens a session on `hop`, whose first block takes token ids when hop.start is 0; `codec` overrides the provider's (verifiers use "none"). */
  /** `split`: a split-inference session (hidden states in at block 0, out at block L). */
  open(hop: Hop, maxLength: number, opts?: { codec?: Codec; split?: boolean }): Promise<RemoteSpan>;
  /** The codec sessions are opened with unless told otherwise. */
  readonly codec?: Codec;
  /** Row widths of hidden states and logits. */
  readonly widths?: { hidden: number; vocab: number };
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
  /**
   * Failovers allowed per step (and per re-route) before giving up: each failure bans its node and
   * routes around it, so many failing or lying nodes cost attempts, not the session, while honest
   * nodes cover the blocks. Default MAX_FAILOVERS, within `failoverBudgetMs`.
   */
  maxRetries?: number;
  /** Time a step (or a re-route) may spend failing over before giving up (default FAILOVER_BUDGET_MS). */
  failoverBudgetMs?: number;
  /**
   * Route with the holders the provider looked up within this time rather than looking them up for
   * every route (default RECORDS_MAX_AGE_MS; 0: always look up). A route that finds a block with no
   * usable holder among them looks up again before giving up.
   */
  recordsMaxAgeMs?: number;
  /** Bans shared with other sessions of the same client (a node that failed one session is routed around by the next). */
  bans?: BanList;
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
  /** Check the nodes' work (replay or consensus verification); off when absent or at rate 0. */
  verify?: VerifyPolicy;
  /** The client's reputation ledger: routing avoids nodes in cooldown or under the threshold, and every outcome is recorded. */
  trust?: TrustHooks;
  /** Called when a check catches a node (after the session rolled back and re-routed). */
  onCaught?: (event: CaughtEvent) => void;
}

/** What the route session needs of a reputation ledger (src/verify/ledger.ts implements it). */
export interface TrustHooks {
  score(peerId: string): number;
  /** Whether any outcome was recorded for the peer. */
  has(peerId: string): boolean;
  /** In a cooldown, or under the reputation threshold: route around it where another node serves its blocks. */
  avoid(peerId: string, now: number): boolean;
  record(peerId: string, outcome: Outcome, detail?: string): void;
  /** The trial pool: known answers for spans inside blocks [start, end), and where new ones go. */
  knownAnswers?(start: number, end: number): TrialAnswer[];
  addKnownAnswer?(answer: TrialAnswer): void;
}

/** A known answer of the trial pool (the ledger's, without its model and date). */
export type TrialAnswer = Omit<KnownAnswer, "modelId" | "created">;

/** Later trials: each known node of a new route gets one with this probability (a new node always). */
export const TRIAL_RATE = 0.05;

export interface CaughtEvent {
  peerId: string;
  blocks: [number, number];
  /** First position whose output was wrong (the session rolled back to it). */
  position: number;
  /** Relative error of that row against the reference. */
  error: number;
  /** The verifiers whose answers convicted it. */
  by: string[];
}

/** What a session's checks found, for the CLI and the API. */
export interface VerificationReport {
  rate: number;
  mode: "replay" | "consensus";
  /** Every hop that served the session, checked or not. */
  spans: { peerId: string; start: number; end: number; checked: boolean; verifiedTo: number; verifiedBy: string[]; unverifiable?: string }[];
  /** Checks run (windows compared) and positions verifiers recomputed. */
  checks: number;
  recomputedTokens: number;
  caught: CaughtEvent[];
  /** Verifiers a majority found wrong. */
  outvoted: { peerId: string; blocks: [number, number] }[];
  /** Nodes that served far slower than their record announced. */
  throughputLies: { peerId: string; blocks: [number, number]; announcedMs: number; measuredMs: number }[];
  /** Known-answer trials run before routing through a node. */
  trials: { peerId: string; blocks: [number, number]; passed: boolean; error?: number }[];
}

/** Failovers per step at most (a cap on attempts; the budget that matters is in time). */
export const MAX_FAILOVERS = 64;
/**
 * Sessions and re-routes reuse holders looked up this recently (Petals refreshes its routing table
 * every 60 s): a lookup per session costs a DHT query per block and a record fetch per holder, which
 * a swarm full of boasting Sybils makes slow.
 */
export const RECORDS_MAX_AGE_MS = 30_000;
/** How long one step may spend on failovers before the session gives up. */
export const FAILOVER_BUDGET_MS = 60_000;

/** A node is lying about its throughput when its decode steps take this many times what it announced... */
export const LIE_FACTOR = 10;
/** ...plus this slack (scheduling, other sessions), over at least LIE_MIN_SAMPLES steps. */
export const LIE_SLACK_S = 0.05;
export const LIE_MIN_SAMPLES = 8;

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
  /** Its verification, when the hop was drawn for checking. */
  check?: SpanCheck;
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
  private readonly bans: BanList;
  /** Hops that left the route, with their checks (for the verification report). */
  private readonly retired: { hop: Hop; check?: SpanCheck }[] = [];
  private readonly caught: CaughtEvent[] = [];
  private readonly outvoted: VerificationReport["outvoted"] = [];
  private readonly lies: VerificationReport["throughputLies"] = [];
  private readonly trials: VerificationReport["trials"] = [];
  /** Peers that passed a trial in this session (not tried again). */
  private readonly tried = new Set<string>();
  /** Per peer: moving average of its decode steps' compute time as the client sees it (step time less RTT), seconds. */
  private readonly stepTimes = new Map<string, { avg: number; n: number }>();
  /** Peers to replace before the next step (they answered, but lied about their speed). */
  private readonly evictions = new Map<string, Error>();
  /** Peers that served this session, and those that failed it (one reputation update per session each). */
  private readonly served = new Set<string>();
  private readonly failed = new Set<string>();

  private constructor(
    private readonly provider: SpanProvider,
    private readonly opts: RouteSessionOptions,
  ) {
    this.bans = opts.bans ?? new BanList();
  }

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
    for (const [peer, error] of this.evictions) {
      this.evictions.delete(peer);
      const index = this.hops.findIndex((h) => h.hop.peerId === peer);
      if (index >= 0) await this.replace(index, error);
    }
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
          this.startChecks();
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
      h.check?.truncate(position);
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
    // One reputation update per session: a node that served it without failing earns one reward.
    for (const peer of this.served) if (!this.failed.has(peer)) this.opts.trust?.record(peer, "ok");
    this.served.clear();
  }

  /** Positions whose outputs are final: checked on every hop drawn for checking (or past what can be checked). */
  get settledLength(): number {
    return this.hops.reduce((n, h) => Math.min(n, h.check ? h.check.settledTo(this.position) : this.position), this.position);
  }

  /**
   * Applies the checks finished so far (with `wait`, first checks what is left and waits for
   * every check). A node caught cheating is penalised and banned, every hop rolls back to the
   * first wrong position, and its blocks are re-routed and replayed from the verified history:
   * the caller appends again from `rewoundTo`.
   */
  async settle(opts: { wait: boolean }): Promise<SettleResult> {
    if (opts.wait) {
      for (const h of this.hops) h.check?.start(this.position);
      await Promise.all(this.hops.map((h) => h.check?.idle()));
    }
    const convicted = this.hops.flatMap((h) => (h.check?.finding ? [{ live: h, finding: h.check.finding }] : []));
    if (!convicted.length) return { settledLength: this.settledLength };
    const rewoundTo = Math.min(...convicted.map((c) => Math.max(c.finding.position, c.live.check!.floor)));
    this.truncate(rewoundTo);
    for (const { live, finding } of convicted) {
      const event: CaughtEvent = {
        peerId: live.hop.peerId,
        blocks: [live.hop.start, live.hop.end],
        position: finding.position,
        error: finding.error,
        by: finding.by,
      };
      this.caught.push(event);
      this.failed.add(event.peerId);
      this.opts.trust?.record(
        event.peerId,
        "caught",
        `blocks [${live.hop.start}, ${live.hop.end}) at position ${finding.position}, error ${finding.error.toExponential(2)}, verified by ${finding.by.join(", ")}`,
      );
      const index = this.hops.indexOf(live);
      const error = new Error(
        `caught: its output at position ${finding.position} is ${finding.error.toExponential(2)} off the verifiers' (${finding.by.join(", ")})`,
      );
      await this.replace(index, error, { caught: true });
      this.opts.onCaught?.(event);
    }
    return { settledLength: this.settledLength, rewoundTo };
  }

  /** What the checks of this session found so far. */
  get verification(): VerificationReport {
    const spans = [...this.retired, ...this.hops].map(({ hop, check }) => ({
      peerId: hop.peerId,
      start: hop.start,
      end: hop.end,
      checked: Boolean(check),
      verifiedTo: check?.checkedTo ?? 0,
      verifiedBy: [...(check?.verifiedBy ?? [])],
      ...(check?.unverifiable ? { unverifiable: check.unverifiable } : {}),
    }));
    const checks = [...this.retired, ...this.hops].map((h) => h.check).filter((c): c is SpanCheck => Boolean(c));
    return {
      rate: this.opts.verify?.rate ?? 0,
      mode: this.opts.verify?.mode ?? "replay",
      spans,
      checks: checks.reduce((n, c) => n + c.windows, 0),
      recomputedTokens: checks.reduce((n, c) => n + c.recomputed, 0),
      caught: [...this.caught],
      outvoted: [...this.outvoted],
      throughputLies: [...this.lies],
      trials: [...this.trials],
    };
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
    this.retired.push({ hop: live.hop, check: live.check });
    live.check?.close();
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
          // From the previous hop's output to this one's: this hop's compute plus half an RTT between nodes at most.
          this.timeStep(live, ms / 1000, 0);
        }
        this.accept(live, step, route, output, false);
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
    const maxRetries = this.opts.maxRetries ?? MAX_FAILOVERS;
    const deadline = this.now() + (this.opts.failoverBudgetMs ?? FAILOVER_BUDGET_MS);
    for (let attempt = 0; ; attempt++) {
      const live = this.hopAt(index);
      try {
        const t0 = performance.now();
        const output = await live.span.forward(step.input, { allLogits: route.allLogits, stepId: route.id, push: route.pushing });
        const seconds = (performance.now() - t0) / 1000;
        if (step.tokens === 1 && !route.chained) this.measureHopOverhead(live.hop, seconds);
        if (step.tokens === 1) this.timeStep(live, seconds, this.provider.rtts().get(live.hop.peerId) ?? 0);
        this.accept(live, step, route, output, true);
        return output;
      } catch (error) {
        if (attempt >= maxRetries || this.now() > deadline) {
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
  private async replace(index: number, error: Error, opts: { caught?: boolean } = {}): Promise<void> {
    const failed = this.hopAt(index);
    const { peerId, start, end } = failed.hop;
    const banMs = this.markFailed(peerId, error, !opts.caught);
    log("%s failed on blocks [%d, %d), banned for %d s: %s", describe(failed), start, end, banMs / 1000, error.message);
    this.closeSpan(failed, "failed");
    const maxRetries = this.opts.maxRetries ?? MAX_FAILOVERS;
    const deadline = this.now() + (this.opts.failoverBudgetMs ?? FAILOVER_BUDGET_MS);
    let replacement: LiveHop[];
    for (let attempt = 0; ; attempt++) {
      replacement = await this.connect(start, end, { checkAll: opts.caught });
      if (opts.caught && replacement.some((h) => h.hop.peerId === peerId)) {
        throw new Error(`peer ${peerId} was caught cheating on blocks [${start}, ${end}) and no other node serves them`);
      }
      const broken = await this.replay(failed.history, replacement);
      if (!broken) break;
      // A replacement that opens and then fails its replay (a node failing every step) is banned
      // and routed around like any failed hop, within the same budget.
      for (const live of replacement) this.closeSpan(live, "replay failed");
      if (attempt >= maxRetries || this.now() > deadline) {
        log.error(
          "%s: replaying blocks [%d, %d) failed, giving up after %d attempts: %s",
          describe(broken.live),
          start,
          end,
          attempt + 1,
          errorMessage(broken.error),
        );
        throw broken.error;
      }
      const ms = this.markFailed(broken.live.hop.peerId, broken.error);
      log("%s failed replaying blocks [%d, %d), banned for %d s: %s", describe(broken.live), start, end, ms / 1000, errorMessage(broken.error));
    }
    this.hops.splice(index, 1, ...replacement);
    await this.relink();
    log("blocks [%d, %d) re-routed from %s to %s", start, end, peerId, replacement.map((h) => `${h.hop.peerId} [${h.hop.start}, ${h.hop.end})`).join(", "));
    this.opts.onFailover?.({ peerId, blocks: [start, end], error, replacement: replacement.map((h) => h.hop) });
  }

  /**
   * Bans a peer that failed this session, and records the failure once in the trust hooks (a
   * timeout or an error; not with `record` false: a caught cheat is recorded as such). The ban's length, ms.
   */
  private markFailed(peerId: string, error: Error, record = true): number {
    const ms = this.bans.ban(peerId, this.now());
    if (record && !this.failed.has(peerId)) {
      this.failed.add(peerId);
      this.opts.trust?.record(peerId, /no answer within|timeout/i.test(error.message) ? "timeout" : "error", error.message);
    }
    return ms;
  }

  /**
   * Replays `history` through `replacement`: the first new hop gets the whole history, each later
   * one its predecessor's outputs. Undefined when every hop took it; else the hop that failed.
   */
  private async replay(history: Step[], replacement: LiveHop[]): Promise<{ live: LiveHop; error: Error } | undefined> {
    if (!history.length) return undefined;
    let replay = concatSteps(history);
    for (const [j, live] of replacement.entries()) {
      let out: ForwardOutput;
      try {
        out = await live.span.forward(replay.input, {});
      } catch (e) {
        return { live, error: e instanceof Error ? e : new Error(String(e)) };
      }
      live.history = [replay];
      this.served.add(live.hop.peerId);
      if (live.check) {
        // Outputs before the replay's end came from hops that were checked or trusted: a wrong
        // replay shows in this hop's later outputs, which are rolled back no further than here.
        live.check.floor = replay.tokens;
        this.recordOutput(live, replay.tokens, 0, out, false);
      }
      if (j === replacement.length - 1) break;
      if (!out.hidden) return { live, error: new Error(`${describe(live)} returned no hidden states replaying ${replay.tokens} tokens`) };
      replay = { input: { hidden: out.hidden }, tokens: replay.tokens };
    }
    return undefined;
  }

  /** Routes [start, end) and opens a session on every hop; a node that refuses is banned and routed around. */
  private async connect(start: number, end: number, opts: { checkAll?: boolean } = {}): Promise<LiveHop[]> {
    const maxRetries = this.opts.maxRetries ?? MAX_FAILOVERS;
    const deadline = this.now() + (this.opts.failoverBudgetMs ?? FAILOVER_BUDGET_MS);
    for (let attempt = 0; ; attempt++) {
      const over = attempt >= maxRetries || this.now() > deadline;
      const route = await this.planRoute(start, end);
      const failedTrial = await this.trialsFor(route);
      if (failedTrial) {
        if (over) throw new Error(`peer ${failedTrial} failed its trial`);
        this.bans.ban(failedTrial, this.now());
        continue;
      }
      const opened = await Promise.allSettled(route.map((hop) => this.provider.open(hop, this.opts.maxLength)));
      const live: LiveHop[] = [];
      let refused: { hop: Hop; reason: unknown } | undefined;
      route.forEach((hop, i) => {
        const o = opened[i];
        if (o?.status === "fulfilled") live.push({ hop, span: o.value, history: [] });
        else refused ??= { hop, reason: o?.reason };
      });
      if (!refused) {
        for (const h of live) this.attachCheck(h, Boolean(opts.checkAll));
        return live;
      }
      for (const h of live) this.closeSpan(h, `another hop of blocks [${start}, ${end}) refused`);
      if (over) throw refused.reason;
      log("peer %s refused blocks [%d, %d), routing around it: %s", refused.hop.peerId, refused.hop.start, refused.hop.end, errorMessage(refused.reason));
      this.bans.ban(refused.hop.peerId, this.now());
    }
  }

  /**
   * Known-answer trials (security design §8): before real traffic goes through a node with no
   * history (and, at TRIAL_RATE, through a known one), it runs a recorded input from the trial
   * pool as an ordinary session, and its outputs must match the answer verifiers agreed on. A
   * node that fails is penalised (a cooldown) and routed around. Returns the first that failed.
   */
  private async trialsFor(route: readonly Hop[]): Promise<string | undefined> {
    const trust = this.opts.trust;
    if (!trust?.knownAnswers || !this.opts.verify) return undefined;
    const random = this.opts.random ?? Math.random;
    for (const hop of route) {
      const peer = hop.peerId;
      if (this.tried.has(peer) || (trust.has(peer) && random() >= TRIAL_RATE)) continue;
      const record = this.lastRecords.find((r) => r.peerId === peer);
      const answers = record ? trust.knownAnswers(record.start, record.end) : [];
      const answer = answers[Math.floor(random() * answers.length)];
      if (!answer) continue; // nothing known for its blocks: its first session is checked instead (attachCheck)
      this.tried.add(peer);
      const error = await this.trial(peer, answer);
      if (error === undefined) continue;
      const passed = error <= (this.opts.verify.tolerance ?? DEFAULT_TOLERANCE).maxRelativeError;
      this.trials.push({ peerId: peer, blocks: [answer.start, answer.end], passed, error });
      trust.record(
        peer,
        passed ? "trial-pass" : "trial-fail",
        `blocks [${answer.start}, ${answer.end}), ${answer.positions} positions, error ${error.toExponential(2)}`,
      );
      if (!passed) {
        log.error("peer %s failed its trial on blocks [%d, %d) (error %s): routing around it", peer, answer.start, answer.end, error.toExponential(2));
        this.failed.add(peer);
        return peer;
      }
    }
    return undefined;
  }

  /** Runs one known answer on a node: the largest row error, or undefined when the node could not be asked (not its fault to judge). */
  private async trial(peer: string, answer: TrialAnswer): Promise<number | undefined> {
    let span: RemoteSpan | undefined;
    try {
      span = await this.provider.open({ peerId: peer, start: answer.start, end: answer.end }, Math.max(answer.positions, this.opts.maxLength), {
        codec: "none",
      });
      const out = await span.forward(answer.tokens ? { tokens: answer.tokens } : { hidden: answer.hidden! }, { allLogits: true });
      const rows = out.hidden ?? out.logits;
      if (!rows || rows.length !== answer.output.length) return Infinity;
      return Math.max(...rowErrors(rows, answer.output, answer.output.length / answer.positions));
    } catch (e) {
      log("peer %s: trial on blocks [%d, %d) not run: %s", peer, answer.start, answer.end, errorMessage(e));
      return undefined;
    } finally {
      void span?.close().catch((e: unknown) => log.trace("peer %s: closing the trial session failed: %s", peer, errorMessage(e)));
    }
  }

  /** A hop's step succeeded: its input (as the node decoded it) joins the history, its output the check's record. */
  private accept(live: LiveHop, step: Step, route: RouteStep, output: ForwardOutput, relayed: boolean): void {
    const codec = this.provider.codec ?? "none";
    const hidden = step.input.hidden;
    // A relayed frame was encoded by the client: the node ran on its decoded values (a pushed one already is).
    const exact =
      relayed && hidden && codec !== "none" && live.check ? { input: { hidden: roundTrip(hidden, step.tokens, codec) }, tokens: step.tokens } : step;
    live.history.push(exact);
    this.served.add(live.hop.peerId);
    if (live.check) this.recordOutput(live, step.tokens, this.position, output, route.allLogits);
  }

  private recordOutput(live: LiveHop, tokens: number, from: number, output: ForwardOutput, allLogits: boolean): void {
    const check = live.check!;
    const rows = output.hidden ?? output.logits;
    if (!rows) return;
    const lastOnly = Boolean(output.logits) && !allLogits;
    check.width ||= rows.length / (lastOnly ? 1 : tokens);
    check.record({ from, to: from + tokens, rows, lastOnly });
  }

  /** Draws whether a new hop is checked: at the policy's rate, always for a node with no history or a replacement of a caught one. */
  private attachCheck(live: LiveHop, force: boolean): void {
    const policy = this.opts.verify;
    if (!policy || !(policy.rate > 0 || policy.mode === "consensus")) return;
    const fresh = this.opts.trust ? !this.opts.trust.has(live.hop.peerId) : false;
    const drawn = policy.mode === "consensus" || (this.opts.random ?? Math.random)() < policy.rate;
    if (!(force || fresh || drawn)) return;
    live.check = new SpanCheck(
      live.hop,
      policy,
      {
        openVerifier: (start, end, excluded) => this.openVerifier(start, end, excluded),
        inputs: (from, to) => sliceSteps(live.history, from, to),
        codec: this.provider.codec ?? "none",
        head: live.hop.end === this.opts.numBlocks,
      },
      (peer, hop) => {
        this.outvoted.push({ peerId: peer, blocks: [hop.start, hop.end] });
        this.opts.trust?.record(peer, "outvoted", `as a verifier of blocks [${hop.start}, ${hop.end}) of ${hop.peerId}`);
      },
      // The first window a verifier agreed on joins the trial pool.
      (positions, input, output) => {
        const { start, end } = live.hop;
        this.opts.trust?.addKnownAnswer?.({
          start,
          end,
          positions,
          ...(input.tokens ? { tokens: Array.from(input.tokens) } : { hidden: input.hidden! }),
          output,
        });
      },
    );
  }

  /** Checks due: every checked hop with a window of unchecked positions. */
  private startChecks(): void {
    for (const h of this.hops) {
      const c = h.check;
      if (c && !c.busy && this.position - c.checkedTo >= c.window) c.start(this.position);
    }
  }

  /**
   * A verifier for blocks [start, end): the node of best reputation, then lowest RTT, among the
   * others that serve all of them (not banned, not avoided), on a session of its own with f32
   * tensors; undefined when there is none.
   */
  private async openVerifier(start: number, end: number, excluded: ReadonlySet<string>): Promise<Verifier | undefined> {
    const now = this.now();
    const rtts = this.provider.rtts();
    const trust = this.opts.trust;
    const candidates = this.lastRecords
      .filter(
        (r) =>
          r.state === "online" &&
          r.start <= start &&
          end <= r.end &&
          !excluded.has(r.peerId) &&
          !this.bans.isBanned(r.peerId, now) &&
          !trust?.avoid(r.peerId, now),
      )
      .sort((a, b) => (trust ? trust.score(b.peerId) - trust.score(a.peerId) : 0) || (rtts.get(a.peerId) ?? Infinity) - (rtts.get(b.peerId) ?? Infinity));
    for (const r of candidates) {
      try {
        const span = await this.provider.open({ peerId: r.peerId, start, end }, this.opts.maxLength, { codec: "none" });
        return { peerId: r.peerId, span, length: 0 };
      } catch (e) {
        log("peer %s cannot verify blocks [%d, %d): %s", r.peerId, start, end, errorMessage(e));
        this.bans.ban(r.peerId, now);
      }
    }
    return undefined;
  }

  /**
   * Throughput lies: a node whose decode steps take LIE_FACTOR times the compute time its record
   * announces (plus LIE_SLACK_S), over LIE_MIN_SAMPLES steps, is penalised and replaced before the
   * next step. `rtt` is subtracted from the step time (0 for pushed steps).
   */
  private timeStep(live: LiveHop, seconds: number, rtt: number): void {
    const peer = live.hop.peerId;
    const rps = this.lastRecords.find((r) => r.peerId === peer)?.inferenceRps;
    if (!rps || this.evictions.has(peer)) return;
    const sample = Math.max(0, seconds - rtt);
    const before = this.stepTimes.get(peer);
    const t = before ? { avg: 0.8 * before.avg + 0.2 * sample, n: before.n + 1 } : { avg: sample, n: 1 };
    this.stepTimes.set(peer, t);
    const announced = (live.hop.end - live.hop.start) / rps;
    if (t.n < LIE_MIN_SAMPLES || t.avg <= LIE_FACTOR * announced + LIE_SLACK_S) return;
    const lie = { peerId: peer, blocks: [live.hop.start, live.hop.end] as [number, number], announcedMs: announced * 1000, measuredMs: t.avg * 1000 };
    this.lies.push(lie);
    this.failed.add(peer);
    const detail = `decode steps on blocks [${live.hop.start}, ${live.hop.end}) take ${lie.measuredMs.toFixed(1)} ms, its record announces ${lie.announcedMs.toFixed(2)} ms`;
    log.error("peer %s lies about its throughput: %s", peer, detail);
    this.opts.trust?.record(peer, "throughput-lie", detail);
    this.evictions.set(peer, new Error(`throughput lie: ${detail}`));
  }

  private async planRoute(start: number, end: number): Promise<Hop[]> {
    const maxAgeMs = this.opts.recordsMaxAgeMs ?? RECORDS_MAX_AGE_MS;
    if (maxAgeMs > 0) {
      try {
        return await this.routeWith(start, end, maxAgeMs, false);
      } catch (e) {
        if (!(e instanceof MissingBlocksError)) throw e;
        log("no usable holder of block(s) %s among the known ones: looking them up again", e.blocks.join(", "));
      }
    }
    return this.routeWith(start, end, 0, true);
  }

  /**
   * A route over blocks [start, end) from records at most `maxAgeMs` old (0: looked up now),
   * avoiding banned nodes and those the trust hooks avoid; with `lastResort`, through them rather
   * than not at all (Petals' rule).
   */
  private async routeWith(start: number, end: number, maxAgeMs: number, lastResort: boolean): Promise<Hop[]> {
    // Only the holders of these blocks are looked up; what was known of the others stays.
    const fresh = await this.provider.records({ start, end }, { maxAgeMs });
    const records = mergeRecords(this.lastRecords, fresh, { start, end });
    this.lastRecords = records;
    const trust = this.opts.trust;
    const hopPenalty = trust && ((peer: string) => routingPenaltySeconds(trust.score(peer)));
    const route = (excluded?: ReadonlySet<string>) =>
      this.opts.routing === "max-throughput"
        ? maxThroughputRoute(records, { start, end, excluded }, this.opts.random ?? Math.random)
        : minLatencyRoute(records, {
            start,
            end,
            needTokens: this.opts.maxLength,
            clientRtt: this.provider.rtts(),
            hopOverheadS: this.hopOverheadS,
            excluded,
            hopPenalty,
          });
    const banned = this.bans.banned(this.now());
    if (trust) {
      const avoided = new Set(records.filter((r) => trust.avoid(r.peerId, this.now())).map((r) => r.peerId));
      try {
        return route(new Set([...banned, ...avoided]));
      } catch (e) {
        if (!(e instanceof MissingBlocksError) || !lastResort) throw e;
        log("only nodes in cooldown or of low reputation serve block(s) %s: routing [%d, %d) through them", e.blocks.join(", "), start, end);
      }
    }
    try {
      return route(banned);
    } catch (e) {
      if (!(e instanceof MissingBlocksError) || !lastResort) throw e;
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

/**
 * The inputs of positions [from, to) of a history, as one step's input: only the steps that
 * overlap the range are copied (a check runs every few positions of a long session).
 */
function sliceSteps(history: readonly Step[], from: number, to: number): ForwardInput {
  const overlapping: Step[] = [];
  let at = 0;
  let first = 0;
  for (const step of history) {
    if (at + step.tokens > from && at < to) {
      if (!overlapping.length) first = at;
      overlapping.push(step);
    }
    at += step.tokens;
  }
  if (to > at || from < 0 || from >= to) throw new RangeError(`positions [${from}, ${to}) of a history of ${at}`);
  const part = concatSteps(overlapping);
  if (part.input.hidden) {
    const width = part.input.hidden.length / part.tokens;
    return { hidden: part.input.hidden.slice((from - first) * width, (to - first) * width) };
  }
  return { tokens: Array.from(part.input.tokens ?? []).slice(from - first, to - first) };
}

/** Hidden states as a node decodes them after the client encoded them in `codec`. */
function roundTrip(hidden: Float32Array, tokens: number, codec: Codec): Float32Array {
  return decodeTensor(encodeTensor(hidden, [1, tokens, hidden.length / tokens], codec)).data;
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
