// openModelInfo: what a swarm client reads of a model (config, tokenizer, model id), from a folder
// that holds no weights and from a GGUF file whose tensor data is gone; and the CLI's swarm
// commands run from such a folder.
import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, readdir, readFile, stat, truncate, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { test } from "node:test";
import { MANIFEST_FILE_NAME } from "../src/ee/manifest.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { readGguf } from "../src/model/gguf.js";
import { CLIENT_FILES, openModelInfo } from "../src/swarm/model-info.js";
import { loadTokenizer } from "../src/model/tokenizer.js";
import { CheckpointError } from "../src/model/types.js";
import { defaultModelId, modelIdFor } from "../src/swarm/model-id.js";
import { spawnNode, stopNode } from "../src/swarm/node-process.js";
import { ggufModel, hfModel, workDir } from "./support/fixtures.js";
import { tessera as runTessera } from "./support/cli.js";

const TEXT = "In the beginning God created the heaven and the earth.";
const tessera = (...args: string[]) => runTessera(args, { timeout: 120_000 });

/** A folder named like `full` (so it has the same default model id) holding only its client files. */
async function weightlessCopy(full: string, extra: string[] = []): Promise<string> {
  const dir = join(await mkdtemp(join(workDir, "client-")), basename(full));
  await mkdir(dir);
  const present = new Set(await readdir(full));
  for (const name of [...CLIENT_FILES, ...extra]) {
    if (present.has(name)) await copyFile(join(full, name), join(dir, name));
  }
  return dir;
}

/** Asserts a one-line CheckpointError that names `path` and matches `pattern`. */
function checkpointError(path: string, pattern: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof CheckpointError, `a CheckpointError, got ${String(e)}`);
    assert.ok(e.message.startsWith(`${path}: `), `names ${path}: ${e.message}`);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes("\n"), `one line: ${e.message}`);
    return true;
  };
}

test("a Hugging Face folder without weights: openModelInfo gives the checkpoint's config, tokens and model id; openCheckpoint refuses it", async () => {
  const full = await hfModel("tiny-llama");
  const dir = await weightlessCopy(full);
  assert.deepEqual((await readdir(dir)).sort(), ["config.json", "tokenizer.json", "tokenizer_config.json"]);

  const checkpoint = await openCheckpoint(full);
  const expectedTokenizer = await loadTokenizer(checkpoint);
  const info = await openModelInfo(dir);
  const tokenizer = await info.tokenizer();
  assert.equal(info.format, "hf");
  assert.deepEqual(info.config, checkpoint.config);
  assert.deepEqual(tokenizer.encode(TEXT), expectedTokenizer.encode(TEXT));
  assert.ok(tokenizer.encode(TEXT).length > 4);
  const chat = [{ role: "user", content: TEXT }];
  assert.equal(tokenizer.applyChatTemplate(chat, { addGenerationPrompt: true }), expectedTokenizer.applyChatTemplate(chat, { addGenerationPrompt: true }));
  assert.deepEqual(tokenizer.eosIds, expectedTokenizer.eosIds);
  assert.equal(info.modelId, await modelIdFor(full), "the id the nodes serving the full folder announce");
  assert.equal(info.modelId, defaultModelId(full));
  assert.equal(info.manifest, undefined);
  assert.deepEqual(
    info.files,
    ["config.json", "tokenizer.json", "tokenizer_config.json"].map((f) => join(dir, f)),
  );
  assert.equal(await info.tokenizer(), tokenizer, "loaded once");

  await assert.rejects(openCheckpoint(dir), checkpointError(dir, /no model\.safetensors or model\.safetensors\.index\.json/));
});

test("missing config.json or tokenizer.json is a one-line error naming the folder and the file", async () => {
  const full = await hfModel("tiny-llama");
  const noConfig = join(await mkdtemp(join(workDir, "no-config-")), "m");
  await mkdir(noConfig);
  await copyFile(join(full, "tokenizer.json"), join(noConfig, "tokenizer.json"));
  await assert.rejects(openModelInfo(noConfig), checkpointError(noConfig, /missing config\.json/));

  const noTokenizer = join(await mkdtemp(join(workDir, "no-tokenizer-")), "m");
  await mkdir(noTokenizer);
  await copyFile(join(full, "config.json"), join(noTokenizer, "config.json"));
  await assert.rejects(openModelInfo(noTokenizer), checkpointError(noTokenizer, /missing tokenizer\.json/));
  // What needs no tokenizer (the swarm dashboard) can still read the config and the id.
  const info = await openModelInfo(noTokenizer, { tokenizer: false });
  assert.equal(info.config.numLayers, 4);
  assert.equal(info.modelId, "m");
  await assert.rejects(info.tokenizer(), checkpointError(noTokenizer, /missing tokenizer\.json/));

  const nowhere = join(workDir, "no-such-model");
  await assert.rejects(openModelInfo(nowhere), checkpointError(nowhere, /no such file or directory/));
});

