// `meshlet policy check`: the decision a connection would get, and which policy made it, computed
// by the same engine the agents run against the same workloads and policies.
import { isIP } from 'node:net';
import { ConfigError } from '../errors.ts';
import { parseWorkloadId } from '../identity/spiffe.ts';
import type { MeshSnapshot, Workload } from '../workloads/model.ts';
import { MeshPolicyEngine, plaintextRefusal } from './engine.ts';
import type { ConnectionAttributes, PolicyDecision } from './hook.ts';

export interface CheckResult {
  from: { principal?: string; ip?: string; workload?: string; plaintext: boolean };
  to: { workload: string; ip: string; port: number; mtls: 'strict' | 'permissive' };
  decision: PolicyDecision;
  /** Warnings and errors of the policies that select the destination. */
  notes: string[];
}

function findDestination(snapshot: MeshSnapshot, text: string): { workload: Workload; port: number } {
  const m = /^(.+):(\d{1,5})$/.exec(text);
  const port = Number(m?.[2]);
  if (!m || port < 1 || port > 65535) throw new ConfigError([`--to: ${JSON.stringify(text)} is not WORKLOAD:PORT (namespace/name:port, name:port or ip:port)`]);
  const target = m[1]!;
  // NAME alone will do when one namespace has it.
  const matches = isIP(target) ? snapshot.workloads.filter((w) => w.ip === target)
    : target.includes('/') ? snapshot.workloads.filter((w) => `${w.namespace}/${w.name}` === target)
      : snapshot.workloads.filter((w) => w.name === target);
  if (matches.length > 1) throw new ConfigError([`--to: ${target} is in several namespaces (${matches.map((w) => w.namespace).join(', ')}): write namespace/${target}`]);
  const workload = matches[0];
  if (!workload) throw new ConfigError([`--to: no workload ${target} in the mesh`]);
  if (!workload.captured) throw new ConfigError([`--to: ${target} is not captured: traffic to it never meets a policy`]);
  return { workload, port };
}

function findSource(snapshot: MeshSnapshot, text: string): Omit<ConnectionAttributes, 'destination' | 'destinationPort'> & { workload?: Workload } {
  if (text.startsWith('spiffe://')) {
    let namespace: string;
    try {
      namespace = parseWorkloadId(text).namespace;
    } catch (err) {
      throw new ConfigError([`--from: ${(err as Error).message}`]);
    }
    // An IP matters only to ipBlocks; take one of a workload running as this identity, if any.
    const workload = snapshot.workloads.find((w) => w.spiffeId === text && w.captured);
    return { sourcePrincipal: text, sourceNamespace: namespace, sourceIp: workload?.ip ?? '', ...(workload ? { workload } : {}) };
  }
  if (!isIP(text)) throw new ConfigError([`--from: ${JSON.stringify(text)} is neither a SPIFFE ID nor an IP address`]);
  const workload = snapshot.workloads.find((w) => w.ip === text && w.captured);
  if (!workload) return { sourceIp: text };
  return { sourcePrincipal: workload.spiffeId, sourceNamespace: workload.namespace, sourceIp: text, workload };
}

export function checkConnection(snapshot: MeshSnapshot, from: string, to: string): CheckResult {
  const dst = findDestination(snapshot, to);
  const src = findSource(snapshot, from);
  const engine = new MeshPolicyEngine();
  engine.update(snapshot);
  const mtls = engine.mtlsMode(dst.workload);
  const plaintext = src.sourcePrincipal === undefined;
  const { workload: srcWorkload, ...attrs } = src;
  const decision: PolicyDecision = (plaintext ? plaintextRefusal(engine, dst.workload) : undefined)
    ?? engine.authorize({ ...attrs, destination: dst.workload, destinationPort: dst.port });
  const notes: string[] = [];
  for (const p of engine.selecting(dst.workload)) {
    for (const w of p.warnings) notes.push(`${p.id}: ${w}`);
    for (const e of p.errors) notes.push(`${p.id}: cannot be read (${e}); enforced fail-closed`);
  }
  return {
    from: {
      ...(src.sourcePrincipal ? { principal: src.sourcePrincipal } : {}), ...(src.sourceIp ? { ip: src.sourceIp } : {}),
      ...(srcWorkload ? { workload: `${srcWorkload.namespace}/${srcWorkload.name}` } : {}), plaintext,
    },
    to: { workload: `${dst.workload.namespace}/${dst.workload.name}`, ip: dst.workload.ip, port: dst.port, mtls },
    decision,
    notes,
  };
}

export function formatCheck(r: CheckResult): string {
  const who = r.from.principal ?? `plaintext from ${r.from.ip}`;
  const lines = [`${r.decision.allowed ? 'ALLOW' : 'DENY'}  ${who} -> ${r.to.workload}:${r.to.port} (${r.to.ip}, mTLS ${r.to.mtls})`];
  if (r.decision.allowed) lines.push(`  decided by: ${r.decision.policy ?? 'no policy selects the destination (default allow)'}`);
  else lines.push(`  decided by: ${r.decision.policy}`, `  reason:     ${r.decision.reason}`);
  if (r.decision.audit) lines.push(`  audited by: ${r.decision.audit.join(', ')}`);
  if (r.decision.auditUnmatched) lines.push(`  AUDIT not matched (would deny as ALLOW): ${r.decision.auditUnmatched.join(', ')}`);
  for (const n of r.notes) lines.push(`  note:       ${n}`);
  return lines.join('\n') + '\n';
}
