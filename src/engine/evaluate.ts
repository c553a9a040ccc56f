// Perplexity and next-token top-1 accuracy of a model over a token stream, in independent
// windows (each window starts from an empty cache), through any chain of spans.
import type { LogitsSession } from "./interface.js";
import { argmax, logSoftmax } from "./sampling.js";

export interface EvalResult {
  /** Tokens predicted (each window predicts all but its first token). */
  predicted: number;
  meanNll: number;
  perplexity: number;
  top1: number;
}

export async function evaluateTokens(
  session: LogitsSession,
  tokens: readonly number[],
  vocabSize: number,
  opts: { window?: number; onWindow?: (done: number, total: number) => void } = {},
): Promise<EvalResult> {
  const window = Math.min(opts.window ?? 256, session.maxLength);
  if (window < 2) throw new RangeError(`evaluation window must hold at least 2 tokens, got ${window}`);
  let nll = 0;
  let correct = 0;
  let predicted = 0;
  const windows = Math.ceil(tokens.length / window);
  for (let w = 0; w < windows; w++) {
    const chunk = tokens.slice(w * window, (w + 1) * window);
    if (chunk.length < 2) break;
    session.truncate(0);
    const logits = await session.append(chunk, { allLogits: true });
    for (let i = 0; i + 1 < chunk.length; i++) {
      const row = logits.subarray(i * vocabSize, (i + 1) * vocabSize);
      nll -= logSoftmax(row)[chunk[i + 1]!]!;
      if (argmax(row) === chunk[i + 1]) correct++;
      predicted++;
    }
    opts.onWindow?.(w + 1, windows);
  }
  const meanNll = nll / predicted;
  return { predicted, meanNll, perplexity: Math.exp(meanNll), top1: correct / predicted };
}
