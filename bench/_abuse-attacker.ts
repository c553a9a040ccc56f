// The attacker of bench/abuse.ts, as a child process of its own (so that its traffic does not
// share an event loop with the honest client being measured):
//   node --import tsx bench/_abuse-attacker.ts <attack> '<params json>'
// stdout: `ready` once the attack is under way (the honest "during" phase starts), `log <text>`
// lines, and one `result <json>` line (what the attacker observed) before it exits.
// Every attack is written from the attacker's side: raw libp2p streams on the node's protocol ids
// (with the encoders of _abuse-wire.ts) or raw TCP; never the project's client.
import "../src/swarm/node20.js";
import { randomBytes } from "node:crypto";
import { createServer, type Server, Socket } from "node:net";
import { generateKeyPair } from "@libp2p/crypto/keys";
import type { Stream } from "@libp2p/interface";
import { lpStream } from "@libp2p/utils";
import { multiaddr } from "@multiformats/multiaddr";
import { announce, blockKey, DHT_PROTOCOL } from "../src/swarm/dht.js";
import { PROBE_PROTOCOL } from "../src/swarm/link-probe.js";
import { PUSH_PROTOCOL, SPAN_PROTOCOL } from "../src/swarm/protocol.js";
import { signRecord } from "../src/swarm/signed-record.js";
import { boastfulInfo, permissiveDhtHost } from "../test/support/rogue.js";
import { ATTACKER_IP, attackerHost, type AttackerHost, Conversation, rawStream, send } from "./_abuse-host.js";
import * as w from "./_abuse-wire.js";

export interface NodeRef {
  addr: string;
  peerId: string;
  start: number;
  end: number;
  port: number;
}

/** What every attack is told about the model. */
export interface ModelParams {
  modelId: string;
  numBlocks: number;
  hiddenSize: number;
  vocabSize: number;
  maxPositions: number;
}

export interface AttackParams extends ModelParams {
  target: NodeRef;
  others: NodeRef[];
  quick: boolean;
  /** How long the sustained part of the attack lasts. */
  durationMs: number;
  seed: number;
  [k: string]: unknown;
}

