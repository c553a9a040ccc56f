// Equivariant encryption over the swarm: nodes serve an L1-encrypted checkpoint under its
// deployment id, a client with the key generates what the plaintext model generates, and the
// nodes only ever see cipher ids (the first) or hidden states (the others).
import "../src/swarm/node20.js";
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { EncryptedSession, VocabCipher } from "../src/ee/cipher.js";
import { encryptModel, type EncryptModelResult } from "../src/ee/encrypt-model.js";
import { deploymentId, type EeKey, newKey, ropeLayoutOf, vocabHash, writeKeyFile } from "../src/ee/key.js";
import { generate } from "../src/engine/generate.js";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { servedCheckpoint } from "../src/engine/runtime.js";
import { GREEDY } from "../src/engine/sampling.js";
import { type Checkpoint, openCheckpoint } from "../src/model/checkpoint.js";
import { checkpointHash } from "../src/model/hash.js";
import { loadTokenizer, type Tokenizer } from "../src/model/tokenizer.js";
import { SwarmClient } from "../src/swarm/client.js";
import { defaultModelId, modelIdFor } from "../src/swarm/model-id.js";
import { SpanNode } from "../src/swarm/node.js";
import { spawnNode } from "../src/swarm/node-process.js";
import type { ServerStep } from "../src/swarm/span-server.js";
import { MissingBlocksError } from "../src/swarm/records.js";
import { ggufModel, hfModel, workDir } from "./support/fixtures.js";
import { tessera as runTessera } from "./support/cli.js";

const tessera = (...args: string[]) => runTessera(args, { timeout: 60_000 });

let plainPath: string;
let plain: Checkpoint;
let tokenizer: Tokenizer;
const keyFile = join(workDir, "ee-swarm.key");
const SECRET = new Uint8Array(32).map((_, i) => (i * 37 + 11) & 0xff);
const encryptedPath = join(workDir, "tiny-llama-ee-l1");
let encrypted: EncryptModelResult;
let key: EeKey;
let nodes: SpanNode[] = [];
/** What each in-process node received, step by step, as decoded from the wire. */
const seen = new Map<SpanNode, ServerStep[]>();
const children: ChildProcess[] = [];

before(async () => {
  plainPath = await hfModel("tiny-llama");
  plain = await openCheckpoint(plainPath);
  tokenizer = await loadTokenizer(plain);
  // A fixed secret keeps the L1 rounding, and so every greedy tie-break, the same run to run.
  const c = plain.config;
  const fields = {
    baseModelHash: await checkpointHash(plain),
    vocabHash: vocabHash(tokenizer),
    vocabSize: c.vocabSize,
    level: "L1" as const,
    ropeLayout: ropeLayoutOf(c),
  };
  await writeKeyFile(keyFile, newKey(fields, SECRET));
  encrypted = await encryptModel({ model: plainPath, keyFile, level: "L1", out: encryptedPath });
  key = encrypted.key;
  const checkpoint = await openCheckpoint(encryptedPath);
  const modelId = await modelIdFor(encryptedPath);
  const model = await servedCheckpoint(checkpoint);
  const start = async (a: number, b: number, bootstrap?: string[]) => {
    const steps: ServerStep[] = [];
    const node = await SpanNode.start({ model, modelId, start: a, end: b, maxSessionLength: 128, bootstrap, onStep: (s) => steps.push(s) });
    seen.set(node, steps);
    return node;
  };
  const first = await start(0, 2);
  nodes = [first, ...(await Promise.all([start(2, 4, first.addresses), start(1, 4, first.addresses)]))];
});

after(async () => {
  for (const c of children) c.kill("SIGKILL");
  for (const n of nodes) await n.stop();
});

const PROMPT = "In the beginning God created";

async function plainGreedy(maxTokens: number) {
  const local = await LocalPipeline.load(plain, { maxSequence: 128 });
  try {
    return await generate(local.openSession(64), tokenizer, tokenizer.encode(PROMPT), { maxTokens, sampling: GREEDY, seed: 0, stopAtEos: false });
  } finally {
    await local.release();
  }
}

test("nodes serving an encrypted checkpoint announce it under the deployment id the key gives", async () => {
  assert.equal(await modelIdFor(encryptedPath), deploymentId(key));
  assert.equal(await modelIdFor(`${encryptedPath}/`), deploymentId(key));
  assert.equal(await modelIdFor(plainPath), defaultModelId(plainPath), "a checkpoint without a manifest keeps its name");
  const gguf = await encryptModel({
    model: await ggufModel("tiny-llama"),
    keyFile: join(workDir, "ee-swarm-gguf.key"),
    level: "L0",
    out: join(workDir, "tiny-llama-ee.gguf"),
  });
  assert.equal(gguf.manifestFile, join(workDir, "tiny-llama-ee.ee-manifest.json"));
  assert.equal(await modelIdFor(join(workDir, "tiny-llama-ee.gguf")), deploymentId(gguf.key), "a GGUF's manifest sits beside it");
  for (const node of nodes) {
    assert.equal(node.info().modelId, encrypted.manifest.deploymentId);
    assert.equal(node.info().checkpointHash, encrypted.manifest.modelHash, "the record names the encrypted weights, not the base model");
  }
  const byName = await SwarmClient.connect(nodes[0]!.addresses, plain.config, { modelId: defaultModelId(plainPath), discoveryTimeoutMs: 3000 });
  try {
    await assert.rejects(byName.openSession(64), MissingBlocksError, "nobody serves the plaintext name");
  } finally {
    await byName.close();
  }
});

