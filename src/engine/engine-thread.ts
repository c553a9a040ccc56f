// The engine on a thread of its own. onnxruntime-node runs a session synchronously on the calling
// thread (its `run` is a setImmediate around a blocking call), so a node that ran its engine on
// the main thread stopped reading the network for every step: while one peer's prefill chunks ran
// back to back, another peer's one-token step waited to be read, then waited again to run. Here a
// worker thread owns the ORT sessions and KV caches; the main thread keeps the network and the
// scheduling, and sends the worker a fixed set of requests (load a span, open a session, run a
// step, truncate, close, release) with tensors as transferred buffers.
import { Worker } from "node:worker_threads";
import { errorMessage, logger } from "../log.js";
import type { ModelConfig } from "../model/types.js";
import {
  checkRollback,
  checkSessionLength,
  checkSplit,
  type ForwardInput,
  type ForwardOptions,
  type ForwardOutput,
  SessionError,
  type ServedModel,
  type SessionOptions,
  type SpanRuntime,
  type SpanSession,
  type SpanSpec,
} from "./interface.js";
import type { SpanModelOptions } from "./span-model.js";

const log = logger("engine:thread");

/** What the worker is started with: the checkpoint's path and the span models' options. */
export interface EngineThreadData {
  path: string;
  options: Omit<Partial<SpanModelOptions>, "onTensorRead">;
}

type Request =
  | { op: "load"; start: number; end: number }
  | { op: "open"; runtime: number; session: number; maxLength: number; split?: boolean }
  | { op: "forward"; session: number; tokens?: number[]; hidden?: Float32Array; allLogits: boolean }
  | { op: "truncate"; session: number; position: number }
  | { op: "close"; session: number }
  | { op: "release"; runtime: number }
  | { op: "collect" };
export type EngineRequest = Request & { id: number };

export interface LoadReply {
  span: SpanSpec;
  maxSequence: number;
  kvBytesPerToken: number;
}
export interface ForwardReply {
  logits?: Float32Array;
  hidden?: Float32Array;
  length: number;
}
export type EngineReply =
  { id: number; ok: true; load?: LoadReply; forward?: ForwardReply } | { id: number; ok: false; error: { name: string; message: string } };

/** The worker's entry, beside this file (.ts when run from the sources, .js when built). */
const FROM_SOURCES = import.meta.url.endsWith(".ts");
const WORKER = new URL(`./engine-thread-worker${FROM_SOURCES ? ".ts" : ".js"}`, import.meta.url);

/** Starts the worker; from the sources, through tsx's loader (a worker does not inherit the main thread's hooks). */
function startWorker(data: EngineThreadData): Worker {
  if (!FROM_SOURCES) return new Worker(WORKER, { workerData: data });
  const api = JSON.stringify(import.meta.resolve("tsx/esm/api"));
  const code = `import(${api}).then((tsx) => { tsx.register(); return import(${JSON.stringify(WORKER.href)}); });`;
  return new Worker(code, { eval: true, workerData: data });
}

/** One worker thread running spans of one checkpoint. */
export class EngineThread {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (r: EngineReply & { ok: true }) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private dead: Error | undefined;

  constructor(data: EngineThreadData) {
    this.worker = startWorker(data);
    this.worker.on("message", (r: EngineReply) => {
      const p = this.pending.get(r.id);
      if (!p) return log.error("a reply to no request (%d) from the engine thread", r.id);
      this.pending.delete(r.id);
      if (!this.pending.size) this.worker.unref();
      if (r.ok) p.resolve(r);
      else p.reject(r.error.name === "SessionError" ? new SessionError(r.error.message) : new Error(r.error.message));
    });
    this.worker.on("error", (e) => this.fail(new Error(`the engine thread failed: ${errorMessage(e)}`)));
    this.worker.on("exit", (code) => this.fail(new Error(`the engine thread exited with code ${code}`)));
    // The thread keeps the process alive only while a request waits on it.
    this.worker.unref();
  }

  private fail(e: Error): void {
    if (!this.dead) log.error("%s", e.message);
    this.dead ??= e;
    for (const p of this.pending.values()) p.reject(this.dead);
    this.pending.clear();
  }

