import { EncryptedSession, VocabCipher } from "../ee/cipher.js";
import { deploymentId, EeKeyError, readKeyFile, vocabHash } from "../ee/key.js";
import { manifestFileFor, readManifestFor } from "../ee/manifest.js";
import { generate } from "../engine/generate.js";
import type { LogitsSession } from "../engine/interface.js";
import { openCheckpoint } from "../model/checkpoint.js";
import { openModelInfo } from "../swarm/model-info.js";
import { loadTokenizer, type Tokenizer } from "../model/tokenizer.js";
import { SwarmClient } from "../swarm/client.js";
import { formatRoute } from "../swarm/dashboard.js";
import { MissingBlocksError } from "../swarm/records.js";
import type { RouteSession, VerificationReport } from "../swarm/route-session.js";
import { ledgerTrust } from "../swarm/trust.js";
import { ReputationLedger } from "../verify/ledger.js";
import type { Codec } from "../wire/tensor-frame.js";
import { type EngineFlags, loadLocalModel, loadPipeline } from "./engine-options.js";
import { readManifest } from "../verify/manifest.js";

interface GenerateFlags extends EngineFlags {
  prompt: string;
  chat?: boolean;
  system?: string;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  logitBias?: Map<number, number>;
  seed: number;
  stop: string[];
  ignoreEos?: boolean;
  json?: boolean;
  swarm: string[];
  codec: Codec;
  modelId?: string;
  manifest?: string;
  chain: "auto" | "on" | "off";
  routing: "min-latency" | "max-throughput";
  /** EE key file: the nodes (or --encrypted-model) run the checkpoint encrypted with it. */
  key?: string;
  encryptedModel?: string;
  verify: number | "consensus";
  k: number;
  ledger?: string;
}

export async function generateCommand(flags: GenerateFlags): Promise<void> {
  const { tokenizer, session, done, report } = flags.swarm.length ? await swarmSession(flags) : { ...(await localSession(flags)), report: undefined };
  const promptTokens = promptTokensFor(tokenizer, flags);
  const result = await generate(session, tokenizer, promptTokens, {
    maxTokens: flags.maxTokens,
    sampling: {
      temperature: flags.temperature,
      topK: flags.topK,
      topP: flags.topP,
      minP: flags.minP,
      repetitionPenalty: flags.repetitionPenalty,
      logitBias: flags.logitBias,
    },
    seed: flags.seed,
    stop: flags.stop,
    stopAtEos: !flags.ignoreEos,
    onText: flags.json ? undefined : (piece) => process.stdout.write(piece),
  });
  const verification = report?.();
  session.close();
  await done();
  if (flags.json) {
    console.log(
      JSON.stringify(
        {
          text: result.text,
          tokens: result.tokens,
          promptTokens: result.promptTokens,
          finishReason: result.finishReason,
          timings: result.timings,
          ...(verification ? { verification } : {}),
        },
        null,
        2,
      ),
    );
  } else {
    if (verification) console.error(`\n${formatVerification(verification)}`);
    process.stdout.write("\n");
    const t = result.timings;
    console.error(
      `[${result.promptTokens.length} prompt tokens at ${t.prefillTokensPerSecond.toFixed(1)} tok/s, ` +
        `${result.tokens.length} generated at ${t.decodeTokensPerSecond.toFixed(1)} tok/s; ${result.finishReason}]`,
    );
  }
}

function promptTokensFor(tokenizer: Tokenizer, flags: GenerateFlags): number[] {
  const text = flags.chat
    ? tokenizer.applyChatTemplate([...(flags.system ? [{ role: "system", content: flags.system }] : []), { role: "user", content: flags.prompt }], {
        addGenerationPrompt: true,
      })
    : flags.prompt;
  return tokenizer.encode(text, { addSpecial: !flags.chat });
}

async function localSession(flags: GenerateFlags) {
  if (flags.key) return encryptedLocalSession(flags, flags.key);
  if (flags.encryptedModel) throw new EeKeyError("--encrypted-model needs --key FILE, the key it was encrypted with");
  const { tokenizer, pipeline } = await loadLocalModel(flags, { showProgress: !flags.json });
  const session: LogitsSession = pipeline.openSession();
  return { tokenizer, session, done: () => pipeline.release() };
}

