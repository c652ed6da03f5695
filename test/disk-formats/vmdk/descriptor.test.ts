import t from 'tap'
import { parseDescriptor, serializeDescriptor, looksLikeDescriptor, StorageError } from '../../../src/disk-formats/index.js'

const QEMU = `# Disk DescriptorFile
version=1
CID=a847f1e4
parentCID=2287dc39
createType="monolithicSparse"
parentFileNameHint="a.vmdk"
# Extent description
RW 131072 SPARSE "c.vmdk"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "130"
ddb.adapterType = "ide"
`

t.test('parses qemu output and round-trips', async (t) => {
  const d = parseDescriptor(QEMU, 'c.vmdk')
  t.equal(d.cid, 0xa847f1e4)
  t.equal(d.parentCid, 0x2287dc39)
  t.equal(d.parentFileNameHint, 'a.vmdk')
  t.same(d.extents, [{ access: 'RW', sectors: 131072, type: 'SPARSE', file: 'c.vmdk' }])
  t.same(parseDescriptor(serializeDescriptor(d), 'x'), d)
  const text = serializeDescriptor(d)
  // qemu's strstr-based parser: CID= must come before parentCID and no other "CID" before it
  t.ok(text.indexOf('CID=') < text.indexOf('parentCID='))
  t.equal(text.indexOf('CID'), text.indexOf('CID='))
  t.match(text, /parentFileNameHint="a.vmdk"\n/)
})

t.test('CRLF, FLAT offsets, ZERO extents, unknown keys kept', async (t) => {
  const d = parseDescriptor('version=1\r\nencoding="UTF-8"\r\nCID=1\r\nparentCID=ffffffff\r\ncreateType="monolithicFlat"\r\nRW 100 FLAT "x-flat.vmdk" 0\r\nRDONLY 28 ZERO\r\nisNativeSnapshot="no"\r\n', 'f')
  t.equal(d.extents[0].offset, 0)
  t.equal(d.extents[1].type, 'ZERO')
  t.same(d.extra, [['encoding', 'UTF-8'], ['isNativeSnapshot', 'no']])
})

t.test('errors name the file and line', async (t) => {
  const cases: [string, RegExp][] = [
    ['version=1\nCID=xyz\ncreateType="a"\nRW 1 SPARSE "a"\n', /line 2: CID 'xyz' is not a 32-bit hex number/],
    ['version=9\n', /line 1: unsupported descriptor version '9'/],
    ['version=1\nCID=1\ncreateType="a"\n', /no extent lines/],
    ['version=1\nCID=1\ncreateType="a"\nRW 1 BOGUS "a"\n', /line 4: unknown extent type 'BOGUS'/],
    ['version=1\nCID=1\ncreateType="a"\nRW 1 FLAT "a"\n', /FLAT extent .* has no offset/],
    ['version=1\nCID=1\ncreateType="a"\nRW 1 SPARSE "a" 7\n', /must not have an offset/],
    ['version=1\ncreateType="a"\nRW 1 SPARSE "a"\n', /no 'CID=' line/],
    ['version=1\nCID=1\nRW 1 SPARSE "a"\ngarbage\n', /line 4: expected 'key=value'/],
  ]
  for (const [text, re] of cases) {
    t.throws(() => parseDescriptor(text, 'file.vmdk'), { code: 'Corrupt', message: re })
    try {
      parseDescriptor(text, 'file.vmdk')
    } catch (e) {
      t.ok(e instanceof StorageError && e.message.includes("'file.vmdk'"))
    }
  }
})

t.test("probe: qemu's rule", async (t) => {
  t.ok(looksLikeDescriptor('# comment\n\nversion=1\n'))
  t.ok(looksLikeDescriptor('version=3\r\n'))
  t.notOk(looksLikeDescriptor('version=4\n'))
  t.notOk(looksLikeDescriptor('hello\nversion=1\n'))
})
