// A stand-in for kubelet's readiness prober, for the end-to-end tests: run inside a node namespace
// (where kubelet lives), it probes pods the way kubelet's tcpSocket probe does and prints one JSON
// line per readiness change.
//
//   node test/support/prober.ts --target NAME=IP:PORT [--target ...] [--period-ms 1000]
//        [--timeout-ms 1000] [--failure-threshold 3] [--success-threshold 1]
//
// Kubelet's rules: a pod starts not ready; `success-threshold` consecutive successes make it ready,
// `failure-threshold` consecutive failures make it not ready again; one probe per period, each
// failing after the timeout. A probe is a TCP connect, closed as soon as it succeeds.
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values: v } = parseArgs({ options: {
  target: { type: 'string', multiple: true, default: [] },
  'period-ms': { type: 'string', default: '1000' },
  'timeout-ms': { type: 'string', default: '1000' },
  'failure-threshold': { type: 'string', default: '3' },
  'success-threshold': { type: 'string', default: '1' },
} });
const periodMs = Number(v['period-ms']);
const timeoutMs = Number(v['timeout-ms']);
const failureThreshold = Number(v['failure-threshold']);
const successThreshold = Number(v['success-threshold']);

interface Target { name: string; host: string; port: number; ready: boolean; successes: number; failures: number }

const targets: Target[] = (v.target ?? []).map((t) => {
  const m = /^([^=]+)=([0-9.]+):(\d+)$/.exec(t);
  if (!m) { process.stderr.write(`bad --target ${t} (NAME=IP:PORT)\n`); process.exit(2); }
  return { name: m[1] as string, host: m[2] as string, port: Number(m[3]), ready: false, successes: 0, failures: 0 };
});

function probe(t: Target): Promise<{ ok: boolean; error?: string }> {
  return new Promise((resolve) => {
    const s = net.connect({ host: t.host, port: t.port });
    const timer = setTimeout(() => { s.destroy(); resolve({ ok: false, error: 'timeout' }); }, timeoutMs);
    s.once('connect', () => { clearTimeout(timer); s.destroy(); resolve({ ok: true }); });
    s.once('error', (err: NodeJS.ErrnoException) => { clearTimeout(timer); resolve({ ok: false, error: err.code ?? err.message }); });
  });
}

async function round(t: Target): Promise<void> {
  const r = await probe(t);
  if (r.ok) { t.successes++; t.failures = 0; } else { t.failures++; t.successes = 0; }
  const next = t.ready ? t.failures < failureThreshold : t.successes >= successThreshold;
  if (next !== t.ready) {
    t.ready = next;
    process.stdout.write(`${JSON.stringify({ target: t.name, ready: next, at: Date.now(), ...(r.error ? { lastError: r.error } : {}) })}\n`);
  }
}

process.stdout.write(`${JSON.stringify({ started: Date.now(), targets: targets.map((t) => t.name) })}\n`);
for (const t of targets) {
  void round(t);
  setInterval(() => void round(t), periodMs);
}
process.on('SIGTERM', () => process.exit(0));
