// An in-process swarm of two SpanNodes serving tiny-llama's blocks [0, 2) and [2, 4), and a
// client host joined to it (receipt and commit-reveal tests).
import { servedCheckpoint } from "../../src/engine/runtime.js";
import { type Checkpoint, openCheckpoint } from "../../src/model/checkpoint.js";
import { createSwarmHost, joinSwarm, type SwarmHost } from "../../src/swarm/host.js";
import { after, before } from "node:test";
import { SpanNode } from "../../src/swarm/node.js";
import { hfModel } from "./fixtures.js";

export interface TwoSpanSwarm {
  checkpoint: Checkpoint;
  nodes: SpanNode[];
  client: SwarmHost;
  stop(): Promise<void>;
}

export async function twoSpanSwarm(modelId: string): Promise<TwoSpanSwarm> {
  const checkpoint = await openCheckpoint(await hfModel("tiny-llama"));
  const model = await servedCheckpoint(checkpoint, { maxSequence: 64 });
  const first = await SpanNode.start({ model, modelId, start: 0, end: 2, maxSessionLength: 64 });
  const bootstrap = [first.addresses[0]!];
  const nodes = [first, await SpanNode.start({ model, modelId, start: 2, end: 4, maxSessionLength: 64, bootstrap })];
  const client = await createSwarmHost({ role: "client" });
  await joinSwarm(client, bootstrap);
  return {
    checkpoint,
    nodes,
    client,
    stop: async () => {
      await client.stop();
      for (const n of nodes) await n.stop();
    },
  };
}

/** The swarm for a test file: started before its tests, stopped after them; read its fields inside tests. */
export function useTwoSpanSwarm(modelId: string): TwoSpanSwarm {
  let swarm: TwoSpanSwarm | undefined;
  const started = (): TwoSpanSwarm => {
    if (!swarm) throw new Error("the two-span swarm is used before it started");
    return swarm;
  };
  before(async () => {
    swarm = await twoSpanSwarm(modelId);
  });
  after(() => swarm?.stop());
  return {
    get checkpoint() {
      return started().checkpoint;
    },
    get nodes() {
      return started().nodes;
    },
    get client() {
      return started().client;
    },
    stop: () => started().stop(),
  };
}
