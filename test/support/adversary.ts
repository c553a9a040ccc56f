// Adversarial span servers for tests and benchmarks (never a user-facing flag): a ServedModel
// whose sessions misbehave in one chosen way while the node announces the honest model (its
// checkpoint hash, and in adversary-node.ts its manifest id). Every misbehaving step is reported
// through onCheat, so a test or benchmark knows exactly which steps a verifier should catch.
// Randomness comes from a seeded PRNG, so a run is reproducible.
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  type ForwardInput,
  type ForwardOptions,
  type ForwardOutput,
  type ServedModel,
  SessionError,
  type SessionOptions,
  type SpanRuntime,
  type SpanSession,
  type SpanSpec,
} from "../../src/engine/interface.js";
import { ServedSpan } from "../../src/engine/runtime.js";
import { defaultCacheDir, type SpanModelOptions } from "../../src/engine/span-model.js";
import type { Checkpoint } from "../../src/model/checkpoint.js";
import { CheckpointError, type ModelConfig } from "../../src/model/types.js";
import { type NodeProcess, spawnListening } from "../../src/swarm/node-process.js";
import { createRng } from "../../src/engine/sampling.js";

/**
 * How an adversarial span misbehaves:
 * - honest: not at all (the control);
 * - noise-small / noise-large: adds Gaussian noise of 1% / 50% of each output row's RMS;
 * - perturbed: one block's matrices multiplied elementwise by (1 + 0.01·N(0,1));
 * - skip-block: one block skipped (its attention and MLP outputs zeroed: the block is the identity);
 * - stale: decode steps after a session's first replay the last computed decode output, computing nothing;
 * - q4: runs q4 weights whatever format the node announces;
 * - throughput-lie: honest but slow (sleeps each step); the node script announces a huge throughput;
 * - selective: honest on a runtime's first session and on every session's first steps, then
 *   noise-large on a fraction of later steps.
 */
export type AdversaryMode = "honest" | "noise-small" | "noise-large" | "perturbed" | "skip-block" | "stale" | "q4" | "throughput-lie" | "selective";

export const ADVERSARY_MODES: readonly AdversaryMode[] = [
  "honest",
  "noise-small",
  "noise-large",
  "perturbed",
  "skip-block",
  "stale",
  "q4",
  "throughput-lie",
  "selective",
];

/** Noise, as a fraction of each output row's RMS. */
const NOISE = { small: 0.01, large: 0.5 } as const;

/** One misbehaving step. */
export interface Cheat {
  mode: AdversaryMode;
  /** Sessions are numbered from 0 in the order they were opened, over all the model's runtimes (the node's own excluded). */
  session: number;
  /** Steps (forward calls) are numbered from 0 within their session. */
  step: number;
  /** The span of the runtime that cheated. */
  start: number;
  end: number;
}

export interface AdversaryOptions {
  /** Seeds every random choice (noise, perturbation, which steps the selective mode cheats on); default 1. */
  seed?: number;
  /** The honest model's checkpoint: perturbed, skip-block and q4 build their own span models from it. */
  checkpoint?: Checkpoint;
  /** The engine options the honest model was loaded with (maxSequence, threads, format), for the modes that load their own spans. */
  engine?: Partial<SpanModelOptions>;
  /** The block perturbed or skipped; default (or when a span does not hold it) the span's first block. */
  block?: number;
  /** perturbed: the relative size of the perturbation; default 0.01. */
  perturbScale?: number;
  /** throughput-lie: milliseconds slept before each step; default 60. */
  delayMs?: number;
  /** selective: sessions per runtime served honestly before any cheating ("trials come first"); default 1. */
  honestSessions?: number;
  /** selective: steps of every session served honestly; default 4. */
  honestSteps?: number;
  /** selective: the fraction of later steps that get noise-large; default 0.1. */
  cheatRate?: number;
  /**
   * The first sessions ever opened that are the node's own (SpanServer.create measures throughput on
   * one before the node listens): served as the runtime computes, unnumbered, never reported; default 0.
   */
  ownSessions?: number;
  /** Called after each step that cheated. */
  onCheat?: (cheat: Cheat) => void;
}

/** What an adversarial model counted so far (sessions and steps the node's own excluded). */
export interface AdversaryStats {
  sessions: number;
  steps: number;
  cheated: number;
}

/** A ServedModel that announces the honest model's identity and cheats; `stats` counts what it did. */
export interface AdversarialModel extends ServedModel {
  readonly mode: AdversaryMode;
  readonly stats: AdversaryStats;
}