/**
 * --key without --swarm: the encrypted checkpoint runs on this machine (a check of a deployment
 * before serving it); the plaintext --model gives the tokenizer.
 */
async function encryptedLocalSession(flags: GenerateFlags, keyFile: string) {
  const encrypted = flags.encryptedModel;
  if (!encrypted) {
    throw new EeKeyError("--key runs through nodes serving the encrypted checkpoint (--swarm ADDR) or on this machine with --encrypted-model PATH");
  }
  const plain = await openCheckpoint(flags.model);
  const tokenizer = await loadTokenizer(plain);
  const { key, cipher } = await clientCipher(keyFile, flags.model, plain.config.vocabSize, tokenizer);
  const manifest = await readManifestFor(encrypted);
  if (!manifest) throw new EeKeyError(`${encrypted}: not an encrypted checkpoint (no ${manifestFileFor(encrypted)}; see tessera encrypt-model)`);
  if (manifest.deploymentId !== deploymentId(key)) {
    throw new EeKeyError(
      `${keyFile} is not the key ${encrypted} was encrypted with (deployment ${short(deploymentId(key))}, the manifest says ${short(manifest.deploymentId)})`,
    );
  }
  const pipeline = await loadPipeline(await openCheckpoint(encrypted), flags, { showProgress: !flags.json });
  const session: LogitsSession = new EncryptedSession(pipeline.openSession(), cipher);
  return { tokenizer, session, done: () => pipeline.release() };
}

/**
 * The client keeps the tokenizer and sampling; the nodes at --swarm run every block. With --key
 * the nodes serve the encrypted checkpoint and only ever see cipher ids: the session encrypts the
 * ids it sends and puts the logits back in plaintext order, so EOS, stop strings and sampling
 * stay on this side, in plaintext.
 */
async function swarmSession(flags: GenerateFlags) {
  if (flags.encryptedModel) throw new EeKeyError("--encrypted-model runs on this machine; with --swarm the nodes hold the encrypted checkpoint");
  // Config and tokenizer only: a folder of config.json and tokenizer files (no weights) will do.
  const info = await openModelInfo(flags.model);
  const tokenizer = await info.tokenizer();
  const ee = flags.key ? await clientCipher(flags.key, flags.model, info.config.vocabSize, tokenizer) : undefined;
  if (info.manifest && !ee) {
    throw new EeKeyError(
      `${flags.model} is an encrypted deployment (${manifestFileFor(flags.model)}): its nodes take cipher ids; pass --key, the key it was encrypted with`,
    );
  }
  if (info.manifest && ee && info.manifest.deploymentId !== deploymentId(ee.key)) {
    throw new EeKeyError(
      `${flags.key} is not the key of the deployment ${manifestFileFor(flags.model)} describes (deployment ${short(deploymentId(ee.key))}, the manifest says ${short(info.manifest.deploymentId)})`,
    );
  }
  const modelId = flags.modelId ?? (ee ? deploymentId(ee.key) : info.modelId);
  const manifestId = flags.manifest ? (await readManifest(flags.manifest)).id : undefined;
  const client = await SwarmClient.connect(flags.swarm, info.config, { modelId, codec: flags.codec, manifestId });
  let session: RouteSession;
  let ledger: ReputationLedger | undefined;
  try {
    ledger = ReputationLedger.open(flags.ledger);
    const consensus = flags.verify === "consensus";
    if (consensus && !(flags.k >= 1 && flags.k % 2 === 1)) throw new RangeError(`--k takes an odd number of verifiers, got ${flags.k}`);
    // Nodes reserve KV cache for the whole session: ask for what this prompt and --max-tokens need.
    const needed = promptTokensFor(tokenizer, flags).length + flags.maxTokens;
    session = await client.openSession(Math.min(info.config.maxPositionEmbeddings, needed), {
      chained: flags.chain === "auto" ? "auto" : flags.chain === "on",
      routing: flags.routing,
      onFailover: (e) => console.error(`[node ${e.peerId} failed on blocks ${e.blocks.join("-")}: ${e.error.message}; re-routed]`),
      verify: flags.verify === "consensus" ? { rate: 1, mode: "consensus", k: flags.k } : { rate: flags.verify },
      trust: ledgerTrust(ledger, { modelId }),
      onCaught: (e) =>
        console.error(`[caught node ${e.peerId} on blocks ${e.blocks.join("-")}: wrong output at position ${e.position}; banned, re-routed, text corrected]`),
    });
  } catch (e) {
    ledger?.close();
    await client.close();
    if (!(e instanceof MissingBlocksError)) throw e;
    const all = e.blocks.length === info.config.numLayers;
    const where = flags.modelId
      ? "(--model-id)"
      : ee
        ? `(the deployment id of ${flags.key}: do the nodes serve the checkpoint encrypted with this key?)`
        : "(the name of the --model folder or file, as the nodes' checkpoint is named unless they were given --model-id; encrypted checkpoints are announced under their deployment id: pass --key)";
    e.message = `${all ? "no node" : `no reachable node for block${e.blocks.length > 1 ? "s" : ""} ${e.blocks.join(", ")}`} found through ${flags.swarm.join(", ")} under model id ${modelId} ${where}`;
    throw e;
  }
  if (!flags.json) {
    console.error(`[route: ${formatRoute(session.route)}${ee ? `; encrypted (${ee.key.level}), deployment ${short(modelId)}` : ""}]`);
  }
  const inner: LogitsSession = session;
  const open = ledger;
  return {
    tokenizer,
    session: ee ? new EncryptedSession(inner, ee.cipher) : inner,
    report: () => session.verification,
    done: async () => {
      open.close();
      await client.close();
    },
  };
}

