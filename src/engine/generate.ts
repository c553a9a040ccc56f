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
  const eos = new Set(opts.stopAtEos === false ? [] : tokenizer.eosIds);
  const maxTokens = Math.min(opts.maxTokens, session.maxLength - session.length - promptTokens.length);
  if (maxTokens < 0) {
    throw new RangeError(`prompt of ${promptTokens.length} tokens does not fit the session's ${session.maxLength} positions`);
  }
  const base = session.length;

  // Sampling state that a rewind (a caught cheat, on a checked session) restores: the random
  // draws made before each token, and the text after each token.
  let rng = createRng(opts.seed);
  let draws = 0;
  const counted = () => {
    draws++;
    return rng();
  };
  const drawsBefore: number[] = [];
  let decoder = new StreamDecoder(tokenizer, { skipSpecial: true, context: promptTokens });
  let stops = new StopMatcher(opts.stop ?? []);
  const history = [...promptTokens];
  const tokens: number[] = [];
  /** Text produced after each token (textAfter[i]: after i tokens), shown once settled. */
  const textAfter: number[] = [0];
  let produced = "";
  let shown = 0;
  const show = (upTo: number) => {
    if (upTo <= shown) return;
    opts.onText?.(produced.slice(shown, upTo));
    shown = upTo;
  };
  /** Shows the text of the tokens derived from settled positions (a token comes from the logits of the position before it). */
  const showSettled = (settledLength: number) => {
    const settledTokens = Math.max(0, Math.min(tokens.length, settledLength - base - promptTokens.length + 1));
    show(textAfter[settledTokens]!);
  };
  /** After a caught cheat: forget the tokens from `rewoundTo` on and append again from there; returns the fresh logits. */
  const rewind = async (rewoundTo: number): Promise<Float32Array> => {
    const keep = Math.max(rewoundTo - base + 1, promptTokens.length);
    const kept = tokens.slice(0, keep - promptTokens.length);
    if (textAfter[kept.length]! < shown) throw new Error("a checked session rewound past text already shown");
    tokens.length = 0;
    history.length = promptTokens.length;
    textAfter.length = 1;
    produced = "";
    decoder = new StreamDecoder(tokenizer, { skipSpecial: true, context: promptTokens });
    stops = new StopMatcher(opts.stop ?? []);
    for (const t of kept) push(t);
    rng = createRng(opts.seed);
    draws = 0;
    for (let i = 0; i < (drawsBefore[kept.length] ?? 0); i++) counted();
    drawsBefore.length = kept.length + 1;
    return session.append(history.slice(rewoundTo - base));
  };
  const push = (token: number): boolean => {
    tokens.push(token);
    history.push(token);
    const { emit, stopped } = stops.push(decoder.push(token));
    produced += emit;
    textAfter.push(produced.length);
    return stopped;
  };

  const t0 = now();
  let logits = await session.append(promptTokens);
  const t1 = now();
  let finishReason: FinishReason = "length";
  let decodeSteps = 0;
  for (;;) {
    finishReason = "length";
    while (tokens.length < maxTokens) {
      if (opts.signal?.aborted) {
        finishReason = "aborted";
        break;
      }
      if (session.settle) {
        const r = await session.settle({ wait: false });
        if (r.rewoundTo !== undefined) logits = await rewind(r.rewoundTo);
        showSettled(r.settledLength);
      } else show(produced.length);
      drawsBefore[tokens.length] = draws;
      const token = sampleToken(logits, opts.sampling, history, counted);
      if (eos.has(token)) {
        finishReason = "eos";
        break;
      }
      if (push(token)) {
        finishReason = "stop";
        break;
      }
      if (tokens.length < maxTokens) {
        logits = await session.append([token]);
        decodeSteps++;
      }
    }
    // A checked session: the end is final only once every check is in.
    if (session.settle && finishReason !== "aborted") {
      const r = await session.settle({ wait: true });
      if (r.rewoundTo !== undefined) {
        logits = await rewind(r.rewoundTo);
        continue;
      }
    }
    break;
  }
  if (finishReason !== "stop") produced += stops.push(decoder.flush()).emit + stops.flush();
  show(produced.length);
  const t2 = now();

  const prefillMs = t1 - t0;
  const decodeMs = t2 - t1;
  return {
    promptTokens,
    tokens,
    text: produced,
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
