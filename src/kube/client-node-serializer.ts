// Stands in for client-node's model serializer when its ListWatch (dist/cache.js) imports it
// (kube/load-less.ts). ListWatch serializes its label and field selectors as 'string', which the
// real serializer returns unchanged; anything else it might ask in a later version fails loudly.
export const ObjectSerializer = {
  serialize(data: unknown, type: string): unknown {
    if (type === 'string' && (typeof data === 'string' || data === undefined)) return data;
    throw new Error(`meshlet's stand-in for client-node's serializer cannot serialize type ${type} (kube/load-less.ts)`);
  },
};
