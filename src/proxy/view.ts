// What a data plane shows its control plane, as plain data (it may live in a worker thread): the
// gauges read at every scrape, and the rest of /config_dump. With several data planes (workers),
// their views are merged here: counts add up, lists concatenate with the worker that holds each entry.
import type { DecisionCount, PolicyDump } from '../policy/engine.ts';
import type { ConnectionView } from '../telemetry/connections.ts';
import type { EndpointView } from './balancer.ts';

export interface DataPlaneGauges {
  pools: Array<{ key: string; streams: number; ageMs: number; peer: string; worker?: number }>;
  openConnections: Record<string, number>;
  /** Each Service's endpoints ejected right now (by any worker). */
  ejected: Array<{ namespace: string; name: string; ips: string[] }>;
  tunnelQueuedBytes: number;
}

export interface DataPlaneDump extends DataPlaneGauges {
  /** The compiled policies (the same in every worker) and the decisions made. */
  policy: PolicyDump;
  /** Each Service's endpoints as the balancer sees them, by namespace/name. */
  endpoints: Record<string, EndpointView[]>;
  connections: { totals: { opened: number; closed: number; failed: number; open: number }; open: Array<ConnectionView & { worker?: number }> };
}

export function mergeGauges(all: DataPlaneGauges[]): DataPlaneGauges {
  if (all.length === 1) return all[0]!;
  const openConnections: Record<string, number> = {};
  const ejected = new Map<string, { namespace: string; name: string; ips: Set<string> }>();
  for (const g of all) {
    for (const [d, n] of Object.entries(g.openConnections)) openConnections[d] = (openConnections[d] ?? 0) + n;
    // Each worker ejects on the failures it saw: an endpoint is out once, however many did.
    for (const e of g.ejected) {
      const m = ejected.get(`${e.namespace}/${e.name}`);
      if (m) for (const ip of e.ips) m.ips.add(ip); else ejected.set(`${e.namespace}/${e.name}`, { ...e, ips: new Set(e.ips) });
    }
  }
  return {
    pools: all.flatMap((g, worker) => g.pools.map((p) => ({ ...p, worker }))),
    openConnections,
    ejected: [...ejected.values()].map((e) => ({ ...e, ips: [...e.ips] })),
    tunnelQueuedBytes: all.reduce((n, g) => n + g.tunnelQueuedBytes, 0),
  };
}

export function mergeDumps(all: DataPlaneDump[]): DataPlaneDump {
  if (all.length === 1) return all[0]!;
  const decisions = new Map<string, DecisionCount>();
  for (const d of all.flatMap((x) => x.policy.decisions)) {
    const m = decisions.get(`${d.action}|${d.policy}`);
    if (m) m.count += d.count; else decisions.set(`${d.action}|${d.policy}`, { ...d });
  }
  // An endpoint's open connections and failures add up; it is ejected where any worker ejected it.
  const endpoints: Record<string, EndpointView[]> = {};
  for (const [key, views] of Object.entries(all[0]!.endpoints)) {
    endpoints[key] = views.map((v, i) => all.slice(1).reduce((m, d) => {
      const o = d.endpoints[key]?.[i];
      if (!o) return m;
      return {
        ...m, ...(o.ejectedUntil && !m.ejectedUntil ? { ejectedUntil: o.ejectedUntil } : {}), ...(o.lastError && !m.lastError ? { lastError: o.lastError } : {}),
        open: m.open + o.open, consecutiveFailures: Math.max(m.consecutiveFailures, o.consecutiveFailures), ejections: m.ejections + o.ejections,
      };
    }, v));
  }
  const totals = { opened: 0, closed: 0, failed: 0, open: 0 };
  for (const d of all) for (const k of Object.keys(totals) as Array<keyof typeof totals>) totals[k] += d.connections.totals[k];
  return {
    ...mergeGauges(all),
    policy: { ...all[0]!.policy, decisions: [...decisions.values()] },
    endpoints,
    connections: { totals, open: all.flatMap((d, worker) => d.connections.open.map((c) => ({ ...c, worker }))) },
  };
}
