// The honest side of bench/abuse.ts: `tessera node` processes on loopback, their RSS, the honest
// client (SwarmClient + RouteSession, greedy generations), and the attacker child process.
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { argmax } from "../src/engine/sampling.js";
import type { ModelConfig } from "../src/model/types.js";
import { SwarmClient } from "../src/swarm/client.js";
import { type NodeProcess, spawnNode, stopNode } from "../src/swarm/node-process.js";
import type { RouteSession } from "../src/swarm/route-session.js";
import { ledgerTrust } from "../src/swarm/trust.js";
import { ReputationLedger } from "../src/verify/ledger.js";
import type { AttackParams, NodeRef } from "./_abuse-attacker.js";

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const errText = (e: unknown) => (e instanceof Error ? `${e.name}: ${e.message}` : String(e));

/** Every child this benchmark started, killed when it exits however it exits. */
const children = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    for (const c of children) c.kill("SIGKILL");
    process.exit(130);
  });
}

export interface SwarmNode extends NodeRef {
  name: string;
  proc: ChildProcess;
  pid: number;
  stderr(): string;
}

function ref(n: NodeProcess, name: string, start: number, end: number): SwarmNode {
  const port = Number(/\/tcp\/(\d+)/.exec(n.addr)?.[1]);
  const peerId = /\/p2p\/(\S+)$/.exec(n.addr)?.[1] ?? "";
  children.add(n.proc);
  return { name, start, end, addr: n.addr, port, peerId, proc: n.proc, pid: n.proc.pid!, stderr: n.stderr };
}

/** Starts the first span alone, then the others joining through it. */
export async function startNodes(model: string, spans: [number, number][], extraArgs: string[] = []): Promise<SwarmNode[]> {
  const [first, ...rest] = spans;
  if (!first) throw new Error("no spans");
  const a = ref(await spawnNode(model, first[0], first[1], extraArgs), `node [${first[0]}, ${first[1]})`, ...first);
  const others = await Promise.allSettled(
    rest.map(async ([s, e]) => ref(await spawnNode(model, s, e, [...extraArgs, "--bootstrap", a.addr]), `node [${s}, ${e})`, s, e)),
  );
  const failed = others.find((o) => o.status === "rejected");
  const started = [a, ...others.flatMap((o) => (o.status === "fulfilled" ? [o.value] : []))];
  if (failed) {
    await stopNodes(started);
    throw (failed as PromiseRejectedResult).reason;
  }
  return started;
}

export async function stopNodes(nodes: readonly SwarmNode[]): Promise<void> {
  await Promise.all(nodes.map((n) => stopNode(n.proc)));
  for (const n of nodes) children.delete(n.proc);
}

export function alive(node: SwarmNode): boolean {
  return node.proc.exitCode === null && node.proc.signalCode === null;
}

/** VmRSS of a process in MiB, or undefined once it is gone. */
export function rssMb(pid: number): number | undefined {
  try {
    const kb = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
    return kb === undefined ? undefined : Number(kb) / 1024;
  } catch {
    return undefined;
  }
}

/** Samples the RSS of some processes every `intervalMs`, keeping each one's peak. */
export class RssSampler {
  readonly peak = new Map<number, number>();
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly pids: number[],
    private readonly intervalMs = 100,
  ) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    this.sample();
    clearInterval(this.timer);
  }

  private sample(): void {
    for (const pid of this.pids) {
      const mb = rssMb(pid);
      if (mb !== undefined && mb > (this.peak.get(pid) ?? 0)) this.peak.set(pid, mb);
    }
  }
}

/** One honest generation. */
export interface Generation {
  ok: boolean;
  /** Wall time, ms (connect included for a fresh client). */
  ms: number;
  /** The tokens matched the local engine's greedy continuation. */
  correct?: boolean;
  error?: string;
  /** The node's error code (SpanFailure.code), or the error's name. */
  code?: string;
  failovers: number;
  /** Why the route failed over (the hops' errors), for the first few failovers. */
  failoverErrors: string[];
  /** Nodes pushed hidden states to each other (chained: true), or the client relayed every hop. */
  chained: boolean;
}

export interface HonestOptions {
  bootstrap: string;
  config: ModelConfig;
  modelId: string;
  prompt: number[];
  /** The greedy continuation the local engine computes. */
  reference: number[];
  /** A new SwarmClient (own host, connection, DHT lookups) for every generation, as arriving users. */
  fresh: boolean;
  stepTimeoutMs: number;
  generationTimeoutMs: number;
  maxLength: number;
  /** The client's reputation ledger (as `tessera generate` keeps one): what it learnt of the nodes before the attack. */
  ledger: string;
}

function closeQuietly(session: RouteSession | undefined): void {
  try {
    session?.close();
  } catch {
    // a session that never opened fully: nothing to close
  }
}

/** The honest user: greedy generations of `reference.length` tokens through the swarm. */
export class HonestClient {
  private client?: SwarmClient;
  private count = 0;
  private readonly ledger: ReputationLedger;

  constructor(readonly opts: HonestOptions) {
    this.ledger = ReputationLedger.open(opts.ledger);
  }

