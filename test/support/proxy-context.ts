// The data path in process, without root: ProxyContexts for tests, and whole nodes of a mesh on
// loopback. Pods are 127.x addresses (every 127/8 address is local on Linux), each node's tunnel
// server listens on its pods' addresses at one shared port, and the original destination that
// capture would have kept (SO_ORIGINAL_DST) is injected: an outbound connection says where it is
// going by the source port it binds.
import { X509Certificate } from 'node:crypto';
import net from 'node:net';
import pino from 'pino';
import { plainIp, type SocketAddress } from '../../src/capture/socket.ts';
import { createRootCa, type RootCa } from '../../src/identity/ca.ts';
import { CertificateManager } from '../../src/identity/certs.ts';
import { createLocalCaProvider } from '../../src/identity/provider.ts';
import { MeshPolicyEngine } from '../../src/policy/engine.ts';
import { EndpointBalancer } from '../../src/proxy/balancer.ts';
import type { ProxyContext } from '../../src/proxy/context.ts';
import { DataPlane } from '../../src/proxy/data-plane.ts';
import { Identities } from '../../src/proxy/identities.ts';
import { OpenRedirects } from '../../src/proxy/redirects.ts';
import type { DataPlaneSettings, DataPlaneSnapshot } from '../../src/proxy/snapshot.ts';
import { TunnelPool } from '../../src/proxy/tunnel/pool.ts';
import { StallWatch } from '../../src/proxy/tunnel/stall-watch.ts';
import { ConnectionTracker } from '../../src/telemetry/connections.ts';
import type { MeshSnapshot } from '../../src/workloads/model.ts';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';
import { WorkloadRegistry } from '../../src/workloads/registry.ts';
import { eventually } from './wait.ts';

const silent = pino({ level: 'silent' });

/** Where a socket accepted straight on a listener was going: the listener itself. */
const localEnd = (s: net.Socket): SocketAddress => ({ ip: plainIp(s.localAddress), port: s.localPort ?? 0, family: 4 });

/** A stall watch that never reads a socket (tests that are not about stalls). */
export function inertStallWatch(): StallWatch {
  return new StallWatch({ stallMs: 30_000, budgetBytes: 1 << 30, intervalMs: 1_000, probe: () => undefined, reset: (s) => s.destroy(), onStall: () => undefined });
}

/**
 * A complete ProxyContext with inert defaults (no limits, no probe gate, no source preservation,
 * no certificates): override what a test is about. Whole data planes: inProcessMesh below.
 */
export function proxyContext(overrides: Partial<ProxyContext> = {}): ProxyContext {
  const stalls = overrides.stalls ?? inertStallWatch();
  const certs = new Identities();
  return {
    registry: new WorkloadRegistry('node-a'),
    originalDestination: localEnd,
    certs,
    policy: new MeshPolicyEngine(),
    pool: overrides.pool ?? new TunnelPool({ tunnelPort: 15008, connectTimeoutMs: 2_000, log: silent, drainMs: 1_000, stalls, secureContextFor: (id) => certs.secureContextFor(id) }),
    stalls,
    balancer: new EndpointBalancer(),
    connections: new ConnectionTracker(silent),
    log: silent,
    tunnelPort: 15008,
    connectTimeoutMs: 2_000,
    handshakeTimeoutMs: 2_000,
    drainMs: 1_000,
    idleTimeoutMs: 0,
    agentPorts: new Set(),
    admit: () => true,
    admitHandshake: () => () => undefined,
    vouchFor: () => undefined,
    admitStream: () => () => undefined,
    preserveSource: false,
    redirects: new OpenRedirects(),
    outsideMesh: 'refuse',
    ...overrides,
  };
}

/** One node's agent, in process: its data plane, and the part of a control plane that feeds it. */
export interface InProcessNode {
  name: string;
  data: DataPlane;
  ctx: ProxyContext;
  /** The node's certificates, published to its data plane as the agent does. */
  certs: CertificateManager;
  /** The node's access-log lines, parsed. */
  access: Array<Record<string, any>>;
  /** Port 15001's stand-in: a connection from `fromIp` to `dst`, as capture would hand it over (still connecting). */
  connect(fromIp: string, dst: { ip: string; port: number }): Promise<net.Socket>;
  /** Port 15006's stand-in: plaintext from `fromIp` (outside the mesh) to `dst`. */
  connectPlaintext(fromIp: string, dst: { ip: string; port: number }): Promise<net.Socket>;
  /** The agent's listener addresses (a connection made straight to one is a self call). */
  outboundAddress: SocketAddress;
}

