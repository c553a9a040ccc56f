// The `tessera` command as a user runs it.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { workDir } from "./support/fixtures.js";
import { tessera as runTessera } from "./support/cli.js";

const tessera = (...args: string[]) => runTessera(args, { timeout: 120_000 });

test("make-test-model then generate: streams text, and --json reports tokens and timings", async () => {
  const dir = join(workDir, "cli-llama");
  const made = await tessera("make-test-model", "--preset", "tiny-llama", "--out", dir);
  assert.match(made.stdout, /wrote tiny-llama/);

  const args = ["generate", "--model", dir, "--prompt", "The quick brown fox", "-n", "12", "--seed", "7", "--temperature", "0.9"];
  const json = JSON.parse((await tessera(...args, "--json")).stdout);
  assert.equal(json.tokens.length, 12);
  assert.equal(json.finishReason, "length");
  assert.ok(json.timings.decodeTokensPerSecond > 0 && json.timings.prefillTokensPerSecond > 0);

  const streamed = await tessera(...args);
  assert.equal(streamed.stdout, `${json.text}\n`, "streamed text equals the --json text for the same seed");
  assert.match(streamed.stderr, /12 generated at [\d.]+ tok\/s/);

  const other = JSON.parse((await tessera(...args.slice(0, -2), "--seed", "8", "--json")).stdout);
  assert.notDeepEqual(other.tokens, json.tokens, "another seed samples other tokens");
});

/** A Q8_0 GGUF of the tiny Qwen2 preset, and generate arguments for it with --chat and span splits. */
let qwen2Gguf: Promise<string> | undefined;
async function qwen2ChatArgs(): Promise<string[]> {
  const file = join(workDir, "cli-qwen2.gguf");
  qwen2Gguf ??= tessera("make-test-model", "--preset", "tiny-qwen2", "--format", "gguf", "--dtype", "Q8_0", "--out", file).then(() => file);
  return ["generate", "--model", await qwen2Gguf, "--prompt", "hi", "--chat", "-t", "0", "-n", "24", "--weights", "q8", "--splits", "1,2", "--json"];
}

test("GGUF models generate with --chat (the template wraps the prompt) and span splits", async () => {
  const full = JSON.parse((await tessera(...(await qwen2ChatArgs()))).stdout);
  assert.ok(full.text.length > 4, `generated '${full.text}'`);
  assert.ok(full.promptTokens.length > 4, "the chat template wraps the prompt");
});

test("a stop string cuts the output just before it, with finish reason stop", async () => {
  const base = await qwen2ChatArgs();
  const full = JSON.parse((await tessera(...base)).stdout);
  const stop = full.text.slice(2, 4);
  const cut = JSON.parse((await tessera(...base, "--stop", stop)).stdout);
  assert.equal(cut.finishReason, "stop");
  assert.equal(cut.text, full.text.slice(0, full.text.indexOf(stop)));
});

test("a bad model path is a one-line error with a non-zero exit", async () => {
  await assert.rejects(tessera("generate", "--model", join(workDir, "nope"), "--prompt", "x"), (e: { code: number; stderr: string }) => {
    assert.equal(e.code, 1);
    assert.match(e.stderr, /CheckpointError: .*nope: no such file or directory/);
    return true;
  });
});

test("demo starts three node processes, streams a chat through them and shuts them down", async () => {
  const { stdout } = await tessera("demo", "-n", "12");
  assert.equal(stdout.match(/node \d +…\w+ +blocks \[\d+, \d+\)/g)?.length, 3);
  assert.match(stdout, /route: …\w+ \[0,\d\) → …\w+ \[\d,8\)/);
  assert.match(stdout, /\d+ tokens through the swarm at [\d.]+ tok\/s/);
  // The [4, 8) hop has another holder, which checks it.
  assert.match(stdout, /\[verified \(rate 1\): 2 of 2 spans, [1-9]\d* positions recomputed by 1 node in [1-9]\d* checks/);
  assert.match(stdout, /swarm stopped/);
});

test("--logit-bias parses ID=BIAS, -inf, and repeats into one map; bad forms are refused", async () => {
  const { logitBiasArg } = await import("../src/cli/args.js");
  const bias = logitBiasArg("7=-inf", logitBiasArg("42=2.5", logitBiasArg("3=-100")));
  assert.deepEqual(
    [...bias],
    [
      [3, -100],
      [42, 2.5],
      [7, -Infinity],
    ],
  );
  for (const bad of ["42", "x=1", "42=", "-1=2", "42=abc"]) assert.throws(() => logitBiasArg(bad), /expected TOKEN_ID=BIAS/);
});
