// The libp2p host every swarm participant runs: tcp, noise, yamux, identify, ping and the
// swarm's own kad-dht (servers store records; clients only query), with connection limits that keep
// room for new honest peers on the open internet (SERVER_LIMITS, InboundGuard, makeRoom below).
import "./node20.js";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import type { Connection, ConnectionGater, MultiaddrConnection, PeerId, PrivateKey, StreamMiddleware } from "@libp2p/interface";
import { type KadDHT } from "@libp2p/kad-dht";
import { peerIdFromString } from "@libp2p/peer-id";
import { ping, type Ping } from "@libp2p/ping";
import { tcp } from "@libp2p/tcp";
import { RateLimiter, tryGetNetConfig } from "@libp2p/utils";
import type { Multiaddr } from "@multiformats/multiaddr";
import { createLibp2p, type Libp2p } from "libp2p";
import { errorMessage, logger } from "../log.js";
import { DHT_PROTOCOL, swarmDht } from "./dht.js";
import { BanList } from "./bans.js";
import { guardFrames } from "./framing.js";

const log = logger("swarm:host");

export type SwarmHost = Libp2p<{ dht: KadDHT; ping: Ping; identify: unknown }>;

/**
 * What bounds a host's connections. libp2p enforces the first group itself; it has no per-IP or
 * per-peer caps and refuses newcomers once its pending or connection tables are full, so the host
 * adds a connection gater (`InboundGuard`: per-IP and per-peer caps, a per-IP rate, eviction of the
 * oldest pending handshake) and a room keeper (`makeRoom`: closes idle low-value connections before
 * the table is full).
 */
export interface ConnectionLimits {
  /** Established connections (libp2p `maxConnections`); inbound ones beyond it are refused. */
  maxConnections: number;
  /** Slots kept free below `maxConnections`: above `maxConnections - keepFree` idle, low-value connections are closed. 0: off. */
  keepFree: number;
  /** A connection younger than this is never closed to make room: time for a new peer to open a session and be tagged. */
  idleGraceMs: number;
  /** Inbound connections mid-handshake at once; a newcomer beyond it evicts the oldest handshake of the IP holding the most. */
  maxPendingUpgrades: number;
  /** An inbound connection must finish its handshake (multistream, noise, muxer) within this (libp2p `inboundUpgradeTimeout`). */
  upgradeTimeoutMs: number;
  /** Handshakes in progress from one IP (an IPv6 /64); more are refused at once. */
  maxPendingPerIp: number;
  /** Inbound connections, pending and established, from one IP (an IPv6 /64). */
  maxConnectionsPerIp: number;
  /** Connections to one peer id, both directions. */
  maxConnectionsPerPeer: number;
  /** New inbound connections accepted per second from one IP (an IPv6 /64). */
  newConnectionsPerIpPerSecond: number;
  /** Framing violations (an endless or oversized length prefix, a stalled message) from one peer within `misbehaviourWindowMs` that get it banned. */
  misbehaviourStrikes: number;
  misbehaviourWindowMs: number;
  /** Loopback peers skip the per-IP caps and rate (a local swarm is all 127.0.0.1); behind a local proxy or tunnel set false. */
  exemptLoopback: boolean;
  /** Outbound dials at once (libp2p `maxParallelDials`). */
  maxParallelDials: number;
  /** Outbound dials waiting; a dial beyond it fails at once (libp2p `maxDialQueueLength`). */
  maxDialQueueLength: number;
  /** Addresses of one peer tried per dial (libp2p `maxPeerAddrsToDial`). */
  maxPeerAddrsToDial: number;
  /** One outbound dial, all addresses; each address gets half (libp2p `dialTimeout` / `addressDialTimeout`). */
  dialTimeoutMs: number;
}

