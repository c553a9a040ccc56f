// A node's announcements (hybrid sharding, arXiv 2407.19775): its signed record and one provider key per block
// in the DHT, refreshed on a timer and when another DHT server joins, each time with fresh RTTs to
// the holders of the block after its span and the link speed to the nearest of them.
import { setMaxListeners } from "node:events";
import type { PrivateKey } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { errorMessage, logger } from "../log.js";
import { announce, blockHolders, DHT_PROTOCOL } from "./dht.js";
import type { SwarmHost } from "./host.js";
import { probeLink } from "./link-probe.js";
import type { NodeInfo } from "./protocol.js";
import { signRecord } from "./signed-record.js";

const log = logger("swarm:announce");

/** What an announcement measures: RTTs in seconds to the next block's holders, and the link speed to them. */
export interface NextHopMeasurement {
  nextPings: Record<string, number>;
  linkMbps: number;
}

export class Announcer {
  private announcing: Promise<void> = Promise.resolve();
  private pending?: NodeJS.Timeout;
  readonly next: NextHopMeasurement = { nextPings: {}, linkMbps: 0 };

  constructor(
    private readonly host: SwarmHost,
    private readonly key: PrivateKey,
    private readonly modelId: string,
    private readonly numBlocks: number,
    /** The node's current record, read at each announcement (its span, state and speeds). */
    private readonly info: () => NodeInfo,
  ) {}

  /**
   * Publishes the signed record and the block keys, after re-measuring the next hops (unless the
   * node is going offline). One announcement at a time; a failed one is logged and retried at the
   * next interval.
   */
  announce(): Promise<void> {
    const run = async () => {
      if (this.info().state === "online") await this.measureNextHops();
      const info = this.info();
      const signed = await signRecord(this.key, info, Date.now());
      const blocks = Array.from({ length: info.end - info.start }, (_, i) => info.start + i);
      const signal = AbortSignal.timeout(20_000);
      setMaxListeners(Infinity, signal); // shared by the record's put and every block's provide
      await announce(this.host.services.dht, signed, info.peerId, this.modelId, blocks, signal);
      log("announced [%d, %d) %s", info.start, info.end, info.state);
    };
    const next = this.announcing.then(run, run);
    this.announcing = next.catch((e) => log.error("announcing failed (retried at the next interval): %s", errorMessage(e)));
    return next;
  }

  /** Re-announces shortly after a DHT server is identified (new next-block RTTs, records it lacks). */
  announceWhenServersJoin(): void {
    this.host.addEventListener("peer:identify", (event) => {
      if (!event.detail.protocols.includes(DHT_PROTOCOL) || this.pending || this.info().state !== "online") return;
      this.pending = setTimeout(() => {
        this.pending = undefined;
        this.announce().catch((e) => log.error("announcing after %s joined failed: %s", event.detail.peerId.toString(), errorMessage(e)));
      }, 300);
      this.pending.unref();
    });
  }

  stop(): void {
    clearTimeout(this.pending);
  }

  private async measureNextHops(): Promise<void> {
    const { end } = this.info();
    if (end >= this.numBlocks) return;
    let holders;
    try {
      holders = await blockHolders(this.host.services.dht, this.modelId, end, AbortSignal.timeout(5000));
    } catch (e) {
      log.error("looking up the holders of block %d failed; keeping the last RTTs: %s", end, errorMessage(e));
      return;
    }
    const pings: Record<string, number> = {};
    const self = this.host.peerId.toString();
    await Promise.all(
      [...holders.keys()]
        .filter((p) => p !== self)
        .slice(0, 16)
        .map(async (peer) => {
          try {
            pings[peer] = (await this.host.services.ping.ping(peerIdFromString(peer), { signal: AbortSignal.timeout(2000) })) / 1000;
          } catch (e) {
            // Left out of nextPings: routing then assumes the default RTT for this pair.
            log("next-block holder %s did not answer ping: %s", peer, errorMessage(e));
          }
        }),
    );
    this.next.nextPings = pings;
    // Link speed: the median over (up to) the three fastest-answering next holders.
    const nearest = Object.entries(pings)
      .sort((a, b) => a[1] - b[1])
      .slice(0, 3);
    const speeds: number[] = [];
    await Promise.all(
      nearest.map(async ([peer]) => {
        try {
          speeds.push(await probeLink(this.host, peer));
        } catch (e) {
          log("link probe to %s failed: %s", peer, errorMessage(e));
        }
      }),
    );
    speeds.sort((a, b) => a - b);
    const median = speeds[Math.floor(speeds.length / 2)];
    if (median !== undefined) this.next.linkMbps = median;
  }
}