export interface InProcessMesh {
  nodes: Map<string, InProcessNode>;
  node(name: string): InProcessNode;
  root: RootCa;
  tunnelPort: number;
  /** Publishes a new workloads document to every node, as the agent applies a snapshot. */
  apply(yaml: string): void;
  /** Publishes a mesh snapshot to one node only (agents read a change at different moments). */
  applyOn(node: string, mesh: MeshSnapshot): void;
  close(): Promise<void>;
}

/**
 * Source ports that name an injected original destination, a fresh one per connection: below the
 * kernel's ephemeral range (32768 and up), so no socket of the agent's own ever has one.
 */
const PORTS = { from: 20_000, to: 32_000 };
let nextPort = PORTS.from + Math.floor(Math.random() * (PORTS.to - PORTS.from));

/** A data plane's settings for tests: limits out of reach, the given tunnel port. */
export function testSettings(nodeName: string, tunnelPort: number, overrides: Partial<DataPlaneSettings> = {}): DataPlaneSettings {
  return {
    nodeName, ports: { outbound: 0, inboundPlaintext: 0, tunnel: tunnelPort }, agentPorts: [],
    connectTimeoutMs: 2_000, handshakeTimeoutMs: 2_000, drainMs: 1_000, idleTimeoutMs: 0, preserveSource: false, accessLog: true,
    limits: { maxConnections: 1e6, maxPerSource: 1e6, maxPendingHandshakes: 1e6, maxPendingPerSource: 1e6, handshakeRate: 1e6 },
    tunnelStallTimeoutMs: 30_000, tunnelQueueBudgetBytes: 1 << 30, youngCollectionBytes: 4 << 20,
    ...overrides,
  };
}

/**
 * A root CA of `trustDomain` and one CertificateManager per node, each given the SPIFFE IDs listed
 * for it and holding their certificates when this resolves. The caller closes them.
 */
export async function issuedIdentities(trustDomain: string, ...nodes: string[][]): Promise<CertificateManager[]> {
  const ca = await createRootCa({ trustDomain });
  const roots = { signing: ca, trustDomain, trustBundlePem: ca.certPem, signingFingerprint: new X509Certificate(ca.certPem).fingerprint256 };
  const provider = createLocalCaProvider(roots, { trustDomain: () => trustDomain, ttlMs: 3_600_000 });
  const managers = nodes.map((ids) => {
    const m = new CertificateManager({ provider, log: silent });
    m.reconcile(ids);
    return m;
  });
  await eventually('every certificate', () => managers.every((m, i) => m.allReady && m.states().length === nodes[i]!.length), 20_000);
  return managers;
}

/**
 * Builds every node of `yaml` (a workloads file: its pods must have 127.x addresses) as a DataPlane
 * fed with snapshots, its certificates issued, its tunnel server listening on its pods' addresses,
 * and its 15001 and 15006 stand-ins on 127.0.0.1.
 */
