// A node of the swarm: a js-libp2p host that serves a span of blocks. Each inference session is
// one stream of the span protocol; the node keeps its KV caches until the stream ends. Any
// sub-range of the span can be served (the node holds one engine session per block), so routes
// may enter an overlapping span mid-way. A peer's message never crashes the node: malformed
// input gets an error message, and only that stream is closed.
import "./node20.js";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import type { Stream } from "@libp2p/interface";
import { ping } from "@libp2p/ping";
import { tcp } from "@libp2p/tcp";
import { lpStream } from "@libp2p/utils";
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import { createLibp2p, type Libp2p } from "libp2p";
import { type KvSession, SessionError, SpanRunner } from "../engine/runtime.js";
import type { WeightFormat } from "../engine/weights.js";
import type { Checkpoint } from "../model/checkpoint.js";
import { ProtocolError } from "../wire/errors.js";
import type { Codec } from "../wire/tensor-frame.js";
import { signRecord } from "./signed-record.js";
import {
  decodeMessage,
  encodeControl,
  encodeResult,
  INFO_PROTOCOL,
  Kind,
  MAX_MESSAGE_BYTES,
  type NodeInfo,
  type OpenRequest,
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
}

interface OpenSession {
  request: OpenRequest;
  sessions: KvSession[];
  reserved: number;
}

export class SpanNode {
  private reservedTokens = 0;
  private openSessions = new Set<OpenSession>();
  private measured = { inferenceRps: 0, forwardRps: 0 };

  private constructor(
    readonly libp2p: Libp2p,
    private readonly key: PrivateKey,
    private readonly blocks: SpanRunner[],
    private readonly opts: Required<Omit<SpanNodeOptions, "threads" | "listen" | "format">> & SpanNodeOptions,
  ) {}

  static async start(options: SpanNodeOptions): Promise<SpanNode> {
    const c = options.checkpoint.config;
    if (!(options.start >= 0 && options.start < options.end && options.end <= c.numLayers)) {
      throw new SessionError(`invalid span [${options.start}, ${options.end}) for ${c.numLayers} blocks`);
    }
    const maxSessionLength = options.maxSessionLength ?? Math.min(2048, c.maxPositionEmbeddings);
    const blocks: SpanRunner[] = [];
    for (let i = options.start; i < options.end; i++) {
      blocks.push(
        await SpanRunner.load(
          options.checkpoint,
          { start: i, end: i + 1, embed: i === 0, head: i === c.numLayers - 1 },
          { format: options.format, threads: options.threads, maxSequence: maxSessionLength },
        ),
      );
    }
    const key = await generateKeyPair("Ed25519");
    const libp2p = await createLibp2p({
      privateKey: key,
      addresses: { listen: options.listen ?? ["/ip4/127.0.0.1/tcp/0"] },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      services: { identify: identify(), ping: ping() },
    });
    const node = new SpanNode(libp2p, key, blocks, {
      cacheTokens: 16384 * (options.end - options.start),
      ...options,
      maxSessionLength,
    });
    await libp2p.handle(SPAN_PROTOCOL, (stream) => node.serve(stream), { maxInboundStreams: 256 });
    await libp2p.handle(INFO_PROTOCOL, (stream) => node.sendInfo(stream));
    return node;
  }

  get addresses(): string[] {
    return this.libp2p.getMultiaddrs().map((a) => a.toString());
  }

  info(): NodeInfo {
    return {
      peerId: this.libp2p.peerId.toString(),
      modelId: this.opts.modelId,
      numBlocks: this.opts.checkpoint.config.numLayers,
      start: this.opts.start,
      end: this.opts.end,
      inferenceRps: this.measured.inferenceRps,
      forwardRps: this.measured.forwardRps,
      cacheTokensLeft: this.opts.cacheTokens - this.reservedTokens,
      version: VERSION,
    };
  }

  get sessionCount(): number {
    return this.openSessions.size;
  }

  async stop(): Promise<void> {
    await this.libp2p.stop();
    for (const s of this.openSessions) this.release(s);
    for (const b of this.blocks) await b.release();
  }

