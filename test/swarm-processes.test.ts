// The swarm as separate processes: `tessera node` per span, a client in the test, and a node
// killed with SIGKILL mid-generation.
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { promisify } from "node:util";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { ServedSpan, SpanRunner } from "../src/engine/runtime.js";
import { argmax } from "../src/engine/sampling.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { SwarmClient } from "../src/swarm/client.js";
import { defaultModelId } from "../src/swarm/model-id.js";
import { spawnNode } from "../src/swarm/node-process.js";
import { hfModel, sampleTokens } from "./support/fixtures.js";
import { cliArgs } from "./support/cli.js";

const children: ChildProcess[] = [];
after(() => {
  for (const c of children) c.kill("SIGKILL");
});

async function startNode(model: string, blocks: string, bootstrap?: string) {
  const [start, end] = blocks.split(":").map(Number) as [number, number];
  const node = await spawnNode(model, start, end, ["--max-session", "512", ...(bootstrap ? ["--bootstrap", bootstrap] : [])]);
  children.push(node.proc);
  return node;
}

test("three node processes serve a model; killing one mid-generation changes no token", async () => {
  const model = await hfModel("tiny-llama");
  const checkpoint = await openCheckpoint(model);
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 128 });
  const prompt = sampleTokens(8, 512, 41);
  const expected: number[] = [];
  {
    const s = local.openSession(64);
    let logits = await s.append(prompt);
    for (let i = 0; i < 20; i++) {
      expected.push(argmax(logits));
      logits = await s.append([expected.at(-1)!]);
    }
  }
  await local.release();

  const first = await startNode(model, "0:2");
  const nodes = [first, ...(await Promise.all([startNode(model, "2:4", first.addr), startNode(model, "1:4", first.addr)]))];
  const client = await SwarmClient.connect([first.addr], checkpoint.config, { modelId: defaultModelId(model), stepTimeoutMs: 10_000 });
  try {
    const failovers: string[] = [];
    const session = await client.openSession(64, { onFailover: (e) => failovers.push(e.peerId) });
    const victimPeer = session.route[1]!.peerId;
    const records = await client.provider.records();
    const victim =
      nodes[
        ["0:2", "2:4", "1:4"].findIndex((b) => {
          const r = records.find((x) => x.peerId === victimPeer)!;
          return b === `${r.start}:${r.end}`;
        })
      ]!;
    let logits = await session.append(prompt);
    const tokens: number[] = [];
    for (let i = 0; i < 20; i++) {
      tokens.push(argmax(logits));
      if (i === 7) victim.proc.kill("SIGKILL");
      logits = await session.append([tokens.at(-1)!]);
    }
    assert.deepEqual(tokens, expected);
    assert.deepEqual(failovers, [victimPeer]);
    session.close();

    // The CLI's swarm mode generates what the local engine generates.
    const run = promisify(execFile);
    const alive = nodes
      .filter((n) => n !== victim)
      .map((n) => ["--swarm", n.addr])
      .flat();
    const args = ["generate", "--model", model, "--prompt", "In the beginning", "-t", "0", "-n", "10", "--json"];
    const viaSwarm = JSON.parse((await run(process.execPath, cliArgs(...args, ...alive))).stdout);
    const dashboard = (await run(process.execPath, cliArgs("swarm", "--model", model, "--bootstrap", first.addr))).stdout;
    // Scoring through the swarm (windows routed for throughput) gives the local perplexity.
    const data = join(model, "..", "eval-text.txt");
    await writeFile(data, "In the beginning God created the heaven and the earth. ".repeat(12));
    const evalArgs = ["eval", "--model", model, "-d", data, "--window", "32", "--json"];
    const evalSwarm = JSON.parse((await run(process.execPath, cliArgs(...evalArgs, "--swarm", first.addr))).stdout);
    const evalLocal = JSON.parse((await run(process.execPath, cliArgs(...evalArgs))).stdout);
    assert.equal(evalSwarm.predicted, evalLocal.predicted);
    assert.ok(
      Math.abs(evalSwarm.perplexity - evalLocal.perplexity) < 1e-3 * evalLocal.perplexity,
      `swarm ${evalSwarm.perplexity} vs local ${evalLocal.perplexity}`,
    );
    assert.match(dashboard, /2 nodes online, 4 blocks/, "the killed node is gone once its record is dropped or it is unreachable");
    const onThisMachine = JSON.parse((await run(process.execPath, cliArgs(...args))).stdout);
    assert.deepEqual(viaSwarm.tokens, onThisMachine.tokens);
  } finally {
    await client.close();
  }
});

