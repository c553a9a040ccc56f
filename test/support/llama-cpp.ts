// llama.cpp (through node-llama-cpp) as the independent oracle: next-token distributions and
// greedy continuations for a GGUF file, from token ids.
import { getLlama, type Llama, type LlamaModel } from "node-llama-cpp";

let llamaPromise: Promise<Llama> | undefined;
function llama(): Promise<Llama> {
  llamaPromise ??= getLlama({ gpu: false, build: "never", logLevel: "error" as never });
  return llamaPromise;
}

export class LlamaCppOracle {
  private constructor(private readonly model: LlamaModel) {}

  static async load(file: string): Promise<LlamaCppOracle> {
    const model = await (await llama()).loadModel({ modelPath: file, gpuLayers: 0 });
    return new LlamaCppOracle(model);
  }

  tokenize(text: string): number[] {
    return [...this.model.tokenize(text, true)];
  }

  /** A context with an f32 KV cache, as Tessera's engine keeps it. */
  private context() {
    return this.model.createContext({
      contextSize: 256,
      threads: 2,
      batchSize: 256,
      flashAttention: false,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
    });
  }

  /** log-probabilities of the next token after `tokens`, as a dense vocabulary-sized array. */
  async nextLogProbs(tokens: number[], vocabSize: number): Promise<Float32Array> {
    const context = await this.context();
    try {
      const sequence = context.getSequence();
      const items = tokens.map((t, i) =>
        i === tokens.length - 1 ? ([t, { generateNext: { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } } }] as const) : t,
      );
      const out = await sequence.controlledEvaluate(items as never);
      const probs = out[tokens.length - 1]!.next.probabilities!;
      const logp = new Float32Array(vocabSize).fill(-Infinity);
      for (const [token, p] of probs) logp[token as number] = Math.log(p);
      return logp;
    } finally {
      await context.dispose();
    }
  }

  /** Greedy continuation of `tokens` by `count` tokens. */
  async greedy(tokens: number[], count: number): Promise<number[]> {
    const context = await this.context();
    try {
      const sequence = context.getSequence();
      const result: number[] = [];
      for await (const token of sequence.evaluate(tokens as never, { temperature: 0 })) {
        result.push(token as number);
        if (result.length >= count) break;
      }
      return result;
    } finally {
      await context.dispose();
    }
  }

  async dispose(): Promise<void> {
    await this.model.dispose();
  }
}
