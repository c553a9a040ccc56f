// The client's view of the swarm over js-libp2p: node records from the DHT (verified here, under
// the client's clock), RTTs from ping, and span sessions as streams of the span protocol
// (steps, chaining, and committed steps revealed on request).
import "./node20.js";
import { randomBytes } from "node:crypto";
import { setMaxListeners } from "node:events";
import type { Stream } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import type { Multiaddr } from "@multiformats/multiaddr";
import type { ForwardInput, ForwardOutput } from "../engine/interface.js";
import { type Codec, type DecodedTensor, decodeTensor, encodeTensor } from "../wire/tensor-frame.js";
import { blockHolders, fetchRecord } from "./dht.js";
import type { SwarmHost } from "./host.js";
import {
  decodeMessage,
  encodeControl,
  encodeReveal,
  encodeStep,
  framedStream,
  Kind,
  type LinkRequest,
  type Message,
  type PushTarget,
  SPAN_PROTOCOL,
  type StepReceipt,
} from "./protocol.js";
import { inputHash, type Receipt, ReceiptChain, signedAt, verifyHead } from "./receipt.js";
import { type RecordBody, verifyRecord } from "./signed-record.js";
import type { Hop, SpanRecord } from "./records.js";
import type { BlockRange, Commitment, RemoteSpan, SpanProvider, StepOptions } from "./route-session.js";
import { errorMessage, logger } from "../log.js";

const log = logger("swarm:provider");

/**
 * Tokens/s a node can serve: its measured decode rate, capped by what its link carries when that
 * was measured (hidden states at 16 bits per value, as Petals counts them).
 */
export function spanThroughput(info: Pick<RecordBody, "inferenceRps" | "linkMbps">, hiddenSize: number): number {
  const compute = info.inferenceRps || 1;
  if (!(info.linkMbps > 0)) return compute;
  return Math.min(compute, (info.linkMbps * 1e6) / (16 * hiddenSize));
}

/** What the decision functions (routing, placement) see of a verified node record. */
export function toSpanRecord(info: Omit<RecordBody, "expiresAt">, hiddenSize: number): SpanRecord {
  return {
    peerId: info.peerId,
    start: info.start,
    end: info.end,
    state: info.state,
    throughput: spanThroughput(info, hiddenSize),
    inferenceRps: info.inferenceRps || undefined,
    cacheTokensLeft: info.cacheTokensLeft,
    nextPings: info.nextPings,
  };
}

/** A node answered a step with an error, or broke the protocol. */
export class SpanFailure extends Error {
  override name = "SpanFailure";
  constructor(
    readonly peerId: string,
    readonly code: string,
    message: string,
  ) {
    super(`${peerId}: ${code}: ${message}`);
  }
}

export interface ProviderOptions {
  /** The model whose blocks to look for in the DHT. */
  modelId: string;
  /** Route only through nodes that announce this model manifest id (their spans were checked against it at load). */
  manifestId?: string;
  /** Codec for hidden states the client sends and nodes return. */
  codec?: Codec;
  /** Per-step deadline; a node slower than this is treated as failed. */
  stepTimeoutMs?: number;
  /** Deadline for one round of DHT lookups. */
  discoveryTimeoutMs?: number;
  hiddenSize: number;
  vocabSize: number;
  numBlocks: number;
  /** Called with the reason a node's record was dropped (forged, expired, out of range, other model). */
  onRejectedRecord?: (peerId: string, reason: string) => void;
  now?: () => number;
}

/** A verified, reachable node as the provider knows it. */
interface KnownNode {
  info: RecordBody;
  rtt: number;
}

export class Libp2pSpanProvider implements SpanProvider {
  private known = new Map<string, KnownNode>();
  /** When each block's holders were last looked up (the provider's clock). */
  private lookedUp = new Map<number, number>();

  constructor(
    private readonly host: SwarmHost,
    private readonly opts: ProviderOptions,
  ) {}

