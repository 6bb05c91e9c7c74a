# meshlet's image: one image for the init helper, the node agent and the CA service.
#   docker build -t REGISTRY/meshlet:TAG .   then   (cd manifests && kustomize edit set image meshlet=REGISTRY/meshlet:TAG)
#
# Stage 1 installs the production dependencies (koffi ships prebuilt binaries, so no compiler).
FROM node:24-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY bin/install-note.js ./bin/
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# Stage 2: the runtime. Node 24 runs the TypeScript sources directly (type stripping, its result
# kept in the compile cache below), so there is no build output to copy. iptables and ipset are
# what `meshlet init` and the agent call (nft with --capture-backend nftables, for nodes whose
# kube-proxy runs in nftables mode, and for the agent's anti-spoofing table on bridge CNIs), and ip
# (iproute2) the policy rule and route that bring the replies of source-preserving connections
# back to the agent, and the bridge ports the anti-spoofing binds addresses to.
FROM node:24-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset nftables iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
# The MeshPolicy CRD's schema is the one the agent validates policies against (src/policy/schema.ts).
COPY manifests/crd-meshpolicy.yaml ./manifests/
ENV NODE_ENV=production
# A young generation of 2 MiB semi-spaces instead of 16: about 45 MiB less RSS for a loaded agent,
# no measurable CPU (bench/README.md, "Agent memory"). V8 reads it at start only, hence the env.
ENV NODE_OPTIONS=--max-semi-space-size=2
# Node's compile cache, filled here so that no container pays for type stripping or compiling the
# sources at start (src/main.js turns it on; about 30 MiB less RSS per agent, bench/README.md).
ENV NODE_COMPILE_CACHE=/app/.compile-cache
# The data-plane worker threads' own modules too (src/proxy/worker-main.js), which --help never loads.
RUN node /app/src/main.js --help > /dev/null \
 && node --input-type=module -e "import('node:module').then((m) => { m.enableCompileCache(); return import('/app/src/proxy/worker.ts'); })" \
 && chmod -R a+rwX /app/.compile-cache
# Non-root by default (the CA runs as this user); the DaemonSet runs the init helper and the agent
# as root with only NET_ADMIN and NET_RAW, which iptables and ipset need.
USER 65532:65532
ENTRYPOINT ["node", "/app/src/main.js"]
