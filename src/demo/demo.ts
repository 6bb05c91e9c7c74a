// `meshlet demo` (npm start): a local mesh of two nodes and four pods in network namespaces, the CA
// service in a namespace of its own, real capture, real agents, real clients and servers; prints who talked to whom under which identity and
// shows from a packet capture that what crossed between the nodes was TLS. Removes everything after.
import { parseArgs } from 'node:util';
import { PrerequisiteError } from '../errors.ts';
import { tlsRecordTypes } from '../netns/pcap.ts';
import { assertNetnsPrerequisites } from '../netns/topology.ts';
import { runCommand } from '../capture/exec.ts';
import { CLI, MeshLab } from './lab.ts';

const APP_PORT = 8080;
const PAYMENTS_CLUSTER_IP = '10.96.0.10';
const MARKER = 'meshlet-demo-secret-payload ';

interface Flow {
  from: string;
  to: string;
  what: string;
}

const flows: Flow[] = [
  { from: 'frontend', to: 'payments', what: 'captured -> captured, across nodes (mTLS tunnel)' },
  { from: 'frontend', to: 'cart', what: 'captured -> captured, same node (local, same decisions)' },
  { from: 'cart', to: 'legacy', what: 'captured -> outside the mesh (not redirected: from the pod itself, as without a mesh)' },
  { from: 'legacy', to: 'payments', what: 'outside the mesh -> captured (plaintext inbound, permissive)' },
];

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ')).join('\n');
}

