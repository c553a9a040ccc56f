import { readFile } from "node:fs/promises";
import { evaluateTokens } from "../engine/evaluate.js";
import { EeKeyError } from "../ee/key.js";
import { manifestFileFor } from "../ee/manifest.js";
import { openModelInfo } from "../swarm/model-info.js";
import { SwarmClient } from "../swarm/client.js";
import type { Codec } from "../wire/tensor-frame.js";
import { type EngineFlags, loadLocalModel } from "./engine-options.js";
import { withProgress } from "./progress.js";
import { readManifest } from "../verify/manifest.js";

interface EvalFlags extends EngineFlags {
  data: string;
  window: number;
  json?: boolean;
  swarm: string[];
  codec: Codec;
  modelId?: string;
  manifest?: string;
  routing: "min-latency" | "max-throughput";
}

export async function evalCommand(flags: EvalFlags): Promise<void> {
  const { config, tokenizer, session, done } = flags.swarm.length ? await swarmSession(flags) : await localSession(flags);
  const tokens = tokenizer.encode(await readFile(flags.data, "utf8"), { addSpecial: false });
  let result;
  try {
    result = await withProgress("evaluating", !flags.json, (onProgress) =>
      evaluateTokens(session, tokens, config.vocabSize, { window: flags.window, onWindow: onProgress }),
    );
  } finally {
    session.close();
    await done();
  }
  if (flags.json) {
    console.log(JSON.stringify({ model: flags.model, data: flags.data, weights: flags.weights, window: flags.window, ...result }, null, 2));
  } else {
    console.log(
      `perplexity ${result.perplexity.toFixed(3)}, top-1 accuracy ${(100 * result.top1).toFixed(2)}% ` +
        `over ${result.predicted} predicted tokens (window ${flags.window}, ${flags.weights})`,
    );
  }
}

async function localSession(flags: EvalFlags) {
  const { checkpoint, tokenizer, pipeline } = await loadLocalModel(flags, { showProgress: !flags.json, maxSequence: Math.max(flags.window, 16) });
  return { config: checkpoint.config, tokenizer, session: pipeline.openSession(flags.window), done: () => pipeline.release() };
}

/** Scoring is batch work: by default its windows are routed for throughput, not latency. */
async function swarmSession(flags: EvalFlags) {
  // Config and tokenizer only: a folder of config.json and tokenizer files (no weights) will do.
  const info = await openModelInfo(flags.model);
  if (info.manifest) {
    throw new EeKeyError(
      `${flags.model} is an encrypted deployment (${manifestFileFor(flags.model)}): its nodes take cipher ids, and eval has no --key; score the plaintext model`,
    );
  }
  const tokenizer = await info.tokenizer();
  const modelId = flags.modelId ?? info.modelId;
  const manifestId = flags.manifest ? (await readManifest(flags.manifest)).id : undefined;
  const client = await SwarmClient.connect(flags.swarm, info.config, { modelId, codec: flags.codec, manifestId });
  try {
    const session = await client.openSession(flags.window, { routing: flags.routing });
    return { config: info.config, tokenizer, session, done: () => client.close() };
  } catch (e) {
    await client.close();
    throw e;
  }
}
