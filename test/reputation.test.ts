// Reputation: the update rule, tiers and cooldowns (pure), the SQLite ledger that keeps them across
// runs and processes, and `tessera reputation` reading it.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import Database from "better-sqlite3";
import { defaultLedgerPath, LedgerError, ReputationLedger } from "../src/verify/ledger.js";
import {
  applyOutcome,
  AVOID_BELOW,
  cooldownAfter,
  initialStanding,
  isFailure,
  MAX,
  MIN,
  nextReputation,
  normalisedReputation,
  OUTCOMES,
  routingPenaltySeconds,
  tier,
} from "../src/verify/reputation.js";
import { workDir } from "./support/fixtures.js";
import { tessera } from "./support/cli.js";

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const HONEST = "12D3KooWHonestNodeQmYyQSo1c1Ym7orWxLYvCrM2EmxFTjHonest";
const FLAKY = "12D3KooWFlakyNodeQmYyQSo1c1Ym7orWxLYvCrM2EmxFTjFlaky1";
const CHEAT = "12D3KooWCheatNodeQmYyQSo1c1Ym7orWxLYvCrM2EmxFTjCheat1";

let files = 0;
const ledgerFile = () => join(workDir, `ledger-${++files}`, "reputation.db");

test("the update rule: an error takes 1 to 0.8, a served request to 1.01, and scores stay within [0.1, 10]", () => {
  assert.equal(nextReputation(1, true), 0.8);
  assert.equal(nextReputation(1, false), 1.01);
  assert.equal(nextReputation(0.8, false), 0.8 * 1.01);

  let r = 1;
  for (let i = 0; i < 100; i++) r = nextReputation(r, true);
  assert.equal(r, MIN, "many failures floor at 0.1");
  assert.equal(nextReputation(MIN, false), MIN * 1.01, "a floored node can climb back");
  for (let i = 0; i < 1000; i++) r = nextReputation(r, false);
  assert.equal(r, MAX, "many served requests cap at 10");
  assert.equal(nextReputation(MAX, true), 8);
  assert.throws(() => nextReputation(Number.NaN, false), RangeError);
});

test("failures (M = 1) are every outcome but ok and a passed trial", () => {
  assert.deepEqual(
    OUTCOMES.filter((o) => !isFailure(o)),
    ["ok", "trial-pass"],
  );
  for (const o of ["error", "timeout", "caught", "throughput-lie", "trial-fail", "outvoted"] as const) assert.ok(isFailure(o), o);
});

test("tiers: a new node is B, 70 served requests lift it to A, a failure drops it back, four failures from 1 put it in C", () => {
  let r = 1;
  assert.equal(tier(r), "B");
  let served = 0;
  while (tier(r) === "B") {
    r = nextReputation(r, false);
    served++;
  }
  assert.equal(served, 70, "1.01^70 ≈ 2.007 is the first score ≥ 2");
  assert.equal(tier(r), "A");
  assert.equal(tier(nextReputation(r, true)), "B");

  const down = [1];
  for (let i = 0; i < 4; i++) down.push(nextReputation(down.at(-1)!, true));
  assert.deepEqual(down.map(tier), ["B", "B", "B", "B", "C"], "0.8, 0.64 and 0.512 are still B; 0.4096 is C");
  assert.equal(tier(AVOID_BELOW), "B");
  assert.equal(tier(2), "A");
  assert.equal(tier(0.4999), "C");
});

test("routing: the normalised score runs 0 → 1 on a log scale and the per-hop penalty shrinks as it rises", () => {
  assert.equal(normalisedReputation(MIN), 0);
  assert.equal(normalisedReputation(1), 0.5);
  assert.equal(normalisedReputation(MAX), 1);
  assert.equal(routingPenaltySeconds(MIN), 0.05);
  assert.equal(routingPenaltySeconds(1), 0.025);
  assert.equal(routingPenaltySeconds(MAX), 0);
  assert.equal(routingPenaltySeconds(1, 0.2), 0.1);
  assert.ok(routingPenaltySeconds(0.4) > routingPenaltySeconds(3));
});

