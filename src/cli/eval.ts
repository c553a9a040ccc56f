import { readFile } from "node:fs/promises";
import { evaluateTokens } from "../engine/evaluate.js";
import { type EngineFlags, loadLocalModel } from "./engine-options.js";
import { withProgress } from "./progress.js";

interface EvalFlags extends EngineFlags {
  data: string;
  window: number;
  json?: boolean;
}

export async function evalCommand(flags: EvalFlags): Promise<void> {
  const { checkpoint, tokenizer, pipeline } = await loadLocalModel(flags, {
    showProgress: !flags.json,
    maxSequence: Math.max(flags.window, 16),
  });
  const tokens = tokenizer.encode(await readFile(flags.data, "utf8"), { addSpecial: false });
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