export async function runDemo(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { 'keep-logs': { type: 'boolean', default: false } } });
  try {
    await assertNetnsPrerequisites();
  } catch (err) {
    if (err instanceof PrerequisiteError) {
      process.stderr.write(`meshlet demo: ${err.message}\nThe demo builds network namespaces and iptables rules: run it as root on Linux.\n`);
      return 3;
    }
    throw err;
  }
  const say = (s: string) => process.stdout.write(`${s}\n`);
  say('meshlet demo: building 2 nodes, 4 pods and a CA as network namespaces ...');
  const lab = await MeshLab.create({
    trustDomain: 'demo.local',
    identity: 'service',
    dualStack: true,
    nodes: [
      { name: 'node-a', pods: [
        { name: 'frontend', namespace: 'shop', serviceAccount: 'frontend' },
        { name: 'cart', namespace: 'shop', serviceAccount: 'cart' },
      ] },
      { name: 'node-b', pods: [
        { name: 'payments', namespace: 'shop', serviceAccount: 'payments' },
        { name: 'legacy', namespace: 'legacy', serviceAccount: 'legacy', captured: false },
      ] },
    ],
    services: [{ name: 'payments', namespace: 'shop', clusterIP: PAYMENTS_CLUSTER_IP, ports: [{ port: 80, targetPort: APP_PORT }], selector: { app: 'payments' } }],
  });
  let failed = false;
  try {
    for (const n of lab.meshNodes) {
      say(`  ${n.name} ${n.ip}: ${n.pods.map((p) => `${p.name} ${p.ip} ${p.ip6}${lab.pod(p.name).spec.captured === false ? ' (not captured)' : ''}`).join(', ')}`);
    }
    say(`  the CA service (meshlet ca serve) in a namespace of its own at ${lab.caUrl}`);
    say('meshlet init in each node, then one agent per node; agents ask the CA with their node token ...');
    await lab.startMesh();
    for (const l of await lab.caLog()) {
      if (l.msg === 'certificate issued') say(`  CA: issued ${l.spiffeId} to ${l.node} (valid until ${l.notAfter})`);
    }
    for (const p of ['payments', 'cart', 'legacy']) await lab.startServer(p, APP_PORT);

    const capture = await lab.startPacketCapture(lab.node('node-a'));
    say('\nclients connect to servers by pod IP; the applications know nothing of the mesh:');
    const results: string[][] = [['from', 'to', 'result', 'what']];
    for (const f of flows) {
      const r = await lab.client(f.from, { host: lab.pod(f.to).ip, port: APP_PORT, bytes: 256 * 1024, pattern: MARKER, timeoutMs: 15_000 });
      const res = r.results[0];
      if (!r.ok) failed = true;
      results.push([f.from, f.to, r.ok ? `ok, ${res?.received} bytes echoed, sha256 match` : `FAILED (${res?.error ?? 'mismatch'})`, f.what]);
    }
    const segments = await capture.stop();
    say(table(results));

    say('\naccess log (one line per connection, from each agent):');
    const rows: string[][] = [['agent', 'direction', 'route', 'source', 'source identity', 'destination', 'bytes out/in', 'outcome']];
    for (const n of lab.meshNodes) {
      for (const l of await lab.accessLog(n.name)) {
        rows.push([n.name, l.direction, l.route ?? '', l.src?.workload ?? l.src?.ip ?? '', l.src?.principal ?? '(plaintext)',
          `${l.dst?.workload ?? ''} ${l.dst?.addr ?? ''}`.trim(), `${l.bytes_sent}/${l.bytes_received}`, l.outcome]);
      }
    }
    say(table(rows));

    const tunnel = segments.filter((s) => (s.dstPort === 15008 || s.srcPort === 15008) && s.payload.length > 0);
    const plaintextHits = segments.filter((s) => s.payload.includes(MARKER) && s.dstPort !== APP_PORT && s.srcPort !== APP_PORT);
    const crossNodeApp = segments.filter((s) => s.payload.includes(MARKER));
    const types = tlsRecordTypes(tunnel);
    say('\nwhat crossed the wire between the nodes (tcpdump on node-a eth0):');
    say(`  ${tunnel.length} TCP segments with payload on port 15008; TLS record types seen: ${[...types].map((t) => `0x${t.toString(16)}`).join(', ') || 'none'}` +
      ' (0x16 handshake, 0x17 application data)');
    say(`  segments carrying the demo's plaintext payload on port 15008: ${plaintextHits.length}`);
    say(`  segments carrying it in the clear at all: ${crossNodeApp.length} (the flows to and from the non-mesh pod 'legacy' are plain TCP by design)`);
    if (tunnel.length === 0 || plaintextHits.length > 0 || !types.has(0x17)) failed = true;

    say(`\na Service: frontend calls payments by its ClusterIP (${PAYMENTS_CLUSTER_IP}:80); node-a's agent resolves it (no kube-proxy) ...`);
    const viaService = await lab.client('frontend', { host: PAYMENTS_CLUSTER_IP, port: 80, bytes: 4096, timeoutMs: 10_000 });
    const serviceLine = (await lab.accessLog('node-a')).filter((l) => l.dst?.service === 'shop/payments').at(-1);
    if (!viaService.ok || !serviceLine) failed = true;
    say(`  ${viaService.ok ? 'ok' : 'FAILED'}: service ${serviceLine?.dst?.service ?? '?'} -> endpoint ${serviceLine?.dst?.workload ?? '?'} ${serviceLine?.dst?.addr ?? ''}, route ${serviceLine?.route ?? '?'}`);

    say('\nIPv6: the pods are dual-stack and the mesh carries IPv4; the IPv6 guard refuses new IPv6 connections to captured pods ...');
    for (const [to, open] of [['payments', false], ['legacy', true]] as const) {
      const r = await lab.client('frontend', { host: lab.pod(to).ip6 as string, port: APP_PORT, bytes: 1024, timeoutMs: 5_000 });
      const refused = /ECONNREFUSED/.test(r.results[0]?.error ?? '');
      if (open ? !r.ok : !refused) failed = true;
      say(`  frontend -> ${to} [${lab.pod(to).ip6}]:${APP_PORT}: ${r.ok ? 'ok' : refused ? 'refused' : `FAILED (${r.results[0]?.error})`}` +
        (open ? ' (not in the mesh: IPv6 as without one)' : ' (captured: only its IPv4 address is open, through the mesh)'));
    }

    // Policy: an ALLOW policy on payments, applied by rewriting the workloads file (a MeshPolicy
    // object in a cluster); the agents pick it up without a restart.
    const frontendId = `spiffe://${lab.trustDomain}/ns/shop/sa/frontend`;
    say('\npolicy: only frontend may reach payments (MeshPolicy ALLOW shop/payments-clients, added to the workloads file) ...');
    await lab.writeWorkloads({ ...lab.workloadsDocument(), policies: [{
      name: 'payments-clients', namespace: 'shop', selector: { matchLabels: { app: 'payments' } }, action: 'ALLOW',
      rules: [{ from: [{ principals: [frontendId] }], to: [{ ports: [APP_PORT] }] }],
    }] });
    const deadline = Date.now() + 10_000;
    while ((await lab.configDump(lab.node('node-b'))).policy?.policies?.length !== 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const policyRows: string[][] = [['from', 'to', 'result']];
    for (const [from, expectOk] of [['frontend', true], ['cart', false]] as const) {
      const r = await lab.client(from, { host: lab.pod('payments').ip, port: APP_PORT, bytes: 4096, timeoutMs: 10_000 });
      if (r.ok !== expectOk) failed = true;
      policyRows.push([from, 'payments', r.ok ? 'ok' : `refused (${r.results[0]?.error ?? 'reset'})`]);
    }
    say(table(policyRows));
    // Exit 1 means "denied": the output is the answer either way.
    const check = (await runCommand(process.execPath, [CLI, 'policy', 'check', '--from', `spiffe://${lab.trustDomain}/ns/shop/sa/cart`, '--to', `shop/payments:${APP_PORT}`, '--workloads', lab.workloadsFile])).stdout;
    say(`$ meshlet policy check --from spiffe://${lab.trustDomain}/ns/shop/sa/cart --to shop/payments:${APP_PORT} --workloads ...`);
    say(check.trimEnd().split('\n').map((l) => `  ${l}`).join('\n'));
    say('\nnode-b\'s metrics (:15020/metrics), a few lines:');
    const metrics = (await lab.metrics(lab.node('node-b'))).split('\n')
      .filter((l) => l.startsWith('meshlet_policy_decisions_total') || (l.startsWith('meshlet_tcp_connections_opened_total') && l.includes('source_workload="frontend"')));
    say(metrics.map((l) => `  ${l}`).join('\n'));

    say(failed ? '\nmeshlet demo: FAILED' : '\nmeshlet demo: all flows ok; cross-node mesh traffic was TLS only; IPv6 to the captured pod was refused; the policy allowed frontend and refused cart');
  } finally {
    say(values['keep-logs'] ? `agent logs kept in ${lab.dir}` : 'removing namespaces, rules and files ...');
    await lab.destroy({ keepDir: values['keep-logs'] });
  }
  return failed ? 1 : 0;
}
