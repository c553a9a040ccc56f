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
