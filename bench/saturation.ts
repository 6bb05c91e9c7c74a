// `npm run bench:saturation` (root, wrk and nginx installed): how many requests a second the node
// agents carry before p99 passes a bound, with one data-plane worker and with two.
//
// wrk (C, keep-alive HTTP/1.1, one thread) on node-a calls nginx (C, one process) in a captured pod
// on node-b, at a rising number of connections; a configuration's rate is the highest that kept p99
// within --bound-ms. Two paths:
//   inbound   wrk in a pod outside the mesh: node-b's agent alone is in the path (15006, PERMISSIVE),
//             so it is what saturates. Pinned: the agent on CPU 1, wrk and nginx on CPU 0 (taskset),
//             a core of its own; shared: nothing pinned.
//   tunnel    wrk in a captured pod: both agents, HTTP/2 CONNECT over mTLS between them; shared.
// Each with 1 and 2 workers per agent, side by side in one run, with the agents' CPU per request
// and how their threads shared it (main thread against worker threads); and the inbound path as the
// DaemonSet runs it, 2 workers of which one starts under load, with the data planes serving after
// each step, and then how long idle it took to retire and the agent's RSS before and after. `--only NAME,...` runs some configurations. Nothing is asserted; bench/README.md has
// the numbers.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MeshLab } from '../src/demo/lab.ts';
import { processCpuSeconds, processPeakRssMiB, processRssMiB } from '../src/demo/process-stats.ts';
import { assertNetnsPrerequisites } from '../src/netns/topology.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const APP_PORT = 8080;

const { values: opts } = parseArgs({ options: {
  'bound-ms': { type: 'string', default: '10' },
  seconds: { type: 'string', default: '5' },
  connections: { type: 'string', default: '2,4,8,16,32,64,128' },
  only: { type: 'string' },
  out: { type: 'string', default: join(HERE, 'saturation-results.json') },
} });
const BOUND_MS = Number(opts['bound-ms']);
const SECONDS = Number(opts.seconds);
const STEPS = opts.connections.split(',').map(Number);
const say = (s: string) => process.stderr.write(`${s}\n`);

await assertNetnsPrerequisites();
for (const tool of ['wrk', 'nginx', 'taskset']) {
  try { execFileSync('which', [tool], { stdio: 'ignore' }); } catch { throw new Error(`${tool} is needed (apt-get install wrk nginx-light util-linux)`); }
}
if (os.cpus().length < 2) throw new Error('pinning needs 2 CPUs at least');

/** wrk's "Latency Distribution" and "Requests/sec" lines. */
function parseWrk(text: string): { rps: number; p50: number; p99: number; errors: number } {
  const ms = (v: string, unit: string) => Number(v) * ({ us: 0.001, ms: 1, s: 1000 } as Record<string, number>)[unit]!;
  const pct = (p: string) => { const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(text); if (!m) throw new Error(`no ${p}% in wrk's output:\n${text}`); return ms(m[1]!, m[2]!); };
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(text);
  if (!rps) throw new Error(`no Requests/sec in wrk's output:\n${text}`);
  const errors = /Non-2xx or 3xx responses:\s+(\d+)/.exec(text)?.[1] ?? /Socket errors:.*?(\d+)/.exec(text)?.[1] ?? '0';
  return { rps: Number(rps[1]), p50: pct('50'), p99: pct('99'), errors: Number(errors) };
}

/** CPU seconds of each named thread kind of a process (MainThread, WorkerThread, the rest). */
function threadCpu(pid: number): Record<string, number> {
  const tick = 100;
  const out: Record<string, number> = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const kind = name === 'MainThread' || name === 'WorkerThread' ? name : 'other';
      out[kind] = (out[kind] ?? 0) + (Number(f[11]) + Number(f[12])) / tick;
    } catch { /* a thread that ended */ }
  }
  return out;
}

const lab = await MeshLab.create({
  trustDomain: 'saturation.bench',
  workers: 1,
  agentArgs: ['--access-log', 'off'],
  nodes: [
    { name: 'node-a', pods: [{ name: 'loadgen', namespace: 'bench', captured: false }, { name: 'client', namespace: 'bench' }] },
    { name: 'node-b', pods: [{ name: 'server', namespace: 'bench' }] },
  ],
});

