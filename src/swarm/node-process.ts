// Runs `tessera node` as a child process (the demo, tests, local swarms).
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

/** The CLI as this module runs: from the sources (through tsx) in a checkout, from dist/ when installed. */
const CLI = import.meta.url.endsWith(".ts")
  ? ["--import", import.meta.resolve("tsx"), fileURLToPath(new URL("../cli/main.ts", import.meta.url))]
  : [fileURLToPath(new URL("../cli/main.js", import.meta.url))];

/** The node arguments that run `tessera ...args` the same way: spawn(process.execPath, cliArgs(...)). */
export function cliArgs(...args: string[]): string[] {
  return [...CLI, ...args];
}

export interface NodeProcess {
  proc: ChildProcess;
  /** The multiaddr the node printed as `listening <addr>`. */
  addr: string;
  /** Everything the node wrote to stderr so far (its log). */
  stderr(): string;
}

/** Starts a node serving [start, end) of `model`; resolves once it listens. */
export function spawnNode(model: string, start: number, end: number, extraArgs: string[] = []): Promise<NodeProcess> {
  return spawnListening(cliArgs("node", "--model", model, "--blocks", `${start}:${end}`, ...extraArgs), `node [${start}, ${end})`);
}

/** Runs `node ...args` (a program that prints `listening <multiaddr>`); resolves once it listens, rejects if it exits first. */
export function spawnListening(args: string[], what: string): Promise<NodeProcess> {
  // glibc gives each thread that allocates its own arena and keeps what a flood freed there; a
  // node has an engine thread, so its processes run with two arenas (unless the caller set it).
  const proc = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"], env: { MALLOC_ARENA_MAX: "2", ...process.env } });
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    proc.stdout.on("data", (d) => {
      out += d;
      const m = /listening (\S+)/.exec(out);
      if (m?.[1]) resolve({ proc, addr: m[1], stderr: () => err });
    });
    proc.stderr.on("data", (d) => (err += d));
    proc.on("exit", (code) => reject(new Error(`${what} exited with code ${code}: ${err.trim()}`)));
  });
}

/** SIGTERM (clean shutdown), then SIGKILL after 5 s. */
export function stopNode(proc: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
    const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
    proc.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    proc.kill("SIGTERM");
  });
}
