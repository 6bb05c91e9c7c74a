// meshlet's command line: init (capture), agent, ca, demo.
import { parseArgs } from 'node:util';
import { Agent } from './agent.ts';
import { cleanupCapture, installCapture } from './capture/install.ts';
import { defaults, loadAgentConfig, loadInitConfig } from './config.ts';
import { defaultCaptureSettings } from './capture/rules.ts';
import { ConfigError, MeshletError, PrerequisiteError } from './errors.ts';
import { createRootCa, writeCaDir } from './identity/ca.ts';
import { createLogger } from './telemetry/log.ts';

const d = defaults;
const USAGE = `usage: meshlet <command> [flags]

commands:
  init [--dry-run] [--cleanup]           install (or remove) the node's capture rules and ipset
  agent --node NAME --workloads FILE --ca-dir DIR
                                          run the node agent (local mode)
  ca init --out DIR [--trust-domain TD]  create a root CA shared by local-mode agents
  demo [--keep-logs]                      run a local demo mesh in network namespaces (root)

agent flags (defaults in brackets):
  --node NAME              this node's name [$MESHLET_NODE_NAME or $NODE_NAME]
  --workloads FILE         workloads YAML (trustDomain, nodes, workloads), reloaded on change
  --workloads-poll DUR     how often the file is checked [${d.workloadsPoll}]
  --ca-dir DIR             root CA from \`meshlet ca init\`
  --cert-ttl DUR           workload certificate lifetime, renewed at half life [${d.certTtl}]
  --connect-timeout DUR    upstream and tunnel connect timeout [${d.connectTimeout}]
  --handshake-timeout DUR  TLS handshake timeout [${d.handshakeTimeout}]
  --drain DUR              how long SIGTERM lets open connections finish [${d.drain}]
  --log-level LEVEL        fatal, error, warn, info, debug, trace [${d.logLevel}]
  --admin-port N --admin-address IP          /config_dump [${d.ports.admin} on ${d.adminAddress}]
  --readiness-port N --readiness-address IP  /healthz/ready [${d.ports.readiness} on ${d.readinessAddress}]

capture flags (init and agent):
  --outbound-port N [${d.ports.outbound}]  --inbound-port N [${d.ports.inboundPlaintext}]  --tunnel-port N [${d.ports.tunnel}]
  --ipset NAME [${defaultCaptureSettings.ipset}]  --chain NAME [${defaultCaptureSettings.chain}]

durations: 500ms, 20s, 5m, 24h. Exit codes: 0 ok, 1 failure, 2 bad flags, 3 missing privilege or tool.
`;

async function cmdInit(argv: string[]): Promise<number> {
  const config = loadInitConfig(argv);
  if (config.cleanup) {
    const script = await cleanupCapture(config.capture, { dryRun: config.dryRun });
    if (config.dryRun) process.stdout.write(script);
    else process.stderr.write(script ? 'meshlet init: capture removed\n' : 'meshlet init: nothing to remove\n');
    return 0;
  }
  const result = await installCapture(config.capture, { dryRun: config.dryRun });
  if (result.action === 'dry-run') {
    // stdout is exactly the iptables-restore input; the set it references is created first.
    process.stderr.write(`meshlet init --dry-run: would run \`ipset create ${config.capture.ipset} hash:ip family inet -exist\`, then \`iptables-restore --noflush\` with:\n`);
    process.stdout.write(result.script);
  } else process.stderr.write(`meshlet init: capture ${result.action}\n`);
  return 0;
}

async function cmdAgent(argv: string[]): Promise<number> {
  const config = loadAgentConfig(argv, process.env);
  const log = createLogger(config.logLevel, { node: config.nodeName });
  const agent = await Agent.start(config, { log });
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal, drainMs: config.drainMs }, 'draining');
      agent.close().then(resolve, (err) => { log.error({ err: (err as Error).message }, 'error while closing'); resolve(); });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  log.info('agent stopped');
  return 0;
}

async function cmdCa(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'init') throw new ConfigError([`unknown ca command ${JSON.stringify(sub ?? '')} (expected: ca init)`]);
  let values;
  try {
    ({ values } = parseArgs({ args: rest, options: { out: { type: 'string' }, 'trust-domain': { type: 'string', default: 'cluster.local' } }, strict: true }));
  } catch (err) {
    throw new ConfigError([(err as Error).message]);
  }
  if (!values.out) throw new ConfigError(['--out is required']);
  const root = await createRootCa({ trustDomain: String(values['trust-domain']) });
  await writeCaDir(values.out, root);
  process.stderr.write(`meshlet ca: root CA written to ${values.out}/ca.crt and ${values.out}/ca.key\n`);
  return 0;
}

async function cmdDemo(argv: string[]): Promise<number> {
  const { runDemo } = await import('./demo/demo.ts');
  return runDemo(argv);
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  switch (command) {
    case 'init': return cmdInit(rest);
    case 'agent': return cmdAgent(rest);
    case 'ca': return cmdCa(rest);
    case 'demo': return cmdDemo(rest);
    case undefined: case '-h': case '--help': case 'help':
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`meshlet: unknown command ${JSON.stringify(command)}\n${USAGE}`);
      return 2;
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err: unknown) => {
      if (err instanceof MeshletError) {
        process.stderr.write(`meshlet: ${err.message} [${err.code}]\n`);
        process.exitCode = err instanceof ConfigError ? 2 : err instanceof PrerequisiteError ? 3 : 1;
      } else {
        process.stderr.write(`meshlet: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
        process.exitCode = 1;
      }
    },
  );
}
