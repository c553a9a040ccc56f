// A small byte-level BPE trainer (GPT-2 style) for building test checkpoints with real
// tokenizers, plus exporters to a Hugging Face tokenizer.json and to GGUF tokenizer metadata.

import { gguf, type GgufTyped } from "./gguf.js";
import { byteLevelTokenizerJson, BYTE_TO_UNICODE, GPT2_SPLIT_REGEX } from "./tokenizer.js";

export interface BpeVocab {
  /** id -> token, in GPT-2's byte-to-unicode form (e.g. "Ġthe" for " the"). */
  tokens: string[];
  merges: [string, string][];
  /** Appended after the learned tokens. */
  specialTokens: { token: string; id: number }[];
}

export interface BpeTrainOptions {
  vocabSize: number;
  specialTokens: string[];
  /** Pairs seen fewer times than this are not learned from the text (default 2). */
  minFrequency?: number;
}

/** Trains on `text` (default: a built-in English sample), then pads with synthetic merges up to vocabSize. */
export function trainByteLevelBpe(text: string = DEFAULT_TRAINING_TEXT, opts: BpeTrainOptions): BpeVocab {
  const specials = [...new Set(opts.specialTokens)];
  const targetTokens = opts.vocabSize - specials.length;
  if (targetTokens < 256) {
    throw new Error(`vocabSize ${opts.vocabSize} leaves no room for 256 byte tokens and ${specials.length} special tokens`);
  }
  const tokens = gpt2ByteTokenOrder();
  const known = new Set(tokens);
  const merges: [string, string][] = [];
  const mergedPairs = new Set<string>();
  const addMerge = (a: string, b: string) => {
    // A pair can come back after a later merge rebuilds one of its halves; its first rank stands.
    if (mergedPairs.has(a + " " + b)) return;
    mergedPairs.add(a + " " + b);
    merges.push([a, b]);
    if (!known.has(a + b)) {
      known.add(a + b);
      tokens.push(a + b);
    }
  };
  learnMerges(text, opts.minFrequency ?? 2, () => tokens.length < targetTokens, addMerge);
  addSyntheticMerges(tokens, known, targetTokens, addMerge);
  return {
    tokens: [...tokens, ...specials],
    merges,
    specialTokens: specials.map((token, i) => ({ token, id: tokens.length + i })),
  };
}

/** GPT-2's order: printable bytes first (as themselves), then the rest (mapped to U+0100...). */
function gpt2ByteTokenOrder(): string[] {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const bytes = [...Array(256).keys()];
  return [...bytes.filter(printable), ...bytes.filter((b) => !printable(b))].map(byteChar);
}

/** The character GPT-2's byte-to-unicode table has for a byte. */
function byteChar(b: number): string {
  const c = BYTE_TO_UNICODE[b];
  if (c === undefined) throw new Error(`byte value ${b} is outside 0..255`);
  return c;
}

interface Word {
  symbols: string[];
  count: number;
}

