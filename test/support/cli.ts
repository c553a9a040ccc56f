// Runs the `tessera` command from the TypeScript sources (node --import tsx src/cli/main.ts), so
// tests exercise the code in the tree and never a stale build. bin/tessera.js runs the compiled
// dist/ (what an installed package runs); test/package.test.ts covers that path.
import { type ChildProcess, execFile, spawn, type SpawnOptions } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

/** src/cli/main.ts. */
export const CLI_SOURCE = fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url));

/** tsx's loader, resolved from here so a child started in another working directory finds it. */
const TSX = import.meta.resolve("tsx");

/** The node arguments that run `tessera ...args` from the sources: spawn(process.execPath, cliArgs(...)). */
export function cliArgs(...args: string[]): string[] {
  return ["--import", TSX, CLI_SOURCE, ...args];
}

const run = promisify(execFile);

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Milliseconds; default 120 s. */
  timeout?: number;
}

/** Runs `tessera ...args` to completion: its stdout and stderr; rejects when it exits non-zero. */
export function tessera(args: string[], options: RunOptions = {}): Promise<{ stdout: string; stderr: string }> {
  return run(process.execPath, cliArgs(...args), {
    env: options.env ?? process.env,
    cwd: options.cwd,
    timeout: options.timeout ?? 120_000,
    maxBuffer: 64 << 20,
  });
}

/** Starts `tessera ...args` as a child process (stdio piped unless options say otherwise). */
export function spawnTessera(args: string[], options: SpawnOptions = {}): ChildProcess {
  return spawn(process.execPath, cliArgs(...args), { env: process.env, ...options });
}
