// `tessera demo`: a local swarm of three node processes serving the shipped model in overlapping
// spans, encrypted (EE L1) under a key made fresh for this run, and a short chat streamed through
// it. The key never leaves this process; the nodes load the encrypted copy and see cipher ids only.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EncryptedSession, VocabCipher } from "../ee/cipher.js";
import { encryptModel } from "../ee/encrypt-model.js";
import { deploymentId } from "../ee/key.js";
import { generate } from "../engine/generate.js";
import { openCheckpoint } from "../model/checkpoint.js";
import { SHIPPED_MODEL } from "../model/shipped.js";
import { loadTokenizer } from "../model/tokenizer.js";
import { SwarmClient } from "../swarm/client.js";
import { formatVerification } from "./generate.js";
import { formatRoute, renderSwarm, shortPeerId } from "../swarm/dashboard.js";
import { type NodeProcess, spawnNode, stopNode } from "../swarm/node-process.js";

interface DemoFlags {
  prompt: string;
  maxTokens: number;
  seed: number;
}

export async function demoCommand(flags: DemoFlags): Promise<void> {
  const checkpoint = await openCheckpoint(SHIPPED_MODEL.hf);
  const tokenizer = await loadTokenizer(checkpoint);
  const c = checkpoint.config;
  const L = c.numLayers;
  const half = Math.ceil(L / 2);
  const spans: [number, number][] = [
    [0, half],
    [half, L],
    [Math.max(1, half - 2), L],
  ];

  // Per-run key rotation: a fresh key, the shipped model encrypted under it into a temporary
  // folder (with the nodes' span cache, which is worthless once the key is gone), removed at exit.
  const dir = mkdtempSync(join(tmpdir(), "tessera-demo-"));
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  const onSignal = () => {
    cleanup();
    process.exit(130);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const nodes: NodeProcess[] = [];
  let client: SwarmClient | undefined;
  try {
    const encrypted = join(dir, "tessera-kjv-ee");
    const t0 = performance.now();
    const { key, manifest } = await encryptModel({ model: SHIPPED_MODEL.hf, level: "L1", out: encrypted }); // a fresh key, kept in memory
    console.log(
      `Encrypted the shipped model (EE L1, a fresh key for this run) in ${(performance.now() - t0).toFixed(0)} ms; ` +
        `deployment ${manifest.deploymentId.slice(0, 12)}…`,
    );
    console.log(`Starting a local swarm of ${spans.length} nodes serving the encrypted copy (${L} blocks)…`);
    process.env.TESSERA_CACHE = join(dir, "cache");
    const args = ["--max-session", "512", "--threads", "1"];
    // The first node starts the swarm; the others join through it, and so does the client.
    const first = await spawnNode(encrypted, ...spans[0]!, args);
    nodes.push(first);
    nodes.push(...(await Promise.all(spans.slice(1).map(([a, b]) => spawnNode(encrypted, a, b, [...args, "--bootstrap", first.addr])))));
    // The nodes announce under the manifest's deployment id; the client derives it from the key.
    const modelId = deploymentId(key);
    client = await SwarmClient.connect([first.addr], c, { modelId, codec: "blockwise8" });

    const records = await client.provider.records();
    for (const [i, [a, b]] of spans.entries()) {
      const peer = records.find((r) => r.start === a && r.end === b)?.peerId ?? "?";
      console.log(`  node ${i + 1}  ${shortPeerId(peer)}  blocks [${a}, ${b})  ${nodes[i]!.addr.split("/p2p/")[0]}`);
    }
    console.log(`\n${indent(renderSwarm({ modelId: `deployment ${modelId.slice(0, 12)}…`, numBlocks: L, nodes: client.provider.nodes, barWidth: 24 }))}\n`);
    // Every span is checked: another node serving the same blocks recomputes it (the spans overlap).
    const route = await client.openSession(512, { verify: { rate: 1 } });
    console.log(
      `route: ${formatRoute(route.route)}  (hidden states as blockwise 8-bit, ${route.chaining ? "pushed node to node" : "relayed by this client, as near to the nodes as they are to each other"})`,
    );
    const cipher = VocabCipher.fromKey(key, tokenizer);
    const session = new EncryptedSession(route, cipher);

    const prompt = tokenizer.encode(tokenizer.applyChatTemplate([{ role: "user", content: flags.prompt }], { addGenerationPrompt: true }), {
      addSpecial: false,
    });
    console.log(`prompt ids, plain:    ${idList(prompt)}`);
    console.log(`what node 1 receives: ${idList(cipher.encrypt(prompt))}`);
    console.log(`\nuser: ${flags.prompt}\nassistant: `);
    const result = await generate(session, tokenizer, prompt, {
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
    console.log(formatVerification(route.verification));
    session.close();
  } finally {
    await client?.close();
    await Promise.all(nodes.map((n) => stopNode(n.proc)));
    cleanup();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    console.log("swarm stopped");
  }
}

function idList(ids: readonly number[], show = 10): string {
  return (
    ids
      .slice(0, show)
      .map((id) => String(id).padStart(5))
      .join(" ") + (ids.length > show ? "  …" : "")
  );
}

function indent(text: string): string {
  return text.replace(/^(?=.)/gm, "  ");
}