  private connect(): Promise<SwarmClient> {
    return SwarmClient.connect([this.opts.bootstrap], this.opts.config, { modelId: this.opts.modelId, stepTimeoutMs: this.opts.stepTimeoutMs });
  }

  async generate(): Promise<Generation> {
    const t0 = performance.now();
    // Every other generation chained: both ways a route runs (pushes between nodes, relays by the client) are exercised.
    const chained = this.count++ % 2 === 0;
    let failovers = 0;
    const failoverErrors: string[] = [];
    let session: RouteSession | undefined;
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    const work = async () => {
      const client = this.opts.fresh ? await this.connect() : (this.client ??= await this.connect());
      try {
        if (timedOut) throw new Error("timed out while connecting");
        session = await client.openSession(this.opts.maxLength, {
          chained,
          trust: ledgerTrust(this.ledger, { modelId: this.opts.modelId }),
          onFailover: (e) => {
            if (failovers++ < 3) failoverErrors.push(errText(e.error).slice(0, 160));
          },
        });
        let logits = await session.append(this.opts.prompt);
        const tokens: number[] = [];
        for (let i = 0; i < this.opts.reference.length; i++) {
          tokens.push(argmax(logits));
          if (i + 1 < this.opts.reference.length) logits = await session.append([tokens.at(-1)!]);
        }
        return tokens;
      } finally {
        // Also when the generation timed out meanwhile: nothing it opened outlives it.
        closeQuietly(session);
        if (this.opts.fresh) await client.close().catch(() => {});
      }
    };
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        timedOut = true;
        reject(Object.assign(new Error(`no generation within ${this.opts.generationTimeoutMs} ms`), { code: "GENERATION_TIMEOUT" }));
      }, this.opts.generationTimeoutMs);
    });
    try {
      const tokens = await Promise.race([work(), deadline]);
      const correct = tokens.every((t, i) => t === this.opts.reference[i]);
      return {
        ok: correct,
        correct,
        ms: performance.now() - t0,
        failovers,
        failoverErrors,
        chained,
        ...(correct ? {} : { error: "tokens differ from the local engine's", code: "WRONG_TOKENS" }),
      };
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      const what =
        typeof code === "string"
          ? code
          : errText(e)
              .replace(/\/p2p\/\w+|12D3Koo\w+/g, "<peer>")
              .replace(/\d+/g, "N")
              .slice(0, 90);
      return { ok: false, ms: performance.now() - t0, failovers, failoverErrors, chained, error: errText(e).slice(0, 300), code: what };
    } finally {
      clearTimeout(timer);
      closeQuietly(session); // a timed-out generation's session: its steps fail, and its work ends
    }
  }

  /** `n` generations one after another. */
  async run(n: number): Promise<Generation[]> {
    const out: Generation[] = [];
    for (let i = 0; i < n; i++) out.push(await this.generate());
    return out;
  }

  /** Generations one after another while `active()` (at least `min`). */
  async runWhile(active: () => boolean, min = 1): Promise<Generation[]> {
    const out: Generation[] = [];
    while (out.length < min || active()) out.push(await this.generate());
    return out;
  }

  async close(): Promise<void> {
    await this.client?.close().catch(() => {});
    this.client = undefined;
    this.ledger.close();
  }
}

export interface AttackerProcess {
  /** Resolves once the attacker says the attack is under way. */
  ready: Promise<void>;
  /** What the attacker observed (its `result` line), once it exited. */
  done: Promise<Record<string, unknown>>;
  readonly finished: boolean;
  logs: string[];
  kill(): void;
}

const ATTACKER = fileURLToPath(new URL("./_abuse-attacker.ts", import.meta.url));

export function spawnAttacker(attack: string, params: AttackParams, timeoutMs: number): AttackerProcess {
  const proc = spawn(process.execPath, ["--import", import.meta.resolve("tsx"), ATTACKER, attack, JSON.stringify(params)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(proc);
  const logs: string[] = [];
  let stderr = "";
  let result: Record<string, unknown> | undefined;
  let finished = false;
  let markReady!: () => void;
  const ready = new Promise<void>((r) => (markReady = r));
  let buffer = "";
  proc.stdout.on("data", (d: Buffer) => {
    buffer += d.toString();
    for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (line === "ready") markReady();
      else if (line.startsWith("result ")) result = JSON.parse(line.slice(7)) as Record<string, unknown>;
      else if (line.startsWith("log ")) logs.push(line.slice(4));
    }
  });
  proc.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const done = new Promise<Record<string, unknown>>((resolve) => {
    proc.on("exit", (code, signal) => {
      clearTimeout(timer);
      finished = true;
      children.delete(proc);
      markReady(); // an attacker that died before it was ready does not hold the run up
      resolve(result ?? { attacker_error: `exited with ${signal ?? code} before its result: ${stderr.trim().slice(-600)}` });
    });
  });
  return {
    ready,
    done,
    get finished() {
      return finished;
    },
    logs,
    kill: () => {
      if (!finished) proc.kill("SIGKILL");
    },
  };
}
