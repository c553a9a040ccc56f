// Runs the `tessera` command as spawnNode does: from the TypeScript sources (node --import tsx
// src/cli/main.ts), so tests exercise the code in the tree and never a stale build. bin/tessera.js
// runs the compiled dist/ (what an installed package runs); test/package.test.ts covers that path.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { cliArgs } from "../../src/swarm/node-process.js";

export { cliArgs };

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
