// `meshlet status`: a node agent's state read from its admin API (/config_dump), as tables for a
// person or as JSON for a script. Run it on the node (kubectl exec into the agent pod): the admin
// API listens on loopback.
import { AgentUnreachableError } from './errors.ts';

interface Dump {
  node: string;
  ready: boolean;
  pending: string[];
  trustDomain?: string;
  identityProvider?: string;
  workloadSource?: Record<string, unknown>;
  workloads: Array<{ name: string; namespace: string; ip: string; ipv6?: string; node: string; spiffeId: string; captured: boolean; local: boolean }>;
  certificates: Array<{ spiffeId: string; state: string; notAfter?: string; serial?: string; error?: string }>;
  policy?: { mtls: Record<string, string>; policies: Array<{ id: string; action: string; rules: number; warnings?: string[]; errors?: string[] }>; decisions: Array<{ action: string; policy: string; count: number }> };
  services?: Array<{ name: string; namespace: string; clusterIP: string; ports: Array<{ name: string; port: number }>; preferClose: boolean;
    endpoints: Array<{ ip: string; node?: string; ready: boolean; open: number; consecutiveFailures: number; ejections: number; ejectedUntil?: string; lastError?: string }> }>;
  probeGate?: { ttlSeconds: number; vouched: number; lastRefresh?: string; failures: number; lastError?: string };
  connections: { totals: Record<string, number>; open: Array<{ direction: string; route?: string; sourceIp: string; sourceWorkload?: string; destination?: string; destinationWorkload?: string; bytesSent: number; bytesReceived: number; startedAt: number }> };
}

export async function fetchDump(adminUrl: string, timeoutMs = 5_000): Promise<Dump> {
  let res: Response;
  try {
    res = await fetch(new URL('/config_dump', adminUrl), { signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    throw new AgentUnreachableError(adminUrl, (err as Error).cause ? String((err as { cause: Error }).cause.message ?? (err as Error).cause) : (err as Error).message);
  }
  if (!res.ok) throw new AgentUnreachableError(adminUrl, `HTTP ${res.status}`);
  return (await res.json()) as Dump;
}

/** Left-aligned columns, a header row and a rule. */
export function table(headers: string[], rows: string[][]): string {
  if (rows.length === 0) return '  (none)\n';
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => `  ${cells.map((c, i) => c.padEnd(widths[i]!)).join('  ')}`.trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n') + '\n';
}

function inHuman(ms: number): string {
  const s = Math.round(ms / 1000);
  if (Math.abs(s) < 120) return `${s}s`;
  if (Math.abs(s) < 7200) return `${Math.round(s / 60)}m`;
  return `${(s / 3600).toFixed(1)}h`;
}

export function formatStatus(d: Dump, now = Date.now()): string {
  const out: string[] = [];
  out.push(`node ${d.node}: ${d.ready ? 'READY' : `NOT READY (waiting for ${d.pending.join(', ')})`}`);
  out.push(`trust domain ${d.trustDomain ?? '-'}, certificates from ${d.identityProvider ?? '-'}, workloads from ${String(d.workloadSource?.kind ?? '-')}` +
    (d.workloadSource?.lastError ? ` (last error: ${String(d.workloadSource.lastError)})` : ''));
  const local = d.workloads.filter((w) => w.local && w.captured);
  out.push(`\nWORKLOADS on this node (${local.length} captured of ${d.workloads.length} in the mesh)`);
  // A dual-stack pod's IPv6 address is refused by the IPv6 guard (the mesh carries IPv4).
  out.push(table(['NAMESPACE', 'NAME', 'IP', 'IPV6 (REFUSED)', 'IDENTITY'], local.map((w) => [w.namespace, w.name, w.ip, w.ipv6 ?? '-', w.spiffeId])));
  out.push('CERTIFICATES');
  out.push(table(['IDENTITY', 'STATE', 'EXPIRES IN', 'SERIAL'], d.certificates.map((c) => [
    c.spiffeId, c.state, c.notAfter ? inHuman(Date.parse(c.notAfter) - now) : '-', c.serial ?? c.error ?? '-',
  ])));
  const p = d.policy;
  const modes = Object.entries(p?.mtls ?? {}).map(([ns, m]) => `${ns}=${m}`).join(', ');
  out.push(`POLICIES (mTLS: ${modes || 'permissive everywhere'})`);
  const decided = (id: string, action: string) => p?.decisions.filter((x) => x.policy === id && x.action === action).reduce((n, x) => n + x.count, 0) ?? 0;
  out.push(table(['POLICY', 'ACTION', 'RULES', 'ALLOWED', 'DENIED', 'AUDITED', 'NOTES'], (p?.policies ?? []).map((x) => [
    x.id, x.action, String(x.rules), String(decided(x.id, 'allow')), String(decided(x.id, 'deny')), String(decided(x.id, 'audit')),
    [...(x.errors ?? []).map((e) => `unreadable: ${e}`), ...(x.warnings ?? [])].join('; ') || '-',
  ])));
  const services = d.services ?? [];
  out.push(`SERVICES (${services.length}; endpoints: ready, open connections through this agent, ejected ones marked)`);
  out.push(table(['SERVICE', 'CLUSTER IP', 'PORTS', 'ENDPOINTS'], services.map((x) => [
    `${x.namespace}/${x.name}`, x.clusterIP, x.ports.map((p) => (p.name ? `${p.name}:${p.port}` : String(p.port))).join(','),
    x.endpoints.map((e) => `${e.ip}${e.ready ? '' : ' (not ready)'}${e.ejectedUntil ? ` (ejected until ${e.ejectedUntil})` : ''} ${e.open}`).join(', ') || '-',
  ])));
  if (d.probeGate) {
    const g = d.probeGate;
    out.push(`PROBE GATE: ${g.vouched} pods vouched for, TTL ${g.ttlSeconds}s, last refresh ${g.lastRefresh ?? 'never'}${g.lastError ? `, FAILING: ${g.lastError}` : ''}\n`);
  }
  const t = d.connections.totals;
  out.push(`CONNECTIONS (${t.open ?? 0} open; ${t.opened ?? 0} since start, ${t.failed ?? 0} refused or failed)`);
  out.push(table(['DIRECTION', 'ROUTE', 'SOURCE', 'DESTINATION', 'SENT', 'RECEIVED', 'AGE'], d.connections.open.map((c) => [
    c.direction, c.route ?? '-', c.sourceWorkload ?? c.sourceIp, c.destinationWorkload ?? c.destination ?? '-',
    String(c.bytesSent), String(c.bytesReceived), inHuman(now - c.startedAt),
  ])));
  return out.join('\n');
}