test("cooldowns: misbehaviour starts 10 minutes, doubling on each repeat up to 24 hours; errors and timeouts start none", () => {
  const lengths: number[] = [];
  let previous = 0;
  for (let i = 0; i < 10; i++) lengths.push((previous = cooldownAfter("trial-fail", previous)));
  assert.deepEqual(
    lengths.map((ms) => ms / MINUTE),
    [10, 20, 40, 80, 160, 320, 640, 1280, 1440, 1440],
  );
  for (const o of ["caught", "outvoted", "throughput-lie"] as const) assert.equal(cooldownAfter(o), 10 * MINUTE, o);
  assert.equal(cooldownAfter("caught", 40 * MINUTE), 80 * MINUTE, "any misbehaviour repeats the last one");
  for (const o of ["ok", "error", "timeout", "trial-pass"] as const) assert.equal(cooldownAfter(o, 40 * MINUTE), 0, o);
});

test("an outcome updates the score, counts its kind and starts any cooldown, without shortening one", () => {
  const t = 1_700_000_000_000;
  let s = applyOutcome(initialStanding(), "ok", t);
  s = applyOutcome(s, "throughput-lie", t + 1);
  assert.equal(s.cooldownUntil, t + 1 + 10 * MINUTE);
  s = applyOutcome(s, "timeout", t + 2);
  s = applyOutcome(s, "caught", t + 3);
  assert.deepEqual(
    { ...s, score: undefined },
    {
      score: undefined,
      ok: 1,
      errors: 0,
      timeouts: 1,
      caught: 1,
      lies: 1,
      outvoted: 0,
      trialsPassed: 0,
      trialsFailed: 0,
      failures: 3,
      firstSeen: t,
      lastSeen: t + 3,
      cooldownUntil: t + 3 + 20 * MINUTE,
      cooldownMs: 20 * MINUTE,
    },
  );
  assert.equal(s.score, 1.01 * 0.8 * 0.8 * 0.8);
  const long = { ...s, cooldownUntil: t + 5 * HOUR };
  assert.equal(applyOutcome(long, "outvoted", t + 4).cooldownUntil, t + 5 * HOUR, "a running longer cooldown stays");
});

test("the ledger keeps scores, counts, cooldowns and events across close and reopen", () => {
  const file = ledgerFile();
  const t = 1_700_000_000_000;
  const ledger = ReputationLedger.open(file);
  assert.equal(ledger.score(HONEST), 1, "an unknown node starts at 1");
  assert.equal(ledger.has(HONEST), false);
  assert.equal(ledger.cooldownUntil(HONEST), undefined);
  for (let i = 0; i < 80; i++) ledger.record(HONEST, "ok", { now: t + i, modelId: "tiny-llama" });
  ledger.record(HONEST, "trial-pass", { now: t + 100 });
  ledger.record(FLAKY, "ok", { now: t });
  ledger.record(FLAKY, "timeout", { now: t + 1 });
  const flaky = ledger.record(FLAKY, "error", { now: t + 2, detail: "stream reset" });
  assert.equal(flaky.score, 1.01 * 0.8 * 0.8);
  assert.equal(flaky.tier, "B");
  assert.deepEqual([flaky.ok, flaky.timeouts, flaky.errors, flaky.failures], [1, 1, 1, 2]);
  ledger.record(CHEAT, "trial-fail", { now: t, detail: "block 2 output off" });
  const cheat = ledger.record(CHEAT, "caught", { now: t + MINUTE, modelId: "tiny-llama", detail: "replay mismatch" });
  assert.equal(cheat.cooldownUntil, t + MINUTE + 20 * MINUTE, "the second misbehaviour doubles the cooldown");
  assert.ok(ledger.inCooldown(CHEAT, t + 20 * MINUTE));
  assert.ok(!ledger.inCooldown(CHEAT, t + 21 * MINUTE));
  assert.ok(!ledger.inCooldown(HONEST, t));
  const before = ledger.list();
  const events = ledger.events();
  ledger.close();
  ledger.close();

  const reopened = ReputationLedger.open(file);
  assert.deepEqual(reopened.list(), before);
  assert.deepEqual(
    reopened.list().map((e) => [e.peerId, e.tier]),
    [
      [HONEST, "A"],
      [FLAKY, "B"],
      [CHEAT, "B"],
    ],
    "best first",
  );
  let honest = 1;
  for (let i = 0; i < 81; i++) honest = nextReputation(honest, false);
  assert.equal(reopened.score(HONEST), honest, "80 served requests and a passed trial");
  assert.equal(reopened.score(CHEAT), 0.8 * 0.8);
  assert.deepEqual(reopened.events(), events);
  assert.equal(reopened.events().length, 86);
  assert.deepEqual(
    reopened.events(CHEAT).map((e) => [e.outcome, e.score, e.modelId, e.detail]),
    [
      ["caught", 0.8 * 0.8, "tiny-llama", "replay mismatch"],
      ["trial-fail", 0.8, undefined, "block 2 output off"],
    ],
    "newest first, with model and detail",
  );
  assert.equal(reopened.events(HONEST, 5).length, 5);
  assert.equal(reopened.entry(HONEST)?.trialsPassed, 1);
  assert.equal(reopened.entry("nobody"), undefined);
  reopened.close();
});