  request(req: Request, transfer: ArrayBuffer[] = []): Promise<EngineReply & { ok: true }> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.ref();
      this.worker.postMessage({ ...req, id }, transfer);
    });
  }

  /** Sends a request whose failure only needs logging (truncate, close: already checked here). */
  tell(req: Request, what: string): void {
    this.request(req).catch((e: unknown) => log.error("%s on the engine thread failed: %s", what, errorMessage(e)));
  }

  /** A full collection of the engine thread's heap (closed sessions' KV caches, step outputs). */
  collect(): void {
    this.tell({ op: "collect" }, "a collection");
  }

  async stop(): Promise<void> {
    this.dead ??= new Error("the engine thread was stopped");
    await this.worker.terminate();
  }
}

class ThreadRuntime implements SpanRuntime {
  constructor(
    private readonly thread: EngineThread,
    private readonly id: number,
    private readonly info: LoadReply,
  ) {}

  get span(): SpanSpec {
    return this.info.span;
  }
  get maxSequence(): number {
    return this.info.maxSequence;
  }
  get kvBytesPerToken(): number {
    return this.info.kvBytesPerToken;
  }

  openSession(maxLength: number, opts: SessionOptions = {}): SpanSession {
    checkSessionLength(maxLength, this.maxSequence);
    checkSplit(this.span, opts);
    return new ThreadSession(this.thread, this.id, maxLength, Boolean(opts.split));
  }

  async release(): Promise<void> {
    await this.thread.request({ op: "release", runtime: this.id });
  }
}

let nextSession = 1;

/** A session whose KV cache lives on the engine thread; steps go there in order, one at a time per session. */
class ThreadSession implements SpanSession {
  private readonly id = nextSession++;
  private readonly opened: Promise<unknown>;
  private _length = 0;
  private closed = false;

  constructor(
    private readonly thread: EngineThread,
    runtime: number,
    readonly maxLength: number,
    split: boolean,
  ) {
    // Requests are handled in order, so a step sent before this reply still finds its session;
    // a failed open shows in that step's reply.
    this.opened = thread.request({ op: "open", runtime, session: this.id, maxLength, split }).catch((e: unknown) => e);
  }

  get length(): number {
    return this._length;
  }

  async forward(input: ForwardInput, opts: ForwardOptions = {}): Promise<ForwardOutput> {
    if (this.closed) throw new SessionError("session is closed");
    const opened = await this.opened;
    if (opened instanceof Error) throw opened;
    // A compact copy of the rows (the input is often a view into a received frame), transferred.
    const hidden = input.hidden?.slice();
    const r = await this.thread.request(
      { op: "forward", session: this.id, tokens: input.tokens ? Array.from(input.tokens) : undefined, hidden, allLogits: Boolean(opts.allLogits) },
      hidden ? [hidden.buffer as ArrayBuffer] : [],
    );
    const out = r.forward!;
    this._length = out.length;
    return out.logits ? { logits: out.logits } : { hidden: out.hidden };
  }

  truncate(position: number): void {
    checkRollback(position, this._length);
    this._length = position;
    this.thread.tell({ op: "truncate", session: this.id, position }, `truncating session ${this.id}`);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.thread.tell({ op: "close", session: this.id }, `closing session ${this.id}`);
  }
}

/**
 * A checkpoint served from an engine thread: the same spans and numbers as `servedCheckpoint`,
 * with every ORT run off the main thread. `stop()` ends the thread.
 */
export function threadedCheckpoint(
  path: string,
  config: ModelConfig,
  checkpointHash: string,
  options: EngineThreadData["options"] = {},
): ServedModel & { collect(): void; stop(): Promise<void> } {
  const thread = new EngineThread({ path, options });
  return {
    config,
    checkpointHash,
    load: async (start, end) => {
      const r = await thread.request({ op: "load", start, end });
      return new ThreadRuntime(thread, r.id, r.load!);
    },
    collect: () => thread.collect(),
    stop: () => thread.stop(),
  };
}