// The limits, in one place. A server is on the open internet: the numbers bound what one attacker
// (one IP, or one IPv6 /64) can hold and how long a half-open socket lives.
export const SERVER_LIMITS: Readonly<ConnectionLimits> = Object.freeze({
  // A node's real capacity is its KV cache (tens of sessions); the rest of its connections are DHT
  // traffic from clients and other servers. Each costs a socket plus noise and yamux state (tens of
  // KB), so 256 is cheap and leaves margin (libp2p's default is 300).
  maxConnections: 256,
  // 16 slots for newcomers: pruning idle connections starts at 240, before libp2p refuses at 256.
  keepFree: 16,
  // A client opens its session within a second or two of connecting (and is then tagged); 10 s is
  // also the connection monitor's ping interval, so a dead connection has been found by then.
  idleGraceMs: 10_000,
  // The measured attack filled libp2p's 64 slots with 64 silent sockets. The slot count stays (an
  // honest handshake takes a few RTTs, so 64 serve hundreds of newcomers a second); eviction and the
  // per-IP cap are what keep one open for an honest peer.
  maxPendingUpgrades: 64,
  // A handshake is about three round trips: under a second even at 300 ms RTT. 5 s (libp2p: 10 s)
  // leaves room for a slow link and a busy event loop while dropping silent sockets quickly.
  upgradeTimeoutMs: 5_000,
  // Peers behind one NAT rarely handshake at the same instant; 4 at once is plenty for them and
  // means filling the 64 pending slots takes 16 IPs.
  maxPendingPerIp: 4,
  // One IP may hold 1/16 of the table: room for clients behind a NAT, while 16 IPs are needed to fill it.
  maxConnectionsPerIp: 16,
  // One connection per peer is normal; simultaneous dials in both directions make two.
  maxConnectionsPerPeer: 3,
  // An honest peer connects once and stays; 10 a second per IP covers a NAT'd office reconnecting.
  newConnectionsPerIpPerSecond: 10,
  // An honest peer never sends a bad length prefix; a stalled message can happen on a bad link, but
  // not five in a minute. A banned peer's connections are closed and it (and its IP, unless
  // loopback) is refused before any handshake for 15 s, doubling with every ban (bans.ts): an
  // attacker reopening reset streams at 150 a second otherwise kept the node busy negotiating them.
  misbehaviourStrikes: 5,
  misbehaviourWindowMs: 60_000,
  // A loopback peer runs on this machine, not on the internet: local swarms and tests use 127.0.0.1.
  exemptLoopback: true,
  // A server's dials are its announcer's and the DHT's (a provide per block, alpha 3 each); queued
  // dials wait. Each running dial may be to a black-hole address a malicious DHT answer listed, so
  // bound them: 32 at once (libp2p: 100), 250 waiting (libp2p: 500), 8 addresses a peer (libp2p: 25;
  // an honest node lists a few: loopback, LAN, public, IPv6).
  maxParallelDials: 32,
  maxDialQueueLength: 250,
  maxPeerAddrsToDial: 8,
  // TCP connect plus handshake is a few RTTs; 8 s per dial (4 s per address; libp2p: 10 s, 6 s).
  dialTimeoutMs: 8_000,
});

// A client does not listen: the inbound limits are moot. Its connections are the route's nodes,
// verifiers and DHT query peers; above the cap libp2p prunes the idle ones (never those with streams).
export const CLIENT_LIMITS: Readonly<ConnectionLimits> = Object.freeze({
  ...SERVER_LIMITS,
  maxConnections: 128,
  keepFree: 0,
});

/**
 * libp2p's own per-IP rate (`inboundConnectionThreshold`, new connections a second from one exact
 * IP). It cannot exempt loopback, so it stays high enough for a local swarm (every peer 127.0.0.1)
 * and the guard's per-IP rate does the real limiting; it is a backstop.
 */
const LIBP2P_RATE_BACKSTOP = 100;

/** Tag for a peer with an open session on this node (see `tagPeer`): outranks the DHT's routing-table tag (1). */
export const SESSION_TAG = "tessera-session";
export const SESSION_TAG_VALUE = 50;

/** Protocols a connection can carry and still count as idle: libp2p runs them on its own. */
const IDLE_PROTOCOLS = new Set(["/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0"]);

export interface HostOptions {
  /** Servers listen and hold DHT records; clients only dial and query. */
  role: "server" | "client";
  listen?: string[];
  privateKey?: PrivateKey;
  /** Overrides of the role's limits (`SERVER_LIMITS` / `CLIENT_LIMITS`). */
  limits?: Partial<ConnectionLimits>;
}

const guards = new WeakMap<SwarmHost, InboundGuard>();

/**
 * Counts a framing violation against `peer` (a length prefix longer than the cap needs, a declared
 * length over it, a message that stalled past its deadline): at `misbehaviourStrikes` within the
 * window the peer is banned, its connections closed, and it and the IPs it connected from are
 * refused before any handshake while the ban lasts.
 */
