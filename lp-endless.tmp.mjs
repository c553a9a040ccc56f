// @libp2p/utils 7.4.1: lpStream's reader never fails a length prefix that does not end.
// Expected: read() rejects (InvalidDataLengthLengthError) once the varint is longer than
// maxDataLength needs; observed: it keeps buffering and re-parsing every byte, CPU-bound, for ever.
if (!Promise.withResolvers) Promise.withResolvers = () => { let resolve, reject; const promise = new Promise((a, b) => { resolve = a; reject = b; }); return { promise, resolve, reject }; };
const { lpStream, streamPair } = await import("@libp2p/utils");
const [a, b] = await streamPair();
const reader = lpStream(b, { maxDataLength: 4 << 20 });
let outcome = "pending";
reader.read().then(() => (outcome = "resolved"), (e) => (outcome = `rejected: ${e.name}`));
const t0 = performance.now();
const cpu0 = process.cpuUsage();
const byte = Uint8Array.of(0xff);
for (let i = 1; i <= 1 << 20; i++) {
  a.send(byte) || (await new Promise((r) => a.addEventListener("drain", r, { once: true })));
  if ((i & 0xffff) === 0) { await new Promise((r) => setImmediate(r)); if (outcome !== "pending") break; }
}
await new Promise((r) => setTimeout(r, 100));
const cpu = process.cpuUsage(cpu0);
console.log(`after ${1 << 20} bytes of 0xff: read() ${outcome}; ${((performance.now() - t0) / 1000).toFixed(1)} s, ${((cpu.user + cpu.system) / 1e6).toFixed(1)} s CPU`);
process.exit(0);
