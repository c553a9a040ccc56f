// Connection limits of a swarm host (src/swarm/host.ts) against an attacker on raw TCP sockets:
// silent sockets that never finish the handshake must not lock new peers out, are closed within
// the upgrade timeout, and one IP or one peer gets only its share. Attackers connect from
// 127.0.0.2… (all of 127/8 is loopback on Linux) so that they are other IPs than the real client.
import assert from "node:assert/strict";
import net from "node:net";
import { after, test } from "node:test";
import { multiaddr } from "@multiformats/multiaddr";
import { DHT_PROTOCOL } from "../src/swarm/dht.js";
import {
  createSwarmHost,
  ipKey,
  isBannedForMisbehaviour,
  joinSwarm,
  SESSION_TAG,
  SESSION_TAG_VALUE,
  type ConnectionLimits,
  type SwarmHost,
  tagPeer,
} from "../src/swarm/host.js";

const UPGRADE_MS = 2000;
const hosts: SwarmHost[] = [];
const sockets: net.Socket[] = [];
after(async () => {
  for (const s of sockets) s.destroy();
  await Promise.all(hosts.map((h) => h.stop()));
});

async function server(limits: Partial<ConnectionLimits>): Promise<SwarmHost> {
  // Loopback is exempt from the per-IP caps by default (local swarms); here it is the internet.
  const host = await createSwarmHost({ role: "server", limits: { exemptLoopback: false, upgradeTimeoutMs: UPGRADE_MS, ...limits } });
  hosts.push(host);
  return host;
}

async function client(): Promise<SwarmHost> {
  const host = await createSwarmHost({ role: "client" });
  hosts.push(host);
  return host;
}

function portOf(host: SwarmHost): number {
  return Number(/\/tcp\/(\d+)/.exec(host.getMultiaddrs()[0]!.toString())![1]);
}

interface Raw {
  socket: net.Socket;
  openedAt: number;
  closedAt?: number;
}

/** A TCP socket from `from` that connects and then never says a word. Resolves once connected (or closed). */
function silentSocket(port: number, from: string): Promise<Raw> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress: from });
    sockets.push(socket);
    const raw: Raw = { socket, openedAt: Date.now() };
    // The node resets refused and timed-out sockets: ECONNRESET is the expected end here.
    socket.on("error", (e: NodeJS.ErrnoException) => assert.equal(e.code, "ECONNRESET", `socket from ${from}: ${e.message}`));
    socket.on("close", () => {
      raw.closedAt = Date.now();
      resolve(raw);
    });
    socket.on("connect", () => resolve(raw));
  });
}

const isOpen = (r: Raw) => r.closedAt === undefined;

