// `tessera demo`: a local swarm of three node processes serving the shipped model in overlapping
// spans, and a short chat streamed through it.
import { generate } from "../engine/generate.js";
import { openCheckpoint } from "../model/checkpoint.js";
import { SHIPPED_MODEL } from "../model/shipped.js";
import { loadTokenizer } from "../model/tokenizer.js";
import { SwarmClient } from "../swarm/client.js";
import { spawnNode, stopNode } from "../swarm/node-process.js";

interface DemoFlags {
  prompt: string;
  maxTokens: number;
  seed: number;
}

export async function demoCommand(flags: DemoFlags): Promise<void> {
  const checkpoint = await openCheckpoint(SHIPPED_MODEL.hf);
  const L = checkpoint.config.numLayers;
  const half = Math.ceil(L / 2);
  const spans: [number, number][] = [[0, half], [half, L], [Math.max(1, half - 2), L]];
  console.log(`Starting a local swarm of ${spans.length} nodes for the shipped model (${L} blocks)…`);
  const nodes = await Promise.all(spans.map(([a, b]) => spawnNode(SHIPPED_MODEL.hf, a, b, ["--max-session", "512", "--threads", "1"])));
  const client = await SwarmClient.connect(nodes.map((n) => n.addr), checkpoint.config, { codec: "blockwise8" });
  try {
    const records = await client.provider.records();
    for (const [i, [a, b]] of spans.entries()) {
      const peer = records.find((r) => r.start === a && r.end === b)?.peerId ?? "?";
      console.log(`  node ${i + 1}  ${shortId(peer)}  blocks [${a}, ${b})  ${nodes[i]!.addr.split("/p2p/")[0]}`);
    }
    const tokenizer = await loadTokenizer(checkpoint);
    const session = await client.openSession(512);
    console.log(`route: ${session.route.map((h) => `${shortId(h.peerId)} [${h.start},${h.end})`).join(" → ")}  (hidden states as blockwise 8-bit)`);
    console.log(`\nuser: ${flags.prompt}\nassistant: `);
    const prompt = tokenizer.applyChatTemplate([{ role: "user", content: flags.prompt }], { addGenerationPrompt: true });
    const result = await generate(session, tokenizer, tokenizer.encode(prompt, { addSpecial: false }), {
      maxTokens: flags.maxTokens,
      sampling: { temperature: 0.7, topK: 40, topP: 0.95, repetitionPenalty: 1.1 },
      seed: flags.seed,
      onText: (t) => process.stdout.write(t),
    });
    const t = result.timings;
    console.log(
      `\n\n${result.tokens.length} tokens through the swarm at ${t.decodeTokensPerSecond.toFixed(1)} tok/s ` +
        `(prompt ${result.promptTokens.length} tokens at ${t.prefillTokensPerSecond.toFixed(0)} tok/s); ${result.finishReason}`,
    );
    session.close();
  } finally {
    await client.close();
    await Promise.all(nodes.map((n) => stopNode(n.proc)));
    console.log("swarm stopped");
  }
}

function shortId(peerId: string): string {
  return `…${peerId.slice(-6)}`;
}
