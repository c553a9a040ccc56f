// Length-prefixed messages on a libp2p stream, read with bounds a hostile peer cannot lift. The
// wire format is the one @libp2p/utils' lpStream speaks (an unsigned LEB128 varint length, then
// that many bytes), so peers on either implementation interoperate; the reader is our own because
// lpStream's never fails a length prefix that does not end (0xff bytes for ever: one core busy,
// memory growing with every byte) and buffers whatever a peer announces for as long as it likes.
//
// Reading, per message:
// - the varint is parsed byte by byte and refused (BAD_LENGTH) at the first byte beyond the
//   most the cap needs (a continuation bit on the 4th byte, for 128 MiB), and refused (TOO_LARGE)
//   once complete if its value exceeds the cap: in both cases before any payload is taken;
// - the declared length is reserved from a ByteBudget shared by every stream of the process (the
//   node) before its buffer is allocated; a budget that cannot cover it refuses the message
//   (BUSY) rather than queueing it, since a queue would let stalled peers hold honest ones back
//   for ever: its payload is skipped without being kept (within the message's deadline), then
//   the read rejects with BUSY and the stream carries on, so the protocol can answer with a
//   typed error and the peer retry once memory is free;
// - from its first byte a message has a deadline, `timeoutBaseMs + length / minBytesPerSecond`
//   (10 s + 1 s per MiB by default); a message not complete by then fails (TIMEOUT);
// - the reservation is released when the message is delivered to read()'s caller, or when the
//   stream fails, ends or is aborted; then no buffer is referenced any more.
// Every such failure aborts the stream (its framing cannot be trusted afterwards), and every later
// read() rejects with the same error. A clean end of the stream between messages rejects read()
// with EndOfStreamError; an end inside a message is a BAD_LENGTH ProtocolError.
//
// Flow control: bytes are taken from the stream only while a read() is pending. Bytes that arrive
// when none is pause the stream (yamux then stops granting its window, so a peer can send at most
// one window, 16 MiB, ahead); a peer that sends more than `maxPendingBytes` ahead regardless
// (possible only with a muxer that ignores pausing) has its stream aborted (TOO_LARGE).
import type { AbortOptions, Stream, StreamCloseEvent, StreamMessageEvent } from "@libp2p/interface";
import { ProtocolError } from "../wire/errors.js";

/** Bytes that several streams reserve from, so that together they never buffer more than `limit`. */
export class ByteBudget {
  private usedBytes = 0;

  constructor(
    /** May be changed at any time; a lower limit only stops new reservations. */
    public limit: number,
  ) {
    if (!(Number.isSafeInteger(limit) && limit >= 0)) throw new RangeError(`a byte budget is a non-negative integer, got ${limit}`);
  }

  get used(): number {
    return this.usedBytes;
  }

  get available(): number {
    return Math.max(0, this.limit - this.usedBytes);
  }

  /** Reserves `bytes` if they fit; false (and nothing reserved) if they do not. */
  tryReserve(bytes: number): boolean {
    if (bytes > this.available) return false;
    this.usedBytes += bytes;
    return true;
  }

  /** Called after every release (a node process counts released buffer memory to know when to collect it). */
  onRelease?: (bytes: number) => void;

  release(bytes: number): void {
    if (bytes > this.usedBytes) throw new RangeError(`releasing ${bytes} bytes of a budget with ${this.usedBytes} reserved`);
    this.usedBytes -= bytes;
    this.onRelease?.(bytes);
  }
}

/**
 * A peer's share of a shared budget: a reservation must fit both this limit and the shared
 * budget, so one peer's streams cannot take all of a node's buffer memory.
 */
export class ShareOfBudget extends ByteBudget {
  constructor(
    limit: number,
    private readonly shared: ByteBudget,
  ) {
    super(limit);
  }

  override get available(): number {
    return Math.min(super.available, this.shared.available);
  }

