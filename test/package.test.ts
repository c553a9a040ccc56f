// The package as users get it: `npm pack` (which builds dist/ through `prepare`), the tarball
// installed into an empty folder without devDependencies (from the npm cache where it can), then the installed `tessera` command and an ESM script importing
// "tessera-swarm" — neither may need tsx, TypeScript or any other devDependency.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, readdir, realpath, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, relative } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PROMPT = "In the beginning";
/** devDependencies (and what they bring) that must not reach an installed tree. */
const DEV_ONLY = ["tsx", "typescript", "esbuild", "@esbuild", "get-tsconfig", "prettier", "node-llama-cpp", "@node-llama-cpp", "@types/cli-progress"];

/**
 * The environment for child npm and node processes: without the npm_* variables of an enclosing
 * `npm test` (they would configure the nested npm), with this node first on PATH, and with
 * onnxruntime-node's postinstall told not to download its CUDA binaries (it would, and fail offline).
 */
function childEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k) && k !== "NODE_OPTIONS") env[k] = v;
  return { ...env, PATH: `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ""}`, ONNXRUNTIME_NODE_INSTALL: "skip", ...extra };
}

/** Every package name installed under a node_modules folder, nested ones included. */
function installedPackages(nodeModules: string): string[] {
  const names: string[] = [];
  const visit = (dir: string) => {
    if (!existsSync(dir)) return;
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (!entry.isDirectory() || entry.name.startsWith(".")) continue;
      const scoped = entry.name.startsWith("@");
      for (const name of scoped ? readdirSync(join(dir, entry.name)).map((n) => `${entry.name}/${n}`) : [entry.name]) {
        names.push(name);
        visit(join(dir, name, "node_modules"));
      }
    }
  };
  visit(nodeModules);
  return names;
}

async function filesUnder(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => relative(dir, join(e.parentPath, e.name)));
}

