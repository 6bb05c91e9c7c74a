# meshlet's image: one image for the init helper, the node agent and the CA service.
#   docker build -t REGISTRY/meshlet:TAG .   then   (cd manifests && kustomize edit set image meshlet=REGISTRY/meshlet:TAG)
#
# Stage 1 installs the production dependencies (koffi ships prebuilt binaries, so no compiler).
FROM node:24-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# Stage 2: the runtime. Node 24 runs the TypeScript sources directly (type stripping), so there is
# no build output to copy. iptables and ipset are what `meshlet init` and the agent call (nft with
# --capture-backend nftables, for nodes whose kube-proxy runs in nftables mode).
FROM node:24-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset nftables \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
ENV NODE_ENV=production
# Non-root by default (the CA runs as this user); the DaemonSet runs the init helper and the agent
# as root with only NET_ADMIN and NET_RAW, which iptables and ipset need.
USER 65532:65532
ENTRYPOINT ["node", "/app/src/cli.ts"]
