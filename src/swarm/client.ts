// A swarm client: its own libp2p host, the span provider over the given bootstrap addresses, and
// route sessions for generation.
import "./node20.js";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import { ping } from "@libp2p/ping";
import { tcp } from "@libp2p/tcp";
import { createLibp2p, type Libp2p } from "libp2p";
import type { ModelConfig } from "../model/types.js";
import type { Codec } from "../wire/tensor-frame.js";
import { Libp2pSpanProvider } from "./libp2p-provider.js";
import { RouteSession, type RouteSessionOptions } from "./route-session.js";

export class SwarmClient {
  private constructor(
    readonly libp2p: Libp2p,
    readonly provider: Libp2pSpanProvider,
    private readonly config: ModelConfig,
  ) {}

  static async connect(bootstrap: string[], config: ModelConfig, opts: { codec?: Codec; stepTimeoutMs?: number } = {}): Promise<SwarmClient> {
    const libp2p = await createLibp2p({
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      services: { identify: identify(), ping: ping() },
    });
    const provider = new Libp2pSpanProvider(libp2p, bootstrap, {
      codec: opts.codec,
      stepTimeoutMs: opts.stepTimeoutMs,
      hiddenSize: config.hiddenSize,
      vocabSize: config.vocabSize,
      numBlocks: config.numLayers,
    });
    return new SwarmClient(libp2p, provider, config);
  }

  openSession(maxLength: number, opts: Partial<RouteSessionOptions> = {}): Promise<RouteSession> {
    return RouteSession.open(this.provider, { numBlocks: this.config.numLayers, maxLength, ...opts });
  }

  async close(): Promise<void> {
    await this.libp2p.stop();
  }
}
