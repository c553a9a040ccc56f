import { generate } from "../engine/generate.js";
import type { LogitsSession } from "../engine/pipeline.js";
import { openCheckpoint } from "../model/checkpoint.js";
import { loadTokenizer } from "../model/tokenizer.js";
import { SwarmClient } from "../swarm/client.js";
import type { Codec } from "../wire/tensor-frame.js";
import { type EngineFlags, loadLocalModel } from "./engine-options.js";

interface GenerateFlags extends EngineFlags {
  prompt: string;
  chat?: boolean;
  system?: string;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  seed: number;
  stop: string[];
  ignoreEos?: boolean;
  json?: boolean;
  swarm: string[];
  codec: Codec;
}

export async function generateCommand(flags: GenerateFlags): Promise<void> {
  const { tokenizer, session, done } = flags.swarm.length ? await swarmSession(flags) : await localSession(flags);
  const text = flags.chat
    ? tokenizer.applyChatTemplate(
        [...(flags.system ? [{ role: "system", content: flags.system }] : []), { role: "user", content: flags.prompt }],
        { addGenerationPrompt: true },
      )
    : flags.prompt;
  const promptTokens = tokenizer.encode(text, { addSpecial: !flags.chat });
  const result = await generate(session, tokenizer, promptTokens, {
    maxTokens: flags.maxTokens,
    sampling: {
      temperature: flags.temperature,
      topK: flags.topK,
      topP: flags.topP,
      minP: flags.minP,
      repetitionPenalty: flags.repetitionPenalty,
    },
    seed: flags.seed,
    stop: flags.stop,
    stopAtEos: !flags.ignoreEos,
    onText: flags.json ? undefined : (piece) => process.stdout.write(piece),
  });
  session.close();
  await done();
  if (flags.json) {
    console.log(JSON.stringify({ text: result.text, tokens: result.tokens, promptTokens: result.promptTokens, finishReason: result.finishReason, timings: result.timings }, null, 2));
  } else {
    process.stdout.write("\n");
    const t = result.timings;
    console.error(
      `[${result.promptTokens.length} prompt tokens at ${t.prefillTokensPerSecond.toFixed(1)} tok/s, ` +
        `${result.tokens.length} generated at ${t.decodeTokensPerSecond.toFixed(1)} tok/s; ${result.finishReason}]`,
    );
  }
}

async function localSession(flags: GenerateFlags) {
  const { tokenizer, pipeline } = await loadLocalModel(flags, { showProgress: !flags.json });
  const session: LogitsSession = pipeline.openSession();
  return { tokenizer, session, done: () => pipeline.release() };
}

/** The client keeps the tokenizer and sampling; the nodes at --swarm run every block. */
async function swarmSession(flags: GenerateFlags) {
  const checkpoint = await openCheckpoint(flags.model);
  const tokenizer = await loadTokenizer(checkpoint);
  const client = await SwarmClient.connect(flags.swarm, checkpoint.config, { codec: flags.codec });
  const session = await client.openSession(Math.min(checkpoint.config.maxPositionEmbeddings, 2048), {
    onFailover: (e) => console.error(`[node ${e.peerId} failed on blocks ${e.blocks.join("-")}: ${e.error.message}; re-routed]`),
  });
  if (!flags.json) {
    console.error(`[route: ${session.route.map((h) => `${h.peerId.slice(-6)} [${h.start},${h.end})`).join(" → ")}]`);
  }
  return { tokenizer, session: session as LogitsSession, done: () => client.close() };
}