  /**
   * Looks up the holders of the blocks in `range` (default: every block) in the DHT and returns
   * the verified, online records the provider knows. A full lookup replaces everything known; a
   * partial one replaces what was known of the nodes serving blocks in `range` (or found holding
   * one) and keeps the records already verified for other blocks. With `maxAgeMs`, no lookup is
   * made when every block of `range` was looked up within that time: what is known is returned.
   */
  async records(range?: BlockRange, opts: { maxAgeMs?: number } = {}): Promise<SpanRecord[]> {
    const n = this.opts.numBlocks;
    const { start, end } = range ?? { start: 0, end: n };
    if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start < end && end <= n)) {
      throw new RangeError(`blocks [${start}, ${end}) are not a range of the model's ${n} blocks`);
    }
    const blocks = Array.from({ length: end - start }, (_, i) => start + i);
    const now = this.now();
    const maxAge = opts.maxAgeMs ?? 0;
    if (maxAge > 0 && blocks.every((b) => now - (this.lookedUp.get(b) ?? -Infinity) <= maxAge)) return this.knownRecords();
    const signal = AbortSignal.timeout(this.opts.discoveryTimeoutMs ?? 10_000);
    setMaxListeners(Infinity, signal); // one deadline shared by every block's and peer's DHT query
    const fresh = new Map<string, KnownNode>();
    const holders = new Set<string>();
    await this.discover(blocks, signal, fresh, holders);
    // A DHT lookup can miss a holder (a provider record still on its way): look once more before
    // calling a block uncovered.
    const uncovered = blocks.filter((b) => ![...fresh.values()].some(({ info }) => info.start <= b && b < info.end));
    if (uncovered.length) await this.discover(uncovered, signal, fresh, holders);
    if (start === 0 && end === n) this.known = fresh;
    else {
      for (const [peer, { info }] of this.known) if (holders.has(peer) || (info.start < end && start < info.end)) this.known.delete(peer);
      for (const [peer, node] of fresh) this.known.set(peer, node);
    }
    for (const b of blocks) this.lookedUp.set(b, now);
    return this.knownRecords();
  }

  private knownRecords(): SpanRecord[] {
    return [...this.known.values()].map(({ info }) => toSpanRecord(info, this.opts.hiddenSize)).sort((a, b) => a.peerId.localeCompare(b.peerId));
  }

  /** Finds the holders of `blocks` in the DHT (adding them to `holders`) and admits those not in `into` yet. */
  private async discover(blocks: number[], signal: AbortSignal, into: Map<string, KnownNode>, holders: Set<string>): Promise<void> {
    const { dht } = this.host.services;
    const found = new Map<string, Multiaddr[]>();
    const perBlock = await Promise.all(
      blocks.map((b) =>
        blockHolders(dht, this.opts.modelId, b, signal).catch((e: unknown) => {
          // Counted as no holders found: the block is looked up again, or left uncovered for routing to report.
          log.error("DHT lookup of the holders of block %d of %s failed: %s", b, this.opts.modelId, errorMessage(e));
          return new Map<string, Multiaddr[]>();
        }),
      ),
    );
    for (const holding of perBlock) for (const [peer, addrs] of holding) found.set(peer, [...(found.get(peer) ?? []), ...addrs]);
    found.delete(this.host.peerId.toString());
    for (const peer of found.keys()) holders.add(peer);
    await Promise.all([...found].filter(([peer]) => !into.has(peer)).map(([peer, addrs]) => this.admit(peer, addrs, signal, into)));
  }

  /** Fetches, verifies and pings one block holder; adds it to `into` if it is a reachable, online server of our model. */
  private async admit(peerId: string, addrs: Multiaddr[], signal: AbortSignal, into: Map<string, KnownNode>): Promise<void> {
    const reject = (reason: string) => {
      log("record of peer %s left out: %s", peerId, reason);
      this.opts.onRejectedRecord?.(peerId, reason);
    };
    try {
      const raw = await fetchRecord(this.host.services.dht, peerId, signal);
      if (raw === undefined) return reject("no record in the DHT");
      const info = await verifyRecord(raw, this.now());
      if (typeof info === "string") return reject(info);
      if (info.peerId !== peerId) return reject(`record of ${info.peerId} announced by ${peerId}`);
      if (info.modelId !== this.opts.modelId || info.numBlocks !== this.opts.numBlocks) {
        return reject(`serves ${info.modelId} with ${info.numBlocks} blocks, not ${this.opts.modelId} with ${this.opts.numBlocks}`);
      }
      if (this.opts.manifestId !== undefined && info.manifestId !== this.opts.manifestId) {
        return reject(
          info.manifestId
            ? `announces manifest ${info.manifestId.slice(0, 16)}…, not ${this.opts.manifestId.slice(0, 16)}…`
            : "announces no manifest, and one is required",
        );
      }
      if (info.state !== "online") return log.trace("peer %s is %s: left out", peerId, info.state);
      const id = peerIdFromString(peerId);
      if (addrs.length) {
        await this.host.peerStore.merge(id, { multiaddrs: addrs }).catch((e: unknown) => {
          // The ping below dials whatever addresses libp2p has; it decides whether the node is usable.
          log.error("peer %s: could not store its addresses: %s", peerId, errorMessage(e));
        });
      }
      let rtt: number;
      try {
        rtt = (await this.host.services.ping.ping(id, { signal: AbortSignal.timeout(2000) })) / 1000;
      } catch (e) {
        // A valid record of a node that does not answer (killed without withdrawing): leave it out.
        return reject(`unreachable: ${errorMessage(e)}`);
      }
      into.set(peerId, { info, rtt });
    } catch (e) {
      // One bad holder (an unparsable peer id, a failing lookup) must not fail the whole discovery.
      reject(`could not be checked: ${errorMessage(e)}`);
    }
  }

  private now(): number {
    return this.opts.now?.() ?? Date.now();
  }

  /** The verified records (and RTTs) known from `records()` calls, for dashboards. */
  get nodes(): { info: RecordBody; rtt: number }[] {
    return [...this.known.values()].map((e) => ({ ...e }));
  }

  rtts(): ReadonlyMap<string, number> {
    return new Map([...this.known].map(([peer, e]) => [peer, e.rtt]));
  }

  /** The codec sessions use unless `open` is told otherwise. */
  get codec(): Codec {
    return this.opts.codec ?? "none";
  }

  async open(hop: Hop, maxLength: number, sessionOpts: { codec?: Codec; split?: boolean } = {}): Promise<RemoteSpan> {
    if (!this.known.has(hop.peerId)) throw new SpanFailure(hop.peerId, "UNKNOWN_PEER", "no record known for this peer");
    let stream: Stream;
    try {
      stream = await this.host.dialProtocol(peerIdFromString(hop.peerId), SPAN_PROTOCOL, { signal: AbortSignal.timeout(5000) });
    } catch (e) {
      throw new SpanFailure(hop.peerId, "UNREACHABLE", (e as Error).message);
    }
    const known = await this.host.peerStore.get(peerIdFromString(hop.peerId)).catch((e: unknown) => {
      // Without stored addresses the previous hop cannot dial this one for pushes; the client relays.
      log("peer %s: no stored addresses to give the previous hop: %s", hop.peerId, errorMessage(e));
      return undefined;
    });
    const addrs = (known?.addresses ?? []).map((a) => a.multiaddr.toString());
    const opts = sessionOpts.codec ? { ...this.opts, codec: sessionOpts.codec } : this.opts;
    return RemoteSpanStream.open(stream, hop, maxLength, opts, addrs, sessionOpts.split === true);
  }
}

