// In-process swarm for bench/verify.ts: a SpanProvider over local span runtimes (adapted from
// test/route-session.test.ts's InProcessSwarm), where every peer serves one span of its own
// ServedModel (honest at some thread count, or an adversary of test/support/adversary.ts). Tensors
// cross the "wire" as a SpanNode's do: hidden states the client sends are decoded from the
// session's codec before the node runs them, and the node's outputs are encoded in the session's
// codec (logits in logitsCodec of it) and decoded by the client. Every SpanSession.forward call is
// timed and booked to the role of the session that made it (a route hop, a verifier, or a replica
// of redundant execution), for the compute overhead.
import type { ForwardInput, ForwardOutput, ServedModel, SpanRuntime, SpanSession } from "../src/engine/interface.js";
import type { ModelConfig } from "../src/model/types.js";
import type { Hop, SpanRecord } from "../src/swarm/records.js";
import type { RemoteSpan, SpanProvider, StepOptions } from "../src/swarm/route-session.js";
import { logitsCodec } from "../src/swarm/span-server.js";
import { consensusVerdict, agree, DEFAULT_TOLERANCE, type Tolerance } from "../src/verify/compare.js";
import { type Codec, decodeTensor, encodeTensor } from "../src/wire/tensor-frame.js";

/** Rows of `width` floats as the receiving side decodes them after the sender encoded them in `codec`. */
export function wire(data: Float32Array, width: number, codec: Codec): Float32Array {
  if (codec === "none") return data;
  return decodeTensor(encodeTensor(data, [1, data.length / width, width], codec)).data;
}

/** A node's output as the client receives it: hidden states in the session's codec, logits in logitsCodec of it. */
export function received(out: ForwardOutput, c: ModelConfig, codec: Codec): ForwardOutput {
  if (out.logits) return { logits: wire(out.logits, c.vocabSize, logitsCodec(codec)) };
  if (out.hidden) return { hidden: wire(out.hidden, c.hiddenSize, codec) };
  throw new Error("the engine returned neither logits nor hidden states");
}

export type Role = "route" | "verifier" | "replica";

/** Milliseconds spent in SpanSession.forward, per role, and the number of calls. */
export class ComputeClock {
  ms: Record<Role, number> = { route: 0, verifier: 0, replica: 0 };
  calls: Record<Role, number> = { route: 0, verifier: 0, replica: 0 };

  reset(): void {
    this.ms = { route: 0, verifier: 0, replica: 0 };
    this.calls = { route: 0, verifier: 0, replica: 0 };
  }

  /**
   * Run every forward call alone (one at a time over the whole swarm), so that its wall time is
   * its compute time: in-process nodes share this machine's cores, and calls that overlap slow
   * each other down as nodes on separate machines would not.
   */
  serialize = false;
  private tail: Promise<void> = Promise.resolve();

  async time<T>(role: Role, f: () => Promise<T>): Promise<T> {
    if (!this.serialize) return this.measure(role, f);
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise((r) => (release = r));
    await prev;
    try {
      return await this.measure(role, f);
    } finally {
      release();
    }
  }

  private async measure<T>(role: Role, f: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await f();
    } finally {
      this.ms[role] += performance.now() - t0;
      this.calls[role]++;
    }
  }
}

export interface PeerSpec {
  peerId: string;
  start: number;
  end: number;
  /** Announced decode tokens/s per block (routing prefers the fastest). */
  rps: number;
  model: ServedModel;
}

export interface SwarmOptions {
  /** The codec route sessions are opened with (verifiers ask for "none"). */
  codec?: Codec;
  /**
   * Redundant execution (the paper's consensus): every route hop's step also runs on this many
   * other holders of its span, all at once, and the answers are compared (majority).
   */
  replicas?: number;
  tolerance?: Tolerance;
}

export class InProcessSwarm implements SpanProvider {
  readonly clock = new ComputeClock();
  /** Peers left out of records() (an adversary that is not part of the current experiment). */
  readonly hidden = new Set<string>();
  /** Steps whose redundant answers did not all agree, and those where the route hop lost the vote. */
  readonly redundancy = { steps: 0, disagreements: 0, outvoted: 0 };
  readonly codec: Codec;
  readonly widths: { hidden: number; vocab: number };
  /** Redundant execution: other holders that run every route hop's steps too (0: off). */
  replicas: number;
  private readonly runtimes = new Map<string, Promise<SpanRuntime>>();

  constructor(
    readonly config: ModelConfig,
    readonly peers: PeerSpec[],
    readonly opts: SwarmOptions = {},
  ) {
    this.codec = opts.codec ?? "none";
    this.widths = { hidden: config.hiddenSize, vocab: config.vocabSize };
    this.replicas = opts.replicas ?? 0;
  }

  async records(range?: { start: number; end: number }): Promise<SpanRecord[]> {
    const found = this.peers.filter((p) => !this.hidden.has(p.peerId) && (!range || (p.start < range.end && range.start < p.end)));
    return found.map((p) => ({
      peerId: p.peerId,
      start: p.start,
      end: p.end,
      state: "online",
      throughput: p.rps,
      inferenceRps: p.rps,
      cacheTokensLeft: 1e6,
      nextPings: {},
    }));
  }

