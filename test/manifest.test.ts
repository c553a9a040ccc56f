// Model manifests: per-tensor and per-block content hashes that a node checks its span against at
// load, announces, and that a client can require of every node on its route.
import "../src/swarm/node20.js";
import assert from "node:assert/strict";
import { cpSync, openSync, readSync, writeSync, closeSync, writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { servedCheckpoint } from "../src/engine/runtime.js";
import { type Checkpoint, openCheckpoint } from "../src/model/checkpoint.js";
import { readSafetensorsHeader } from "../src/model/safetensors.js";
import { createSwarmHost, joinSwarm, type SwarmHost } from "../src/swarm/host.js";
import { Libp2pSpanProvider } from "../src/swarm/libp2p-provider.js";
import { SpanNode } from "../src/swarm/node.js";
import { spawnNode, stopNode } from "../src/swarm/node-process.js";
import {
  buildManifest,
  checkedModel,
  checkSpan,
  defaultManifestPath,
  ManifestError,
  type ModelManifest,
  readManifest,
  writeManifest,
} from "../src/verify/manifest.js";
import { ggufModel, hfModel, workDir } from "./support/fixtures.js";
import { tessera } from "./support/cli.js";

let hfPath: string;
let checkpoint: Checkpoint;
let manifest: ModelManifest;
/** A copy of the HF folder with one byte of blk.1.ffn_down.weight changed. */
let tamperedPath: string;

before(async () => {
  hfPath = await hfModel("tiny-llama");
  checkpoint = await openCheckpoint(hfPath);
  manifest = await buildManifest(checkpoint, "f32");
  tamperedPath = join(workDir, "tiny-llama-tampered");
  cpSync(hfPath, tamperedPath, { recursive: true });
  const file = join(tamperedPath, "model.safetensors");
  const info = (await readSafetensorsHeader(file)).get("model.layers.1.mlp.down_proj.weight");
  assert.ok(info, "the fixture stores the tensor under its Hugging Face name");
  const fd = openSync(file, "r+");
  const byte = Buffer.alloc(1);
  readSync(fd, byte, 0, 1, info.offset + 1);
  byte[0]! ^= 0x40;
  writeSync(fd, byte, 0, 1, info.offset + 1);
  closeSync(fd);
});

test("a manifest has a hash per tensor and per block, for the embedding and the head, and an id over all of it", () => {
  assert.equal(manifest.blocks.length, 4);
  assert.ok(manifest.tensors["blk.3.attn_q.weight"] && manifest.tensors["token_embd.weight"] && manifest.tensors["output.weight"]);
  assert.equal(new Set(manifest.blocks).size, 4, "blocks with different weights hash differently");
  assert.match(manifest.id, /^[0-9a-f]{64}$/);
});

test("the same weights stored another way share a manifest; a GGUF conversion or another weight format does not", async () => {
  const sharded = await buildManifest(await openCheckpoint(await hfModel("tiny-llama", "F32", 64 << 10)), "f32");
  assert.equal(sharded.id, manifest.id, "sharded safetensors hold the same values");
  // llama.cpp's GGUF permutes q/k rows for interleaved rotary and stores eps as f32: other numbers.
  const gguf = await buildManifest(await openCheckpoint(await ggufModel("tiny-llama")), "f32");
  assert.notEqual(gguf.id, manifest.id);
  assert.equal(gguf.tensors["blk.0.ffn_down.weight"], manifest.tensors["blk.0.ffn_down.weight"], "unpermuted tensors hash the same");
  assert.notEqual((await buildManifest(checkpoint, "q8")).id, manifest.id);
});

test("a span is checked against the manifest reading only its tensors: a changed tensor is named", async () => {
  const tampered = await openCheckpoint(tamperedPath);
  await checkSpan(tampered, manifest, 2, 4, "f32"); // blocks 2-3 and the head are untouched
  await assert.rejects(checkSpan(tampered, manifest, 0, 2, "f32"), (e: Error) => {
    assert.ok(e instanceof ManifestError);
    assert.match(e.message, /tensor 'blk\.1\.ffn_down\.weight' hashes to [0-9a-f]{16}…, the manifest says [0-9a-f]{16}…/);
    return true;
  });
  await assert.rejects(checkSpan(checkpoint, manifest, 0, 4, "q4"), /the manifest is for weight format f32, this node runs q4/);
});

test("a manifest whose content does not match its id is refused", async () => {
  const file = join(workDir, "forged-manifest.json");
  await writeManifest(file, { ...manifest, blocks: [...manifest.blocks.slice(1), manifest.blocks[0]!] });
  await assert.rejects(readManifest(file), /manifest id .* does not match its content/);
  writeFileSync(file, "{");
  await assert.rejects(readManifest(file), /not a readable JSON manifest/);
});

let nodes: SpanNode[] = [];
let client: SwarmHost;
after(async () => {
  await client?.stop();
  for (const n of nodes) await n.stop();
});

test("a client that asks for a manifest routes only through nodes announcing it, and says why the others are left out", async () => {
  const model = await servedCheckpoint(checkpoint, { maxSequence: 64 });
  const other = await buildManifest(checkpoint, "f16");
  const base = { modelId: "manifest", start: 0, end: 4, maxSessionLength: 64 };
  const checked = await SpanNode.start({ ...base, model: checkedModel(model, checkpoint, manifest, "f32"), manifestId: manifest.id });
  const bootstrap = [checked.addresses[0]!];
  nodes = [
    checked,
    ...(await Promise.all([SpanNode.start({ ...base, model, bootstrap }), SpanNode.start({ ...base, model, bootstrap, manifestId: other.id })])),
  ];
  client = await createSwarmHost({ role: "client" });
  await joinSwarm(client, bootstrap);
  const c = checkpoint.config;
  const rejected = new Map<string, string>();
  const provider = new Libp2pSpanProvider(client, {
    modelId: "manifest",
    manifestId: manifest.id,
    hiddenSize: c.hiddenSize,
    vocabSize: c.vocabSize,
    numBlocks: c.numLayers,
    onRejectedRecord: (peer, reason) => rejected.set(peer, reason),
  });
  const records = await provider.records();
  assert.deepEqual(
    records.map((r) => r.peerId),
    [checked.info().peerId],
  );
  assert.match(rejected.get(nodes[1]!.info().peerId) ?? "", /announces no manifest, and one is required/);
  assert.match(rejected.get(nodes[2]!.info().peerId) ?? "", /announces manifest [0-9a-f]{16}…, not [0-9a-f]{16}…/);
});

test("tessera manifest writes the file and prints its id; tessera node --manifest refuses a checkpoint that does not match, naming the tensor", async () => {
  const out = join(workDir, "cli-manifest.json");
  const { stdout } = await tessera(["manifest", "-m", hfPath, "-o", out]);
  assert.match(stdout, new RegExp(`manifest ${manifest.id}`));
  assert.equal(JSON.parse(readFileSync(out, "utf8")).id, manifest.id);
  await assert.rejects(spawnNode(tamperedPath, 0, 4, ["--manifest", out]), /ManifestError: .*tensor 'blk\.1\.ffn_down\.weight' hashes to/);
  const node = await spawnNode(hfPath, 0, 4, ["--manifest", out]);
  try {
    const { stdout: text } = await tessera(["generate", "-m", hfPath, "-p", "hi", "-t", "0", "-n", "4", "--swarm", node.addr, "--manifest", out, "--json"]);
    assert.ok(JSON.parse(text).tokens.length > 0, "generates through the node that checked its span");
  } finally {
    await stopNode(node.proc);
  }
});

test("tessera encrypt-model also writes the encrypted checkpoint's model manifest, which its tensors match", async () => {
  const out = join(workDir, "manifest-ee-l1");
  const { stdout } = await tessera(["encrypt-model", "-m", hfPath, "--key", join(workDir, "manifest-ee.key"), "--level", "L1", "-o", out]);
  const file = defaultManifestPath(out);
  const encryptedManifest = await readManifest(file);
  assert.match(stdout, new RegExp(`model manifest ${encryptedManifest.id}`));
  assert.notEqual(encryptedManifest.id, manifest.id, "other weights, another manifest");
  const encrypted = await openCheckpoint(out);
  await checkSpan(encrypted, encryptedManifest, 0, encrypted.config.numLayers, "f32");
});
