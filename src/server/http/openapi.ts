/** The OpenAPI document served at /api/v1/openapi.json. */
const error = { $ref: '#/components/schemas/Error' }
const errors = (...codes: number[]) =>
  Object.fromEntries(codes.map((c) => [String(c), { description: 'error', content: { 'application/json': { schema: error } } }]))
const json = (schema: object, description = 'ok') => ({ description, content: { 'application/json': { schema } } })
const name = (n: string, what: string) => ({ name: n, in: 'path', required: true, schema: { type: 'string', pattern: '^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$' }, description: what })

export const openApi = {
  openapi: '3.0.3',
  info: { title: 'Tandem', version: '0.1.0', description: 'Disks, snapshot trees, exports and locks of a Tandem datastore.' },
  paths: {
    '/api/v1/health': { get: { summary: 'Liveness', responses: { 200: json({ type: 'object' }) } } },
    '/api/v1/disks': {
      get: { summary: 'List disks', responses: { 200: json({ type: 'object', properties: { disks: { type: 'array', items: { $ref: '#/components/schemas/Disk' } } } }) } },
      post: {
        summary: 'Create a disk',
        requestBody: { required: true, content: { 'application/json': { schema: { type: 'object', required: ['name', 'size'], properties: { name: { type: 'string' }, size: { oneOf: [{ type: 'integer' }, { type: 'string', example: '10G' }] } } } } } },
        responses: { 201: json({ $ref: '#/components/schemas/Disk' }, 'created'), ...errors(400, 409, 507) },
      },
    },
    '/api/v1/disks/{name}': {
      parameters: [name('name', 'disk')],
      get: { summary: 'Describe a disk', responses: { 200: json({ $ref: '#/components/schemas/Disk' }), ...errors(400, 404) } },
      delete: { summary: 'Delete a disk (refused while exported)', responses: { 204: { description: 'deleted' }, ...errors(400, 404, 409) } },
    },
    '/api/v1/disks/{name}/snapshots': {
      parameters: [name('name', 'disk')],
      get: { summary: 'The snapshot tree', responses: { 200: json({ type: 'object' }), ...errors(404) } },
      post: {
        summary: 'Take a snapshot (the current state is frozen; writes go to a new delta), or with "prepare": true only make its delta (state "prepared"; the disk is unchanged until commit)',
        requestBody: {
          required: true,
          content: {
            'application/json': {
              schema: { type: 'object', required: ['name'], properties: { name: { type: 'string' }, prepare: { type: 'boolean', description: 'make the delta now, switch the disk onto it at commit; 409 while another is prepared' } } },
            },
          },
        },
        responses: { 201: json({ $ref: '#/components/schemas/Snapshot' }, 'created (or prepared)'), ...errors(400, 404, 409, 507) },
      },
    },
    '/api/v1/disks/{name}/snapshots/{snap}/commit': {
      parameters: [name('name', 'disk'), name('snap', 'snapshot')],
      post: {
        summary: 'Commit a prepared snapshot: the disk switches onto its delta (writes held, reads served, until the record is durable). DELETE of a prepared snapshot aborts it',
        responses: { 200: json({ $ref: '#/components/schemas/Snapshot' }), ...errors(400, 404, 409, 507) },
      },
    },
    '/api/v1/disks/{name}/snapshots/{snap}/revert': {
      parameters: [name('name', 'disk'), name('snap', 'snapshot')],
      post: { summary: 'Revert the disk to a snapshot (discards the current state)', responses: { 200: json({ type: 'object' }), ...errors(400, 404, 507) } },
    },
    '/api/v1/disks/{name}/snapshots/{snap}': {
      parameters: [name('name', 'disk'), name('snap', 'snapshot')],
      delete: { summary: 'Delete a snapshot, consolidating its layer (no content changes)', responses: { 204: { description: 'deleted' }, ...errors(400, 404, 409, 507) } },
    },
    '/api/v1/disks/{name}/access': {
      parameters: [name('name', 'disk')],
      put: {
        summary: 'Set the clients allowed to see the disk: iSCSI initiator names (LUN masking) and NBD TLS-PSK identities, in one list; and CHAP secrets (never returned)',
        requestBody: { required: true, content: { 'application/json': { schema: { type: 'object', required: ['initiators'], properties: { initiators: { type: 'array', items: { type: 'string' } }, chap: { type: 'object' } } } } } },
        responses: { 200: json({ type: 'object' }), ...errors(400, 404) },
      },
    },
    '/api/v1/nbd/keys': {
      get: {
        summary: 'Identities that have an NBD TLS-PSK key (keys are never returned)',
        responses: { 200: json({ type: 'object', properties: { identities: { type: 'array', items: { type: 'string' } } } }) },
      },
    },
    '/api/v1/nbd/keys/{identity}': {
      parameters: [{ name: 'identity', in: 'path', required: true, schema: { type: 'string', pattern: '^[A-Za-z0-9._@+-]{1,128}$' }, description: 'PSK identity: the NBD client\'s name, as listed in disk access lists' }],
      put: {
        summary: 'Set the TLS-PSK key of an NBD client identity (written to .tandem/keys.psk, psktool format, mode 0600)',
        requestBody: { required: true, content: { 'application/json': { schema: { type: 'object', required: ['key'], properties: { key: { type: 'string', pattern: '^([0-9a-fA-F]{2}){16,64}$', description: '16 to 64 bytes as hex' } } } } } },
        responses: { 200: json({ type: 'object', properties: { identity: { type: 'string' } } }, 'replaced'), 201: json({ type: 'object', properties: { identity: { type: 'string' } } }, 'created'), ...errors(400) },
      },
      delete: { summary: 'Remove an identity\'s key', responses: { 204: { description: 'deleted' }, ...errors(400, 404) } },
    },
    '/api/v1/locks': { get: { summary: 'Locks of the datastore\'s lockspace: state, owner, generation (fencing token), owner heartbeat age, waiting hosts; damaged records listed as such; 503 with the reason while the lockspace is unusable', responses: { 200: json({ type: 'object' }), ...errors(503) } } },
    '/api/v1/locks/{name}': { parameters: [{ name: 'name', in: 'path', required: true, schema: { type: 'string' } }], get: { summary: 'One lock', responses: { 200: json({ type: 'object' }), ...errors(404, 503) } } },
    '/api/v1/lockspace': {
      get: {
        summary: 'The datastore\'s lockspace as an iSCSI LUN (hosts join it there: `tandem host`, `tandem lock run --lockspace iscsi://…`)',
        responses: { 200: json({ type: 'object', properties: { host: { type: 'string', description: 'this server\'s name in the lockspace' }, iscsi: { type: 'object' }, uri: { type: 'string' } } }), ...errors(404) },
      },
    },
    '/api/v1/hosts': {
      get: {
        summary: 'Hosts of the lockspace and the VMs they run: slot, name, alive (true, false, or null while unknown), heartbeat (live, expired, left, unknown), heartbeat age, api (the REST API the host registered, or null), vms (VMs whose vm/<name> lock it holds)',
        responses: { 200: json({ type: 'object', properties: { hosts: { type: 'array', items: { $ref: '#/components/schemas/Host' } } } }), ...errors(503) },
      },
    },
    '/api/v1/hosts/{name}': {
      parameters: [{ name: 'name', in: 'path', required: true, schema: { type: 'string', maxLength: 64 } }],
      get: { summary: 'One host of the lockspace', responses: { 200: json({ $ref: '#/components/schemas/Host' }), ...errors(404, 503) } },
      put: {
        summary: 'A host registers its REST API (`tandem host` does, every few seconds; kept in memory)',
        requestBody: { required: true, content: { 'application/json': { schema: { type: 'object', required: ['api'], properties: { api: { type: 'string', example: 'http://127.0.0.1:7800' } } } } } },
        responses: { 200: json({ type: 'object', properties: { api: { type: 'string' }, registeredAt: { type: 'string' } } }), ...errors(400) },
      },
    },
    '/api/v1/vms': {
      get: {
        summary: 'The VMs of the live hosts, asked of the API each registered (`tandem host`): state, and for a side of a fault-tolerant pair its role and lag; hosts that did not answer are listed with why',
        responses: {
          200: json({
            type: 'object',
            properties: {
              vms: { type: 'array', items: { $ref: '#/components/schemas/HostVm' } },
              unreachable: { type: 'array', items: { type: 'object', properties: { host: { type: 'string' }, api: { type: 'string' }, error: { type: 'string' } } } },
            },
          }),
          ...errors(503),
        },
      },
    },
    '/metrics': { get: { summary: 'Prometheus metrics', responses: { 200: { description: 'text format', content: { 'text/plain': {} } } } } },
  },
  components: {
    schemas: {
      Error: { type: 'object', properties: { error: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } } } } },
      Host: {
        type: 'object',
        properties: {
          slot: { type: 'integer' },
          name: { type: 'string' },
          state: { type: 'string', enum: ['live', 'left', 'damaged'] },
          generation: { type: 'integer' },
          alive: { type: 'boolean', nullable: true },
          heartbeat: { type: 'string', enum: ['live', 'expired', 'left', 'unknown'] },
          heartbeatAgeMs: { type: 'integer', nullable: true },
          api: { type: 'string', nullable: true },
          vms: { type: 'array', items: { type: 'string' } },
        },
      },
      HostVm: {
        type: 'object',
        properties: {
          host: { type: 'string' },
          name: { type: 'string' },
          state: { type: 'string' },
          pid: { type: 'integer', nullable: true },
          generation: { type: 'integer', nullable: true },
          startedAt: { type: 'string', nullable: true },
          ft: {
            type: 'object',
            nullable: true,
            properties: {
              side: { type: 'string', enum: ['primary', 'backup'] },
              role: { type: 'string', nullable: true, description: 'primary, backup, live, alone, halted, handed-over; null until the VM answered' },
              lagMs: { type: 'number', nullable: true, description: 'the primary: how far its backup runs behind' },
              peer: { type: 'string', nullable: true },
              logBytesPerSecond: { type: 'number', nullable: true },
            },
          },
        },
      },
      Snapshot: {
        type: 'object',
        properties: {
          name: { type: 'string' },
          parent: { type: 'string', nullable: true },
          createdAt: { type: 'string' },
          isCurrent: { type: 'boolean' },
          state: { type: 'string', enum: ['prepared', 'committed'], description: 'in the answers of create, prepare and commit' },
        },
      },
      Disk: {
        type: 'object',
        properties: {
          name: { type: 'string' },
          size: { type: 'integer', description: 'virtual size in bytes' },
          actualSize: { type: 'integer', description: 'bytes used by the disk\'s files' },
          chain: { type: 'array', items: { type: 'string' }, description: 'VMDK files of the current state, top first' },
          current: { type: 'string', nullable: true },
          snapshots: { type: 'array', items: { $ref: '#/components/schemas/Snapshot' } },
          nbd: { type: 'string' },
          iscsi: { type: 'object' },
          openExports: { type: 'object' },
          prepared: { type: 'string', nullable: true, description: 'a snapshot prepared and not yet committed' },
          writers: { type: 'integer' },
          access: { type: 'object' },
        },
      },
    },
  },
}