export async function inProcessMesh(yaml: string): Promise<InProcessMesh> {
  const snapshot = parseWorkloadsFile(yaml);
  const root = await createRootCa({ trustDomain: snapshot.trustDomain });
  const roots = { signing: root, trustDomain: snapshot.trustDomain, trustBundlePem: root.certPem, signingFingerprint: new X509Certificate(root.certPem).fingerprint256 };
  const provider = createLocalCaProvider(roots, { trustDomain: () => snapshot.trustDomain, ttlMs: 3_600_000 });
  const servers: net.Server[] = [];
  const listen = (server: net.Server, host: string, port = 0) => new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => { servers.push(server); resolve((server.address() as net.AddressInfo).port); });
  });
  // One tunnel port for every pod address: found free on the first, then taken on the others; each
  // listener hands its sockets to its node's tunnel server.
  let tunnelPort = 0;
  const nodes = new Map<string, InProcessNode>();
  for (const w of snapshot.workloads) {
    const server = net.createServer((s) => {
      const node = nodes.get(w.node);
      if (node) node.data.listeners.tunnel.accept(s); else s.destroy();
    });
    tunnelPort = await listen(server, w.ip, tunnelPort);
  }
  const closers: Array<() => Promise<void>> = [];
  const publishers = new Map<string, (mesh: MeshSnapshot) => void>();
  for (const meshNode of snapshot.nodes) {
    const certs = new CertificateManager({ provider, log: silent, rootChangeSpreadMs: 0 });
    const access: Array<Record<string, any>> = [];
    const log = pino({ level: 'info' }, { write: (line: string) => { const l = JSON.parse(line); if (l.scope === 'access') access.push(l); } });
    const destinations = new Map<number, SocketAddress>();
    const standIns = new Set<number>();
    const data = new DataPlane(testSettings(meshNode.name, tunnelPort), {
      log,
      // On the stand-ins the source port names where the connection was going; a tunnel socket
      // really was addressed to the pod's tunnel port.
      originalDestination: (s) => (standIns.has(s.localPort ?? 0) ? destinations.get(s.remotePort ?? 0) : undefined) ?? localEnd(s),
      stallProbe: { probe: () => undefined, reset: (s) => s.destroy() },
    });
    // The agent's part: a snapshot on every change of the mesh or of a certificate.
    let generation = 0;
    let meshGeneration = 0;
    let mesh: MeshSnapshot | undefined;
    const publish = () => {
      if (mesh) data.apply({ generation: ++generation, meshGeneration, mesh, identities: certs.materials() } satisfies DataPlaneSnapshot);
    };
    certs.on('change', publish);
    publishers.set(meshNode.name, (next) => {
      mesh = next;
      meshGeneration++;
      publish();
      certs.reconcile(data.registry.localCaptured().map((w) => w.spiffeId));
    });
    const outboundPort = await listen(data.listeners.outbound, '127.0.0.1');
    const plaintextPort = await listen(data.listeners.inboundPlaintext, '127.0.0.1');
    standIns.add(outboundPort).add(plaintextPort);
    // The agent's own ports, which a tunnel never reaches: an agent has them in its settings, the
    // stand-ins learn theirs once listening (the context's set is the data plane's own).
    for (const p of [outboundPort, plaintextPort, tunnelPort]) (data.ctx.agentPorts as Set<number>).add(p);
    closers.push(async () => { await data.close(() => 0); certs.close(); });
    // The socket at once, connecting: a refusal resets it so fast (same process) that it may come
    // as a connect error; the caller's handlers see either.
    const dial = (port: number) => async (fromIp: string, dst: { ip: string; port: number }) => {
      const localPort = nextPort++;
      if (nextPort >= PORTS.to) nextPort = PORTS.from;
      destinations.set(localPort, { ...dst, family: 4 });
      const s = net.connect({ host: '127.0.0.1', port, localAddress: fromIp, localPort });
      s.once('close', () => destinations.delete(localPort));
      return s;
    };
    nodes.set(meshNode.name, {
      name: meshNode.name, data, ctx: data.ctx, certs, access,
      connect: dial(outboundPort),
      connectPlaintext: dial(plaintextPort),
      outboundAddress: { ip: '127.0.0.1', port: outboundPort, family: 4 },
    });
  }
  const apply = (next: MeshSnapshot) => { for (const p of publishers.values()) p(next); };
  const mesh: InProcessMesh = {
    nodes, root, tunnelPort,
    node: (name) => {
      const n = nodes.get(name);
      if (!n) throw new Error(`no node ${name}`);
      return n;
    },
    apply: (text) => apply(parseWorkloadsFile(text)),
    applyOn: (node, next) => {
      const p = publishers.get(node);
      if (!p) throw new Error(`no node ${node}`);
      p(next);
    },
    close: async () => {
      await Promise.all(closers.map((c) => c()));
      await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    },
  };
  apply(snapshot);
  for (const n of nodes.values()) {
    await eventually(`${n.name}'s certificates in its data plane`, () => n.data.registry.localCaptured().every((w) => {
      try { n.data.identities.assertAvailable(w.spiffeId); return true; } catch { return false; }
    }), 20_000);
  }
  return mesh;
}

/** Writes `text`, ends, and collects everything until the other side ends (or the socket closes). */
export function exchange(s: net.Socket, text: string): Promise<{ data: string; ended: boolean; error?: string }> {
  return new Promise((resolve) => {
    let data = '';
    let ended = false;
    let error: string | undefined;
    s.on('data', (d: Buffer) => { data += d.toString(); });
    s.on('end', () => { ended = true; });
    s.on('error', (err: NodeJS.ErrnoException) => { error = err.code ?? err.message; });
    s.on('close', () => resolve({ data, ended, ...(error ? { error } : {}) }));
    s.end(text);
  });
}
