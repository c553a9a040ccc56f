// Runs a span model on ONNX Runtime with per-session KV caches. Each session owns
// [1, kvHeads, capacity, headDim] buffers per layer, bound as both past input and present output
// of GroupQueryAttention, which appends to them in place. The Node binding still copies every
// fetched output once per run, so a step costs O(capacity): capacity therefore grows with the
// session (doubling, up to its max length) instead of being reserved up front.
import * as ort from "onnxruntime-node";
import type { Checkpoint } from "../model/checkpoint.js";
import { checkpointHash } from "../model/hash.js";
import type { ModelConfig } from "../model/types.js";
import {
  checkRollback,
  checkSessionLength,
  checkSplit,
  type ForwardInput,
  type ForwardOptions,
  type ForwardOutput,
  forwardThrough,
  SessionError,
  type ServedModel,
  type SessionOptions,
  type SpanRuntime,
  type SpanSession,
  type SpanSpec,
  servedSpan,
} from "./interface.js";
import { IO } from "./graph-common.js";
import { loadSpanModel, type SpanModel, type SpanModelOptions } from "./span-model.js";

/** Smallest KV allocation, in positions. */
const MIN_CAPACITY = 64;

/**
 * A checkpoint served by this engine: spans [start, end) load as ORT span models (built once and
 * cached on disk), with the embedding on the span from block 0 and the head on the last one
 * (`ServedSpan`, so the same weights also serve split sessions).
 */
export async function servedCheckpoint(checkpoint: Checkpoint, options: Partial<SpanModelOptions> = {}): Promise<ServedModel> {
  return {
    config: checkpoint.config,
    checkpointHash: await checkpointHash(checkpoint),
    load: (start, end) => ServedSpan.load(checkpoint, start, end, options),
  };
}

/**
 * A span as a server holds it: its edges (the embedding on a span from block 0, the final norm and
 * head on one ending at L) and its blocks, each loaded as its own ORT model, so one copy of every
 * weight serves both kinds of session. A plain session runs edge, blocks, edge in turn (the same
 * bits as one model of the whole span: cutting at an edge changes nothing, as at a block
 * boundary); a split session runs the blocks only, on hidden states from the client, and returns
 * hidden states to it. The cost of the cut: one more ORT run per step at each edge the span holds.
 */
export class ServedSpan implements SpanRuntime {
  private constructor(
    readonly span: SpanSpec,
    private readonly parts: SpanRunner[],
    private readonly blocks: SpanRunner | undefined,
  ) {}

  static async load(checkpoint: Checkpoint, start: number, end: number, options: Partial<SpanModelOptions> = {}): Promise<ServedSpan> {
    const L = checkpoint.config.numLayers;
    const span = servedSpan(start, end, L);
    if (!validSpan(span, L)) throw new SessionError(`invalid span [${start}, ${end}) for a model of ${L} blocks`);
    // An edge is its own single part; a span of blocks is [embedding edge,] blocks[, head edge].
    const specs: SpanSpec[] =
      start === end
        ? [span]
        : [
            ...(span.embed ? [{ start: 0, end: 0, embed: true, head: false }] : []),
            { start, end, embed: false, head: false },
            ...(span.head ? [{ start: L, end: L, embed: false, head: true }] : []),
          ];
    const parts: SpanRunner[] = [];
    try {
      for (const spec of specs) parts.push(await SpanRunner.load(checkpoint, spec, options));
    } catch (e) {
      await Promise.all(parts.map((p) => p.release()));
      throw e;
    }
    return new ServedSpan(span, parts, start < end ? parts[span.embed ? 1 : 0] : undefined);
  }

  get maxSequence(): number {
    return Math.min(...this.parts.map((p) => p.maxSequence));
  }

  get kvBytesPerToken(): number {
    return this.blocks?.kvBytesPerToken ?? 0;
  }

  openSession(maxLength: number, opts: SessionOptions = {}): SpanSession {
    checkSessionLength(maxLength, this.maxSequence);
    checkSplit(this.span, opts);
    if (opts.split) return this.blocks!.openSession(maxLength);
    const sessions = this.parts.map((p) => p.openSession(maxLength));
    return sessions.length === 1 ? sessions[0]! : new ComposedSession(sessions, maxLength);
  }

