// A node of the swarm: a js-libp2p host that serves a span of blocks. Each inference session is
// one stream of the span protocol; the node keeps its KV caches until the stream ends. Any
// sub-range of the span can be served (the node holds one engine session per block), so routes
// may enter an overlapping span mid-way. A peer's message never crashes the node: malformed
// input gets an error message, and only that stream is closed.
import "./node20.js";
import { setMaxListeners } from "node:events";
import type { PrivateKey, Stream } from "@libp2p/interface";
import { generateKeyPair } from "@libp2p/crypto/keys";
import { peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import { forwardThrough, type SpanSession as KvSession, SessionError } from "../engine/interface.js";
import { SpanRunner } from "../engine/runtime.js";
import type { WeightFormat } from "../engine/weights.js";
import type { Checkpoint } from "../model/checkpoint.js";
import { checkpointHash } from "../model/hash.js";
import { ProtocolError } from "../wire/errors.js";
import { encodeTensor } from "../wire/tensor-frame.js";
import { announce, blockHolders, DHT_PROTOCOL } from "./dht.js";
import { createSwarmHost, joinSwarm, type SwarmHost } from "./host.js";
import { Libp2pSpanProvider, toSpanRecord } from "./libp2p-provider.js";
import { answerProbe, PROBE_PROTOCOL, probeLink } from "./link-probe.js";
import { rebalance } from "./placement.js";
import { signRecord } from "./signed-record.js";
import {
  decodeMessage,
  encodeControl,
  encodePush,
  encodeResult,
  encodeStep,
  framedStream,
  Kind,
  type NodeInfo,
  type LinkRequest,
  type OpenRequest,
  PUSH_PROTOCOL,
  SPAN_PROTOCOL,
  type StepRequest,
} from "./protocol.js";

export const VERSION = "tessera/0.1";

export interface SpanNodeOptions {
  checkpoint: Checkpoint;
  modelId: string;
  start: number;
  end: number;
  format?: WeightFormat;
  threads?: number;
  /** Multiaddrs to listen on; default an ephemeral TCP port on loopback. */
  listen?: string[];
  /** Longest session accepted, in tokens. */
  maxSessionLength?: number;
  /** KV budget: tokens × blocks held over all sessions. */
  cacheTokens?: number;
  /** Peers to join the swarm through (multiaddrs with /p2p/). */
  bootstrap?: string[];
  /** How often the signed record is refreshed in the DHT, with fresh RTTs to the next blocks' holders. */
  announceIntervalMs?: number;
  /** A session that sends no step for this long is closed and its KV cache released. */
  idleTimeoutMs?: number;
  /** Announce this decode throughput (tokens/s per block) instead of the measured one (Petals' --throughput). */
  throughput?: number;
  /** Sees every step the node runs, as decoded from the wire (dashboards, tests of what a node sees). */
  onStep?: (step: StepRequest) => void;
}

interface OpenSession {
  request: OpenRequest;
  sessions: KvSession[];
  /** The engine blocks the sessions run on (kept loaded after a move until the session closes). */
  blocks: SpanRunner[];
  reserved: number;
  stream: Stream;
  /** Writes to the client's stream (results of steps from the client or pushed by the previous node). */
  reply: (bytes: Uint8Array) => Promise<void>;
  lastUsed: number;
  /** Steps run one at a time; a step id at or below this one was already answered. */
  lastStepId: number;
  queue: Promise<void>;
  link: LinkRequest;
  /** Stream to the next node for pushes, opened on first use. */
  pushTo?: Promise<(bytes: Uint8Array) => Promise<void>>;
}

const DEFAULTS = { announceIntervalMs: 60_000, idleTimeoutMs: 300_000 };

function loadBlock(options: SpanNodeOptions, i: number, maxSequence: number): Promise<SpanRunner> {
  const L = options.checkpoint.config.numLayers;
  return SpanRunner.load(options.checkpoint, { start: i, end: i + 1, embed: i === 0, head: i === L - 1 }, { format: options.format, threads: options.threads, maxSequence });
}

export class SpanNode {
  private reservedTokens = 0;
  private openSessions = new Set<OpenSession>();
  private byId = new Map<string, OpenSession>();
  /** Steps run, and how many of them arrived pushed by the previous node. */
  readonly stats = { steps: 0, pushedIn: 0 };
  private measured = { inferenceRps: 0, forwardRps: 0 };
  private nextPings: Record<string, number> = {};
  private linkMbps = 0;
  private state: NodeInfo["state"] = "online";
  private timers: NodeJS.Timeout[] = [];
  private announcing: Promise<void> = Promise.resolve();

  private constructor(
    readonly libp2p: SwarmHost,
    private readonly key: PrivateKey,
    /** Loaded blocks by index: the span's, plus retired ones still used by open sessions. */
    private readonly blocks: Map<number, SpanRunner>,
    private readonly checkpointHash: string,
    private readonly opts: Required<Omit<SpanNodeOptions, "threads" | "listen" | "format" | "bootstrap" | "onStep" | "throughput">> & SpanNodeOptions,
  ) {}

  static async start(options: SpanNodeOptions): Promise<SpanNode> {
    const c = options.checkpoint.config;
    if (!(options.start >= 0 && options.start < options.end && options.end <= c.numLayers)) {
      throw new SessionError(`invalid span [${options.start}, ${options.end}) for ${c.numLayers} blocks`);
    }
    const maxSessionLength = options.maxSessionLength ?? Math.min(2048, c.maxPositionEmbeddings);
    const blocks = new Map<number, SpanRunner>();
    for (let i = options.start; i < options.end; i++) blocks.set(i, await loadBlock(options, i, maxSessionLength));
    const key = await generateKeyPair("Ed25519");
    const libp2p = await createSwarmHost({ role: "server", privateKey: key, listen: options.listen });
    const node = new SpanNode(libp2p, key, blocks, await checkpointHash(options.checkpoint), {
      cacheTokens: 16384 * (options.end - options.start),
      ...DEFAULTS,
      ...options,
      maxSessionLength,
    });
    await libp2p.handle(SPAN_PROTOCOL, (stream) => node.serve(stream), { maxInboundStreams: 256 });
    await libp2p.handle(PROBE_PROTOCOL, (stream) => answerProbe(stream), { maxInboundStreams: 8 });
    await libp2p.handle(PUSH_PROTOCOL, (stream, connection) => node.acceptPushes(stream, connection.remotePeer.toString()), { maxInboundStreams: 256 });
    try {
      await node.measureThroughput();
      await joinSwarm(libp2p, options.bootstrap ?? []);
      await node.announce();
    } catch (e) {
      await node.stop();
      throw e;
    }
    node.every(node.opts.announceIntervalMs, () => node.announce());
    node.announceWhenServersJoin();
    node.every(Math.min(node.opts.idleTimeoutMs / 4, 10_000), () => node.closeIdleSessions(Date.now()));
    return node;
  }

  /** Publishes the signed record (and the block keys) in the DHT, after re-measuring RTTs to the next blocks' holders. */
  announce(): Promise<void> {
    const run = async () => {
      if (this.state === "online") await this.measureNextPings().catch(() => {});
      const signed = await signRecord(this.key, this.info(), Date.now());
      const blocks = Array.from({ length: this.opts.end - this.opts.start }, (_, i) => this.opts.start + i);
      const signal = AbortSignal.timeout(20_000);
      setMaxListeners(Infinity, signal); // shared by the record's put and every block's provide
      await announce(this.libp2p.services.dht, signed, this.libp2p.peerId.toString(), this.opts.modelId, blocks, signal);
    };
    // One announcement at a time; a failed one is retried at the next interval.
    this.announcing = this.announcing.then(run, run);
    return this.announcing;
  }

  /** A server joining the DHT gets a fresh announcement (new next-block RTTs, records it lacks). */
  private announceWhenServersJoin(): void {
    let pending: NodeJS.Timeout | undefined;
    this.libp2p.addEventListener("peer:identify", (event) => {
      if (!event.detail.protocols.includes(DHT_PROTOCOL) || pending || this.state !== "online") return;
      pending = setTimeout(() => {
        pending = undefined;
        void this.announce().catch(() => {});
      }, 300);
      pending.unref();
    });
  }

  private async measureNextPings(): Promise<void> {
    const { end } = this.opts;
    if (end >= this.opts.checkpoint.config.numLayers) return;
    const holders = await blockHolders(this.libp2p.services.dht, this.opts.modelId, end, AbortSignal.timeout(5000));
    const pings: Record<string, number> = {};
    const self = this.libp2p.peerId.toString();
    await Promise.all(
      [...holders.keys()].filter((p) => p !== self).slice(0, 16).map(async (peer) => {
        try {
          pings[peer] = (await this.libp2p.services.ping.ping(peerIdFromString(peer), { signal: AbortSignal.timeout(2000) })) / 1000;
        } catch {
          // unreachable from here: routing then assumes the default RTT
        }
      }),
    );
    this.nextPings = pings;
    // Link speed: the median over (up to) the three fastest-answering next holders.
    const nearest = Object.entries(pings).sort((a, b) => a[1] - b[1]).slice(0, 3);
    const speeds = (await Promise.all(nearest.map(([peer]) => probeLink(this.libp2p, peer).catch(() => undefined)))).filter((v) => v !== undefined);
    if (speeds.length) this.linkMbps = speeds.sort((a, b) => a - b)[Math.floor(speeds.length / 2)]!;
  }

  private every(ms: number, task: () => unknown): void {
    const timer = setInterval(() => void Promise.resolve(task()).catch(() => {}), ms);
    timer.unref();
    this.timers.push(timer);
  }

  /** Closes sessions that sent nothing for the idle timeout; their streams get an IDLE_TIMEOUT error. */
  closeIdleSessions(now: number): number {
    let closed = 0;
    for (const s of [...this.openSessions]) {
      if (now - s.lastUsed < this.opts.idleTimeoutMs) continue;
      this.release(s);
      void s
        .reply(encodeControl(Kind.Error, { code: "IDLE_TIMEOUT", message: `no step for ${this.opts.idleTimeoutMs} ms; the session was closed` }))
        .catch(() => {})
        .finally(() => s.stream.close().catch(() => s.stream.abort(new Error("idle"))));
      closed++;
    }
    return closed;
  }

  get addresses(): string[] {
    return this.libp2p.getMultiaddrs().map((a) => a.toString());
  }

  info(): NodeInfo {
    return {
      peerId: this.libp2p.peerId.toString(),
      state: this.state,
      modelId: this.opts.modelId,
      checkpointHash: this.checkpointHash,
      numBlocks: this.opts.checkpoint.config.numLayers,
      start: this.opts.start,
      end: this.opts.end,
      inferenceRps: this.opts.throughput ?? this.measured.inferenceRps,
      forwardRps: this.measured.forwardRps,
      cacheTokensLeft: this.opts.cacheTokens - this.reservedTokens,
      nextPings: this.nextPings,
      linkMbps: this.linkMbps,
      version: VERSION,
    };
  }

  get sessionCount(): number {
    return this.openSessions.size;
  }

  /** Withdraws the node's record (state offline), then stops serving. */
  async stop(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    if (this.state === "online" && this.libp2p.status === "started") {
      this.state = "offline";
      await Promise.race([this.announce().catch(() => {}), new Promise((r) => setTimeout(r, 2000))]);
    }
    await this.libp2p.stop();
    for (const s of this.openSessions) this.release(s);
    for (const b of this.blocks.values()) await b.release();
    this.blocks.clear();
  }

  /**
   * Moves the node to [start, start + its length): loads the blocks it lacks, announces the new
   * span, and hands over: sessions opened before the move finish on the blocks they hold, which
   * are released when the last of them closes.
   */
  async moveTo(start: number): Promise<void> {
    const length = this.opts.end - this.opts.start;
    const L = this.opts.checkpoint.config.numLayers;
    if (!(Number.isInteger(start) && start >= 0 && start + length <= L)) throw new SessionError(`cannot move a ${length}-block span to ${start}`);
    for (let i = start; i < start + length; i++) {
      if (!this.blocks.has(i)) this.blocks.set(i, await loadBlock(this.opts, i, this.opts.maxSessionLength));
    }
    [this.opts.start, this.opts.end] = [start, start + length];
    this.releaseUnusedBlocks();
    await this.announce();
  }

  /**
   * One rebalancing check (sharding design §3): reads the swarm's records from the DHT and moves
   * when that lifts the weakest block beyond the balance threshold without uncovering any.
   * Returns the new start, or undefined when the node stays.
   */
  async rebalanceOnce(random: () => number): Promise<number | undefined> {
    const c = this.opts.checkpoint.config;
    const provider = new Libp2pSpanProvider(this.libp2p, { modelId: this.opts.modelId, hiddenSize: c.hiddenSize, vocabSize: c.vocabSize, numBlocks: c.numLayers });
    const me = this.info();
    const target = rebalance([...(await provider.records()), toSpanRecord(me, c.hiddenSize)], me.peerId, c.numLayers, random);
    if (target === undefined) return undefined;
    await this.moveTo(target);
    return target;
  }

  /** Checks every `intervalMs` whether to move (for `--blocks auto`). */
  rebalanceEvery(intervalMs: number, random: () => number, onMove?: (start: number, end: number) => void): void {
    this.every(intervalMs, async () => {
      const moved = await this.rebalanceOnce(random);
      if (moved !== undefined) onMove?.(this.opts.start, this.opts.end);
    });
  }

  private releaseUnusedBlocks(): void {
    const used = new Set([...this.openSessions].flatMap((s) => s.blocks));
    for (const [i, runner] of this.blocks) {
      if ((i < this.opts.start || i >= this.opts.end) && !used.has(runner)) {
        this.blocks.delete(i);
        void runner.release();
      }
    }
  }

  private async serve(stream: Stream): Promise<void> {
    const lp = framedStream(stream);
    let session: OpenSession | undefined;
    const fail = async (code: string, message: string) => {
      await lp.write(encodeControl(Kind.Error, { code, message })).catch(() => {});
    };
    try {
      for (;;) {
        let bytes: Uint8Array;
        try {
          bytes = (await lp.read()).subarray();
        } catch {
          return; // the client closed or reset the stream, or sent an oversized frame
        }
        let message;
        try {
          message = decodeMessage(bytes, this.maxElements);
        } catch (e) {
          await fail(e instanceof ProtocolError ? e.code : "BAD_MESSAGE", (e as Error).message);
          return;
        }
        if (message.kind === Kind.Open) {
          if (session) return fail("ALREADY_OPEN", "this stream already carries a session");
          const opened = this.open(message.open, stream, (b) => lp.write(b));
          if (typeof opened === "string") return fail(opened === "CACHE_FULL" ? "CACHE_FULL" : "BAD_SPAN", opened);
          session = opened;
          await lp.write(encodeControl(Kind.Opened, { start: session.request.start, end: session.request.end }));
        } else if (message.kind === Kind.Step) {
          if (!session) return fail("NOT_OPEN", "send an open message first");
          if (!this.openSessions.has(session)) return; // closed for idleness meanwhile
          await this.runStep(session, message.step);
        } else if (message.kind === Kind.Link) {
          if (!session) return fail("NOT_OPEN", "send an open message first");
          if (!session.request.sessionId) return fail("BAD_STEP", "linking needs a session opened with a sessionId");
          session.link = message.link;
          session.pushTo = undefined;
        } else {
          return fail("UNEXPECTED", `message kind ${message.kind} is not for nodes`);
        }
      }
    } finally {
      if (session) this.release(session);
      await stream.close().catch(() => stream.abort(new Error("closing")));
    }
  }

  /**
   * Runs a step from the client or pushed by the previous node, once: steps of a session are
   * serialized, and a step id already answered is skipped (the client may relay a step whose push
   * was slow). The result goes to the client; with `push`, the output also goes to the next node.
   */
  private runStep(session: OpenSession, step: StepRequest, pushed = false): Promise<void> {
    const run = async () => {
      if (step.stepId <= session.lastStepId || !this.openSessions.has(session)) return;
      this.stats.steps++;
      if (pushed) this.stats.pushedIn++;
      session.lastStepId = step.stepId;
      session.lastUsed = Date.now();
      this.opts.onStep?.(step);
      let output: { frame: Uint8Array; hidden: boolean };
      try {
        output = await this.step(session, step);
      } catch (e) {
        // A bad step (wrong shape, session full, bad rollback) fails that step only.
        const code = e instanceof SessionError || e instanceof ProtocolError ? "BAD_STEP" : "INTERNAL";
        await session.reply(encodeControl(Kind.Error, { code, message: (e as Error).message })).catch(() => {});
        return;
      }
      // The encoded frame goes to the client as the result and, when pushing, to the next node as its step.
      if (step.push && output.hidden && session.link.next) void this.push(session, step, output.frame);
      await session.reply(encodeResult(step.stepId, output.frame)).catch(() => {});
    };
    session.queue = session.queue.then(run, run);
    return session.queue;
  }

  private async push(session: OpenSession, step: StepRequest, frame: Uint8Array): Promise<void> {
    const next = session.link.next!;
    try {
      session.pushTo ??= this.openPushStream(next.peerId, next.addrs);
      const send = await session.pushTo;
      await send(encodePush(next.sessionId, encodeStep({ ...step, tokens: undefined, hidden: undefined, frame })));
    } catch {
      session.pushTo = undefined; // the client relays this step after its grace period
    }
  }

  private async openPushStream(peerId: string, addrs: string[]): Promise<(bytes: Uint8Array) => Promise<void>> {
    const id = peerIdFromString(peerId);
    const known = addrs.flatMap((a) => {
      try {
        return [multiaddr(a)];
      } catch {
        return [];
      }
    });
    if (known.length) await this.libp2p.peerStore.merge(id, { multiaddrs: known });
    const lp = framedStream(await this.libp2p.dialProtocol(id, PUSH_PROTOCOL, { signal: AbortSignal.timeout(5000) }));
    return async (bytes) => {
      await lp.write(bytes);
    };
  }

  /** Steps pushed by previous nodes; only the peer the client linked as `prev` may push into a session. */
  private async acceptPushes(stream: Stream, from: string): Promise<void> {
    const lp = framedStream(stream);
    try {
      for (;;) {
        const message = decodeMessage((await lp.read()).subarray(), this.maxElements);
        if (message.kind !== Kind.Push) return;
        const session = this.byId.get(message.sessionId);
        // Unknown or unlinked sessions are ignored: the client relays the step itself.
        if (session && session.link.prev === from) void this.runStep(session, message.step, true);
      }
    } catch {
      // closed, or garbage: a pushing peer gets no answer either way
    } finally {
      await stream.close().catch(() => stream.abort(new Error("closing")));
    }
  }

  /** Reserves KV room for a session, or says why not. */
  private open(request: OpenRequest, stream: Stream, reply: (bytes: Uint8Array) => Promise<void>): OpenSession | string {
    const { start, end, maxLength } = request;
    if (start < this.opts.start || end > this.opts.end) {
      return `this node serves blocks [${this.opts.start}, ${this.opts.end}), not [${start}, ${end})`;
    }
    if (maxLength < 1 || maxLength > this.opts.maxSessionLength) return `maxLength ${maxLength} outside 1..${this.opts.maxSessionLength}`;
    if (request.sessionId && this.byId.has(request.sessionId)) return "that sessionId is taken";
    const reserved = maxLength * (end - start);
    if (this.reservedTokens + reserved > this.opts.cacheTokens) return "CACHE_FULL";
    this.reservedTokens += reserved;
    const blocks = Array.from({ length: end - start }, (_, i) => this.blocks.get(start + i)!);
    const sessions = blocks.map((b) => b.openSession(maxLength));
    const session: OpenSession = { request, sessions, blocks, reserved, stream, reply, lastUsed: Date.now(), lastStepId: 0, queue: Promise.resolve(), link: {} };
    this.openSessions.add(session);
    if (request.sessionId) this.byId.set(request.sessionId, session);
    return session;
  }

  private release(session: OpenSession): void {
    if (!this.openSessions.delete(session)) return;
    if (session.request.sessionId) this.byId.delete(session.request.sessionId);
    this.reservedTokens -= session.reserved;
    for (const s of session.sessions) s.close();
    if (this.libp2p.status === "started") this.releaseUnusedBlocks();
  }

  /** Largest tensor a peer may send: a full-length session's hidden states. */
  private get maxElements(): number {
    return this.opts.maxSessionLength * Math.max(this.opts.checkpoint.config.hiddenSize, 1);
  }

  /** Runs a step on the session's blocks; its output (logits or hidden states) as an encoded tensor frame. */
  private async step(session: OpenSession, step: StepRequest): Promise<{ frame: Uint8Array; hidden: boolean }> {
    const c = this.opts.checkpoint.config;
    const { start, end, codec } = session.request;
    const length = session.sessions[0]!.length;
    if (step.startFromPosition > length) {
      throw new SessionError(`startFromPosition ${step.startFromPosition} is past the session's ${length} tokens`);
    }
    if (step.startFromPosition < length) for (const s of session.sessions) s.truncate(step.startFromPosition);

    let input: { tokens?: ArrayLike<number>; hidden?: Float32Array };
    if (start === 0) {
      if (!step.tokens) throw new SessionError("blocks from 0 take token ids, not hidden states");
      input = { tokens: step.tokens };
    } else {
      const h = step.hidden;
      if (!h) throw new SessionError(`block ${start} takes hidden states, not token ids`);
      if (h.shape.length !== 3 || h.shape[0] !== 1 || h.shape[2] !== c.hiddenSize) {
        throw new SessionError(`hidden states must be [1, tokens, ${c.hiddenSize}], got [${h.shape}]`);
      }
      input = { hidden: h.data };
    }
    const t0 = performance.now();
    const out = await forwardThrough(session.sessions, input, { allLogits: step.allLogits });
    const count = input.tokens ? input.tokens.length : input.hidden!.length / c.hiddenSize;
    this.recordSpeed(count, end - start, performance.now() - t0);
    if (out.logits) return { frame: encodeTensor(out.logits, [1, out.logits.length / c.vocabSize, c.vocabSize], "none"), hidden: false };
    return { frame: encodeTensor(out.hidden!, [1, out.hidden!.length / c.hiddenSize, c.hiddenSize], codec), hidden: true };
  }

  /**
   * Measures the span before announcing it: a 32-token forward pass and a few 1-token decode steps
   * on a throwaway session (later requests keep the numbers current).
   */
  private async measureThroughput(): Promise<void> {
    const c = this.opts.checkpoint.config;
    const { start, end } = this.opts;
    const sessions = Array.from({ length: end - start }, (_, i) => this.blocks.get(start + i)!.openSession(64));
    const run = async (count: number) => {
      const input = start === 0 ? { tokens: Array.from({ length: count }, (_, i) => (i * 7919) % c.vocabSize) } : { hidden: new Float32Array(count * c.hiddenSize).fill(0.01) };
      const t0 = performance.now();
      await forwardThrough(sessions, input);
      return performance.now() - t0;
    };
    try {
      this.recordSpeed(32, end - start, await run(32));
      const decode: number[] = [];
      for (let i = 0; i < 5; i++) decode.push(await run(1));
      this.recordSpeed(1, end - start, decode.sort((a, b) => a - b)[2]!);
    } finally {
      for (const s of sessions) s.close();
    }
  }

  /** Per-block tokens/s of the last decode (1 token) and prefill steps, for the node's record. */
  private recordSpeed(count: number, blocks: number, ms: number): void {
    const rate = (count * 1000) / (ms / blocks);
    if (count === 1) this.measured.inferenceRps = rate;
    else this.measured.forwardRps = rate;
  }
}
