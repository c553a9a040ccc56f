/** A peer sent something that breaks the protocol; `code` says what, for callers to branch on. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
  constructor(
    readonly code: ProtocolErrorCode,
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}

/** BUSY: no memory for a message now (src/swarm/framing.ts), retry on a new stream; TIMEOUT: a message not received within its deadline. */
export type ProtocolErrorCode =
  | "BAD_MAGIC"
  | "BAD_VERSION"
  | "BAD_DTYPE"
  | "BAD_CODEC"
  | "BAD_SHAPE"
  | "BAD_LENGTH"
  | "BAD_CODEBOOK"
  | "TOO_LARGE"
  | "NON_FINITE_TENSOR"
  | "BUSY"
  | "TIMEOUT";
