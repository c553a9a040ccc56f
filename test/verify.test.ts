// Verification on real loopback swarms: node processes, adversarial node processes that announce
// the honest model and cheat in one way each, a client that checks their work (replay or
// consensus), catches them, routes around them and ends with an honest run's tokens.
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { generate } from "../src/engine/generate.js";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { loadTokenizer, type Tokenizer } from "../src/model/tokenizer.js";
import { SwarmClient } from "../src/swarm/client.js";
import { defaultModelId } from "../src/swarm/model-id.js";
import { type NodeProcess, spawnNode, stopNode } from "../src/swarm/node-process.js";
import type { RouteSessionOptions, VerificationReport } from "../src/swarm/route-session.js";
import { ledgerTrust } from "../src/swarm/trust.js";
import { ReputationLedger } from "../src/verify/ledger.js";
import type { ModelConfig } from "../src/model/types.js";
import { type AdversaryMode, type AdversaryProcess, spawnAdversary } from "./support/adversary.js";
import { tessera } from "./support/cli.js";
import { hfModel, sampleTokens, workDir } from "./support/fixtures.js";

const children: ChildProcess[] = [];
after(() => {
  for (const c of children) c.kill("SIGKILL");
});

const TOKENS = 24;
const GREEDY = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };
let model: string;
let config: ModelConfig;
let tokenizer: Tokenizer;
let modelId: string;
const prompt = sampleTokens(6, 512, 7);
let expected: number[];
let honest: NodeProcess[];

const peerOf = (addr: string) => addr.slice(addr.lastIndexOf("/p2p/") + 5);

async function node(start: number, end: number, args: string[] = []): Promise<NodeProcess> {
  // Announcing less than they deliver keeps the honest nodes from outbidding a fresh adversary
  // whose first pings are slow: the router then prefers an adversary announcing 1e6 tokens/s.
  const n = await spawnNode(model, start, end, ["--max-session", "256", "--throughput", "10", ...args]);
  children.push(n.proc);
  return n;
}

async function adversary(mode: AdversaryMode, start: number, end: number, args: string[] = []): Promise<AdversaryProcess> {
  const n = await spawnAdversary(model, start, end, mode, ["--bootstrap", honest[0]!.addr, "--max-session", "256", ...args]);
  children.push(n.proc);
  return n;
}

/** One greedy generation through the swarm with the given checks; its tokens, route and report. */
/** Waits until a client finds `x`'s record in the DHT (a node that just started may not be announced yet). */
async function visible(x: AdversaryProcess): Promise<void> {
  const client = await SwarmClient.connect([honest[0]!.addr], config, { modelId });
  try {
    for (let i = 0; i < 50 && !(await client.provider.records()).some((r) => r.peerId === peerOf(x.addr)); i++) await new Promise((r) => setTimeout(r, 200));
  } finally {
    await client.close();
  }
}

async function run(opts: Partial<RouteSessionOptions>, ledger: ReputationLedger, codec?: "none" | "blockwise8", waitFor?: AdversaryProcess) {
  if (waitFor) await visible(waitFor);
  const client = await SwarmClient.connect([honest[0]!.addr], config, { modelId, stepTimeoutMs: 20_000, codec });
  try {
    const session = await client.openSession(64, { trust: ledgerTrust(ledger, { modelId }), ...opts });
    const route = session.route.map((h) => h.peerId);
    const result = await generate(session, tokenizer, prompt, { maxTokens: TOKENS, sampling: GREEDY, seed: 1, stopAtEos: false });
    const report: VerificationReport = session.verification;
    session.close();
    return { tokens: result.tokens, route, report };
  } finally {
    await client.close();
  }
}

before(async () => {
  model = await hfModel("tiny-llama");
  const checkpoint = await openCheckpoint(model);
  config = checkpoint.config;
  tokenizer = await loadTokenizer(checkpoint);
  modelId = defaultModelId(model);
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 128 });
  const s = local.openSession(64);
  expected = (await generate(s, tokenizer, prompt, { maxTokens: TOKENS, sampling: GREEDY, seed: 1, stopAtEos: false })).tokens;
  await local.release();
  // Three honest holders of each half (one of them at another thread count): a route has two
  // hops, and every hop has two other holders to verify it.
  const first = await node(0, 2);
  const boot = ["--bootstrap", first.addr];
  honest = [
    first,
    ...(await Promise.all([
      node(0, 2, [...boot, "--threads", "1"]),
      node(0, 2, boot),
      node(2, 4, boot),
      node(2, 4, [...boot, "--threads", "1"]),
      node(2, 4, boot),
    ])),
  ];
});

