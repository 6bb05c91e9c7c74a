// Load generator for the CA service (run by bench/ca.ts inside a node namespace): CONCURRENCY
// requests in flight for SECONDS, each a CSR for one of the node's workloads, with the node's token.
// CSRs are made up front (key generation is the agent's cost, not the CA's). Prints one JSON line.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Agent, request } from 'undici';
import { createCsr, generateKey } from '../src/identity/ca.ts';

const { values: o } = parseArgs({ options: {
  url: { type: 'string' }, 'token-file': { type: 'string' }, 'trust-bundle': { type: 'string' },
  seconds: { type: 'string', default: '10' }, concurrency: { type: 'string', default: '16' }, td: { type: 'string' }, workloads: { type: 'string', default: '100' },
} });
const token = readFileSync(String(o['token-file']), 'utf8').trim();
const dispatcher = new Agent({ connect: { ca: readFileSync(String(o['trust-bundle']), 'utf8') }, connections: Number(o.concurrency) });
const csrs: string[] = [];
for (let i = 0; i < 64; i++) {
  const { privateKeyPem } = await generateKey();
  csrs.push(JSON.stringify({ csr: createCsr(privateKeyPem, `spiffe://${o.td}/ns/bench/sa/app-${i % Number(o.workloads)}`) }));
}
const post = async (body: string) => {
  const res = await request(`${o.url}/v1/certificates`, { method: 'POST', dispatcher, body, headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` } });
  await res.body.text();
  return res.statusCode;
};
for (let i = 0; i < 50; i++) await post(csrs[i % csrs.length]!); // warm-up: connections and JIT
const latencies: number[] = [];
let errors = 0;
let next = 0;
const end = performance.now() + Number(o.seconds) * 1000;
await Promise.all(Array.from({ length: Number(o.concurrency) }, async () => {
  while (performance.now() < end) {
    const t = performance.now();
    const status = await post(csrs[next++ % csrs.length]!);
    if (status === 200) latencies.push(performance.now() - t); else errors++;
  }
}));
latencies.sort((a, b) => a - b);
const q = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? NaN;
process.stdout.write(`${JSON.stringify({ perSecond: latencies.length / Number(o.seconds), p50: q(0.5), p90: q(0.9), p99: q(0.99), errors, requests: latencies.length + errors })}\n`);
await dispatcher.close();
