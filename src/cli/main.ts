// The `tessera` command line.
import { Command, Option } from "commander";
import { LOG_LEVELS } from "../log.js";
import { SHIPPED_MODEL } from "../model/shipped.js";
import { floatArg, intArg, logitBiasArg, verifyArg } from "./args.js";
import { convertCommand } from "./convert.js";
import { demoCommand } from "./demo.js";
import { encryptModelCommand } from "./encrypt-model.js";
import { addEngineOptions } from "./engine-options.js";
import { evalCommand } from "./eval.js";
import { generateCommand } from "./generate.js";
import { inspectCommand } from "./inspect.js";
import { manifestCommand } from "./manifest.js";
import { nodeCommand } from "./node.js";
import { reputationCommand } from "./reputation.js";
import { swarmStatusCommand } from "./swarm-status.js";
import { makeTestModelCommand } from "./make-test-model.js";

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

const program = new Command().name("tessera").description("Private, verifiable LLM inference on a swarm of heterogeneous machines").showHelpAfterError();

addEngineOptions(program.command("generate").description("generate text with a model on this machine; tokens stream to stdout"))
  .requiredOption("-p, --prompt <text>", "prompt text (the user message with --chat)")
  .option("--chat", "wrap the prompt in the model's chat template")
  .option("--system <text>", "system message (with --chat)")
  .option("-n, --max-tokens <n>", "tokens to generate at most", intArg, 128)
  .option("-t, --temperature <t>", "sampling temperature; 0 is greedy", floatArg, 0.8)
  .option("--top-k <k>", "keep the k most likely tokens (0: all)", intArg, 40)
  .option("--top-p <p>", "nucleus sampling mass", floatArg, 0.95)
  .option("--min-p <p>", "drop tokens below p × the top probability", floatArg, 0)
  .option("--repetition-penalty <r>", "penalty for recent tokens (1: none)", floatArg, 1.1)
  .option(
    "--logit-bias <id=bias>",
    "add bias to a token's logit before sampling; -inf bans it (repeatable; plaintext ids, applied here, never sent to nodes)",
    logitBiasArg,
  )
  .option("--seed <n>", "random seed", intArg, 42)
  .option("--stop <text>", "stop string (repeatable)", collect, [])
  .option("--ignore-eos", "keep generating past the end-of-sequence token")
  .option("--json", "print one JSON object with tokens, text and timings instead of streaming")
  .option("--swarm <multiaddr>", "run through the swarm's nodes at these addresses (repeatable); the tokenizer stays local", collect, [])
  .addOption(new Option("--codec <codec>", "hidden-state codec on swarm hops").choices(["none", "f16", "blockwise8"]).default("none"))
  .addOption(
    new Option(
      "--chain <mode>",
      "with --swarm: nodes push hidden states to the next node (on), the client relays them (off), or on when the client is farther from the nodes than they are from each other (auto)",
    )
      .choices(["auto", "on", "off"])
      .default("auto"),
  )
  .addOption(
    new Option("--routing <mode>", "with --swarm: route for latency (interactive) or spread load for throughput")
      .choices(["min-latency", "max-throughput"])
      .default("min-latency"),
  )
  .option("--model-id <id>", "with --swarm: the name the nodes announce the model under (default: the checkpoint's name, or the key's deployment id)")
  .option("--manifest <file>", "with --swarm: route only through nodes that checked their span against this model manifest (tessera manifest)")
  .option(
    "--key <file>",
    "EE key (tessera encrypt-model): nodes see only cipher ids; -m stays the plaintext model (tokenizer); sampling, EOS and stops run here",
  )
  .option("--encrypted-model <path>", "with --key and no --swarm: run this encrypted checkpoint on this machine")
  .option(
    "--verify <rate|consensus>",
    "with --swarm: share of the route's spans another node recomputes from the recorded inputs (0 to 1), or consensus: k verifiers on every span, commit-reveal, majority; a node caught is banned, its blocks re-routed and the text corrected before it is shown",
    verifyArg,
    0.1,
  )
  .option("--k <n>", "with --verify consensus: verifiers per span (odd)", intArg, 3)
  .option("--ledger <file>", "with --swarm: the reputation ledger (default: $TESSERA_HOME/reputation.db, TESSERA_HOME defaulting to ~/.tessera)")
  .action(generateCommand);

addEngineOptions(program.command("node").description("serve a span of blocks to the swarm over libp2p"))
  .requiredOption("--blocks <start:end|auto>", "the span to serve, e.g. 0:4, or auto: as many blocks as memory allows, where the swarm is weakest")
  .option("--bootstrap <multiaddr>", "a node of the swarm to learn spans from (repeatable)", collect, [])
  .option("--max-blocks <n>", "with --blocks auto: serve at most this many blocks", intArg)
  .option("--port <n>", "TCP port (0: any free one)", intArg, 0)
  .option("--host <ip>", "address to listen on", "127.0.0.1")
  .option("--max-session <n>", "longest session accepted, in tokens", intArg, 2048)
  .option("--model-id <id>", "name to announce the blocks under (default: the checkpoint's name)")
  .option("--idle-timeout <s>", "close sessions that send no step for this long, releasing their cache", intArg, 300)
  .option("--throughput <rps>", "announce this decode throughput (tokens/s per block) instead of the measured one", floatArg)
  .option("--rebalance-interval <s>", "with --blocks auto: seconds between checks whether moving would lift the swarm's weakest block (0: never)", intArg, 120)
  .option("--manifest <file>", "check the span's tensors against this model manifest at load (refusing a mismatch) and announce its id")
  .option("--peer-cache-share <fraction>", "share of the KV budget one peer may hold over all its sessions (0 to 1)", floatArg, 0.25)
  .option("--prefill-chunk <n>", "run steps longer than this many tokens in chunks of it, scheduled fairly across peers", intArg, 32)
  .addOption(
    new Option(
      "--log-level <level>",
      "what the node logs to stderr: failures (error), also announces, sessions and moves (info), also every step (trace); DEBUG=tessera:* works too",
    )
      .choices(LOG_LEVELS)
      .default("error"),
  )
  .action(nodeCommand);

