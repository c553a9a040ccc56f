// A node of the swarm: the lifecycle that puts together a span server (sessions over the engine
// interface), the libp2p handlers that serve it, and the announcer that keeps its signed record
// in the DHT; plus rebalancing, which moves the node to the swarm's weakest blocks.
import "./node20.js";
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { PrivateKey } from "@libp2p/interface";
import type { ServedModel } from "../engine/interface.js";
import { SessionError } from "../engine/interface.js";
import { errorMessage, logger } from "../log.js";
import { Announcer } from "./announcer.js";
import { SpanHandlers } from "./handlers.js";
import { createSwarmHost, joinSwarm, type SwarmHost } from "./host.js";
import { Libp2pSpanProvider, toSpanRecord } from "./libp2p-provider.js";
import { rebalance } from "./placement.js";
import type { NodeInfo } from "./protocol.js";
import { type ServerStep, SpanServer } from "./span-server.js";

const log = logger("swarm:node");

export const VERSION = "tessera/0.1";

export interface SpanNodeOptions {
  /** The model served: config, checkpoint hash, and how to load spans of it (`servedCheckpoint` in the engine). */
  model: ServedModel;
  modelId: string;
  start: number;
  end: number;
  /** Multiaddrs to listen on; default an ephemeral TCP port on loopback. */
  listen?: string[];
  /** Longest session accepted, in tokens. */
  maxSessionLength?: number;
  /** KV budget: tokens × blocks held over all sessions. */
  cacheTokens?: number;
  /** Peers to join the swarm through (multiaddrs with /p2p/). */
  bootstrap?: string[];
  /** How often the signed record is refreshed in the DHT, with fresh RTTs to the next blocks' holders. */
  announceIntervalMs?: number;
  /** A session that sends no step for this long is closed and its KV cache released. */
  idleTimeoutMs?: number;
  /** Announce this decode throughput (tokens/s per block) instead of the measured one (Petals' --throughput). */
  throughput?: number;
  /** The manifest id the model's spans were checked against (announced; clients may require it). */
  manifestId?: string;
  /** Sub-range runtimes held at once for routes entering the span mid-way. */
  maxSubSpans?: number;
  /** Sees every step the node runs, as decoded from the wire (dashboards, tests of what a node sees). */
  onStep?: (step: ServerStep) => void;
  /** Share of the KV budget one peer may hold (default PEER_CACHE_SHARE in span-server.ts). */
  peerCacheShare?: number;
  /** Multi-token steps run in chunks of this many tokens, scheduled fairly across peers (default PREFILL_CHUNK). */
  prefillChunk?: number;
}

const DEFAULTS = { announceIntervalMs: 60_000, idleTimeoutMs: 300_000 };

export class SpanNode {
  private state: NodeInfo["state"] = "online";
  private timers: NodeJS.Timeout[] = [];
  private readonly announcer: Announcer;

  private constructor(
    readonly libp2p: SwarmHost,
    readonly server: SpanServer,
    private readonly handlers: SpanHandlers,
    private readonly opts: SpanNodeOptions & typeof DEFAULTS,
    key: PrivateKey,
  ) {
    this.announcer = new Announcer(libp2p, key, opts.modelId, opts.model.config.numLayers, () => this.info());
  }

  static async start(options: SpanNodeOptions): Promise<SpanNode> {
    const c = options.model.config;
    const opts = { ...DEFAULTS, ...options };
    // Never longer than the model's context: positions past it have no rotary angle the model was trained on.
    const maxSessionLength = Math.min(options.maxSessionLength ?? 2048, c.maxPositionEmbeddings);
    const server = await SpanServer.create({
      numBlocks: c.numLayers,
      hiddenSize: c.hiddenSize,
      vocabSize: c.vocabSize,
      start: options.start,
      end: options.end,
      load: options.model.load,
      maxSessionLength,
      cacheTokens: options.cacheTokens ?? 16384 * (options.end - options.start),
      idleTimeoutMs: opts.idleTimeoutMs,
      maxSubSpans: options.maxSubSpans,
      onStep: options.onStep,
      peerCacheShare: options.peerCacheShare,
      prefillChunk: options.prefillChunk,
    });
    const key = await generateKeyPair("Ed25519");
    let libp2p: SwarmHost;
    try {
      libp2p = await createSwarmHost({ role: "server", privateKey: key, listen: options.listen });
    } catch (e) {
      await server.release();
      throw e;
    }
    const handlers = new SpanHandlers(libp2p, server, key);
    const node = new SpanNode(libp2p, server, handlers, opts, key);
    try {
      await handlers.register();
      await joinSwarm(libp2p, options.bootstrap ?? []);
      await node.announce();
    } catch (e) {
      await node.stop();
      throw e;
    }
    node.every(opts.announceIntervalMs, "announce", () => node.announce());
    node.announcer.announceWhenServersJoin();
    node.every(Math.min(opts.idleTimeoutMs / 4, 10_000), "idle check", () => server.closeIdle(Date.now()));
    log("%s serves [%d, %d) of %s", libp2p.peerId.toString(), node.start, node.end, opts.modelId);
    return node;
  }

