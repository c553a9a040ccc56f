// The decoding loop: prefill the prompt, then sample, stream and feed back one token at a time
// until EOS, a stop string or the token limit. Works on any LogitsSession (local or swarm).
import { StreamDecoder, type Tokenizer } from "../model/tokenizer.js";
import type { LogitsSession } from "./interface.js";
import { createRng, type SamplingParams, sampleToken, StopMatcher } from "./sampling.js";

export interface GenerateOptions {
  maxTokens: number;
  sampling: SamplingParams;
  seed: number;
  stop?: string[];
  /** Stop at the model's end-of-sequence tokens (default true). */
  stopAtEos?: boolean;
  /** Called with each new piece of text as soon as it is final. */
  onText?: (text: string) => void;
  signal?: AbortSignal;
  /** Clock in milliseconds (injectable for tests); default performance.now. */
  now?: () => number;
}

export type FinishReason = "eos" | "stop" | "length" | "aborted";

export interface GenerationResult {
  promptTokens: number[];
  tokens: number[];
  text: string;
  finishReason: FinishReason;
  timings: {
    prefillMs: number;
    decodeMs: number;
    prefillTokensPerSecond: number;
    decodeTokensPerSecond: number;
  };
}

export async function generate(session: LogitsSession, tokenizer: Tokenizer, promptTokens: number[], opts: GenerateOptions): Promise<GenerationResult> {
  const now = opts.now ?? (() => performance.now());
  const rng = createRng(opts.seed);
  const eos = new Set(opts.stopAtEos === false ? [] : tokenizer.eosIds);
  const decoder = new StreamDecoder(tokenizer, { skipSpecial: true, context: promptTokens });
  const stops = new StopMatcher(opts.stop ?? []);
  const maxTokens = Math.min(opts.maxTokens, session.maxLength - session.length - promptTokens.length);
  if (maxTokens < 0) {
    throw new RangeError(`prompt of ${promptTokens.length} tokens does not fit the session's ${session.maxLength} positions`);
  }

  const history = [...promptTokens];
  const tokens: number[] = [];
  let text = "";
  const emit = (piece: string) => {
    if (!piece) return;
    text += piece;
    opts.onText?.(piece);
  };

  const t0 = now();
  let logits = await session.append(promptTokens);
  const t1 = now();
  let finishReason: FinishReason = "length";
  let decodeSteps = 0;
  while (tokens.length < maxTokens) {
    if (opts.signal?.aborted) {
      finishReason = "aborted";
      break;
    }
    const token = sampleToken(logits, opts.sampling, history, rng);
    if (eos.has(token)) {
      finishReason = "eos";
      break;
    }
    tokens.push(token);
    history.push(token);
    const { emit: piece, stopped } = stops.push(decoder.push(token));
    emit(piece);
    if (stopped) {
      finishReason = "stop";
      break;
    }
    if (tokens.length < maxTokens) {
      logits = await session.append([token]);
      decodeSteps++;
    }
  }
  if (finishReason !== "stop") emit(stops.push(decoder.flush()).emit + stops.flush());
  const t2 = now();

  const prefillMs = t1 - t0;
  const decodeMs = t2 - t1;
  return {
    promptTokens,
    tokens,
    text,
    finishReason,
    timings: {
      prefillMs,
      decodeMs,
      prefillTokensPerSecond: (promptTokens.length / prefillMs) * 1000,
      // Forward passes after the prefill, per second: the model's decode speed.
      decodeTokensPerSecond: decodeSteps > 0 ? (decodeSteps / decodeMs) * 1000 : 0,
    },
  };
}