export function misbehaved(host: SwarmHost, peer: PeerId | string, reason: string): void {
  guards.get(host)?.strike(typeof peer === "string" ? peer : peer.toString(), reason);
}

/** Whether `peer` is banned for misbehaviour now. */
export function isBannedForMisbehaviour(host: SwarmHost, peer: PeerId | string): boolean {
  return guards.get(host)?.isBanned(typeof peer === "string" ? peer : peer.toString()) ?? false;
}

/** The most a kad-dht message can be: @libp2p/utils' byte stream fails a read buffer over 4 MiB. */
export const DHT_MAX_MESSAGE_BYTES = 4 << 20;

/**
 * The kad-dht reads its streams with @libp2p/utils' lpStream, which never refuses a length prefix
 * that does not end (a core busy and memory growing until the DHT's 10 s message timeout, on every
 * stream a peer opens). A stream middleware watches the DHT's streams, inbound and outbound, and
 * aborts one at the first bad prefix, before the DHT's reader sees it (`guardFrames`).
 */
function guardDhtStreams(host: SwarmHost): void {
  const chain: StreamMiddleware[] = [];
  chain.push((stream, connection, next) => {
    // libp2p 3.3 appends the protocol's handler to this very array for every inbound stream
    // (js-libp2p#3534), so handlers pile up stream after stream: this stream's own, appended just
    // before the chain started, is taken back off and run here (an outbound stream has none).
    const own = chain.splice(1);
    guardFrames(stream, DHT_MAX_MESSAGE_BYTES, (e) => {
      log("peer %s: DHT stream aborted: %s", connection.remotePeer, e.message);
      misbehaved(host, connection.remotePeer, `DHT stream: ${e.code}`);
    });
    const handler = own.at(-1);
    if (handler) return handler(stream, connection, next);
    next(stream, connection);
  });
  host.use(DHT_PROTOCOL, chain);
}

