// `npm run bench:cost -- --pods 10,25,50` (root): what the mesh costs next to no mesh, measured the
// same way for every configuration, in one run. A client node with a load-generator pod; a node with
// N pods, each running nginx (Debian's nginx-light, one process, no master) serving a 1 KB file.
//
// Per configuration and N: RSS and CPU of all mesh processes idle (3 s) and under two fixed
// aggregate rates spread over the N pods (open loop, latency from the moment each request was handed
// to the client; p50/p95/p99): `--rate` on keep-alive connections (how Istio's and ztunnel's
// published per-1000-req/s figures are measured), and `--close-rate` with a new connection per
// request (the worst case for a proxy). And the time from a pod's start to its first successful
// request through the mesh. Writes bench/results/<date>-cost.json (every raw figure and the machine), the charts (SVG)
// and bench/results/<date>-cost.md (bench/cost/report.ts).
//
// Configurations (`--configs`, all by default): no mesh; HAProxy (Debian's) as an mTLS sidecar in
// every pod, the load generator's included (outbound: the app's connections REDIRECTed in OUTPUT,
// HAProxy's own excluded by its uid, to a listener that connects to the original destination over
// TLS with the pod's certificate; inbound: connections to the app port REDIRECTed in PREROUTING to
// a TLS listener that requires a client certificate from the mesh's root); meshlet's agent run as a
// sidecar in every pod (`meshlet init --sidecar` and `meshlet agent --sidecar`: the same code and
// tunnel as the node agent, one process per pod, so the pattern's cost shows apart from the proxy's);
// and meshlet's agent per node.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MeshLab } from '../../src/demo/lab.ts';
import { processCpuSeconds, processPssMiB, processRssMiB } from '../../src/demo/process-stats.ts';
import { createCsr, createRootCa, generateRsaKey, type RootCa, signWorkloadCsr } from '../../src/identity/ca.ts';
import { assertNetnsPrerequisites } from '../../src/netns/topology.ts';
import { CONFIGS, type CostResults, type CostRun, type MeshConfig, markdown, renderCharts } from './report.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const LOAD = join(HERE, '..', 'load.ts');
const APP_PORT = 8080;
const FILE_BYTES = 1024;

/** One nginx per pod, in the foreground without a master process: the smallest real keep-alive server. */
function nginxConfig(dir: string, pod: string, www: string): string {
  return [
    'daemon off;', 'master_process off;', 'worker_processes 1;', `pid ${join(dir, `${pod}.pid`)};`, `error_log ${join(dir, `${pod}.error.log`)} warn;`,
    'events { worker_connections 1024; }',
    `http { access_log off; keepalive_timeout 75s; keepalive_requests 1000000; server { listen ${APP_PORT}; root ${www}; } }`, '',
  ].join('\n');
}
const SIDECAR_OUT = 15001;
const SIDECAR_IN = 15006;
const TRUST_DOMAIN = 'cost.test';

/** One HAProxy sidecar's configuration: outbound to original destinations over mTLS, inbound mTLS to the app. */
function haproxyConfig(pem: string, ca: string): string {
  return [
    'global', '  user haproxy', '  group haproxy', '  nbthread 1', '  ssl-server-verify required',
    'defaults', '  mode tcp', '  timeout connect 5s', '  timeout client 60s', '  timeout server 60s',
    'frontend outbound', `  bind 127.0.0.1:${SIDECAR_OUT}`, '  default_backend original-destination',
    // 0.0.0.0:0: the address and port the app connected to (SO_ORIGINAL_DST after the REDIRECT).
    'backend original-destination', `  server dst 0.0.0.0:0 ssl crt ${pem} ca-file ${ca} verify required`,
    'frontend inbound', `  bind 0.0.0.0:${SIDECAR_IN} ssl crt ${pem} ca-file ${ca} verify required`, '  default_backend app',
    'backend app', `  server app 127.0.0.1:${APP_PORT}`, '',
  ].join('\n');
}

/** iptables-restore input for a pod with a sidecar: its app's outbound and inbound traffic through HAProxy. */
function sidecarCapture(): string {
  return [
    '*nat',
    `-A OUTPUT -p tcp -m tcp --dport ${APP_PORT} -m owner ! --uid-owner haproxy -j REDIRECT --to-ports ${SIDECAR_OUT}`,
    `-A PREROUTING -p tcp -m tcp --dport ${APP_PORT} -j REDIRECT --to-ports ${SIDECAR_IN}`,
    'COMMIT', '',
  ].join('\n');
}

async function workloadPem(root: RootCa, name: string): Promise<string> {
  const { privateKeyPem } = await generateRsaKey();
  const { certPem } = signWorkloadCsr(root, createCsr(privateKeyPem, `spiffe://${TRUST_DOMAIN}/ns/bench/sa/${name}`), { trustDomain: TRUST_DOMAIN, ttlMs: 86_400_000 });
  return `${certPem}${privateKeyPem}`;
}

