// Every failure a user can see in a log line or a metric label is one of these classes, each with a
// stable `code`. Codes are documented in docs/errors.md; test/errors.test.ts fails when one is not.

export abstract class MeshletError extends Error {
  abstract readonly code: string;
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A connection reached the outbound listener from an IP that is no known workload on this node. */
export class UnknownSourceError extends MeshletError {
  readonly code = 'unknown_source';
  readonly ip: string;
  constructor(ip: string) {
    super(`no captured workload on this node has source IP ${ip}`);
    this.ip = ip;
  }
}

/** A connection was made straight to one of the agent's own listeners instead of being redirected. */
export class SelfCallError extends MeshletError {
  readonly code = 'self_call';
  readonly target: string;
  constructor(target: string) {
    super(`connection addressed to the agent itself (${target}), not redirected by capture`);
    this.target = target;
  }
}

/**
 * A node agent was handed a connection to a destination outside the mesh. Capture redirects only
 * destinations in the mesh; this one left it between the redirect and the lookup (or capture is
 * stale). The agent never dials it: from the node it would carry the node's reach, not the pod's.
 */
export class OutsideMeshError extends MeshletError {
  readonly code = 'outside_mesh';
  readonly target: string;
  constructor(target: string) {
    super(`${target} is outside the mesh: the agent does not dial it for a pod (it would leave as the node)`);
    this.target = target;
  }
}

/** The original destination of a redirected socket could not be read. */
export class OriginalDestinationError extends MeshletError {
  readonly code = 'original_dst';
}

/** A connection to a local pod could not be made from the source's own address (source preservation). */
export class SourceAddressError extends MeshletError {
  readonly code = 'source_address';
  constructor(sourceIp: string, why: string) {
    super(`cannot connect from ${sourceIp}: ${why}`);
  }
}

/** The workload has no usable certificate: no traffic flows for it (fail closed). */
export class NoCertificateError extends MeshletError {
  readonly code = 'no_certificate';
  readonly identity: string;
  readonly reason: string;
  constructor(identity: string, reason: string) {
    super(`no certificate for ${identity}: ${reason}`);
    this.identity = identity;
    this.reason = reason;
  }
}

/** The peer agent answered the tunnel's CONNECT with something other than 200, or not at all. */
export class TunnelRejectedError extends MeshletError {
  readonly code = 'tunnel_rejected';
  readonly status: number | undefined;
  constructor(status: number | undefined, detail: string) {
    super(`tunnel CONNECT rejected${status === undefined ? '' : ` with status ${status}`}: ${detail}`);
    this.status = status;
  }
}

/** A tunnel peer presented an identity other than the one expected. */
export class PeerIdentityError extends MeshletError {
  readonly code = 'peer_identity';
}

/** A CONNECT asked for a target this agent will not relay to (the tunnel is no open relay). */
export class BadTunnelTargetError extends MeshletError {
  readonly code = 'bad_tunnel_target';
  readonly authority: string;
  constructor(authority: string, reason: string) {
    super(`refused CONNECT to ${JSON.stringify(authority)}: ${reason}`);
    this.authority = authority;
  }
}

/** The peer agent cancelled a CONNECT (RST_STREAM) before the pod's connection was made: nothing to relay. */
export class TunnelCancelledError extends MeshletError {
  readonly code = 'tunnel_cancelled';
  constructor() {
    super('the peer cancelled the CONNECT before the pod answered');
  }
}

/** A source opened tunnel connections (TLS handshakes) faster than its share (--handshake-rate). */
export class HandshakeRateError extends MeshletError {
  readonly code = 'handshake_rate';
  constructor(source: string, perSecond: number) {
    super(`${source} opens tunnel handshakes faster than ${perSecond}/s`);
  }
}

/** Traffic arrived for an address that is no captured workload on this node. */
export class UnknownDestinationError extends MeshletError {
  readonly code = 'unknown_destination';
  readonly target: string;
  constructor(target: string) {
    super(`${target} is not a captured workload on this node`);
    this.target = target;
  }
}

/** A policy refused the connection. */
export class PolicyDeniedError extends MeshletError {
  readonly code = 'policy_denied';
  readonly policy: string;
  constructor(policy: string, detail: string) {
    super(`denied by ${policy}: ${detail}`);
    this.policy = policy;
  }
}

/** Connecting to the final destination (pod, passthrough target or tunnel peer) failed. */
export class UpstreamConnectError extends MeshletError {
  readonly code = 'upstream_connect';
  readonly target: string;
  constructor(target: string, cause: unknown) {
    super(`connect to ${target} failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.target = target;
  }
}

/** The workloads file (or another source document) is invalid; the last good registry stays. */
export class WorkloadSourceError extends MeshletError {
  readonly code = 'bad_workloads';
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid workloads:\n  - ${problems.join('\n  - ')}`);
    this.problems = problems;
  }
}

/** Command-line flags or environment failed validation. Lists every problem, not just the first. */
export class ConfigError extends MeshletError {
  readonly code = 'bad_config';
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.problems = problems;
  }
}