class RemoteSpanStream implements RemoteSpan {
  private position = 0;
  private nextStep = 1;
  private readonly lp;
  readonly sessionId = randomBytes(16).toString("hex");
  private inbox: (Uint8Array | Error)[] = [];
  private received: Receipt[] = [];
  private readonly receiptChain = new ReceiptChain();
  private verifying: Promise<void> = Promise.resolve();
  private badReceipt?: string;
  private waiting?: (m: Uint8Array | Error) => void;
  /** The committed step whose output the node holds (until it is revealed or another step is sent). */
  private held?: number;
  /** The last committed step: its reveal's Result is not folded into the receipt chain again. */
  private lastCommitted?: number;

  private constructor(
    private readonly stream: Stream,
    private readonly hop: Hop,
    private readonly opts: ProviderOptions,
    private readonly addrs: string[],
    /** A split session: hidden states in at block 0 and out at block L. */
    private readonly split: boolean,
  ) {
    this.lp = framedStream(stream);
    void this.readLoop();
  }

  static async open(stream: Stream, hop: Hop, maxLength: number, opts: ProviderOptions, addrs: string[], split = false): Promise<RemoteSpanStream> {
    const span = new RemoteSpanStream(stream, hop, opts, addrs, split);
    try {
      const open = { start: hop.start, end: hop.end, maxLength, codec: opts.codec ?? "none", sessionId: span.sessionId, ...(split ? { split } : {}) };
      await span.lp.write(encodeControl(Kind.Open, open));
      const reply = await span.receive();
      if (reply.kind !== Kind.Opened) span.fail("UNEXPECTED", `expected an opened message, got kind ${reply.kind}`);
    } catch (e) {
      // A refused or broken open leaves nothing to use on this stream.
      stream.abort(e instanceof Error ? e : new Error(String(e)));
      throw e;
    }
    log.trace("peer %s session %s: opened blocks [%d, %d)", hop.peerId, span.sessionId, hop.start, hop.end);
    return span;
  }

