// The references the benchmark compares meshlet with. The simplest secure relay we could write: one
// mutual-TLS 1.3 connection per application connection (no HTTP/2, no pooling, no resumption),
// certificates from the benchmark's CA with keys of its root's kind, plain pipes with allowHalfOpen
// on both ends. With --plain the hop between the two relays is plain TCP: the cheapest a pair of
// Node.js relays can be, the floor under any Node.js data plane on the machine. With --h2 every app
// connection is a CONNECT stream on one pooled HTTP/2 session over mutual TLS (meshlet's tunnel,
// with its windows, and nothing else: no capture, identity per pod, policy or telemetry): what
// node:http2 itself costs. With --framed the streams share one mutual-TLS connection through a
// framer of our own instead (framed-tunnel.ts): what node:http2 costs above a JavaScript framer.
//
//   tls-relay entry --map 16080:8080,16081:8081 --exit HOST:PORT [--ca-dir DIR [--h2 | --framed] | --plain]
//       plain TCP in on each local port; TLS (or TCP) to the exit; the first 2 bytes name the target
//       port (with --h2, the CONNECT's authority)
//   tls-relay exit --port 16443 --target HOST [--ca-dir DIR [--h2 | --framed] | --plain]
//       TLS (or TCP) in; plain TCP to HOST:<port from the preamble or the authority>
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { createCsr, generateKey, keyAlgorithmOf, signWorkloadCsr } from '../src/identity/ca.ts';
import { DirRootStore, loadRootSet } from '../src/identity/roots.ts';
import { h2Settings, WINDOW_BYTES } from '../src/proxy/tunnel/h2.ts';
import { FramedTunnel } from './framed-tunnel.ts';

const TRUST_DOMAIN = 'bench.local';

async function credentials(caDir: string, name: string): Promise<{ key: string; cert: string; ca: string }> {
  const root = (await loadRootSet(new DirRootStore(caDir))).signing;
  // The root's kind of key, as meshlet's agents under it get by default.
  const { privateKeyPem } = await generateKey(keyAlgorithmOf(root.keyPem));
  const id = `spiffe://${TRUST_DOMAIN}/ns/bench/sa/${name}`;
  const { certPem } = signWorkloadCsr(root, createCsr(privateKeyPem, id), { trustDomain: TRUST_DOMAIN, ttlMs: 3_600_000 });
  return { key: privateKeyPem, cert: certPem, ca: root.certPem };
}

function pipeBoth(a: net.Socket, b: net.Socket): void {
  a.on('error', () => b.destroy());
  b.on('error', () => a.destroy());
  a.pipe(b);
  b.pipe(a);
}

function pipeStream(socket: net.Socket, stream: http2.Http2Stream): void {
  socket.on('error', () => stream.close(http2.constants.NGHTTP2_CANCEL));
  stream.on('error', () => socket.destroy());
  socket.pipe(stream);
  stream.pipe(socket);
}

const h2Options = { settings: h2Settings, maxSessionMemory: 80, noDelay: true };

/** One HTTP/2 session to the exit, opened again when it closes. */
function h2Session(host: string, port: number, secureContext: tls.SecureContext): () => http2.ClientHttp2Session {
  let session: http2.ClientHttp2Session | undefined;
  return () => {
    if (session && !session.closed && !session.destroyed) return session;
    const s = http2.connect(`https://${host}:${port}`, {
      ...h2Options, secureContext, ALPNProtocols: ['h2'], minVersion: 'TLSv1.3', checkServerIdentity: () => undefined,
    });
    s.on('error', () => undefined);
    s.once('connect', () => s.setLocalWindowSize(WINDOW_BYTES));
    session = s;
    return s;
  };
}