export async function createSwarmHost(opts: HostOptions): Promise<SwarmHost> {
  const server = opts.role === "server";
  const overrides = Object.fromEntries(Object.entries(opts.limits ?? {}).filter(([, v]) => v !== undefined));
  const limits: ConnectionLimits = { ...(server ? SERVER_LIMITS : CLIENT_LIMITS), ...overrides };
  const guard = new InboundGuard(limits);
  const host = (await createLibp2p({
    privateKey: opts.privateKey,
    addresses: { listen: server ? (opts.listen ?? ["/ip4/127.0.0.1/tcp/0"]) : [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify(), ping: ping(), dht: swarmDht(server) },
    connectionGater: guard.gater(),
    connectionManager: {
      maxConnections: limits.maxConnections,
      // libp2p refuses at its own pending cap before the gater can evict, and an evicted handshake
      // leaves its count a moment later: twice the guard's cap keeps the guard deciding.
      maxIncomingPendingConnections: 2 * limits.maxPendingUpgrades,
      inboundConnectionThreshold: Math.max(LIBP2P_RATE_BACKSTOP, limits.newConnectionsPerIpPerSecond),
      inboundUpgradeTimeout: limits.upgradeTimeoutMs,
      maxParallelDials: limits.maxParallelDials,
      maxDialQueueLength: limits.maxDialQueueLength,
      maxPeerAddrsToDial: limits.maxPeerAddrsToDial,
      dialTimeout: limits.dialTimeoutMs,
      addressDialTimeout: Math.ceil(limits.dialTimeoutMs / 2),
    },
    // libp2p's connection monitor (on by default) pings every connection every 10 s and aborts the
    // ones that do not answer, so dead peers free their slots.
    connectionMonitor: { enabled: true, pingInterval: 10_000 },
  })) as unknown as SwarmHost;
  guard.host = host;
  guards.set(host, guard);
  guardDhtStreams(host);
  if (limits.keepFree > 0) keepRoom(host, limits);
  // The DHT answers provider queries with addresses from the peer store, which does not hold the
  // host's own: without them a node's own provider records would be dropped from its answers.
  if (server) await host.peerStore.merge(host.peerId, { multiaddrs: host.getMultiaddrs() });
  return host;
}

/**
 * Sets how much a peer is worth to this host, for connection pruning: when room is needed the
 * connections of the peers with the lowest sum of tag values close first (an untagged peer is worth
 * 0; the DHT tags its routing-table peers 1). `value` is libp2p's 0–100 (clamped, rounded); `null`
 * removes the tag; `ttlMs` makes it expire. A handler tags a peer when it opens a session and
 * removes the tag when the last one closes:
 * `tagPeer(host, peer, SESSION_TAG, SESSION_TAG_VALUE)` … `tagPeer(host, peer, SESSION_TAG, null)`.
 * A misbehaving peer gets no tag, or loses its tags, so it is the first to go.
 */
export async function tagPeer(host: SwarmHost, peer: PeerId | string, tag: string, value: number | null, ttlMs?: number): Promise<void> {
  const id = typeof peer === "string" ? peerIdFromString(peer) : peer;
  if (id.equals(host.peerId)) return;
  const entry =
    value === null
      ? undefined
      : { value: Math.min(100, Math.max(0, Math.round(value))), ...(ttlMs !== undefined ? { ttl: Math.max(0, Math.round(ttlMs)) } : {}) };
  await host.peerStore.merge(id, { tags: { [tag]: entry } });
}

/** An inbound connection the guard counts, from the accepted socket until it closes. */
interface Inbound {
  readonly ip: string;
  readonly maConn: MultiaddrConnection;
  pending: boolean;
  peer?: string;
  released: boolean;
}

/**
 * The connection gater: per-IP and per-peer caps and a per-IP rate, which libp2p lacks, and eviction
 * of the oldest pending handshake when the pending slots are full — libp2p would refuse the
 * newcomer instead, which is how 64 silent sockets locked every new client out.
 */
class InboundGuard {
  host?: SwarmHost;
  private readonly byIp = new Map<string, Set<Inbound>>();
  /** Handshakes in progress, oldest first (a Set keeps insertion order). */
  private readonly pending = new Set<Inbound>();
  private readonly byPeer = new Map<string, number>();
  private readonly tracked = new WeakMap<MultiaddrConnection, Inbound>();
  private readonly rate: RateLimiter;
  /** Recent framing violations per peer (times, oldest first). */
  private readonly strikes = new Map<string, number[]>();
  /** Banned peers and IPs (keys `peer:<id>` and `ip:<key>`). */
  private readonly bans = new BanList();

  constructor(private readonly limits: ConnectionLimits) {
    this.rate = new RateLimiter({ points: limits.newConnectionsPerIpPerSecond, duration: 1 });
  }

  gater(): ConnectionGater {
    return {
      denyInboundConnection: (maConn) => this.admit(maConn),
      denyInboundEncryptedConnection: (peerId, maConn) => this.identify(peerId, maConn),
      denyInboundUpgradedConnection: (_peerId, maConn) => this.upgraded(maConn),
    };
  }

  strike(peer: string, reason: string): void {
    const now = Date.now();
    const recent = (this.strikes.get(peer) ?? []).filter((t) => now - t < this.limits.misbehaviourWindowMs);
    recent.push(now);
    this.strikes.set(peer, recent);
    log("peer %s misbehaved (%d of %d strikes): %s", peer, recent.length, this.limits.misbehaviourStrikes, reason);
    if (recent.length < this.limits.misbehaviourStrikes) return;
    this.strikes.delete(peer);
    const ms = this.bans.ban(`peer:${peer}`, now);
    const ips = new Set<string>();
    for (const c of this.host?.getConnections(peerIdFromString(peer)) ?? []) {
      const addr = ipKey(c.remoteAddr);
      if (c.direction === "inbound" && addr && !(addr.loopback && this.limits.exemptLoopback)) ips.add(addr.key);
    }
    for (const ip of ips) this.bans.ban(`ip:${ip}`, now);
    log.error(
      "banned peer %s%s for %d s after %d framing violations (last: %s)",
      peer,
      ips.size ? ` and ${[...ips].join(", ")}` : "",
      ms / 1000,
      recent.length,
      reason,
    );
    this.host?.hangUp(peerIdFromString(peer)).catch((e: unknown) => log.error("could not close the connections of banned peer %s: %s", peer, errorMessage(e)));
  }

  isBanned(peer: string): boolean {
    return this.bans.isBanned(`peer:${peer}`, Date.now());
  }

  /** A new socket, before any handshake. True: refuse it (libp2p then closes the socket). */
  private admit(maConn: MultiaddrConnection): boolean {
    const addr = ipKey(maConn.remoteAddr);
    if (!addr) return false;
    if (this.bans.isBanned(`ip:${addr.key}`, Date.now())) {
      log.trace("refused %a: %s is banned for misbehaviour", maConn.remoteAddr, addr.key);
      return true;
    }
    if (!(addr.loopback && this.limits.exemptLoopback)) {
      try {
        this.rate.consume(addr.key, 1);
      } catch (e) {
        log(
          "refused %a: more than %d new connections a second from %s (%s)",
          maConn.remoteAddr,
          this.limits.newConnectionsPerIpPerSecond,
          addr.key,
          errorMessage(e),
        );
        return true;
      }
      const held = this.byIp.get(addr.key);
      let pending = 0;
      for (const c of held ?? []) if (c.pending) pending++;
      if (pending >= this.limits.maxPendingPerIp) {
        log("refused %a: %s already has %d handshakes in progress", maConn.remoteAddr, addr.key, pending);
        return true;
      }
      if ((held?.size ?? 0) >= this.limits.maxConnectionsPerIp) {
        log("refused %a: %s already holds %d connections", maConn.remoteAddr, addr.key, held?.size);
        return true;
      }
    }
    if (this.pending.size >= this.limits.maxPendingUpgrades) this.evictOne();
    const c: Inbound = { ip: addr.key, maConn, pending: true, released: false };
    this.tracked.set(maConn, c);
    this.pending.add(c);
    let held = this.byIp.get(addr.key);
    if (!held) this.byIp.set(addr.key, (held = new Set()));
    held.add(c);
    maConn.addEventListener("close", () => this.release(c), { once: true });
    if (maConn.status !== "open") this.release(c);
    return false;
  }

  /** The handshake named the peer: refuse a peer that already holds its share of connections. */
  private identify(peerId: PeerId, maConn: MultiaddrConnection): boolean {
    const c = this.tracked.get(maConn);
    if (!c || c.released) return false;
    const id = peerId.toString();
    if (this.isBanned(id)) {
      log.trace("refused %a: peer %s is banned for misbehaviour", maConn.remoteAddr, id);
      return true;
    }
    const outbound = this.host?.getConnections(peerId).filter((x) => x.direction === "outbound").length ?? 0;
    const held = (this.byPeer.get(id) ?? 0) + outbound;
    if (held >= this.limits.maxConnectionsPerPeer) {
      log("refused %a: peer %s already holds %d connections", maConn.remoteAddr, id, held);
      return true;
    }
    c.peer = id;
    this.byPeer.set(id, (this.byPeer.get(id) ?? 0) + 1);
    return false;
  }

  private upgraded(maConn: MultiaddrConnection): boolean {
    const c = this.tracked.get(maConn);
    if (c) {
      c.pending = false;
      this.pending.delete(c);
    }
    return false;
  }

  /** Closes the oldest handshake of the IP with the most in progress: a flood's own sockets go first. */
  private evictOne(): void {
    const perIp = new Map<string, number>();
    for (const c of this.pending) perIp.set(c.ip, (perIp.get(c.ip) ?? 0) + 1);
    let victim: Inbound | undefined;
    for (const c of this.pending) if (!victim || perIp.get(c.ip)! > perIp.get(victim.ip)!) victim = c;
    if (!victim) return;
    log("pending handshakes full (%d): evicting the oldest from %s", this.pending.size, victim.ip);
    this.release(victim);
    victim.maConn.abort(new Error("evicted: too many inbound handshakes in progress"));
  }

  private release(c: Inbound): void {
    if (c.released) return;
    c.released = true;
    this.pending.delete(c);
    const held = this.byIp.get(c.ip);
    held?.delete(c);
    if (held?.size === 0) this.byIp.delete(c.ip);
    if (c.peer) {
      const n = (this.byPeer.get(c.peer) ?? 1) - 1;
      if (n > 0) this.byPeer.set(c.peer, n);
      else this.byPeer.delete(c.peer);
    }
  }
}

/**
 * The key an inbound address is counted under: an IPv4 address, or an IPv6 /64 (one subscriber's
 * prefix: an attacker has 2^64 addresses in it). Undefined for non-IP addresses.
 */
export function ipKey(addr: Multiaddr): { key: string; loopback: boolean } | undefined {
  const config = tryGetNetConfig(addr);
  if (config?.type === "ip4") return { key: config.host, loopback: config.host.startsWith("127.") };
  if (config?.type !== "ip6") return undefined;
  const host = config.host.toLowerCase().split("%")[0]!;
  const groups = expandIp6(host);
  if (!groups) return { key: host, loopback: false };
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    // An IPv4 client of a dual-stack listener (::ffff:a.b.c.d): counted as that IPv4 address.
    const v4 = [groups[6]! >> 8, groups[6]! & 0xff, groups[7]! >> 8, groups[7]! & 0xff].join(".");
    return { key: v4, loopback: v4.startsWith("127.") };
  }
  const loopback = groups.slice(0, 7).every((g) => g === 0) && groups[7] === 1;
  return {
    key: `${groups
      .slice(0, 4)
      .map((g) => g.toString(16))
      .join(":")}::/64`,
    loopback,
  };
}