  readonly chain = {
    target: (): PushTarget => ({ peerId: this.hop.peerId, sessionId: this.sessionId, addrs: this.addrs }),
    link: async (link: LinkRequest) => {
      await this.lp.write(encodeControl(Kind.Link, link));
    },
    pushed: async (stepId: number, count: number, allLogits: boolean, graceMs: number, input?: ForwardInput): Promise<ForwardOutput | undefined> => {
      this.checkReceipts();
      this.held = undefined; // the node runs this step: it no longer holds a committed output
      const reply = await this.nextFor(stepId, graceMs);
      if (!reply) return undefined;
      // A pushed step ran on the previous hop's output, the values this client decoded from it.
      return this.result(reply, stepId, count, allLogits, input && [inputHash(input)]);
    },
  };

  async forward(input: ForwardInput, opts: StepOptions): Promise<ForwardOutput> {
    const { stepId, count, accepted } = await this.sendStep(input, opts, false);
    const reply = await this.nextFor(stepId);
    if (!reply) return this.fail("UNREACHABLE", `no answer to step ${stepId}`);
    return this.result(reply, stepId, count, Boolean(opts.allLogits), accepted);
  }

  /**
   * Runs a step whose output the node holds back: it answers with its receipt only (the
   * commitment, admitted and folded into the receipt chain here as `forward` admits a result's),
   * and `reveal()` fetches the output, which must come with the same receipt and hash to the
   * committed value (else BAD_REVEAL). The node holds one output per session: sending another
   * step first forfeits the reveal (NO_COMMIT). Not with `push`: the node would refuse it.
   */
  async commit(input: ForwardInput, opts: StepOptions): Promise<Commitment> {
    if (opts.push) throw new RangeError("a committed step cannot be pushed: the next node would see its output before the reveal");
    const { stepId, count, accepted } = await this.sendStep(input, opts, true);
    const reply = await this.nextFor(stepId);
    if (!reply || reply.kind !== Kind.Commit || reply.commit.stepId !== stepId) return this.fail("UNEXPECTED", `expected the commitment of step ${stepId}`);
    const committed = reply.commit;
    this.admitReceipt(committed, accepted);
    // The node ran the step: its cache holds these tokens whether or not the output is revealed.
    this.position += count;
    this.held = this.lastCommitted = stepId;
    let revealed: Promise<ForwardOutput> | undefined;
    return {
      stepId,
      outputHash: committed.outputHash,
      reveal: () => (revealed ??= this.reveal(committed, count, Boolean(opts.allLogits))),
    };
  }

  /** Asks the node for a committed step's output and checks it against the commitment. */
  private async reveal(committed: StepReceipt, count: number, allLogits: boolean): Promise<ForwardOutput> {
    const { stepId } = committed;
    this.checkReceipts();
    if (this.held !== stepId) this.fail("NO_COMMIT", `step ${stepId}'s output is no longer held: another step was sent since its commitment`);
    this.held = undefined;
    await this.lp.write(encodeReveal(stepId));
    const reply = await this.nextFor(stepId);
    if (!reply || reply.kind !== Kind.Result || reply.result.stepId !== stepId)
      return this.fail("UNEXPECTED", `expected the revealed result of step ${stepId}`);
    const { result } = reply;
    const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(b);
    if (!same(result.outputHash, committed.outputHash)) this.fail("BAD_REVEAL", `the revealed output of step ${stepId} does not hash to the committed value`);
    if (!same(result.inputHash, committed.inputHash) || !same(result.signature, committed.signature)) {
      this.fail("BAD_REVEAL", `the revealed result of step ${stepId} carries another receipt than its commitment`);
    }
    return this.output(result.tensor, count, allLogits);
  }