// Each adversary serves blocks [0, 2) and announces a huge throughput, so the router sends it the
// first half of the route (hidden states out); the second hop (logits) is honest and checked too.
const CHEATS: AdversaryMode[] = ["noise-small", "noise-large", "perturbed", "skip-block", "stale", "q4"];
for (const mode of CHEATS) {
  test(`replay verification catches a node that cheats (${mode}) and the text equals an honest run's`, async () => {
    const x = await adversary(mode, 0, 2, ["--throughput", "1e6"]);
    const ledger = ReputationLedger.open(join(workDir, `ledger-${mode}.db`));
    try {
      const { tokens, route, report } = await run({ verify: { rate: 1 } }, ledger, "none", x);
      assert.equal(route[0], peerOf(x.addr), "the adversary is on the route");
      assert.ok(x.cheats().length > 0, "it cheated");
      assert.deepEqual(tokens, expected);
      assert.deepEqual(
        report.caught.map((c) => c.peerId),
        [peerOf(x.addr)],
      );
      assert.deepEqual(report.outvoted, []);
      const entry = ledger.entry(peerOf(x.addr));
      assert.equal(entry?.caught, 1);
      assert.ok(ledger.inCooldown(peerOf(x.addr), Date.now()));
      for (const h of honest) assert.equal(ledger.entry(peerOf(h.addr))?.caught ?? 0, 0);
    } finally {
      ledger.close();
      await stopNode(x.proc);
    }
  });
}

test("a selective cheater passes its first session and is caught when it cheats later", async () => {
  const x = await adversary("selective", 0, 2, ["--throughput", "1e6", "--seed", "3"]);
  const ledger = ReputationLedger.open(join(workDir, "ledger-selective.db"));
  const me = peerOf(x.addr);
  try {
    // Caught on the route (its hop's output disagreed with the verifiers'), or outvoted when the
    // router sent the first hop elsewhere and it cheated as that hop's verifier.
    let caught = false;
    const seen: string[] = [];
    for (let i = 0; i < 8 && !caught; i++) {
      const before = x.cheats().length;
      const { tokens, route, report } = await run({ verify: { rate: 1 } }, ledger, "none", x);
      assert.deepEqual(tokens, expected);
      const cheated = x.cheats().length > before;
      const onRoute = report.caught.some((c) => c.peerId === me);
      caught = onRoute || report.outvoted.some((o) => o.peerId === me);
      seen.push(
        `session ${i}: route ${route.map((p) => (p === me ? "adversary" : p.slice(-6))).join(" → ")}, cheated ${cheated}, caught ${onRoute}, outvoted ${caught && !onRoute}`,
      );
      if (i === 0) assert.ok(!cheated && !caught, `honest in its first session (${seen.at(-1)})`);
      if (route[0] === me) assert.equal(onRoute, cheated, `caught exactly when it cheated: ${seen.at(-1)}`);
    }
    assert.ok(caught, `caught within 8 sessions:\n${seen.join("\n")}`);
    assert.ok((ledger.entry(me)?.caught ?? 0) + (ledger.entry(me)?.outvoted ?? 0) > 0, "the ledger remembers it");
  } finally {
    ledger.close();
    await stopNode(x.proc);
  }
});

test("trial runs: a new node gets a known answer from the pool before real traffic; one that fails is routed around", async () => {
  const ledger = ReputationLedger.open(join(workDir, "ledger-trials.db"));
  try {
    // Honest sessions fill the pool with answers the verifiers agreed on.
    await run({ verify: { rate: 1 } }, ledger);
    assert.ok(ledger.knownAnswers(modelId, 0, 2).length > 0, "known answers of blocks [0, 2)");
    const x = await adversary("noise-large", 0, 2, ["--throughput", "1e6"]);
    try {
      const { tokens, route, report } = await run({ verify: { rate: 0 }, random: () => 0.5 }, ledger, "none", x);
      assert.ok(!route.includes(peerOf(x.addr)), "routed around it");
      assert.deepEqual(tokens, expected);
      assert.deepEqual(
        report.trials.filter((t) => !t.passed).map((t) => t.peerId),
        [peerOf(x.addr)],
      );
      assert.ok(x.cheats().length > 0);
      assert.equal(ledger.entry(peerOf(x.addr))?.trialsFailed, 1);
      assert.ok(ledger.inCooldown(peerOf(x.addr), Date.now()));
    } finally {
      await stopNode(x.proc);
    }
    const fair = await adversary("honest", 0, 2, ["--throughput", "1e6"]);
    try {
      const { route, report } = await run({ verify: { rate: 0 }, random: () => 0.5 }, ledger, "none", fair);
      assert.equal(route[0], peerOf(fair.addr));
      // Every node new to the ledger gets a trial (the second hop's may be new too); all pass.
      assert.ok(report.trials.some((t) => t.peerId === peerOf(fair.addr)));
      assert.ok(report.trials.every((t) => t.passed));
    } finally {
      await stopNode(fair.proc);
    }
  } finally {
    ledger.close();
  }
});

