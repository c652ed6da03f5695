import t from 'tap'
import { StorageError, isStorageError, fromSystemError } from '../../src/disk-formats/errors.js'

// The `tandem` executable bundles one copy of errors.ts and loads the server and the lock manager
// with another: an error thrown by either must still be a StorageError to the CLI.
t.test('a StorageError from another copy of the module is a StorageError', async (t) => {
  const second = '../../src/disk-formats/errors.js?copy=2' // a query string makes it a module of its own
  const other = (await import(second)) as typeof import('../../src/disk-formats/errors.js')
  t.not(other.StorageError, StorageError, 'a second copy of the module was loaded')
  const e = new other.StorageError('Busy', 'held by host B', '/x')
  t.ok(e instanceof StorageError)
  t.ok(isStorageError(e, 'Busy'))
  t.notOk(isStorageError(e, 'NotFound'))
  t.equal(fromSystemError(e, '/y', 'Could not open'), e, 'passed through, not wrapped')
  t.ok(new StorageError('Corrupt', 'x') instanceof other.StorageError)
})

t.test('other errors and values are not StorageErrors', async (t) => {
  const lookalike = Object.assign(new Error('x'), { name: 'StorageError', code: 'Busy' })
  for (const v of [lookalike, new Error('x'), null, undefined, 'StorageError', { code: 'Busy' }]) {
    t.notOk(v instanceof StorageError, String(v))
    t.notOk(isStorageError(v), String(v))
  }
})
