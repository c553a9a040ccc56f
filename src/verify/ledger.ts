// The reputation ledger (security design §7: "each client keeps its own local scores, persisted in
// SQLite"): one row per node the client has used, with its score, its outcome counts and any
// cooldown, and an append-only log of the outcomes that made them. The decisions are reputation.ts's;
// this file only stores them. Several processes may share one ledger file (WAL mode, a busy
// timeout, and each update in one immediate transaction, so concurrent updates never lose one).
// Times are passed in (ms since the epoch); nothing here reads a clock.
import { existsSync, mkdirSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import Database from "better-sqlite3";
import { errorMessage, logger } from "../log.js";
import { applyOutcome, cooldownAfter, coolingDown, INITIAL, initialStanding, isOutcome, type Outcome, type Standing, tier, type Tier } from "./reputation.js";

const log = logger("verify:ledger");

/** The schema this code writes; a ledger at an older version is migrated on open, a newer one refused. */
export const LEDGER_SCHEMA_VERSION = 2;

/** How long a write waits for another process holding the ledger before giving up. */
const BUSY_TIMEOUT_MS = 5_000;

/** MIGRATIONS[v] takes a ledger from schema version v to v + 1 (version 0: empty). */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE peers (
     peer_id TEXT PRIMARY KEY,
     score REAL NOT NULL,
     ok INTEGER NOT NULL DEFAULT 0,
     errors INTEGER NOT NULL DEFAULT 0,
     timeouts INTEGER NOT NULL DEFAULT 0,
     caught INTEGER NOT NULL DEFAULT 0,
     lies INTEGER NOT NULL DEFAULT 0,
     outvoted INTEGER NOT NULL DEFAULT 0,
     trials_passed INTEGER NOT NULL DEFAULT 0,
     trials_failed INTEGER NOT NULL DEFAULT 0,
     failures INTEGER NOT NULL DEFAULT 0,
     first_seen INTEGER NOT NULL,
     last_seen INTEGER NOT NULL,
     cooldown_until INTEGER,
     cooldown_ms INTEGER NOT NULL DEFAULT 0
   );
   CREATE TABLE events (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     peer_id TEXT NOT NULL,
     at INTEGER NOT NULL,
     outcome TEXT NOT NULL,
     score REAL NOT NULL,
     model_id TEXT,
     detail TEXT
   );
   CREATE INDEX events_by_peer ON events (peer_id, id);`,
  // v2: the trial pool, known answers of spans (recorded inputs and the outputs verifiers agreed on).
  `CREATE TABLE known_answers (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     model_id TEXT NOT NULL,
     start INTEGER NOT NULL,
     end INTEGER NOT NULL,
     positions INTEGER NOT NULL,
     tokens BLOB,
     hidden BLOB,
     output BLOB NOT NULL,
     created INTEGER NOT NULL
   );
   CREATE INDEX known_by_span ON known_answers (model_id, start, end);`,
];

/** Known answers kept per (model, span): the oldest go first. */
export const KNOWN_ANSWERS_PER_SPAN = 8;

/**
 * A trial's known answer: the inputs of positions [0, positions) of blocks [start, end) (token ids
 * for a span with the embedding, else hidden rows) and the outputs every row must come out as
 * (hidden rows, or logits of every position for a span with the head).
 */
export interface KnownAnswer {
  modelId: string;
  start: number;
  end: number;
  positions: number;
  tokens?: number[];
  hidden?: Float32Array;
  output: Float32Array;
  created: number;
}

interface KnownRow {
  model_id: string;
  start: number;
  end: number;
  positions: number;
  tokens: Buffer | null;
  hidden: Buffer | null;
  output: Buffer;
  created: number;
}

const f32 = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));

/** A file that cannot serve as a reputation ledger (not SQLite, corrupt, another database, a newer schema); the message names the file. */
export class LedgerError extends Error {
  override name = "LedgerError";
}

/** Where a node stands in the ledger: its standing, its id and its tier; it has history, so both times are set. */
export interface LedgerEntry extends Standing {
  peerId: string;
  tier: Tier;
  firstSeen: number;
  lastSeen: number;
}

/** One recorded outcome, with the score it left the node at. */
export interface LedgerEvent {
  id: number;
  peerId: string;
  /** When it happened (ms since the epoch). */
  at: number;
  outcome: Outcome;
  /** The node's score after this outcome. */
  score: number;
  modelId?: string;
  detail?: string;
}

/** What an outcome is recorded with: its time, and optionally the model served and a free-text detail. */
export interface RecordOptions {
  /** Ms since the epoch. */
  now: number;
  modelId?: string;
  detail?: string;
}

interface PeerRow {
  peer_id: string;
  score: number;
  ok: number;
  errors: number;
  timeouts: number;
  caught: number;
  lies: number;
  outvoted: number;
  trials_passed: number;
  trials_failed: number;
  failures: number;
  first_seen: number;
  last_seen: number;
  cooldown_until: number | null;
  cooldown_ms: number;
}

interface EventRow {
  id: number;
  peer_id: string;
  at: number;
  outcome: string;
  score: number;
  model_id: string | null;
  detail: string | null;
}

/** The default ledger file: `$TESSERA_HOME/reputation.db`, TESSERA_HOME defaulting to `~/.tessera`. */
export function defaultLedgerPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.TESSERA_HOME || join(homedir(), ".tessera"), "reputation.db");
}

/** A client's reputation ledger over an SQLite file; open it with `ReputationLedger.open`. */
export class ReputationLedger {
  private readonly getPeer: Database.Statement<[string], PeerRow>;
  private readonly putPeer: Database.Statement<[PeerRow]>;
  private readonly putEvent: Database.Statement<[Omit<EventRow, "id">]>;
  private readonly allPeers: Database.Statement<[], PeerRow>;
  private readonly peerEvents: Database.Statement<[string, number], EventRow>;
  private readonly allEvents: Database.Statement<[number], EventRow>;
  private readonly recordTx: (peerId: string, outcome: Outcome, options: RecordOptions) => LedgerEntry;

  private constructor(
    private readonly db: Database.Database,
    /** The ledger file, as an absolute path. */
    readonly path: string,
  ) {
    this.getPeer = db.prepare("SELECT * FROM peers WHERE peer_id = ?");
    this.putPeer = db.prepare(
      `INSERT OR REPLACE INTO peers (peer_id, score, ok, errors, timeouts, caught, lies, outvoted, trials_passed, trials_failed, failures,
         first_seen, last_seen, cooldown_until, cooldown_ms)
       VALUES (@peer_id, @score, @ok, @errors, @timeouts, @caught, @lies, @outvoted, @trials_passed, @trials_failed, @failures,
         @first_seen, @last_seen, @cooldown_until, @cooldown_ms)`,
    );
    this.putEvent = db.prepare(
      "INSERT INTO events (peer_id, at, outcome, score, model_id, detail) VALUES (@peer_id, @at, @outcome, @score, @model_id, @detail)",
    );
    this.allPeers = db.prepare("SELECT * FROM peers ORDER BY score DESC, peer_id");
    this.peerEvents = db.prepare("SELECT * FROM events WHERE peer_id = ? ORDER BY id DESC LIMIT ?");
    this.allEvents = db.prepare("SELECT * FROM events ORDER BY id DESC LIMIT ?");
    const tx = db.transaction((peerId: string, outcome: Outcome, options: RecordOptions) => {
      const row = this.getPeer.get(peerId);
      const next = applyOutcome(row ? standingOf(row) : initialStanding(), outcome, options.now);
      const entry = entryFrom(peerId, next, options.now);
      this.putPeer.run(rowOf(entry));
      this.putEvent.run({ peer_id: peerId, at: options.now, outcome, score: entry.score, model_id: options.modelId ?? null, detail: options.detail ?? null });
      return entry;
    });
    // IMMEDIATE takes the write lock before reading the row, so two processes never both update from the same old score.
    this.recordTx = (peerId, outcome, options) => tx.immediate(peerId, outcome, options);
  }

  /**
   * Opens (creating it and its folder when missing) the ledger at `path`, by default
   * `defaultLedgerPath()`; migrates an older schema. Throws a LedgerError naming the file when it
   * is not SQLite, is corrupt, holds another database, or was written by a newer schema.
   */
  static open(path: string = defaultLedgerPath()): ReputationLedger {
    const file = resolve(path);
    if (existsSync(file) && statSync(file).isDirectory()) throw new LedgerError(`${file}: is a folder, not a reputation ledger`);
    try {
      mkdirSync(dirname(file), { recursive: true });
    } catch (e) {
      throw new LedgerError(`${file}: cannot create the ledger's folder (${errorMessage(e)})`);
    }
    let db: Database.Database | undefined;
    try {
      db = new Database(file, { timeout: BUSY_TIMEOUT_MS });
      db.pragma("journal_mode = WAL");
      const version = migrate(db, file);
      log("opened %s (schema v%d)", file, version);
      return new ReputationLedger(db, file);
    } catch (e) {
      db?.close();
      if (e instanceof LedgerError) throw e;
      const code = (e as { code?: unknown }).code;
      if (code === "SQLITE_NOTADB" || code === "SQLITE_CORRUPT") throw new LedgerError(`${file}: not a reputation ledger (${errorMessage(e)})`);
      throw new LedgerError(`${file}: cannot open the reputation ledger (${errorMessage(e)})`);
    }
  }

  /** A node's score; INITIAL (1) for a node the ledger has never heard of. */
  score(peerId: string): number {
    return this.getPeer.get(peerId)?.score ?? INITIAL;
  }

  /** Whether the ledger holds any history for a node. */
  has(peerId: string): boolean {
    return this.getPeer.get(peerId) !== undefined;
  }

  /** A node's entry, or undefined when it has no history. */
  entry(peerId: string): LedgerEntry | undefined {
    const row = this.getPeer.get(peerId);
    return row && entryOf(row);
  }

  /**
   * Records one outcome for a node at `now`: updates its score by the reputation rule, counts the
   * outcome, starts a cooldown where the outcome calls for one, and appends an event. Returns the
   * node's updated entry. Atomic, and safe against other processes recording into the same file.
   */
  record(peerId: string, outcome: Outcome, options: RecordOptions): LedgerEntry {
    if (!peerId) throw new TypeError("record: empty peer id");
    if (!isOutcome(outcome)) throw new TypeError(`record: unknown outcome '${String(outcome)}'`);
    if (!Number.isFinite(options.now)) throw new TypeError(`record: now must be a time in ms, got ${String(options.now)}`);
    const entry = this.recordTx(peerId, outcome, options);
    log.trace("%s %s → %s", peerId, outcome, entry.score.toFixed(3));
    if (cooldownAfter(outcome) > 0 && entry.cooldownUntil !== undefined) {
      log("%s: %s, score %s, cooling down until %s", peerId, outcome, entry.score.toFixed(3), new Date(entry.cooldownUntil).toISOString());
    }
    return entry;
  }

  /** When a node's latest cooldown ends (ms since the epoch; possibly past), or undefined if it never had one. */
  cooldownUntil(peerId: string): number | undefined {
    return this.getPeer.get(peerId)?.cooldown_until ?? undefined;
  }

  /** Whether a node's cooldown is still running at `now`. */
  inCooldown(peerId: string, now: number): boolean {
    return coolingDown({ cooldownUntil: this.cooldownUntil(peerId) }, now);
  }

  /** Every node with history, highest score first (ties by peer id). */
  list(): LedgerEntry[] {
    return this.allPeers.all().map(entryOf);
  }

  /** Recorded outcomes, newest first: of one node, or of all; at most `limit` (default 100). */
  events(peerId?: string, limit = 100): LedgerEvent[] {
    const rows = peerId === undefined ? this.allEvents.all(limit) : this.peerEvents.all(peerId, limit);
    return rows.map((r) => ({
      id: r.id,
      peerId: r.peer_id,
      at: r.at,
      outcome: r.outcome as Outcome,
      score: r.score,
      ...(r.model_id !== null && { modelId: r.model_id }),
      ...(r.detail !== null && { detail: r.detail }),
    }));
  }

  /** Adds a known answer to the trial pool, keeping the newest KNOWN_ANSWERS_PER_SPAN of its span. */
  addKnownAnswer(a: KnownAnswer): void {
    const row: KnownRow = {
      model_id: a.modelId,
      start: a.start,
      end: a.end,
      positions: a.positions,
      tokens: a.tokens ? Buffer.from(Int32Array.from(a.tokens).buffer) : null,
      hidden: a.hidden ? Buffer.from(a.hidden.buffer, a.hidden.byteOffset, a.hidden.byteLength) : null,
      output: Buffer.from(a.output.buffer, a.output.byteOffset, a.output.byteLength),
      created: a.created,
    };
    this.db
      .transaction(() => {
        this.db
          .prepare(
            "INSERT INTO known_answers (model_id, start, end, positions, tokens, hidden, output, created) VALUES (@model_id, @start, @end, @positions, @tokens, @hidden, @output, @created)",
          )
          .run(row);
        this.db
          .prepare(
            "DELETE FROM known_answers WHERE model_id = ? AND start = ? AND end = ? AND id NOT IN (SELECT id FROM known_answers WHERE model_id = ? AND start = ? AND end = ? ORDER BY id DESC LIMIT ?)",
          )
          .run(a.modelId, a.start, a.end, a.modelId, a.start, a.end, KNOWN_ANSWERS_PER_SPAN);
      })
      .immediate();
  }

  /** Known answers of `modelId` for spans inside blocks [start, end). */
  knownAnswers(modelId: string, start: number, end: number): KnownAnswer[] {
    return this.db
      .prepare<[string, number, number], KnownRow>("SELECT * FROM known_answers WHERE model_id = ? AND start >= ? AND end <= ? ORDER BY id")
      .all(modelId, start, end)
      .map((r) => ({
        modelId: r.model_id,
        start: r.start,
        end: r.end,
        positions: r.positions,
        ...(r.tokens ? { tokens: Array.from(new Int32Array(r.tokens.buffer.slice(r.tokens.byteOffset, r.tokens.byteOffset + r.tokens.byteLength))) } : {}),
        ...(r.hidden ? { hidden: f32(r.hidden) } : {}),
        output: f32(r.output),
        created: r.created,
      }));
  }

  /** Closes the file; the ledger cannot be used afterwards. Closing twice is harmless. */
  close(): void {
    if (this.db.open) this.db.close();
  }
}