  get start(): number {
    return this.server.start;
  }

  get end(): number {
    return this.server.end;
  }

  /** Steps run, how many arrived pushed by the previous node, and pushes ignored (unknown or unlinked session). */
  get stats(): { steps: number; pushedIn: number; pushesIgnored: number } {
    return { ...this.server.stats, ...this.handlers.stats };
  }

  get sessionCount(): number {
    return this.server.sessionCount;
  }

  get addresses(): string[] {
    return this.libp2p.getMultiaddrs().map((a) => a.toString());
  }

  /** Publishes the signed record and block keys in the DHT, after re-measuring the next hops. */
  announce(): Promise<void> {
    return this.announcer.announce();
  }

  /** Closes sessions idle past the timeout (their streams get IDLE_TIMEOUT); returns how many. */
  closeIdleSessions(now: number): number {
    return this.server.closeIdle(now);
  }

  info(): NodeInfo {
    const c = this.opts.model.config;
    return {
      peerId: this.libp2p.peerId.toString(),
      state: this.state,
      modelId: this.opts.modelId,
      checkpointHash: this.opts.model.checkpointHash,
      numBlocks: c.numLayers,
      start: this.server.start,
      end: this.server.end,
      inferenceRps: this.opts.throughput ?? this.server.measured.inferenceRps,
      forwardRps: this.server.measured.forwardRps,
      cacheTokensLeft: this.server.cacheTokensLeft,
      nextPings: this.announcer.next.nextPings,
      linkMbps: this.announcer.next.linkMbps,
      version: VERSION,
      manifestId: this.opts.manifestId,
    };
  }

  /** Withdraws the node's record (state offline), then stops serving. */
  async stop(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.announcer.stop();
    if (this.state === "online" && this.libp2p.status === "started") {
      this.state = "offline";
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, 2000)));
      const withdrawn = this.announce().catch((e) => log.error("withdrawing the record failed (it expires on its own): %s", errorMessage(e)));
      await Promise.race([withdrawn, deadline]);
      clearTimeout(timer);
    }
    await this.libp2p.stop();
    await this.server.release();
    log("stopped");
  }

  /**
   * Moves the node to [start, start + its length): loads that span, announces it, and hands over:
   * sessions opened before the move finish on the span they hold.
   */
  async moveTo(start: number): Promise<void> {
    await this.server.moveTo(start);
    await this.announce();
  }

  /**
   * One rebalancing check (hybrid sharding, arXiv 2407.19775): reads the swarm's records from the DHT and moves
   * when that lifts the weakest block beyond the balance threshold without uncovering any.
   * Returns the new start, or undefined when the node stays.
   */
  async rebalanceOnce(random: () => number): Promise<number | undefined> {
    const c = this.opts.model.config;
    const provider = new Libp2pSpanProvider(this.libp2p, {
      modelId: this.opts.modelId,
      hiddenSize: c.hiddenSize,
      vocabSize: c.vocabSize,
      numBlocks: c.numLayers,
    });
    const me = this.info();
    const target = rebalance([...(await provider.records()), toSpanRecord(me, c.hiddenSize)], me.peerId, c.numLayers, random);
    if (target === undefined) return undefined;
    if (!(target >= 0)) throw new SessionError(`rebalancing chose an invalid start ${target}`);
    await this.moveTo(target);
    return target;
  }

  /** Checks every `intervalMs` whether to move (for `--blocks auto`). */
  rebalanceEvery(intervalMs: number, random: () => number, onMove?: (start: number, end: number) => void): void {
    this.every(intervalMs, "rebalance", async () => {
      const moved = await this.rebalanceOnce(random);
      if (moved !== undefined) onMove?.(this.start, this.end);
    });
  }

  /** Runs `task` every `ms`; a failure is logged with the task's name and the next round runs as usual. */
  private every(ms: number, name: string, task: () => unknown): void {
    const timer = setInterval(() => {
      Promise.resolve()
        .then(task)
        .catch((e) => log.error("%s failed: %s", name, errorMessage(e)));
    }, ms);
    timer.unref();
    this.timers.push(timer);
  }
}