test("with an EE manifest the weightless folder's model id is the deployment id, as modelIdFor says", async () => {
  const full = await hfModel("tiny-llama");
  const dir = await weightlessCopy(full);
  const hex = (c: string) => c.repeat(64);
  const manifest = { baseModelHash: hex("a"), level: "L1", ropeLayout: "half", deploymentId: hex("b"), modelHash: hex("c") };
  await writeFile(join(dir, MANIFEST_FILE_NAME), JSON.stringify(manifest));
  const info = await openModelInfo(dir);
  assert.equal(info.modelId, hex("b"));
  assert.equal(info.modelId, await modelIdFor(dir));
  assert.equal(info.manifest?.deploymentId, hex("b"));
  assert.ok(info.files.includes(join(dir, MANIFEST_FILE_NAME)));
});

test("a GGUF file: openModelInfo needs only its header; a copy whose tensor data is zeroed, or cut off, gives the same config and tokens", async () => {
  for (const preset of ["tiny-llama", "tiny-llama3"]) {
    const full = await ggufModel(preset);
    const { dataOffset } = await readGguf(full);
    const { size } = await stat(full);
    assert.ok(dataOffset < size / 2, `${preset}: the header (${dataOffset} bytes) is the smaller part of the file (${size})`);
    // The header, then a hole where the tensor data was: the same layout, no weights.
    const copy = join(await mkdtemp(join(workDir, "gguf-header-")), basename(full));
    const header = (await readFile(full)).subarray(0, dataOffset);
    await writeFile(copy, header);
    await truncate(copy, size);

    const checkpoint = await openCheckpoint(full);
    const info = await openModelInfo(copy);
    assert.equal(info.format, "gguf");
    // rope_freqs.weight (tiny-llama3) is tensor data; only the nodes' rotary embedding uses it.
    const { ropeFreqFactors, ...config } = checkpoint.config;
    assert.equal(ropeFreqFactors !== undefined, preset === "tiny-llama3");
    assert.deepEqual(info.config, config);
    const tokenizer = await info.tokenizer();
    assert.deepEqual(tokenizer.encode(TEXT), (await loadTokenizer(checkpoint)).encode(TEXT));
    assert.equal(info.modelId, await modelIdFor(full));
    assert.deepEqual(info.files, [copy]);

    // The copy really holds no weights: the full file's embedding is not zero, the copy's is.
    const zeroed = await openCheckpoint(copy);
    const nonZero = (values: Float32Array) => values.some((v) => v !== 0);
    assert.ok(nonZero(await checkpoint.readF32("token_embd.weight")));
    assert.ok(!nonZero(await zeroed.readF32("token_embd.weight")));

    // Cut right after the header, the file is no checkpoint at all, but a client's model still.
    const cut = `${copy}.cut.gguf`;
    await writeFile(cut, header);
    await assert.rejects(openCheckpoint(cut), checkpointError(cut, /past the end of the file/));
    assert.deepEqual((await openModelInfo(cut)).config, config);
  }
});

test("generate, eval and swarm through a node, from a folder without weights, match the full checkpoint on this machine", async () => {
  const full = await hfModel("tiny-llama");
  const dir = await weightlessCopy(full);
  const node = await spawnNode(full, 0, 4, ["--max-session", "512"]);
  try {
    const data = join(dir, "..", "eval.txt");
    await writeFile(data, `${TEXT} `.repeat(8));
    const gen = ["generate", "--prompt", TEXT, "--temperature", "0", "--max-tokens", "8"];
    const evalArgs = ["eval", "-d", data, "--window", "32", "--json"];
    const withManifest = await weightlessCopy(full);
    await writeFile(
      join(withManifest, MANIFEST_FILE_NAME),
      JSON.stringify({ baseModelHash: "a".repeat(64), level: "L0", ropeLayout: "half", deploymentId: "b".repeat(64), modelHash: "c".repeat(64) }),
    );
    const [viaSwarm, local, evalSwarm, evalLocal, dashboard, encrypted] = await Promise.all([
      tessera(...gen, "--model", dir, "--swarm", node.addr),
      tessera(...gen, "--model", full),
      tessera(...evalArgs, "--model", dir, "--swarm", node.addr),
      tessera(...evalArgs, "--model", full),
      tessera("swarm", "--model", dir, "--bootstrap", node.addr),
      tessera(...gen, "--model", withManifest, "--swarm", node.addr).then(
        () => assert.fail("generate without --key from an encrypted deployment's folder must fail"),
        (e: { code: number; stderr: string }) => e,
      ),
    ]);
    assert.match(viaSwarm.stderr, /route: /, "it ran through the node");
    assert.ok(local.stdout.trim().length > 0, `local generate printed '${local.stdout}'`);
    assert.equal(viaSwarm.stdout, local.stdout);

    const swarmResult = JSON.parse(evalSwarm.stdout);
    const localResult = JSON.parse(evalLocal.stdout);
    assert.equal(swarmResult.predicted, localResult.predicted);
    assert.ok(
      Math.abs(swarmResult.perplexity - localResult.perplexity) < 1e-3 * localResult.perplexity,
      `swarm ${swarmResult.perplexity} vs local ${localResult.perplexity}`,
    );

    assert.match(dashboard.stdout, new RegExp(`swarm of ${defaultModelId(full)}: 1 node online, 4 blocks`));

    assert.equal(encrypted.code, 1);
    assert.match(encrypted.stderr, /is an encrypted deployment .*pass --key/);
  } finally {
    await stopNode(node.proc);
  }
});