test("a node announcing far more throughput than it delivers is penalised and replaced", async () => {
  const x = await adversary("throughput-lie", 0, 2, ["--delay-ms", "250"]);
  const ledger = ReputationLedger.open(join(workDir, "ledger-lie.db"));
  try {
    const { tokens, route, report } = await run({ chained: false }, ledger, "none", x);
    assert.equal(route[0], peerOf(x.addr));
    assert.deepEqual(tokens, expected);
    assert.deepEqual(
      report.throughputLies.map((l) => l.peerId),
      [peerOf(x.addr)],
    );
    assert.ok(
      report.spans.some((s) => s.peerId !== peerOf(x.addr) && s.start === 0),
      "its blocks were re-routed",
    );
    assert.equal(ledger.entry(peerOf(x.addr))?.lies, 1);
  } finally {
    ledger.close();
    await stopNode(x.proc);
  }
});

test("honest nodes are never flagged: other thread counts, codecs, replay and consensus", async () => {
  const ledger = ReputationLedger.open(join(workDir, "ledger-honest.db"));
  try {
    for (const codec of ["none", "blockwise8"] as const) {
      for (const verify of [{ rate: 1 }, { rate: 1, mode: "consensus" as const, k: 1 }]) {
        const { tokens, report } = await run({ verify, random: () => 0 }, ledger, codec);
        if (codec === "none") assert.deepEqual(tokens, expected);
        assert.deepEqual(report.caught, [], `${codec} ${verify.mode ?? "replay"}`);
        assert.deepEqual(report.outvoted, []);
        assert.ok(report.checks > 0 && report.spans.every((s) => s.checked && !s.unverifiable && s.verifiedBy.length > 0));
      }
    }
    for (const h of honest) {
      const e = ledger.entry(peerOf(h.addr));
      assert.equal((e?.caught ?? 0) + (e?.outvoted ?? 0), 0);
    }
  } finally {
    ledger.close();
  }
});

test("consensus: a lying verifier is outvoted and penalised; a cheating node is caught by the majority", async () => {
  // Announcing 1 token/s keeps it off the route: it can only be a verifier.
  const liar = await adversary("noise-large", 0, 2, ["--throughput", "1"]);
  const ledger = ReputationLedger.open(join(workDir, "ledger-consensus.db"));
  try {
    const { tokens, route, report } = await run({ verify: { rate: 1, mode: "consensus", k: 3 } }, ledger, "none", liar);
    assert.ok(!route.includes(peerOf(liar.addr)));
    assert.deepEqual(tokens, expected);
    assert.deepEqual(report.caught, []);
    assert.ok(
      report.outvoted.some((o) => o.peerId === peerOf(liar.addr)),
      "the liar was outvoted",
    );
    assert.equal(ledger.entry(peerOf(liar.addr))?.outvoted, 1);
  } finally {
    await stopNode(liar.proc);
  }
  ledger.close();
  // A fresh ledger: with the known answers the first run left, a trial would catch it before any check could.
  const fresh = ReputationLedger.open(join(workDir, "ledger-consensus-2.db"));
  const cheat = await adversary("noise-large", 0, 2, ["--throughput", "1e6"]);
  try {
    const { tokens, route, report } = await run({ verify: { rate: 1, mode: "consensus", k: 3 } }, fresh, "none", cheat);
    assert.equal(route[0], peerOf(cheat.addr));
    assert.deepEqual(tokens, expected);
    const caught = report.caught.find((c) => c.peerId === peerOf(cheat.addr));
    assert.ok(caught && caught.by.length >= 2, "caught by a majority of the verifiers");
  } finally {
    fresh.close();
    await stopNode(cheat.proc);
  }
});

test("the CLI reports what was verified and caught; the ledger survives the process, and the caught node is avoided next time", async () => {
  const x = await adversary("noise-large", 0, 2, ["--throughput", "1e6"]);
  const ledger = join(workDir, "ledger-cli.db");
  await visible(x);
  const args = ["generate", "-m", model, "-p", "In the beginning", "-n", "12", "-t", "0", "--swarm", honest[0]!.addr, "--verify", "1", "--ledger", ledger];
  try {
    const first = JSON.parse((await tessera([...args, "--json"])).stdout) as { tokens: number[]; verification: VerificationReport };
    assert.deepEqual(
      first.verification.caught.map((c) => c.peerId),
      [peerOf(x.addr)],
    );
    const listed = JSON.parse((await tessera(["reputation", "--ledger", ledger, "--json"])).stdout) as {
      peers: { peerId: string; caught: number; cooldownUntil?: number }[];
    };
    const entry = listed.peers.find((p) => p.peerId === peerOf(x.addr));
    assert.equal(entry?.caught, 1);
    assert.ok((entry?.cooldownUntil ?? 0) > Date.now());
    const second = JSON.parse((await tessera([...args, "--json"])).stdout) as { tokens: number[]; verification: VerificationReport };
    assert.ok(!second.verification.spans.some((s) => s.peerId === peerOf(x.addr)), "the caught node is avoided");
    assert.deepEqual(second.tokens, first.tokens);
    const { stderr } = await tessera(args);
    assert.match(stderr, /verified \(rate 1\): \d+ of \d+ spans/);
  } finally {
    await stopNode(x.proc);
  }
});
