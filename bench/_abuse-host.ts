// The attacker's libp2p plumbing for bench/abuse.ts: a host of its own (tcp, noise, yamux,
// identify, ping, and optionally a kad-dht client on the swarm's DHT protocol), raw streams on
// the node's protocol ids, and a reader that collects whatever the node answers.
import "../src/swarm/node20.js";
import { networkInterfaces } from "node:os";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import type { Stream } from "@libp2p/interface";
import { kadDHT, passthroughMapper, type KadDHT } from "@libp2p/kad-dht";
import { ping } from "@libp2p/ping";
import { tcp, type TCPSocketOptions } from "@libp2p/tcp";
import { lpStream } from "@libp2p/utils";
import { multiaddr } from "@multiformats/multiaddr";
import { createLibp2p, type Libp2p } from "libp2p";
import { DHT_PROTOCOL } from "../src/swarm/dht.js";
import { describeReply, frame, readReply, type Reply } from "./_abuse-wire.js";

/**
 * The source address the attacker dials from: this machine's first non-loopback IPv4 address, so
 * that the node (listening on 127.0.0.1) sees the attacker as a remote IP, subject to whatever it
 * applies to strangers, and the honest client (127.0.0.1) as local; 127.66.0.1 when there is none.
 */
export const ATTACKER_IP =
  Object.values(networkInterfaces())
    .flat()
    .find((i) => i && i.family === "IPv4" && !i.internal)?.address ?? "127.66.0.1";

export type AttackerHost = Libp2p<{ identify: unknown; ping: unknown; dht?: KadDHT }>;

/** A host that dials only (no listener); with `dht`, it also queries the swarm's DHT as a client. */
export async function attackerHost(opts: { dht?: boolean; sourceIp?: string } = {}): Promise<AttackerHost> {
  return (await createLibp2p({
    addresses: { listen: [] },
    // Dialing from an address of its own (any of 127/8 works on loopback), as an attacker on
    // another machine would: per-address limits on the node then tell it from the honest client.
    transports: [tcp({ dialOpts: { localAddress: opts.sourceIp ?? ATTACKER_IP } as TCPSocketOptions })],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ maxInboundStreams: 4096, maxOutboundStreams: 4096 })],
    services: {
      identify: identify(),
      ping: ping(),
      ...(opts.dht
        ? {
            dht: kadDHT({
              protocol: DHT_PROTOCOL,
              clientMode: true,
              peerInfoMapper: passthroughMapper,
              allowQueryWithZeroPeers: true,
              validators: { tessera: async () => {} },
              selectors: { tessera: () => 0 },
            }),
          }
        : {}),
    },
    connectionManager: { maxConnections: 10_000, maxParallelDials: 1000 },
  })) as unknown as AttackerHost;
}

/** A raw stream of `protocol` on the node at `addr` (a multiaddr with /p2p/). */
export async function rawStream(host: AttackerHost, addr: string, protocol: string, timeoutMs = 10_000): Promise<Stream> {
  const stream = await host.dialProtocol(multiaddr(addr), protocol, { signal: AbortSignal.timeout(timeoutMs), maxOutboundStreams: 4096 });
  // Nothing the node sends is refused for size here: the attacker wants to see it.
  stream.maxReadBufferLength = 1 << 30;
  return stream;
}

/** Bytes an attacker lets pile up in a stream's local write buffer before it waits. */
const MAX_UNSENT = 1 << 20;

/**
 * Writes, waiting for the stream to drain when its buffer is full; rejects when the node closed or
 * reset it. `send` does not always say the buffer is full (a stream whose muxer window is spent
 * can keep returning true while gigabytes pile up locally), so this also waits until the local
 * write buffer is under MAX_UNSENT: what it lets through is what the node's side can receive.
 */
export async function send(stream: Stream, bytes: Uint8Array, signal?: AbortSignal): Promise<void> {
  if (!stream.send(bytes)) await stream.onDrain({ signal });
  while (stream.writeBufferLength > MAX_UNSENT) {
    if (stream.status !== "open") throw new Error(`stream ${stream.status} with ${stream.writeBufferLength} bytes unsent`);
    signal?.throwIfAborted();
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Sends length-prefixed frames and collects every reply as it comes, until the stream ends. */
export class Conversation {
  readonly replies: Reply[] = [];
  /** The raw bytes of each reply (kept only with `keepBytes`). */
  readonly raw: Uint8Array[] = [];
  ended?: string;
  private waiters: (() => void)[] = [];
  private readonly lp;

  constructor(
    readonly stream: Stream,
    private readonly keepBytes = false,
  ) {
    this.lp = lpStream(stream, { maxDataLength: 1 << 30, maxBufferSize: 1 << 30 });
    void this.loop();
  }

  async write(body: Uint8Array, signal?: AbortSignal): Promise<void> {
    await send(this.stream, frame(body), signal);
  }

  /** The next reply after the `seen` first ones, or undefined after `timeoutMs` (or once the stream ended). */
  async next(seen: number, timeoutMs: number): Promise<Reply | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.replies.length <= seen && !this.ended && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.replies[seen];
  }

  /** Waits until the stream ends or `timeoutMs` passes; true if it ended. */
  async waitEnd(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended && Date.now() < deadline) await this.next(this.replies.length, deadline - Date.now());
    return Boolean(this.ended);
  }

  get summary(): string[] {
    return this.replies.map(describeReply);
  }

  close(): void {
    this.stream.abort(new Error("attacker done"));
  }

  private async loop(): Promise<void> {
    for (;;) {
      try {
        const bytes = (await this.lp.read()).subarray();
        this.replies.push(readReply(bytes));
        if (this.keepBytes) this.raw.push(bytes);
      } catch (e) {
        this.ended = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      }
      for (const w of this.waiters.splice(0)) w();
      if (this.ended) return;
    }
  }
}
