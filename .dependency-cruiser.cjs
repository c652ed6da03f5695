/**
 * The layer rules of DESIGN §1, checked by dependency-cruiser: imports point down only, and no
 * module imports itself through others. test/architecture.test.ts runs them on src/ in `npm test`;
 * by hand: `npx depcruise src --config .dependency-cruiser.cjs`.
 *
 * Layers, top to bottom: client/cli; client/{vm,locks,transport}; server/http; the wire protocols
 * server/{nbd,iscsi} over server/scsi (a library the VM's HBA uses too); server/datastore;
 * disk-formats (the lock storage, the lock manager and a read-only lockspace observer included,
 * because the server is a lock host itself).
 *
 * @type {import('dependency-cruiser').IConfiguration}
 */
module.exports = {
  forbidden: [
    {
      name: 'disk-formats-imports-up',
      comment: 'disk-formats is the bottom layer: it imports neither the server nor the client',
      severity: 'error',
      from: { path: '^src/disk-formats/' },
      to: { path: '^src/(server|client)/' },
    },
    {
      name: 'server-imports-client',
      comment: 'the server never imports client code (shared pieces live in disk-formats or server/scsi)',
      severity: 'error',
      from: { path: '^src/server/' },
      to: { path: '^src/client/' },
    },
    {
      name: 'server-imports-http',
      comment: 'the REST layer is the top of the server: only serve.ts, which assembles the server, imports it (the protocols nbd, iscsi, scsi never do)',
      severity: 'error',
      from: { path: '^src/server/', pathNot: '^src/server/(http/|serve[.]ts$)' },
      to: { path: '^src/server/http/' },
    },
    {
      name: 'scsi-is-transport-free',
      comment: 'server/scsi is a library over a BlockDevice (the VM executes CDBs with it): nothing else of the server',
      severity: 'error',
      from: { path: '^src/server/scsi/' },
      to: { path: '^src/server/', pathNot: '^src/server/scsi/' },
    },
    {
      name: 'datastore-imports-up',
      comment: 'the datastore sits under the protocols, the REST layer and the lockspace',
      severity: 'error',
      from: { path: '^src/server/datastore/' },
      to: { path: '^src/server/', pathNot: '^src/server/datastore/' },
    },
    {
      name: 'cli-is-top',
      comment: 'the tandem command is the top layer: nothing imports it',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/client/cli/' },
      to: { path: '^src/client/cli/' },
    },
    {
      name: 'no-circular',
      comment: 'no import circle (dynamic imports count)',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
    {
      name: 'resolvable',
      comment: 'every import resolves: an import the checker cannot follow would hide a violation',
      severity: 'error',
      from: { path: '^src/' },
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: 'node_modules' },
    tsPreCompilationDeps: true,
  },
}
