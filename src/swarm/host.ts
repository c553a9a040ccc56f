// The libp2p host every swarm participant runs: tcp, noise, yamux, identify, ping and the
// swarm's own kad-dht (servers store records; clients only query).
import "./node20.js";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import type { PrivateKey } from "@libp2p/interface";
import { type KadDHT } from "@libp2p/kad-dht";
import { ping, type Ping } from "@libp2p/ping";
import { tcp } from "@libp2p/tcp";
import { createLibp2p, type Libp2p } from "libp2p";
import { DHT_PROTOCOL, swarmDht } from "./dht.js";

export type SwarmHost = Libp2p<{ dht: KadDHT; ping: Ping; identify: unknown }>;

export interface HostOptions {
  /** Servers listen and hold DHT records; clients only dial and query. */
  role: "server" | "client";
  listen?: string[];
  privateKey?: PrivateKey;
}

export async function createSwarmHost(opts: HostOptions): Promise<SwarmHost> {
  const server = opts.role === "server";
  const host = (await createLibp2p({
    privateKey: opts.privateKey,
    addresses: { listen: server ? (opts.listen ?? ["/ip4/127.0.0.1/tcp/0"]) : [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify(), ping: ping(), dht: swarmDht(server) },
    // libp2p refuses more than 5 inbound connections per second from one host; a node that
    // serves many clients (or a local swarm, where every peer is 127.0.0.1) needs more.
    connectionManager: { inboundConnectionThreshold: 100, maxIncomingPendingConnections: 64 },
  })) as unknown as SwarmHost;
  // The DHT answers provider queries with addresses from the peer store, which does not hold the
  // host's own: without them a node's own provider records would be dropped from its answers.
  if (server) await host.peerStore.merge(host.peerId, { multiaddrs: host.getMultiaddrs() });
  return host;
}

/** Dials the bootstrap peers and waits until the DHT knows at least one of them. */
export async function joinSwarm(host: SwarmHost, bootstrap: readonly string[], timeoutMs = 10_000): Promise<void> {
  if (!bootstrap.length) return;
  const { multiaddr } = await import("@multiformats/multiaddr");
  const dialed = await Promise.allSettled(bootstrap.map((a) => host.dial(multiaddr(a), { signal: AbortSignal.timeout(timeoutMs) })));
  if (dialed.every((d) => d.status === "rejected")) {
    throw new Error(`could not reach any bootstrap peer (${bootstrap.join(", ")}): ${(dialed[0] as PromiseRejectedResult).reason?.message}`);
  }
  const deadline = Date.now() + timeoutMs;
  while (!(await speaksDht(host))) {
    if (Date.now() > deadline) throw new Error("bootstrap peers answered but none speaks the swarm's DHT protocol");
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function speaksDht(host: SwarmHost): Promise<boolean> {
  // The implementation's routing table (not on the KadDHT interface): queries need a peer in it.
  const table = (host.services.dht as unknown as { routingTable?: { size: number } }).routingTable;
  if (table) return table.size > 0;
  for (const peer of host.getPeers()) {
    // A connected peer that identify has not reached yet is not in the peer store: not a DHT peer yet.
    const known = (await host.peerStore.has(peer)) ? await host.peerStore.get(peer) : undefined;
    if (known?.protocols.includes(DHT_PROTOCOL)) return true;
  }
  return false;
}
