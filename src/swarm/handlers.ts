// The node's libp2p protocol handlers over a span server: the span protocol (one stream = one
// session: open, steps, link), the push protocol (steps pushed by the previous node of a chained
// route) and the link-speed probe. A peer's bytes never crash the node: malformed messages get
// an error reply and close only their own stream. A committed step's output is held here (one
// frame per session) until the client reveals it.
import type { PrivateKey, Stream } from "@libp2p/interface";
import { peerIdFromString } from "@libp2p/peer-id";
import { errorMessage, logger } from "../log.js";
import { ProtocolError } from "../wire/errors.js";
import { misbehaved, SESSION_TAG, SESSION_TAG_VALUE, type SwarmHost, tagPeer } from "./host.js";
import { framingDefaults, isFramingViolation, ShareOfBudget } from "./framing.js";
import { answerProbe, PROBE_PROTOCOL } from "./link-probe.js";
import {
  decodeMessage,
  encodeCommit,
  encodeControl,
  encodePush,
  encodeResult,
  encodeStep,
  framedStream,
  Kind,
  type LinkRequest,
  type Message,
  PUSH_PROTOCOL,
  SPAN_PROTOCOL,
  type StepReceipt,
  type StepRequest,
} from "./protocol.js";
import { inputHash, ReceiptChain, sha256, signedAt, signHead } from "./receipt.js";
import type { OpenResult, ServerSession, SpanServer, StepOutcome } from "./span-server.js";

const log = logger("swarm:handler");

/** One peer's messages in flight may take at most this share of the node's buffer budget. */
export const PEER_BUFFER_SHARE = 0.25;

type Send = (bytes: Uint8Array) => Promise<void>;

/** A session's stream to the next node for pushes; closed when the session is relinked, its push fails or it ends. */
interface PushStream {
  send: Send;
  close(): void;
}

/** What the handlers keep per session: where its results and outputs go, who may push into it, its receipts. */
interface SessionState {
  /** Where to push outputs, and which peer may push into the session. */
  link: LinkRequest;
  /** Writes to the client's stream (results of steps from the client or pushed by the previous node). */
  reply: Send;
  /** Stream to the next node for pushes, opened on first use. */
  pushTo?: Promise<PushStream>;
  /** The receipt chain of every result and commitment sent on the session's stream, in order. */
  chain: ReceiptChain;
  /** The output of the last committed step, until it is revealed or another step runs. */
  held?: { receipt: StepReceipt; frame: Uint8Array };
}

export class SpanHandlers {
  private states = new WeakMap<ServerSession, SessionState>();
  /** Pushes dropped because their session is unknown or was not linked to the pushing peer. */
  readonly stats = { pushesIgnored: 0 };
  /** Open sessions per peer: a peer with one is tagged, so connection pruning keeps it (host.ts). */
  private readonly sessionsOf = new Map<string, number>();
  /** Each peer's share of the node's budget for incoming messages, while it has streams open. */
  private readonly budgets = new Map<string, { budget: ShareOfBudget; streams: number }>();

  constructor(
    private readonly host: SwarmHost,
    private readonly server: SpanServer,
    /** Signs each result's receipt (the node's libp2p identity key). */
    private readonly key: PrivateKey,
  ) {}

  async register(): Promise<void> {
    await this.host.handle(SPAN_PROTOCOL, (stream, connection) => this.serveSession(stream, connection.remotePeer.toString()), { maxInboundStreams: 256 });
    await this.host.handle(
      PROBE_PROTOCOL,
      (stream, connection) =>
        answerProbe(stream, (e) => {
          if (isFramingViolation(e)) misbehaved(this.host, connection.remotePeer, `probe stream: ${e.message}`);
        }),
      { maxInboundStreams: 8 },
    );
    await this.host.handle(PUSH_PROTOCOL, (stream, connection) => this.acceptPushes(stream, connection.remotePeer.toString()), {
      maxInboundStreams: 256,
      maxOutboundStreams: 256,
    });
  }