const out = (line: string) => process.stdout.write(line + "\n");
const ready = () => out("ready");
const note = (text: string) => out(`log ${text}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sid = () => randomBytes(16).toString("hex");
const errText = (e: unknown) => (e instanceof Error ? `${e.name}: ${e.message}` : String(e));
const count = (xs: string[]) => xs.reduce<Record<string, number>>((m, x) => ((m[x] = (m[x] ?? 0) + 1), m), {});
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)]! : null;
};

/** Opens a session on `node` and waits for the node's answer to the open. */
async function openSession(host: AttackerHost, node: NodeRef, maxLength: number, opts: { sessionId?: string; keepBytes?: boolean } = {}) {
  const conv = new Conversation(await rawStream(host, node.addr, SPAN_PROTOCOL), opts.keepBytes);
  const sessionId = opts.sessionId ?? sid();
  await conv.write(w.open(node.start, node.end, maxLength, sessionId));
  const reply = await conv.next(0, 15_000);
  return { conv, sessionId, reply, opened: reply?.kind === w.KIND.Opened };
}

/**
 * The largest maxLength the node accepts: asks for 2^31 − 1 and reads the bound from the refusal
 * ("maxLength X outside 1..N"); else halves until an open succeeds.
 */
async function probeMaxLength(host: AttackerHost, node: NodeRef): Promise<{ max: number; how: string }> {
  const huge = await openSession(host, node, 2 ** 31 - 1);
  huge.conv.close();
  if (huge.opened) return { max: 2 ** 31 - 1, how: "2^31-1 accepted" };
  const m = /1\.\.(\d+)/.exec(huge.reply?.message ?? "");
  if (m) return { max: Number(m[1]), how: `refusal said ${huge.reply?.code}: ${huge.reply?.message}` };
  for (let n = 1 << 20; n >= 1; n >>= 1) {
    const s = await openSession(host, node, n);
    s.conv.close();
    if (s.opened) return { max: n, how: `halving (2^31-1 refused: ${huge.reply?.code ?? "silence"})` };
  }
  return { max: 0, how: "nothing accepted" };
}

// ------------------------------------------------------------------ 1. endless length prefix

async function endlessPrefix(p: AttackParams) {
  const host = await attackerHost();
  const chunk = new Uint8Array(64 << 10).fill(0xff);
  const end = Date.now() + p.durationMs;
  const lifetimes: { protocol: string; ms: number; mib: number; why: string }[] = [];
  let opened = 0;
  let openFailures = 0;
  let bytes = 0;
  ready();
  // Three streams on the span protocol (the node's own reader) and three on the kad-dht's.
  await Promise.all(
    [SPAN_PROTOCOL, SPAN_PROTOCOL, SPAN_PROTOCOL, DHT_PROTOCOL, DHT_PROTOCOL, DHT_PROTOCOL].map(async (protocol) => {
      while (Date.now() < end) {
        const t0 = Date.now();
        let sent = 0;
        let stream: Stream;
        try {
          stream = await rawStream(host, p.target.addr, protocol, 5000);
          opened++;
        } catch (e) {
          openFailures++;
          note(`open failed: ${errText(e)}`);
          await sleep(200);
          continue;
        }
        try {
          while (Date.now() < end) {
            await send(stream, chunk, AbortSignal.timeout(Math.max(1, end - Date.now())));
            sent += chunk.byteLength;
          }
        } catch (e) {
          if (Date.now() < end) lifetimes.push({ protocol, ms: Date.now() - t0, mib: sent / 2 ** 20, why: errText(e).slice(0, 160) });
        } finally {
          bytes += sent;
          stream.abort(new Error("attack over"));
        }
      }
    }),
  );
  await host.stop();
  return {
    streams_opened: opened,
    open_failures: openFailures,
    mib_sent: bytes / 2 ** 20,
    streams_ended_by_node: lifetimes.length,
    ended_streams: [SPAN_PROTOCOL, DHT_PROTOCOL].flatMap((pr) => lifetimes.filter((l) => l.protocol === pr).slice(0, 3)),
    median_stream_lifetime_ms: median(lifetimes.map((l) => l.ms)),
    median_stream_lifetime_ms_by_protocol: Object.fromEntries(
      [SPAN_PROTOCOL, DHT_PROTOCOL].map((pr) => [pr, median(lifetimes.filter((l) => l.protocol === pr).map((l) => l.ms))]),
    ),
    streams_ended_by_protocol: Object.fromEntries([SPAN_PROTOCOL, DHT_PROTOCOL].map((pr) => [pr, lifetimes.filter((l) => l.protocol === pr).length])),
  };
}

// ------------------------------------------------------------------ 2. huge announced messages

async function hugeMessages(p: AttackParams) {
  const streams = Number(p.streams);
  const announced = Number(p.announcedBytes);
  const sendBytes = Number(p.sendBytes);
  const host = await attackerHost();
  const chunk = new Uint8Array(1 << 20);
  const t0 = Date.now();
  const sendDeadline = t0 + Number(p.sendDeadlineMs);
  ready();
  const per = await Promise.all(
    Array.from({ length: streams }, async () => {
      const r = { sent: 0, ended: undefined as string | undefined, sentAllMs: undefined as number | undefined };
      let stream: Stream;
      try {
        stream = await rawStream(host, p.target.addr, SPAN_PROTOCOL, 10_000);
      } catch (e) {
        r.ended = `open failed: ${errText(e)}`;
        return { r, stream: undefined };
      }
      try {
        await send(stream, w.varint(announced));
        while (r.sent < sendBytes && Date.now() < sendDeadline) {
          const n = Math.min(chunk.byteLength, sendBytes - r.sent);
          await send(stream, n === chunk.byteLength ? chunk : chunk.subarray(0, n), AbortSignal.timeout(Math.max(1, sendDeadline - Date.now())));
          r.sent += n;
        }
        if (r.sent >= sendBytes) r.sentAllMs = Date.now() - t0;
      } catch (e) {
        r.ended = errText(e).slice(0, 160);
      }
      return { r, stream };
    }),
  );
  const sentPhaseMs = Date.now() - t0;
  note(`sent ${(per.reduce((n, x) => n + x.r.sent, 0) / 2 ** 20).toFixed(0)} MiB in ${sentPhaseMs} ms; stalling`);
  await sleep(Number(p.stallMs));
  const openAtAbort = per.filter((x) => x.stream && x.stream.status === "open").length;
  for (const x of per) x.stream?.abort(new Error("attacker aborts"));
  await sleep(200);
  await host.stop();
  return {
    streams,
    announced_mib: announced / 2 ** 20,
    planned_mib_per_stream: sendBytes / 2 ** 20,
    mib_sent_total: per.reduce((n, x) => n + x.r.sent, 0) / 2 ** 20,
    streams_fully_sent: per.filter((x) => x.r.sentAllMs !== undefined).length,
    streams_cut_by_node_while_sending: per.filter((x) => x.r.ended).length,
    cut_reasons: count(per.flatMap((x) => (x.r.ended ? [x.r.ended.replace(/\d+/g, "N")] : []))),
    streams_still_open_after_stall: openAtAbort,
    send_phase_ms: sentPhaseMs,
  };
}

// ------------------------------------------------------------------ 3. half-open TCP

async function halfOpenTcp(p: AttackParams) {
  const total = Number(p.sockets);
  const end = Date.now() + p.durationMs;
  const ms = Uint8Array.of(0x13, ...new TextEncoder().encode("/multistream/1.0.0\n"));
  const noiseProposal = Uint8Array.of(0x07, ...new TextEncoder().encode("/noise\n"));
  const held: Record<string, number[]> = { "one IP": [], botnet: [] };
  const connects: Record<string, number> = { "one IP": 0, botnet: 0 };
  const modes = ["silent", "multistream+noise proposal, no handshake", "slowloris (1 byte / 2 s)"];
  let opened = 0;
  let refused = 0;
  let closedByNode = 0;
  const sockets = new Set<Socket>();
  let firstReady: () => void;
  const initial = new Promise<void>((r) => (firstReady = r));
  let connected = 0;
  const openOne = (i: number) => {
    if (Date.now() >= end) return;
    const mode = i % modes.length;
    const t0 = Date.now();
    let trickle: NodeJS.Timeout | undefined;
    const s = new Socket();
    sockets.add(s);
    const group = i < total / 2 ? "one IP" : "botnet";
    s.on("connect", () => {
      opened++;
      connects[group]!++;
      if (++connected === total) firstReady();
      if (mode === 1) s.write(Buffer.concat([ms, noiseProposal]));
      if (mode === 2) {
        let k = 0;
        trickle = setInterval(() => k < ms.byteLength && s.write(ms.subarray(k, ++k)), 2000);
      }
    });
    s.on("data", () => {}); // the node's multistream answer: read and ignored
    s.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "ECONNREFUSED") refused++;
    });
    s.on("close", () => {
      clearInterval(trickle);
      sockets.delete(s);
      if (Date.now() < end) {
        closedByNode++;
        held[group]!.push(Date.now() - t0);
        setTimeout(() => openOne(i), 50); // keep the pressure: reconnect
      }
    });
    // The first half from the attacker's one (remote) address; the rest each from a loopback
    // address of its own: a botnet, which no per-address limit tells apart.
    s.connect({ port: p.target.port, host: "127.0.0.1", localAddress: group === "one IP" ? ATTACKER_IP : `127.67.${1 + (i >> 8)}.${1 + (i & 0xff)}` });
  };
  for (let i = 0; i < total; i++) openOne(i);
  await Promise.race([initial, sleep(5000)]);
  ready();
  await sleep(Math.max(0, end - Date.now()));
  for (const s of sockets) s.destroy();
  return {
    sockets: total,
    modes,
    source_addresses: `${total / 2} from ${ATTACKER_IP} (one IP), ${total / 2} each from its own loopback address 127.67.x.y (botnet)`,
    connects: opened,
    refused,
    closed_by_node_during_attack: closedByNode,
    by_group: Object.fromEntries(
      Object.entries(held).map(([g, h]) => [
        g,
        { connects: connects[g], closed_by_node: h.length, median_ms_held: median(h), max_ms_held: h.length ? Math.max(...h) : null },
      ]),
    ),
  };
}

/** Opens `count` sessions of `maxLength` on `target`: those the node opened, and how it answered each. */
async function openMany(host: Awaited<ReturnType<typeof attackerHost>>, target: AttackParams["target"], maxLength: number, count: number) {
  const sessions: Awaited<ReturnType<typeof openSession>>[] = [];
  const opens: string[] = [];
  for (let i = 0; i < count; i++) {
    const s = await openSession(host, target, maxLength);
    opens.push(s.reply ? w.describeReply(s.reply) : "silence");
    if (s.opened) sessions.push(s);
    else s.conv.close();
  }
  return { sessions, opens };
}

// ------------------------------------------------------------------ 4. KV exhaustion from one peer

async function cacheExhaustion(p: AttackParams) {
  const host = await attackerHost();
  const { max, how } = await probeMaxLength(host, p.target);
  const { sessions, opens } = await openMany(host, p.target, max, Number(p.sessions));
  // Then as many more as the node lets this one peer hold (up to `maxSessions`), all held.
  let refusal = "none before the attacker's own limit";
  while (sessions.length < Number(p.maxSessions)) {
    const extra = await openSession(host, p.target, max);
    if (extra.opened) {
      sessions.push(extra);
      continue;
    }
    refusal = extra.reply ? `${w.describeReply(extra.reply)}${extra.reply.message ? `: ${extra.reply.message}` : ""}` : "silence";
    extra.conv.close();
    break;
  }
  ready();
  const end = Date.now() + p.durationMs;
  const stepOutcomes: string[] = [];
  let round = 0;
  while (Date.now() < end) {
    await Promise.all(
      sessions.map(async (s) => {
        const seen = s.conv.replies.length;
        await s.conv.write(w.tokenStep(round + 1, round, [round % 4000])).catch(() => {});
        const r = await s.conv.next(seen, 4000);
        stepOutcomes.push(r ? w.describeReply(r) : s.conv.ended ? "stream ended" : "silence");
      }),
    );
    round++;
    await sleep(Math.min(Number(p.keepAliveMs), Math.max(0, end - Date.now())));
  }
  for (const s of sessions) s.conv.close();
  await host.stop();
  return {
    max_length_allowed: max,
    max_length_found_by: how,
    first_opens: opens,
    sessions_held: sessions.length,
    token_blocks_reserved: sessions.length * max * (p.target.end - p.target.start),
    first_refusal_after_them: refusal,
    keepalive_rounds: round,
    keepalive_outcomes: count(stepOutcomes),
  };
}

// ------------------------------------------------------------------ 5. pushes into a session linked to the attacker

async function pushFlood(p: AttackParams) {
  const host = await attackerHost();
  const me = host.peerId.toString();
  const { max } = await probeMaxLength(host, p.target);
  const s = await openSession(host, p.target, max);
  if (!s.opened) {
    await host.stop();
    return { opened: false, open_reply: s.reply ? w.describeReply(s.reply) : "silence" };
  }
  await s.conv.write(w.link(undefined, me));
  await sleep(300);
  const tensorOf = (rows: number) =>
    w.tensorFrame(
      new Float32Array(rows * p.hiddenSize).map((_, i) => 0.01 * Math.sin(i)),
      [1, rows, p.hiddenSize],
    );
  // A push of the asked size first: a node that bounds hidden states by its session length refuses
  // it (and closes the push stream); the flood then uses the largest the session takes.
  let rows = Math.floor(Number(p.pushBytes) / 4 / p.hiddenSize);
  let pushStream = await rawStream(host, p.target.addr, PUSH_PROTOCOL);
  const trial = new Conversation(pushStream);
  const seenBeforeTrial = s.conv.replies.length;
  await send(pushStream, w.frame(w.push(s.sessionId, w.step(1, 0, 0, tensorOf(rows)))));
  const trialReply = await s.conv.next(seenBeforeTrial, 5000);
  await trial.waitEnd(500);
  const asked = {
    rows,
    answer: trialReply ? `${w.describeReply(trialReply)}${trialReply.message ? `: ${trialReply.message.slice(0, 100)}` : ""}` : "no reply on the span stream",
    push_stream: trial.ended ? `closed by the node (${trial.ended.slice(0, 100)})` : "left open",
  };
  if (trial.ended && rows > max) {
    rows = max;
    pushStream = await rawStream(host, p.target.addr, PUSH_PROTOCOL);
  }
  const tensor = tensorOf(rows);
  const end = Date.now() + p.durationMs;
  const t0 = Date.now();
  let pushed = 0;
  let pushError: string | undefined;
  ready();
  try {
    for (let i = 2; i <= Number(p.pushes) + 1 && Date.now() < end; i++) {
      await send(pushStream, w.frame(w.push(s.sessionId, w.step(i, 0, 0, tensor))), AbortSignal.timeout(Math.max(1, end - Date.now())));
      pushed++;
    }
  } catch (e) {
    if (Date.now() < end) pushError = errText(e).slice(0, 200);
  }
  const pushedMs = Date.now() - t0;
  await sleep(Math.max(0, end - Date.now()));
  const replies = s.conv.summary;
  s.conv.close();
  pushStream.abort(new Error("attack over"));
  await host.stop();
  return {
    max_length_allowed: max,
    asked_size_push: asked,
    rows_per_push: rows,
    push_mib: (tensor.byteLength + 27) / 2 ** 20,
    pushes_written: pushed,
    ms_to_write_them: pushedMs,
    push_stream_error: pushError ?? null,
    replies_on_the_span_stream: count(replies),
    span_stream_ended: s.conv.ended ?? null,
  };
}

// ------------------------------------------------------------------ 6. prefill loops

async function prefillLoops(p: AttackParams) {
  const host = await attackerHost();
  const { max } = await probeMaxLength(host, p.target);
  let length = max;
  const { sessions, opens } = await openMany(host, p.target, max, Number(p.sessions));
  let fellBack: string | undefined;
  const tokens = (n: number) => Array.from({ length: n }, (_, i) => (i * 7919) % 4000);
  // One trial step: a session past the model's positions may refuse a full-length prefill.
  if (sessions[0]) {
    const first = sessions[0];
    await first.conv.write(w.tokenStep(1, 0, tokens(length)));
    const r = await first.conv.next(1, 60_000);
    if (r?.kind !== w.KIND.Result && length > p.maxPositions) {
      fellBack = `a ${length}-token prefill got ${r ? w.describeReply(r) : "silence"} (${r?.message ?? ""}); looping ${p.maxPositions}-token prefills instead`;
      length = p.maxPositions;
    }
  }
  ready();
  const end = Date.now() + p.durationMs;
  const outcomes: string[] = [];
  const latencies: number[] = [];
  await Promise.all(
    sessions.map(async (s, k) => {
      for (let id = k === 0 ? 2 : 1; Date.now() < end; id++) {
        const seen = s.conv.replies.length;
        const t0 = Date.now();
        try {
          await s.conv.write(w.tokenStep(id, 0, tokens(length)));
        } catch (e) {
          outcomes.push(`write failed: ${errText(e).slice(0, 60)}`);
          return;
        }
        const r = await s.conv.next(seen, 120_000);
        latencies.push(Date.now() - t0);
        outcomes.push(r ? w.describeReply(r) : s.conv.ended ? "stream ended" : "silence");
        if (!r) return;
      }
    }),
  );
  for (const s of sessions) s.conv.close();
  await host.stop();
  return {
    max_length_allowed: max,
    prefill_tokens: length,
    fell_back: fellBack ?? null,
    opens,
    sessions_looping: sessions.length,
    prefills_answered: outcomes.filter((o) => o === "result").length,
    outcomes: count(outcomes),
    median_prefill_ms_seen_by_attacker: median(latencies),
  };
}

// ------------------------------------------------------------------ 7. LINKs that plant junk addresses for another node

async function junkLinks(p: AttackParams) {
  const victim = p.others.find((o) => o.start === p.target.end) ?? p.others[0]!;
  const tarpitSockets: Socket[] = [];
  let tarpitAccepts = 0;
  const tarpit: Server = createServer((sock) => {
    tarpitAccepts++;
    tarpitSockets.push(sock);
    sock.on("error", () => {});
  });
  await new Promise<void>((r) => tarpit.listen(0, "0.0.0.0", () => r()));
  const tp = (tarpit.address() as { port: number }).port;
  const junk = (i: number): string[] => [
    // The whole of 127/8 is loopback: these reach the tarpit, which accepts and never speaks.
    ...Array.from({ length: 8 }, (_, k) => `/ip4/127.${1 + (i % 250)}.${k}.${1 + Math.floor(i / 250)}/tcp/${tp}`),
    ...Array.from({ length: 4 }, (_, k) => `/ip4/192.0.2.${1 + ((i * 4 + k) % 254)}/tcp/${4001 + i}`), // TEST-NET-1: nothing answers
    `/ip4/127.0.0.1/tcp/${10 + 2 * i}`, // closed ports
    `/ip4/127.0.0.1/tcp/${11 + 2 * i}`,
    `/dns4/junk-${i}.invalid/tcp/4001`,
    `/ip6/::1/tcp/${20000 + i}`,
  ];
  const host = await attackerHost({ dht: true });
  const s = await openSession(host, p.target, 64);
  const linkOutcomes: string[] = [];
  const t0 = Date.now();
  for (let i = 1; i <= Number(p.links) && s.opened; i++) {
    await s.conv.write(w.link({ peerId: victim.peerId, sessionId: sid(), addrs: junk(i) }));
    const seen = s.conv.replies.length;
    await s.conv.write(w.tokenStep(i, 0, [i % 4000], w.FLAG.push));
    const r = await s.conv.next(seen, 10_000);
    linkOutcomes.push(r ? w.describeReply(r) : "silence");
    if (s.conv.ended) break;
  }
  const plantMs = Date.now() - t0;
  await sleep(1500); // the node's pushes dial in the background
  const acceptsWhilePlanting = tarpitAccepts;
  const isJunk = (a: string) =>
    /\/tcp\/(\d+)/.exec(a)?.[1] === String(tp) ||
    a.includes("192.0.2.") ||
    a.includes(".invalid") ||
    a.includes("/ip6/::1/") ||
    /127\.0\.0\.1\/tcp\/(\d{1,3})$/.test(a);
  // What the node's DHT now says about the victim: provider answers for its first block, and the closest peers to it.
  const dhtView = async () => {
    const seen = new Set<string>();
    const dht = host.services.dht!;
    try {
      for await (const ev of dht.findProviders(await blockKey(p.modelId, victim.start), { signal: AbortSignal.timeout(8000) })) {
        if (ev.name === "PEER_RESPONSE" || ev.name === "PROVIDER") {
          for (const pi of [...ev.providers, ...(ev.name === "PEER_RESPONSE" ? ev.closer : [])]) {
            if (pi.id.toString() === victim.peerId) for (const a of pi.multiaddrs) seen.add(a.toString());
          }
        }
      }
    } catch (e) {
      note(`findProviders: ${errText(e)}`);
    }
    const all = [...seen];
    return { victim_addrs_handed_out: all.length, junk_among_them: all.filter(isJunk).length, sample: all.filter(isJunk).slice(0, 4) };
  };
  const before = await dhtView();
  ready();
  await sleep(p.durationMs);
  const after = await dhtView();
  s.conv.close();
  await host.stop();
  for (const sock of tarpitSockets) sock.destroy();
  tarpit.close();
  return {
    victim: `${victim.peerId} [${victim.start}, ${victim.end})`,
    links_sent: linkOutcomes.length,
    junk_addrs_per_link: junk(1).length,
    step_replies: count(linkOutcomes),
    ms_to_plant: plantMs,
    target_dht_view_after_planting: before,
    target_dht_view_after_hold: after,
    tarpit_connects_while_planting: acceptsWhilePlanting,
    tarpit_connects_during_hold: tarpitAccepts - acceptsWhilePlanting,
  };
}

// ------------------------------------------------------------------ 8. Sybils that boast and fail every step

async function sybils(p: AttackParams) {
  const n = Number(p.sybils);
  const stats = { opens: 0, steps: 0, streams: 0 };
  const rogues = await Promise.all(
    Array.from({ length: n }, async () => {
      const key = await generateKeyPair("Ed25519");
      const rogue = await permissiveDhtHost(key);
      const peerId = rogue.peerId.toString();
      await rogue.handle(
        SPAN_PROTOCOL,
        async (stream: Stream) => {
          stats.streams++;
          const lp = lpStream(stream);
          try {
            for (;;) {
              const bytes = (await lp.read()).subarray();
              if (bytes[0] === w.KIND.Open) {
                stats.opens++;
                const j = JSON.parse(new TextDecoder().decode(bytes.subarray(1))) as { start: number; end: number };
                await lp.write(w.control(w.KIND.Opened, { start: j.start, end: j.end }));
              } else if (bytes[0] === w.KIND.Step) {
                stats.steps++;
                await lp.write(w.control(w.KIND.Error, { code: "INTERNAL", message: "sybil: every step fails" }));
              }
            }
          } catch {
            stream.abort(new Error("sybil done"));
          }
        },
        { maxInboundStreams: 1024 },
      );
      await rogue.dial(multiaddr(p.target.addr), { signal: AbortSignal.timeout(10_000) });
      const table = (rogue.services.dht as unknown as { routingTable: { size: number } }).routingTable;
      for (let t = 0; table.size === 0 && t < 500; t++) await sleep(20);
      const publish = async () => {
        const info = boastfulInfo(peerId, p.modelId, { numBlocks: p.numBlocks, start: 0, end: p.numBlocks, cacheTokensLeft: 1e9 });
        await announce(
          rogue.services.dht,
          await signRecord(key, info, Date.now()),
          peerId,
          p.modelId,
          Array.from({ length: p.numBlocks }, (_, b) => b),
          AbortSignal.timeout(15_000),
        ).catch((e: unknown) => note(`sybil ${peerId.slice(-6)} announce: ${errText(e)}`));
      };
      await publish();
      return { rogue, peerId, publish };
    }),
  );
  const reannounce = setInterval(() => void Promise.all(rogues.map((r) => r.publish())), 30_000);
  await sleep(1500);
  const atReady = { ...stats };
  ready();
  await sleep(p.durationMs);
  clearInterval(reannounce);
  await Promise.all(rogues.map((r) => r.rogue.stop()));
  return {
    sybils: n,
    announced: `all ${p.numBlocks} blocks, inferenceRps 1e6, signed by their own keys`,
    sybil_ids: rogues.map((r) => r.peerId),
    opens_answered: stats.opens - atReady.opens,
    steps_failed: stats.steps - atReady.steps,
    span_streams: stats.streams - atReady.streams,
  };
}

// ------------------------------------------------------------------ 9. step ids 0 and at or below the last

async function stepIds(p: AttackParams) {
  const host = await attackerHost();
  const probes: { step_id: number; last_answered: number; outcome: string; ms: number }[] = [];
  const wait = Number(p.silenceMs);
  let session = await openSession(host, p.target, 64);
  let last = 0;
  let position = 0;
  const probe = async (id: number) => {
    const seen = session.conv.replies.length;
    const t0 = Date.now();
    await session.conv.write(w.tokenStep(id, position, [id % 4000])).catch(() => {});
    const r = await session.conv.next(seen, wait);
    const detail = r?.stepId !== undefined ? ` (step ${r.stepId})` : r?.message ? ` (${r.message.slice(0, 90)})` : "";
    const outcome = r ? `${w.describeReply(r)}${detail}` : session.conv.ended ? "stream ended" : `silence (${wait} ms)`;
    probes.push({ step_id: id, last_answered: last, outcome, ms: Date.now() - t0 });
    if (r?.kind === w.KIND.Result) {
      last = id;
      position++;
    }
    return r;
  };
  ready();
  const end = Date.now() + p.durationMs;
  for (let round = 0; Date.now() < end; round++) {
    if (session.conv.ended || round > 0) {
      session.conv.close();
      session = await openSession(host, p.target, 64);
      last = 0;
      position = 0;
    }
    await probe(0); // the very first step, id 0
    await probe(1);
    await probe(1); // the same id again
    await probe(0);
    await probe(2);
    await probe(1); // below the last
    await probe(0xffffffff); // the largest id, then one below it
    await probe(3);
    await probe(4); // after a silent duplicate: is the stream still usable?
    if (round === 0) note(`round 0: ${probes.map((x) => `${x.step_id}->${x.outcome}`).join(", ")}`);
  }
  session.conv.close();
  await host.stop();
  const firstRound = probes.slice(0, 9);
  return {
    first_round: firstRound,
    outcomes_by_kind: count(
      probes.map((x) => `${x.step_id === 0 ? "id 0" : x.step_id <= x.last_answered ? "id <= last" : "id > last"}: ${x.outcome.replace(/ \(.*\)$/, "")}`),
    ),
  };
}

// ------------------------------------------------------------------ 10. maxLength past the model's context

async function pastContext(p: AttackParams) {
  const host = await attackerHost();
  const { max, how } = await probeMaxLength(host, p.target);
  const asks = [...new Set([p.maxPositions, p.maxPositions + 1, max, max + 1, 2 * max, 2 ** 31 - 1])].sort((a, b) => a - b);
  const opens: { max_length: number; outcome: string }[] = [];
  let widest: { conv: Conversation; len: number } | undefined;
  ready();
  for (const len of asks) {
    const s = await openSession(host, p.target, len, { keepBytes: true });
    opens.push({ max_length: len, outcome: s.reply ? `${w.describeReply(s.reply)}${s.reply.message ? `: ${s.reply.message}` : ""}` : "silence" });
    if (s.opened && len >= p.maxPositions && (!widest || len > widest.len) && len < 2 ** 20) {
      widest?.conv.close();
      widest = { conv: s.conv, len };
    } else s.conv.close();
  }
  const steps: { tokens: number; positions: string; outcome: string; finite?: boolean }[] = [];
  if (widest) {
    // Up to 4 positions short of the model's context in one prefill, then single tokens across it.
    const c = widest.conv;
    const tokens = (n: number) => Array.from({ length: n }, (_, i) => (i * 31) % 4000);
    let pos = 0;
    let id = 1;
    const run = async (n: number) => {
      const seen = c.replies.length;
      await c.write(w.tokenStep(id++, pos, tokens(n)));
      const r = await c.next(seen, 60_000);
      const finite = r?.kind === w.KIND.Result ? w.resultFinite(c.raw[seen]!) : undefined;
      steps.push({
        tokens: n,
        positions: `[${pos}, ${pos + n})`,
        outcome: r ? `${w.describeReply(r)}${r.message ? `: ${r.message.slice(0, 120)}` : ""}` : "silence",
        ...(finite !== undefined ? { finite } : {}),
      });
      if (r?.kind === w.KIND.Result) pos += n;
    };
    await run(p.maxPositions - 4);
    for (let i = 0; i < 8; i++) await run(1);
    // And one prefill longer than the model's context, from position 0.
    pos = 0;
    await run(Math.min(widest.len, p.maxPositions + 64));
    c.close();
  }
  await host.stop();
  return {
    model_max_positions: p.maxPositions,
    node_max_length: max,
    found_by: how,
    opens,
    steps_past_context: steps,
  };
}

// ------------------------------------------------------------------ 11. fuzz corpus

async function fuzz(p: AttackParams) {
  // The node bans a peer (and its IP, if not loopback) after 5 framing violations: the fuzzer then
  // takes a new identity from a new loopback address (exempt from IP bans, as a local swarm is)
  // and carries on, so the whole corpus still reaches the parsers.
  let host = await attackerHost();
  const retired: AttackerHost[] = [];
  let identities = 1;
  let rotating: Promise<void> | undefined;
  const rotate = (from: AttackerHost) => {
    if (host !== from) return Promise.resolve(); // another worker already did
    rotating ??= (async () => {
      retired.push(host);
      host = await attackerHost({ sourceIp: `127.68.${identities++}.1` });
      rotating = undefined;
    })();
    return rotating;
  };
  const cases = w.fuzzCorpus(Number(p.cases), p.seed, {
    start: p.target.start,
    end: p.target.end,
    hiddenSize: p.hiddenSize,
    maxLength: 64,
    peerIds: [p.target.peerId, ...p.others.map((o) => o.peerId), host.peerId.toString()],
  });
  const protocolIds: Record<w.FuzzProtocol, string> = { span: SPAN_PROTOCOL, push: PUSH_PROTOCOL, probe: PROBE_PROTOCOL, kad: DHT_PROTOCOL };
  const outcomes: Record<string, Record<string, number>> = {};
  const byMutation: Record<string, number> = {};
  /** Cases the node neither answered nor ended within the wait (it may still be waiting for bytes). */
  const leftOpen: Record<string, number> = {};
  const add = (protocol: string, outcome: string) => {
    outcomes[protocol] ??= {};
    outcomes[protocol][outcome] = (outcomes[protocol][outcome] ?? 0) + 1;
  };
  const pingFailures: string[] = [];
  const pingTarget = async () => {
    try {
      await (host.services.ping as { ping(a: unknown, o: unknown): Promise<number> }).ping(multiaddr(p.target.addr), { signal: AbortSignal.timeout(5000) });
    } catch (e) {
      pingFailures.push(errText(e).slice(0, 120));
    }
  };
  ready();
  const t0 = Date.now();
  let next = 0;
  const replyWait = Number(p.replyWaitMs);
  const worker = async () => {
    for (let i = next++; i < cases.length; i = next++) {
      const c = cases[i]!;
      byMutation[`${c.protocol}: ${c.mutation}`] = (byMutation[`${c.protocol}: ${c.mutation}`] ?? 0) + 1;
      let stream: Stream | undefined;
      for (let attempt = 0; !stream && attempt < 2; attempt++) {
        const from = host;
        try {
          stream = await rawStream(from, p.target.addr, protocolIds[c.protocol], 5000);
        } catch (e) {
          if (attempt === 0) await rotate(from);
          else add(c.protocol, `stream refused: ${errText(e).replace(/\d+/g, "N").slice(0, 80)}`);
        }
      }
      if (!stream) continue;
      const conv = new Conversation(stream);
      try {
        if (c.raw) await send(stream, c.raw, AbortSignal.timeout(5000));
        for (const f of c.frames) await conv.write(f, AbortSignal.timeout(5000));
        await conv.next(0, replyWait);
        await conv.waitEnd(c.protocol === "span" ? 50 : replyWait / 2);
        const first = conv.replies[0];
        const what = !first ? "no reply" : c.protocol === "span" || c.protocol === "push" ? conv.summary.at(-1)! : "reply";
        add(c.protocol, `${what}; ${conv.ended ? "stream ended" : "stream left open"}`);
        if (!first && !conv.ended) leftOpen[`${c.protocol}: ${c.mutation}`] = (leftOpen[`${c.protocol}: ${c.mutation}`] ?? 0) + 1;
      } catch (e) {
        add(c.protocol, `write failed: ${errText(e).replace(/\d+/g, "N").slice(0, 80)}`);
      } finally {
        conv.close();
      }
      if (i % 100 === 99) await pingTarget();
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  // Raw TCP: garbage instead of a handshake, and a valid multistream header followed by garbage.
  const tcpOutcomes: string[] = [];
  const rnd = w.prng(p.seed + 1);
  await Promise.all(
    Array.from(
      { length: Number(p.tcpCases) },
      (_, i) =>
        new Promise<void>((resolve) => {
          const s = new Socket();
          const t = Date.now();
          let got = 0;
          const timer = setTimeout(() => {
            tcpOutcomes.push(`left open${got ? " (answered)" : ""}`);
            s.destroy();
            resolve();
          }, 3000);
          s.on("data", (d) => (got += d.byteLength));
          s.on("error", () => {});
          s.on("close", () => {
            if (Date.now() - t < 3000) tcpOutcomes.push("closed by node");
            clearTimeout(timer);
            resolve();
          });
          s.connect(p.target.port, "127.0.0.1", () => {
            const junk = Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 2000) }, () => Math.floor(rnd() * 256)));
            s.write(i % 2 ? Buffer.concat([Buffer.from("\x13/multistream/1.0.0\n\x07/noise\n"), junk]) : junk);
          });
        }),
    ),
  );
  await pingTarget();
  await Promise.all([host, ...retired].map((h) => h.stop()));
  return {
    identities,
    cases: cases.length,
    seed: p.seed,
    target: p.target.peerId,
    ms: Date.now() - t0,
    outcomes_by_protocol: outcomes,
    cases_by_mutation: byMutation,
    unanswered_and_left_open_by_mutation: leftOpen,
    raw_tcp: count(tcpOutcomes),
    ping_failures: pingFailures.length,
    ping_failure_sample: pingFailures.slice(0, 3),
  };
}

// ------------------------------------------------------------------ 0. control: no attack

async function control(p: AttackParams) {
  ready();
  await sleep(p.durationMs);
  return { attack: "none" };
}

const ATTACKS: Record<string, (p: AttackParams) => Promise<object>> = {
  control,
  "endless-prefix": endlessPrefix,
  "huge-messages": hugeMessages,
  "half-open-tcp": halfOpenTcp,
  "cache-exhaustion": cacheExhaustion,
  "push-flood": pushFlood,
  "prefill-loops": prefillLoops,
  "junk-links": junkLinks,
  sybils,
  "step-ids": stepIds,
  "past-context": pastContext,
  fuzz,
};

async function main(): Promise<void> {
  const [name, json] = process.argv.slice(2);
  const attack = name ? ATTACKS[name] : undefined;
  if (!attack || !json) throw new Error(`usage: _abuse-attacker.ts <${Object.keys(ATTACKS).join("|")}> '<params json>'`);
  const result = await attack(JSON.parse(json) as AttackParams);
  out(`result ${JSON.stringify(result)}`);
}

// Unhandled rejections from streams the node reset must not end the attack early.
process.on("unhandledRejection", (e) => note(`unhandled rejection: ${errText(e).slice(0, 200)}`));
main().then(
  () => process.exit(0),
  (e: unknown) => {
    out(`result ${JSON.stringify({ attacker_error: errText(e) })}`);
    process.exit(1);
  },
);
