// Swarm benchmark: per-token decode latency of the shipped model through 1–4 libp2p nodes on
// loopback, client-relayed and chained (nodes push to the next node), against the in-process engine
// in the same run, per codec; bytes per hop of a 512-token prefill; and greedy next-token agreement
// of blockwise 8-bit hops with f32 hops over the held-out text; and what the engine thread that
// `tessera node` runs costs per step, against the engine on the main thread.
//   npm run bench -- swarm [--decode 128] [--rounds 8] [--agreement-tokens 2048]
import "../src/swarm/node20.js";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { LogitsSession } from "../src/engine/interface.js";
import { threadedCheckpoint } from "../src/engine/engine-thread.js";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { argmax } from "../src/engine/sampling.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { checkpointHash } from "../src/model/hash.js";
import { SHIPPED_MODEL } from "../src/model/shipped.js";
import { loadTokenizer } from "../src/model/tokenizer.js";
import { SwarmClient } from "../src/swarm/client.js";
import { type Codec, frameBytes } from "../src/wire/tensor-frame.js";
import { groupedBarChartSvg } from "./_svg.js";
import { evenSpans, median, startSwarm } from "./_swarm-common.js";

const here = dirname(fileURLToPath(import.meta.url));

/** Per-step decode latencies (ms) after a prompt and a short warm-up; the session is rolled back after. */
async function decodeSteps(session: LogitsSession, prompt: number[], steps: number): Promise<number[]> {
  session.truncate(0);
  let logits = await session.append(prompt);
  for (let i = 0; i < 4; i++) logits = await session.append([argmax(logits)]); // warm-up
  const out: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    logits = await session.append([argmax(logits)]);
    out.push(performance.now() - t0);
  }
  return out;
}

/**
 * Median per-token latency of each configuration, measured in interleaved rounds so that load
 * from other processes hits every configuration alike.
 */
