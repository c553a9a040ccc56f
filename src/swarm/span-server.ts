// The span server: what a node does with sessions, as plain code over the engine interface (no
// libp2p here, so a test, a simulator or a batching scheduler can drive it directly). It holds
// the node's span as one engine runtime, reserves KV room per session, serializes each session's
// steps and runs each step id once (a step can arrive pushed by the previous node and relayed by
// the client), rolls caches back on request, closes idle sessions, and moves to another span
// with handover: sessions opened before a move finish on the runtime they hold.
//
// One engine session per span, as the local pipeline chains them: each ORT run costs a fixed
// ~0.1 ms in the Node binding, so per-block sessions made decode 30% slower on the shipped model
// (2.43 vs 3.17 ms/token over 8 blocks). A route that enters the span mid-way (failover of a
// neighbour's blocks, max-throughput routing) gets a runtime for exactly its sub-range, loaded on
// first use and released with the last session on it: it costs its blocks' weights again while
// in use, which the node accepts only within `maxSubSpans`.
import type { ForwardInput, ForwardOutput, SpanLoader, SpanRuntime, SpanSession } from "../engine/interface.js";
import { FairScheduler } from "./scheduler.js";
import { SessionError } from "../engine/interface.js";
import { errorMessage, logger } from "../log.js";
import { ProtocolError } from "../wire/errors.js";
import { type Codec, encodeTensor } from "../wire/tensor-frame.js";

const log = logger("swarm:server");

export interface SpanServerOptions {
  numBlocks: number;
  hiddenSize: number;
  vocabSize: number;
  /** The span served: [start, end). */
  start: number;
  end: number;
  /** Loads a runtime for blocks [start, end). */
  load: SpanLoader;
  /** Longest session accepted, in tokens. */
  maxSessionLength: number;
  /** KV budget: tokens × blocks held over all sessions. */
  cacheTokens: number;
  /** A session that runs no step for this long is closed by `closeIdle`. */
  idleTimeoutMs: number;
  /** Sub-range runtimes held at once (each costs its blocks' weights again). Default 2. */
  maxSubSpans?: number;
  /** Sees every step the server runs (dashboards, tests of what a node sees). */
  onStep?: (step: ServerStep) => void;
  now?: () => number;
  /** Share of the KV budget one peer may reserve over all its sessions (default PEER_CACHE_SHARE). */
  peerCacheShare?: number;
  /** Longer steps run as chunks of this many tokens, each scheduled on its own (default PREFILL_CHUNK). */
  prefillChunk?: number;
  /** While another peer uses the engine, chunks of at most this many tokens (default CONTENDED_CHUNK). */
  contendedChunk?: number;
  /** Engine runs at once (default 1: a run already uses the engine's threads). */
  concurrency?: number;
}

/** One peer may hold at most this share of a node's KV budget, so no peer can reserve a whole node. */
export const PEER_CACHE_SHARE = 0.25;
/** Multi-token steps run in chunks of this many tokens, so another session's step waits for one chunk at most. */
export const PREFILL_CHUNK = 32;
/**
 * While another peer has used the engine in the last CONTENTION_WINDOW_MS, a long step runs in
 * chunks of at most this many tokens: a decoder's step then waits for a chunk of 16 tokens, not 32
 * (chunked prefill trades a little of the prefill's throughput for the decoders' latency).
 */
export const CONTENDED_CHUNK = 16;
export const CONTENTION_WINDOW_MS = 1000;
/** Pushed steps queued on one session beyond this are dropped (the client relays them): backpressure on pushes. */
export const MAX_QUEUED_PUSHES = 4;
/** Step ids are u32 and start at 1. */
export const MAX_STEP_ID = 2 ** 32 - 1;

export interface SessionRequest {
  start: number;
  end: number;
  maxLength: number;
  /** Codec of the hidden states this session returns. */
  codec: Codec;
  /** The client's name for the session (pushes from the previous node address it). */
  sessionId?: string;
  /** Split inference: hidden states in at block 0 and out at block L (the client keeps the edges). */
  split?: boolean;
}

