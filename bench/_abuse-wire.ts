// The attacker's own encoders for the node's wire formats (bench/abuse.ts): span and push
// messages, tensor frames, kad-dht protobufs, length prefixes; plus a seeded generator of
// malformed and mutated messages. Written from the wire layout in src/swarm/protocol.ts and
// src/wire/tensor-frame.ts, not with the project's encoders, so whatever validation those grow
// never stops an attacker from sending a byte.

export const KIND = { Open: 1, Opened: 2, Step: 3, Result: 4, Error: 5, Link: 6, Push: 7, Commit: 8, Reveal: 9 } as const;
export const FLAG = { allLogits: 1, tokens: 2, push: 4, commit: 8 } as const;

/** Unsigned LEB128 (the length prefix libp2p's lpStream reads). */
export function varint(n: number): Uint8Array {
  const out: number[] = [];
  for (; n >= 0x80; n = Math.floor(n / 0x80)) out.push((n % 0x80) | 0x80);
  out.push(n);
  return Uint8Array.from(out);
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** One length-prefixed frame. */
export const frame = (body: Uint8Array): Uint8Array => concat(varint(body.byteLength), body);

const utf8 = (s: string) => new TextEncoder().encode(s);

/** A control message: kind byte, then JSON (or any text, for fuzzing). */
export function control(kind: number, body: object | string): Uint8Array {
  return concat(Uint8Array.of(kind), utf8(typeof body === "string" ? body : JSON.stringify(body)));
}

export function open(start: number, end: number, maxLength: number, sessionId?: string, codec = "none"): Uint8Array {
  return control(KIND.Open, { start, end, maxLength, codec, ...(sessionId ? { sessionId } : {}) });
}

export function tokensPayload(tokens: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Int32Array.from(tokens).buffer);
}

/** A step: kind, u32 step id, u32 start position, flags, payload (token ids or a tensor frame). */
export function step(stepId: number, startFromPosition: number, flags: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(10 + payload.byteLength);
  const view = new DataView(out.buffer);
  out[0] = KIND.Step;
  view.setUint32(1, stepId >>> 0, true);
  view.setUint32(5, startFromPosition >>> 0, true);
  out[9] = flags;
  out.set(payload, 10);
  return out;
}

export const tokenStep = (stepId: number, position: number, tokens: ArrayLike<number>, extraFlags = 0) =>
  step(stepId, position, FLAG.tokens | extraFlags, tokensPayload(tokens));