  /** One session on one stream of the span protocol. */
  private async serveSession(stream: Stream, from: string): Promise<void> {
    const lp = framedStream(stream, { budget: this.budgetOf(from, +1) });
    const send: Send = async (bytes) => {
      await lp.write(bytes);
    };
    let session: ServerSession | undefined;
    const fail = async (code: string, message: string) => {
      log("session %s: %s: %s", session?.label ?? `(not open) of ${from}`, code, message);
      await send(encodeControl(Kind.Error, { code, message })).catch((e) => log("could not tell %s about %s: %s", from, code, errorMessage(e)));
    };
    try {
      for (;;) {
        // Undefined: the client closed or reset the stream, or sent an oversized frame.
        const bytes = await readFrame(this.host, lp, "span", from);
        if (!bytes) return;
        if (bytes instanceof ProtocolError) {
          await fail(bytes.code, `${bytes.message}; send it again later`);
          continue;
        }
        let message: Message;
        try {
          message = decodeMessage(bytes, this.server.maxElements);
        } catch (e) {
          return await fail(e instanceof ProtocolError ? e.code : "BAD_MESSAGE", errorMessage(e));
        }
        if (message.kind === Kind.Open) {
          if (session) return await fail("ALREADY_OPEN", "this stream already carries a session");
          let opened: OpenResult;
          try {
            opened = await this.server.open(message.open, {
              peer: from,
              closed: (code, text) => {
                send(encodeControl(Kind.Error, { code, message: text }))
                  .catch((e) => log("could not tell %s its session closed: %s", from, errorMessage(e)))
                  .finally(() => stream.close().catch((e) => stream.abort(e instanceof Error ? e : new Error(String(e)))));
              },
            });
          } catch (e) {
            // The engine could not load the blocks (the server logged why): this session only fails.
            return await fail("INTERNAL", `could not load blocks [${message.open.start}, ${message.open.end}): ${errorMessage(e)}`);
          }
          if (!opened.ok) return await fail(opened.code, opened.message);
          session = opened.session;
          this.states.set(session, { link: {}, reply: send, chain: new ReceiptChain() });
          this.countSession(from, +1);
          await send(encodeControl(Kind.Opened, { start: session.request.start, end: session.request.end }));
        } else if (message.kind === Kind.Step) {
          if (!session) return await fail("NOT_OPEN", "send an open message first");
          if (!session.open) return; // closed for idleness meanwhile; its owner was told
          await this.runStep(session, message.step);
        } else if (message.kind === Kind.Reveal) {
          if (!session) return await fail("NOT_OPEN", "send an open message first");
          if (!session.open) return;
          await this.reveal(session, message.stepId);
        } else if (message.kind === Kind.Link) {
          if (!session) return await fail("NOT_OPEN", "send an open message first");
          if (!session.request.sessionId) return await fail("BAD_STEP", "linking needs a session opened with a sessionId");
          const state = this.stateOf(session);
          state.link = message.link;
          this.closePushStream(session, state, "relinked");
          log.trace("session %s linked: next %s, prev %s", session.label, message.link.next?.peerId ?? "none", message.link.prev ?? "none");
        } else {
          return await fail("UNEXPECTED", `message kind ${message.kind} is not for nodes`);
        }
      }
    } finally {
      this.budgetOf(from, -1);
      if (session) {
        this.server.close(session);
        this.countSession(from, -1);
        const state = this.states.get(session);
        if (state) this.closePushStream(session, state, "the session ended");
      }
      await stream.close().catch((e) => stream.abort(e instanceof Error ? e : new Error(String(e))));
    }
  }

  /**
   * The buffer budget of `peer`'s streams (PEER_BUFFER_SHARE of the node's, within it), counting
   * its open streams by `delta`; forgotten with its last stream.
   */
  private budgetOf(peer: string, delta: 1 | -1): ShareOfBudget {
    let entry = this.budgets.get(peer);
    if (!entry) {
      const shared = framingDefaults.budget;
      entry = { budget: new ShareOfBudget(Math.floor(shared.limit * PEER_BUFFER_SHARE), shared), streams: 0 };
      this.budgets.set(peer, entry);
    }
    entry.streams += delta;
    if (entry.streams <= 0) this.budgets.delete(peer);
    return entry.budget;
  }

  /** Tags a peer while it has a session open here (and untags it after its last). */
  private countSession(peer: string, delta: 1 | -1): void {
    const n = (this.sessionsOf.get(peer) ?? 0) + delta;
    if (n > 0) this.sessionsOf.set(peer, n);
    else this.sessionsOf.delete(peer);
    if ((delta > 0 && n === 1) || n === 0) {
      void tagPeer(this.host, peer, SESSION_TAG, n > 0 ? SESSION_TAG_VALUE : null).catch((e) => log("could not tag peer %s: %s", peer, errorMessage(e)));
    }
  }

