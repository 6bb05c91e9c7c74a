// Services end to end: a client in a captured pod calls a ClusterIP whose three endpoints run on two
// nodes. The agent resolves it (no kube-proxy involved): connections spread over the endpoints,
// every cross-node byte is in the tunnel, a stopped endpoint costs no client connection (retried
// before any byte) and is ejected, endpoint changes apply within a second, and with a stand-in for
// kube-proxy's Service chain jumped to ahead of meshlet's, the agent puts capture first again and
// the ClusterIP stays meshed.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { MeshLab } from '../../src/demo/lab.ts';
import { parseMetrics, sum } from '../support/prometheus.ts';
import { eventually } from '../support/wait.ts';

const CLUSTER_IP = '10.96.0.10';
const SERVICE_PORT = 80;
const TARGET_PORT = 8080;
const MARKER = 'service-plaintext-marker';

describe('Services in network namespaces', { concurrency: false }, () => {
  let lab: MeshLab;
  const servers = new Map<string, ChildProcess>();
  const service = { name: 'api', namespace: 'shop', clusterIP: CLUSTER_IP, ports: [{ name: 'http', port: SERVICE_PORT, targetPort: 'http' }], selector: { app: 'api' } };
  const apiPod = (name: string) => ({ name, namespace: 'shop', serviceAccount: 'api', labels: { app: 'api' }, ports: [{ name: 'http', port: TARGET_PORT }] });

  before(async () => {
    lab = await MeshLab.create({
      nodes: [
        { name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }, apiPod('api-1')] },
        { name: 'node-b', pods: [apiPod('api-2'), apiPod('api-3')] },
      ],
      services: [service],
    });
    try {
      await lab.startMesh();
      for (const name of ['api-1', 'api-2', 'api-3']) servers.set(name, await lab.startServer(name, TARGET_PORT));
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  /** Which endpoint (pod name) carried each of node-a's access-log lines for the Service since `from`. */
  async function endpointsUsed(from: number): Promise<Map<string, number>> {
    const byIp = new Map([...['api-1', 'api-2', 'api-3']].map((n) => [lab.pod(n).ip, n]));
    const used = new Map<string, number>();
    for (const l of (await lab.accessLog('node-a')).slice(from)) {
      if (l.dst?.service !== 'shop/api' || l.outcome !== 'ok') continue;
      const pod = byIp.get(String(l.dst.addr).split(':')[0] ?? '') ?? `? ${l.dst.addr}`;
      used.set(pod, (used.get(pod) ?? 0) + 1);
    }
    return used;
  }
  const logLength = async () => (await lab.accessLog('node-a')).length;
  const call = (connections: number, pattern?: string, together = false) =>
    lab.client('web', { host: CLUSTER_IP, port: SERVICE_PORT, bytes: 4096, connections, timeoutMs: 10_000, together, ...(pattern ? { pattern } : {}) });

  it('spreads connections to the ClusterIP over the endpoints on both nodes, with every cross-node byte in the tunnel', async () => {
    const from = await logLength();
    // All 30 stay open until every one has its echo, so each choice sees the others.
    const { result: r, segments } = await lab.capturing(lab.node('node-a'), () => call(30, MARKER, true));
    assert.ok(r.ok, JSON.stringify(r.results.filter((x) => !x.ok)));
    assert.equal(segments.filter((s) => s.payload.includes(MARKER)).length, 0, 'the payload crossed the node link in the clear');
    assert.ok(segments.some((s) => s.dstPort === 15008 && s.payload.length > 0), `cross-node connections went through the tunnel: ${JSON.stringify([...new Set(segments.map((s) => `${s.dst}:${s.dstPort}`))])}`);
    const used = await eventually('30 access-log lines', async () => { const u = await endpointsUsed(from); return [...u.values()].reduce((a, b) => a + b, 0) >= 30 && u; });
    assert.deepEqual([...used.keys()].sort(), ['api-1', 'api-2', 'api-3']);
    // 30 connections held at once, power of two choices on open connections: close to 10 each.
    for (const [pod, n] of used) assert.ok(n >= 6, `${pod} got only ${n} of 30: ${JSON.stringify([...used])}`);
    const m = parseMetrics(await lab.metrics(lab.node('node-a')));
    assert.ok(sum(m, 'meshlet_tcp_connections_opened_total', { destination_service_name: 'api', destination_service_namespace: 'shop', reporter: 'source' }) >= 30);
  });

  it('keeps the ClusterIP meshed when a kube-proxy stand-in puts its Service chain ahead of meshlet\'s', async () => {
    const node = lab.node('node-a');
    const save = async () => (await lab.topo.exec(node.ns, 'iptables-save', ['-t', 'nat'])).stdout;
    // The agent reads its rules back every few seconds: it may repair them before this test reads them.
    const logFrom = (await lab.agentLog('node-a')).length;
    const repaired = async () => (await lab.agentLog('node-a')).slice(logFrom).some((l) => /capture rules had changed/.test(l.msg));
    // kube-proxy (iptables mode) as it writes a ClusterIP: KUBE-SERVICES -> KUBE-SVC -> KUBE-SEP DNAT,
    // and its jump prepended to PREROUTING and OUTPUT. Here it sends the ClusterIP to api-2 (node-b)
    // in plaintext, which is what would cross the wire if it came first.
    const r = await lab.topo.exec(node.ns, 'iptables-restore', ['--noflush'], [
      '*nat', ':KUBE-SERVICES - [0:0]', ':KUBE-SVC-API - [0:0]', ':KUBE-SEP-API2 - [0:0]',
      `-A KUBE-SERVICES -d ${CLUSTER_IP}/32 -p tcp -m comment --comment "shop/api:http cluster IP" -m tcp --dport ${SERVICE_PORT} -j KUBE-SVC-API`,
      '-A KUBE-SVC-API -j KUBE-SEP-API2',
      `-A KUBE-SEP-API2 -p tcp -m tcp -j DNAT --to-destination ${lab.pod('api-2').ip}:${TARGET_PORT}`,
      '-I PREROUTING 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
      '-I OUTPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
      'COMMIT', '',
    ].join('\n'));
    assert.equal(r.code, 0, r.stderr);
    const first = (await save()).split('\n').find((l) => l.startsWith('-A PREROUTING')) ?? '';
    assert.ok(/KUBE-SERVICES/.test(first) || await repaired(), `the stand-in came first (or was already repaired): ${first}`);
    await eventually('the agent repaired the order', async () =>
      await repaired() && (await save()).split('\n').find((l) => l.startsWith('-A PREROUTING')) === '-A PREROUTING -j MESHLET_PREROUTING', 15_000, 200);
    const lines = (await save()).split('\n');
    assert.ok(lines.includes('-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'), 'kube-proxy\'s own rules are left in place');

    const from = await logLength();
    const { result: c, segments } = await lab.capturing(node, () => call(12, MARKER));
    assert.ok(c.ok, JSON.stringify(c.results.filter((x) => !x.ok)));
    assert.equal(segments.filter((s) => s.payload.includes(MARKER)).length, 0, 'kube-proxy\'s DNAT sent the ClusterIP around the mesh');
    const used = await eventually('12 meshed connections', async () => { const u = await endpointsUsed(from); return [...u.values()].reduce((a, b) => a + b, 0) >= 12 && u; });
    assert.ok(used.size >= 2, `the agent balanced, not kube-proxy's single endpoint: ${JSON.stringify([...used])}`);
  });

  it('retries a stopped endpoint\'s connections on the others before any byte, and ejects it', async () => {
    servers.get('api-3')!.kill('SIGKILL');
    const from = await logLength();
    const r = await call(30);
    assert.ok(r.ok, `client connections failed: ${JSON.stringify(r.results.filter((x) => !x.ok))}`);
    const used = await endpointsUsed(from);
    assert.equal(used.get('api-3'), undefined);
    const lines = (await lab.accessLog('node-a')).slice(from);
    assert.ok(lines.some((l) => l.attempts === 2 && l.outcome === 'ok'), 'some connections needed a second endpoint');
    await eventually('api-3 ejected', async () => (await lab.agentLog('node-a')).some((l) => l.msg === 'service endpoint ejected after consecutive failures' && l.endpoint === lab.pod('api-3').ip), 5_000);
    const dump = await lab.configDump(lab.node('node-a'));
    const api3 = dump.services.find((s: any) => s.name === 'api').endpoints.find((e: any) => e.ip === lab.pod('api-3').ip);
    assert.ok(api3.ejectedUntil, JSON.stringify(api3));
    assert.match(api3.lastError, /502|upstream_connect|refused/i);
    const m = parseMetrics(await lab.metrics(lab.node('node-a')));
    assert.ok(sum(m, 'meshlet_service_endpoint_ejections_total', { service_name: 'api', service_namespace: 'shop' }) >= 1);
    assert.equal(sum(m, 'meshlet_service_endpoints_ejected', { service_name: 'api' }), 1);
    // While it is out, new connections do not even try it.
    const from2 = await logLength();
    assert.ok((await call(10)).ok);
    assert.ok(!(await lab.accessLog('node-a')).slice(from2).some((l) => (l.attempts ?? 1) > 1), 'an ejected endpoint is not tried');
  });

  it('applies endpoint changes at the next poll of the workloads file', async (t) => {
    const doc = lab.workloadsDocument() as { services: object[] };
    const written = Date.now();
    await lab.writeWorkloads({ ...doc, services: [{ ...service, selector: undefined, endpoints: ['api-1'] }] });
    await eventually('node-a sees one endpoint', async () =>
      (await lab.configDump(lab.node('node-a'))).services.find((s: any) => s.name === 'api').endpoints.length === 1, 5_000, 50);
    // When the agent applied it, by its own clock (a config dump spawns a process: the poll's own
    // cost is no part of it). The file is polled every 500 ms; the margin is for a busy machine.
    const applied = (await lab.agentLog('node-a')).find((l) => l.msg === 'registry updated' && Date.parse(l.time) >= written);
    assert.ok(applied, 'no registry update logged after the write');
    const tookMs = Date.parse(applied.time) - written;
    t.diagnostic(`applied ${tookMs} ms after the write`);
    assert.ok(tookMs < 2_000, `took ${tookMs} ms`);
    const from = await logLength();
    assert.ok((await call(10)).ok);
    assert.deepEqual([...(await endpointsUsed(from)).keys()], ['api-1']);
  });
});

// kube-proxy in nftables mode translates Services in a table of its own at the dstnat priority,
// the same as iptables' nat PREROUTING: with iptables capture, which runs first would depend on
// which registered first. meshlet's nftables backend hooks at dstnat - 10. The stand-in's table is
// made after meshlet's (kube-proxy restarted), the order in which equal priorities lose.
describe('Services with kube-proxy in nftables mode', { concurrency: false }, () => {
  let lab: MeshLab;
  const apiPod = (name: string) => ({ name, namespace: 'shop', serviceAccount: 'api', labels: { app: 'api' } });
  const nft = async (node: string, args: string[], input?: string) => {
    const r = await lab.topo.exec(lab.node(node).ns, 'nft', args, input);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout;
  };

  before(async () => {
    lab = await MeshLab.create({
      captureBackend: 'nftables',
      nodes: [{ name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }, apiPod('api-1')] }, { name: 'node-b', pods: [apiPod('api-2')] }],
      services: [{ name: 'api', namespace: 'shop', clusterIP: CLUSTER_IP, ports: [{ name: 'http', port: SERVICE_PORT, targetPort: TARGET_PORT }], selector: { app: 'api' } }],
    });
    try {
      await lab.startMesh();
      // kube-proxy (re)started after meshlet's init: its chain is registered last. Between base
      // chains of equal priority that order decides, and the later one ran first in a check here
      // (iptables capture then lost); only a lower priority keeps meshlet's REDIRECT first.
      await nft('node-a', ['-f', '-'], [
        'table ip kube-proxy {',
        '  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }',
        '  chain nat-output { type nat hook output priority -100; policy accept; jump services; }',
        `  chain services { ip daddr ${CLUSTER_IP} tcp dport ${SERVICE_PORT} jump service-api; }`,
        `  chain service-api { meta l4proto tcp dnat to ${lab.pod('api-2').ip}:${TARGET_PORT}; }`,
        '}', '',
      ].join('\n'));
      for (const name of ['api-1', 'api-2']) await lab.startServer(name, TARGET_PORT);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  it('meshes the ClusterIP ahead of kube-proxy\'s DNAT, and gates probes with the nftables set', async () => {
    const from = (await lab.accessLog('node-a')).length;
    const { result: r, segments } = await lab.capturing(lab.node('node-a'),
      () => lab.client('web', { host: CLUSTER_IP, port: SERVICE_PORT, bytes: 4096, connections: 12, timeoutMs: 10_000, pattern: MARKER }));
    assert.ok(r.ok, JSON.stringify(r.results.filter((x) => !x.ok)));
    assert.equal(segments.filter((s) => s.payload.includes(MARKER)).length, 0, 'kube-proxy\'s DNAT sent the ClusterIP around the mesh');
    const lines = await eventually('12 access-log lines', async () => {
      const l = (await lab.accessLog('node-a')).slice(from).filter((x) => x.dst?.service === 'shop/api' && x.outcome === 'ok');
      return l.length >= 12 && l;
    });
    assert.ok(lines.some((l) => l.route === 'local') && lines.some((l) => l.route === 'tunnel'), 'both endpoints, chosen by the agent');
    // The probe gate lives in meshlet's table too: the node's captured pods are vouched for.
    const vouched = await nft('node-a', ['-j', 'list', 'set', 'ip', 'meshlet', 'meshlet-vouched']);
    for (const pod of ['web', 'api-1']) assert.ok(vouched.includes(`"${lab.pod(pod).ip}"`), `${pod} not vouched: ${vouched}`);
    const captured = await nft('node-a', ['-j', 'list', 'set', 'ip', 'meshlet', 'meshlet-captured']);
    assert.ok(captured.includes(`"${lab.pod('web').ip}"`));
  });

  it('removes its own table on cleanup and leaves kube-proxy\'s', async () => {
    for (const node of lab.meshNodes) assert.equal(await lab.stopAgent(node.name), 0);
    await lab.meshlet(['init', '--cleanup', ...lab.captureArgs], lab.node('node-a').ns);
    const tables = await nft('node-a', ['list', 'tables']);
    assert.match(tables, /table ip kube-proxy/);
    assert.doesNotMatch(tables, /table ip meshlet/);
  });
});