  async release(): Promise<void> {
    await Promise.all(this.parts.map((p) => p.release()));
  }
}

/** Consecutive spans' sessions run one after another as one session; every part keeps the same length. */
export class ComposedSession implements SpanSession {
  constructor(
    private readonly parts: SpanSession[],
    readonly maxLength: number,
  ) {}

  get length(): number {
    return this.parts[0]!.length;
  }

  async forward(input: ForwardInput, opts: ForwardOptions = {}): Promise<ForwardOutput> {
    const before = this.length;
    try {
      return await forwardThrough(this.parts, input, opts);
    } catch (e) {
      // A part that ran before the failing one rolls back, so the session stays usable.
      for (const s of this.parts) if (s.length > before) s.truncate(before);
      throw e;
    }
  }

  truncate(position: number): void {
    checkRollback(position, this.length);
    for (const s of this.parts) s.truncate(position);
  }

  close(): void {
    for (const s of this.parts) s.close();
  }
}

/**
 * Blocks [start, end) of L, the embedding only on a span from block 0 and the head only on one
 * ending at L. A span of no blocks is an edge of the model: the embedding alone ([0, 0)) or the
 * final norm and head alone ([L, L)), which a client runs itself in split inference; cutting
 * there changes no bit of the output, as at any block boundary.
 */
export function validSpan(span: SpanSpec, L: number): boolean {
  if (!(Number.isInteger(span.start) && Number.isInteger(span.end) && span.start >= 0 && span.end <= L)) return false;
  if ((span.embed && span.start !== 0) || (span.head && span.end !== L)) return false;
  return span.start < span.end || (span.start === span.end && span.embed !== span.head);
}

export class SpanRunner implements SpanRuntime {
  private constructor(
    readonly config: ModelConfig,
    readonly span: SpanSpec,
    private readonly model: SpanModel,
  ) {}

  static async load(checkpoint: Checkpoint, span: SpanSpec, options: Partial<SpanModelOptions> = {}): Promise<SpanRunner> {
    const c = checkpoint.config;
    if (!validSpan(span, c.numLayers)) {
      throw new SessionError(
        `invalid span [${span.start}, ${span.end})${span.embed ? " with the embedding" : ""}${span.head ? " with the head" : ""} for a model of ${c.numLayers} blocks`,
      );
    }
    const model = await loadSpanModel(checkpoint, span, {
      format: options.format ?? "f32",
      maxSequence: options.maxSequence ?? Math.min(c.maxPositionEmbeddings, 8192),
      threads: options.threads,
      cacheDir: options.cacheDir,
      onTensorRead: options.onTensorRead,
    });
    return new SpanRunner(c, span, model);
  }

  get maxSequence(): number {
    return this.model.options.maxSequence;
  }

  /** Bytes of KV cache one token takes in this span. */
  get kvBytesPerToken(): number {
    const c = this.config;
    return 2 * (this.span.end - this.span.start) * c.numKvHeads * c.headDim * 4;
  }

  openSession(maxLength: number): KvSession {
    checkSessionLength(maxLength, this.maxSequence);
    return new KvSession(this, maxLength);
  }

  /** @internal Runs one step for a session. */
  async run(feeds: Record<string, ort.Tensor>, fetches: Record<string, ort.Tensor | null>): Promise<ort.InferenceSession.ReturnType> {
    return this.model.session.run(feeds, fetches as ort.InferenceSession.FetchesType);
  }

  async release(): Promise<void> {
    await this.model.session.release();
  }
}

export class KvSession implements SpanSession {
  private caches: { key: ort.Tensor; value: ort.Tensor }[] = [];
  private capacity = 0;
  private _length = 0;
  private closed = false;

  constructor(
    private readonly runner: SpanRunner,
    readonly maxLength: number,
  ) {}