addEngineOptions(
  program
    .command("manifest")
    .description("write a model manifest: a content hash per tensor and per block, for the embedding and the head, and its own id")
    .option("-o, --out <file>", "where to write it (default: tessera-manifest.json in the folder, or <name>.manifest.json beside a .gguf)"),
).action(manifestCommand);

program
  .command("swarm")
  .description("show a running swarm: its nodes, their spans and measured speeds, and the throughput serving each block")
  .option("-m, --model <path>", "the model (for its block count and default id)", SHIPPED_MODEL.hf)
  .option("--bootstrap <multiaddr>", "a node of the swarm (repeatable)", collect, [])
  .option("--model-id <id>", "the id the nodes announce the model under (default: the checkpoint's name or deployment id)")
  .option("--watch <s>", "refresh every s seconds", intArg)
  .action(swarmStatusCommand);

program
  .command("demo")
  .description("start a local swarm of 3 nodes serving the shipped model and chat through it")
  .option("-p, --prompt <text>", "what to ask", "Genesis 1")
  .option("-n, --max-tokens <n>", "tokens to generate at most", intArg, 80)
  .option("--seed <n>", "random seed", intArg, 7)
  .action(demoCommand);

program
  .command("make-test-model")
  .description("write a random-weight checkpoint (for tests and benchmarks)")
  .requiredOption("-o, --out <path>", "output folder (hf) or .gguf file (gguf)")
  .option("--preset <name>", "model shape: tiny-llama, tiny-llama3, tiny-qwen2, tiny-gpt2, bench-0.6b", "tiny-llama")
  .addOption(new Option("--format <format>", "checkpoint format").choices(["hf", "gguf"]).default("hf"))
  .addOption(new Option("--dtype <dtype>", "stored type (hf: F32 F16 BF16; gguf: F32 F16 Q8_0 Q4_0)").default("F32"))
  .option("--seed <n>", "weight seed", intArg, 0)
  .option("--shard-mb <mb>", "hf: split into shards of at most this many MB", intArg)
  .action(makeTestModelCommand);

addEngineOptions(program.command("eval").description("perplexity and next-token top-1 accuracy of a model on a text file"))
  .option("-d, --data <file>", "UTF-8 text to score (default: the shipped model's held-out text)", SHIPPED_MODEL.evalText)
  .option("--window <n>", "tokens per independent window", intArg, 256)
  .option("--json", "print the result as JSON")
  .option("--swarm <multiaddr>", "score through the swarm joined at this node instead of on this machine (repeatable)", collect, [])
  .addOption(new Option("--codec <codec>", "with --swarm: hidden-state codec on hops").choices(["none", "f16", "blockwise8"]).default("none"))
  .option("--model-id <id>", "with --swarm: the id the nodes announce the model under")
  .option("--manifest <file>", "with --swarm: route only through nodes that checked their span against this model manifest")
  .addOption(new Option("--routing <mode>", "with --swarm: how windows are routed").choices(["min-latency", "max-throughput"]).default("max-throughput"))
  .action(evalCommand);

program
  .command("convert")
  .description("convert a Hugging Face folder to a GGUF file")
  .requiredOption("-m, --model <path>", "Hugging Face folder")
  .requiredOption("-o, --out <file>", "output .gguf file")
  .addOption(new Option("--dtype <dtype>", "stored weight type").choices(["F32", "F16", "Q8_0", "Q4_0"]).default("F16"))
  .action(convertCommand);

program
  .command("encrypt-model")
  .description("write the equivariant encryption of a checkpoint (no tokenizer) and its public manifest")
  .requiredOption("-m, --model <path>", "Hugging Face folder or .gguf file")
  .requiredOption("--key <file>", "key file; created (mode 0600) when it does not exist")
  .addOption(new Option("--level <level>", "L0: vocabulary only; L1: vocabulary and every hidden basis").choices(["L0", "L1"]).makeOptionMandatory())
  .requiredOption("-o, --out <path>", "output folder (Hugging Face input) or .gguf file (GGUF input)")
  .addOption(
    new Option("--weights <format>", "engine weight format the nodes will run, for the encrypted checkpoint's model manifest")
      .choices(["f32", "f16", "q8", "q4"])
      .default("f32"),
  )
  .action(encryptModelCommand);

program
  .command("inspect")
  .description("print a checkpoint's config and tensors")
  .requiredOption("-m, --model <path>", "Hugging Face folder or .gguf file")
  .action(inspectCommand);

program
  .command("reputation")
  .description("show this client's reputation ledger: each node's score, tier, outcomes and cooldown, best first")
  .option("--ledger <file>", "the ledger file (default: $TESSERA_HOME/reputation.db, TESSERA_HOME defaulting to ~/.tessera)")
  .option("--json", "print the entries (or, with --events, the events) as JSON")
  .option("--events <peer>", "list one node's recorded outcomes, newest first (its id, or a unique part of it)")
  .action(reputationCommand);

program.parseAsync().catch((e: Error) => {
  console.error(`tessera: ${e.name === "Error" ? "" : `${e.name}: `}${e.message}`);
  // Exit now: a failed command may leave sockets or engine sessions open.
  process.exit(1);
});