/** The eight 16-bit groups of an IPv6 address, or undefined when it does not parse. */
function expandIp6(host: string): number[] | undefined {
  const halves = host.split("::");
  if (halves.length > 2) return undefined;
  const part = (s: string | undefined) => (s ? s.split(":") : []);
  const head = part(halves[0]);
  const tail = part(halves[1]);
  const last = (halves.length === 2 ? tail : head).at(-1);
  // An embedded IPv4 tail (::a.b.c.d) is two groups.
  const v4 = last && /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(last);
  const list = halves.length === 2 ? tail : head;
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    list.splice(-1, 1, ((a << 8) | b).toString(16), ((c << 8) | d).toString(16));
  }
  const fill = 8 - head.length - tail.length;
  if (halves.length === 2 ? fill < 1 : fill !== 0) return undefined;
  const groups = [...head, ...Array<string>(halves.length === 2 ? fill : 0).fill("0"), ...tail].map((g) => parseInt(g, 16));
  return groups.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? groups : undefined;
}

/**
 * The room keeper: libp2p refuses inbound connections once `maxConnections` are open and only prunes
 * above it, so a table filled by idle connections would lock newcomers out. Above
 * `maxConnections - keepFree` this closes idle connections (only libp2p's own protocols open, older
 * than `idleGraceMs`): lowest tag value first, then inbound before outbound, then oldest.
 */