export interface ServerStep {
  stepId: number;
  /** Position of the first new token; less than the session's length rolls its cache back. */
  startFromPosition: number;
  allLogits: boolean;
  tokens?: ArrayLike<number>;
  hidden?: { data: Float32Array; shape: readonly number[] };
}

/** Why an open was refused; the wire's error codes. */
export type OpenRefusal = "CACHE_FULL" | "BAD_SPAN";

export type OpenResult = { ok: true; session: ServerSession } | { ok: false; code: OpenRefusal; message: string };

/** A step's outcome: its output as an encoded tensor frame, an error for that step only, or nothing (already answered). */
export type StepOutcome =
  | { kind: "result"; stepId: number; frame: Uint8Array; hidden: boolean }
  | { kind: "error"; stepId: number; code: "BAD_STEP" | "INTERNAL"; message: string }
  /** Already run; `raced`: one of the two copies was pushed (the client relaying a slow push), so no second answer is due. */
  | { kind: "duplicate"; stepId: number; raced: boolean };

/** What the server tells the session's owner (the stream handler) when it closes a session itself. */
export interface SessionOwner {
  /** Who opened the session (a peer id), for logs. */
  peer?: string;
  closed(code: "IDLE_TIMEOUT", message: string): void;
}

interface Held {
  runtime: SpanRuntime;
  sessions: number;
}

export class ServerSession {
  lastUsed: number;
  /** Steps run one at a time; a step id at or below this one was already answered. */
  lastStepId = 0;
  queue: Promise<void> = Promise.resolve();
  open = true;
  /** Steps queued or running. */
  pending = 0;
  /** Pushed steps queued or running. */
  pendingPushes = 0;
  /** Ids of recent steps that arrived pushed (a relayed copy of one is a race, not a client's mistake). */
  readonly pushedIds = new Set<number>();

  constructor(
    readonly request: SessionRequest,
    readonly engine: SpanSession,
    /** The runtime's key in the server's table (released with the last session on it). */
    readonly runtimeKey: string,
    readonly reserved: number,
    readonly owner: SessionOwner,
    now: number,
  ) {
    this.lastUsed = now;
  }

  /** The session as logs name it: its id's first 8 digits and the peer that opened it. */
  get label(): string {
    return `${this.request.sessionId?.slice(0, 8) ?? "(no id)"} of ${this.owner.peer ?? "a local caller"}`;
  }
}

/**
 * Which codec logits travel in: the session's when it is lossless enough for sampling. f16 keeps
 * 11 significant bits (an error of at most 2^-11 of a logit, below what a session that accepted
 * 16- or 8-bit hidden states already lets through); bf16 (8 bits) and blockwise 8-bit are not, so
 * those sessions get f16 logits; "none" stays f32.
 */
export function logitsCodec(session: Codec): Codec {
  return session === "none" ? "none" : "f16";
}

const key = (start: number, end: number) => `${start}:${end}`;