/** A SPIFFE ID is malformed or outside the expected trust domain. */
export class SpiffeIdError extends MeshletError {
  readonly code = 'bad_spiffe_id';
  readonly input: string;
  constructor(input: string, reason: string) {
    super(`invalid SPIFFE ID ${JSON.stringify(input)}: ${reason}`);
    this.input = input;
  }
}

/** The CA material on disk or a certificate could not be created or read. */
export class CaError extends MeshletError {
  readonly code = 'ca_error';
}

/**
 * A request the CA service refused. Each refusal has its own code and the HTTP status the CA answers
 * with, so an agent (and its operator) can tell a bad CSR from a bad token from a busy CA.
 */
export abstract class CaRefusal extends MeshletError {
  abstract readonly status: number;
}

/** The CSR is not a valid PKCS#10 request, or asks for something the CA never grants. */
export class BadCsrError extends CaRefusal {
  readonly code = 'bad_csr';
  readonly status = 400;
}

/** The HTTP request itself is malformed: wrong method, path, content type or JSON. */
export class BadCaRequestError extends CaRefusal {
  readonly code = 'bad_request';
  readonly status: number;
  constructor(message: string, status = 400) {
    super(message);
    this.status = status;
  }
}

/** The request body is larger than the CA accepts. */
export class BodyTooLargeError extends CaRefusal {
  readonly code = 'body_too_large';
  readonly status = 413;
  constructor(limitBytes: number) {
    super(`request body is larger than ${limitBytes} bytes`);
  }
}

/** The request body did not arrive within the CA's deadline (a client trickling it holds nothing longer). */
export class SlowRequestError extends CaRefusal {
  readonly code = 'slow_request';
  readonly status = 408;
  constructor(ms: number) {
    super(`request body not received within ${ms} ms`);
  }
}

/** The bearer token is missing, malformed, expired, for another audience, or not an agent's. */
export class TokenRejectedError extends CaRefusal {
  readonly code = 'bad_token';
  readonly status = 401;
  constructor(reason: string) {
    super(`token rejected: ${reason}`);
  }
}

/** The node holding the token runs no workload with the requested identity. */
export class IdentityNotAllowedError extends CaRefusal {
  readonly code = 'identity_not_allowed';
  readonly status = 403;
  constructor(node: string, spiffeId: string) {
    super(`node ${JSON.stringify(node)} runs no pod with identity ${spiffeId}`);
  }
}

/** Too many requests from one client; the answer carries Retry-After. */
export class RateLimitedError extends CaRefusal {
  readonly code = 'rate_limited';
  readonly status = 429;
  readonly retryAfterSeconds: number;
  constructor(retryAfterSeconds: number) {
    const s = Math.max(1, Math.ceil(retryAfterSeconds));
    super(`too many requests; retry after ${s} s`);
    this.retryAfterSeconds = s;
  }
}

/** The CA cannot decide right now (the Kubernetes API is unreachable, pod placement not loaded). */
export class AuthorizerUnavailableError extends CaRefusal {
  readonly code = 'authz_unavailable';
  readonly status = 503;
  constructor(reason: string) {
    super(`cannot authorize now: ${reason}`);
  }
}