  /** Runs a step (from the client, or pushed); its result goes to the client and, for a pushed route, its output to the next node. */
  private runStep(session: ServerSession, step: StepRequest, pushed = false): Promise<void> {
    const state = this.stateOf(session);
    const reply = state.reply;
    if (step.commit && step.push) {
      // A pushed output would reach the next node before the reveal: refused, in step order, without using up the step id.
      return this.server.inOrder(session, `refusing step ${step.stepId}`, async () => {
        log("session %s: step %d refused: commit with push", session.label, step.stepId);
        await reply(encodeControl(Kind.Error, { code: "BAD_STEP", message: `step ${step.stepId}: a committed step cannot be pushed` })).catch((e) =>
          log("session %s: could not refuse step %d: %s", session.label, step.stepId, errorMessage(e)),
        );
      });
    }
    return this.server.step(
      session,
      step,
      async (outcome: StepOutcome) => {
        if (outcome.kind === "duplicate") return;
        state.held = undefined; // another step ran: a held output can no longer be revealed
        if (outcome.kind === "error") {
          await reply(encodeControl(Kind.Error, { code: outcome.code, message: outcome.message })).catch((e) =>
            log("session %s: could not send the error of step %d: %s", session.label, outcome.stepId, errorMessage(e)),
          );
          return;
        }
        // One encoded frame: the result to the client and, when pushing, the next node's step.
        if (step.push && outcome.hidden && state.link.next) void this.push(session, state, step, outcome.frame);
        const { sessionId, start, end } = session.request;
        const receipt = {
          sessionId,
          stepId: outcome.stepId,
          start,
          end,
          inputHash: inputHash({ tokens: step.tokens, hidden: step.hidden?.data }),
          outputHash: sha256(outcome.frame),
        };
        // Folded once per step: a committed step's receipt at the commit (the reveal resends it).
        const head = state.chain.fold(receipt);
        const signature = signedAt(state.chain.count) ? await signHead(this.key, head) : new Uint8Array(64);
        if (step.commit) {
          const committed: StepReceipt = { stepId: outcome.stepId, inputHash: receipt.inputHash, signature, outputHash: receipt.outputHash };
          state.held = { receipt: committed, frame: outcome.frame };
          await reply(encodeCommit(committed)).catch((e) =>
            log("session %s: could not send the commitment of step %d: %s", session.label, outcome.stepId, errorMessage(e)),
          );
          return;
        }
        await reply(encodeResult(outcome.stepId, { inputHash: receipt.inputHash, signature }, outcome.frame)).catch((e) =>
          log("session %s: could not send the result of step %d: %s", session.label, outcome.stepId, errorMessage(e)),
        );
      },
      pushed,
    );
  }

  /**
   * Answers a Reveal in step order: the held output of committed step `stepId` as its ordinary
   * Result (the receipt sent with the commitment), then forgets it; NO_COMMIT when no output of
   * that step is held (never committed, already revealed, or another step ran since).
   */
  private reveal(session: ServerSession, stepId: number): Promise<void> {
    const state = this.stateOf(session);
    return this.server.inOrder(session, `revealing step ${stepId}`, async () => {
      if (!session.open) return;
      const held = state.held;
      if (!held || held.receipt.stepId !== stepId) {
        const why = held ? `the output held is step ${held.receipt.stepId}'s` : "no committed output is held";
        log("session %s: reveal of step %d refused: %s", session.label, stepId, why);
        await state
          .reply(encodeControl(Kind.Error, { code: "NO_COMMIT", message: `cannot reveal step ${stepId}: ${why}` }))
          .catch((e) => log("session %s: could not refuse the reveal of step %d: %s", session.label, stepId, errorMessage(e)));
        return;
      }
      state.held = undefined;
      await state
        .reply(encodeResult(stepId, held.receipt, held.frame))
        .catch((e) => log("session %s: could not send the revealed result of step %d: %s", session.label, stepId, errorMessage(e)));
    });
  }

  /** The state registered when the session was opened on its stream. */
  private stateOf(session: ServerSession): SessionState {
    const state = this.states.get(session);
    if (!state) throw new Error(`session ${session.label} has no stream state`);
    return state;
  }