async function until(condition: () => boolean, withinMs: number, what: string): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${withinMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const aliasesWork = await new Promise<boolean>((resolve) => {
  const probe = net
    .createServer((s) => s.destroy())
    .listen(0, "127.0.0.1", () => {
      const s = net.connect({ host: "127.0.0.1", port: (probe.address() as net.AddressInfo).port, localAddress: "127.0.0.2" });
      const done = (ok: boolean) => {
        s.destroy();
        probe.close();
        resolve(ok);
      };
      s.on("connect", () => done(true));
      s.on("error", () => done(false));
    });
});
const needsAliases = aliasesWork ? {} : { skip: "127.0.0.2 is not a loopback address here" };

test("silent sockets beyond the pending slots do not lock out a new client, and are closed within the upgrade timeout", needsAliases, async () => {
  const node = await server({ maxPendingUpgrades: 16, maxPendingPerIp: 4 });
  const port = portOf(node);
  // 8 attacker IPs × 4 silent sockets = 32, twice the pending slots.
  const attack = await Promise.all(Array.from({ length: 32 }, (_, i) => silentSocket(port, `127.0.0.${2 + (i % 8)}`)));
  // Each socket beyond the 16 slots evicts the oldest handshake: 16 stay, holding every slot.
  await until(() => attack.filter(isOpen).length === 16, 1500, "16 of the 32 silent sockets evicted");

  const started = Date.now();
  const c = await client();
  await c.dial(node.getMultiaddrs()[0]!);
  const rtt = await c.services.ping.ping(node.getMultiaddrs()[0]!);
  assert.ok(rtt >= 0);
  assert.ok(Date.now() - started < 1500, `the client needed ${Date.now() - started} ms`);
  // It got in while the attack still held the slots (its own handshake evicted one), not after they timed out.
  assert.ok(attack.filter(isOpen).length >= 15, `only ${attack.filter(isOpen).length} silent sockets were still open`);

  const lastOpened = Math.max(...attack.map((r) => r.openedAt));
  await until(() => attack.every((r) => !isOpen(r)), lastOpened + UPGRADE_MS + 1000 - Date.now(), "every silent socket closed by the node");
  for (const r of attack) assert.ok(r.closedAt! - r.openedAt <= UPGRADE_MS + 1000, `a silent socket lived ${r.closedAt! - r.openedAt} ms`);
  assert.equal(c.getConnections(node.peerId).length, 1, "the client's connection outlived the attack");
});

test("one IP gets at most maxPendingPerIp handshakes at once; other IPs are still served", needsAliases, async () => {
  const node = await server({ maxPendingPerIp: 3 });
  const port = portOf(node);
  const flood = await Promise.all(Array.from({ length: 8 }, () => silentSocket(port, "127.0.0.20")));
  // Refused at once, long before the upgrade timeout would have closed them.
  await until(() => flood.filter((r) => !isOpen(r)).length === 5, UPGRADE_MS / 2, "5 of 8 sockets from one IP refused");
  assert.equal(flood.filter(isOpen).length, 3);
  const other = await silentSocket(port, "127.0.0.21");
  assert.ok(isOpen(other), "a socket from another IP was refused");
  const c = await client();
  assert.ok((await c.services.ping.ping(node.getMultiaddrs()[0]!)) >= 0);
});

test("one IP holds at most maxConnectionsPerIp connections; a closed one frees its slot", async () => {
  const node = await server({ maxConnectionsPerIp: 2, newConnectionsPerIpPerSecond: 1000 });
  const addr = node.getMultiaddrs()[0]!;
  const [a, b, third] = await Promise.all([client(), client(), client()]);
  await a.services.ping.ping(addr);
  await b.services.ping.ping(addr);
  const refused = await third.dial(addr).then(
    (conn) => conn,
    (e: Error) => e,
  );
  // Refused after noise: the dialer may have seen its side finish before the node closed it.
  if (!(refused instanceof Error)) await until(() => refused.status !== "open", 2000, "the third connection from 127.0.0.1 closed");
  await assert.rejects(third.services.ping.ping(addr));
  assert.equal(node.getConnections(third.peerId).length, 0);
  await a.stop();
  await until(() => node.getConnections(a.peerId).length === 0, 2000, "the node saw the first client leave");
  assert.ok((await third.services.ping.ping(addr)) >= 0);
});

test("one peer holds at most maxConnectionsPerPeer connections", async () => {
  const node = await server({ maxConnectionsPerPeer: 2, newConnectionsPerIpPerSecond: 1000 });
  const addr = node.getMultiaddrs()[0]!;
  const c = await client();
  await c.dial(addr, { force: true });
  await c.dial(addr, { force: true });
  const refused = await c.dial(addr, { force: true }).then(
    (conn) => conn,
    (e: Error) => e,
  );
  if (!(refused instanceof Error)) await until(() => refused.status !== "open", 2000, "the third connection of one peer closed");
  assert.equal(c.getConnections(node.peerId).filter((x) => x.status === "open").length, 2);
  assert.equal(node.getConnections(c.peerId).length, 2);
});

test("near maxConnections idle connections are closed, lowest tag value first, so a newcomer finds room", async () => {
  const node = await server({ maxConnections: 4, keepFree: 1, idleGraceMs: 300, newConnectionsPerIpPerSecond: 1000 });
  const addr = node.getMultiaddrs()[0]!;
  const valued = await client();
  await valued.services.ping.ping(addr);
  await tagPeer(node, valued.peerId, SESSION_TAG, SESSION_TAG_VALUE);
  const idle = await client();
  await idle.services.ping.ping(addr);
  const later = await client();
  await later.services.ping.ping(addr);
  // Three connections is the watermark (4 - 1). Once they are past the grace period and quiet (the
  // clients' DHT queries done), a fourth is over it and one idle connection must go.
  const quiet = () => node.getConnections().every((c) => Date.now() - c.timeline.open > 300 && c.streams.length === 0);
  await until(() => node.getConnections().length === 3 && quiet(), 3000, "three quiet connections past the grace period");
  const newcomer = await client();
  assert.ok((await newcomer.services.ping.ping(addr)) >= 0);
  await until(() => node.getConnections().length <= 3, 3000, "the node pruned back to its watermark");
  // An untagged connection went; the tagged peer and the newcomer (within its grace) stayed.
  assert.equal(node.getConnections(idle.peerId).length + node.getConnections(later.peerId).length, 1);
  assert.equal(node.getConnections(valued.peerId).length, 1);
  assert.equal(node.getConnections(newcomer.peerId).length, 1);
});

test("the DHT's streams: an endless length prefix is reset at its 4th byte, and the DHT goes on answering", async () => {
  const node = await server({ exemptLoopback: true });
  const c = await client();
  await joinSwarm(c, [node.getMultiaddrs()[0]!.toString()]);
  const closest = async () => {
    const answered: string[] = [];
    for await (const e of c.services.dht.getClosestPeers(Uint8Array.from([1, 2, 3, 4]), { signal: AbortSignal.timeout(5000) })) {
      if (e.name === "PEER_RESPONSE") answered.push(e.from.toString());
    }
    return answered;
  };
  assert.deepEqual(await closest(), [node.peerId.toString()]);
  for (let round = 0; round < 3; round++) {
    const stream = await c.dialProtocol(node.getMultiaddrs()[0]!, DHT_PROTOCOL);
    const chunk = new Uint8Array(64 << 10).fill(0xff);
    const t0 = performance.now();
    let sent = 0;
    while (stream.writeStatus === "writable" && stream.status === "open" && sent < 64 << 20) {
      if (!stream.send(chunk)) await stream.onDrain().catch((e: Error) => assert.ok(e instanceof Error));
      sent += chunk.byteLength;
      await new Promise((r) => setImmediate(r));
    }
    const ms = performance.now() - t0;
    assert.ok(stream.status !== "open", `the stream is ${stream.status} after ${sent} bytes`);
    // The DHT's own reader would have spun on the prefix until its 10 s message timeout.
    assert.ok(ms < 2000, `reset after ${ms.toFixed(0)} ms`);
    assert.ok(sent <= 16 << 20, `${sent} bytes sent before the reset`);
    // Stream after stream the DHT answers: its handler runs once per stream (js-libp2p#3534 worked around).
    assert.deepEqual(await closest(), [node.peerId.toString()]);
  }
});

test("a peer that breaks the framing 5 times is banned: its connections closed, it and its IP refused before any handshake", needsAliases, async () => {
  const node = await server({ newConnectionsPerIpPerSecond: 1000 });
  const c = await client();
  const addr = node.getMultiaddrs()[0]!;
  for (let strike = 1; strike <= 5; strike++) {
    const stream = await c.dialProtocol(addr, DHT_PROTOCOL);
    stream.send(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff]));
    await until(() => stream.status !== "open", 2000, `strike ${strike}'s stream reset`);
    if (strike < 5) assert.ok(!isBannedForMisbehaviour(node, c.peerId), `not banned after ${strike} strikes`);
  }
  await until(() => isBannedForMisbehaviour(node, c.peerId), 2000, "the ban");
  await until(() => node.getConnections(c.peerId).length === 0, 2000, "the banned peer's connections closed");
  await assert.rejects(c.dial(addr, { force: true, signal: AbortSignal.timeout(5000) }), "the banned peer cannot connect again");
  // Its IP is refused at the socket (closed at once, no handshake); another IP is not.
  const port = portOf(node);
  const fromBanned = await silentSocket(port, "127.0.0.1");
  await until(() => !isOpen(fromBanned), 1000, "the banned IP's socket closed");
  // Another IP is answered: the node's multistream header comes back.
  const fromOther = await silentSocket(port, "127.0.0.3");
  const header = Buffer.from("\x13/multistream/1.0.0\n", "latin1");
  const answer = new Promise<Buffer>((resolve) => fromOther.socket.once("data", resolve));
  fromOther.socket.write(header);
  assert.ok((await answer).includes("/multistream/1.0.0"), "another IP's socket is answered");
});