test("two processes recording into one ledger lose no update", async () => {
  const file = ledgerFile();
  ReputationLedger.open(file).close();
  const script = join(workDir, "record-many.ts");
  const ledgerModule = new URL("../src/verify/ledger.ts", import.meta.url).href;
  writeFileSync(
    script,
    `import { ReputationLedger } from ${JSON.stringify(ledgerModule)};
     const [file, peer, n] = process.argv.slice(2);
     const ledger = ReputationLedger.open(file);
     for (let i = 0; i < Number(n); i++) { ledger.record(peer, "ok", { now: i }); ledger.record("shared", "ok", { now: i }); }
     ledger.close();`,
  );
  const run = promisify(execFile);
  const tsx = fileURLToPath(import.meta.resolve("tsx"));
  await Promise.all(["a", "b"].map((peer) => run(process.execPath, ["--import", tsx, script, file, peer, "150"], { timeout: 60_000 })));
  const ledger = ReputationLedger.open(file);
  let expected = 1;
  for (let i = 0; i < 300; i++) expected = nextReputation(expected, false);
  assert.equal(ledger.entry("shared")?.ok, 300);
  assert.equal(ledger.score("shared"), expected);
  assert.equal(ledger.entry("a")?.ok, 150);
  assert.equal(ledger.entry("b")?.ok, 150);
  assert.equal(ledger.events(undefined, 1000).length, 600);
  ledger.close();
});

test("the ledger lives in $TESSERA_HOME (default ~/.tessera), whose folder it creates", () => {
  assert.equal(defaultLedgerPath({ TESSERA_HOME: "/srv/tessera" }), "/srv/tessera/reputation.db");
  assert.equal(defaultLedgerPath({}), join(homedir(), ".tessera", "reputation.db"));
  const home = join(workDir, "home", "nested");
  const saved = process.env.TESSERA_HOME;
  process.env.TESSERA_HOME = home;
  try {
    const ledger = ReputationLedger.open();
    assert.equal(ledger.path, join(home, "reputation.db"));
    ledger.record(HONEST, "ok", { now: 1 });
    ledger.close();
    assert.ok(existsSync(join(home, "reputation.db")));
  } finally {
    if (saved === undefined) delete process.env.TESSERA_HOME;
    else process.env.TESSERA_HOME = saved;
  }
});

test("a file that is not a ledger is refused with an error naming it, and left as it was", () => {
  const garbage = join(workDir, "garbage.db");
  const bytes = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 251));
  writeFileSync(garbage, bytes);
  assert.throws(
    () => ReputationLedger.open(garbage),
    (e: Error) => e instanceof LedgerError && e.message.includes(garbage) && /not a reputation ledger/.test(e.message),
  );
  assert.deepEqual(readFileSync(garbage), bytes);

  const other = join(workDir, "other.sqlite");
  const db = new Database(other);
  db.exec("CREATE TABLE songs (title TEXT)");
  db.close();
  assert.throws(() => ReputationLedger.open(other), /other\.sqlite: an SQLite database, but not a reputation ledger \(it holds tables songs\)/);

  const newer = ledgerFile();
  ReputationLedger.open(newer).close();
  const raw = new Database(newer);
  raw.exec("UPDATE schema_version SET version = 99");
  raw.close();
  assert.throws(
    () => ReputationLedger.open(newer),
    (e: Error) => e instanceof LedgerError && /schema v99, written by a newer Tessera/.test(e.message),
  );
  assert.throws(
    () => ReputationLedger.open(workDir),
    (e: Error) => e instanceof LedgerError && e.message.includes("is a folder"),
  );
});