  rtts(): ReadonlyMap<string, number> {
    return new Map(this.peers.map((p) => [p.peerId, 0.001]));
  }

  /** The peer's runtime for its span, loaded once. */
  runtime(peerId: string): Promise<SpanRuntime> {
    let r = this.runtimes.get(peerId);
    if (!r) {
      const p = this.peer(peerId);
      r = p.model.load(p.start, p.end);
      this.runtimes.set(peerId, r);
    }
    return r;
  }

  private peer(peerId: string): PeerSpec {
    const p = this.peers.find((q) => q.peerId === peerId);
    if (!p) throw new Error(`no peer ${peerId}`);
    return p;
  }

  async open(hop: Hop, maxLength: number, opts?: { codec?: Codec }): Promise<RemoteSpan> {
    const p = this.peer(hop.peerId);
    if (p.start !== hop.start || p.end !== hop.end) throw new Error(`peer ${hop.peerId} serves [${p.start}, ${p.end}), not [${hop.start}, ${hop.end})`);
    // RouteSession opens verifiers with an explicit codec ("none") and route hops without one.
    const role: Role = opts?.codec !== undefined ? "verifier" : "route";
    const codec = opts?.codec ?? this.codec;
    const span = new InProcessSpan(this, (await this.runtime(hop.peerId)).openSession(maxLength), codec, role);
    const replicas = role === "route" ? this.replicas : 0;
    if (!replicas) return span;
    const others = this.peers
      .filter((q) => q.peerId !== hop.peerId && !this.hidden.has(q.peerId) && q.start === hop.start && q.end === hop.end)
      .slice(0, replicas);
    if (others.length < replicas) throw new Error(`redundant execution needs ${replicas} other holders of [${hop.start}, ${hop.end})`);
    const copies = await Promise.all(others.map(async (q) => new InProcessSpan(this, (await this.runtime(q.peerId)).openSession(maxLength), codec, "replica")));
    return new RedundantSpan(
      this,
      span,
      copies,
      hop.end === this.config.numLayers ? this.config.vocabSize : this.config.hiddenSize,
      this.opts.tolerance ?? DEFAULT_TOLERANCE,
    );
  }

  /** Unloads one peer's runtime (its sessions must be closed). */
  async releasePeer(peerId: string): Promise<void> {
    const r = this.runtimes.get(peerId);
    this.runtimes.delete(peerId);
    if (r) await (await r).release();
  }

  async release(): Promise<void> {
    for (const r of this.runtimes.values()) await (await r).release();
    this.runtimes.clear();
  }
}

/** One session on a peer: steps and rollbacks run one at a time, in order. */
class InProcessSpan implements RemoteSpan {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly swarm: InProcessSwarm,
    private readonly session: SpanSession,
    private readonly codec: Codec,
    private readonly role: Role,
  ) {}

  private serial<T>(f: () => Promise<T>): Promise<T> {
    const next = this.queue.then(f, f);
    this.queue = next.catch(() => undefined);
    return next;
  }

  forward(input: ForwardInput, opts: StepOptions): Promise<ForwardOutput> {
    return this.serial(async () => {
      const c = this.swarm.config;
      // The client encoded the hidden states in the session's codec: the node runs what it decodes.
      const nodeInput: ForwardInput = input.hidden ? { hidden: wire(input.hidden, c.hiddenSize, this.codec) } : { tokens: Array.from(input.tokens ?? []) };
      const out = await this.swarm.clock.time(this.role, () => this.session.forward(nodeInput, { allLogits: Boolean(opts.allLogits) }));
      return received(out, c, this.codec);
    });
  }

  truncate(position: number): Promise<void> {
    return this.serial(async () => this.session.truncate(position));
  }

  close(): Promise<void> {
    return this.serial(async () => this.session.close());
  }
}

/**
 * Redundant execution of a route hop (arXiv 2407.19401's consensus, k = 1 + replicas): every step
 * runs on the hop and its replicas at once; the answers are compared row by row within the
 * tolerance and the majority's answer is returned.
 */
class RedundantSpan implements RemoteSpan {
  constructor(
    private readonly swarm: InProcessSwarm,
    private readonly primary: InProcessSpan,
    private readonly replicas: InProcessSpan[],
    private readonly width: number,
    private readonly tolerance: Tolerance,
  ) {}

  async forward(input: ForwardInput, opts: StepOptions): Promise<ForwardOutput> {
    const outs = await Promise.all([this.primary, ...this.replicas].map((s) => s.forward(input, opts)));
    const rows = outs.map((o) => (o.logits ?? o.hidden)!);
    const verdict = consensusVerdict(
      rows.map(() => true),
      (i, j) => agree(rows[i]!, rows[j]!, this.width, this.tolerance),
    );
    const r = this.swarm.redundancy;
    r.steps++;
    if (!verdict.decided || verdict.losers.length) r.disagreements++;
    if (verdict.decided && !verdict.majority.includes(0)) {
      r.outvoted++;
      return outs[verdict.majority[0]!]!;
    }
    return outs[0]!;
  }

  async truncate(position: number): Promise<void> {
    await Promise.all([this.primary, ...this.replicas].map((s) => s.truncate(position)));
  }

  async close(): Promise<void> {
    await Promise.all([this.primary, ...this.replicas].map((s) => s.close()));
  }
}