function concat(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export class SpanServer {
  private held = new Map<string, Held>();
  private loading = new Map<string, Promise<SpanRuntime>>();
  private sessions = new Set<ServerSession>();
  private byId = new Map<string, ServerSession>();
  private reservedTokens = 0;
  /** Token-blocks reserved per peer. */
  private readonly reservedBy = new Map<string, number>();
  private readonly scheduler: FairScheduler;
  private _start: number;
  private _end: number;
  /** Steps run, and how many of them arrived pushed by the previous node. */
  readonly stats = { steps: 0, pushedIn: 0 };
  /** Per-block tokens/s of the last decode (1-token) and prefill steps. */
  readonly measured = { inferenceRps: 0, forwardRps: 0 };

  private constructor(private readonly opts: SpanServerOptions) {
    this._start = opts.start;
    this._end = opts.end;
    this.scheduler = new FairScheduler(opts.concurrency ?? 1);
  }

  /** Loads the span and measures it (a 32-token forward pass and five 1-token steps on a throwaway session). */
  static async create(opts: SpanServerOptions): Promise<SpanServer> {
    if (!(Number.isInteger(opts.start) && opts.start >= 0 && opts.start < opts.end && opts.end <= opts.numBlocks)) {
      throw new SessionError(`invalid span [${opts.start}, ${opts.end}) for ${opts.numBlocks} blocks`);
    }
    const server = new SpanServer(opts);
    const runtime = await server.runtime(opts.start, opts.end);
    try {
      if (opts.maxSessionLength > runtime.maxSequence) {
        throw new SessionError(`sessions of ${opts.maxSessionLength} tokens asked, but the span was loaded for at most ${runtime.maxSequence}`);
      }
      await server.measureThroughput();
    } catch (e) {
      await server.release();
      throw e;
    }
    return server;
  }

  get start(): number {
    return this._start;
  }

  get end(): number {
    return this._end;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  get cacheTokensLeft(): number {
    return this.opts.cacheTokens - this.reservedTokens;
  }

  get maxSessionLength(): number {
    return this.opts.maxSessionLength;
  }

  /** Ranges of the runtimes loaded now (the span, sub-ranges in use, spans left by a move with sessions still on them). */
  get loadedRanges(): [number, number][] {
    return [...this.held.keys()].map((k) => k.split(":").map(Number) as [number, number]);
  }

  /** The session a client named `sessionId`, while it is open. */
  session(sessionId: string): ServerSession | undefined {
    return this.byId.get(sessionId);
  }

  /** Reserves KV room for a session on blocks [start, end) of the span, or says why not. */
  async open(request: SessionRequest, owner: SessionOwner): Promise<OpenResult> {
    const { start, end, maxLength } = request;
    const refuse = (code: OpenRefusal, message: string): OpenResult => ({ ok: false, code, message });
    if (!(start >= this._start && end <= this._end && start < end)) {
      return refuse("BAD_SPAN", `this node serves blocks [${this._start}, ${this._end}), not [${start}, ${end})`);
    }
    if (!(maxLength >= 1 && maxLength <= this.opts.maxSessionLength))
      return refuse("BAD_SPAN", `maxLength ${maxLength} outside 1..${this.opts.maxSessionLength}`);
    if (request.sessionId && this.byId.has(request.sessionId)) return refuse("BAD_SPAN", "that sessionId is taken");
    const reserved = maxLength * (end - start);
    if (this.reservedTokens + reserved > this.opts.cacheTokens) {
      return refuse("CACHE_FULL", `no KV room: ${reserved} token-blocks asked, ${this.cacheTokensLeft} left`);
    }
    const peer = owner.peer ?? "";
    const peerCap = Math.floor(this.opts.cacheTokens * (this.opts.peerCacheShare ?? PEER_CACHE_SHARE));
    const peerHolds = this.reservedBy.get(peer) ?? 0;
    if (owner.peer !== undefined && peerHolds + reserved > Math.max(peerCap, reserved)) {
      return refuse("CACHE_FULL", `peer ${peer} holds ${peerHolds} token-blocks of KV; one peer may hold ${peerCap} (of ${this.opts.cacheTokens})`);
    }
    const whole = start === this._start && end === this._end;
    if (!whole && !this.held.has(key(start, end)) && this.subSpansHeld() >= (this.opts.maxSubSpans ?? 2)) {
      return refuse("CACHE_FULL", `already holding ${this.subSpansHeld()} sub-ranges of [${this._start}, ${this._end}); only the whole span is open now`);
    }
    this.reservedTokens += reserved; // before the await, so concurrent opens see it
    this.reservedBy.set(peer, peerHolds + reserved);
    const unreserve = () => {
      this.reservedTokens -= reserved;
      const left = (this.reservedBy.get(peer) ?? 0) - reserved;
      if (left > 0) this.reservedBy.set(peer, left);
      else this.reservedBy.delete(peer);
    };
    let runtime: SpanRuntime;
    try {
      runtime = await this.runtime(start, end);
    } catch (e) {
      unreserve();
      log.error("loading blocks [%d, %d) for a session failed: %s", start, end, errorMessage(e));
      throw e;
    }
    if (request.sessionId && this.byId.has(request.sessionId)) {
      unreserve();
      this.releaseUnused();
      return refuse("BAD_SPAN", "that sessionId is taken");
    }
    const k = key(start, end);
    const held = this.held.get(k);
    if (!held) throw new Error(`runtime ${k} vanished while opening`);
    let engine: SpanSession;
    try {
      engine = runtime.openSession(maxLength, { split: request.split === true });
    } catch (e) {
      unreserve();
      this.releaseUnused();
      if (e instanceof SessionError) return refuse("BAD_SPAN", e.message);
      throw e;
    }
    held.sessions++;
    const session = new ServerSession(request, engine, k, reserved, owner, this.now());
    this.sessions.add(session);
    if (request.sessionId) this.byId.set(request.sessionId, session);
    log("opened session %s on [%d, %d), max %d tokens (%d token-blocks of KV left)", session.label, start, end, maxLength, this.cacheTokensLeft);
    return { ok: true, session };
  }

  /** Ends a session and frees its KV room (idempotent). */
  close(session: ServerSession): void {
    if (!this.sessions.delete(session)) return;
    session.open = false;
    if (session.request.sessionId) this.byId.delete(session.request.sessionId);
    this.reservedTokens -= session.reserved;
    const peer = session.owner.peer ?? "";
    const left = (this.reservedBy.get(peer) ?? 0) - session.reserved;
    if (left > 0) this.reservedBy.set(peer, left);
    else this.reservedBy.delete(peer);
    session.engine.close();
    const held = this.held.get(session.runtimeKey);
    if (held) held.sessions--;
    this.releaseUnused();
    log.trace("closed session %s", session.label);
  }

  /**
   * Runs a step once: a session's steps run one at a time, and a step id already answered is a
   * duplicate (the client may relay a step whose push was slow). `deliver` gets the outcome in
   * step order, before the next step of the session starts.
   */
  step(session: ServerSession, step: ServerStep, deliver: (outcome: StepOutcome) => Promise<void>, pushed = false): Promise<void> {
    session.pending++;
    if (pushed) session.pendingPushes++;
    const run = async () => {
      if (!session.open) return;
      if (!(step.stepId >= 1 && step.stepId <= MAX_STEP_ID)) {
        return deliver({ kind: "error", stepId: step.stepId, code: "BAD_STEP", message: `step ids run from 1 to ${MAX_STEP_ID}, got ${step.stepId}` });
      }
      if (step.stepId <= session.lastStepId) {
        const raced = pushed || session.pushedIds.has(step.stepId);
        if (raced) return deliver({ kind: "duplicate", stepId: step.stepId, raced });
        const message = `step ${step.stepId} is not after the session's last step ${session.lastStepId}: step ids must increase`;
        return deliver({ kind: "error", stepId: step.stepId, code: "BAD_STEP", message });
      }
      this.stats.steps++;
      if (pushed) {
        this.stats.pushedIn++;
        session.pushedIds.add(step.stepId);
        if (session.pushedIds.size > 64) session.pushedIds.delete(session.pushedIds.values().next().value!);
      }
      session.lastStepId = step.stepId;
      session.lastUsed = this.now();
      this.opts.onStep?.(step);
      let outcome: StepOutcome;
      try {
        outcome = { kind: "result", stepId: step.stepId, ...(await this.compute(session, step)) };
      } catch (e) {
        // A bad step (wrong shape, session full, bad rollback) fails that step only.
        const bad = e instanceof SessionError || e instanceof ProtocolError;
        if (!bad) log.error("session %s step %d failed in the engine: %s", session.label, step.stepId, errorMessage(e));
        outcome = { kind: "error", stepId: step.stepId, code: bad ? "BAD_STEP" : "INTERNAL", message: errorMessage(e) };
      }
      await deliver(outcome);
    };
    return this.inOrder(session, `delivering step ${step.stepId}`, async () => {
      try {
        await run();
      } finally {
        session.pending--;
        if (pushed) session.pendingPushes--;
      }
    });
  }

  /** Whether a push may be queued on the session now (MAX_QUEUED_PUSHES): pushes beyond it are dropped, and the client relays. */
  acceptsPush(session: ServerSession): boolean {
    return session.pendingPushes < MAX_QUEUED_PUSHES;
  }

  /**
   * Runs `task` in the session's step order: after the steps queued before it, before those
   * queued after (the owner's answers that are not steps: a committed step's reveal, a refusal).
   * Never rejects: a failure is logged as `what`, and the session's next step still runs.
   */
  inOrder(session: ServerSession, what: string, task: () => Promise<void>): Promise<void> {
    const next = session.queue.then(task, task);
    session.queue = next.catch((e) => log.error("session %s: %s failed: %s", session.label, what, errorMessage(e)));
    return session.queue;
  }

  /** Closes sessions idle for the timeout and tells their owners; returns how many. */
  closeIdle(now: number): number {
    let closed = 0;
    for (const s of [...this.sessions]) {
      if (now - s.lastUsed < this.opts.idleTimeoutMs) continue;
      this.close(s);
      s.owner.closed("IDLE_TIMEOUT", `no step for ${this.opts.idleTimeoutMs} ms; the session was closed`);
      log("closed idle session %s", s.label);
      closed++;
    }
    return closed;
  }

  /**
   * Moves to [start, start + the span's length): loads the new span, then hands over: sessions
   * opened before the move finish on the runtime they hold, released when the last one closes.
   */
  async moveTo(start: number): Promise<void> {
    const length = this._end - this._start;
    if (!(Number.isInteger(start) && start >= 0 && start + length <= this.opts.numBlocks)) {
      throw new SessionError(`cannot move a ${length}-block span to ${start}`);
    }
    await this.runtime(start, start + length);
    log("moved from [%d, %d) to [%d, %d); %d sessions finish on the old span", this._start, this._end, start, start + length, this.sessions.size);
    [this._start, this._end] = [start, start + length];
    this.releaseUnused();
  }

  /** Closes every session and releases every runtime. */
  async release(): Promise<void> {
    for (const s of [...this.sessions]) this.close(s);
    const runtimes = [...this.held.values()].map((h) => h.runtime);
    this.held.clear();
    await Promise.all(runtimes.map((r) => r.release()));
  }

  /** Largest tensor a peer may send: a full-length session's hidden states. */
  get maxElements(): number {
    return this.opts.maxSessionLength * Math.max(this.opts.hiddenSize, 1);
  }

  private subSpansHeld(): number {
    return [...this.held.keys()].filter((k) => k !== key(this._start, this._end)).length;
  }

  private async runtime(start: number, end: number): Promise<SpanRuntime> {
    const k = key(start, end);
    const held = this.held.get(k);
    if (held) return held.runtime;
    let pending = this.loading.get(k);
    if (!pending) {
      pending = this.opts.load(start, end).then(
        (runtime) => {
          this.held.set(k, { runtime, sessions: 0 });
          this.loading.delete(k);
          return runtime;
        },
        (e) => {
          this.loading.delete(k);
          throw e;
        },
      );
      this.loading.set(k, pending);
      if (k !== key(this._start, this._end)) log("loading blocks [%d, %d) for a session that enters the span mid-way", start, end);
    }
    return pending;
  }

  /** Releases runtimes that are neither the span nor used by an open session. */
  private releaseUnused(): void {
    for (const [k, held] of this.held) {
      if (k === key(this._start, this._end) || held.sessions > 0) continue;
      this.held.delete(k);
      held.runtime.release().catch((e) => log.error("releasing runtime %s failed: %s", k, errorMessage(e)));
    }
  }

  private now(): number {
    return this.opts.now?.() ?? Date.now();
  }

  /** Runs a step on the session's runtime; its output (logits or hidden states) as an encoded tensor frame. */
  private async compute(session: ServerSession, step: ServerStep): Promise<{ frame: Uint8Array; hidden: boolean }> {
    const { hiddenSize, vocabSize } = this.opts;
    const { start, end, codec } = session.request;
    const engine = session.engine;
    if (step.startFromPosition > engine.length) {
      throw new SessionError(`startFromPosition ${step.startFromPosition} is past the session's ${engine.length} tokens`);
    }
    if (step.startFromPosition < engine.length) engine.truncate(step.startFromPosition);
    let input: ForwardInput;
    let count: number;
    if (start === 0 && !session.request.split) {
      if (!step.tokens) throw new SessionError("blocks from 0 take token ids, not hidden states (open the session split to send them)");
      input = { tokens: step.tokens };
      count = step.tokens.length;
    } else {
      const h = step.hidden;
      if (!h) throw new SessionError(`block ${start} takes hidden states, not token ids${start === 0 ? " (this session is split)" : ""}`);
      if (h.shape.length !== 3 || h.shape[0] !== 1 || h.shape[2] !== hiddenSize) {
        throw new SessionError(`hidden states must be [1, tokens, ${hiddenSize}], got [${h.shape}]`);
      }
      input = { hidden: h.data };
      count = h.data.length / hiddenSize;
    }
    const t0 = performance.now();
    const out = await this.forwardFairly(session, input, count, step.allLogits);
    this.recordSpeed(count, end - start, performance.now() - t0);
    if (out.logits) return { frame: encodeTensor(out.logits, [1, out.logits.length / vocabSize, vocabSize], logitsCodec(codec)), hidden: false };
    if (!out.hidden) throw new Error("the engine returned neither logits nor hidden states");
    return { frame: encodeTensor(out.hidden, [1, out.hidden.length / hiddenSize, hiddenSize], codec), hidden: true };
  }

  /**
   * Runs a step on the engine through the fair scheduler, in chunks of `prefillChunk` tokens (of
   * `contendedChunk` while another peer uses the engine), so a long prefill of one peer holds the
   * engine for one chunk at a time. The chunks' outputs are the step's (hidden rows of every
   * position; logits of the last, or of every one).
   */
  private async forwardFairly(session: ServerSession, input: ForwardInput, count: number, allLogits: boolean): Promise<ForwardOutput> {
    const peer = session.owner.peer ?? "";
    const chunk = Math.max(1, this.opts.prefillChunk ?? PREFILL_CHUNK);
    const contendedChunk = Math.max(1, Math.min(chunk, this.opts.contendedChunk ?? CONTENDED_CHUNK));
    const size = () => (this.scheduler.contended(peer, this.now(), CONTENTION_WINDOW_MS) ? contendedChunk : chunk);
    // A step no longer than a contended chunk runs whole either way (every decode step).
    let n = count <= contendedChunk ? count : Math.min(size(), count);
    if (n === count) return this.scheduler.run(peer, count, () => session.engine.forward(input, { allLogits }), this.now());
    const hiddenSize = this.opts.hiddenSize;
    const parts: ForwardOutput[] = [];
    for (let at = 0; at < count; at += n, n = Math.min(size(), count - at)) {
      const part: ForwardInput = input.tokens
        ? { tokens: Array.from(input.tokens).slice(at, at + n) }
        : { hidden: input.hidden!.subarray(at * hiddenSize, (at + n) * hiddenSize) };
      parts.push(await this.scheduler.run(peer, n, () => session.engine.forward(part, { allLogits }), this.now()));
      if (!session.open) throw new SessionError("the session closed during its step");
    }
    if (parts[0]?.hidden) return { hidden: concat(parts.map((p) => p.hidden!)) };
    return { logits: allLogits ? concat(parts.map((p) => p.logits!)) : parts.at(-1)!.logits! };
  }

  private async measureThroughput(): Promise<void> {
    const { start, end } = this;
    const session = (await this.runtime(start, end)).openSession(64);
    const run = async (count: number) => {
      const input: ForwardInput =
        start === 0
          ? { tokens: Array.from({ length: count }, (_, i) => (i * 7919) % this.opts.vocabSize) }
          : { hidden: new Float32Array(count * this.opts.hiddenSize).fill(0.01) };
      const t0 = performance.now();
      await session.forward(input);
      return performance.now() - t0;
    };
    try {
      this.recordSpeed(32, end - start, await run(32));
      const decode: number[] = [];
      for (let i = 0; i < 5; i++) decode.push(await run(1));
      decode.sort((a, b) => a - b);
      this.recordSpeed(1, end - start, decode[2] ?? 0);
    } finally {
      session.close();
    }
    log(
      "measured [%d, %d): %d tok/s decode, %d tok/s prefill per block",
      start,
      end,
      Math.round(this.measured.inferenceRps),
      Math.round(this.measured.forwardRps),
    );
  }

  private recordSpeed(count: number, blocks: number, ms: number): void {
    const rate = (count * 1000) / (Math.max(ms, 1e-3) / blocks);
    if (count === 1) this.measured.inferenceRps = rate;
    else this.measured.forwardRps = rate;
  }
}