  /** Makes room for `tokens` positions, keeping the cached ones. */
  private reserve(tokens: number): void {
    if (tokens <= this.capacity) return;
    const capacity = Math.min(this.maxLength, Math.max(MIN_CAPACITY, 2 ** Math.ceil(Math.log2(tokens))));
    const c = this.runner.config;
    const dims = [1, c.numKvHeads, capacity, c.headDim];
    const grow = (old: ort.Tensor | undefined) => {
      const data = new Float32Array(c.numKvHeads * capacity * c.headDim);
      if (old && this._length > 0) {
        const from = old.data as Float32Array;
        const rowsOld = this.capacity * c.headDim;
        for (let h = 0; h < c.numKvHeads; h++) {
          data.set(from.subarray(h * rowsOld, h * rowsOld + this._length * c.headDim), h * capacity * c.headDim);
        }
      }
      return new ort.Tensor("float32", data, dims);
    };
    const layers = this.runner.span.end - this.runner.span.start;
    this.caches = Array.from({ length: layers }, (_, j) => ({ key: grow(this.caches[j]?.key), value: grow(this.caches[j]?.value) }));
    this.capacity = capacity;
  }

  /** Tokens held in the cache. */
  get length(): number {
    return this._length;
  }

  /** Forgets everything from `position` on (rollback); later steps overwrite those slots. */
  truncate(position: number): void {
    checkRollback(position, this._length);
    this._length = position;
  }

  async forward(input: ForwardInput, opts: ForwardOptions = {}): Promise<ForwardOutput> {
    if (this.closed) throw new SessionError("session is closed");
    const { runner } = this;
    const c = runner.config;
    const span = runner.span;
    const count = span.embed ? (input.tokens?.length ?? 0) : (input.hidden?.length ?? 0) / c.hiddenSize;
    if (!Number.isInteger(count) || count <= 0) {
      throw new SessionError(
        span.embed ? "expected a non-empty list of token ids" : `expected hidden states of [tokens × ${c.hiddenSize}] floats, got ${input.hidden?.length ?? 0}`,
      );
    }
    const total = this._length + count;
    if (total > this.maxLength) {
      throw new SessionError(`session full: ${this._length} + ${count} tokens exceed its length ${this.maxLength}`);
    }

    this.reserve(total);
    const feeds: Record<string, ort.Tensor> = {
      [IO.seqlensK]: new ort.Tensor("int32", Int32Array.of(total - 1), [1]),
      [IO.totalLength]: new ort.Tensor("int32", Int32Array.of(total), []),
    };
    if (span.embed) {
      const ids = new BigInt64Array(count);
      for (let i = 0; i < count; i++) {
        const id = input.tokens![i]!;
        if (!(Number.isInteger(id) && id >= 0 && id < c.vocabSize)) {
          throw new SessionError(`token id ${id} at index ${i} outside the vocabulary (0..${c.vocabSize - 1})`);
        }
        ids[i] = BigInt(id);
      }
      feeds[IO.inputIds] = new ort.Tensor("int64", ids, [1, count]);
      if (c.architecture === "gpt2") {
        if (total > c.maxPositionEmbeddings) {
          throw new SessionError(`position ${total - 1} beyond the model's ${c.maxPositionEmbeddings} positions`);
        }
        const positions = BigInt64Array.from({ length: count }, (_, i) => BigInt(this._length + i));
        feeds[IO.positionIds] = new ort.Tensor("int64", positions, [1, count]);
      }
    } else {
      feeds[IO.hiddenIn] = new ort.Tensor("float32", input.hidden!, [1, count, c.hiddenSize]);
    }
    if (span.head) {
      feeds[IO.logitsFrom] = new ort.Tensor("int64", BigInt64Array.of(BigInt(opts.allLogits ? 0 : count - 1)), [1]);
    }

    const fetches: Record<string, ort.Tensor | null> = { [span.head ? IO.logits : IO.hiddenOut]: null };
    this.caches.forEach((cache, j) => {
      const layer = span.start + j;
      feeds[IO.pastKey(layer)] = cache.key;
      feeds[IO.pastValue(layer)] = cache.value;
      fetches[IO.presentKey(layer)] = cache.key;
      fetches[IO.presentValue(layer)] = cache.value;
    });

    const result = await runner.run(feeds, fetches);
    this._length = total;
    return span.head ? { logits: result[IO.logits]!.data as Float32Array } : { hidden: result[IO.hiddenOut]!.data as Float32Array };
  }

  close(): void {
    this.closed = true;
    this.caches = [];
  }
}