/** One framed mutual-TLS connection to the exit, opened again when it closes. */
function framedTunnel(host: string, port: number, secureContext: tls.SecureContext): () => FramedTunnel {
  let tunnel: FramedTunnel | undefined;
  return () => {
    if (tunnel && !tunnel.closed) return tunnel;
    const hop = net.connect({ host, port, noDelay: true });
    const socket = tls.connect({ socket: hop, secureContext, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
    tunnel = new FramedTunnel(socket);
    return tunnel;
  };
}

const flags = { 'ca-dir': { type: 'string' }, plain: { type: 'boolean', default: false }, h2: { type: 'boolean', default: false }, framed: { type: 'boolean', default: false } } as const;

async function entry(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { map: { type: 'string' }, exit: { type: 'string' }, ...flags } });
  // One secure context for every connection (building one per connect re-parses the PEM).
  const secureContext = values.plain ? undefined : tls.createSecureContext({ ...await credentials(String(values['ca-dir']), 'relay-entry'), minVersion: 'TLSv1.3' });
  const [exitHost, exitPort] = String(values.exit).split(':');
  const session = values.h2 && secureContext ? h2Session(exitHost!, Number(exitPort), secureContext) : undefined;
  const framed = values.framed && secureContext ? framedTunnel(exitHost!, Number(exitPort), secureContext) : undefined;
  for (const pair of String(values.map).split(',')) {
    const [listen, target] = pair.split(':').map(Number);
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
      if (session) {
        pipeStream(client, session().request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${target}` }));
        return;
      }
      if (framed) {
        framed().open(target ?? 0, client);
        return;
      }
      const preamble = Buffer.alloc(2);
      preamble.writeUInt16BE(target ?? 0);
      const hop = net.connect({ host: exitHost, port: Number(exitPort), noDelay: true, allowHalfOpen: true });
      const up = secureContext ? tls.connect({ socket: hop, secureContext, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined }) : hop;
      up.write(preamble);
      pipeBoth(client, up);
    });
    await new Promise<void>((r) => server.listen(listen, '0.0.0.0', r));
  }
  process.stdout.write('ready\n');
}

async function exit(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { port: { type: 'string' }, target: { type: 'string' }, ...flags } });
  const onPeer = (peer: net.Socket) => {
    peer.on('error', () => undefined);
    peer.once('readable', function first() {
      const head = peer.read(2) as Buffer | null;
      if (!head) { peer.once('readable', first); return; }
      const up = net.connect({ host: String(values.target), port: head.readUInt16BE(0), allowHalfOpen: true, noDelay: true });
      pipeBoth(peer, up);
    });
  };
  if (values.h2) {
    const server = http2.createSecureServer({
      ...h2Options, ...await credentials(String(values['ca-dir']), 'relay-exit'), requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'],
    });
    server.on('session', (s) => s.once('remoteSettings', () => { if (!s.destroyed) s.setLocalWindowSize(WINDOW_BYTES); }));
    server.on('stream', (stream, headers) => {
      const port = Number(String(headers[':authority']).split(':')[1]);
      const up = net.connect({ host: String(values.target), port, allowHalfOpen: true, noDelay: true });
      up.once('connect', () => stream.respond({ ':status': 200 }));
      pipeStream(up, stream);
    });
    await new Promise<void>((r) => server.listen(Number(values.port), '0.0.0.0', r));
    process.stdout.write('ready\n');
    return;
  }
  const target = String(values.target);
  const onFramed = (peer: tls.TLSSocket) => new FramedTunnel(peer, (port) => net.connect({ host: target, port, allowHalfOpen: true, noDelay: true }));
  // tls.createServer takes the PEM options (a ready-made secureContext option is not used by servers).
  const server = values.plain
    ? net.createServer({ allowHalfOpen: true, noDelay: true }, onPeer)
    : tls.createServer({ ...await credentials(String(values['ca-dir']), 'relay-exit'), requestCert: true, rejectUnauthorized: true, allowHalfOpen: true, noDelay: true, minVersion: 'TLSv1.3' }, values.framed ? onFramed : onPeer);
  await new Promise<void>((r) => server.listen(Number(values.port), '0.0.0.0', r));
  process.stdout.write('ready\n');
}

const [cmd, ...rest] = process.argv.slice(2);
if (cmd === 'entry') await entry(rest);
else if (cmd === 'exit') await exit(rest);
else {
  process.stderr.write('usage: tls-relay entry|exit ...\n');
  process.exitCode = 2;
}
