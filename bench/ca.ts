// `npm run bench:ca`: what identity costs.
//
//   sign         key generation, CSR checks and signing alone, in this process, one core, for ECDSA
//                P-256 and RSA-2048 (roots and workload keys of the one kind); with RSA also
//                node-forge's JavaScript signing (what the CA would cost without native signatures)
//   handshake    mutual TLS 1.3 handshakes in process, both ends on one core, with either kind of key
//   ca-service   `meshlet ca serve` pinned to one core (taskset), a load generator on the other:
//                CSRs per second over HTTPS with token checks, and latency; the CA's RSS idle
//                (10 s after it listens: it hands back its start-up pages at 5 s) and its peak
//                during the load (VmHWM, reset before it), on a copy of the Node binary of its own
//                and with the image's Node flags, as in a cluster
//   cold-start   an agent with 100 local workloads, from process start to all 100 certificates
//                available: with the CA service (in its own namespace) and with the embedded CA,
//                with ECDSA and with RSA workload keys
//
// Prints a table and writes bench/ca-results.json. Numbers are for the report; nothing is asserted.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import forge from 'node-forge';
import { CaSigner, createCsr, createRootCa, generateKey, type KeyAlgorithm, parseWorkloadCsr, signWorkloadCsr } from '../src/identity/ca.ts';
import { MeshLab, PEER } from '../src/demo/lab.ts';
import { AGENT_NODE_FLAGS, processRunner } from '../src/demo/lab-spec.ts';
import { processPeakRssMiB, processRssMiB } from '../src/demo/process-stats.ts';
import { assertNetnsPrerequisites } from '../src/netns/topology.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const { values: opts } = parseArgs({ options: {
  seconds: { type: 'string', default: '10' },
  concurrency: { type: 'string', default: '16' },
  workloads: { type: 'string', default: '100' },
  out: { type: 'string', default: join(HERE, 'ca-results.json') },
} });
const SECONDS = Number(opts.seconds);
const CONCURRENCY = Number(opts.concurrency);
const WORKLOADS = Number(opts.workloads);
const say = (s: string) => process.stderr.write(`${s}\n`);
const TD = 'bench.local';
const results: Record<string, unknown> = { date: new Date().toISOString(), seconds: SECONDS, concurrency: CONCURRENCY, workloads: WORKLOADS };

// --- sign: in-process, one core -------------------------------------------------------------------
const ALGORITHMS: KeyAlgorithm[] = ['ecdsa-p256', 'rsa-2048'];
const rate = (fn: () => void, ms = 3_000) => {
  const start = performance.now();
  let n = 0;
  while (performance.now() - start < ms) { fn(); n++; }
  return n / ((performance.now() - start) / 1000);
};
const sign: Record<string, unknown> = {};
for (const alg of ALGORITHMS) {
  const root = await createRootCa({ trustDomain: TD, keyAlgorithm: alg });
  const signer = new CaSigner(root);
  const csr = createCsr((await generateKey(alg)).privateKeyPem, `spiffe://${TD}/ns/bench/sa/app`);
  let keys = 0;
  const keyStart = performance.now();
  while (performance.now() - keyStart < 3_000) { await generateKey(alg); keys++; }
  const keysPerSecond = keys / ((performance.now() - keyStart) / 1000);
  const native = rate(() => signer.signWorkload(parseWorkloadCsr(csr, TD), { ttlMs: 3_600_000 }));
  const checkOnly = rate(() => parseWorkloadCsr(csr, TD));
  const entry: Record<string, number> = { keysPerSecond, signedPerSecond: native, csrChecksPerSecond: checkOnly };
  if (alg === 'rsa-2048') {
    const forgeKey = forge.pki.privateKeyFromPem(root.keyPem);
    entry.forgeJsSignedPerSecond = rate(() => {
      const parsed = parseWorkloadCsr(csr, TD);
      const cert = forge.pki.createCertificate();
      cert.publicKey = forge.pki.publicKeyFromPem(parsed.publicKey.export({ type: 'spki', format: 'pem' }).toString());
      cert.serialNumber = '01';
      cert.setSubject([{ name: 'organizationName', value: 'meshlet' }]);
      cert.setIssuer([{ name: 'organizationName', value: 'meshlet' }]);
      cert.sign(forgeKey, forge.md.sha256.create());
      forge.pki.certificateToPem(cert);
    });
  }
  sign[alg] = entry;
  say(`${alg} (one core, in process): ${keysPerSecond.toFixed(0)} keys/s, ${native.toFixed(0)} CSRs checked and signed/s, checks alone ${checkOnly.toFixed(0)}/s` +
    (entry.forgeJsSignedPerSecond ? `, ${entry.forgeJsSignedPerSecond.toFixed(0)}/s with forge's JS RSA` : ''));
}
results.sign = sign;

