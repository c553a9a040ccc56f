// The public API of the `tessera-swarm` package (what `import … from "tessera-swarm"` gives).
// One section per area; each area's README.md describes its interface. The EE attack code
// (src/ee/attacks/) is research code and deliberately not exported.

// model: checkpoints, configs, tokenizers
export { type Checkpoint, type CheckpointFormat, openCheckpoint } from "./model/checkpoint.js";
export { configFromGguf, configFromHf, expectedShapes, spanTensorNames } from "./model/config.js";
export { convertToGguf } from "./model/convert.js";
export { checkpointHash } from "./model/hash.js";
export { SHIPPED_MODEL } from "./model/shipped.js";
export { type ChatMessage, loadTokenizer, StreamDecoder, Tokenizer } from "./model/tokenizer.js";
export { type Architecture, CheckpointError, type DType, type ModelConfig, type RawTensor, type RopeScaling, type TensorInfo } from "./model/types.js";

// engine: spans on ONNX Runtime, generation, sampling
export * from "./engine/interface.js";
export * from "./engine/sampling.js";
export { type EvalResult, evaluateTokens } from "./engine/evaluate.js";
export { type FinishReason, generate, type GenerateOptions, type GenerationResult } from "./engine/generate.js";
export { LocalPipeline, type PipelineOptions } from "./engine/pipeline.js";
export { type KvSession, servedCheckpoint, SpanRunner } from "./engine/runtime.js";

// wire: what travels between peers
export { BLOCK_SIZE, type Blockwise8, DYNAMIC_CODE, dequantizeBlockwise8, quantizeBlockwise8 } from "./wire/blockwise8.js";
export { ProtocolError, type ProtocolErrorCode } from "./wire/errors.js";
export { type Codec, CODECS, DEFAULT_MAX_ELEMENTS, type DecodedTensor, decodeTensor, encodeTensor, frameBytes } from "./wire/tensor-frame.js";

// swarm: nodes, clients, placement and routing
export { blocksThatFit } from "./swarm/capacity.js";
export { SwarmClient } from "./swarm/client.js";
export { type DashboardInput, formatRoute, renderSwarm } from "./swarm/dashboard.js";
export { Libp2pSpanProvider, type ProviderOptions, SpanFailure, spanThroughput } from "./swarm/libp2p-provider.js";
export { defaultModelId, modelIdFor } from "./swarm/model-id.js";
export { CLIENT_FILES, type ModelInfo, openModelInfo } from "./swarm/model-info.js";
export { SpanNode, type SpanNodeOptions } from "./swarm/node.js";
export { BALANCE_QUALITY, bestStart, blockThroughputs, chooseBlocks, rebalance } from "./swarm/placement.js";
export { type Hop, MissingBlocksError, type NodeState, type SpanRecord } from "./swarm/records.js";
export {
  type BlockRange,
  type CaughtEvent,
  type Commitment,
  LIE_FACTOR,
  pushGrace,
  type RemoteSpan,
  RouteSession,
  type RouteSessionOptions,
  type SpanProvider,
  type StepOptions,
  type TrialAnswer,
  TRIAL_RATE,
  type TrustHooks,
  type VerificationReport,
} from "./swarm/route-session.js";
export { type Finding, SpanCheck, type VerifyPolicy, WINDOW_TOKENS } from "./swarm/span-check.js";
export { ledgerTrust } from "./swarm/trust.js";
export {
  logitsCodec,
  type OpenResult,
  type ServerSession,
  type ServerStep,
  type SessionOwner,
  type SessionRequest,
  SpanServer,
  type SpanServerOptions,
  type StepOutcome,
} from "./swarm/span-server.js";
export { type SignedRecord, signRecord, verifyRecord } from "./swarm/signed-record.js";
export { ALLOC_PENALTY_S, CHAIN_MIN_GAIN_S, chainingGain, HOP_OVERHEAD_S, maxThroughputRoute, minLatencyRoute, type RouteRequest } from "./swarm/routing.js";

export { type Receipt, type ReceiptFields, SIGN_EVERY, verifyReceipts } from "./swarm/receipt.js";

// verify: checking nodes' work
export {
  buildManifest,
  checkedModel,
  checkSpan,
  defaultManifestPath,
  ManifestError,
  type ModelManifest,
  readManifest,
  writeManifest,
} from "./verify/manifest.js";
export { agree, consensusVerdict, DEFAULT_TOLERANCE, firstMismatch, rowErrors, type Tolerance } from "./verify/compare.js";
export { defaultLedgerPath, type KnownAnswer, type LedgerEntry, LedgerError, type LedgerEvent, ReputationLedger } from "./verify/ledger.js";
export { AVOID_BELOW, cooldownAfter, nextReputation, normalisedReputation, type Outcome, routingPenaltySeconds, tier, type Tier } from "./verify/reputation.js";

// ee: equivariant encryption (keys, encrypting a checkpoint, the client-side cipher, manifests)
export { EncryptedSession, VocabCipher } from "./ee/cipher.js";
export { encryptModel, type EncryptModelOptions, type EncryptModelResult } from "./ee/encrypt-model.js";
export {
  deploymentId,
  EE_LEVELS,
  type EeKey,
  EeKeyError,
  type EeLevel,
  newKey,
  readKeyFile,
  type RopeLayout,
  ropeLayoutOf,
  vocabHash,
  writeKeyFile,
} from "./ee/key.js";
export { type EeManifest, MANIFEST_FILE_NAME, manifestFileFor, readManifestFor } from "./ee/manifest.js";

// logging
export { errorMessage, LOG_LEVELS, type Logger, type LogLevel, logger, setLogLevel } from "./log.js";
