/**
 * The OpenAPI document served at /api/v1/openapi.json: every route of app.ts, every answer's
 * schema, every error status. test/server/http/openapi.test.ts sends real requests to every
 * route and validates each answer against this document (and fails on a route it lacks).
 */
const ref = (n: string) => ({ $ref: `#/components/schemas/${n}` })
const errorResponse = (why: string) => ({ description: why, content: { 'application/json': { schema: ref('Error') } } })
const ERRORS: Record<number, string> = {
  400: 'bad input (InvalidArgument, OutOfRange): a malformed name, body or value',
  401: 'the bearer token is missing or wrong (Unauthorized)',
  404: 'no such disk, snapshot, key, lock or host (NotFound)',
  409: 'conflict (Exists, Busy, ReadOnly): the name is taken, or the disk is in use — `connections` names the exports and their client counts',
  500: 'internal error (IoError, Corrupt)',
  503: 'the lockspace cannot be read (Unavailable)',
  507: 'no space left in the datastore (NoSpace)',
}
/** Error answers of an operation; every operation may also answer 500, and a mutating one 401. */
const errors = (mutating: boolean, ...codes: number[]) =>
  Object.fromEntries([...new Set([...codes, ...(mutating ? [401] : []), 500])].sort().map((c) => [String(c), errorResponse(ERRORS[c])]))
const json = (schema: object, description = 'ok') => ({ description, content: { 'application/json': { schema } } })
const body = (schema: object) => ({ required: true, content: { 'application/json': { schema } } })
const NAME = { type: 'string', pattern: '^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$' }
const name = (n: string, what: string) => ({ name: n, in: 'path', required: true, schema: NAME, description: what })
const obj = (properties: Record<string, object>, required = Object.keys(properties), extra: Record<string, unknown> = {}) => ({
  type: 'object',
  properties,
  required,
  additionalProperties: false,
  ...extra,
})
const str = { type: 'string' }
const int = { type: 'integer', minimum: 0 }
const date = { type: 'string', format: 'date-time' }
const strings = { type: 'array', items: str }
const iscsiLun = obj({ iqn: str, portal: { type: 'string', description: 'HOST:PORT' }, lun: int })

