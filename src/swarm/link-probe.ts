// Link speed between nodes: the sender writes one probe message of a known size and times the
// receiver's one-byte acknowledgement. Nodes probe the holders of their next block, so a record
// can say how fast hidden states leave it (throughput is min(compute, network), as in hybrid sharding).
import type { Stream } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { framed } from "./framing.js";
import type { SwarmHost } from "./host.js";
import { errorMessage, logger } from "../log.js";

const log = logger("swarm:probe");

export const PROBE_PROTOCOL = "/tessera/probe/1.0.0";
export const PROBE_BYTES = 1 << 20;

/** Reads one probe (at most PROBE_BYTES) and acknowledges it. */
export async function answerProbe(stream: Stream, onFailure?: (error: unknown) => void): Promise<void> {
  try {
    const lp = framed(stream, { maxBytes: PROBE_BYTES });
    await lp.read({ signal: AbortSignal.timeout(10_000) });
    await lp.write(Uint8Array.of(1));
    await stream.close();
  } catch (e) {
    // An oversized, slow or broken probe: only its stream closes.
    log("probe from %s failed: %s", stream.id, errorMessage(e));
    onFailure?.(e);
    stream.abort(e instanceof Error ? e : new Error(String(e)));
  }
}

/** Megabits per second to `peerId`, measured with one probe (connection set-up excluded). */
export async function probeLink(host: SwarmHost, peerId: string, timeoutMs = 5000): Promise<number> {
  const signal = AbortSignal.timeout(timeoutMs);
  const stream = await host.dialProtocol(peerIdFromString(peerId), PROBE_PROTOCOL, { signal });
  try {
    const lp = framed(stream, { maxBytes: PROBE_BYTES });
    const t0 = performance.now();
    await lp.write(new Uint8Array(PROBE_BYTES), { signal });
    await lp.read({ signal });
    const seconds = (performance.now() - t0) / 1000;
    return (PROBE_BYTES * 8) / 1e6 / Math.max(seconds, 1e-6);
  } finally {
    await stream.close().catch(() => stream.abort(new Error("probe done")));
  }
}
