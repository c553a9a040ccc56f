// A node's log, as an operator reads it: `tessera node --log-level` (and DEBUG=tessera:*) shows
// its announcements and the failures of the sessions it serves, naming the peer and session.
import "../src/swarm/node20.js";
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { lpStream } from "@libp2p/utils";
import { multiaddr } from "@multiformats/multiaddr";
import { createSwarmHost, type SwarmHost } from "../src/swarm/host.js";
import { type NodeProcess, spawnNode, stopNode } from "../src/swarm/node-process.js";
import { decodeMessage, encodeControl, encodeStep, Kind, SPAN_PROTOCOL } from "../src/swarm/protocol.js";
import { hfModel } from "./support/fixtures.js";

let client: SwarmHost;
let model: string;

before(async () => {
  model = await hfModel("tiny-llama");
  client = await createSwarmHost({ role: "client" });
});

after(async () => {
  await client.stop();
});

/** Sends a step before any open: the node answers NOT_OPEN. */
async function misbehave(node: NodeProcess): Promise<void> {
  const talk = async (messages: Uint8Array[]) => {
    const stream = await client.dialProtocol(multiaddr(node.addr), SPAN_PROTOCOL);
    const lp = lpStream(stream);
    const codes: string[] = [];
    for (const m of messages) {
      await lp.write(m);
      const reply = decodeMessage((await lp.read()).subarray());
      codes.push(reply.kind === Kind.Error ? reply.error.code : `kind ${reply.kind}`);
    }
    await stream.close();
    return codes;
  };
  assert.deepEqual(await talk([encodeStep({ stepId: 1, startFromPosition: 0, allLogits: false, tokens: [1] })]), ["NOT_OPEN"]);
}

/** Waits until the node's stderr matches `pattern` (it writes as things happen), or fails after `ms`. */
async function logged(node: NodeProcess, pattern: RegExp, ms = 20_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const line = node
      .stderr()
      .split("\n")
      .find((l) => pattern.test(l));
    if (line) return line;
    if (Date.now() > deadline) assert.fail(`no log line matching ${pattern} in:\n${node.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("--log-level info: the node logs its announcements and a peer's failed request, naming the peer", async () => {
  const node = await spawnNode(model, 0, 4, ["--log-level", "info"]);
  try {
    assert.match(await logged(node, /tessera:swarm:announce announced \[0, 4\) online/), /announced/);
    await misbehave(node);
    const line = await logged(node, /NOT_OPEN/);
    assert.ok(line.includes(client.peerId.toString()), `the line names the peer: ${line}`);
    assert.match(line, /tessera:swarm:handler/);
  } finally {
    await stopNode(node.proc);
  }
});

test("by default a node logs failures only: after the same exchange and a clean stop, no info lines", async () => {
  const node = await spawnNode(model, 0, 4);
  await misbehave(node);
  await stopNode(node.proc);
  assert.doesNotMatch(node.stderr(), /tessera:swarm:(announce|handler) /, "info lines are off by default");
});