const results: Record<string, unknown> = {
  when: new Date().toISOString(),
  machine: { node: process.version, cpus: os.cpus().length },
  settings: { boundMs: BOUND_MS, seconds: SECONDS, connections: STEPS, response: '1 KB over keep-alive HTTP/1.1' },
  configurations: {},
};

try {
  await lab.startMesh();
  const nodes = [lab.node('node-a'), lab.node('node-b')];
  const www = join(lab.dir, 'www');
  execFileSync('mkdir', ['-p', www]);
  writeFileSync(join(www, '1k'), Buffer.alloc(1024, 0x61));
  const cfg = join(lab.dir, 'nginx.conf');
  writeFileSync(cfg, [
    'daemon off;', 'master_process off;', 'worker_processes 1;', `pid ${join(lab.dir, 'nginx.pid')};`, `error_log ${join(lab.dir, 'nginx.error.log')} warn;`,
    'events { worker_connections 4096; }',
    `http { access_log off; keepalive_timeout 75s; keepalive_requests 100000000; server { listen ${APP_PORT}; root ${www}; } }`, '',
  ].join('\n'));
  const nginx = lab.topo.spawn(lab.pod('server').ns, 'nginx', ['-c', cfg]);
  const url = `http://${lab.pod('server').ip}:${APP_PORT}/1k`;
  const pin = (pid: number, cpus: string) => execFileSync('taskset', ['-a', '-cp', cpus, String(pid)], { stdio: 'ignore' });
  const all = `0-${os.cpus().length - 1}`;

  const configurations = [
    ['inbound-pinned-1', 'loadgen', 1, true], ['inbound-pinned-2', 'loadgen', 2, true],
    ['inbound-shared-1', 'loadgen', 1, false], ['inbound-shared-2', 'loadgen', 2, false],
    ['tunnel-shared-1', 'client', 1, false], ['tunnel-shared-2', 'client', 2, false],
    // As the DaemonSet runs it: one data plane until the load needs the second (--min-workers 1).
    ['inbound-demand-2', 'loadgen', 2, false, 1],
  ] as const;
  for (const [name, from, workers, pinned, minWorkers = workers] of configurations) {
    if (opts.only && !opts.only.split(',').includes(name)) continue;
    for (const node of nodes) {
      await lab.stopAgent(node.name);
      await lab.startAgent(node, ['--workers', String(workers), '--min-workers', String(minWorkers)]);
    }
    await Promise.all(nodes.map((n) => lab.waitReady(n)));
    // The agents in the path: node-b's alone from outside the mesh, both from a captured pod.
    const agents = (from === 'client' ? ['node-a', 'node-b'] : ['node-b']).map((n) => lab.agents.get(n)!.child.pid!);
    pin(lab.agents.get('node-b')!.child.pid!, pinned ? '1' : all);
    pin(lab.agents.get('node-a')!.child.pid!, pinned ? '0' : all);
    pin(nginx.pid!, pinned ? '0' : all);
    const steps = [];
    for (const c of STEPS) {
      say(`${name}: wrk, ${c} connections, ${SECONDS} s ...`);
      // Warm: the agent's first connections pay for JIT and buffers.
      await lab.topo.exec(lab.pod(from).ns, 'wrk', ['-t1', `-c${c}`, '-d1s', url]);
      const cpu0 = agents.map(processCpuSeconds);
      const threads0 = agents.map(threadCpu);
      const wrk = pinned ? ['taskset', ['-c', '0', 'wrk']] as const : ['wrk', []] as const;
      const r = await lab.topo.exec(lab.pod(from).ns, wrk[0], [...wrk[1], '-t1', `-c${c}`, `-d${SECONDS}s`, '--latency', url]);
      if (r.code !== 0) throw new Error(`wrk failed: ${r.stderr}`);
      const cpu = agents.reduce((n, pid, i) => n + processCpuSeconds(pid) - cpu0[i]!, 0);
      const threads: Record<string, number> = {};
      agents.forEach((pid, i) => { for (const [k, v] of Object.entries(threadCpu(pid))) threads[k] = (threads[k] ?? 0) + v - (threads0[i]![k] ?? 0); });
      const w = parseWrk(r.stdout);
      // node-b's data planes serving after the step (more start under load below --workers).
      const serving = (await lab.configDump(nodes[1]!)).workers as number;
      steps.push({ connections: c, ...w, agentCpuPerSecond: cpu / SECONDS, agentCpuMsPerRequest: (cpu / (w.rps * SECONDS)) * 1000, threads, serving });
      say(`  ${Math.round(w.rps)} req/s, p50 ${w.p50.toFixed(2)} ms, p99 ${w.p99.toFixed(2)} ms, agent ${(cpu / SECONDS).toFixed(2)} CPU, node-b serving with ${serving}`);
    }
    // The loaded figure for the memory requests and limits (bench/README.md): each agent's peak RSS.
    const peakRssMiB = agents.map((pid) => Math.round(processPeakRssMiB(pid)));
    say(`  agents' peak RSS ${peakRssMiB.join(', ')} MiB`);
    // Started under load, a data plane retires once quiet (5 min by default): node-b's RSS before and after.
    let retired: { afterSeconds: number; rssBeforeMiB: number; rssAfterMiB: number } | undefined;
    if (minWorkers < workers) {
      const pid = lab.agents.get('node-b')!.child.pid!;
      const rssBeforeMiB = Math.round(processRssMiB(pid));
      const t0 = Date.now();
      say(`  idle until node-b retires its extra data plane (RSS now ${rssBeforeMiB} MiB) ...`);
      while ((await lab.configDump(nodes[1]!)).workers > minWorkers && Date.now() - t0 < 600_000) await new Promise((r) => setTimeout(r, 1_000));
      const afterSeconds = Math.round((Date.now() - t0) / 1000);
      // The thread's exit, and the next malloc trim (every 10 s).
      await new Promise((r) => setTimeout(r, 15_000));
      retired = { afterSeconds, rssBeforeMiB, rssAfterMiB: Math.round(processRssMiB(pid)) };
      say(`  retired after ${afterSeconds} s idle; RSS ${retired.rssAfterMiB} MiB 15 s later`);
    }
    const within = steps.filter((s) => s.p99 <= BOUND_MS && s.errors === 0);
    const best = within.reduce<(typeof steps)[number] | undefined>((b, s) => (!b || s.rps > b.rps ? s : b), undefined);
    (results.configurations as Record<string, unknown>)[name] = { path: from === 'client' ? 'tunnel' : 'inbound', agents: agents.length, workers, pinned, sustainedRps: best ? Math.round(best.rps) : 0, at: best, peakRssMiB, retired, steps };
  }
  nginx.kill();
} finally {
  await lab.destroy();
}

