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
import type { NodeInfo } from "../../src/swarm/protocol.js";

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
