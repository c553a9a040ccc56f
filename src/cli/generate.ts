import { generate } from "../engine/generate.js";
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
}

export async function generateCommand(flags: GenerateFlags): Promise<void> {
  const { tokenizer, pipeline } = await loadLocalModel(flags, { showProgress: !flags.json });
  const text = flags.chat
    ? tokenizer.applyChatTemplate(
        [...(flags.system ? [{ role: "system", content: flags.system }] : []), { role: "user", content: flags.prompt }],
        { addGenerationPrompt: true },
      )
    : flags.prompt;
  const promptTokens = tokenizer.encode(text, { addSpecial: !flags.chat });
  const session = pipeline.openSession();
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
  await pipeline.release();
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
