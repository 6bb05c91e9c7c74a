// Stands in for client-node's generated index (dist/gen/index.js) when dist/config.js imports it
// (kube/load-less.ts): KubeConfig.makeApiClient uses these two; the API class comes from its caller.
export { createConfiguration } from '@kubernetes/client-node/dist/gen/configuration.js';
export { ServerConfiguration } from '@kubernetes/client-node/dist/gen/servers.js';
