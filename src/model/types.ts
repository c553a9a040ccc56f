// Shared vocabulary of the model layer: configs, tensors as stored in checkpoints, errors.

/** Element types a checkpoint may store. Q8_0/Q4_0 are GGUF's 32-element block formats. */
export type DType = "F32" | "F16" | "BF16" | "Q8_0" | "Q4_0" | "I32" | "I64" | "U8";

export type Architecture = "llama" | "gpt2";

export interface RopeScaling {
  /** Llama-3 frequency-dependent scaling ("llama3" in HF configs). */
  type: "llama3";
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

/** Everything the engine needs to know about a decoder, independent of the checkpoint format. */
export interface ModelConfig {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  normEps: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** llama family only: biases on q/k/v projections (Qwen2). */
  qkvBias: boolean;
  /** llama family only. */
  ropeTheta: number;
  ropeScaling?: RopeScaling;
  /** Per-frequency divisors of the rotary base frequencies (GGUF's rope_freqs tensor). */
  ropeFreqFactors?: number[];
  /**
   * true: rotary pairs are adjacent elements (2i, 2i+1), as GGUF llama checkpoints store q/k.
   * false: pairs are (i, i + d/2), the Hugging Face "rotate_half" layout.
   */
  ropeInterleaved: boolean;
  bosTokenId?: number;
  eosTokenIds: number[];
}

/** A tensor as a checkpoint stores it. Shapes are row-major (outermost first), as in PyTorch. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte offset of the tensor's data in `file`. */
  offset: number;
  byteLength: number;
  file: string;
}

export interface RawTensor {
  info: TensorInfo;
  /** The stored bytes, exactly as in the file. */
  bytes: Uint8Array;
}

/** Error in a checkpoint file: names the file, the tensor (if any) and what was expected. */
export class CheckpointError extends Error {
  override name = "CheckpointError";
  constructor(
    message: string,
    readonly file?: string,
    readonly tensor?: string,
  ) {
    super([file ? `${file}` : undefined, tensor ? `tensor '${tensor}'` : undefined, message].filter(Boolean).join(": "));
  }
}