/**
 * Wraps the honest model: same config and checkpoint hash, spans that misbehave as `mode` says.
 * perturbed, skip-block and q4 need `opts.checkpoint` (and `opts.engine` as the honest model was loaded);
 * their span models are cached under <cache>/adversary/, apart from the honest ones.
 */
export function adversarialModel(honest: ServedModel, mode: AdversaryMode, opts: AdversaryOptions = {}): AdversarialModel {
  const seed = opts.seed ?? 1;
  const stats: AdversaryStats = { sessions: 0, steps: 0, cheated: 0 };
  let own = opts.ownSessions ?? 0;
  const shared: Shared = {
    mode,
    seed,
    config: honest.config,
    opts,
    stats,
    isOwn: () => {
      if (own <= 0) return false;
      own--;
      return true;
    },
    report: (cheat) => {
      stats.cheated++;
      opts.onCheat?.(cheat);
    },
  };
  return {
    mode,
    stats,
    config: honest.config,
    checkpointHash: honest.checkpointHash,
    load: async (start, end) => new AdversarialRuntime(await loadFor(honest, mode, seed, opts, start, end), shared),
  };
}

/** The runtime a mode computes with: the honest one, or one of its own span models. */
async function loadFor(honest: ServedModel, mode: AdversaryMode, seed: number, opts: AdversaryOptions, start: number, end: number): Promise<SpanRuntime> {
  if (mode !== "perturbed" && mode !== "skip-block" && mode !== "q4") return honest.load(start, end);
  const checkpoint = opts.checkpoint;
  if (!checkpoint) throw new Error(`adversary mode ${mode} needs the checkpoint (opts.checkpoint)`);
  const engine = opts.engine ?? {};
  const cacheRoot = join(engine.cacheDir ?? defaultCacheDir(), "adversary");
  if (mode === "q4") return ServedSpan.load(checkpoint, start, end, { ...engine, format: "q4", cacheDir: join(cacheRoot, "q4") });
  const block = opts.block !== undefined && opts.block >= start && opts.block < end ? opts.block : start;
  const scale = opts.perturbScale ?? 0.01;
  const tampered = mode === "perturbed" ? perturbedBlock(checkpoint, block, scale, seed) : skippedBlock(checkpoint, block);
  const variant = mode === "perturbed" ? `perturbed-b${block}-x${scale}-s${seed}` : `skip-b${block}`;
  return ServedSpan.load(tampered, start, end, { ...engine, cacheDir: join(cacheRoot, variant) });
}

/** A checkpoint whose `block` matrices read as w·(1 + scale·N(0,1)), elementwise, seeded per tensor. */
export function perturbedBlock(checkpoint: Checkpoint, block: number, scale: number, seed: number): Checkpoint {
  const names = blockTensors(checkpoint, block).filter((n) => checkpoint.info(n).shape.length === 2);
  return tamperedCheckpoint(checkpoint, names, (name, values) => {
    const rng = seededRandom(hashSeed(seed, name));
    for (let i = 0; i < values.length; i++) values[i] = values[i]! * (1 + scale * gaussian(rng));
    return values;
  });
}

/**
 * A checkpoint whose `block` adds nothing to the residual stream (attention output and MLP down
 * projections, and their biases, all zero): the block computes the identity, as if skipped. Works on
 * any span, a single-block first or last one included (the embedding and head stay).
 */
export function skippedBlock(checkpoint: Checkpoint, block: number): Checkpoint {
  const names = blockTensors(checkpoint, block).filter((n) => /\.(attn_output|ffn_down)\.(weight|bias)$/.test(n));
  return tamperedCheckpoint(checkpoint, names, (_, values) => values.fill(0));
}