const c = results.configurations as Record<string, { sustainedRps: number; peakRssMiB: number[]; at?: { connections: number; p99: number; agentCpuMsPerRequest: number; threads: Record<string, number> } }>;
say(`\nhighest rate with p99 <= ${BOUND_MS} ms (agent CPU: the agents in the path together):`);
for (const [name, r] of Object.entries(c)) {
  const t = r.at?.threads ?? {};
  const busy = (t.MainThread ?? 0) + (t.WorkerThread ?? 0);
  say(`  ${name.padEnd(17)} ${String(r.sustainedRps).padStart(6)} req/s at ${r.at?.connections ?? '-'} connections, p99 ${r.at?.p99.toFixed(2) ?? '-'} ms, ` +
    `${r.at?.agentCpuMsPerRequest.toFixed(3) ?? '-'} agent CPU ms per request, main/worker threads ${busy ? `${Math.round((100 * (t.MainThread ?? 0)) / busy)}/${Math.round((100 * (t.WorkerThread ?? 0)) / busy)}%` : '-'}, ` +
    `peak RSS ${r.peakRssMiB.join(', ')} MiB`);
}
const ratio = (p: string) => {
  const [two, one] = [c[`${p}-2`], c[`${p}-1`]];
  return two && one ? (two.sustainedRps / one.sustainedRps).toFixed(2) : '-';
};
say(`  2 workers / 1: inbound pinned ${ratio('inbound-pinned')}, inbound shared ${ratio('inbound-shared')}, tunnel shared ${ratio('tunnel-shared')}`);
writeFileSync(opts.out, `${JSON.stringify(results, null, 2)}\n`);