  /** Writes a step (its position is the session's length so far) and says which input hashes its receipt may name. */
  private async sendStep(input: ForwardInput, opts: StepOptions, commit: boolean): Promise<{ stepId: number; count: number; accepted: Uint8Array[] }> {
    this.checkReceipts();
    const stepId = opts.stepId ?? this.nextStep++;
    if (!input.tokens && !input.hidden) throw new RangeError("a step needs token ids or hidden states");
    const count = input.tokens ? input.tokens.length : (input.hidden?.length ?? 0) / this.opts.hiddenSize;
    const codec = this.opts.codec ?? "none";
    const frame = input.hidden && encodeTensor(input.hidden, [1, count, this.opts.hiddenSize], codec);
    this.held = undefined; // the node discards a held output when another step runs
    await this.lp.write(
      encodeStep({ stepId, startFromPosition: this.position, allLogits: Boolean(opts.allLogits), push: opts.push, commit, tokens: input.tokens, frame }),
    );
    // The node hashes the values it ran on: this frame as it decodes it, or, when the previous
    // hop's push of the same step won the race, that hop's output as this client received it.
    const accepted = [inputHash(input)];
    if (frame && codec !== "none") accepted.push(inputHash({ hidden: decodeTensor(frame).data }));
    return { stepId, count, accepted };
  }

  /** Every step's receipt from this node, in order (evidence of what it computed). */
  get receipts(): readonly Receipt[] {
    return this.received;
  }

  /** A receipt whose signature did not verify fails this node's next step, so the route replaces it. */
  private checkReceipts(): void {
    if (this.badReceipt) this.fail("BAD_RECEIPT", this.badReceipt);
  }

  /**
   * Admits a result's receipt: the input it names must be one of the `accepted` hashes (what the
   * node may have run on), then it joins the receipt chain, whose signatures are checked on the
   * thread pool, off the critical path; a bad one fails the next step.
   */
  private admitReceipt(result: StepReceipt, accepted: readonly Uint8Array[] | undefined): void {
    const claimed = Buffer.from(result.inputHash);
    if (accepted && !accepted.some((h) => claimed.equals(h))) {
      this.fail("BAD_RECEIPT", `the receipt of step ${result.stepId} names an input this client did not send`);
    }
    this.foldReceipt(result);
  }

  /** Folds a result into this session's receipt chain (as the node did) and checks the node's signature where it must sign. */
  private foldReceipt(result: StepReceipt): void {
    const fields = {
      sessionId: this.sessionId,
      stepId: result.stepId,
      start: this.hop.start,
      end: this.hop.end,
      inputHash: result.inputHash,
      outputHash: result.outputHash,
    };
    const chainHead = this.receiptChain.fold(fields);
    const mustSign = signedAt(this.receiptChain.count);
    const signed = result.signature.some((b) => b !== 0);
    const receipt: Receipt = { ...fields, peerId: this.hop.peerId, chainHead, ...(signed ? { signature: result.signature } : {}) };
    this.received.push(receipt);
    if (!mustSign) return;
    const bad = (why: string) => {
      if (this.badReceipt) return;
      this.badReceipt = why;
      log.error("peer %s session %s: %s", this.hop.peerId, this.sessionId, why);
    };
    if (!signed) return bad(`the receipt of step ${result.stepId} is not signed, and must be`);
    const checked = verifyHead(this.hop.peerId, chainHead, result.signature).then((ok) => {
      if (!ok) bad(`the receipt of step ${result.stepId} is not signed by ${this.hop.peerId}`);
    });
    this.verifying = Promise.all([this.verifying, checked]).then(() => undefined);
  }

  /** Resolves once every receipt received so far has been checked; throws BAD_RECEIPT if one failed. */
  async settle(): Promise<void> {
    await this.verifying;
    this.checkReceipts();
  }

  /**
   * The next message for step `stepId`: results (or commitments) of earlier steps still in the
   * stream (a step the client gave up on, whose later hops answered anyway) are dropped, not
   * mistaken for this one.
   */
  private async nextFor(stepId: number, graceMs?: number): Promise<Message | undefined> {
    for (;;) {
      const reply = graceMs === undefined ? await this.receive() : await this.receive(graceMs);
      const late = reply?.kind === Kind.Result ? reply.result : reply?.kind === Kind.Commit ? reply.commit : undefined;
      if (!late || late.stepId >= stepId) return reply;
      // The node's chain holds every result and commitment it sent, each step once: a reveal's result was folded as its commitment.
      if (!(reply?.kind === Kind.Result && late.stepId === this.lastCommitted)) this.foldReceipt(late);
      log.trace("peer %s session %s: dropping the late answer to step %d", this.hop.peerId, this.sessionId, late.stepId);
    }
  }

