import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { defaultWorkers } from '../../src/cpu-limit.ts';
import { loadAgentConfig } from '../../src/config/agent.ts';
import { loadCaInitConfig, loadCaRotateConfig, loadCaServeConfig } from '../../src/config/ca.ts';
import { loadInitConfig } from '../../src/config/capture.ts';
import { parseDuration } from '../../src/config/flags.ts';
import { ConfigError } from '../../src/errors.ts';

const pick = (c: { workers: number; minWorkers: number }) => ({ workers: c.workers, minWorkers: c.minWorkers });

describe('config', () => {
  it('parses durations', () => {
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('20s'), 20_000);
    assert.equal(parseDuration('24h'), 86_400_000);
    assert.equal(parseDuration('1.5m'), 90_000);
    assert.equal(parseDuration('10'), undefined);
    assert.equal(parseDuration('-1s'), undefined);
  });

  it('builds the agent config with defaults', () => {
    const c = loadAgentConfig(['--node', 'n1', '--workloads', 'w.yaml', '--ca-dir', 'ca'], {});
    assert.equal(c.nodeName, 'n1');
    assert.deepEqual(c.identity, { mode: 'local', caDir: 'ca', certTtlMs: 86_400_000 });
    assert.deepEqual(c.ports, { outbound: 15001, inboundPlaintext: 15006, tunnel: 15008, admin: 15000, readiness: 15021, metrics: 15020 });
    assert.equal(c.adminAddress, '127.0.0.1');
    assert.equal(loadAgentConfig(['--workloads', 'w', '--ca-dir', 'c'], { MESHLET_NODE_NAME: 'from-env' }).nodeName, 'from-env');
  });

  it('runs in sidecar mode for one workload, with sidecar capture and the ports it really uses passed', () => {
    const c = loadAgentConfig(['--node', 'n1', '--sidecar', 'shop/web-1', '--workloads', 'w', '--ca-dir', 'c', '--readiness-port', '16021', '--proxy-gid', '2000'], {});
    assert.deepEqual(c.sidecar, { namespace: 'shop', name: 'web-1' });
    assert.equal(c.capture.mode, 'sidecar');
    assert.equal(c.capture.proxyGid, 2000);
    assert.deepEqual(c.capture.passPorts, [15008, 15020, 16021]);
    assert.equal(loadAgentConfig(['--node', 'n1', '--workloads', 'w', '--ca-dir', 'c'], {}).capture.mode, 'node');
    assert.equal(loadInitConfig(['--sidecar']).capture.mode, 'sidecar');
    assert.throws(() => loadAgentConfig(['--node', 'n1', '--sidecar', 'web', '--workloads', 'w', '--ca-dir', 'c'], {}), /--sidecar: "web" is not NAMESPACE\/NAME/);
    assert.throws(() => loadInitConfig(['--sidecar', '--capture-backend', 'nftables']), /iptables only/);
    assert.throws(() => loadInitConfig(['--sidecar', '--proxy-gid', '0']), /--proxy-gid/);
  });

  it('takes workloads from the file or from the Kubernetes API, never both', () => {
    assert.deepEqual(loadAgentConfig(['--node', 'n1', '--workloads', 'w.yaml', '--ca-dir', 'ca'], {}).workloads, { kind: 'file', path: 'w.yaml', pollMs: 500 });
    assert.deepEqual(loadAgentConfig(['--node', 'n1', '--kubernetes', '--ca-dir', 'ca'], {}).workloads, { kind: 'kubernetes', kubeconfig: undefined, trustDomain: 'cluster.local' });
    assert.deepEqual(loadAgentConfig(['--kubeconfig', 'kc', '--trust-domain', 'example.org', '--ca-dir', 'ca'], { NODE_NAME: 'from-downward-api' }),
      { ...loadAgentConfig(['--kubeconfig', 'kc', '--trust-domain', 'example.org', '--ca-dir', 'ca', '--node', 'from-downward-api'], {}) });
    assert.equal(loadAgentConfig(['--kubernetes', '--ca-dir', 'ca'], { NODE_NAME: 'node-7' }).nodeName, 'node-7');
    assert.throws(() => loadAgentConfig(['--node', 'n', '--workloads', 'w', '--kubernetes', '--ca-dir', 'c'], {}), /exclude each other/);
    // Slices, with the pod ranges given where the CNI leaves Nodes' podCIDRs empty.
    const slices = ['--node', 'n1', '--kubernetes', '--ca-dir', 'ca', '--remote-workloads', 'slices'];
    assert.deepEqual(loadAgentConfig([...slices, '--pod-range', '10.244.0.0/16', '--pod-range', '10.45.0.0/16'], {}).workloads,
      { kind: 'kubernetes', kubeconfig: undefined, trustDomain: 'cluster.local', remoteFromSlices: { node: 'n1', namespace: 'meshlet-system', podRanges: ['10.244.0.0/16', '10.45.0.0/16'] } });
    assert.deepEqual(loadAgentConfig(slices, {}).workloads, { kind: 'kubernetes', kubeconfig: undefined, trustDomain: 'cluster.local', remoteFromSlices: { node: 'n1', namespace: 'meshlet-system' } });
    for (const bad of ['10.244.0.0', '10.244.0.0/33', '300.1.0.0/16', 'fd00::/64', '10.0.0.0/8/1']) {
      assert.throws(() => loadAgentConfig([...slices, '--pod-range', bad], {}), new RegExp(`--pod-range: ${bad.replaceAll('.', '\\.')} is not an IPv4 CIDR`));
    }
    assert.throws(() => loadAgentConfig(['--node', 'n1', '--kubernetes', '--ca-dir', 'ca', '--pod-range', '10.0.0.0/8'], {}), /--pod-range only applies with --remote-workloads slices/);
    assert.throws(() => loadAgentConfig(['--node', 'n', '--workloads', 'w', '--trust-domain', 'x.org', '--ca-dir', 'c'], {}), /only applies with --kubernetes/);
    assert.throws(() => loadAgentConfig(['--node', 'n', '--kubernetes', '--trust-domain', 'Not_A_Domain', '--ca-dir', 'c'], {}), /is not a trust domain/);
  });

  it('reports every problem at once', () => {
    assert.throws(() => loadAgentConfig(['--cert-ttl', 'soon', '--admin-port', '99999', '--log-level', 'loud', '--tunnel-port', '15001'], {}),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        const text = err.problems.join('\n');
        for (const re of [/--node/, /--workloads \(or --kubernetes\) is required/, /--ca-dir \(or --ca-url\) is required/, /--cert-ttl: "soon"/, /--admin-port: "99999"/,
          /--log-level: "loud"/, /--tunnel-port 15001 is already --outbound-port's/]) assert.match(text, re);
        return true;
      });
  });

  it('selects the CA service with --ca-url, which needs a token and a trust bundle', () => {
    const c = loadAgentConfig(['--node', 'n1', '--workloads', 'w', '--ca-url', 'https://ca:15012', '--token-file', 't', '--trust-bundle', 'b'], {});
    assert.deepEqual(c.identity, { mode: 'ca-service', url: 'https://ca:15012', tokenFile: 't', trustBundleFile: 'b', bundlePollMs: 30_000, requestTimeoutMs: 10_000 });
    assert.throws(() => loadAgentConfig(['--node', 'n', '--workloads', 'w', '--ca-url', 'http://ca', '--ca-dir', 'd'], {}), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      const text = err.problems.join('\n');
      for (const re of [/exclude each other/, /not an https:\/\/ URL/, /--token-file/, /--trust-bundle/]) assert.match(text, re);
      return true;
    });
    assert.throws(() => loadAgentConfig(['--node', 'n', '--workloads', 'w', '--ca-dir', 'd', '--token-file', 't'], {}), /only applies with --ca-url/);
  });

  it('builds the CA service config and lists its problems', () => {
    const c = loadCaServeConfig(['--ca-dir', 'd', '--tokens', 't', '--workloads', 'w', '--san', 'ca.example,10.0.0.1', '--san', 'other'], {});
    assert.equal(c.port, 15012);
    assert.equal(c.certTtlMs, 86_400_000);
    assert.deepEqual(c.servingNames, ['ca.example', '10.0.0.1', 'other']);
    assert.throws(() => loadCaServeConfig(['--rate', '0', '--max-body', 'lots', '--san', 'bad name'], {}), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      const text = err.problems.join('\n');
      for (const re of [/--ca-dir \(or --kubernetes\) is required/, /--tokens is required/, /--workloads is required/, /--rate: "0"/, /--max-body: "lots"/, /--san: "bad name"/]) assert.match(text, re);
      return true;
    });
  });

  it('selects the Kubernetes backend for the CA, which excludes the local files', () => {
    const c = loadCaServeConfig(['--kubernetes', '--kubeconfig', 'kc'], {});
    assert.deepEqual(c.backend, { kind: 'kubernetes', kubeconfig: 'kc', namespace: 'meshlet-system', agentServiceAccount: 'meshlet-agent', rootSecret: 'meshlet-ca-root', bundleConfigMap: 'meshlet-trust-bundle' });
    assert.throws(() => loadCaServeConfig(['--kubernetes', '--ca-dir', 'd', '--namespace', 'Bad_NS'], {}), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.problems.join('\n'), /--ca-dir does not apply with --kubernetes/);
      assert.match(err.problems.join('\n'), /--namespace: "Bad_NS"/);
      return true;
    });
    assert.deepEqual(loadCaRotateConfig(['activate', '--ca-dir', 'd']), { step: 'activate', backend: { kind: 'local', caDir: 'd', tokensFile: '', workloadsFile: '' } });
    assert.throws(() => loadCaRotateConfig(['sideways', '--ca-dir', 'd']), /prepare\|activate\|finish/);
  });

  it('refuses chains, sets and ports that are not meshlet\'s own: init would rewrite them and --cleanup delete them', () => {
    const problems = (argv: string[]) => {
      try { loadInitConfig(argv); return []; } catch (err) { return (err as ConfigError).problems; }
    };
    // kube-proxy's chain, a built-in chain, another of meshlet's chains, another's set.
    assert.match(problems(['--chain', 'KUBE-SERVICES']).join('\n'), /--chain: "KUBE-SERVICES" is not meshlet's own chain/);
    assert.match(problems(['--gate-chain', 'OUTPUT']).join('\n'), /--gate-chain: "OUTPUT" is not meshlet's own chain/);
    assert.match(problems(['--chain', 'MESHLET_ANTISPOOF']).join('\n'), /one of meshlet's other chains/);
    assert.match(problems(['--chain', 'MESHLET_X', '--gate-chain', 'MESHLET_X']).join('\n'), /--chain and --gate-chain must differ/);
    assert.match(problems(['--ipset', 'KUBE-NODE-PORT-TCP']).join('\n'), /--ipset: "KUBE-NODE-PORT-TCP" is not meshlet's own set/);
    assert.match(problems(['--gate-ipset', 'meshlet-strict']).join('\n'), /STRICT pods set/);
    // A redirect onto the tunnel port, or onto the agent's metrics port.
    assert.deepEqual(problems(['--outbound-port', '15008']), ['--tunnel-port 15008 is already --outbound-port\'s']);
    assert.deepEqual(problems(['--inbound-port', '15020']), ['the metrics port 15020 is already --inbound-port\'s']);
    assert.deepEqual(problems(['--chain', 'MESHLET_CUSTOM', '--ipset', 'meshlet-a', '--outbound-port', '16001']), []);
    // The agent checks its own listeners in the same pass: each of the six ports once.
    const base = ['--node', 'n1', '--workloads', 'w', '--ca-dir', 'c'];
    assert.throws(() => loadAgentConfig([...base, '--admin-port', '15001'], {}), (err: unknown) =>
      err instanceof ConfigError && err.problems.join() === '--admin-port 15001 is already --outbound-port\'s');
    assert.doesNotThrow(() => loadAgentConfig([...base, '--metrics-port', '16020', '--outbound-port', '15020'], {}), 'the metrics port moved: 15020 is free');
  });

  it('turns unknown flags into a ConfigError', () => {
    assert.throws(() => loadAgentConfig(['--bogus'], {}), ConfigError);
    assert.throws(() => loadInitConfig(['--chain', 'lower-case']), /--chain/);
    assert.deepEqual(loadInitConfig(['--dry-run']).dryRun, true);
  });

  it('takes the heap headroom in MiB, 0 to leave V8 alone', () => {
    const base = ['--node', 'n1', '--workloads', 'w', '--ca-dir', 'c'];
    assert.equal(loadAgentConfig(base, {}).heapHeadroomMiB, 8);
    assert.equal(loadAgentConfig([...base, '--heap-headroom', '0'], {}).heapHeadroomMiB, 0);
    assert.throws(() => loadAgentConfig([...base, '--heap-headroom', '32MiB'], {}), /--heap-headroom/);
  });

  it('takes the tunnel data between young collections in MiB, 0 for never', () => {
    const base = ['--node', 'n1', '--workloads', 'w', '--ca-dir', 'c'];
    assert.equal(loadAgentConfig(base, {}).youngCollectionMiB, 4);
    assert.equal(loadAgentConfig([...base, '--young-collection', '0'], {}).youngCollectionMiB, 0);
    assert.throws(() => loadAgentConfig([...base, '--young-collection', '-1'], {}), /--young-collection/);
  });

  it('hands the start-up pages back unless told not to, agent and CA', () => {
    const base = ['--node', 'n1', '--workloads', 'w', '--ca-dir', 'c'];
    assert.equal(loadAgentConfig(base, {}).releaseStartupPages, true);
    assert.equal(loadAgentConfig([...base, '--release-startup-pages', 'off'], {}).releaseStartupPages, false);
    const ca = ['--ca-dir', 'd', '--tokens', 't', '--workloads', 'w'];
    assert.equal(loadCaServeConfig(ca, {}).releaseStartupPages, true);
    assert.equal(loadCaServeConfig([...ca, '--release-startup-pages=off'], {}).releaseStartupPages, false);
  });

  it('takes the key algorithm for workloads, a new root and a rotation, ECDSA by default', () => {
    const base = ['--node', 'n1', '--workloads', 'w', '--ca-dir', 'c'];
    assert.equal(loadAgentConfig(base, {}).keyAlgorithm, 'ecdsa-p256');
    assert.equal(loadAgentConfig([...base, '--key-algorithm', 'rsa-2048'], {}).keyAlgorithm, 'rsa-2048');
    assert.throws(() => loadAgentConfig([...base, '--key-algorithm', 'rsa-1024'], {}), /--key-algorithm/);
    assert.equal(loadCaInitConfig(['--out', 'd']).keyAlgorithm, 'ecdsa-p256');
    assert.equal(loadCaRotateConfig(['prepare', '--ca-dir', 'd', '--key-algorithm', 'rsa-2048']).keyAlgorithm, 'rsa-2048');
    assert.equal(loadCaRotateConfig(['prepare', '--ca-dir', 'd']).keyAlgorithm, undefined, 'the current root\'s kind');
    assert.throws(() => loadCaRotateConfig(['activate', '--ca-dir', 'd', '--key-algorithm', 'rsa-2048']), /only `prepare` makes a root/);
  });

  it('takes --workers from 1 to 64, defaults it from the CPUs, and gives a sidecar one', () => {
    const base = ['--node', 'n1', '--workloads', 'w', '--ca-dir', 'c'];
    assert.equal(loadAgentConfig([...base, '--workers', '3'], {}).workers, 3);
    assert.equal(loadAgentConfig(base, {}).workers, defaultWorkers());
    assert.equal(loadAgentConfig([...base, '--sidecar', 'shop/web'], {}).workers, 1);
    assert.throws(() => loadAgentConfig([...base, '--workers', '0'], {}), /--workers/);
    assert.throws(() => loadAgentConfig([...base, '--workers', 'auto'], {}), /--workers/);
  });

  it('starts one data plane unless --min-workers says more, never more than --workers', () => {
    const base = ['--node', 'n1', '--workloads', 'w', '--ca-dir', 'c'];
    assert.equal(loadAgentConfig([...base, '--workers', '4'], {}).minWorkers, 1);
    assert.deepEqual(pick(loadAgentConfig([...base, '--workers', '4', '--min-workers', '4'], {})), { workers: 4, minWorkers: 4 });
    assert.throws(() => loadAgentConfig([...base, '--workers', '2', '--min-workers', '3'], {}), /--min-workers 3 is more than --workers 2/);
    // Without --workers, the default from the CPUs rises to the minimum asked for.
    assert.equal(loadAgentConfig([...base, '--min-workers', '64'], {}).workers, 64);
    assert.deepEqual(pick(loadAgentConfig([...base, '--sidecar', 'shop/web', '--min-workers', '3'], {})), { workers: 1, minWorkers: 1 });
  });

  it('takes the delivery source ports below the pods\' ephemeral range by default, a wide unprivileged range only', () => {
    const base = ['--node', 'n1', '--workloads', 'w', '--ca-dir', 'c'];
    assert.deepEqual(loadAgentConfig(base, {}).sourcePorts, [1024, 32767]);
    assert.deepEqual(loadAgentConfig([...base, '--source-ports', '61000-65535'], {}).sourcePorts, [61000, 65535]);
    for (const bad of ['80-20000', '40000-30000', '60000-70000', '30000-30100', '1024', 'a-b']) {
      assert.throws(() => loadAgentConfig([...base, '--source-ports', bad], {}), /--source-ports/, bad);
    }
  });

  it('takes the tunnel port\'s handshake limits and the non-TCP option, with safe defaults', () => {
    const base = ['--node', 'n1', '--workloads', 'w', '--ca-dir', 'c'];
    const d = loadAgentConfig(base, {});
    assert.deepEqual([d.maxPendingHandshakes, d.maxPendingHandshakesPerSource, d.handshakeRate, d.nonTcpToStrict], [1024, 64, 200, 'allow']);
    const set = loadAgentConfig([...base, '--max-pending-handshakes', '10', '--max-pending-handshakes-per-source', '2', '--handshake-rate', '5', '--non-tcp-to-strict', 'drop'], {});
    assert.deepEqual([set.maxPendingHandshakes, set.maxPendingHandshakesPerSource, set.handshakeRate, set.nonTcpToStrict], [10, 2, 5, 'drop']);
    assert.throws(() => loadAgentConfig([...base, '--non-tcp-to-strict', 'block', '--handshake-rate', '0'], {}),
      (err: Error) => /--non-tcp-to-strict: "block" is not one of allow, drop/.test(err.message) && /--handshake-rate/.test(err.message));
  });

  it('takes the IPv6 guard\'s and the destinations\' set names, which must differ from the others', () => {
    assert.equal(loadInitConfig([]).capture.ipset6, 'meshlet-captured6');
    assert.equal(loadInitConfig(['--ipset6', 'meshlet-guard6']).capture.ipset6, 'meshlet-guard6');
    assert.throws(() => loadInitConfig(['--ipset6', 'meshlet-captured']), /--ipset and --ipset6 must differ/);
    assert.throws(() => loadInitConfig(['--gate-ipset', 'meshlet-captured6']), /--gate-ipset and --ipset6 must differ/);
    assert.throws(() => loadInitConfig(['--ipset6', 'bad name']), /--ipset6/);
    assert.equal(loadInitConfig([]).capture.destinationsIpset, 'meshlet-destinations');
    assert.throws(() => loadInitConfig(['--destinations-ipset', 'meshlet-captured']), /--ipset and --destinations-ipset must differ/);
  });
});