test("a node started with --blocks auto takes the blocks the swarm lacks", async () => {
  const model = await hfModel("tiny-llama");
  const first = await startNode(model, "0:2");
  const second = await spawnNode(model, 0, 0, ["--bootstrap", first.addr, "--max-blocks", "2"]).catch((e) => e as Error);
  assert.ok(second instanceof Error, "0:0 is refused");
  const auto = spawnAuto(model, ["--blocks", "auto", "--bootstrap", first.addr, "--max-blocks", "2"]);
  const out = await auto;
  assert.match(out, /taking \[2, 4\)/);
});

/** Runs `tessera node` with the given flags until it listens; returns what it printed. */
function spawnAuto(model: string, flags: string[]): Promise<string> {
  const proc = spawn(process.execPath, cliArgs("node", "--model", model, ...flags), { env: process.env });
  children.push(proc);
  return new Promise((resolve, reject) => {
    let out = "";
    proc.stdout.on("data", (d) => {
      out += d;
      if (/listening/.test(out)) resolve(out);
    });
    proc.on("exit", (code) => reject(new Error(`exited with ${code}`)));
  });
}

test("split sessions through node processes: the client embeds and runs the head, nodes see hidden states only, and the logits are the same bits", async () => {
  const model = await hfModel("tiny-llama");
  const checkpoint = await openCheckpoint(model);
  const L = checkpoint.config.numLayers;
  const opts = { maxSequence: 128 };
  const [whole, embedding, lmHead] = await Promise.all([
    SpanRunner.load(checkpoint, { start: 0, end: L, embed: true, head: true }, opts),
    ServedSpan.load(checkpoint, 0, 0, opts),
    ServedSpan.load(checkpoint, L, L, opts),
  ]);
  const first = await startNode(model, "0:2");
  const second = await startNode(model, `2:${L}`, first.addr);
  const client = await SwarmClient.connect([first.addr], checkpoint.config, { modelId: defaultModelId(model), stepTimeoutMs: 10_000 });
  try {
    const peerOf = (addr: string) => addr.slice(addr.lastIndexOf("/p2p/") + 5);
    for (let i = 0; i < 50 && (await client.provider.records()).length < 2; i++) await new Promise((r) => setTimeout(r, 200));
    const hops = [
      { peerId: peerOf(first.addr), start: 0, end: 2 },
      { peerId: peerOf(second.addr), start: 2, end: L },
    ];
    const [h0, h1] = await Promise.all(hops.map((hop) => client.provider.open(hop, 32, { split: true })));
    const w = whole.openSession(32);
    const [e, h] = [embedding.openSession(32), lmHead.openSession(32)];
    const tokens = sampleTokens(9, 512, 17);
    for (const part of [tokens.slice(0, 7), tokens.slice(7, 8), tokens.slice(8, 9)]) {
      const want = (await w.forward({ tokens: part }, { allLogits: true })).logits!;
      const mid = await h0!.forward({ hidden: (await e.forward({ tokens: part })).hidden! }, {});
      const out = await h1!.forward({ hidden: mid.hidden! }, {});
      assert.equal(out.logits, undefined, "the last node returns hidden states, not logits");
      const got = (await h.forward({ hidden: out.hidden! }, { allLogits: true })).logits!;
      assert.ok(got.length === want.length && got.every((v, i) => Object.is(v, want[i])), "same bits");
    }
    // Token ids into a split session are refused, and the session goes on.
    await assert.rejects(h0!.forward({ tokens: [1] }, {}), /hidden states/);
    await Promise.all([h0!.close(), h1!.close()]);
    // A plain session on the same node still takes token ids.
    const plain = await client.provider.open(hops[0]!, 32);
    assert.ok((await plain.forward({ tokens: [1, 2] }, {})).hidden);
    await plain.close();
  } finally {
    await client.close();
    await Promise.all([whole, embedding, lmHead].map((r) => r.release()));
    for (const n of [first, second]) n.proc.kill("SIGKILL");
  }
});