  override tryReserve(bytes: number): boolean {
    if (bytes > this.available || !this.shared.tryReserve(bytes)) return false;
    super.tryReserve(bytes);
    return true;
  }

  override release(bytes: number): void {
    super.release(bytes);
    this.shared.release(bytes);
  }
}

export interface FramingOptions {
  /** Largest message accepted; a longer declared length fails the stream (TOO_LARGE). */
  maxBytes: number;
  /** Where incoming messages reserve their declared length before they are buffered. */
  budget?: ByteBudget;
  /** A message's deadline from its first byte: `timeoutBaseMs + length / minBytesPerSecond` seconds. */
  timeoutBaseMs?: number;
  minBytesPerSecond?: number;
  /** Most bytes taken from the stream ahead of the reader (not yet parsed) before the stream is aborted. */
  maxPendingBytes?: number;
}

/**
 * The process-wide defaults (a node is one process), for every stream not given its own: e.g.
 * `framingDefaults.budget.limit = 1 << 30` or `framingDefaults.minBytesPerSecond = 4 << 20`.
 */
export const framingDefaults: Required<Omit<FramingOptions, "maxBytes">> = {
  budget: new ByteBudget(512 << 20),
  timeoutBaseMs: 10_000,
  minBytesPerSecond: 1 << 20,
  maxPendingBytes: 32 << 20,
};

export interface Framed {
  /**
   * The next message. Only one read may be pending at a time. A read aborted through its signal
   * before any byte of the next message arrived rejects alone; after, it fails the stream too.
   */
  read(opts?: AbortOptions): Promise<Uint8Array>;
  /** Writes one message (length prefix and bytes); resolves once the stream has passed all it holds to the muxer. */
  write(bytes: Uint8Array, opts?: AbortOptions): Promise<void>;
}

/** The codes a peer earns by breaking the framing itself (as opposed to the node having no memory, BUSY). */
export const FRAMING_VIOLATIONS: ReadonlySet<string> = new Set(["BAD_LENGTH", "TOO_LARGE", "TIMEOUT"]);

export function isFramingViolation(e: unknown): e is ProtocolError {
  return e instanceof ProtocolError && FRAMING_VIOLATIONS.has(e.code);
}

/** The stream ended cleanly between two messages. */
export class EndOfStreamError extends Error {
  override name = "EndOfStreamError";
}

/** Bytes of the unsigned varint that encodes `n`. */
export function varintLength(n: number): number {
  let bytes = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    bytes++;
  }
  return bytes;
}