test("inbound connections are counted per IPv4 address and per IPv6 /64", () => {
  const key = (a: string) => ipKey(multiaddr(a));
  assert.deepEqual(key("/ip4/203.0.113.7/tcp/4001"), { key: "203.0.113.7", loopback: false });
  assert.deepEqual(key("/ip4/127.0.0.9/tcp/4001"), { key: "127.0.0.9", loopback: true });
  assert.deepEqual(key("/ip6/::1/tcp/4001"), { key: "0:0:0:0::/64", loopback: true });
  assert.deepEqual(key("/ip6/::ffff:198.51.100.2/tcp/4001"), { key: "198.51.100.2", loopback: false });
  const a = key("/ip6/2001:db8:1:2:aaaa::1/tcp/4001");
  assert.deepEqual(a, { key: "2001:db8:1:2::/64", loopback: false });
  assert.deepEqual(key("/ip6/2001:db8:1:2:ffff:eeee:dddd:cccc/tcp/4001"), a, "one /64, one key");
  assert.notDeepEqual(key("/ip6/2001:db8:1:3::1/tcp/4001"), a);
  assert.deepEqual(key("/ip6/2001:db8::/tcp/4001"), { key: "2001:db8:0:0::/64", loopback: false });
  assert.equal(key("/dns4/example.com/tcp/4001"), undefined);
});
