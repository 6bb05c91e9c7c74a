import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { loadAgentConfig, loadInitConfig, parseDuration } from '../src/config.ts';
import { ConfigError } from '../src/errors.ts';

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
    assert.equal(c.certTtlMs, 86_400_000);
    assert.deepEqual(c.ports, { outbound: 15001, inboundPlaintext: 15006, tunnel: 15008, admin: 15000, readiness: 15021 });
    assert.equal(c.adminAddress, '127.0.0.1');
    assert.equal(loadAgentConfig(['--workloads', 'w', '--ca-dir', 'c'], { MESHLET_NODE_NAME: 'from-env' }).nodeName, 'from-env');
  });

  it('reports every problem at once', () => {
    assert.throws(() => loadAgentConfig(['--cert-ttl', 'soon', '--admin-port', '99999', '--log-level', 'loud', '--tunnel-port', '15001'], {}),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        const text = err.problems.join('\n');
        for (const re of [/--node/, /--workloads is required/, /--ca-dir is required/, /--cert-ttl: "soon"/, /--admin-port: "99999"/,
          /--log-level: "loud"/, /port 15001 is used for both outbound and tunnel/]) assert.match(text, re);
        return true;
      });
  });

  it('turns unknown flags into a ConfigError', () => {
    assert.throws(() => loadAgentConfig(['--bogus'], {}), ConfigError);
    assert.throws(() => loadInitConfig(['--chain', 'lower-case']), /--chain/);
    assert.deepEqual(loadInitConfig(['--dry-run']).dryRun, true);
  });
});
