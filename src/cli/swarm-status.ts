// `tessera swarm`: the dashboard of a running swarm, read from its DHT through a bootstrap peer.
import { openModelInfo } from "../swarm/model-info.js";
import { SwarmClient } from "../swarm/client.js";
import { renderSwarm } from "../swarm/dashboard.js";

interface SwarmStatusFlags {
  model: string;
  bootstrap: string[];
  modelId?: string;
  watch?: number;
}

export async function swarmStatusCommand(flags: SwarmStatusFlags): Promise<void> {
  if (!flags.bootstrap.length) throw new Error("give a node of the swarm with --bootstrap MULTIADDR");
  // The block count and the default id only: config.json (or a GGUF header) and any EE manifest.
  const { config, modelId: announced } = await openModelInfo(flags.model, { tokenizer: false });
  const modelId = flags.modelId ?? announced;
  const client = await SwarmClient.connect(flags.bootstrap, config, { modelId });
  try {
    for (;;) {
      await client.provider.records();
      const text = renderSwarm({ modelId, numBlocks: config.numLayers, nodes: client.provider.nodes });
      if (flags.watch && process.stdout.isTTY) process.stdout.write("\x1b[2J\x1b[H");
      console.log(text);
      if (!flags.watch) return;
      await new Promise((r) => setTimeout(r, flags.watch! * 1000));
    }
  } finally {
    await client.close();
  }
}
