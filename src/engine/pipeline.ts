// A whole model on one machine as a chain of spans [0, k1), [k1, k2), …, [kn, L): the same
// composition the swarm uses across machines, so a local run exercises it too.
import type { Checkpoint } from "../model/checkpoint.js";
import { spanTensorNames } from "../model/config.js";
import type { ModelConfig } from "../model/types.js";
import { type LogitsSession, SessionError, type SpanSession } from "./interface.js";
import { ComposedSession, SpanRunner } from "./runtime.js";
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
  private readonly chain: ComposedSession;

  constructor(spans: SpanSession[], maxLength: number) {
    this.chain = new ComposedSession(spans, maxLength);
  }

  get length(): number {
    return this.chain.length;
  }

  get maxLength(): number {
    return this.chain.maxLength;
  }

  async append(tokens: readonly number[], opts: { allLogits?: boolean } = {}): Promise<Float32Array> {
    return (await this.chain.forward({ tokens }, opts)).logits!;
  }

  truncate(position: number): void {
    this.chain.truncate(position);
  }

  close(): void {
    this.chain.close();
  }
}
