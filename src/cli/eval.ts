import { readFile } from "node:fs/promises";
import { evaluateTokens } from "../engine/evaluate.js";
import { LocalPipeline } from "../engine/pipeline.js";
import type { WeightFormat } from "../engine/weights.js";
import { openCheckpoint } from "../model/checkpoint.js";
import { loadTokenizer } from "../model/tokenizer.js";
import { intListArg } from "./args.js";
import { withProgress } from "./progress.js";

interface EvalFlags {
  model: string;
  data: string;
  window: number;
  weights: WeightFormat;
  splits?: string;
  threads?: number;
  json?: boolean;
}

export async function evalCommand(flags: EvalFlags): Promise<void> {
  const checkpoint = await openCheckpoint(flags.model);
  const tokenizer = await loadTokenizer(checkpoint);
  const tokens = tokenizer.encode(await readFile(flags.data, "utf8"), { addSpecial: false });
  const pipeline = await LocalPipeline.load(checkpoint, {
    format: flags.weights,
    splits: flags.splits ? intListArg(flags.splits) : undefined,
    threads: flags.threads,
    maxSequence: Math.max(flags.window, 16),
  });
  const session = pipeline.openSession(flags.window);
  const result = await withProgress("evaluating", !flags.json, (onProgress) =>
    evaluateTokens(session, tokens, checkpoint.config.vocabSize, { window: flags.window, onWindow: onProgress }),
  );
  await pipeline.release();
  if (flags.json) {
    console.log(JSON.stringify({ model: flags.model, data: flags.data, weights: flags.weights, window: flags.window, ...result }, null, 2));
  } else {
    console.log(
      `perplexity ${result.perplexity.toFixed(3)}, top-1 accuracy ${(100 * result.top1).toFixed(2)}% ` +
        `over ${result.predicted} predicted tokens (window ${flags.window}, ${flags.weights})`,
    );
  }
}
