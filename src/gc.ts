// V8's full collection, for a process (or a worker thread) that must give memory back after a
// flood rather than wait for its next allocation (swarm/memory.ts, the engine thread).
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { errorMessage, logger } from "./log.js";

const log = logger("gc");

/** V8's full collection of the calling thread's heap, exposed at run time (as `--expose-gc` would); undefined where V8 refuses. */
export function fullCollection(): (() => void) | undefined {
  try {
    setFlagsFromString("--expose-gc");
    const gc: unknown = runInNewContext("gc");
    return typeof gc === "function" ? (gc as () => void) : undefined;
  } catch (e) {
    log.error("cannot expose V8's collector: %s", errorMessage(e));
    return undefined;
  }
}