const { values: opts } = parseArgs({ options: {
  pods: { type: 'string', default: '10,25,50' },
  rate: { type: 'string', default: '1000' },
  'close-rate': { type: 'string', default: '200' },
  seconds: { type: 'string', default: '10' },
  'idle-seconds': { type: 'string', default: '3' },
  out: { type: 'string', default: join(HERE, '..', 'results') },
  configs: { type: 'string', default: CONFIGS.join(',') },
} });
const measured = String(opts.configs).split(',') as MeshConfig[];
for (const c of measured) if (!(CONFIGS as readonly string[]).includes(c)) throw new Error(`--configs: ${c} is not one of ${CONFIGS.join(', ')}`);
const podCounts = String(opts.pods).split(',').map(Number);
const rate = Number(opts.rate);
const closeRate = Number(opts['close-rate']);
const seconds = Number(opts.seconds);
const idleSeconds = Number(opts['idle-seconds']);
const say = (s: string) => process.stderr.write(`${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** CPU cores used, and RSS and PSS (at the end), of `pids` together, over `ms`. */
async function sample(pids: number[], ms: number): Promise<{ cpuCores: number; rssMiB: number; pssMiB: number }> {
  const cpu0 = pids.reduce((n, p) => n + processCpuSeconds(p), 0);
  const t0 = performance.now();
  await sleep(ms);
  const cpu1 = pids.reduce((n, p) => n + processCpuSeconds(p), 0);
  const sum = (f: (pid: number) => number) => pids.reduce((n, p) => n + f(p), 0);
  return { cpuCores: (cpu1 - cpu0) / ((performance.now() - t0) / 1000), rssMiB: sum(processRssMiB), pssMiB: sum(processPssMiB) };
}

async function measure(config: MeshConfig, pods: number): Promise<CostRun> {
  const apps = Array.from({ length: pods }, (_, i) => ({ name: `app-${i}`, namespace: 'bench', serviceAccount: 'app' }));
  const lab = await MeshLab.create({
    nodes: [
      { name: 'client-node', pods: [{ name: 'loadgen', namespace: 'bench' }] },
      { name: 'pod-node', pods: [...apps, { name: 'late', namespace: 'bench', serviceAccount: 'app', registered: false }] },
    ],
  });
  try {
    const www = join(lab.dir, 'www');
    mkdirSync(www, { recursive: true });
    writeFileSync(join(www, '1k'), Buffer.alloc(FILE_BYTES, 0x61));
    const serve = (pod: string) => {
      const cfg = join(lab.dir, `nginx-${pod}.conf`);
      writeFileSync(cfg, nginxConfig(lab.dir, pod, www));
      lab.topo.spawn(lab.pod(pod).ns, 'nginx', ['-c', cfg]);
    };
    for (const a of apps) serve(a.name);
    const inLoadgen = async (args: string[]) => {
      const r = await lab.topo.exec(lab.pod('loadgen').ns, process.execPath, [LOAD, ...args]);
      if (r.code !== 0) throw new Error(`load ${args[0]} failed: ${r.stderr}`);
      return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    };
    const url = (pod: string) => `http://${lab.pod(pod).ip}:${APP_PORT}/1k`;
    if (config === 'meshlet-node') await lab.startMesh();
    const sidecars: number[] = [];
    let addSidecar = async (_pod: string) => {};
    if (config === 'haproxy-sidecar') {
      const root = await createRootCa({ trustDomain: TRUST_DOMAIN });
      const dir = join(lab.dir, 'haproxy');
      mkdirSync(dir, { recursive: true });
      const ca = join(dir, 'ca.pem');
      writeFileSync(ca, root.certPem);
      addSidecar = async (pod: string) => {
        const pem = join(dir, `${pod}.pem`);
        writeFileSync(pem, await workloadPem(root, pod), { mode: 0o644 });
        const cfg = join(dir, `${pod}.cfg`);
        writeFileSync(cfg, haproxyConfig(pem, ca));
        const ns = lab.pod(pod).ns;
        const rules = await lab.topo.exec(ns, 'iptables-restore', ['--noflush'], sidecarCapture());
        if (rules.code !== 0) throw new Error(`sidecar capture in ${pod}: ${rules.stderr}`);
        const child = lab.topo.spawn(ns, 'haproxy', ['-f', cfg, '-db']);
        sidecars.push(child.pid as number);
      };
      for (const pod of ['loadgen', ...apps.map((a) => a.name)]) await addSidecar(pod);
    }
    if (config === 'meshlet-sidecar') {
      addSidecar = async (pod: string) => { sidecars.push((await lab.startSidecar(pod)).child.pid as number); };
      for (const pod of ['loadgen', ...apps.map((a) => a.name)]) await addSidecar(pod);
      await Promise.all([...lab.sidecars.values()].map((a) => lab.waitReady(a.pod!, 120_000)));
    }
    // Every server answers (through the mesh when there is one) before anything is measured.
    for (const a of apps) {
      const p = await inLoadgen(['poll', '--url', url(a.name), '--seconds', '10', '--until-ok']);
      if (p.firstOkMs === undefined) throw new Error(`${a.name} never answered`);
    }
    const pids = [...[...lab.agents.values()].map((a) => a.child.pid as number), ...sidecars];

    const idle = await sample(pids, idleSeconds * 1000);
    const loaded = async (r: number, close: boolean) => {
      const [l, used] = await Promise.all([
        inLoadgen(['latency', ...apps.flatMap((a) => ['--url', url(a.name)]), '--method', 'GET', '--size', String(FILE_BYTES),
          '--rate', String(r), '--seconds', String(seconds), '--connections', '1', ...(close ? ['--close'] : [])]),
        sample(pids, seconds * 1000),
      ]);
      return { ...used, requests: l.requests, errors: l.errors, latencyMs: { p50: l.p50, p95: l.p95, p99: l.p99 } };
    };
    const load = await loaded(rate, false);
    const newConnections = await loaded(closeRate, true);

    // A pod starts: its server, its sidecar if it has one, and (with meshlet) its entry in the
    // registry, at the same moment.
    const late = lab.pod('late');
    const started = Date.now();
    serve('late');
    const meshlet = config === 'meshlet-node' || config === 'meshlet-sidecar';
    if (meshlet) {
      const doc = lab.workloadsDocument() as { workloads: object[] };
      await lab.writeWorkloads({ ...doc, workloads: [...doc.workloads, { name: 'late', namespace: 'bench', serviceAccount: 'app', ip: late.ip, node: 'pod-node', captured: true }] });
    }
    await addSidecar('late');
    let firstRequestMs: number;
    if (!meshlet) {
      // No mesh: the server answering. HAProxy sidecars: the only way to an answer is mTLS through both.
      firstRequestMs = (await inLoadgen(['poll', '--url', url('late'), '--seconds', '30', '--until-ok'])).firstOkMs;
    } else {
      // Successes before the mesh knows the pod go around it (passthrough); the first that counts is
      // the first the client's agent (or the load generator's sidecar) logged as tunnelled.
      const clientLog = async () => (config === 'meshlet-node'
        ? lab.accessLog('client-node')
        : (await lab.processLog(lab.sidecars.get('loadgen')!)).filter((x) => x.scope === 'access'));
      const polling = inLoadgen(['poll', '--url', url('late'), '--seconds', '30']);
      let line: Record<string, any> | undefined;
      while (!line && Date.now() - started < 30_000) {
        line = (await clientLog()).find((x) => x.dst?.workload === 'bench/late' && x.route === 'tunnel' && x.outcome === 'ok');
        if (!line) await sleep(50);
      }
      void polling.catch(() => undefined);
      if (!line) throw new Error('no request reached the late pod through the mesh');
      firstRequestMs = Date.parse(line.time) - started;
    }
    return {
      config, pods, processes: pids.length, idle, load, newConnections, firstRequestMs,
    };
  } finally {
    await lab.destroy();
  }
}

