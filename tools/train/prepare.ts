// Prepares the training data of the shipped model: the King James Bible from Debian's
// bible-kjv packages (public domain), a held-out evaluation slice, a byte-level BPE tokenizer
// trained on the training slice, and the token ids for the trainer.
//   tsx tools/train/prepare.ts OUT_DIR [--vocab 4096]
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Tokenizer } from "../../src/model/tokenizer.js";
import { tokenizerJsonFromBpe, trainByteLevelBpe } from "../../src/model/bpe-train.js";

export const SPECIAL_TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"];
/** Every 40th chapter is held out for evaluation. */
const HOLDOUT_EVERY = 40;

const { values, positionals } = parseArgs({ allowPositionals: true, options: { vocab: { type: "string", default: "4096" } } });
const out = positionals[0] ?? "tools/train/data";
const vocabSize = Number(values.vocab);
mkdirSync(out, { recursive: true });

const raw = execFileSync("bible", ["gen1:1-rev22:21"], { maxBuffer: 64 << 20, env: { ...process.env, COLUMNS: "100000" } }).toString("utf8");
// The bible program prints "Book N" headings and "  v text" verses; keep chapters as paragraphs
// with the heading, one verse per line without its number.
const chapters: string[] = [];
for (const block of raw.split(/\n(?=\S[^\n]* \d+\n)/)) {
  const lines = block
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  if (lines.length < 2) continue;
  const verses = lines.slice(1).map((l) => l.replace(/^\d+\s+/, ""));
  chapters.push(`${lines[0]}\n${verses.join("\n")}\n`);
}
const trainChapters = chapters.filter((_, i) => i % HOLDOUT_EVERY !== HOLDOUT_EVERY - 1);
// One chapter in eight is also taught as a chat turn (the user names the chapter, the assistant
// recites its first verses), so the chat template and the end-of-turn token mean something.
const chatTurns = trainChapters
  .filter((_, i) => i % 8 === 0)
  .map((chapter) => {
    const [heading, ...verses] = chapter.trim().split("\n");
    return `<|im_start|>user\n${heading}<|im_end|>\n<|im_start|>assistant\n${verses.slice(0, 3).join("\n")}<|im_end|>\n`;
  });
const train = [...trainChapters, ...chatTurns].join("\n");
const evalText = chapters.filter((_, i) => i % HOLDOUT_EVERY === HOLDOUT_EVERY - 1).join("\n");
writeFileSync(join(out, "train.txt"), train);
writeFileSync(join(out, "eval.txt"), evalText);
console.log(`${chapters.length} chapters: train ${train.length} chars, eval ${evalText.length} chars`);

const t0 = performance.now();
// The tokenizer learns from the plain chapters; special tokens are added after the merges.
const vocab = trainByteLevelBpe(trainChapters.join("\n"), { vocabSize, specialTokens: SPECIAL_TOKENS });
const tokenizerJson = tokenizerJsonFromBpe(vocab);
writeFileSync(join(out, "tokenizer.json"), JSON.stringify(tokenizerJson));
console.log(`BPE: ${vocab.tokens.length} tokens, ${vocab.merges.length} merges in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

const tokenizer = Tokenizer.fromTokenizerJson(tokenizerJson);
for (const [name, text] of [
  ["train", train],
  ["eval", evalText],
] as const) {
  // Tokenize per chapter so one call never holds the whole corpus.
  const ids: number[] = [];
  for (const chapter of text.split("\n\n")) ids.push(...tokenizer.encode(`${chapter}\n\n`, { addSpecial: false }));
  writeFileSync(join(out, `${name}.u16`), Uint16Array.from(ids));
  console.log(`${name}: ${ids.length} tokens (${(text.length / ids.length).toFixed(2)} chars/token)`);
}