/** Classic BPE: repeatedly merge the most frequent adjacent pair (ties: smaller pair string). */
function learnMerges(text: string, minFrequency: number, wantMore: () => boolean, addMerge: (a: string, b: string) => void): void {
  const wordCounts = new Map<string, number>();
  const encoder = new TextEncoder();
  for (const piece of text.match(new RegExp(GPT2_SPLIT_REGEX, "gu")) ?? []) {
    const word = Array.from(encoder.encode(piece), byteChar).join("");
    wordCounts.set(word, (wordCounts.get(word) ?? 0) + 1);
  }
  const words: Word[] = [...wordCounts].map(([word, count]) => ({ symbols: Array.from(word), count }));

  const pairCounts = new Map<string, number>();
  const wordsWithPair = new Map<string, Set<Word>>();
  const heap = new PairHeap();
  const touched = new Set<string>();
  const countPairs = (word: Word, sign: 1 | -1) => {
    const symbols = word.symbols;
    for (let i = 1; i < symbols.length; i++) {
      const key = symbols[i - 1]! + " " + symbols[i]!; // 1 <= i < length
      pairCounts.set(key, (pairCounts.get(key) ?? 0) + sign * word.count);
      if (sign > 0) {
        let set = wordsWithPair.get(key);
        if (!set) wordsWithPair.set(key, (set = new Set()));
        set.add(word);
      }
      touched.add(key);
    }
  };
  const pushTouched = () => {
    for (const key of touched) heap.push(pairCounts.get(key) ?? 0, key);
    touched.clear();
  };
  for (const word of words) countPairs(word, 1);
  pushTouched();

  while (wantMore()) {
    const best = heap.popValid(pairCounts);
    if (!best || best.count < minFrequency) return;
    // Byte-level symbols never contain a space (it is "Ġ"), so the key splits at its only one.
    const space = best.key.indexOf(" ");
    const a = best.key.slice(0, space);
    const b = best.key.slice(space + 1);
    const merged = a + b;
    for (const word of wordsWithPair.get(best.key) ?? []) {
      countPairs(word, -1);
      const symbols = word.symbols;
      const out: string[] = [];
      for (let i = 0; i < symbols.length; i++) {
        const symbol = symbols[i]!; // i < length
        if (symbol === a && symbols[i + 1] === b) {
          out.push(merged);
          i++;
        } else {
          out.push(symbol);
        }
      }
      word.symbols = out;
      countPairs(word, 1);
    }
    pairCounts.delete(best.key);
    touched.delete(best.key);
    pushTouched();
    addMerge(a, b);
  }
}

interface HeapItem {
  count: number;
  key: string;
}

/** Max-heap of (count, pair) with lazy invalidation against the live counts. */
class PairHeap {
  private items: HeapItem[] = [];