function keepRoom(host: SwarmHost, limits: ConnectionLimits): void {
  let running = false;
  const check = () => {
    if (running || host.status !== "started") return;
    if (host.getConnections().length <= limits.maxConnections - limits.keepFree) return;
    running = true;
    makeRoom(host, limits)
      .catch((e: unknown) => log.error("making room failed: %s", errorMessage(e)))
      .finally(() => (running = false));
  };
  // New connections trigger a check; the timer catches connections that pass the grace period later.
  const timer = setInterval(check, Math.min(1000, limits.idleGraceMs));
  timer.unref();
  host.addEventListener("connection:open", check);
  host.addEventListener(
    "stop",
    () => {
      clearInterval(timer);
      host.removeEventListener("connection:open", check);
    },
    { once: true },
  );
}

async function makeRoom(host: SwarmHost, limits: ConnectionLimits): Promise<void> {
  const connections = host.getConnections();
  const excess = connections.length - (limits.maxConnections - limits.keepFree);
  if (excess <= 0) return;
  const now = Date.now();
  const idle = connections.filter(
    (c) =>
      c.status === "open" && now - c.timeline.open >= limits.idleGraceMs && c.streams.every((s) => s.protocol !== undefined && IDLE_PROTOCOLS.has(s.protocol)),
  );
  const values = await Promise.all(idle.map((c) => peerValue(host, c.remotePeer)));
  const order = idle
    .map((c, i) => ({ c, value: values[i]! }))
    .sort((a, b) => a.value - b.value || direction(a.c) - direction(b.c) || a.c.timeline.open - b.c.timeline.open);
  for (const { c } of order.slice(0, excess)) {
    log("%d connections of %d: closing idle %s connection to %p", connections.length, limits.maxConnections, c.direction, c.remotePeer);
    c.close({ signal: AbortSignal.timeout(1000) }).catch((e: unknown) => c.abort(e instanceof Error ? e : new Error(String(e))));
  }
}

const direction = (c: Connection) => (c.direction === "inbound" ? 0 : 1);

/** The sum of a peer's tag values (0 for a peer the store does not know). */
async function peerValue(host: SwarmHost, peer: PeerId): Promise<number> {
  try {
    const known = await host.peerStore.get(peer);
    let sum = 0;
    for (const t of known.tags.values()) sum += t.value;
    return sum;
  } catch (e) {
    if ((e as Error).name !== "NotFoundError") log.error("reading the tags of %p failed: %s", peer, errorMessage(e));
    return 0;
  }
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