  private async sendInfo(stream: Stream): Promise<void> {
    try {
      const signed = await signRecord(this.key, this.info(), Date.now());
      await lpStream(stream).write(new TextEncoder().encode(JSON.stringify(signed)));
      await stream.close();
    } catch {
      stream.abort(new Error("info request failed"));
    }
  }

  private async serve(stream: Stream): Promise<void> {
    stream.maxReadBufferLength = 2 * MAX_MESSAGE_BYTES;
    const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES, maxBufferSize: 2 * MAX_MESSAGE_BYTES });
    const c = this.opts.checkpoint.config;
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
          message = decodeMessage(bytes, this.opts.maxSessionLength * Math.max(c.hiddenSize, 1));
        } catch (e) {
          await fail(e instanceof ProtocolError ? e.code : "BAD_MESSAGE", (e as Error).message);
          return;
        }
        if (message.kind === Kind.Open) {
          if (session) return fail("ALREADY_OPEN", "this stream already carries a session");
          const opened = this.open(message.open);
          if (typeof opened === "string") return fail(opened === "CACHE_FULL" ? "CACHE_FULL" : "BAD_SPAN", opened);
          session = opened;
          await lp.write(encodeControl(Kind.Opened, { start: session.request.start, end: session.request.end }));
        } else if (message.kind === Kind.Step) {
          if (!session) return fail("NOT_OPEN", "send an open message first");
          try {
            await lp.write(await this.step(session, message.step));
          } catch (e) {
            // A bad step (wrong shape, session full, bad rollback) fails that step only.
            await fail(e instanceof SessionError || e instanceof ProtocolError ? "BAD_STEP" : "INTERNAL", (e as Error).message);
          }
        } else {
          return fail("UNEXPECTED", `message kind ${message.kind} is not for nodes`);
        }
      }
    } finally {
      if (session) this.release(session);
      await stream.close().catch(() => stream.abort(new Error("closing")));
    }
  }

  /** Reserves KV room for a session, or says why not. */
  private open(request: OpenRequest): OpenSession | string {
    const { start, end, maxLength } = request;
    if (start < this.opts.start || end > this.opts.end) {
      return `this node serves blocks [${this.opts.start}, ${this.opts.end}), not [${start}, ${end})`;
    }
    if (maxLength < 1 || maxLength > this.opts.maxSessionLength) return `maxLength ${maxLength} outside 1..${this.opts.maxSessionLength}`;
    const reserved = maxLength * (end - start);
    if (this.reservedTokens + reserved > this.opts.cacheTokens) return "CACHE_FULL";
    this.reservedTokens += reserved;
    const sessions = this.blocks.slice(start - this.opts.start, end - this.opts.start).map((b) => b.openSession(maxLength));
    const session = { request, sessions, reserved };
    this.openSessions.add(session);
    return session;
  }

  private release(session: OpenSession): void {
    if (!this.openSessions.delete(session)) return;
    this.reservedTokens -= session.reserved;
    for (const s of session.sessions) s.close();
  }

  private async step(session: OpenSession, step: StepRequest): Promise<Uint8Array> {
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
    let out = await session.sessions[0]!.forward(input, { allLogits: step.allLogits });
    for (const s of session.sessions.slice(1)) out = await s.forward({ hidden: out.hidden }, { allLogits: step.allLogits });
    this.recordSpeed(input, end - start, performance.now() - t0);
    if (out.logits) {
      const rows = out.logits.length / c.vocabSize;
      return encodeResult(step.stepId, out.logits, [1, rows, c.vocabSize], "none");
    }
    const rows = out.hidden!.length / c.hiddenSize;
    return encodeResult(step.stepId, out.hidden!, [1, rows, c.hiddenSize], codec as Codec);
  }

  /** Per-block tokens/s of the last decode (1 token) and prefill steps, for the node's record. */
  private recordSpeed(input: { tokens?: ArrayLike<number>; hidden?: Float32Array }, blocks: number, ms: number): void {
    const count = input.tokens ? input.tokens.length : input.hidden!.length / this.opts.checkpoint.config.hiddenSize;
    const rate = (count * 1000) / (ms / blocks);
    if (count === 1) this.measured.inferenceRps = rate;
    else this.measured.forwardRps = rate;
  }
}