await assertNetnsPrerequisites();
const results: CostResults = {
  date: new Date().toISOString().slice(0, 10),
  machine: { cpus: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.version },
  rate,
  closeRate,
  podReservation: { cpuMillis: 250, memoryMiB: 256 },
  runs: [],
};
for (const pods of podCounts) {
  for (const config of measured) {
    say(`${config}, ${pods} pods ...`);
    const run = await measure(config, pods);
    const figures = (u: NonNullable<CostRun['newConnections']>) => `${u.rssMiB.toFixed(1)} MiB ${u.cpuCores.toFixed(3)} cores, ` +
      `p50/p95/p99 ${u.latencyMs.p50.toFixed(2)}/${u.latencyMs.p95.toFixed(2)}/${u.latencyMs.p99.toFixed(2)} ms, ${u.errors} errors`;
    say(`  idle ${run.idle.rssMiB.toFixed(1)} MiB ${run.idle.cpuCores.toFixed(3)} cores; keep-alive ${figures(run.load)}; ` +
      `new connections ${figures(run.newConnections!)}; first request ${run.firstRequestMs.toFixed(0)} ms`);
    results.runs.push(run);
  }
}
mkdirSync(opts.out!, { recursive: true });
const base = join(opts.out!, `${results.date}-cost`);
writeFileSync(`${base}.json`, `${JSON.stringify(results, null, 2)}\n`);
const charts = await renderCharts(results);
const files: Record<string, string> = {};
for (const [name, svg] of Object.entries(charts)) {
  const file = `${results.date}-cost-${name}.svg`;
  writeFileSync(join(opts.out!, file), svg);
  files[name] = file;
}
writeFileSync(`${base}.md`, markdown(results, files));
say(`written ${base}.json, ${base}.md and ${Object.keys(files).length} charts`);