async function interleaved(sessions: LogitsSession[], prompt: number[], steps: number, rounds: number): Promise<number[]> {
  const samples: number[][] = sessions.map(() => []);
  for (let r = 0; r < rounds; r++) {
    for (const [i, s] of sessions.entries()) samples[i]!.push(...(await decodeSteps(s, prompt, Math.ceil(steps / rounds))));
  }
  return samples.map(median);
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { decode: { type: "string", default: "128" }, rounds: { type: "string", default: "8" }, "agreement-tokens": { type: "string", default: "2048" } },
  });
  const steps = Number(values.decode);
  const rounds = Number(values.rounds);
  const checkpoint = await openCheckpoint(SHIPPED_MODEL.hf);
  const c = checkpoint.config;
  const tokenizer = await loadTokenizer(checkpoint);
  const heldOut = tokenizer.encode(readFileSync(SHIPPED_MODEL.evalText, "utf8"), { addSpecial: false });
  const prompt = heldOut.slice(0, 32);

  const local = await LocalPipeline.load(checkpoint, { maxSequence: 512 });
  const localSession = local.openSession(256);
  const [inprocess] = await interleaved([localSession], prompt, steps, rounds);
  console.log(`in-process engine: ${inprocess!.toFixed(2)} ms/token`);

  const byNodes: Record<string, number> = {};
  const baselineByNodes: Record<string, number> = {};
  const chainedByNodes: Record<string, number> = {};
  const byCodec: Record<string, number> = {};
  // With 2 nodes, the same spans also on the engine on a worker thread, as `tessera node` runs it
  // (one engine thread serves both nodes here; each node process has its own), in the same rounds.
  const threadedModel = threadedCheckpoint(SHIPPED_MODEL.hf, c, await checkpointHash(checkpoint));
  let onMain = NaN;
  let onThread = NaN;
  for (const n of [1, 2, 3, 4]) {
    const nodes = await startSwarm(checkpoint, "bench", evenSpans(c.numLayers, n));
    const threadNodes = n === 2 ? await startSwarm(checkpoint, "bench-thread", evenSpans(c.numLayers, n), threadedModel) : [];
    const runs: { codec: Codec; chained: boolean }[] = [{ codec: "none", chained: false }];
    if (n > 1) runs.push({ codec: "none", chained: true });
    if (n === 2) runs.push({ codec: "f16", chained: false }, { codec: "blockwise8", chained: false });
    const clients = await Promise.all(runs.map(({ codec }) => SwarmClient.connect(nodes[0]!.addresses.slice(0, 1), c, { modelId: "bench", codec })));
    if (threadNodes.length) clients.push(await SwarmClient.connect(threadNodes[0]!.addresses.slice(0, 1), c, { modelId: "bench-thread" }));
    const sessions = await Promise.all(clients.map((client, i) => client.openSession(256, { chained: runs[i]?.chained ?? false })));
    // The in-process engine runs in the same rounds, so each row has its own baseline.
    const [base, ...ms] = await interleaved([localSession, ...sessions], prompt, steps, rounds);
    for (const [i, { codec, chained }] of runs.entries()) {
      if (codec === "none") (chained ? chainedByNodes : byNodes)[n] = ms[i]!;
      if (n === 2 && !chained) byCodec[codec] = ms[i]!;
      console.log(
        `${n} node${n > 1 ? "s" : ""}, ${codec}, ${chained ? "chained" : "client-relayed"}: ${ms[i]!.toFixed(2)} ms/token (in-process ${base!.toFixed(2)})`,
      );
    }
    if (threadNodes.length) {
      [onMain, onThread] = [byNodes[2]!, ms[runs.length]!];
      console.log(`2 nodes, engine on a worker thread: ${onThread.toFixed(2)} ms/token, ${((onThread - onMain) / 2).toFixed(2)} ms per step per node more`);
    }
    baselineByNodes[n] = base!;
    for (const client of clients) await client.close();
    for (const node of [...nodes, ...threadNodes]) await node.stop();
  }
  await threadedModel.stop();
  const engineThreadCostMs = (onThread - onMain) / 2;

  // Each extra node adds one client↔node round trip and one serialization per token.
  const hopOverhead = (byNodes[4]! - baselineByNodes[4]!) / 4;
  const chainedHopOverhead = (chainedByNodes[4]! - baselineByNodes[4]!) / 4;

  // Teacher-forced greedy agreement: the next-token argmax with blockwise 8-bit hops vs f32 hops.
  const agreementTokens = heldOut.slice(0, Number(values["agreement-tokens"]));
  const nodes = await startSwarm(checkpoint, "bench", evenSpans(c.numLayers, 3));
  const predictions: Record<string, number[]> = {};
  for (const codec of ["none", "blockwise8"] as Codec[]) {
    const client = await SwarmClient.connect(nodes[0]!.addresses.slice(0, 1), c, { modelId: "bench", codec });
    const session = await client.openSession(256);
    predictions[codec] = [];
    for (let w = 0; w < agreementTokens.length; w += 256) {
      session.truncate(0);
      const window = agreementTokens.slice(w, w + 256);
      const logits = await session.append(window, { allLogits: true });
      for (let i = 0; i < window.length; i++) predictions[codec].push(argmax(logits.subarray(i * c.vocabSize, (i + 1) * c.vocabSize)));
    }
    await client.close();
  }
  for (const node of nodes) await node.stop();
  const agree = predictions.none!.filter((t, i) => t === predictions.blockwise8![i]).length / predictions.none!.length;
  await local.release();

  const prefillElements = 512 * c.hiddenSize;
  const bytesPerHop = Object.fromEntries((["none", "f16", "blockwise8"] as Codec[]).map((k) => [k, frameBytes(prefillElements, 3, k)]));
  const result = {
    benchmark: "swarm",
    date: new Date().toISOString(),
    machine: { cpu: cpus()[0]?.model, cores: cpus().length, ram_bytes: totalmem(), node: process.version },
    model: { path: "models/tessera-kjv", blocks: c.numLayers, hidden: c.hiddenSize },
    settings: {
      decode_steps: steps,
      rounds,
      statistic: "median per-token latency over interleaved rounds",
      transport: "js-libp2p tcp+noise+yamux on loopback, nodes in this process, records from the kad-dht",
    },
    inprocess_ms_per_token: inprocess,
    inprocess_ms_per_token_by_round: baselineByNodes,
    ms_per_token_by_nodes: byNodes,
    chained_ms_per_token_by_nodes: chainedByNodes,
    ms_per_token_by_codec_2_nodes: byCodec,
    hop_overhead_ms: hopOverhead,
    engine_thread: { main_thread_ms_per_token_2_nodes: onMain, worker_thread_ms_per_token_2_nodes: onThread, cost_ms_per_step_per_node: engineThreadCostMs },
    chained_hop_overhead_ms: chainedHopOverhead,
    bytes_per_hop_by_codec: { prefill_tokens: 512, ...bytesPerHop },
    blockwise8_size_ratio_vs_f32: bytesPerHop.none! / bytesPerHop.blockwise8!,
    blockwise8_greedy_agreement: agree,
    agreement_tokens: predictions.none!.length,
  };
  console.table({
    inprocess: { relayed_ms: inprocess },
    ...Object.fromEntries(Object.entries(byNodes).map(([k, v]) => [`${k} nodes`, { relayed_ms: v, chained_ms: chainedByNodes[k] }])),
  });
  console.log(
    `hop overhead ${hopOverhead.toFixed(2)} ms relayed, ${chainedHopOverhead.toFixed(2)} ms chained; blockwise8 ${result.blockwise8_size_ratio_vs_f32.toFixed(2)}x smaller than f32; greedy agreement ${(100 * agree).toFixed(2)}% over ${result.agreement_tokens} tokens`,
  );
  mkdirSync(join(here, "results"), { recursive: true });
  writeFileSync(join(here, "results", "swarm.json"), JSON.stringify(result, null, 2) + "\n");
  const counts = ["1", "2", "3", "4"];
  writeFileSync(
    join(here, "results", "swarm.svg"),
    groupedBarChartSvg({
      panels: [
        {
          title: "Decode ms/token through n nodes (loopback)",
          groups: counts.map((n) => `${n} node${n === "1" ? "" : "s"}`),
          values: [counts.map((n) => baselineByNodes[n]!), counts.map((n) => byNodes[n]!), counts.map((n) => chainedByNodes[n] ?? NaN)],
        },
      ],
      series: ["in-process engine", "client-relayed", "chained"],
      footer: `shipped model; medians over ${rounds} rounds; ${result.machine.cpu}, ${result.machine.cores} cores`,
    }),
  );
  console.log("wrote bench/results/swarm.json and swarm.svg");
}