  private async push(session: ServerSession, state: SessionState, step: StepRequest, frame: Uint8Array): Promise<void> {
    const next = state.link.next;
    if (!next) return;
    try {
      state.pushTo ??= this.openPushStream(next.peerId, next.addrs);
      const to = await state.pushTo;
      await to.send(encodePush(next.sessionId, encodeStep({ ...step, tokens: undefined, hidden: undefined, frame })));
    } catch (e) {
      this.closePushStream(session, state, "its push failed"); // reopened on the next push; the client relays this step after its grace period
      log("session %s: push of step %d to %s failed: %s", session.label, step.stepId, next.peerId, errorMessage(e));
    }
  }

  /**
   * A push stream to the next node. Its addresses come from what the node knows of that peer
   * (identify's signed peer records, the DHT's peer routing), never from the client's link: a
   * node does not store or dial addresses a stranger handed it for another peer.
   */
  private async openPushStream(peerId: string, addrs: string[]): Promise<PushStream> {
    const id = peerIdFromString(peerId);
    if (addrs.length) log.trace("not using the %d address(es) the client gave for %s: the node finds the peer itself", addrs.length, peerId);
    const stream = await this.host.dialProtocol(id, PUSH_PROTOCOL, { signal: AbortSignal.timeout(5000) });
    const lp = framedStream(stream);
    return {
      send: async (bytes) => {
        await lp.write(bytes);
      },
      close: () => void stream.close().catch((e: unknown) => stream.abort(e instanceof Error ? e : new Error(String(e)))),
    };
  }

  /** Closes a session's push stream, if it has one (each open stream counts against libp2p's per-protocol limit). */
  private closePushStream(session: ServerSession, state: SessionState, why: string): void {
    const pending = state.pushTo;
    state.pushTo = undefined;
    if (!pending) return;
    pending.then(
      (to) => {
        log.trace("session %s: closing its push stream (%s)", session.label, why);
        to.close();
      },
      (e: unknown) => log.trace("session %s: its push stream never opened: %s", session.label, errorMessage(e)),
    );
  }

  /** Steps pushed by previous nodes; only the peer the client linked as `prev` may push into a session. */
  private async acceptPushes(stream: Stream, from: string): Promise<void> {
    const lp = framedStream(stream, { budget: this.budgetOf(from, +1) });
    try {
      for (;;) {
        const bytes = await readFrame(this.host, lp, "push", from);
        if (!bytes) return;
        if (bytes instanceof ProtocolError) {
          this.stats.pushesIgnored++; // the client relays the step after its grace
          continue;
        }
        const message = decodeMessage(bytes, this.server.maxElements);
        if (message.kind !== Kind.Push) throw new ProtocolError("BAD_CODEC", `kind ${message.kind} on the push protocol`);
        const session = this.server.session(message.sessionId);
        const state = session && this.states.get(session);
        // Unknown or unlinked sessions are ignored: the client relays the step itself. So is a
        // committed step: only the client commits, and never with a push.
        const refusal = !state
          ? "no such session"
          : state.link.prev !== from
            ? "not the linked previous hop"
            : message.step.commit
              ? "a committed step"
              : !this.server.acceptsPush(session!)
                ? "too many pushed steps queued on it (the client relays them)"
                : undefined;
        if (!session || refusal) {
          this.stats.pushesIgnored++;
          log("ignoring a push from %s into session %s: %s", from, message.sessionId.slice(0, 8), refusal ?? "no such session");
          continue;
        }
        void this.runStep(session, message.step, true);
      }
    } catch (e) {
      // Garbage from a pushing peer: it gets no answer, and only its stream closes.
      log("closing the push stream from %s: %s", from, errorMessage(e));
    } finally {
      this.budgetOf(from, -1);
      await stream.close().catch((e) => stream.abort(e instanceof Error ? e : new Error(String(e))));
    }
  }
}

/**
 * The next message of a framed stream; a ProtocolError for a message the node had no memory for
 * (BUSY: skipped, the stream goes on); undefined once the stream ended (closed, reset, or a frame
 * over the limit or too slow).
 */
async function readFrame(
  host: SwarmHost,
  lp: ReturnType<typeof framedStream>,
  protocol: string,
  from: string,
): Promise<Uint8Array | ProtocolError | undefined> {
  try {
    return (await lp.read()).subarray();
  } catch (e) {
    if (e instanceof ProtocolError && e.code === "BUSY") {
      log("%s stream from %s: %s", protocol, from, e.message);
      return e;
    }
    if (isFramingViolation(e)) misbehaved(host, from, `${protocol} stream: ${e.message}`);
    log.trace("%s stream from %s ended: %s", protocol, from, errorMessage(e));
    return undefined;
  }
}