/** `n` as an unsigned LEB128 varint, followed by room for `extra` bytes. */
function encodeVarint(n: number, extra = 0): Uint8Array {
  const out = new Uint8Array(varintLength(n) + extra);
  let i = 0;
  while (n >= 128) {
    out[i++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  out[i] = n;
  return out;
}

/** Messages up to this size are written as one buffer with their prefix; longer ones are not copied. */
const COPY_BELOW = 64 << 10;

interface Waiter {
  resolve(message: Uint8Array): void;
  reject(error: Error): void;
}

/** Reads and writes length-prefixed messages on `stream` (see the top of this file for the bounds). */
export function framed(stream: Stream, opts: FramingOptions): Framed {
  const { maxBytes } = opts;
  if (!(Number.isSafeInteger(maxBytes) && maxBytes >= 0 && maxBytes < 2 ** 48))
    throw new RangeError(`maxBytes must be an integer in [0, 2^48), got ${maxBytes}`);
  const budget = opts.budget ?? framingDefaults.budget;
  const baseMs = opts.timeoutBaseMs ?? framingDefaults.timeoutBaseMs;
  const rate = opts.minBytesPerSecond ?? framingDefaults.minBytesPerSecond;
  const maxPending = opts.maxPendingBytes ?? framingDefaults.maxPendingBytes;
  const maxPrefix = varintLength(maxBytes);
  // While paused (no read pending) the stream itself buffers what arrives: up to one yamux window.
  if (stream.maxReadBufferLength < maxPending) stream.maxReadBufferLength = maxPending;

  // Bytes taken from the stream, not parsed yet: pending[0] from offset `head` on.
  let pending: Uint8Array[] = [];
  let head = 0;
  let pendingBytes = 0;
  // The message being parsed: its prefix bytes so far, the length they give, and once the prefix
  // is complete its reserved buffer.
  let prefixBytes = 0;
  let length = 0;
  let buffer: Uint8Array | undefined;
  /** The prefix is complete: payload bytes follow (into `buffer`, or skipped when `refused`). */
  let inPayload = false;
  /** The budget could not cover the message: its payload is skipped, and the read then rejects with this (the stream goes on). */
  let refused: ProtocolError | undefined;
  let filled = 0;
  let reserved = 0;
  let startedAt = 0;
  let timer: NodeJS.Timeout | undefined;
  let timerDeadline = 0;

  let waiter: Waiter | undefined;
  let failure: Error | undefined;
  let ended = false;
  let paused = false;

  const take = (n: number) => {
    head += n;
    pendingBytes -= n;
    if (head === pending[0]!.byteLength) {
      pending.shift();
      head = 0;
    }
  };

  /** Drops the message in progress and its reservation. */
  const reset = () => {
    if (reserved) budget.release(reserved);
    reserved = 0;
    buffer = undefined;
    inPayload = false;
    refused = undefined;
    prefixBytes = length = filled = 0;
    if (timer) clearTimeout(timer);
    timer = undefined;
  };

  /**
   * Parses pending bytes; the next message once complete, or the refusal of one the budget could
   * not cover once its payload was skipped. Throws a ProtocolError on a bad prefix.
   */
  const parse = (): Uint8Array | ProtocolError | undefined => {
    while (pendingBytes > 0 || (inPayload && filled === length)) {
      const chunk = pending[0];
      if (!inPayload && chunk) {
        const byte = chunk[head]!;
        take(1);
        if (prefixBytes === 0) startedAt = performance.now();
        length += (byte & 0x7f) * 2 ** (7 * prefixBytes);
        prefixBytes++;
        if (byte & 0x80) {
          // No length up to the cap needs more than maxPrefix bytes.
          if (prefixBytes >= maxPrefix)
            throw new ProtocolError("BAD_LENGTH", `length prefix longer than the ${maxPrefix} bytes a ${maxBytes}-byte limit needs`);
          continue;
        }
        if (length > maxBytes) throw new ProtocolError("TOO_LARGE", `message of ${length} bytes, over the limit of ${maxBytes}`);
        inPayload = true;
        if (budget.tryReserve(length)) {
          reserved = length;
          buffer = new Uint8Array(length);
        } else {
          refused = new ProtocolError("BUSY", `no memory for a message of ${length} bytes now (${budget.available} of ${budget.limit} bytes free)`);
        }
      } else if (chunk && filled < length) {
        const n = Math.min(chunk.byteLength - head, length - filled);
        buffer?.set(chunk.subarray(head, head + n), filled);
        filled += n;
        take(n);
      }
      if (inPayload && filled === length) {
        const message = refused ?? buffer!;
        reset();
        return message;
      }
    }
    return undefined;
  };

  const onMessage = (evt: StreamMessageEvent) => {
    if (failure) return;
    for (const bytes of evt.data instanceof Uint8Array ? [evt.data] : evt.data) {
      if (bytes.byteLength === 0) continue;
      pending.push(bytes);
      pendingBytes += bytes.byteLength;
    }
    if (waiter) settle();
    else pause();
    if (!failure && pendingBytes > maxPending) fail(new ProtocolError("TOO_LARGE", `peer sent ${pendingBytes} bytes ahead of the reader`), true);
  };
  const onEnd = () => {
    // After an abort or a reset the close event that follows carries the error.
    if (stream.status === "aborted" || stream.status === "reset") return;
    ended = true;
    settle();
  };
  const onClose = (evt: StreamCloseEvent) => {
    if (evt.error) fail(evt.error, false);
    else onEnd();
  };
  stream.addEventListener("message", onMessage);
  stream.addEventListener("end", onEnd);
  stream.addEventListener("close", onClose);

  /** Ends reading for good: everything buffered is dropped, the stream aborted if `abort`. */
  function fail(error: Error, abort: boolean): void {
    if (failure) return;
    failure = error;
    reset();
    pending = [];
    pendingBytes = head = 0;
    stream.removeEventListener("message", onMessage);
    stream.removeEventListener("end", onEnd);
    stream.removeEventListener("close", onClose);
    const w = waiter;
    waiter = undefined;
    w?.reject(error);
    // Not from inside the stream's own event dispatch.
    if (abort) queueMicrotask(() => stream.abort(error));
  }

  /** Answers the pending read if it can be answered, else arms the message's deadline and lets bytes flow. */
  function settle(): void {
    if (!waiter || failure) return;
    let message: Uint8Array | ProtocolError | undefined;
    try {
      message = parse();
    } catch (e) {
      return fail(e instanceof Error ? e : new Error(String(e)), true);
    }
    if (message instanceof ProtocolError) {
      // A refused message was skipped whole: the stream can carry the next one.
      const w = waiter;
      waiter = undefined;
      pause();
      return w.reject(message);
    }
    if (message) {
      const w = waiter;
      waiter = undefined;
      return w.resolve(message);
    }
    if (ended) {
      if (prefixBytes === 0) return fail(new EndOfStreamError("the stream ended"), false);
      return fail(
        new ProtocolError("BAD_LENGTH", inPayload ? `stream ended ${filled} bytes into a ${length}-byte message` : "stream ended inside a length prefix"),
        true,
      );
    }
    if (prefixBytes > 0) arm();
    resume();
  }

  function arm(): void {
    const deadline = startedAt + baseMs + (inPayload ? (length / rate) * 1000 : 0);
    if (timer && deadline === timerDeadline) return;
    if (timer) clearTimeout(timer);
    timerDeadline = deadline;
    timer = setTimeout(
      () => {
        timer = undefined;
        const what = inPayload ? `${filled} of ${length} bytes` : `${prefixBytes} bytes of a length prefix`;
        fail(new ProtocolError("TIMEOUT", `${what} arrived in ${Math.round(performance.now() - startedAt)} ms`), true);
      },
      Math.max(0, deadline - performance.now()),
    );
  }

  function pause(): void {
    if (!paused && stream.readStatus === "readable") {
      paused = true;
      stream.pause();
    }
  }

  function resume(): void {
    if (!paused) return;
    paused = false;
    // Delivers what the stream buffered meanwhile, synchronously, through onMessage.
    if (stream.readStatus === "paused") stream.resume();
  }

  if (stream.status === "aborted" || stream.status === "reset") fail(new Error(`the stream was ${stream.status} before it was read`), false);
  else if (stream.readableEnded) ended = true;

  return {
    read(readOpts?: AbortOptions): Promise<Uint8Array> {
      if (failure) return Promise.reject(failure);
      if (waiter) return Promise.reject(new Error("a read is already pending on this stream"));
      const signal = readOpts?.signal;
      if (signal?.aborted) return Promise.reject(asError(signal.reason));
      return new Promise<Uint8Array>((resolve, reject) => {
        const onAbort = () => {
          const reason = asError(signal!.reason);
          if (prefixBytes > 0) return fail(reason, true); // mid-message: the framing is lost
          waiter = undefined;
          reject(reason);
        };
        signal?.addEventListener("abort", onAbort, { once: true });
        waiter = {
          resolve: (message) => {
            signal?.removeEventListener("abort", onAbort);
            resolve(message);
          },
          reject: (error) => {
            signal?.removeEventListener("abort", onAbort);
            reject(error);
          },
        };
        settle();
      });
    },

    async write(bytes: Uint8Array, writeOpts?: AbortOptions): Promise<void> {
      writeOpts?.signal?.throwIfAborted();
      let ready: boolean;
      if (bytes.byteLength < COPY_BELOW) {
        const out = encodeVarint(bytes.byteLength, bytes.byteLength);
        out.set(bytes, out.byteLength - bytes.byteLength);
        ready = stream.send(out);
      } else {
        // Both land in the stream's write buffer back to back: no other write can come between.
        const prefixed = stream.send(encodeVarint(bytes.byteLength));
        ready = stream.send(bytes) && prefixed;
      }
      if (!ready) await drained(stream, writeOpts?.signal);
    },
  };
}

/**
 * Resolves once the stream has handed its whole write buffer to the muxer. (Not stream.onDrain():
 * in @libp2p/utils 7.4.1 its promise is never renewed, so after the first drain it resolves at once
 * and a writer to a slow reader buffers without bound.)
 */
async function drained(stream: Stream, signal?: AbortSignal): Promise<void> {
  while (stream.writableNeedsDrain) {
    await new Promise<void>((resolve, reject) => {
      const done = (error?: Error) => {
        stream.removeEventListener("drain", onDrain);
        stream.removeEventListener("close", onClose);
        signal?.removeEventListener("abort", onAbort);
        if (error) reject(error);
        else resolve();
      };
      const onDrain = () => done();
      const onClose = (evt: StreamCloseEvent) => done(evt.error ?? new Error("the stream closed before its data was sent"));
      const onAbort = () => done(asError(signal!.reason));
      if (signal?.aborted) return onAbort();
      stream.addEventListener("drain", onDrain);
      stream.addEventListener("close", onClose);
      signal?.addEventListener("abort", onAbort);
    });
    // The stream resumes sending in a microtask queued before this continuation: writableNeedsDrain
    // now says whether the muxer took everything.
  }
}

function asError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason ?? "aborted"));
}