/** Reads a key file and checks that it was made for the plaintext model the client tokenizes with. */
async function clientCipher(keyFile: string, model: string, vocabSize: number, tokenizer: Tokenizer) {
  const key = await readKeyFile(keyFile);
  if (key.vocabSize !== vocabSize) {
    throw new EeKeyError(`${keyFile} is not a key for ${model}: it is for a vocabulary of ${key.vocabSize} rows, the model has ${vocabSize}`);
  }
  if (key.vocabHash !== vocabHash(tokenizer)) {
    throw new EeKeyError(
      `${keyFile} is not a key for ${model}: it was made for another tokenizer (vocabHash ${short(key.vocabHash)}, this model's is ${short(vocabHash(tokenizer))})`,
    );
  }
  return { key, cipher: VocabCipher.fromKey(key) };
}

/** One line on what was checked and what was caught. */
export function formatVerification(v: VerificationReport): string {
  const checked = v.spans.filter((s) => s.checked);
  const verifiers = new Set(checked.flatMap((s) => s.verifiedBy));
  const what = v.mode === "consensus" ? "consensus" : `rate ${v.rate}`;
  const parts = [
    `verified (${what}): ${checked.length} of ${v.spans.length} spans, ${v.recomputedTokens} positions recomputed by ${verifiers.size} node${verifiers.size === 1 ? "" : "s"} in ${v.checks} checks`,
  ];
  const unverifiable = checked.filter((s) => s.unverifiable);
  if (unverifiable.length) parts.push(`${unverifiable.length} could not be checked (${unverifiable[0]!.unverifiable})`);
  for (const c of v.caught) parts.push(`caught ${c.peerId} on blocks ${c.blocks.join("-")} at position ${c.position}`);
  for (const o of v.outvoted) parts.push(`outvoted verifier ${o.peerId}`);
  for (const l of v.throughputLies) parts.push(`${l.peerId} announced ${l.announcedMs.toFixed(2)} ms per step and took ${l.measuredMs.toFixed(1)}`);
  return `[${parts.join("; ")}]`;
}

function short(hex: string): string {
  return `${hex.slice(0, 16)}…`;
}
