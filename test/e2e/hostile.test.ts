// Hostile input against the tunnel port (it faces the network) and the plaintext port: each attack
// from test/support/hostile.ts, run from another node's namespace, gets a clean refusal, a log line
// with its typed error and a counter; afterwards the same agent process still serves promptly.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MeshLab } from '../../src/demo/lab.ts';
import { h2Settings } from '../../src/proxy/tunnel/h2.ts';
import { parseMetrics, sum } from '../support/prometheus.ts';
import { eventually } from '../support/wait.ts';

const PORT = 8080;
const HOSTILE = join(import.meta.dirname, '../support/hostile.ts');

describe('hostile input in network namespaces', { concurrency: false }, () => {
  let lab: MeshLab;
  let pid: number | undefined;

  before(async () => {
    lab = await MeshLab.create({
      agentArgs: ['--handshake-timeout', '1s', '--max-connections-per-source', '50', '--max-pending-handshakes-per-source', '50', '--drain', '2s'],
      nodes: [
        { name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }] },
        { name: 'node-b', pods: [{ name: 'db', namespace: 'shop' }, { name: 'vault', namespace: 'shop' }] },
      ],
    });
    try {
      await lab.startMesh();
      await lab.startServer('db', PORT);
      pid = lab.agents.get('node-b')!.child.pid;
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  /** Runs one attack from node-a's namespace against db's tunnel port (node-b's agent answers). */
  const attack = async (name: string, extra: string[] = []) => {
    const r = await lab.topo.exec(lab.node('node-a').ns, process.execPath, [HOSTILE, '--attack', name, '--target', lab.pod('db').ip, '--ca-dir', lab.caDir, ...extra]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.trim(), `${name} printed no result: ${r.stderr}`);
    return JSON.parse(r.stdout);
  };
  const refusals = async (error: string) => sum(parseMetrics(await lab.metrics(lab.node('node-b'))), 'meshlet_connections_refused_total', { error });
  const logged = (msg: string, err: string) => eventually(`"${msg}" (${err}) in node-b's log`, async () =>
    (await lab.agentLog('node-b')).find((l) => l.msg === msg && l.err === err), 5_000);

  /** Asserts one attack bumps a refusal counter and leaves a typed log line. */
  async function refused(name: string, errors: string[], msgs: string[], check: (r: any) => void = () => {}, extra: string[] = []): Promise<any> {
    const before = await Promise.all(errors.map(refusals));
    const r = await attack(name, extra);
    check(r);
    await eventually(`${name} counted as ${errors.join(' or ')}`, async () => (await Promise.all(errors.map(refusals))).some((n, i) => n > before[i]!), 5_000);
    const lines = await lab.agentLog('node-b');
    assert.ok(lines.some((l) => msgs.includes(l.msg) && errors.includes(l.err)), `no typed log line for ${name}`);
    return r;
  }

  it('closes a connection that is not TLS, and never answers it in plaintext', async () => {
    await refused('not-tls', ['tls_handshake'], ['tunnel handshake refused'], (r) => assert.equal(r.answeredInPlaintext, false));
  });

  it('refuses TLS without a client certificate, from another trust domain, or expired', async () => {
    for (const name of ['no-client-cert', 'foreign-trust-domain', 'expired-cert']) {
      await refused(name, ['tls_handshake'], ['tunnel handshake refused'], (r) => assert.notEqual(r.outcome, 'no answer within 20 s', name));
    }
  });

  it('refuses a peer that does not speak h2', async () => {
    await refused('wrong-alpn', ['tls_handshake', 'peer_identity'], ['tunnel handshake refused', 'tunnel peer did not negotiate h2']);
  });

  it('times out a handshake that never starts', async () => {
    const r = await refused('slow-handshake', ['tls_handshake'], ['tunnel handshake refused']);
    assert.equal(r.outcome, 'closed by the agent');
    assert.ok(r.ms >= 900 && r.ms < 5_000, `closed after ${r.ms} ms with --handshake-timeout 1s`);
  });

  it('ends a session that sends malformed HTTP/2', async () => {
    const r = await refused('malformed-h2', ['h2_protocol'], ['tunnel session broke the protocol']);
    assert.notEqual(r.outcome, 'no answer within 20 s');
  });

  it('ends a session when its client certificate expires: GOAWAY at expiry, no CONNECT after, open streams reset after the drain', async (t) => {
    const r = await attack('expiring-session', ['--count', '3000']);
    t.diagnostic(JSON.stringify(r));
    assert.equal(r.first, '200', 'the certificate was valid for the first CONNECT');
    assert.doesNotMatch(r.second, /^200/, 'a CONNECT after the certificate expired was accepted');
    // Certificates carry whole seconds; the agent's timer is coarse too: a generous margin.
    assert.ok(r.goawayAfterExpiryMs !== null && r.goawayAfterExpiryMs >= -1_000 && r.goawayAfterExpiryMs < 1_500, `GOAWAY ${r.goawayAfterExpiryMs} ms after expiry`);
    assert.ok(r.openStreamClosedAfterExpiryMs !== null && r.openStreamClosedAfterExpiryMs < 2_000 + 3_000, `open stream closed ${r.openStreamClosedAfterExpiryMs} ms after expiry (drain 2 s)`);
  });

  it('is no open relay: CONNECT to another address, or to the agent\'s own ports, is refused', async () => {
    const elsewhere = await attack('connect-elsewhere', ['--expect', `${lab.pod('vault').ip}:${PORT}`]);
    assert.equal(elsewhere.status, '403 bad_tunnel_target');
    const own = await attack('connect-agent-port');
    assert.equal(own.status, '403 bad_tunnel_target');
    const access = await lab.accessLog('node-b');
    assert.ok(access.some((l) => l.error === 'bad_tunnel_target' && /only .* is reachable through this tunnel/.test(l.reason)));
    assert.ok(access.some((l) => l.error === 'bad_tunnel_target' && /one of the agent's own ports/.test(l.reason)));
    assert.ok(await refusals('bad_tunnel_target') >= 2);
  });

  // Whether the 200 KB header block is stopped by the client library or by the agent, the CONNECT
  // is never served; the last test checks the agent came through unharmed.
  it('does not serve a CONNECT with 200 KB of headers', async () => {
    const r = await attack('oversized-headers');
    assert.doesNotMatch(r.status, /^200/);
  });

  // The lab allows 50 connections per source: a tunnel peer's streams are connections of its
  // identity (each holds an upstream socket), so a burst on one session is capped like a flood of sockets.
  it('advertises a stream limit, and serves a burst of streams on one session up to the per-source limit', async () => {
    const r = await refused('stream-flood', ['connection_limit'], ['tunnel stream refused by the connection limits'], (x) => {
      assert.equal(x.remoteMaxStreams, h2Settings.maxConcurrentStreams, 'the agent advertises SETTINGS_MAX_CONCURRENT_STREAMS');
    }, ['--count', '100']);
    assert.deepEqual(r.byStatus, { 200: 50, '503 connection_limit': 50 });
  });

  it('gives a peer that ignores SETTINGS no more than its per-source share of streams', async () => {
    const limit = h2Settings.maxConcurrentStreams;
    const r = await refused('stream-flood-raw', ['connection_limit'], ['tunnel stream refused by the connection limits'], () => {}, ['--count', '1100']);
    assert.equal(r.outcome, 'answered', JSON.stringify(r));
    assert.equal(r.responses200, 50);
    // Every other stream is refused: 503 at once while under the stream limit (a 503 frees its slot
    // in the same read), REFUSED_STREAM from nghttp2 past it.
    assert.ok(r.otherResponses >= limit - 50, JSON.stringify(r));
    assert.deepEqual(Object.keys(r.resets), r.otherResponses === 1050 ? [] : ['7']);
    assert.equal(r.otherResponses + (r.resets['7'] ?? 0), 1050);
    assert.equal(r.goaway, undefined);
  });

  it('caps connections per source', async () => {
    const before = await refusals('connection_limit');
    const r = await attack('connection-flood', ['--count', '200']);
    assert.ok(r.refused >= 100, JSON.stringify(r));
    assert.ok(r.stillOpen <= 50, JSON.stringify(r));
    assert.ok(await refusals('connection_limit') >= before + 100);
    await logged('connection refused by the connection limits', 'connection_limit');
  });

  it('is still the same agent afterwards, ready and serving promptly', async () => {
    assert.equal(lab.agents.get('node-b')!.child.pid, pid);
    assert.equal(lab.agents.get('node-b')!.child.exitCode, null);
    await lab.waitReady(lab.node('node-b'));
    const r = await lab.client('web', { host: lab.pod('db').ip, port: PORT, bytes: 100_000, timeoutMs: 5_000 });
    assert.ok(r.ok, JSON.stringify(r));
    assert.ok(r.results[0]!.ms < 1_000, `${r.results[0]!.ms} ms`);
  });

  // Last: it restarts node-b's agent with room for 2000 connections per source, so that a whole
  // session's worth of streams can be open at once.
  it('serves a peer that ignores SETTINGS no more streams than advertised, refuses the rest, and says so', async () => {
    const limit = h2Settings.maxConcurrentStreams;
    assert.equal(await lab.stopAgent('node-b'), 0);
    await lab.startAgent(lab.node('node-b'), ['--max-connections-per-source', '2000']);
    await lab.waitReady(lab.node('node-b'));
    await refused('stream-flood-raw', ['stream_limit'], ['tunnel session at its stream limit'], (r) => {
      assert.equal(r.outcome, 'answered', JSON.stringify(r));
      assert.equal(r.responses200, limit, `the advertised ${limit} streams are served`);
      assert.deepEqual(r.resets, { 7: 1100 - limit }, 'nghttp2 refuses every stream beyond them with REFUSED_STREAM');
      assert.equal(r.goaway, undefined);
    }, ['--count', '1100']);
  });
});