describe("the installed package", { timeout: 600_000 }, () => {
  let tmp: string;
  let app: string;
  let tarball: string;
  const timings: Record<string, number> = {};
  const timed = async <T>(name: string, f: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await f();
    } finally {
      timings[name] = Math.round(performance.now() - t0);
    }
  };

  before(async () => {
    tmp = await realpath(await mkdtemp(join(tmpdir(), "tessera-package-")));
    app = join(tmp, "app");
    await mkdir(join(tmp, "pack"));
    await mkdir(app);
    const packed = await timed("npm pack (with the build)", () =>
      run("npm", ["pack", "--json", "--pack-destination", join(tmp, "pack")], { cwd: ROOT, env: childEnv(), maxBuffer: 64 << 20, timeout: 300_000 }),
    );
    // `npm pack --json` prints the prepare script's output first, then the JSON array.
    const [info] = JSON.parse(packed.stdout.slice(packed.stdout.search(/^\[/m))) as { filename: string }[];
    assert.ok(info);
    tarball = join(tmp, "pack", info.filename);
    // --prefer-offline, not --offline: without a lockfile, npm 11 resolves each dependency from its
    // full packument, while `npm ci` caches only the abbreviated ones; so the first run fetches the
    // full packuments of the production dependencies (tarballs come from the cache) and later runs
    // need no network.
    await timed("npm install --omit=dev --prefer-offline", () =>
      run("npm", ["install", "--omit=dev", "--prefer-offline", "--no-audit", "--no-fund", tarball], {
        cwd: app,
        env: childEnv(),
        maxBuffer: 64 << 20,
        timeout: 300_000,
      }),
    );
  });

  after(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
    console.log(`package test timings (ms): ${JSON.stringify(timings)}`);
  });

  test("the tarball holds the build, the bin, the shipped model and docs; no sources, tests, bench or tools", async () => {
    const installed = join(app, "node_modules", "tessera-swarm");
    const files = await filesUnder(installed);
    for (const f of [
      "package.json",
      "bin/tessera.js",
      "dist/index.js",
      "dist/index.d.ts",
      "dist/cli/main.js",
      "models/tessera-kjv/model.safetensors",
      "README.md",
    ]) {
      assert.ok(files.includes(f), `${f} is in the package`);
    }
    assert.deepEqual(
      files.filter((f) => /^(src|test|bench|tools)\//.test(f) || (f.endsWith(".ts") && !f.endsWith(".d.ts"))),
      [],
    );
    assert.deepEqual(
      files.filter((f) => f.includes("attacks")),
      [],
      "the EE attack code is research code, not shipped",
    );
  });

  test("no devDependency is installed: no tsx, no TypeScript", () => {
    const names = installedPackages(join(app, "node_modules"));
    assert.ok(names.includes("onnxruntime-node") && names.includes("libp2p"));
    assert.deepEqual(
      names.filter((n) => DEV_ONLY.some((d) => n === d || n.startsWith(`${d}/`))),
      [],
    );
  });

  let cliText: string;

  test("`tessera generate` runs from node_modules/.bin with the shipped model", async () => {
    const bin = join(app, "node_modules", ".bin", "tessera");
    const env = childEnv({ TESSERA_CACHE: join(tmp, "cache") });
    const { stdout, stderr } = await timed("tessera generate", () =>
      run(bin, ["generate", "--prompt", PROMPT, "--max-tokens", "8", "--temperature", "0"], { cwd: app, env, timeout: 180_000 }),
    );
    assert.match(stderr, /8 generated/);
    cliText = stdout.replace(/\n$/, "");
    assert.ok(cliText.trim().length > 0, `prints text, got ${JSON.stringify(stdout)}`);
  });

  test('an ESM script imports "tessera-swarm" and generates the same greedy tokens', async () => {
    // --temperature 0 is greedy after the CLI's default repetition penalty of 1.1.
    const script = `
      import { GREEDY, LocalPipeline, SHIPPED_MODEL, generate, loadTokenizer, openCheckpoint } from "tessera-swarm";
      const checkpoint = await openCheckpoint(SHIPPED_MODEL.hf);
      const tokenizer = await loadTokenizer(checkpoint);
      const pipeline = await LocalPipeline.load(checkpoint);
      const session = pipeline.openSession();
      const result = await generate(session, tokenizer, tokenizer.encode(${JSON.stringify(PROMPT)}, { addSpecial: true }), { maxTokens: 8, sampling: { ...GREEDY, repetitionPenalty: 1.1 }, seed: 42 });
      session.close();
      await pipeline.release();
      console.log(JSON.stringify({ model: SHIPPED_MODEL.hf, text: result.text, tokens: result.tokens }));
    `;
    await writeFile(join(app, "check.mjs"), script);
    const { stdout } = await timed("library script", () =>
      run(process.execPath, ["check.mjs"], { cwd: app, env: childEnv({ TESSERA_CACHE: join(tmp, "cache") }), timeout: 180_000 }),
    );
    const out = JSON.parse(stdout) as { model: string; text: string; tokens: number[] };
    assert.equal(
      relative(join(app, "node_modules", "tessera-swarm"), out.model),
      join("models", "tessera-kjv"),
      "the shipped model resolves inside the package",
    );
    assert.equal(out.tokens.length, 8);
    assert.equal(out.text, cliText, "library and CLI agree");
  });

  test("its type declarations serve a TypeScript consumer", async () => {
    const tsc = join(ROOT, "node_modules", "typescript", "bin", "tsc");
    await writeFile(
      join(app, "consumer.mts"),
      `import { GREEDY, openCheckpoint, sampleToken, type ModelConfig, type SamplingParams } from "tessera-swarm";
       const params: SamplingParams = { ...GREEDY, temperature: 0.7 };
       const config: ModelConfig = (await openCheckpoint("x")).config;
       export const id: number = sampleToken(new Float32Array(config.vocabSize), params, [], Math.random);
      `,
    );
    // Checks the consumer against the declarations "exports" points at (not every dependency's .d.ts: skipLibCheck).
    const args = [
      "--noEmit",
      "--strict",
      "--skipLibCheck",
      "--module",
      "nodenext",
      "--target",
      "es2022",
      "--typeRoots",
      join(ROOT, "node_modules", "@types"),
      "--types",
      "node",
      "consumer.mts",
    ];
    await timed("tsc consumer", () => run(process.execPath, [tsc, ...args], { cwd: app, env: childEnv() }));
    assert.ok(readFileSync(join(app, "node_modules", "tessera-swarm", "dist", "index.d.ts"), "utf8").includes("openCheckpoint"));
  });
});