function blockTensors(checkpoint: Checkpoint, block: number): string[] {
  if (!(Number.isInteger(block) && block >= 0 && block < checkpoint.config.numLayers)) {
    throw new RangeError(`block ${block} outside 0..${checkpoint.config.numLayers - 1}`);
  }
  const names: string[] = [];
  for (const suffix of ["attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]) {
    for (const kind of ["weight", "bias"]) {
      const name = `blk.${block}.${suffix}.${kind}`;
      if (checkpoint.has(name)) names.push(name);
    }
  }
  return names;
}

/** The checkpoint with `names` read through `tamper`; they report F32 storage, so the engine never repacks their raw blocks. */
function tamperedCheckpoint(base: Checkpoint, names: string[], tamper: (name: string, values: Float32Array) => Float32Array): Checkpoint {
  const touched = new Set(names);
  return {
    ...base,
    info: (name) => (touched.has(name) ? { ...base.info(name), dtype: "F32" } : base.info(name)),
    readRaw: async (name) => {
      if (touched.has(name)) throw new CheckpointError("tampered tensor: read it with readF32", base.path, name);
      return base.readRaw(name);
    },
    readF32: async (name) => {
      const values = await base.readF32(name);
      return touched.has(name) ? tamper(name, Float32Array.from(values)) : values;
    },
  };
}

interface Shared {
  mode: AdversaryMode;
  seed: number;
  config: ModelConfig;
  opts: AdversaryOptions;
  stats: AdversaryStats;
  /** Whether the session being opened is one of the node's own (and uses one up). */
  isOwn: () => boolean;
  report: (cheat: Cheat) => void;
}

/** Context a session's misbehaviour depends on: only ordinals and its seeded stream, never the inputs. */
interface StepContext {
  /** Session ordinal within its runtime. */
  local: number;
  step: number;
  rng: () => number;
}

class AdversarialRuntime implements SpanRuntime {
  private opened = 0;

  constructor(
    private readonly inner: SpanRuntime,
    private readonly shared: Shared,
  ) {}

  get span(): SpanSpec {
    return this.inner.span;
  }

  get maxSequence(): number {
    return this.inner.maxSequence;
  }

  get kvBytesPerToken(): number {
    return this.inner.kvBytesPerToken;
  }

  openSession(maxLength: number, opts?: SessionOptions): SpanSession {
    const inner = this.inner.openSession(maxLength, opts);
    const { shared } = this;
    if (shared.isOwn()) return inner;
    const local = this.opened++;
    const session = shared.stats.sessions++;
    const { start, end } = this.inner.span;
    const rng = seededRandom(hashSeed(shared.seed, `session ${start}:${end}:${local}`));
    const report = (step: number) => shared.report({ mode: shared.mode, session, step, start, end });
    if (shared.mode === "stale") return new StaleSession(inner, shared, report);
    return new CheatingSession(inner, shared, local, rng, report);
  }

  release(): Promise<void> {
    return this.inner.release();
  }
}

/** A session that computes every step and may alter its output (every mode but stale). */
class CheatingSession implements SpanSession {
  private steps = 0;

  constructor(
    private readonly inner: SpanSession,
    private readonly shared: Shared,
    private readonly local: number,
    private readonly rng: () => number,
    private readonly report: (step: number) => void,
  ) {}

  get length(): number {
    return this.inner.length;
  }

  get maxLength(): number {
    return this.inner.maxLength;
  }

  async forward(input: ForwardInput, opts?: ForwardOptions): Promise<ForwardOutput> {
    const step = this.steps++;
    const { mode, opts: o } = this.shared;
    const ctx: StepContext = { local: this.local, step, rng: this.rng };
    if (mode === "throughput-lie") await sleep(o.delayMs ?? 60);
    const out = await this.inner.forward(input, opts);
    this.shared.stats.steps++;
    let cheated: boolean;
    switch (mode) {
      case "honest":
        return out;
      case "noise-small":
      case "noise-large":
        addNoise(out, this.shared.config, mode === "noise-small" ? NOISE.small : NOISE.large, this.rng);
        cheated = true;
        break;
      case "selective":
        cheated = selectiveCheats(ctx, o);
        if (cheated) addNoise(out, this.shared.config, NOISE.large, this.rng);
        break;
      default:
        // perturbed, skip-block, q4: the runtime itself is wrong; throughput-lie: the step was slowed.
        cheated = true;
    }
    if (cheated) this.report(step);
    return out;
  }

  truncate(position: number): void {
    this.inner.truncate(position);
  }

  close(): void {
    this.inner.close();
  }
}

/** selective: honest on the first sessions and steps, then cheats on a seeded fraction of steps. */
function selectiveCheats(ctx: StepContext, o: AdversaryOptions): boolean {
  if (ctx.local < (o.honestSessions ?? 1) || ctx.step < (o.honestSteps ?? 4)) return false;
  return ctx.rng() < (o.cheatRate ?? 0.1);
}

/**
 * stale: a 1-token step after the session's first computed one returns that last computed 1-token
 * output again and computes nothing; its input is kept, and fed to the real session (output thrown
 * away) before the next step that does compute, so the cache and `length` stay consistent through
 * rollbacks and later prefills.
 */
class StaleSession implements SpanSession {
  private steps = 0;
  private pending: ForwardInput[] = [];
  private saved: ForwardOutput | undefined;

  constructor(
    private readonly inner: SpanSession,
    private readonly shared: Shared,
    private readonly report: (step: number) => void,
  ) {}

  get length(): number {
    return this.inner.length + this.pending.length;
  }

  get maxLength(): number {
    return this.inner.maxLength;
  }

  async forward(input: ForwardInput, opts?: ForwardOptions): Promise<ForwardOutput> {
    const step = this.steps++;
    const c = this.shared.config;
    const tokens = input.tokens ? Array.from(input.tokens) : undefined;
    const count = tokens ? tokens.length : (input.hidden?.length ?? 0) / c.hiddenSize;
    if (count === 1 && this.saved) {
      if (this.length + 1 > this.maxLength) throw new SessionError(`session full: ${this.length} + 1 tokens exceed its length ${this.maxLength}`);
      const id = tokens?.[0];
      if (id !== undefined && !(Number.isInteger(id) && id >= 0 && id < c.vocabSize)) {
        throw new SessionError(`token id ${id} at index 0 outside the vocabulary (0..${c.vocabSize - 1})`);
      }
      this.pending.push(tokens ? { tokens } : { hidden: Float32Array.from(input.hidden!) });
      this.shared.stats.steps++;
      this.report(step);
      return copyOutput(this.saved);
    }
    await this.catchUp();
    const out = await this.inner.forward(input, opts);
    this.shared.stats.steps++;
    if (count === 1) this.saved = copyOutput(out);
    return out;
  }

  /** Runs the inputs answered without computing, one step each (as an honest session would have, so the cache holds the same numbers). */
  private async catchUp(): Promise<void> {
    while (this.pending.length) {
      await this.inner.forward(this.pending[0]!);
      this.pending.shift();
    }
  }

  truncate(position: number): void {
    if (!(Number.isInteger(position) && position >= 0 && position <= this.length)) {
      throw new SessionError(`cannot roll back to position ${position}: the session holds ${this.length} tokens`);
    }
    if (position >= this.inner.length) {
      this.pending.length = position - this.inner.length;
    } else {
      this.pending = [];
      this.inner.truncate(position);
    }
  }

  close(): void {
    this.pending = [];
    this.inner.close();
  }
}

/** Adds N(0, (fraction · row RMS)²) to every value of the output, row by row (hidden or logits rows). */
function addNoise(out: ForwardOutput, c: ModelConfig, fraction: number, rng: () => number): void {
  const data = out.hidden ?? out.logits;
  if (!data) return;
  const width = out.hidden ? c.hiddenSize : c.vocabSize;
  for (let row = 0; row + width <= data.length; row += width) {
    let squares = 0;
    for (let i = row; i < row + width; i++) squares += data[i]! * data[i]!;
    const sigma = fraction * Math.sqrt(squares / width);
    for (let i = row; i < row + width; i++) data[i] = data[i]! + sigma * gaussian(rng);
  }
}

function copyOutput(out: ForwardOutput): ForwardOutput {
  return {
    ...(out.logits ? { logits: Float32Array.from(out.logits) } : {}),
    ...(out.hidden ? { hidden: Float32Array.from(out.hidden) } : {}),
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A seeded PRNG (mulberry32, the sampler's): uniform in [0, 1). */
export function seededRandom(seed: number): () => number {
  return createRng(seed);
}

/** A standard normal draw (Box–Muller). */
export function gaussian(rng: () => number): number {
  const u = 1 - rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}

/** Mixes a seed with a label (FNV-1a, then a final avalanche) into a 32-bit seed. */
function hashSeed(seed: number, label: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < label.length; i++) h = Math.imul(h ^ label.charCodeAt(i), 0x01000193) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

const NODE_SCRIPT = fileURLToPath(new URL("./adversary-node.ts", import.meta.url));

/** A running adversary-node.ts: a NodeProcess that also reads the cheats it reported on stderr. */
export interface AdversaryProcess extends NodeProcess {
  /** The `cheated` lines printed so far. */
  cheats(): Cheat[];
}

/** The `cheated <session> <step> <mode> <start>:<end>` lines of an adversary node's stderr. */
export function parseCheats(stderr: string): Cheat[] {
  return [...stderr.matchAll(/^cheated (\d+) (\d+) (\S+) (\d+):(\d+)$/gm)].map((m) => ({
    session: Number(m[1]),
    step: Number(m[2]),
    mode: m[3] as AdversaryMode,
    start: Number(m[4]),
    end: Number(m[5]),
  }));
}

/** Starts an adversary node serving [start, end) of `model` (as spawnNode starts `tessera node`); resolves once it listens. */
export async function spawnAdversary(model: string, start: number, end: number, mode: AdversaryMode, extraArgs: string[] = []): Promise<AdversaryProcess> {
  const args = ["--import", import.meta.resolve("tsx"), NODE_SCRIPT, "--model", model, "--blocks", `${start}:${end}`, "--mode", mode, ...extraArgs];
  const node = await spawnListening(args, `adversary ${mode} [${start}, ${end})`);
  return { ...node, cheats: () => parseCheats(node.stderr()) };
}
