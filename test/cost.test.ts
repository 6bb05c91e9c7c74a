import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { describe, it } from 'node:test';
import { loadCostConfig } from '../src/config/commands.ts';
import { parseCpu, parseMemory } from '../src/cost.ts';
import { ConfigError } from '../src/errors.ts';
import { formatCost, projectCost } from '../src/cost.ts';

describe('meshlet cost', () => {
  const inputs = loadCostConfig([]).inputs;

  it('reads Kubernetes quantities', () => {
    assert.equal(parseCpu('100m'), 100);
    assert.equal(parseCpu('0.5'), 500);
    assert.equal(parseCpu('2'), 2000);
    assert.equal(parseCpu('1.5k'), undefined);
    assert.equal(parseMemory('128Mi'), 128);
    assert.equal(parseMemory('1Gi'), 1024);
    assert.equal(parseMemory('512Ki'), 0.5);
    assert.ok(Math.abs((parseMemory('500M') ?? 0) - 476.837) < 0.001);
    assert.equal(parseMemory('128'), undefined, 'bytes without a unit are not taken (almost always a mistake here)');
  });

  it('defaults to Istio\'s sidecar requests and the DaemonSet\'s', () => {
    const docs = parseAllDocuments(readFileSync(join(import.meta.dirname, '../manifests/agent-daemonset.yaml'), 'utf8')).map((d) => d.toJS());
    const agent = docs.find((d) => d?.kind === 'DaemonSet').spec.template.spec.containers.find((c: { name: string }) => c.name === 'meshlet-agent');
    const requests = agent.resources.requests as { cpu: string; memory: string };
    assert.deepEqual(inputs.agent, { cpuMillis: parseCpu(requests.cpu), memoryMiB: parseMemory(requests.memory) }, 'meshlet cost\'s default is what the DaemonSet requests');
    assert.deepEqual(inputs.sidecar, { cpuMillis: 100, memoryMiB: 128 });
  });

  it('reserves one proxy per pod against one per node, and prices both', () => {
    const agent = { cpuMillis: 100, memoryMiB: 128 };
    const p = projectCost({ ...inputs, agent, nodes: 10, podsPerNode: 30, vcpuHour: 0.033, gibHour: 0.0045, hoursPerMonth: 730 });
    assert.equal(p.pods, 300);
    assert.deepEqual([p.sidecars.instances, p.sidecars.vcpu, p.sidecars.gib], [300, 30, 37.5]);
    assert.deepEqual([p.meshlet.instances, p.meshlet.vcpu, p.meshlet.gib], [10, 1, 1.25]);
    assert.ok(Math.abs(p.sidecars.monthly - (30 * 0.033 + 37.5 * 0.0045) * 730) < 1e-9);
    assert.ok(Math.abs(p.meshlet.monthly - (1 * 0.033 + 1.25 * 0.0045) * 730) < 1e-9);
    assert.ok(Math.abs(p.saved.fraction - (1 - p.meshlet.monthly / p.sidecars.monthly)) < 1e-12);
    assert.ok(Math.abs(p.meshlet.perPod.vcpu - 1 / 300) < 1e-12);
    const text = formatCost(p, { ...inputs, agent, nodes: 10, podsPerNode: 30 });
    assert.match(text, /sidecar per pod\s+300\s+100m \/ 128Mi\s+30\s+37\.5\s+846/);
    assert.match(text, /meshlet per node\s+10\s+100m \/ 128Mi\s+1\s+1\.250\s+28\.20/);
    assert.match(text, /it saves 818 a month, 96\.7% of what they cost/);
    assert.match(formatCost(p, { ...inputs, sidecar: { cpuMillis: 100, memoryMiB: 1e9 / 1048576 } }), /100m \/ 953\.7Mi/, '1G of memory, rounded for reading');
  });

  it('says so when a mesh of one pod per node costs the same either way, or more', () => {
    const p = projectCost({ ...inputs, agent: inputs.sidecar, nodes: 3, podsPerNode: 1 });
    assert.equal(p.saved.monthly, 0);
    assert.equal(p.saved.fraction, 0);
    // An agent that requests more memory than one sidecar: with one pod per node the agents cost more.
    const bigger = { ...inputs, agent: { cpuMillis: 100, memoryMiB: 160 } };
    const more = projectCost({ ...bigger, nodes: 3, podsPerNode: 1 });
    assert.ok(more.saved.monthly < 0);
    assert.match(formatCost(more, { ...bigger, nodes: 3, podsPerNode: 1 }), /meshlet reserves 0 vCPU and 0\.09\d* GiB more than the sidecars: it costs [\d.]+ a month more/);
  });

  it('lists every bad flag at once', () => {
    try {
      loadCostConfig(['--nodes', 'x', '--agent-memory', '1 GB', '--vcpu-hour=-1']);
      assert.fail('accepted bad flags');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.problems.length, 3, err.problems.join('\n'));
    }
  });

  it('prints JSON for scripts', () => {
    const r = spawnSync(process.execPath, [join(import.meta.dirname, '../src/cli.ts'), 'cost', '--nodes', '2', '--pods-per-node', '5', '--json'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.pods, 10);
    assert.equal(out.sidecars.instances, 10);
    assert.equal(out.meshlet.instances, 2);
  });
});