test("greedy generation through the encrypted swarm equals the plaintext model's; the first node sees only cipher ids, the others only hidden states", async () => {
  const expected = await plainGreedy(16);
  for (const steps of seen.values()) steps.length = 0;

  const client = await SwarmClient.connect(nodes[0]!.addresses, plain.config, { modelId: deploymentId(key), stepTimeoutMs: 10_000 });
  try {
    const cipher = VocabCipher.fromKey(key, tokenizer);
    const session = new EncryptedSession(await client.openSession(64), cipher);
    const result = await generate(session, tokenizer, tokenizer.encode(PROMPT), { maxTokens: 16, sampling: GREEDY, seed: 0, stopAtEos: false });
    session.close();
    assert.deepEqual(result.tokens, expected.tokens);
    assert.equal(result.text, expected.text);

    // The first node's view: every id it received, in order.
    const received = seen.get(nodes[0]!)!.flatMap((s) => {
      assert.ok(s.tokens && !s.hidden, "block 0 takes token ids");
      return Array.from(s.tokens);
    });
    const fed = [...result.promptTokens, ...result.tokens].slice(0, received.length);
    assert.ok(
      received.length >= result.promptTokens.length + result.tokens.length - 1,
      `the first node ran the prompt and every fed-back token (${received.length} ids)`,
    );
    assert.deepEqual(received, cipher.encrypt(fed), "it received exactly the cipher ids of the plaintext");
    assert.notDeepEqual(received, fed);
    const same = received.filter((id, i) => id === fed[i]).length;
    assert.ok(same <= received.length / 4, `${same} of ${received.length} ids coincide with their plaintext (fixed points of π)`);

    // The other nodes' view: hidden states only, never ids.
    const later = nodes.slice(1).flatMap((n) => seen.get(n)!);
    assert.ok(later.length >= result.tokens.length, `the later span ran every step (${later.length} steps)`);
    for (const s of later) assert.ok(s.hidden && !s.tokens, "a node after the first receives hidden states, never ids");
  } finally {
    await client.close();
  }
});

/** Two `tessera node` processes serving the encrypted checkpoint, started once for the tests that need them. */
let nodeProcesses: Promise<string> | undefined;
function encryptedSwarm(): Promise<string> {
  nodeProcesses ??= (async () => {
    const first = await spawnNode(encryptedPath, 0, 2, ["--max-session", "512"]);
    children.push(first.proc);
    const second = await spawnNode(encryptedPath, 2, 4, ["--max-session", "512", "--bootstrap", first.addr]);
    children.push(second.proc);
    return first.addr;
  })();
  return nodeProcesses;
}

const generateArgs = () => ["generate", "--model", plainPath, "--prompt", PROMPT, "-t", "0", "-n", "12", "--json"];

test("tessera generate --key: through node processes and on this machine it generates what plaintext generate does", async () => {
  const bootstrap = await encryptedSwarm();
  const args = generateArgs();
  const [viaSwarm, local, onThisMachine] = await Promise.all([
    tessera(...args, "--key", keyFile, "--swarm", bootstrap),
    tessera(...args, "--key", keyFile, "--encrypted-model", encryptedPath),
    tessera(...args),
  ]);
  const expected = JSON.parse(onThisMachine.stdout);
  assert.ok(expected.tokens.length > 0);
  assert.deepEqual(JSON.parse(viaSwarm.stdout).tokens, expected.tokens);
  assert.deepEqual(JSON.parse(local.stdout).tokens, expected.tokens);
});

test("tessera generate --key: a key for another deployment or tokenizer, a missing key file and --key without a target are each refused by name", async () => {
  const bootstrap = await encryptedSwarm();
  const args = generateArgs();
  // Another key for the same model: the nodes are not found under its deployment id.
  const { v: _v, secret: _secret, ...fields } = key;
  const other = newKey(fields);
  const otherKey = join(workDir, "ee-swarm-other.key");
  await writeKeyFile(otherKey, other);
  // A key made for another tokenizer.
  const foreignKey = join(workDir, "ee-swarm-foreign.key");
  await writeKeyFile(foreignKey, newKey({ ...fields, vocabHash: "0".repeat(64) }));
  const fails = (extra: string[], pattern: RegExp) =>
    assert.rejects(tessera(...args, ...extra), (e: { code: number; stderr: string }) => {
      assert.equal(e.code, 1);
      assert.match(e.stderr, pattern);
      return true;
    });
  await Promise.all([
    fails(
      ["--key", otherKey, "--swarm", bootstrap],
      new RegExp(`MissingBlocksError: no node found through .* under model id ${deploymentId(other)} \\(the deployment id of .*ee-swarm-other\\.key`),
    ),
    fails(["--key", foreignKey, "--swarm", bootstrap], /EeKeyError: .*ee-swarm-foreign\.key is not a key for .*another tokenizer/),
    fails(["--key", join(workDir, "missing.key"), "--swarm", bootstrap], /EeKeyError: .*missing\.key: cannot read key file/),
    fails(["--key", otherKey, "--encrypted-model", encryptedPath], /EeKeyError: .*ee-swarm-other\.key is not the key .*tiny-llama-ee-l1 was encrypted with/),
    fails(["--key", keyFile], /--key runs through nodes serving the encrypted checkpoint \(--swarm ADDR\) or on this machine with --encrypted-model/),
  ]);
});