/**
 * Watches the varint-prefixed messages of a stream that another reader consumes (the kad-dht's,
 * through @libp2p/utils' lpStream, whose endless-prefix loop is described at the top of this file)
 * and aborts the stream, before that reader sees the bytes, at the first prefix longer than
 * `maxBytes` needs or declaring more than `maxBytes`. Must be called before the reader listens (a
 * stream middleware). Payload bytes are skipped over, never copied.
 */
export function guardFrames(stream: Stream, maxBytes: number, onRefused?: (error: ProtocolError) => void): void {
  const maxPrefix = varintLength(maxBytes);
  let prefixBytes = 0;
  let length = 0;
  let remaining = 0;
  const onMessage = (evt: StreamMessageEvent) => {
    for (const bytes of evt.data instanceof Uint8Array ? [evt.data] : evt.data) {
      let i = 0;
      while (i < bytes.byteLength) {
        if (remaining > 0) {
          const n = Math.min(remaining, bytes.byteLength - i);
          remaining -= n;
          i += n;
          continue;
        }
        const byte = bytes[i++]!;
        length += (byte & 0x7f) * 2 ** (7 * prefixBytes);
        prefixBytes++;
        let error: ProtocolError | undefined;
        if (byte & 0x80) {
          if (prefixBytes >= maxPrefix)
            error = new ProtocolError("BAD_LENGTH", `length prefix longer than the ${maxPrefix} bytes a ${maxBytes}-byte limit needs`);
          else continue;
        } else if (length > maxBytes) error = new ProtocolError("TOO_LARGE", `message of ${length} bytes, over the limit of ${maxBytes}`);
        if (error) {
          evt.stopImmediatePropagation();
          stream.removeEventListener("message", onMessage);
          onRefused?.(error);
          stream.abort(error);
          return;
        }
        remaining = length;
        prefixBytes = length = 0;
      }
    }
  };
  stream.addEventListener("message", onMessage);
}