/** An uncompressed f32 tensor frame: 'T', version 1, f32, no compression, ndim, 0, 0 0, u32 dims, body. */
export function tensorFrame(data: Float32Array, shape: readonly number[]): Uint8Array {
  const header = new Uint8Array(8 + 4 * shape.length);
  const view = new DataView(header.buffer);
  header.set([0x54, 1, 0, 0, shape.length, 0, 0, 0]);
  shape.forEach((d, i) => view.setUint32(8 + 4 * i, d >>> 0, true));
  return concat(header, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}

/** A push: kind, the 16-byte session id, the step message. */
export function push(sessionIdHex: string, stepMessage: Uint8Array): Uint8Array {
  return concat(Uint8Array.of(KIND.Push), Buffer.from(sessionIdHex, "hex"), stepMessage);
}

export function reveal(stepId: number): Uint8Array {
  const out = new Uint8Array(5);
  out[0] = KIND.Reveal;
  new DataView(out.buffer).setUint32(1, stepId >>> 0, true);
  return out;
}

export function link(next?: { peerId: string; sessionId: string; addrs: string[] }, prev?: string): Uint8Array {
  return control(KIND.Link, { ...(next ? { next } : {}), ...(prev ? { prev } : {}) });
}

/** What a node's reply says: its kind, an error's code and message, a result's step id. */
export interface Reply {
  kind: number;
  code?: string;
  message?: string;
  stepId?: number;
  bytes: number;
}

export function readReply(bytes: Uint8Array): Reply {
  const kind = bytes[0] ?? -1;
  const reply: Reply = { kind, bytes: bytes.byteLength };
  if (kind === KIND.Error) {
    try {
      const j = JSON.parse(new TextDecoder().decode(bytes.subarray(1))) as { code?: unknown; message?: unknown };
      reply.code = String(j.code);
      reply.message = String(j.message);
    } catch {
      reply.code = "(unparsable error)";
    }
  } else if ((kind === KIND.Result || kind === KIND.Commit) && bytes.byteLength >= 5) {
    reply.stepId = new DataView(bytes.buffer, bytes.byteOffset + 1, 4).getUint32(0, true);
  }
  return reply;
}

/** A short name for a reply, for histograms: "error:CODE", "result", "opened"... */
export function describeReply(r: Reply): string {
  const names: Record<number, string> = { 2: "opened", 4: "result", 5: "error", 8: "commit" };
  return r.kind === KIND.Error ? `error:${r.code}` : (names[r.kind] ?? `kind ${r.kind}`);
}

/** Finite values of every row in [1, rows, width] hidden states (a Result's frame), or false. */
export function resultFinite(bytes: Uint8Array): boolean | undefined {
  // kind, u32 step id, 32-byte input hash, 64-byte signature, then the frame.
  const f = bytes.subarray(1 + 4 + 96);
  if (f.byteLength < 8 || f[0] !== 0x54 || f[2] !== 0 || f[3] !== 0) return undefined;
  const ndim = f[4]!;
  const body = f.subarray(8 + 4 * ndim);
  const values = new Float32Array(new Uint8Array(body).buffer);
  return values.every((v) => Number.isFinite(v));
}

// ------------------------------------------------------------------ kad-dht protobufs

/** Protobuf field: tag then varint value or length-delimited bytes. */
function pbVarint(field: number, value: number): Uint8Array {
  return concat(varint((field << 3) | 0), varint(value));
}
function pbBytes(field: number, value: Uint8Array): Uint8Array {
  return concat(varint((field << 3) | 2), varint(value.byteLength), value);
}

/** kad-dht Message: type (1), key (2), record (3: key 1, value 2, timeReceived 5), closerPeers (8), providerPeers (9: id 1, addrs 2). */
export function kadMessage(
  type: number,
  key: Uint8Array,
  extra: { record?: { key: Uint8Array; value: Uint8Array }; providers?: { id: Uint8Array; addrs: Uint8Array[] }[] } = {},
): Uint8Array {
  const parts = [pbVarint(1, type), pbBytes(2, key)];
  if (extra.record) parts.push(pbBytes(3, concat(pbBytes(1, extra.record.key), pbBytes(2, extra.record.value), pbBytes(5, utf8(new Date().toISOString())))));
  for (const p of extra.providers ?? []) parts.push(pbBytes(9, concat(pbBytes(1, p.id), ...p.addrs.map((a) => pbBytes(2, a)))));
  return concat(...parts);
}

// ------------------------------------------------------------------ fuzzing

/** mulberry32: a small seeded PRNG. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type FuzzProtocol = "span" | "push" | "probe" | "kad";

/** One fuzz case: the frames written on one fresh stream (`raw`: bytes written as they are, no length prefixes). */
export interface FuzzCase {
  protocol: FuzzProtocol;
  /** How the case was made, for the histogram. */
  mutation: string;
  /** Frames, each length-prefixed when written... */
  frames: Uint8Array[];
  /** ...or these bytes written as they are. */
  raw?: Uint8Array;
}

export interface FuzzTarget {
  /** Blocks the target serves; its first block decides tokens vs hidden states. */
  start: number;
  end: number;
  hiddenSize: number;
  maxLength: number;
  /** Peer ids to put in links, pushes and kad keys. */
  peerIds: string[];
}

/**
 * `count` cases over every protocol: valid seeds (opens, steps of tokens and of hidden states,
 * links, reveals, pushes, probes, kad queries and puts) mutated by random bytes, truncation, bit
 * flips, byte inserts and deletes, kind swaps, length-prefix lies, JSON type confusion, and
 * valid-then-garbage sequences.
 */
export function fuzzCorpus(count: number, seed: number, t: FuzzTarget): FuzzCase[] {
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => int(256));
  const sid = () => Buffer.from(bytes(16)).toString("hex");
  const peer = () => pick(t.peerIds);
  const tokens = (n: number) => Array.from({ length: n }, () => int(4096));
  const hidden = (rows: number) =>
    tensorFrame(
      new Float32Array(rows * t.hiddenSize).map(() => rnd() - 0.5),
      [1, rows, t.hiddenSize],
    );
  const stepOf = (id: number, pos: number, rows: number) => (t.start === 0 ? tokenStep(id, pos, tokens(rows)) : step(id, pos, 0, hidden(rows)));
  const openMsg = () => open(t.start, t.end, 1 + int(t.maxLength), sid());

  const spanSeeds = (): Uint8Array[] => [
    openMsg(),
    open(t.start, t.end, t.maxLength, sid(), pick(["none", "f16", "bf16", "blockwise8"])),
    stepOf(1 + int(4), 0, 1 + int(8)),
    tokenStep(1, 0, tokens(1 + int(8)), pick([0, FLAG.allLogits, FLAG.push, FLAG.commit, FLAG.commit | FLAG.push])),
    step(1, 0, 0, hidden(1 + int(4))),
    link({ peerId: peer(), sessionId: sid(), addrs: ["/ip4/127.0.0.1/tcp/1"] }, peer()),
    reveal(1 + int(3)),
    control(KIND.Opened, { start: 0, end: 1 }),
    control(KIND.Error, { code: "X", message: "y" }),
    concat(Uint8Array.of(KIND.Result), bytes(100 + int(100))),
    concat(Uint8Array.of(KIND.Commit), bytes(132)),
  ];
  const jsonLies = (): Uint8Array[] => [
    control(KIND.Open, { start: t.start, end: t.end, maxLength: pick([-1, 1.5, 2 ** 31, 2 ** 53, "64", null, 1e308]), codec: "none" }),
    control(KIND.Open, { start: pick([-1, t.end, 2 ** 31 - 1, "0"]), end: pick([0, t.start, 2 ** 31 - 1]), maxLength: 8, codec: "none" }),
    control(KIND.Open, { start: t.start, end: t.end, maxLength: 8, codec: pick(["NONE", "", "__proto__", 0, null]) }),
    control(KIND.Open, { start: t.start, end: t.end, maxLength: 8, codec: "none", sessionId: pick(["", "zz", "A".repeat(32), 5, sid() + "0"]) }),
    control(KIND.Open, `{"__proto__":{"polluted":1},"start":${t.start},"end":${t.end},"maxLength":8,"codec":"none"}`),
    control(KIND.Open, "[".repeat(5000) + "]".repeat(5000)),
    control(KIND.Open, '{"start":' + "9".repeat(400) + "}"),
    control(KIND.Link, { next: { peerId: peer(), sessionId: sid(), addrs: Array.from({ length: 17 + int(100) }, () => "/ip4/1.2.3.4/tcp/1") } }),
    control(KIND.Link, { next: { peerId: "not-a-peer", sessionId: sid(), addrs: [] } }),
    control(KIND.Link, { next: { peerId: peer(), sessionId: sid(), addrs: ["garbage", "/ip4/999.1.1.1/tcp/1", "/dns4/" + "a".repeat(240)] } }),
    control(KIND.Link, { next: null, prev: pick([peer(), "", 7, null]) }),
    concat(Uint8Array.of(pick([KIND.Open, KIND.Link])), Uint8Array.of(0xc3, 0x28, 0xa0, 0xa1)), // invalid UTF-8
    concat(Uint8Array.of(KIND.Open), new Uint8Array(70 << 10).fill(0x20)), // over the control limit
  ];
  const pushSeeds = (): Uint8Array[] => [
    push(sid(), stepOf(1 + int(4), 0, 1 + int(4))),
    push(sid(), tokenStep(1, 0, tokens(2), FLAG.commit)),
    push(sid(), open(0, 1, 8)),
    push(sid(), push(sid(), stepOf(1, 0, 1))), // a push inside a push
    concat(Uint8Array.of(KIND.Push), bytes(int(17))),
  ];
  const kadKey = () => pick([utf8(`/tessera/${peer()}`), bytes(34), utf8("/pk/" + peer()), new Uint8Array(0)]);
  const kadSeeds = (): Uint8Array[] => [
    kadMessage(pick([0, 1, 2, 3, 4, 5]), kadKey()),
    kadMessage(0, utf8(`/tessera/${peer()}`), { record: { key: utf8(`/tessera/${peer()}`), value: bytes(int(2000)) } }),
    kadMessage(2, bytes(36), { providers: [{ id: bytes(38), addrs: [bytes(8), bytes(int(300))] }] }),
    kadMessage(int(20), bytes(int(200))),
  ];
  const probeSeeds = (): Uint8Array[] => [new Uint8Array(int(1024)), new Uint8Array(1 << 20), bytes(int(64))];

  const mutate = (m: Uint8Array): [string, Uint8Array] => {
    const out = new Uint8Array(m);
    switch (int(7)) {
      case 0:
        return ["truncated", m.subarray(0, int(m.byteLength))];
      case 1: {
        const flips = 1 + int(8);
        for (let i = 0; i < flips && out.byteLength; i++) out[int(out.byteLength)]! ^= 1 << int(8);
        return ["bit flips", out];
      }
      case 2: {
        const at = int(m.byteLength + 1);
        return ["bytes inserted", concat(m.subarray(0, at), bytes(1 + int(16)), m.subarray(at))];
      }
      case 3: {
        const at = int(m.byteLength);
        return ["bytes deleted", concat(m.subarray(0, at), m.subarray(at + 1 + int(8)))];
      }
      case 4:
        if (out.byteLength) out[0] = int(256);
        return ["kind swapped", out];
      case 5: {
        // A header field set to an extreme (step ids, positions, tensor dims).
        if (out.byteLength < 5) return ["unchanged", out];
        new DataView(out.buffer).setUint32(1 + int(out.byteLength - 4), pick([0, 1, 0xffffffff, 0x7fffffff, 0x80000000]), true);
        return ["field extreme", out];
      }
      default:
        return ["unchanged", out];
    }
  };

  const cases: FuzzCase[] = [];
  const protocols: FuzzProtocol[] = ["span", "span", "span", "push", "probe", "kad", "kad"];
  for (let i = 0; i < count; i++) {
    const protocol = protocols[i % protocols.length]!;
    const r = rnd();
    if (r < 0.1) {
      // Random bytes, framed or not.
      const junk = bytes(int(600));
      cases.push(rnd() < 0.5 ? { protocol, mutation: "random frame", frames: [junk] } : { protocol, mutation: "random raw bytes", frames: [], raw: junk });
      continue;
    }
    if (r < 0.18) {
      // Length-prefix lies: a declared length longer than what follows (then the stream closes), or a bare prefix.
      const body =
        protocol === "span" ? pick(spanSeeds()) : protocol === "push" ? pick(pushSeeds()) : protocol === "kad" ? pick(kadSeeds()) : pick(probeSeeds());
      const declared = pick([body.byteLength + 1 + int(1000), 2 ** 28, 2 ** 31, 2 ** 49]);
      cases.push({ protocol, mutation: "length prefix lie", frames: [], raw: concat(varint(declared), body.subarray(0, int(body.byteLength + 1))) });
      continue;
    }
    if (r < 0.22) {
      cases.push({ protocol, mutation: "empty frames", frames: Array.from({ length: 1 + int(5) }, () => new Uint8Array(0)) });
      continue;
    }
    if (protocol === "span") {
      if (r < 0.4) {
        cases.push({ protocol, mutation: "json type confusion", frames: [pick(jsonLies())] });
        continue;
      }
      // An open first (often valid) so that steps, links and reveals reach the session code, then mutated messages.
      const frames: Uint8Array[] = [rnd() < 0.8 ? openMsg() : mutate(openMsg())[1]];
      let mutation = "open then";
      for (let k = 0, n = 1 + int(4); k < n; k++) {
        const [how, m] = rnd() < 0.25 ? ["valid", pick(spanSeeds())] : mutate(pick(spanSeeds()));
        frames.push(m);
        mutation += ` ${how}`;
      }
      cases.push({ protocol, mutation: mutation.split(" ").slice(0, 3).join(" "), frames });
    } else if (protocol === "push") {
      const [how, m] = mutate(pick(pushSeeds()));
      cases.push({ protocol, mutation: how, frames: [m, ...(rnd() < 0.3 ? [pick(pushSeeds())] : [])] });
    } else if (protocol === "kad") {
      const [how, m] = mutate(pick(kadSeeds()));
      cases.push({ protocol, mutation: how, frames: [m] });
    } else {
      const [how, m] = mutate(pick(probeSeeds()));
      cases.push({ protocol, mutation: how, frames: [m] });
    }
  }
  return cases;
}