/** Brings a ledger to LEDGER_SCHEMA_VERSION, in one transaction; returns the version it is at. */
function migrate(db: Database.Database, file: string): number {
  const run = db.transaction(() => {
    const tables = db
      .prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
      .all()
      .map((t) => t.name);
    if (!tables.includes("schema_version")) {
      if (tables.length) throw new LedgerError(`${file}: an SQLite database, but not a reputation ledger (it holds tables ${tables.join(", ")})`);
      db.exec("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version (version) VALUES (0);");
    }
    const version = db.prepare<[], { version: number }>("SELECT max(version) AS version FROM schema_version").get()?.version ?? 0;
    if (version > LEDGER_SCHEMA_VERSION) {
      throw new LedgerError(`${file}: a reputation ledger at schema v${version}, written by a newer Tessera (this one reads up to v${LEDGER_SCHEMA_VERSION})`);
    }
    for (let v = version; v < LEDGER_SCHEMA_VERSION; v++) {
      db.exec(MIGRATIONS[v]!);
      db.prepare("UPDATE schema_version SET version = ?").run(v + 1);
      log("migrated %s to schema v%d", file, v + 1);
    }
    return LEDGER_SCHEMA_VERSION;
  });
  return run.immediate();
}

function standingOf(r: PeerRow): Standing {
  return {
    score: r.score,
    ok: r.ok,
    errors: r.errors,
    timeouts: r.timeouts,
    caught: r.caught,
    lies: r.lies,
    outvoted: r.outvoted,
    trialsPassed: r.trials_passed,
    trialsFailed: r.trials_failed,
    failures: r.failures,
    firstSeen: r.first_seen,
    lastSeen: r.last_seen,
    ...(r.cooldown_until !== null && { cooldownUntil: r.cooldown_until }),
    cooldownMs: r.cooldown_ms,
  };
}

function entryOf(r: PeerRow): LedgerEntry {
  return entryFrom(r.peer_id, standingOf(r), r.last_seen);
}

/** An entry for a standing that has history (`seen` fills the times only if it somehow has none). */
function entryFrom(peerId: string, s: Standing, seen: number): LedgerEntry {
  const { score, ...rest } = s;
  return { peerId, score, tier: tier(score), ...rest, firstSeen: s.firstSeen ?? seen, lastSeen: s.lastSeen ?? seen };
}

function rowOf(e: LedgerEntry): PeerRow {
  return {
    peer_id: e.peerId,
    score: e.score,
    ok: e.ok,
    errors: e.errors,
    timeouts: e.timeouts,
    caught: e.caught,
    lies: e.lies,
    outvoted: e.outvoted,
    trials_passed: e.trialsPassed,
    trials_failed: e.trialsFailed,
    failures: e.failures,
    first_seen: e.firstSeen,
    last_seen: e.lastSeen,
    cooldown_until: e.cooldownUntil ?? null,
    cooldown_ms: e.cooldownMs,
  };
}
