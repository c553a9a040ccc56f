// The client's view of the swarm over js-libp2p: node records from the info protocol, RTTs from
// ping, and span sessions as streams of the span protocol.
import "./node20.js";
import type { Stream } from "@libp2p/interface";
import { lpStream } from "@libp2p/utils";
import { multiaddr, type Multiaddr } from "@multiformats/multiaddr";
import type { Libp2p } from "libp2p";
import type { ForwardInput, ForwardOutput } from "../engine/runtime.js";
import type { Codec } from "../wire/tensor-frame.js";
import { decodeMessage, encodeControl, encodeStep, INFO_PROTOCOL, Kind, MAX_MESSAGE_BYTES, type NodeInfo, SPAN_PROTOCOL } from "./protocol.js";
import { verifyRecord } from "./signed-record.js";
import type { Hop, SpanRecord } from "./records.js";
import type { RemoteSpan, SpanProvider } from "./route-session.js";

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
  /** Codec for hidden states the client sends and nodes return. */
  codec?: Codec;
  /** Per-step deadline; a node slower than this is treated as failed. */
  stepTimeoutMs?: number;
  hiddenSize: number;
  vocabSize: number;
  numBlocks: number;
  /** Called with the reason a node's record was dropped (forged, expired, out of range). */
  onRejectedRecord?: (addr: string, reason: string) => void;
  now?: () => number;
}

export class Libp2pSpanProvider implements SpanProvider {
  private known = new Map<string, { addr: Multiaddr; info?: NodeInfo; rtt?: number }>();

  constructor(
    private readonly libp2p: Libp2p,
    bootstrap: string[],
    private readonly opts: ProviderOptions,
  ) {
    for (const a of bootstrap) this.known.set(a, { addr: multiaddr(a) });
  }

  /** Asks every known node for its info; unreachable nodes are left out. */
  async records(): Promise<SpanRecord[]> {
    const records: SpanRecord[] = [];
    await Promise.all(
      [...this.known.values()].map(async (entry) => {
        try {
          const t0 = performance.now();
          const stream = await this.libp2p.dialProtocol(entry.addr, INFO_PROTOCOL, { signal: AbortSignal.timeout(5000) });
          const bytes = (await lpStream(stream).read({ signal: AbortSignal.timeout(5000) })).subarray();
          entry.rtt = (performance.now() - t0) / 1000;
          await stream.close().catch(() => {});
          const info = await verifyRecord(JSON.parse(new TextDecoder().decode(bytes)), this.now());
          if (typeof info === "string") {
            this.opts.onRejectedRecord?.(entry.addr.toString(), info);
            entry.info = undefined;
            return;
          }
          const dialed = entry.addr.getComponents().find((c) => c.name === "p2p")?.value;
          if (dialed && info.peerId !== dialed) {
            this.opts.onRejectedRecord?.(entry.addr.toString(), "record of another peer");
            return;
          }
          entry.info = info;
          records.push({
            peerId: info.peerId,
            start: info.start,
            end: info.end,
            state: "online",
            throughput: info.inferenceRps || 1,
            inferenceRps: info.inferenceRps || undefined,
            cacheTokensLeft: info.cacheTokensLeft,
            nextPings: {},
          });
        } catch {
          entry.info = undefined;
        }
      }),
    );
    return records;
  }

  private now(): number {
    return this.opts.now?.() ?? Date.now();
  }

  rtts(): ReadonlyMap<string, number> {
    const m = new Map<string, number>();
    for (const e of this.known.values()) if (e.info && e.rtt !== undefined) m.set(e.info.peerId, e.rtt);
    return m;
  }

  async open(hop: Hop, maxLength: number): Promise<RemoteSpan> {
    const entry = [...this.known.values()].find((e) => e.info?.peerId === hop.peerId);
    if (!entry) throw new SpanFailure(hop.peerId, "UNKNOWN_PEER", "no address known");
    const stream = await this.libp2p.dialProtocol(entry.addr, SPAN_PROTOCOL, { signal: AbortSignal.timeout(5000) });
    return RemoteSpanStream.open(stream, hop, maxLength, this.opts);
  }
}

class RemoteSpanStream implements RemoteSpan {
  private position = 0;
  private nextStep = 1;
  private readonly lp;

  private constructor(
    private readonly stream: Stream,
    private readonly hop: Hop,
    private readonly opts: ProviderOptions,
  ) {
    stream.maxReadBufferLength = 2 * MAX_MESSAGE_BYTES;
    this.lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES, maxBufferSize: 2 * MAX_MESSAGE_BYTES });
  }

  static async open(stream: Stream, hop: Hop, maxLength: number, opts: ProviderOptions): Promise<RemoteSpanStream> {
    const span = new RemoteSpanStream(stream, hop, opts);
    await span.lp.write(encodeControl(Kind.Open, { start: hop.start, end: hop.end, maxLength, codec: opts.codec ?? "none" }));
    const reply = await span.receive();
    if (reply.kind !== Kind.Opened) span.fail("UNEXPECTED", `expected an opened message, got kind ${reply.kind}`);
    return span;
  }

  async forward(input: ForwardInput, opts: { allLogits?: boolean }): Promise<ForwardOutput> {
    const stepId = this.nextStep++;
    const count = input.tokens ? input.tokens.length : input.hidden!.length / this.opts.hiddenSize;
    const hidden = input.hidden && { data: input.hidden, shape: [1, count, this.opts.hiddenSize], codec: this.opts.codec ?? "none" };
    await this.lp.write(encodeStep({ stepId, startFromPosition: this.position, allLogits: Boolean(opts.allLogits), tokens: input.tokens, hidden }));
    const reply = await this.receive();
    if (reply.kind !== Kind.Result || reply.result.stepId !== stepId) this.fail("UNEXPECTED", `expected the result of step ${stepId}`);
    const { data, shape } = reply.result.tensor;
    const head = this.hop.end === this.opts.numBlocks;
    const [width, rows] = head ? [this.opts.vocabSize, opts.allLogits ? count : 1] : [this.opts.hiddenSize, count];
    if (shape.length !== 3 || shape[0] !== 1 || shape[1] !== rows || shape[2] !== width) {
      this.fail("BAD_SHAPE", `result of shape [${shape}] for ${count} tokens, expected [1, ${rows}, ${width}]`);
    }
    this.position += count;
    return head ? { logits: data } : { hidden: data };
  }

  async truncate(position: number): Promise<void> {
    // The node rolls back when the next step starts from this position.
    this.position = Math.min(this.position, position);
  }

  async close(): Promise<void> {
    await this.stream.close().catch(() => this.stream.abort(new Error("closing")));
  }

  private async receive() {
    let bytes: Uint8Array;
    try {
      bytes = (await this.lp.read({ signal: AbortSignal.timeout(this.opts.stepTimeoutMs ?? 30_000) })).subarray();
    } catch (e) {
      this.stream.abort(e as Error);
      return this.fail("UNREACHABLE", (e as Error).message);
    }
    let message;
    try {
      message = decodeMessage(bytes);
    } catch (e) {
      this.stream.abort(e as Error);
      return this.fail("BAD_MESSAGE", (e as Error).message);
    }
    if (message.kind === Kind.Error) this.fail(message.error.code, message.error.message);
    return message;
  }

  private fail(code: string, message: string): never {
    throw new SpanFailure(this.hop.peerId, code, message);
  }
}
