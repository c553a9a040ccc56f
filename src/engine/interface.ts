// The engine as the rest of Tessera sees it: a span of blocks that opens KV-cached sessions, and
// a sequence that turns tokens into logits. The swarm, verification and the API depend on these
// types only, never on ONNX Runtime or the concrete runner (runtime.ts implements them), so a
// span server can be driven by any runtime: ORT, a batching scheduler, or a stand-in in a test.
import type { ModelConfig } from "../model/types.js";

/**
 * How a span stores its weights. f32: MatMul on f32 weights. f16: weights stored in f16,
 * activations cast to f16 around each MatMul (as llama.cpp does for F16 files): half the memory,
 * measured no slower on ORT's CPU provider. q8/q4: MatMulNBits, 32-element blocks, int8 activations.
 */
export type WeightFormat = "f32" | "f16" | "q8" | "q4";
export const WEIGHT_FORMATS: readonly WeightFormat[] = ["f32", "f16", "q8", "q4"];

/** Which blocks a span holds, and whether it embeds token ids (first span) and computes logits (last). */
export interface SpanSpec {
  start: number;
  end: number;
  embed: boolean;
  head: boolean;
}

export interface ForwardInput {
  /** Token ids (spans that include the embedding). */
  tokens?: ArrayLike<number>;
  /** Hidden states [tokens × hiddenSize] (spans without the embedding). */
  hidden?: Float32Array;
}

export interface ForwardOutput {
  /** [positions × vocab]: the last position only, unless allLogits was asked for. */
  logits?: Float32Array;
  /** [tokens × hiddenSize] (spans without the head). */
  hidden?: Float32Array;
}

export interface ForwardOptions {
  /** Logits for every new position, not only the last. */
  allLogits?: boolean;
}

/** A request the engine refuses (bad shape, token outside the vocabulary, session full, bad rollback); the session stays usable. */
export class SessionError extends Error {
  override name = "SessionError";
}

/** The span of blocks [start, end) of a model of L blocks as a server loads it: the embedding on the first span, the head on the last. */
export function servedSpan(start: number, end: number, L: number): SpanSpec {
  return { start, end, embed: start === 0, head: end === L };
}

/** Refuses a session length a runtime cannot hold (what every `openSession` checks). */
export function checkSessionLength(maxLength: number, maxSequence: number): void {
  if (!(maxLength > 0 && maxLength <= maxSequence)) throw new SessionError(`session length ${maxLength} outside 1..${maxSequence}`);
}

/** Refuses a rollback to a position the session does not hold (what every `truncate` checks). */
export function checkRollback(position: number, length: number): void {
  if (!(Number.isInteger(position) && position >= 0 && position <= length)) {
    throw new SessionError(`cannot roll back to position ${position}: the session holds ${length} tokens`);
  }
}

/** One sequence's KV cache on a span. */
export interface SpanSession {
  /** Tokens held in the cache. */
  readonly length: number;
  readonly maxLength: number;
  forward(input: ForwardInput, opts?: ForwardOptions): Promise<ForwardOutput>;
  /** Forgets everything from `position` on (rollback). */
  truncate(position: number): void;
  close(): void;
}

/** How a session uses its span. */
export interface SessionOptions {
  /**
   * Split inference: the client keeps the model's edges (embedding, final norm and head), so the
   * session runs the span's blocks only, hidden states in and hidden states out, even on a span
   * that holds the embedding or the head. Refused on a span of no blocks.
   */
  split?: boolean;
}

/** Refuses a split session on a span of no blocks (what every `openSession` checks). */
export function checkSplit(span: SpanSpec, opts: SessionOptions): void {
  if (opts.split && span.start === span.end) throw new SessionError(`a split session runs blocks, and span [${span.start}, ${span.end}) holds none`);
}

/** A loaded span of blocks. */
export interface SpanRuntime {
  readonly span: SpanSpec;
  /** Longest session it can open, in tokens. */
  readonly maxSequence: number;
  /** Bytes of KV cache one token takes in this span. */
  readonly kvBytesPerToken: number;
  openSession(maxLength: number, opts?: SessionOptions): SpanSession;
  release(): Promise<void>;
}

/** Loads blocks [start, end) of the model a server serves (embedding and head included where they belong). */
export type SpanLoader = (start: number, end: number) => Promise<SpanRuntime>;

/** What a span server needs of the model it serves: its config, its identity, and a way to load spans of it. */
export interface ServedModel {
  config: ModelConfig;
  /** SHA-256 of the checkpoint's files, announced so clients and verifiers know which weights run. */
  checkpointHash: string;
  load: SpanLoader;
}

/** A sequence being decoded: feed tokens, get next-token logits. */
export interface LogitsSession {
  readonly length: number;
  readonly maxLength: number;
  /** Appends tokens; returns logits [positions × vocab] (last position unless allLogits). */
  append(tokens: readonly number[], opts?: ForwardOptions): Promise<Float32Array>;
  truncate(position: number): void;
  close(): void;
  /**
   * Sessions whose work is checked after the fact (a verified swarm route): applies the checks
   * finished so far (all of those started, and one of what is left, with `wait`). A caught
   * cheat rolls the session back to its first wrong position (`rewoundTo`): the caller drops
   * what it derived from later logits and appends again from there. Text is final only up to
   * `settledLength`. Sessions without it are final as soon as `append` returns.
   */
  settle?(opts: { wait: boolean }): Promise<SettleResult>;
}

export interface SettleResult {
  /** Positions whose outputs are final (checked, or not selected for checking). */
  settledLength: number;
  /** Set when a check failed: the session is back at this length. */
  rewoundTo?: number;
}

/** Runs consecutive spans' sessions one after another, each taking the previous one's hidden states. */
export async function forwardThrough(sessions: readonly SpanSession[], input: ForwardInput, opts: ForwardOptions = {}): Promise<ForwardOutput> {
  const [first, ...rest] = sessions;
  if (!first) throw new SessionError("no span to run");
  let out = await first.forward(input, opts);
  for (const s of rest) out = await s.forward({ hidden: out.hidden }, opts);
  return out;
}
