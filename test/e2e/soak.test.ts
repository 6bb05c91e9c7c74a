// Soak: both agents under steady mixed load (fixed-rate HTTP on keep-alive connections, a new short
// connection every 100 ms, one long connection) for MESHLET_SOAK_SECONDS (120 in CI; `npm run
// bench:soak` runs longer). Agent RSS and open file descriptors are sampled throughout; they must
// stay flat within the bounds below, and no request may fail.
import assert from 'node:assert/strict';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MeshLab, PEER } from '../../src/demo/lab.ts';
import { processRssMiB } from '../../src/demo/process-stats.ts';

const SECONDS = Number(process.env.MESHLET_SOAK_SECONDS ?? 120);
const WARMUP_SECONDS = 5;
/** Growth allowed between the first sample after warm-up and the last one. */
const BOUNDS = { rssMiB: 40, fds: 10 };
const LOAD = join(import.meta.dirname, '../../bench/load.ts');

const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

describe('soak in network namespaces', { concurrency: false }, () => {
  let lab: MeshLab;

  before(async () => {
    lab = await MeshLab.create({ nodes: [{ name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }] }, { name: 'node-b', pods: [{ name: 'db', namespace: 'shop' }] }] });
    try {
      // Tens of thousands of short connections between the same addresses: reuse TIME_WAIT ports.
      for (const ns of [...lab.meshNodes.map((n) => n.ns), lab.pod('web').ns]) {
        await lab.topo.exec(ns, 'sysctl', ['-q', '-w', 'net.ipv4.tcp_tw_reuse=1']);
      }
      await lab.startMesh();
      await lab.startServer('db', 8080);
      await lab.startHttpServer('db', 8081);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  it(`holds RSS and file descriptors flat over ${SECONDS} s of mixed load, losing nothing`, { timeout: (SECONDS + 60) * 1000 }, async () => {
    const db = lab.pod('db').ip;
    const total = SECONDS + WARMUP_SECONDS;
    const run = (args: string[], script = PEER) => lab.topo.exec(lab.pod('web').ns, process.execPath, [script, ...args]);
    const latency = run(['latency', '--url', `http://${db}:8081/`, '--rate', '100', '--seconds', String(total), '--connections', '4'], LOAD);
    const dial = run(['dial', '--host', db, '--port', '8080', '--duration', String(total * 1000), '--interval', '100']);
    const chat = run(['chat', '--host', db, '--port', '8080', '--duration', String(total * 1000), '--interval', '200']);
    const agents = [...lab.agents.values()].map((a) => ({ node: a.node.name, pid: a.child.pid! }));
    const samples: Array<{ t: number; [node: string]: number | { rssMiB: number; fds: number } }> = [];
    const sample = (t: number) => samples.push({ t, ...Object.fromEntries(agents.map((a) => [a.node, { rssMiB: processRssMiB(a.pid), fds: fdCount(a.pid) }])) });
    await new Promise((r) => setTimeout(r, WARMUP_SECONDS * 1000));
    const start = Date.now();
    sample(0);
    while (Date.now() - start < (SECONDS - 1) * 1000) {
      await new Promise((r) => setTimeout(r, Math.min(10_000, (SECONDS - 1) * 1000 - (Date.now() - start))));
      sample(Math.round((Date.now() - start) / 1000));
    }
    const [l, d, c] = await Promise.all([latency, dial, chat]);
    const report = { seconds: SECONDS, bounds: BOUNDS, samples, latency: JSON.parse(l.stdout.trim().split('\n').at(-1)!), dial: JSON.parse(d.stdout), chat: JSON.parse(c.stdout) };
    if (process.env.MESHLET_SOAK_REPORT) writeFileSync(process.env.MESHLET_SOAK_REPORT, `${JSON.stringify(report, null, 2)}\n`);
    const first = samples[0]!;
    const last = samples.at(-1)!;
    for (const a of agents) {
      const [f, z] = [first[a.node] as { rssMiB: number; fds: number }, last[a.node] as { rssMiB: number; fds: number }];
      assert.ok(z.rssMiB - f.rssMiB <= BOUNDS.rssMiB, `${a.node} RSS ${f.rssMiB.toFixed(1)} -> ${z.rssMiB.toFixed(1)} MiB`);
      assert.ok(z.fds - f.fds <= BOUNDS.fds, `${a.node} fds ${f.fds} -> ${z.fds}`);
    }
    assert.equal(report.latency.errors, 0, JSON.stringify(report.latency));
    assert.ok(report.latency.requests >= total * 100 * 0.95, `${report.latency.requests} requests`);
    assert.equal(report.dial.failures.length, 0, JSON.stringify(report.dial.failures.slice(0, 5)));
    assert.ok(report.dial.attempts >= total * 9, `${report.dial.attempts} short connections`);
    assert.equal(report.chat.ok, true, JSON.stringify(report.chat));
  });
});
