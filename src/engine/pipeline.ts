// A whole model on one machine as a chain of spans [0, k1), [k1, k2), …, [kn, L): the same
// composition the swarm uses across machines, so a local run exercises it too.
import type { Checkpoint } from "../model/checkpoint.js";
import { spanTensorNames } from "../model/config.js";
import type { ModelConfig } from "../model/types.js";
import { forwardThrough, type LogitsSession, SessionError, type SpanSession } from "./interface.js";
import { SpanRunner } from "./runtime.js";
import type { SpanModelOptions } from "./span-model.js";

export interface PipelineOptions extends Partial<SpanModelOptions> {
  /** Block indices where one span ends and the next begins, e.g. [4] → [0,4) and [4,L). */
  splits?: number[];
  /** Build progress over all spans, in tensors read. */
  onProgress?: (done: number, total: number) => void;
}

export class LocalPipeline {
  private constructor(
    readonly config: ModelConfig,
    readonly runners: SpanRunner[],
  ) {}

  static async load(checkpoint: Checkpoint, options: PipelineOptions = {}): Promise<LocalPipeline> {
    const L = checkpoint.config.numLayers;
    const bounds = [0, ...(options.splits ?? []), L];
    for (let i = 1; i < bounds.length; i++) {
      if (!(bounds[i]! > bounds[i - 1]!)) throw new SessionError(`span splits must increase within (0, ${L}): ${options.splits}`);
    }
    const spans = bounds.slice(1).map((end, i) => ({ start: bounds[i]!, end, embed: i === 0, head: i === bounds.length - 2 }));
    const total = spans.reduce((n, s) => n + spanTensorNames(checkpoint.config, s).length, 0);
    let done = 0;
    const onTensorRead = () => options.onProgress?.(++done, total);
    const runners: SpanRunner[] = [];
    for (const span of spans) runners.push(await SpanRunner.load(checkpoint, span, { ...options, onTensorRead }));
    return new LocalPipeline(checkpoint.config, runners);
  }

  get maxSequence(): number {
    return Math.min(...this.runners.map((r) => r.maxSequence));
  }

  openSession(maxLength = this.maxSequence): LogitsSession {
    const sessions = this.runners.map((r) => r.openSession(maxLength));
    return new ChainedSession(sessions, maxLength);
  }

  async release(): Promise<void> {
    await Promise.all(this.runners.map((r) => r.release()));
  }
}

class ChainedSession implements LogitsSession {
  constructor(
    private readonly spans: SpanSession[],
    readonly maxLength: number,
  ) {}

  get length(): number {
    return this.spans[0]!.length;
  }

  async append(tokens: readonly number[], opts: { allLogits?: boolean } = {}): Promise<Float32Array> {
    const before = this.length;
    try {
      return (await forwardThrough(this.spans, { tokens }, opts)).logits!;
    } catch (e) {
      // Keep every span at the same length, so the session stays usable after a failed step.
      for (const s of this.spans) if (s.length > before) s.truncate(before);
      throw e;
    }
  }

  truncate(position: number): void {
    for (const s of this.spans) s.truncate(position);
  }

  close(): void {
    for (const s of this.spans) s.close();
  }
}