/** The agent could not obtain a certificate from the CA service (network, TLS, or a refusal). */
export class CaUnavailableError extends MeshletError {
  readonly code = 'ca_unavailable';
  readonly status: number | undefined;
  /** The CA's Retry-After, when it sent one: the agent waits at least this long. */
  retryAfterMs: number | undefined;
  constructor(message: string, status?: number, options?: ErrorOptions) {
    super(message, options);
    this.status = status;
  }
}

/** Installing or removing capture rules failed (missing privileges, missing tools, rejected rules). */
export class CaptureError extends MeshletError {
  readonly code = 'capture_error';
}

/** The environment cannot run this command (not root, no iptables, no ip netns). */
export class PrerequisiteError extends MeshletError {
  readonly code = 'prerequisite';
}

/** A tunnel peer's TLS handshake failed (no or untrusted client certificate, expired, timeout, not TLS). */
export class TlsHandshakeError extends MeshletError {
  readonly code = 'tls_handshake';
  constructor(detail: string) {
    super(`tunnel TLS handshake refused: ${detail}`);
  }
}

/** A tunnel peer broke the HTTP/2 protocol (malformed frames, oversized headers, flow-control abuse). */
export class H2ProtocolError extends MeshletError {
  readonly code = 'h2_protocol';
  constructor(detail: string) {
    super(`tunnel HTTP/2 session ended: ${detail}`);
  }
}

/** Nothing flowed either way on a relayed connection for the idle timeout; the agent reset it. */
export class IdleTimeoutError extends MeshletError {
  readonly code = 'idle_timeout';
  constructor(idleMs: number) {
    super(`no bytes either way for ${idleMs} ms (--idle-timeout): connection reset`);
  }
}

/** A connection was refused by the agent's connection limits (total, or per source address). */
export class ConnectionLimitError extends MeshletError {
  readonly code = 'connection_limit';
  constructor(detail: string) {
    super(`connection refused: ${detail}`);
  }
}

/** A tunnel peer holds as many open streams as the agent allows on one session; more are refused. */
export class StreamLimitError extends MeshletError {
  readonly code = 'stream_limit';
  constructor(limit: number) {
    super(`tunnel session holds ${limit} open streams, its limit: further streams are refused (REFUSED_STREAM)`);
  }
}

/** A connection to a Service's cluster IP found no endpoint to go to (none ready, or all tried). */
export class NoEndpointsError extends MeshletError {
  readonly code = 'no_endpoints';
  constructor(service: string, port: number, detail: string) {
    super(`service ${service} port ${port}: ${detail}`);
  }
}

/** A CLI could not read an agent's admin API (`meshlet status`). */
export class AgentUnreachableError extends MeshletError {
  readonly code = 'agent_unreachable';
  constructor(url: string, detail: string) {
    super(`cannot read the agent's admin API at ${url}: ${detail} (run meshlet status on the agent's node, e.g. kubectl exec into the agent pod)`);
  }
}

/** Codes of every error class above, for the docs test and for metric label sets. */
export const errorCodes = [
  'unknown_source', 'self_call', 'outside_mesh', 'original_dst', 'no_certificate', 'tunnel_rejected', 'peer_identity',
  'bad_tunnel_target', 'tunnel_cancelled', 'handshake_rate', 'unknown_destination', 'policy_denied', 'upstream_connect', 'bad_workloads', 'bad_config',
  'bad_spiffe_id', 'ca_error', 'capture_error', 'prerequisite', 'bad_csr', 'bad_request', 'body_too_large', 'slow_request', 'bad_token',
  'identity_not_allowed', 'rate_limited', 'authz_unavailable', 'ca_unavailable', 'agent_unreachable',
  'tls_handshake', 'h2_protocol', 'connection_limit', 'idle_timeout', 'stream_limit', 'no_endpoints', 'source_address',
] as const;

export function errorCode(err: unknown): string {
  if (err instanceof MeshletError) return err.code;
  if (err && typeof err === 'object' && 'code' in err && typeof err.code === 'string') return err.code;
  return 'internal';
}
