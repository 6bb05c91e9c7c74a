// meshlet's ports, in one place: the capture rules, the agent's listeners, the CA and the tests all
// read them here. Istio's numbers where Istio has the same job (ztunnel's 15001, 15006, 15008).
export const PORTS = {
  admin: 15000,
  outbound: 15001,
  inboundPlaintext: 15006,
  tunnel: 15008,
  ca: 15012,
  /** The CA's /metrics (Istio's istiod monitoring port). */
  caMetrics: 15014,
  metrics: 15020,
  readiness: 15021,
} as const;
