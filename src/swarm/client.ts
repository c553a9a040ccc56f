// A swarm client: its own libp2p host joined to the swarm through bootstrap peers, the span
// provider over the DHT, and route sessions for generation.
import "./node20.js";
import type { ModelConfig } from "../model/types.js";
import type { Codec } from "../wire/tensor-frame.js";
import { createSwarmHost, joinSwarm, type SwarmHost } from "./host.js";
import { Libp2pSpanProvider, type ProviderOptions } from "./libp2p-provider.js";
import { BanList } from "./bans.js";
import { RouteSession, type RouteSessionOptions } from "./route-session.js";

export class SwarmClient {
  /** Nodes that failed any of this client's sessions, banned for all of them (with backoff). */
  readonly bans = new BanList();

  private constructor(
    readonly libp2p: SwarmHost,
    readonly provider: Libp2pSpanProvider,
    private readonly config: ModelConfig,
  ) {}

  static async connect(
    bootstrap: string[],
    config: ModelConfig,
    opts: { modelId: string; codec?: Codec; stepTimeoutMs?: number } & Partial<ProviderOptions>,
  ): Promise<SwarmClient> {
    const libp2p = await createSwarmHost({ role: "client" });
    try {
      await joinSwarm(libp2p, bootstrap);
    } catch (e) {
      await libp2p.stop();
      throw e;
    }
    const provider = new Libp2pSpanProvider(libp2p, {
      ...opts,
      hiddenSize: config.hiddenSize,
      vocabSize: config.vocabSize,
      numBlocks: config.numLayers,
    });
    return new SwarmClient(libp2p, provider, config);
  }

  /**
   * A route session. By default ("auto") nodes push hidden states to each other when the client is
   * farther from them than they are from each other; `chained: true/false` forces either way.
   */
  openSession(maxLength: number, opts: Partial<RouteSessionOptions> = {}): Promise<RouteSession> {
    return RouteSession.open(this.provider, { numBlocks: this.config.numLayers, maxLength, chained: "auto", bans: this.bans, ...opts });
  }

  async close(): Promise<void> {
    await this.libp2p.stop();
  }
}
