// A libp2p host that speaks the swarm's DHT with validators that accept anything: what a rogue
// peer runs to hold and serve records the honest nodes refuse to store.
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import type { PrivateKey } from "@libp2p/interface";
import { kadDHT, passthroughMapper } from "@libp2p/kad-dht";
import { ping } from "@libp2p/ping";
import { tcp } from "@libp2p/tcp";
import { createLibp2p } from "libp2p";
import { DHT_PROTOCOL } from "../../src/swarm/dht.js";
import assert from "node:assert/strict";
import { lpStream } from "@libp2p/utils";
import { decodeMessage, encodeControl, Kind, type Message, type NodeInfo, SPAN_PROTOCOL } from "../../src/swarm/protocol.js";

export function permissiveDhtHost(key: PrivateKey) {
  return createLibp2p({
    privateKey: key,
    addresses: { listen: ["/ip4/127.0.0.1/tcp/0"] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: DHT_PROTOCOL,
        clientMode: false,
        peerInfoMapper: passthroughMapper,
        allowQueryWithZeroPeers: true,
        validators: { tessera: async () => {} },
        selectors: { tessera: () => 0 },
      }),
    },
  });
}

/** A record claiming all 4 blocks of a model at a throughput no honest node reaches (what a rogue announces to be routed through). */
export function boastfulInfo(peerId: string, modelId: string, span: Partial<NodeInfo> = {}): NodeInfo {
  return {
    peerId,
    state: "online",
    modelId,
    checkpointHash: "x",
    numBlocks: 4,
    start: 0,
    end: 4,
    inferenceRps: 1e6,
    forwardRps: 1e6,
    cacheTokensLeft: 1e9,
    nextPings: {},
    linkMbps: 0,
    version: "x",
    ...span,
  };
}

/** What a rogue span session's handler gets: the stream to answer on and the session's name. */
export interface RogueSession {
  write(bytes: Uint8Array): Promise<void>;
  sessionId?: string;
}

/**
 * Serves the span protocol on `rogue` as a lying node does: opens every session on blocks [0, 4)
 * and hands each later message to `onMessage`, until the client closes the stream.
 */
export async function serveRogueSpans(
  rogue: Awaited<ReturnType<typeof permissiveDhtHost>>,
  onMessage: (message: Message, session: RogueSession) => Promise<void>,
): Promise<void> {
  await rogue.handle(SPAN_PROTOCOL, async (stream) => {
    const lp = lpStream(stream);
    const open = decodeMessage((await lp.read()).subarray());
    await lp.write(encodeControl(Kind.Opened, { start: 0, end: 4 }));
    const session: RogueSession = { write: (bytes) => lp.write(bytes), sessionId: open.kind === Kind.Open ? open.open.sessionId : undefined };
    for (;;) {
      let message;
      try {
        message = decodeMessage((await lp.read()).subarray());
      } catch (e) {
        assert.ok(e instanceof Error); // the client closed the stream
        return;
      }
      await onMessage(message, session);
    }
  });
}
