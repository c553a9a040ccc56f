// Abuse benchmark: what a hostile peer does to a node, measured from an honest client's side.
// Each attack gets a fresh swarm of `tessera node` processes on loopback serving the shipped
// model (two spans, [0, 4) and [4, 8)); an honest client (SwarmClient + RouteSession) runs
// greedy 32-token generations before, during and after the attack, checked against the local
// engine's tokens; the attacked node's RSS is read from /proc before, sampled every 100 ms
// during, and read again after a settle. The attacker is a child process of its own
// (bench/_abuse-attacker.ts) speaking raw libp2p streams on the node's protocol ids, or raw TCP.
//   npm run bench -- abuse [--quick] [--only 1,4] [--headroom-mb 256] [--seed 1]
// Attack 0 is a control (no attacker, the same phases): read the other rows against its drift.
// Writes bench/results/abuse.json and prints a table of goals met per attack:
//   S honest success 100% during the attack, L median latency during / before ≤ 3,
//   A RSS after the settle ≤ 1.1 × before, P peak RSS ≤ the node's budget (idle RSS + its KV
//   budget + --headroom-mb for framing and transient buffers).
import { execSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { LocalPipeline } from "../src/engine/pipeline.js";
import { argmax } from "../src/engine/sampling.js";
import { openCheckpoint } from "../src/model/checkpoint.js";
import { SHIPPED_MODEL } from "../src/model/shipped.js";
import { loadTokenizer } from "../src/model/tokenizer.js";
import type { ModelConfig } from "../src/model/types.js";
import { kvBytesPerBlock } from "../src/swarm/capacity.js";
import { defaultModelId } from "../src/swarm/model-id.js";
import type { AttackParams, ModelParams } from "./_abuse-attacker.js";
import { ATTACKER_IP } from "./_abuse-host.js";
import {
  alive,
  errText,
  type Generation,
  HonestClient,
  RssSampler,
  rssMb,
  sleep,
  spawnAttacker,
  startNodes,
  stopNodes,
  type SwarmNode,
} from "./_abuse-swarm.js";
import { evenSpans, median } from "./_swarm-common.js";

const here = dirname(fileURLToPath(import.meta.url));
/** KV budget per block a `tessera node` reserves (src/cli/node.ts). */
const NODE_CACHE_TOKENS = 16384;
/** The honest clients' reputation ledgers, one per attack; removed on exit. */
const LEDGERS = mkdtempSync(join(tmpdir(), "tessera-abuse-"));
process.on("exit", () => rmSync(LEDGERS, { recursive: true, force: true }));
const GENERATED_TOKENS = 32;
const PROMPT_TOKENS = 16;

interface Settings {
  quick: boolean;
  seed: number;
  config: ModelConfig;
}

type Observed = Record<string, unknown>;

interface AttackDef {
  id: number;
  key: string;
  name: string;
  /** Index of the attacked node in the swarm (0: [0, 4), 1: [4, 8)). */
  target: number;
  /** A new client per honest generation (arriving users: connect, DHT lookups, dials). */
  fresh?: boolean;
  params(s: Settings): Record<string, unknown> & { durationMs: number };
  notes(o: Observed, honest: Generation[]): string[];
}

const ms = (x: unknown) => (typeof x === "number" ? `${Math.round(x)} ms` : "n/a");
const mib = (x: unknown) => (typeof x === "number" ? `${x.toFixed(0)} MiB` : "n/a");
const kv = (o: unknown) =>
  o && typeof o === "object"
    ? Object.entries(o)
        .map(([k, v]) => `${k} ×${typeof v === "number" ? v : JSON.stringify(v)}`)
        .join(", ")
    : String(o);
const pct = (x: number | null) => (x === null ? "–" : `${Math.round(100 * x)}%`);
const codes = (gens: Generation[]) => kv(countBy(gens.filter((g) => !g.ok).map((g) => g.code ?? "?")));

function countBy(xs: string[]): Record<string, number> {
  return xs.reduce<Record<string, number>>((m, x) => ((m[x] = (m[x] ?? 0) + 1), m), {});
}

const ATTACKS: AttackDef[] = [
  {
    id: 0,
    key: "control",
    name: "control: no attack, the same phases with honest traffic only",
    target: 0,
    params: (s) => ({ durationMs: s.quick ? 6000 : 15_000 }),
    notes: () => ["no attacker traffic: what honest traffic and time alone do to latency and RSS (read the other rows against it)"],
  },
  {
    id: 1,
    key: "endless-prefix",
    name: "endless length prefix (0xff forever) on 3 span and 3 kad-dht streams",
    target: 0,
    params: (s) => ({ durationMs: s.quick ? 6000 : 15_000 }),
    notes: (o) => [
      `${o.streams_opened} streams opened, ${mib(o.mib_sent)} of 0xff bytes sent in all`,
      Number(o.streams_ended_by_node) > 0
        ? `the node ended ${o.streams_ended_by_node} of them (${JSON.stringify(o.streams_ended_by_protocol)}; median lifetime ${JSON.stringify(o.median_stream_lifetime_ms_by_protocol)} ms): ${JSON.stringify((o.ended_streams as unknown[])?.at(-1))}`
        : "the node never ended a stream: it kept reading the length prefix for the whole attack",
    ],
  },
  {
    id: 2,
    key: "huge-messages",
    name: "16 span streams announcing 127 MiB, sending most, stalling, aborting",
    target: 0,
    params: (s) => ({
      durationMs: 0,
      streams: s.quick ? 6 : 16,
      announcedBytes: 127 << 20,
      sendBytes: (s.quick ? 64 : 126) << 20,
      stallMs: s.quick ? 3000 : 8000,
      sendDeadlineMs: s.quick ? 20_000 : 60_000,
    }),
    notes: (o) => [
      `${mib(o.mib_sent_total)} sent over ${o.streams} streams (${o.streams_fully_sent} sent all ${mib(o.planned_mib_per_stream)} in ${ms(o.send_phase_ms)})`,
      Number(o.streams_cut_by_node_while_sending) > 0
        ? `the node cut ${o.streams_cut_by_node_while_sending} streams while they sent: ${kv(o.cut_reasons)}`
        : "the node cut no stream while it sent: it buffered every announced message",
      `${o.streams_still_open_after_stall} streams still open after the stall`,
    ],
  },
  {
    id: 3,
    key: "half-open-tcp",
    name: "128 raw TCP sockets that never finish the handshake (64 from one IP, 64 botnet)",
    target: 0,
    fresh: true,
    params: (s) => ({ durationMs: s.quick ? 6000 : 15_000, sockets: 128 }),
    notes: (o, h) => [
      `${o.sockets} sockets kept open (${((o.modes as string[]) ?? []).join(" / ")}; ${o.source_addresses}), each reconnecting 50 ms after the node closes it: ${o.connects} connects, ${o.refused} refused`,
      ...Object.entries((o.by_group ?? {}) as Record<string, Observed>).map(
        ([g, x]) =>
          `${g}: ${x.connects} connects, the node closed ${x.closed_by_node} during the attack (median hold ${ms(x.median_ms_held)}, max ${ms(x.max_ms_held)})`,
      ),
      `honest client is fresh per generation (it must connect through the attacked node); failures: ${codes(h) || "none"}`,
    ],
  },
  {
    id: 4,
    key: "cache-exhaustion",
    name: "8+ max-length sessions from one peer (as many as it gets), 1-token step every 5 s",
    target: 0,
    params: (s) => ({ durationMs: s.quick ? 10_000 : 20_000, sessions: 8, maxSessions: 64, keepAliveMs: 5000 }),
    notes: (o, h) => [
      `largest maxLength accepted ${o.max_length_allowed} (${o.max_length_found_by}); the first 8 opens: ${kv(countBy((o.first_opens as string[]) ?? []))}`,
      `then it opened more until refused: holds ${o.sessions_held} sessions = ${o.token_blocks_reserved} token-blocks; refusal: ${o.first_refusal_after_them}`,
      `keep-alive steps: ${kv(o.keepalive_outcomes)}`,
      `honest client got CACHE_FULL: ${h.some((g) => g.code === "CACHE_FULL" || /CACHE_FULL/.test(g.error ?? "")) ? "yes" : "no"}${codes(h) ? ` (failures: ${codes(h)})` : ""}`,
    ],
  },
  {
    id: 5,
    key: "push-flood",
    name: "300 pushes of 2 MiB into a session linked to the attacker as prev",
    target: 1,
    params: (s) => ({ durationMs: s.quick ? 8000 : 25_000, pushes: 300, pushBytes: 2 << 20 }),
    notes: (o) => [
      `a first push of ${(o.asked_size_push as Observed)?.rows} rows (2 MiB): ${(o.asked_size_push as Observed)?.answer}; push stream ${(o.asked_size_push as Observed)?.push_stream}`,
      `the attacker opened a session on the node, linked itself as prev and pushed ${o.pushes_written} × ${mib(o.push_mib)} (${o.rows_per_push} rows) in ${ms(o.ms_to_write_them)}`,
      `replies on its span stream: ${kv(o.replies_on_the_span_stream) || "none"}; push stream error: ${o.push_stream_error ?? "none"}`,
    ],
  },
  {
    id: 6,
    key: "prefill-loops",
    name: "8 sessions looping max-length prefills from one peer",
    target: 0,
    params: (s) => ({ durationMs: s.quick ? 8000 : 20_000, sessions: 8 }),
    notes: (o, h) => [
      `${o.sessions_looping} sessions looping ${o.prefill_tokens}-token prefills (opens: ${kv(countBy((o.opens as string[]) ?? []))})${o.fell_back ? `; ${o.fell_back}` : ""}`,
      `${o.prefills_answered} prefills answered, median ${ms(o.median_prefill_ms_seen_by_attacker)}; outcomes: ${kv(o.outcomes)}`,
      ...(codes(h) ? [`honest failures: ${codes(h)}`] : []),
    ],
  },
  {
    id: 7,
    key: "junk-links",
    name: "200 LINKs naming the next node with junk addresses",
    target: 0,
    fresh: true,
    params: (s) => ({ durationMs: s.quick ? 6000 : 15_000, links: s.quick ? 60 : 200 }),
    notes: (o, h) => {
      const after = (o.target_dht_view_after_planting ?? {}) as Observed;
      return [
        `${o.links_sent} links × ${o.junk_addrs_per_link} junk addresses for ${String(o.victim).slice(-20)}, each followed by a pushed step (${kv(o.step_replies)})`,
        `the node's DHT then hands out ${after.victim_addrs_handed_out} addresses for that peer, ${after.junk_among_them} of them junk (e.g. ${JSON.stringify((after.sample as string[] | undefined)?.slice(0, 2) ?? [])})`,
        `the attacker's tarpit (junk loopback addresses) was dialed ${o.tarpit_connects_while_planting} times while planting, ${o.tarpit_connects_during_hold} times while honest clients ran`,
        `honest client is fresh per generation (learns the next node's addresses from the DHT); failures: ${codes(h) || "none"}`,
      ];
    },
  },
  {
    id: 8,
    key: "sybils",
    name: "9 Sybil hosts announcing every block at 1e6 tok/s, failing every step",
    target: 0,
    params: (s) => ({ durationMs: s.quick ? 10_000 : 20_000, sybils: 9 }),
    notes: (o, h) => [
      `${o.sybils} sybils (${o.announced}); during the honest run they answered ${o.opens_answered} opens and failed ${o.steps_failed} steps`,
      `honest failovers per generation: median ${median(h.map((g) => g.failovers)) ?? 0}, max ${Math.max(0, ...h.map((g) => g.failovers))}; failures: ${codes(h) || "none"}`,
    ],
  },
  {
    id: 9,
    key: "step-ids",
    name: "steps with id 0 and ids at or below the last",
    target: 0,
    params: (s) => ({ durationMs: s.quick ? 4000 : 10_000, silenceMs: 2000 }),
    notes: (o) => [
      `first round: ${((o.first_round as { step_id: number; last_answered: number; outcome: string }[]) ?? []).map((p) => `id ${p.step_id === 0xffffffff ? "2^32-1" : p.step_id} (last ${p.last_answered === 0xffffffff ? "2^32-1" : p.last_answered}) → ${p.outcome}`).join("; ")}`,
    ],
  },
  {
    id: 10,
    key: "past-context",
    name: "sessions with maxLength beyond the model's context",
    target: 0,
    params: () => ({ durationMs: 0 }),
    notes: (o) => [
      `model max positions ${o.model_max_positions}, node accepts maxLength up to ${o.node_max_length}`,
      `opens: ${((o.opens as { max_length: number; outcome: string }[]) ?? []).map((x) => `${x.max_length} → ${x.outcome}`).join("; ")}`,
      `steps on the widest session past the model's context: ${((o.steps_past_context as { positions: string; outcome: string; finite?: boolean }[]) ?? []).map((x) => `${x.positions} → ${x.outcome}${x.finite === false ? " (non-finite values)" : ""}`).join("; ") || "none (no session past the context was accepted)"}`,
    ],
  },
  {
    id: 11,
    key: "fuzz",
    name: "fuzz corpus (random, truncated, bit-flipped, mutated) on span, push, probe, kad + raw TCP",
    target: 0,
    params: (s) => ({ durationMs: 0, cases: s.quick ? 300 : 1500, tcpCases: s.quick ? 10 : 40, replyWaitMs: 300 }),
    notes: (o) => [
      `${o.cases} cases (seed ${o.seed}) in ${ms(o.ms)}; pings of the node failing meanwhile: ${o.ping_failures}; the node banned the fuzzer ${Number(o.identities) - 1} times (it took a new peer id and loopback address each time)`,
      `unanswered and still open after the wait: ${kv(o.unanswered_and_left_open_by_mutation) || "none"}`,
      ...Object.entries((o.outcomes_by_protocol ?? {}) as Record<string, Record<string, number>>).map(
        ([p, m]) =>
          `${p}: ${Object.entries(m)
            .sort((a, b) => b[1] - a[1])
            .slice(0, 6)
            .map(([k, v]) => `${k} ×${v}`)
            .join(", ")}`,
      ),
      `raw TCP: ${kv(o.raw_tcp)}`,
    ],
  },
];

interface Stats {
  generations: number;
  success_rate: number | null;
  /** Median wall time of the successful generations. */
  median_ms: number | null;
}

interface PhaseStats extends Stats {
  chained: Stats;
  relayed: Stats;
  failovers: number;
  failover_reasons: Record<string, number>;
}

const round = (x: number | null | undefined, digits = 1): number | null => (typeof x === "number" && Number.isFinite(x) ? Number(x.toFixed(digits)) : null);

function stats(gens: Generation[]): Stats {
  const ok = gens.filter((g) => g.ok);
  return {
    generations: gens.length,
    success_rate: gens.length ? ok.length / gens.length : null,
    median_ms: ok.length ? round(median(ok.map((g) => g.ms))) : null,
  };
}

function phase(gens: Generation[]): PhaseStats {
  return {
    ...stats(gens),
    chained: stats(gens.filter((g) => g.chained)),
    relayed: stats(gens.filter((g) => !g.chained)),
    failovers: gens.reduce((n, g) => n + g.failovers, 0),
    failover_reasons: countBy(gens.flatMap((g) => g.failoverErrors.map((e) => e.replace(/12D3Koo\w+/g, "<peer>").replace(/\d+/g, "N")))),
  };
}

async function runAttack(
  def: AttackDef,
  s: Settings,
  common: ModelParams,
  honestBase: Omit<ConstructorParameters<typeof HonestClient>[0], "bootstrap" | "fresh" | "ledger">,
  headroomMb: number,
) {
  const record: Record<string, unknown> = { id: def.id, key: def.key, name: def.name };
  const L = s.config.numLayers;
  let nodes: SwarmNode[] = [];
  let honest: HonestClient | undefined;
  let attacker: ReturnType<typeof spawnAttacker> | undefined;
  try {
    nodes = await startNodes(SHIPPED_MODEL.hf, evenSpans(L, 2), ["--threads", "1"]);
    const target = nodes[def.target]!;
    record.target = { node: target.name, peer_id: target.peerId };
    // A ledger of its own per attack: what the client knows of the nodes comes from this run's warm-up and 'before' phase.
    const ledger = join(LEDGERS, `${def.key}.db`);
    honest = new HonestClient({ ...honestBase, bootstrap: nodes[0]!.addr, fresh: Boolean(def.fresh), ledger });
    record.honest_client = def.fresh ? "a new SwarmClient per generation" : "one SwarmClient, a new RouteSession per generation";
    // Warm-up: the DHT has both spans once two generations in a row succeed; at least 6 (JIT, the
    // client's routing table and the nodes' records settle: latency drifts down until then).
    const warm: Generation[] = [];
    for (const t0 = Date.now(); Date.now() - t0 < 60_000;) {
      warm.push(await honest.generate());
      if (warm.length >= 6 && warm.at(-1)!.ok && warm.at(-2)!.ok) break;
      if (!warm.at(-1)!.ok) await sleep(500);
    }
    if (!(warm.length >= 2 && warm.at(-1)!.ok && warm.at(-2)!.ok)) throw new Error(`warm-up failed: ${warm.at(-1)?.error}`);
    const before = await honest.run(s.quick ? 3 : 6);
    const rssBefore = rssMb(target.pid)!;
    const kvMb = (kvBytesPerBlock(s.config, NODE_CACHE_TOKENS) * (target.end - target.start)) / 2 ** 20;
    const budgetMb = rssBefore + kvMb + headroomMb;
    const sampler = new RssSampler(nodes.map((n) => n.pid));
    sampler.start();
    const params = def.params(s);
    const full: AttackParams = {
      ...common,
      ...params,
      target,
      others: nodes.filter((n) => n !== target),
      quick: s.quick,
      seed: s.seed + def.id,
    };
    const t0 = Date.now();
    attacker = spawnAttacker(
      def.key,
      JSON.parse(JSON.stringify(full, (k, v) => (["proc", "stderr"].includes(k) ? undefined : v))) as AttackParams,
      params.durationMs + 180_000,
    );
    await attacker.ready;
    const setupMs = Date.now() - t0;
    const a = attacker;
    const during = await honest.runWhile(() => !a.finished, 1);
    const observed = await attacker.done;
    const attackMs = Date.now() - t0 - setupMs;
    // RSS at 5, 10 and 15 s after the attacker exited; "after" is the last (memory a closing
    // connection still holds is let go some seconds after the attacker left).
    const rssSettling: (number | undefined)[] = [];
    for (let i = 0; i < 3; i++) {
      await sleep(5000);
      rssSettling.push(rssMb(target.pid));
    }
    const rssAfter = rssSettling.at(-1);
    sampler.stop();
    const targetAlive = alive(target);
    const after = targetAlive ? await honest.run(s.quick ? 2 : 4) : [];
    const peak = sampler.peak.get(target.pid);
    const b = phase(before);
    const d = phase(during);
    const ratio = b.median_ms && d.median_ms ? d.median_ms / b.median_ms : null;
    Object.assign(record, {
      settings: params,
      attack_ms: attackMs,
      attacker_setup_ms: setupMs,
      honest_success_rate_during: d.success_rate,
      honest_latency_ratio_during: round(ratio, 2),
      rss_before_mb: round(rssBefore),
      rss_peak_mb: round(peak),
      rss_after_mb: round(rssAfter),
      rss_after_5s_10s_15s_mb: rssSettling.map((mb) => round(mb)),
      budget_mb: round(budgetMb),
      honest: {
        before: b,
        during: d,
        after: phase(after),
        failures_during: countBy(during.filter((g) => !g.ok).map((g) => g.code ?? "?")),
        failure_samples: [...new Set(during.filter((g) => !g.ok).map((g) => g.error))].slice(0, 4),
      },
      other_nodes_rss_peak_mb: Object.fromEntries(nodes.filter((n) => n !== target).map((n) => [n.name, round(sampler.peak.get(n.pid))])),
      node_alive_after: targetAlive,
      ...(targetAlive ? {} : { node_exit: { code: target.proc.exitCode, signal: target.proc.signalCode, stderr_tail: target.stderr().slice(-1500) } }),
      attacker: observed,
      attacker_log: attacker.logs.slice(0, 10),
    });
    const crashed = !targetAlive || nodes.some((n) => !alive(n));
    record.goals = {
      honest_success_100: d.success_rate === 1 && !crashed,
      latency_ratio_le_3: ratio !== null && ratio <= 3 && !crashed,
      rss_after_le_1_1x_before: rssAfter !== undefined && rssAfter <= 1.1 * rssBefore,
      rss_peak_le_budget: peak !== undefined && peak <= budgetMb && !crashed,
    };
    const notes = def.notes(observed, during);
    const mode = (p: PhaseStats) =>
      `chained ${p.chained.median_ms ?? "–"} ms (${p.chained.generations}, ${pct(p.chained.success_rate)} ok), relayed ${p.relayed.median_ms ?? "–"} ms (${p.relayed.generations}, ${pct(p.relayed.success_rate)} ok)`;
    notes.push(`honest medians before: ${mode(b)}; during: ${mode(d)}; after: ${mode(phase(after))}`);
    if (d.failovers) notes.push(`honest failovers during: ${d.failovers} (${kv(d.failover_reasons)})`);
    if (observed.attacker_error) notes.unshift(`attacker failed: ${String(observed.attacker_error).slice(0, 300)}`);
    if (crashed)
      notes.unshift(
        `NODE DIED: ${nodes
          .filter((n) => !alive(n))
          .map((n) => `${n.name} exit ${n.proc.exitCode ?? n.proc.signalCode}`)
          .join(", ")}`,
      );
    const errLines = target.stderr().split("\n").filter(Boolean);
    if (errLines.length) notes.push(`attacked node logged ${errLines.length} error line(s), last: ${errLines.at(-1)!.slice(0, 200)}`);
    record.notes = notes;
  } catch (e) {
    record.error = errText(e);
    record.goals = { honest_success_100: false, latency_ratio_le_3: false, rss_after_le_1_1x_before: false, rss_peak_le_budget: false };
    record.notes = [`benchmark error: ${errText(e).slice(0, 400)}`];
  } finally {
    attacker?.kill();
    await honest?.close();
    await stopNodes(nodes);
  }
  return record;
}

function table(rows: Record<string, unknown>[]): string {
  const yes = (v: unknown) => (v === true ? "met" : "NOT");
  const cells = rows.map((r) => {
    const g = (r.goals ?? {}) as Record<string, boolean>;
    const f = (x: unknown, suffix = "") => (typeof x === "number" ? `${x}${suffix}` : "–");
    return [
      String(r.id),
      String(r.key),
      typeof r.honest_success_rate_during === "number" ? `${(100 * r.honest_success_rate_during).toFixed(0)}%` : "–",
      f(r.honest_latency_ratio_during, "x"),
      typeof (r.honest as { after?: PhaseStats } | undefined)?.after?.success_rate === "number"
        ? `${(100 * (r.honest as { after: PhaseStats }).after.success_rate!).toFixed(0)}%`
        : "–",
      `${f(r.rss_before_mb)} / ${f(r.rss_peak_mb)} / ${f(r.rss_after_mb)}`,
      f(r.budget_mb),
      `${yes(g.honest_success_100)} ${yes(g.latency_ratio_le_3)} ${yes(g.rss_after_le_1_1x_before)} ${yes(g.rss_peak_le_budget)}`,
    ];
  });
  const head = ["#", "attack", "success", "lat ratio", "after", "RSS before/peak/after MiB", "budget", "S   L   A   P"];
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => x.padEnd(widths[i]!)).join(" | ");
  return [line(head), widths.map((w) => "-".repeat(w)).join("-+-"), ...cells.map(line)].join("\n");
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: "boolean", default: false },
      only: { type: "string" },
      "headroom-mb": { type: "string", default: "256" },
      seed: { type: "string", default: "1" },
    },
  });
  const only = values.only ? new Set(values.only.split(",").map((x) => Number(x.trim()))) : undefined;
  const selected = ATTACKS.filter((a) => !only || only.has(a.id));
  if (!selected.length) throw new Error(`--only ${values.only}: no such attack (0..${ATTACKS.at(-1)!.id})`);
  const headroomMb = Number(values["headroom-mb"]);
  const checkpoint = await openCheckpoint(SHIPPED_MODEL.hf);
  const config = checkpoint.config;
  const s: Settings = { quick: values.quick, seed: Number(values.seed), config };
  const tokenizer = await loadTokenizer(checkpoint);
  const prompt = tokenizer.encode(readFileSync(SHIPPED_MODEL.evalText, "utf8"), { addSpecial: false }).slice(0, PROMPT_TOKENS);
  // The tokens every honest generation must produce: the local engine's greedy continuation.
  const local = await LocalPipeline.load(checkpoint, { maxSequence: 128 });
  const reference: number[] = [];
  {
    const session = local.openSession(64);
    let logits = await session.append(prompt);
    for (let i = 0; i < GENERATED_TOKENS; i++) {
      reference.push(argmax(logits));
      logits = await session.append([reference.at(-1)!]);
    }
  }
  await local.release();
  const modelId = defaultModelId(SHIPPED_MODEL.hf);
  const common: ModelParams = {
    modelId,
    numBlocks: config.numLayers,
    hiddenSize: config.hiddenSize,
    vocabSize: config.vocabSize,
    maxPositions: config.maxPositionEmbeddings,
  };
  const honestBase = {
    config,
    modelId,
    prompt,
    reference,
    stepTimeoutMs: 10_000,
    generationTimeoutMs: s.quick ? 30_000 : 60_000,
    maxLength: 64,
  };
  const results: Record<string, unknown>[] = [];
  for (const def of selected) {
    console.log(`[${def.id}/${ATTACKS.at(-1)!.id}] ${def.name}…`);
    const r = await runAttack(def, s, common, honestBase, headroomMb);
    results.push(r);
    for (const n of (r.notes as string[]) ?? []) console.log(`    ${n}`);
  }
  const git = (cmd: string) => {
    try {
      return execSync(cmd, { cwd: join(here, ".."), encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    } catch {
      return undefined;
    }
  };
  const result = {
    benchmark: "abuse",
    date: new Date().toISOString(),
    machine: { cpu: cpus()[0]?.model, cores: cpus().length, ram_bytes: totalmem(), node: process.version },
    tree: { head: git("git rev-parse HEAD"), uncommitted: git("git status --short -- src")?.split("\n").filter(Boolean) ?? [] },
    settings: {
      quick: s.quick,
      only: only ? [...only] : null,
      seed: s.seed,
      model: { path: "models/tessera-kjv", blocks: config.numLayers, hidden: config.hiddenSize, max_positions: config.maxPositionEmbeddings },
      swarm:
        "fresh `tessera node` processes per attack on 127.0.0.1, spans [0, 4) and [4, 8), --threads 1 (co-located nodes: one engine thread each, as the demo runs them), other flags default (--max-session 2048, --idle-timeout 300)",
      attacker: `a child process (bench/_abuse-attacker.ts); its libp2p hosts dial from ${ATTACKER_IP} (the node sees a remote address; the honest client and the nodes are 127.0.0.1); the Sybils of attack 8 listen and dial on 127.0.0.1`,
      honest: {
        generation: `greedy, ${PROMPT_TOKENS}-token prompt from eval.txt, ${GENERATED_TOKENS} tokens, session maxLength 64; success = completed and equal to the local engine's tokens`,
        client:
          "a SwarmClient with a reputation ledger of its own per attack (as `tessera generate` keeps one), learnt in the warm-up and 'before' phases; verification off",
        step_timeout_ms: honestBase.stepTimeoutMs,
        generation_timeout_ms: honestBase.generationTimeoutMs,
        before: s.quick ? 3 : 6,
        after: s.quick ? 2 : 4,
        during: "one after another from the attacker's 'ready' until it exits (at least 1)",
      },
      rss: "VmRSS of the attacked node's process from /proc: before = after the honest 'before' phase; peak = max of 100 ms samples from the attack's start to the end of the settle; after = 15 s after the attacker exited (rss_after_5s_10s_15s_mb: at 5, 10 and 15 s)",
      budget: `idle RSS (before) + the node's KV budget (${NODE_CACHE_TOKENS} tokens × blocks × ${kvBytesPerBlock(config, 1)} B) + ${headroomMb} MiB headroom`,
      goals: { honest_success_rate_during: 1, honest_latency_ratio_during_max: 3, rss_after_over_before_max: 1.1, rss_peak: "≤ budget" },
    },
    attacks: results,
  };
  mkdirSync(join(here, "results"), { recursive: true });
  writeFileSync(join(here, "results", "abuse.json"), JSON.stringify(result, null, 2) + "\n");
  console.log("\n" + table(results));
  console.log("goals: S success 100% during, L latency ratio ≤ 3, A RSS after ≤ 1.1× before, P peak ≤ budget");
  console.log("wrote bench/results/abuse.json");
}
