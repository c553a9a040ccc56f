// The engine thread's side (see engine-thread.ts): a worker thread that opens the checkpoint,
// loads spans and runs their sessions' steps on ONNX Runtime, so the thread that owns the
// network never stops for a run. It answers the fixed set of requests in engine-thread.ts, in the
// order they come; tensors travel as transferred buffers.
import { parentPort, workerData } from "node:worker_threads";
import { fullCollection } from "../gc.js";
import { openCheckpoint } from "../model/checkpoint.js";
import { errorMessage } from "../log.js";
import { SessionError, type SpanRuntime, type SpanSession } from "./interface.js";
import { ServedSpan } from "./runtime.js";
import type { EngineReply, EngineRequest, EngineThreadData } from "./engine-thread.js";

const data = workerData as EngineThreadData;
const port = parentPort!;
const checkpoint = openCheckpoint(data.path);
const runtimes = new Map<number, SpanRuntime>();
const sessions = new Map<number, SpanSession>();
const gc = fullCollection();

/** The buffer of `a` alone, to transfer (a view into a larger buffer is copied first). */
function own(a: Float32Array): Float32Array {
  return a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice();
}

function reply(r: EngineReply, transfer: ArrayBuffer[] = []): void {
  port.postMessage(r, transfer);
}

async function handle(req: EngineRequest): Promise<void> {
  switch (req.op) {
    case "load": {
      const c = await checkpoint;
      const rt = await ServedSpan.load(c, req.start, req.end, data.options);
      runtimes.set(req.id, rt);
      return reply({ id: req.id, ok: true, load: { span: rt.span, maxSequence: rt.maxSequence, kvBytesPerToken: rt.kvBytesPerToken } });
    }
    case "open": {
      const rt = runtimes.get(req.runtime);
      if (!rt) throw new SessionError(`no span runtime ${req.runtime} on the engine thread`);
      sessions.set(req.session, rt.openSession(req.maxLength, { split: req.split }));
      return reply({ id: req.id, ok: true });
    }
    case "forward": {
      const s = sessions.get(req.session);
      if (!s) throw new SessionError("session is closed");
      const out = await s.forward(req.tokens ? { tokens: req.tokens } : { hidden: req.hidden }, { allLogits: req.allLogits });
      const logits = out.logits && own(out.logits);
      const hidden = out.hidden && own(out.hidden);
      return reply(
        { id: req.id, ok: true, forward: { logits, hidden, length: s.length } },
        [logits?.buffer, hidden?.buffer].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer),
      );
    }
    case "truncate":
      sessions.get(req.session)?.truncate(req.position);
      return reply({ id: req.id, ok: true });
    case "close":
      sessions.get(req.session)?.close();
      sessions.delete(req.session);
      return reply({ id: req.id, ok: true });
    case "collect":
      gc?.();
      return reply({ id: req.id, ok: true });
    case "release": {
      const rt = runtimes.get(req.runtime);
      runtimes.delete(req.runtime);
      await rt?.release();
      return reply({ id: req.id, ok: true });
    }
  }
}

// Requests run one at a time, in order: a truncate or close lands between the steps around it.
let queue = Promise.resolve();
port.on("message", (req: EngineRequest) => {
  queue = queue.then(() =>
    handle(req).catch((e: unknown) => reply({ id: req.id, ok: false, error: { name: e instanceof Error ? e.name : "Error", message: errorMessage(e) } })),
  );
});