  push(count: number, key: string): void {
    if (count <= 0) return;
    this.items.push({ count, key });
    let i = this.items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  popValid(live: Map<string, number>): HeapItem | undefined {
    for (let top = this.pop(); top; top = this.pop()) {
      if (live.get(top.key) === top.count) return top;
    }
    return undefined;
  }

  private pop(): HeapItem | undefined {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (top === undefined || last === undefined || items.length === 0) return top;
    items[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let first = i;
      if (l < items.length && this.before(l, first)) first = l;
      if (r < items.length && this.before(r, first)) first = r;
      if (first === i) break;
      this.swap(i, first);
      i = first;
    }
    return top;
  }

  private at(i: number): HeapItem {
    const item = this.items[i];
    if (item === undefined) throw new Error(`PairHeap: index ${i} outside its ${this.items.length} items`);
    return item;
  }

  private swap(i: number, j: number): void {
    const x = this.at(i);
    this.items[i] = this.at(j);
    this.items[j] = x;
  }

  /** Whether item i ranks above item j: higher count, then the smaller pair string. */
  private before(i: number, j: number): boolean {
    const x = this.at(i);
    const y = this.at(j);
    return x.count > y.count || (x.count === y.count && x.key < y.key);
  }
}

/**
 * Deterministic filler once the text has no pairs left: extends tokens that end in an ASCII
 * letter by one more letter, breadth-first, so the extra tokens still look like word pieces.
 */
function addSyntheticMerges(tokens: string[], known: Set<string>, targetTokens: number, addMerge: (a: string, b: string) => void): void {
  const letters = "etaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ";
  const endsInLetter = (t: string) => /[A-Za-z]$/.test(t);
  // Indexed, not for-of: tokens added here are extended in turn (breadth-first).
  for (let base = 0; tokens.length < targetTokens && base < tokens.length; base++) {
    const stem = tokens[base]!; // base < length
    if (!endsInLetter(stem)) continue;
    for (const letter of letters) {
      if (tokens.length >= targetTokens) return;
      if (!known.has(stem + letter)) addMerge(stem, letter);
    }
  }
}

/**
 * A complete Hugging Face tokenizer.json for the vocabulary (specials as special added tokens).
 * By default GPT-2's ByteLevel pre-tokenizer; `splitRegexes` gives a Sequence of Split steps and
 * ByteLevel without its own regex, the layout of Llama 3 and Qwen2 tokenizers.
 */
export function tokenizerJsonFromBpe(v: BpeVocab, opts: { splitRegexes?: readonly string[]; ignoreMerges?: boolean } = {}): Record<string, unknown> {
  return byteLevelTokenizerJson({
    tokens: v.tokens,
    merges: v.merges.map(([a, b]) => `${a} ${b}`),
    tokenTypes: tokenTypes(v),
    splitRegexes: opts.splitRegexes,
    ignoreMerges: opts.ignoreMerges,
  });
}

/** GGUF token types: 1 normal, 3 control (the specials). */
function tokenTypes(v: BpeVocab): number[] {
  const special = new Set(v.specialTokens.map((s) => s.id));
  return v.tokens.map((_, id) => (special.has(id) ? 3 : 1));
}

/** GGUF `tokenizer.ggml.*` metadata for the vocabulary, as llama.cpp's "gpt2" tokenizer reads it. */
export function ggufTokenizerMetadata(v: BpeVocab, ids: { bosId: number; eosId: number; addBos?: boolean }): Array<[string, GgufTyped]> {
  return [
    ["tokenizer.ggml.model", gguf.str("gpt2")],
    ["tokenizer.ggml.pre", gguf.str("gpt-2")],
    ["tokenizer.ggml.tokens", gguf.arr("str", v.tokens)],
    ["tokenizer.ggml.token_type", gguf.arr("i32", tokenTypes(v))],
    [
      "tokenizer.ggml.merges",
      gguf.arr(
        "str",
        v.merges.map(([a, b]) => `${a} ${b}`),
      ),
    ],
    ["tokenizer.ggml.bos_token_id", gguf.u32(ids.bosId)],
    ["tokenizer.ggml.eos_token_id", gguf.u32(ids.eosId)],
    ["tokenizer.ggml.add_bos_token", gguf.bool(ids.addBos ?? false)],
  ];
}

/** Public-domain sample prose (written for this module) used when no training text is given. */
export const DEFAULT_TRAINING_TEXT = `The lighthouse keeper woke before the sun, as he had done for thirty-one years. He climbed the
one hundred and twelve steps of the tower, counting each of them out of habit, and wiped the salt from
the great lens with a soft cloth. Outside, the sea was grey and quiet. A few gulls argued over the
remains of a fish on the rocks below, and far to the north a fishing boat was making its slow way home.

He kept a log of everything: the weather, the ships that passed, the state of the lamp, the number of
birds that struck the glass in the night. On the first page, in his father's careful hand, someone had
written, "Keep the light burning, and the light will keep you." He had never been sure what it meant,
but he liked the sound of it, and he read it aloud every morning before he began his work.

In the spring of that year a young woman came to the island. She was a teacher from the town across the
water, and she had been asked to count the seabirds that nested on the cliffs. She carried a notebook,
a pair of field glasses, and a small brass compass that had belonged to her grandmother. "I will not be
in your way," she told him. "I only need a place to sleep and a window that looks west."

They did not talk much at first. She went out at dawn and came back at dusk, her boots wet and her hands
cold, and she wrote numbers into her notebook by the light of the stove: 214 puffins, 87 razorbills,
1,306 guillemots, 9 pairs of fulmars. He cooked potatoes and onions and whatever fish the boats had left
at the landing, and she washed the plates without being asked.

One evening a storm came in from the west. The wind rose until the tower hummed like a bell, and rain
struck the windows in long, hard sheets. The keeper went up to tend the lamp, and she followed him,
because she did not want to be alone. From the gallery they could see the lights of a ship, very small,
rising and falling on the black water. "Will they be all right?" she asked. "They can see us," he said.
"That is the whole of my job. As long as they can see us, they know where the rocks are."

The ship passed safely in the night. In the morning the sea was flat again, and the air smelled of
seaweed and wet stone. She went down to the cliffs and found that the birds had not been harmed; they
were sitting on their ledges as though nothing had happened, shouting at each other and at the sky.

When the summer ended she went back to the town, and the keeper returned to his log and his steps and
his lens. But every year after that, in the first week of April, a letter arrived on the supply boat.
It was always short. It said how many birds she expected, and asked whether the light was still
burning, and whether he was well. He always wrote back the same answer: yes, and yes, and come and see.

Questions were asked, and answers were given. What is the distance to the mainland? About six miles.
How deep is the water by the landing? Deep enough for the boats, except at the lowest tides. Why do
you stay? Because somebody must, and because I would not know what to do with myself anywhere else.
`;