export const openApi = {
  openapi: '3.0.3',
  info: {
    title: 'Tandem',
    version: '0.1.0',
    description:
      'Disks, snapshot trees, exports, locks and hosts of a Tandem datastore. Authentication: `Authorization: Bearer <token>` (the token is in <datastore>/.tandem/api-token, or --api-token-file) on every mutating request, and on every request when the server listens on an address other than loopback; 401 otherwise. A method a known path does not have: 405 with `Allow`. An unknown path: 404. Errors are `{"error":{"code","message",…}}`.',
  },
  components: {
    securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
    schemas: {
      Error: obj({ error: obj({ code: str, message: str }, ['code', 'message'], { additionalProperties: true, description: 'other fields (e.g. `connections`, `holder`) say more' }) }),
      Health: obj({ status: { type: 'string', enum: ['ok'] }, datastore: { type: 'string', description: 'the datastore folder on the server' } }),
      Snapshot: obj({
        name: str,
        parent: { type: 'string', nullable: true, description: 'the snapshot current when this one was taken; null for a first snapshot' },
        createdAt: date,
        description: { type: 'string', maxLength: 1024, description: '"" when none was given' },
        isCurrent: { type: 'boolean', description: 'the disk\'s current state descends from it ("You are here" is under it)' },
      }),
      SnapshotMade: obj({
        name: str,
        parent: { type: 'string', nullable: true },
        createdAt: date,
        description: str,
        isCurrent: { type: 'boolean' },
        state: { type: 'string', enum: ['prepared', 'committed'] },
      }),
      SnapshotTree: obj({ current: { type: 'string', nullable: true }, snapshots: { type: 'array', items: ref('Snapshot') } }),
      Access: obj({ initiators: { ...strings, description: 'iSCSI initiator names and NBD TLS-PSK identities allowed; empty: everyone' }, chap: { type: 'boolean', description: 'a CHAP secret is set (never returned)' } }),
      Disk: obj({
        name: str,
        base: { ...obj({ disk: str, snapshot: str }), nullable: true, description: 'a linked clone\'s base: the source disk\'s snapshot whose layer it reads through to (shared, read-only)' },
        size: { ...int, description: 'virtual size in bytes' },
        actualSize: { ...int, description: 'bytes used by the disk\'s files' },
        createdAt: date,
        chain: { ...strings, description: 'VMDK files of the current state, top first' },
        current: { type: 'string', nullable: true },
        snapshots: { type: 'array', items: ref('Snapshot') },
        openExports: { type: 'object', additionalProperties: int, description: 'export name (`disk` or `disk@snapshot`) to its connected clients' },
        prepared: { type: 'string', nullable: true, description: 'a snapshot prepared and not yet committed' },
        writers: { ...int, description: 'clients of the read-write export' },
        access: ref('Access'),
        nbd: { type: 'string', description: 'nbd://host:port/name' },
        iscsi: iscsiLun,
      }),
      Lock: obj(
        {
          name: { type: 'string', description: '"" for a damaged record' },
          state: { type: 'string', enum: ['free', 'exclusive', 'shared', 'damaged'] },
          managed: { type: 'boolean' },
          generation: { ...int, description: 'the fencing token' },
          owner: { type: 'string', nullable: true },
          ownerHeartbeatAgeMs: { type: 'integer', nullable: true },
          sharedHolders: strings,
          waiting: { ...strings, description: 'hosts asking for the lock, oldest request first' },
          record: { ...int, description: 'a damaged record\'s index' },
          error: { type: 'string', description: 'why the record could not be read' },
        },
        ['name', 'state', 'managed', 'generation', 'owner', 'ownerHeartbeatAgeMs', 'sharedHolders', 'waiting'],
      ),
      Host: obj(
        {
          slot: int,
          name: str,
          state: { type: 'string', enum: ['free', 'live', 'left', 'damaged'] },
          generation: int,
          alive: { type: 'boolean', nullable: true },
          heartbeatAgeMs: { type: 'integer', nullable: true },
          requesting: { type: 'string', nullable: true },
          error: str,
          heartbeat: { type: 'string', enum: ['live', 'expired', 'left', 'unknown'] },
          api: { type: 'string', nullable: true },
          vms: strings,
        },
        ['slot', 'name', 'state', 'generation', 'alive', 'heartbeatAgeMs', 'requesting', 'heartbeat', 'api', 'vms'],
      ),
      HostRegistration: obj({ api: str, registeredAt: date }),
      HostVm: obj({
        host: { type: 'string', description: 'the host (its lockspace name) that runs it' },
        name: str,
        state: str,
        pid: { ...int, nullable: true },
        generation: { ...int, nullable: true, description: 'of its lock vm/<name>' },
        startedAt: { type: 'string', nullable: true },
        ft: {
          ...obj({
            side: { type: 'string', description: 'primary or backup' },
            mode: { type: 'string', nullable: true, description: 'how the pair keeps its backup: replay, checkpoint or colo (null: a host that does not say)' },
            role: { type: 'string', nullable: true, description: 'primary, backup, live, alone, halted, handed-over; null until the VM answered' },
            lagMs: { type: 'number', nullable: true, description: 'the primary: how far its backup runs behind' },
            peer: { type: 'string', nullable: true },
            logBytesPerSecond: { type: 'number', nullable: true },
          }),
          nullable: true,
          description: 'a side of a fault-tolerant pair; null for a VM alone',
        },
      }),
      DiskFault: obj({
        disk: str,
        mode: { type: 'string', enum: ['delay', 'error', 'stall'], description: 'delay each request `ms`; fail it (IoError: EIO, MEDIUM ERROR); hold it until the stall is lifted' },
        ms: { type: 'integer', minimum: 0, description: 'delay: per request, above 0 (at most 60000); default 0' },
        op: { type: 'string', enum: ['read', 'write', 'any'], description: 'which requests: reads; writes, write zeroes, discards, flushes; or any (default)' },
      }, ['disk', 'mode']),
      Faults: obj({ faults: { type: 'array', items: ref('DiskFault'), description: 'the faults now in force, one per disk' } }),
      HostVms: obj({
        vms: { type: 'array', items: ref('HostVm') },
        unreachable: { type: 'array', items: obj({ host: str, api: str, error: str }), description: 'hosts that did not answer in time, or answered something else' },
      }),
      Lockspace: obj({ host: { type: 'string', description: 'this server\'s name in the lockspace' }, iscsi: iscsiLun, uri: { type: 'string', description: 'iscsi://portal/iqn/lun' } }),
    },
  },
  paths: {
    '/api/v1/health': { get: { summary: 'Liveness, and the datastore folder (CLIs on this machine read the token there)', responses: { 200: json(ref('Health')), ...errors(false) } } },
    '/api/v1/openapi.json': { get: { summary: 'This document', responses: { 200: json({ type: 'object', required: ['openapi', 'paths'], properties: { openapi: str, paths: { type: 'object' } } }), ...errors(false) } } },
    '/api/v1/disks': {
      get: { summary: 'List disks', responses: { 200: json(obj({ disks: { type: 'array', items: ref('Disk') } })), ...errors(false) } },
      post: {
        summary: 'Create a disk',
        security: [{ bearer: [] }],
        requestBody: body({ type: 'object', required: ['name', 'size'], properties: { name: NAME, size: { oneOf: [{ type: 'integer', minimum: 1 }, { type: 'string', example: '10G' }] } } }),
        responses: { 201: json(ref('Disk'), 'created'), ...errors(true, 400, 409, 507) },
      },
    },
    '/api/v1/disks/{name}': {
      parameters: [name('name', 'disk')],
      get: { summary: 'Describe a disk', responses: { 200: json(ref('Disk')), ...errors(false, 400, 404) } },
      delete: { summary: 'Delete a disk (409 naming the connections while it is exported)', security: [{ bearer: [] }], responses: { 204: { description: 'deleted' }, ...errors(true, 400, 404, 409) } },
    },
    '/api/v1/disks/{name}/clones': {
      parameters: [name('name', 'the source disk')],
      post: {
        summary: 'A new disk from this one: linked (default; a delta on the snapshot\'s layer, shared read-only — the snapshot cannot be deleted while the clone exists) or full ("linked": false; the snapshot\'s content, or without "snapshot" the current state while no client writes it, copied)',
        security: [{ bearer: [] }],
        requestBody: body({ type: 'object', required: ['name'], properties: { name: NAME, snapshot: NAME, linked: { type: 'boolean' } } }),
        responses: { 201: json(ref('Disk'), 'created'), ...errors(true, 400, 404, 409, 507) },
      },
    },
    '/api/v1/disks/{name}/grow': {
      parameters: [name('name', 'disk')],
      post: {
        summary: 'Grow the disk to "size" (its snapshots keep theirs); 400 for a smaller size, 409 naming the connections while its read-write export is open (NBD cannot tell a client of a new size: they disconnect first)',
        security: [{ bearer: [] }],
        requestBody: body({ type: 'object', required: ['size'], properties: { size: { oneOf: [{ type: 'integer', minimum: 1 }, { type: 'string', example: '20G' }] } } }),
        responses: { 200: json(ref('Disk'), 'grown (or already that size)'), ...errors(true, 400, 404, 409, 507) },
      },
    },
    '/api/v1/disks/{name}/snapshots': {
      parameters: [name('name', 'disk')],
      get: { summary: 'The snapshot tree', responses: { 200: json(ref('SnapshotTree')), ...errors(false, 400, 404) } },
      post: {
        summary: 'Take a snapshot (the current state is frozen; writes go to a new delta), or with "prepare": true only make its delta (state "prepared"; the disk is unchanged until commit)',
        security: [{ bearer: [] }],
        requestBody: body({
          type: 'object',
          required: ['name'],
          properties: {
            name: NAME,
            description: { type: 'string', maxLength: 1024, description: 'kept and shown' },
            prepare: { type: 'boolean', description: 'make the delta now, switch the disk onto it at commit; 409 while another is prepared' },
          },
        }),
        responses: { 201: json(ref('SnapshotMade'), 'created (or prepared)'), ...errors(true, 400, 404, 409, 507) },
      },
    },
    '/api/v1/disks/{name}/snapshots/{snap}': {
      parameters: [name('name', 'disk'), name('snap', 'snapshot')],
      get: { summary: 'One snapshot', responses: { 200: json(ref('Snapshot')), ...errors(false, 400, 404) } },
      delete: { summary: 'Delete a snapshot, consolidating its layer (no content changes); a prepared one is aborted', security: [{ bearer: [] }], responses: { 204: { description: 'deleted' }, ...errors(true, 400, 404, 409, 507) } },
    },
    '/api/v1/disks/{name}/snapshots/{snap}/commit': {
      parameters: [name('name', 'disk'), name('snap', 'snapshot')],
      post: {
        summary: 'Commit a prepared snapshot: the disk switches onto its delta (writes held, reads served, until the record is durable)',
        security: [{ bearer: [] }],
        responses: { 200: json(ref('SnapshotMade')), ...errors(true, 400, 404, 409, 507) },
      },
    },
    '/api/v1/disks/{name}/snapshots/{snap}/revert': {
      parameters: [name('name', 'disk'), name('snap', 'snapshot')],
      post: {
        summary: 'Revert the disk to a snapshot (discards the current state). With clients of the disk connected: 409 naming them, unless "force" (they then read the reverted content)',
        security: [{ bearer: [] }],
        requestBody: { required: false, content: { 'application/json': { schema: { type: 'object', properties: { force: { type: 'boolean' } } } } } },
        responses: { 200: json(ref('SnapshotTree')), ...errors(true, 400, 404, 409, 507) },
      },
    },
    '/api/v1/disks/{name}/access': {
      parameters: [name('name', 'disk')],
      put: {
        summary: 'Set the clients allowed to see the disk: iSCSI initiator names (LUN masking) and NBD TLS-PSK identities, in one list; and CHAP secrets (never returned)',
        security: [{ bearer: [] }],
        requestBody: body({
          type: 'object',
          required: ['initiators'],
          properties: {
            initiators: strings,
            chap: { type: 'object', required: ['user', 'secret'], properties: { user: str, secret: { type: 'string', minLength: 12 }, mutualUser: str, mutualSecret: { type: 'string', minLength: 12 } } },
          },
        }),
        responses: { 200: json(ref('Access')), ...errors(true, 400, 404) },
      },
    },
    '/api/v1/nbd/keys': {
      get: { summary: 'Identities that have an NBD TLS-PSK key (keys are never returned)', responses: { 200: json(obj({ identities: strings })), ...errors(false, 404) } },
    },
    '/api/v1/nbd/keys/{identity}': {
      parameters: [{ name: 'identity', in: 'path', required: true, schema: { type: 'string', pattern: '^[A-Za-z0-9._@+-]{1,128}$' }, description: 'PSK identity: the NBD client\'s name, as listed in disk access lists' }],
      put: {
        summary: 'Set the TLS-PSK key of an NBD client identity (written to .tandem/keys.psk, psktool format, mode 0600)',
        security: [{ bearer: [] }],
        requestBody: body({ type: 'object', required: ['key'], properties: { key: { type: 'string', pattern: '^([0-9a-fA-F]{2}){16,64}$', description: '16 to 64 bytes as hex' } } }),
        responses: { 200: json(obj({ identity: str }), 'replaced'), 201: json(obj({ identity: str }), 'created'), ...errors(true, 400, 404) },
      },
      delete: { summary: 'Remove an identity\'s key', security: [{ bearer: [] }], responses: { 204: { description: 'deleted' }, ...errors(true, 400, 404) } },
    },
    '/api/v1/lockspace': {
      get: { summary: 'The datastore\'s lockspace as an iSCSI LUN (hosts join it there: `tandem host`, `tandem lock run --lockspace iscsi://…`)', responses: { 200: json(ref('Lockspace')), ...errors(false, 404) } },
    },
    '/api/v1/locks': {
      get: {
        summary: 'Locks of the datastore\'s lockspace: state, owner, generation (fencing token), owner heartbeat age, waiting hosts; damaged records listed as such',
        responses: { 200: json(obj({ locks: { type: 'array', items: ref('Lock') } })), ...errors(false, 404, 503) },
      },
    },
    '/api/v1/locks/{name}': {
      parameters: [{ name: 'name', in: 'path', required: true, schema: str }],
      get: { summary: 'One lock', responses: { 200: json(ref('Lock')), ...errors(false, 404, 503) } },
    },
    '/api/v1/hosts': {
      get: {
        summary: 'Hosts of the lockspace and the VMs they run: heartbeat (live, expired, left, unknown), heartbeat age, api (the REST API the host registered, or null), vms (VMs whose vm/<name> lock it holds)',
        responses: { 200: json(obj({ hosts: { type: 'array', items: ref('Host') } })), ...errors(false, 404, 503) },
      },
    },
    '/api/v1/hosts/{name}': {
      parameters: [{ name: 'name', in: 'path', required: true, schema: { type: 'string', maxLength: 64 } }],
      get: { summary: 'One host of the lockspace', responses: { 200: json(ref('Host')), ...errors(false, 404, 503) } },
      put: {
        summary: 'A host registers its REST API (`tandem host` does, every few seconds; kept in memory)',
        security: [{ bearer: [] }],
        requestBody: body({ type: 'object', required: ['api'], properties: { api: { type: 'string', example: 'http://127.0.0.1:7800' } } }),
        responses: { 200: json(ref('HostRegistration')), ...errors(true, 400) },
      },
    },
    '/api/v1/faults': {
      get: { summary: 'The disk faults in force (`tandem serve --fault-injection`; 404 without it)', responses: { 200: json(ref('Faults')), ...errors(false, 404) } },
      put: {
        summary: 'Replaces the disk faults (`[]` lifts them all): delay, error or stall of a disk\'s reads, writes or both, at run time (tests, `tandem cluster`); 404 unless the server runs with --fault-injection',
        security: [{ bearer: [] }],
        requestBody: body(ref('Faults')),
        responses: { 200: json(ref('Faults')), ...errors(true, 400, 404) },
      },
    },
    '/api/v1/vms': {
      get: {
        summary: 'The VMs of the live hosts, asked of the API each registered (`tandem host`): state, and for a side of a fault-tolerant pair its role and lag; hosts that did not answer are listed with why',
        responses: { 200: json(ref('HostVms')), ...errors(false, 503) },
      },
    },
    '/metrics': { get: { summary: 'Prometheus metrics', responses: { 200: { description: 'text format', content: { 'text/plain': { schema: str } } }, ...errors(false) } } },
  },
}
