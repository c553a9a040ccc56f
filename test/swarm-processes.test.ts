// The swarm as separate processes: `tessera node` per span, a client in the test, and a node
// killed with SIGKILL mid-generation.
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { promisify } from "node:util";
import { LocalPipeline } from "../src/engine/pipeline.js";
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
