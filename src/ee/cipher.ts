// The client side of EE: plaintext ids ↔ cipher ids, and a session that talks to an encrypted
// model in cipher ids while its caller sees plaintext ids and plaintext-ordered logits.
import type { LogitsSession } from "../engine/interface.js";
import { derivePermutation, EeKeyError, type EeKey, type Permutation, vocabHash } from "./key.js";

export class VocabCipher {
  /** π: plaintext id → cipher id. */
  private readonly forward: Uint32Array;
  /** π⁻¹: cipher id → plaintext id; also the gather map of the encrypted embedding/head rows. */
  private readonly backward: Uint32Array;

  constructor(vocab: Permutation) {
    this.forward = vocab.inverse;
    this.backward = vocab.map;
  }

  /**
   * The cipher of a key. Pass the tokenizer the client will use to check it is the one the key
   * was made for (same vocabulary hash).
   */
  static fromKey(key: EeKey, tokenizer?: { vocabSize: number; tokenText(id: number): string | undefined }): VocabCipher {
    if (tokenizer && vocabHash(tokenizer) !== key.vocabHash) {
      throw new EeKeyError(`the tokenizer's vocabulary hash ${vocabHash(tokenizer)} differs from the key's vocabHash ${key.vocabHash}`);
    }
    return new VocabCipher(derivePermutation(key.secret, key.baseModelHash, "vocab", key.vocabSize));
  }

  get vocabSize(): number {
    return this.forward.length;
  }

  encrypt(ids: readonly number[]): number[] {
    return ids.map((id) => this.forward[this.check(id, "plaintext")]!);
  }

  decrypt(ids: readonly number[]): number[] {
    return ids.map((id) => this.backward[this.check(id, "cipher")]!);
  }

  /** Cipher-ordered logits [rows × V] → plaintext order: plain[p] = cipher[π(p)]. */
  decryptLogits(cipherLogits: Float32Array, rows: number): Float32Array {
    const V = this.vocabSize;
    if (!Number.isInteger(rows) || rows < 0 || cipherLogits.length !== rows * V) {
      throw new RangeError(`expected ${rows} rows of ${V} logits (${rows * V} values), got ${cipherLogits.length}`);
    }
    const out = new Float32Array(cipherLogits.length);
    for (let r = 0; r < rows; r++) {
      const base = r * V;
      for (let p = 0; p < V; p++) out[base + p] = cipherLogits[base + this.forward[p]!]!;
    }
    return out;
  }

  private check(id: number, what: string): number {
    if (!Number.isInteger(id) || id < 0 || id >= this.forward.length) {
      throw new RangeError(`${what} id ${id} is outside the vocabulary [0, ${this.forward.length})`);
    }
    return id;
  }
}

/**
 * A LogitsSession over an inner session that runs an encrypted model: tokens go in as cipher ids,
 * logits come back in plaintext order, so sampling, stop strings and detokenization work unchanged.
 */
export class EncryptedSession implements LogitsSession {
  constructor(
    private readonly inner: LogitsSession,
    private readonly cipher: VocabCipher,
  ) {}

  get length(): number {
    return this.inner.length;
  }

  get maxLength(): number {
    return this.inner.maxLength;
  }

  async append(tokens: readonly number[], opts?: { allLogits?: boolean }): Promise<Float32Array> {
    const logits = await this.inner.append(this.cipher.encrypt(tokens), opts);
    return this.cipher.decryptLogits(logits, logits.length / this.cipher.vocabSize);
  }

  truncate(position: number): void {
    this.inner.truncate(position);
  }

  close(): void {
    this.inner.close();
  }

  get settle(): LogitsSession["settle"] {
    const inner = this.inner;
    return inner.settle && ((opts) => inner.settle!(opts));
  }
}