test("tessera reputation prints the ledger as JSON and as a table, one node's events, and says where an empty ledger lives", async () => {
  const file = ledgerFile();
  const now = Date.now();
  const ledger = ReputationLedger.open(file);
  for (let i = 0; i < 3; i++) ledger.record(HONEST, "ok", { now: now - HOUR + i, modelId: "tiny-llama" });
  ledger.record(CHEAT, "throughput-lie", { now: now - MINUTE, detail: "announced 900 rps, served 40" });
  ledger.close();

  const json = JSON.parse((await tessera(["reputation", "--ledger", file, "--json"])).stdout);
  assert.equal(json.ledger, file);
  assert.equal(json.peers.length, 2);
  const [honest, cheat] = json.peers;
  assert.equal(honest.peerId, HONEST);
  assert.equal(honest.score, nextReputation(nextReputation(nextReputation(1, false), false), false));
  assert.deepEqual([honest.tier, honest.ok, honest.failures, honest.lastSeen], ["B", 3, 0, now - HOUR + 2]);
  assert.deepEqual([cheat.peerId, cheat.score, cheat.tier, cheat.lies, cheat.failures], [CHEAT, 0.8, "B", 1, 1]);
  assert.equal(cheat.cooldownUntil, now - MINUTE + 10 * MINUTE);

  const { stdout: text } = await tessera(["reputation", "--ledger", file]);
  const lines = text.trim().split("\n");
  assert.match(lines[0]!, new RegExp(`^2 nodes in ${file.replace(/[.\\/]/g, "\\$&")}$`));
  assert.match(lines[1]!, /^peer\s+score\s+tier\s+ok\s+failures\s+caught\s+lies\s+trials ok\/failed\s+cooldown\s+last seen$/);
  assert.match(lines[2]!, /^12D3Ko…TjHonest\s+1\.03\s+B\s+3\s+0\s+0\s+0\s+0\/0\s+-\s+1h 0m ago$/);
  assert.match(lines[3]!, /^12D3Ko…TjCheat1\s+0\.80\s+B\s+0\s+1\s+0\s+1\s+0\/0\s+(9m 0s|8m [1-5]\ds)\s+1m \d+s ago$/);

  const events = JSON.parse((await tessera(["reputation", "--ledger", file, "--events", "Cheat", "--json"])).stdout);
  assert.equal(events.peerId, CHEAT);
  assert.deepEqual(
    events.events.map((e: { outcome: string; detail: string }) => [e.outcome, e.detail]),
    [["throughput-lie", "announced 900 rps, served 40"]],
  );

  const missing = join(workDir, "no-ledger-here", "reputation.db");
  const empty = await tessera(["reputation", "--ledger", missing]);
  assert.equal(empty.stdout, `no reputation recorded yet (ledger: ${missing})\n`);
  assert.ok(!existsSync(missing), "reading a ledger does not create one");
  const viaHome = await tessera(["reputation"], { env: { ...process.env, TESSERA_HOME: join(workDir, "empty-home") } });
  assert.match(viaHome.stdout, /no reputation recorded yet \(ledger: .*empty-home\/reputation\.db\)/);
});

test("tessera reputation on a file that is not a ledger exits non-zero, naming the file", async () => {
  const garbage = join(workDir, "not-a-ledger.db");
  writeFileSync(garbage, "this is a text file, not SQLite\n".repeat(200));
  await assert.rejects(tessera(["reputation", "--ledger", garbage, "--json"]), (e: { code: number; stdout: string; stderr: string }) => {
    assert.equal(e.code, 1);
    assert.equal(e.stdout, "");
    assert.ok(e.stderr.includes(`tessera: LedgerError: ${garbage}: not a reputation ledger`), e.stderr);
    return true;
  });
});