// --- handshake: mutual TLS 1.3 in process, both ends on one core ---------------------------------
// Each handshake is a new TLS connection on loopback, client and server in this process, with
// certificates from a root of the one kind: the CPU of both ends per handshake, and how many a
// second one core completes (the tunnel's session setup, which pooling makes rare but a restart or
// a burst of new peers makes many of).
for (const alg of ALGORITHMS) {
  const root = await createRootCa({ trustDomain: TD, keyAlgorithm: alg });
  const identity = async (name: string) => {
    const { privateKeyPem } = await generateKey(alg);
    const { certPem } = signWorkloadCsr(root, createCsr(privateKeyPem, `spiffe://${TD}/ns/bench/sa/${name}`), { trustDomain: TD, ttlMs: 3_600_000 });
    return { key: privateKeyPem, cert: certPem, ca: root.certPem, minVersion: 'TLSv1.3' } as const;
  };
  const [serverId, clientId] = [await identity('server'), await identity('client')];
  const clientCtx = tls.createSecureContext(clientId);
  const server = tls.createServer({ ...serverId, requestCert: true, rejectUnauthorized: true }, (s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const once = () => new Promise<void>((resolve, reject) => {
    const c = tls.connect({ host: '127.0.0.1', port, secureContext: clientCtx, rejectUnauthorized: true, checkServerIdentity: () => undefined, minVersion: 'TLSv1.3' }, () => { c.destroy(); resolve(); });
    c.once('error', reject);
  });
  for (let i = 0; i < 50; i++) await once(); // warm
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  let n = 0;
  while (performance.now() - start < 3_000) { await once(); n++; }
  const cpu = process.cpuUsage(cpu0);
  server.close();
  const perSecond = n / ((performance.now() - start) / 1000);
  const cpuMs = (cpu.user + cpu.system) / 1000 / n;
  (results.handshake ??= {} as Record<string, unknown>);
  (results.handshake as Record<string, unknown>)[alg] = { perSecond, cpuMsPerHandshake: cpuMs };
  say(`${alg}: ${perSecond.toFixed(0)} mutual TLS 1.3 handshakes/s in one process, ${cpuMs.toFixed(2)} CPU ms each (both ends)`);
}

await assertNetnsPrerequisites();

// --- ca-service and cold start, in namespaces --------------------------------------------------
const lab = await MeshLab.create({
  trustDomain: TD, identity: 'service', nodes: [{ name: 'node-a', pods: [] }], caArgs: ['--rate', '100000', '--burst', '100000'],
  runner: {
    command: (role, args, labDir) => {
      const own = processRunner.command(role, args, labDir);
      return role === 'ca' ? { cmd: join(labDir, 'node-ca'), args: [...AGENT_NODE_FLAGS, ...own.args] } : own;
    },
  },
});
try {
  await copyFile(process.execPath, join(lab.dir, 'node-ca'));
  const node = lab.node('node-a');
  // Workloads need no namespaces to get certificates: addresses in a range no route uses.
  const workloads = Array.from({ length: WORKLOADS }, (_, i) => ({
    name: `app-${i}`, namespace: 'bench', serviceAccount: `app-${i}`, ip: `10.242.${Math.floor(i / 250)}.${(i % 250) + 1}`, node: 'node-a', captured: true,
  }));
  await lab.writeWorkloads({ trustDomain: TD, nodes: [{ name: 'node-a', ip: node.ip }], workloads });
  await lab.startCa();
  const caPid = lab.ca!.child.pid!;
  // Pin the CA to core 0; the load generator below runs on core 1.
  await new Promise<void>((res) => spawn('taskset', ['-a', '-p', '-c', '0', String(caPid)], { stdio: 'ignore' }).once('exit', () => res()));

  // Idle once its start-up pages are handed back (5 s after it listens); the peak from here on.
  await sleep(10_000);
  const idleMiB = processRssMiB(caPid);
  writeFileSync(`/proc/${caPid}/clear_refs`, '5');
  // Load: CSRs for the node's own workloads with its token, from the node's namespace over the underlay.
  const gen = join(HERE, 'ca-load.ts');
  const r = await lab.topo.exec(node.ns, 'taskset', ['-c', '1', process.execPath, gen, '--url', lab.caUrl, '--token-file', lab.tokenFile('node-a'),
    '--trust-bundle', lab.trustBundleFile, '--seconds', String(SECONDS), '--concurrency', String(CONCURRENCY), '--td', TD]);
  if (r.code !== 0) throw new Error(`ca-load failed: ${r.stderr}`);
  const service = { ...JSON.parse(r.stdout.trim().split('\n').at(-1)!), rssIdleMiB: Math.round(idleMiB), rssPeakLoadedMiB: Math.round(processPeakRssMiB(caPid)), rssAfterMiB: Math.round(processRssMiB(caPid)) };
  results.caService = service;
  say(`ca-service (CA on one core): ${service.perSecond.toFixed(0)} CSRs/s, p50 ${service.p50.toFixed(1)} ms, p99 ${service.p99.toFixed(1)} ms, ${service.errors} errors;` +
    ` RSS idle ${service.rssIdleMiB} MiB, peak under the load ${service.rssPeakLoadedMiB}, after it ${service.rssAfterMiB}`);

  // Cold start: spawn the agent, poll its config_dump until every certificate is available.
  const coldStart = async (identity: 'service' | 'local', alg: KeyAlgorithm): Promise<{ toListeningMs: number; toAllCertsMs: number }> => {
    const started = Date.now();
    const agent = await lab.startAgent(node, ['--log-level', 'warn', '--key-algorithm', alg], { identity });
    let toListeningMs = NaN;
    try {
      for (;;) {
        if (Date.now() - started > 120_000) throw new Error('certificates not ready after 120 s');
        const d = await lab.topo.exec(node.ns, process.execPath, [PEER, 'get', '--url', 'http://127.0.0.1:15000/config_dump']);
        if (d.code === 0) {
          if (Number.isNaN(toListeningMs)) toListeningMs = Date.now() - started;
          const dump = JSON.parse(d.stdout);
          const ready = dump.certificates.filter((c: any) => c.state === 'available').length;
          if (ready === WORKLOADS) return { toListeningMs, toAllCertsMs: Date.now() - started };
        }
        await new Promise((res) => setTimeout(res, 50));
      }
    } finally {
      agent.child.kill('SIGKILL');
      await agent.exited;
    }
  };
  const cold: Record<string, unknown> = {};
  for (const alg of ALGORITHMS) {
    const viaService = await coldStart('service', alg);
    const viaLocal = await coldStart('local', alg);
    cold[alg] = { service: viaService, local: viaLocal };
    say(`cold start, ${WORKLOADS} workloads, ${alg} keys: ${viaService.toAllCertsMs} ms to all certificates via the CA service (admin up after ${viaService.toListeningMs} ms); ${viaLocal.toAllCertsMs} ms with the embedded CA`);
  }
  results.coldStart = cold;
} finally {
  await lab.destroy();
}

writeFileSync(String(opts.out), `${JSON.stringify(results, null, 2)}\n`);
say(`written to ${opts.out}`);