  /** A step's result, checked: its step id, its receipt (against the input hashes the node may have run on) and its shape. */
  private result(reply: Message, stepId: number, count: number, allLogits: boolean, accepted?: readonly Uint8Array[]): ForwardOutput {
    if (reply.kind !== Kind.Result || reply.result.stepId !== stepId) this.fail("UNEXPECTED", `expected the result of step ${stepId}`);
    this.admitReceipt(reply.result, accepted);
    const output = this.output(reply.result.tensor, count, allLogits);
    this.position += count;
    return output;
  }

  /** A step's output, checked against the shape `count` tokens give on this span. */
  private output({ data, shape }: DecodedTensor, count: number, allLogits: boolean): ForwardOutput {
    const head = this.hop.end === this.opts.numBlocks && !this.split;
    const [width, rows] = head ? [this.opts.vocabSize, allLogits ? count : 1] : [this.opts.hiddenSize, count];
    if (shape.length !== 3 || shape[0] !== 1 || shape[1] !== rows || shape[2] !== width) {
      this.fail("BAD_SHAPE", `result of shape [${shape}] for ${count} tokens, expected [1, ${rows}, ${width}]`);
    }
    return head ? { logits: data } : { hidden: data };
  }

  async truncate(position: number): Promise<void> {
    // The node rolls back when the next step starts from this position.
    this.position = Math.min(this.position, position);
  }

  async close(): Promise<void> {
    await this.stream.close().catch((e: unknown) => {
      log.trace("peer %s session %s: clean close failed, aborting the stream: %s", this.hop.peerId, this.sessionId, errorMessage(e));
      this.stream.abort(new Error("closing"));
    });
  }

  /** Reads every message into the inbox, so a wait can time out without losing a late reply. */
  private async readLoop(): Promise<void> {
    for (;;) {
      let item: Uint8Array | Error;
      try {
        item = (await this.lp.read()).subarray();
      } catch (e) {
        item = e instanceof Error ? e : new Error(String(e));
      }
      if (this.waiting) {
        const w = this.waiting;
        this.waiting = undefined;
        w(item);
      } else this.inbox.push(item);
      if (item instanceof Error) return;
    }
  }

  /** The next message; with `graceMs`, undefined when none came in time (the stream stays open). */
  private async receive(): Promise<Message>;
  private async receive(graceMs: number): Promise<Message | undefined>;
  private async receive(graceMs?: number): Promise<Message | undefined> {
    const timeoutMs = graceMs ?? this.opts.stepTimeoutMs ?? 30_000;
    let item = this.inbox.shift();
    if (!item) {
      let timer: NodeJS.Timeout | undefined;
      item = await new Promise<Uint8Array | Error | undefined>((resolve) => {
        this.waiting = resolve;
        timer = setTimeout(() => {
          this.waiting = undefined;
          resolve(undefined);
        }, timeoutMs);
      });
      clearTimeout(timer);
    }
    if (item === undefined) {
      if (graceMs !== undefined) return undefined;
      this.stream.abort(new Error("step timeout"));
      return this.fail("UNREACHABLE", `no answer within ${timeoutMs} ms`);
    }
    if (item instanceof Error) {
      this.inbox.unshift(item); // every later call fails the same way
      this.stream.abort(item);
      return this.fail("UNREACHABLE", item.message);
    }
    let message;
    try {
      message = decodeMessage(item);
    } catch (e) {
      this.stream.abort(e instanceof Error ? e : new Error(String(e)));
      return this.fail("BAD_MESSAGE", errorMessage(e));
    }
    if (message.kind === Kind.Error) this.fail(message.error.code, message.error.message);
    return message;
  }

  private fail(code: string, message: string): never {
    log.error("peer %s session %s: %s: %s", this.hop.peerId, this.sessionId, code, message);
    throw new SpanFailure(this.hop.peerId, code, message);
  }
}
