// Options every command that runs a model locally shares, and the loading they imply.
import { type Command, Option } from "commander";
import { LocalPipeline, type PipelineOptions } from "../engine/pipeline.js";
import type { WeightFormat } from "../engine/interface.js";
import { type Checkpoint, openCheckpoint } from "../model/checkpoint.js";
import { SHIPPED_MODEL } from "../model/shipped.js";
import { loadTokenizer } from "../model/tokenizer.js";
import { intArg, intListArg } from "./args.js";
import { withProgress } from "./progress.js";

export interface EngineFlags {
  model: string;
  weights: WeightFormat;
  splits?: string;
  threads?: number;
}

export function addEngineOptions(command: Command): Command {
  return command
    .option("-m, --model <path>", "Hugging Face folder or .gguf file (default: the shipped model)", SHIPPED_MODEL.hf)
    .addOption(new Option("--weights <format>", "engine weight format").choices(["f32", "f16", "q8", "q4"]).default("f32"))
    .option("--splits <blocks>", "run as a chain of spans split at these blocks, e.g. 2,4")
    .option("--threads <n>", "compute threads (default: all cores)", intArg);
}

/** Opens the checkpoint and its tokenizer and loads the pipeline, with a progress bar when asked. */
export async function loadLocalModel(flags: EngineFlags, opts: { showProgress: boolean } & Pick<PipelineOptions, "maxSequence">) {
  const checkpoint = await openCheckpoint(flags.model);
  const tokenizer = await loadTokenizer(checkpoint);
  const pipeline = await loadPipeline(checkpoint, flags, opts);
  return { checkpoint, tokenizer, pipeline };
}

/** Loads the pipeline of an open checkpoint (one without a tokenizer too, e.g. an encrypted one). */
export function loadPipeline(checkpoint: Checkpoint, flags: EngineFlags, opts: { showProgress: boolean } & Pick<PipelineOptions, "maxSequence">) {
  return withProgress(`loading ${checkpoint.config.numLayers} blocks`, opts.showProgress, (onProgress) =>
    LocalPipeline.load(checkpoint, {
      format: flags.weights,
      splits: flags.splits ? intListArg(flags.splits) : undefined,
      threads: flags.threads,
      maxSequence: opts.maxSequence,
      onProgress,
    }),
  );
}
