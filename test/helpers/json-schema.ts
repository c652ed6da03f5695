/**
 * A validator for the subset of JSON Schema (OpenAPI 3.0 flavour) that src/server/http/openapi.ts
 * uses: $ref to `#/…`, type (with nullable), properties, required, additionalProperties (boolean
 * or schema), items, enum, oneOf, pattern, minimum, minLength, maxLength, format date-time.
 * A keyword it does not know is an error, so the document cannot use one this leaves unchecked.
 * Returns the problems found, each with its JSON path; [] when `value` conforms.
 */
type Schema = Record<string, unknown>

const ANNOTATIONS = new Set(['description', 'example'])
const KNOWN = new Set(['$ref', 'type', 'nullable', 'properties', 'required', 'additionalProperties', 'items', 'enum', 'oneOf', 'pattern', 'minimum', 'minLength', 'maxLength', 'format'])

export function validate(root: unknown, schema: Schema, value: unknown, path = '$'): string[] {
  for (const k of Object.keys(schema)) if (!KNOWN.has(k) && !ANNOTATIONS.has(k)) return [`${path}: the schema uses '${k}', which this validator does not check`]
  if (typeof schema.$ref === 'string') {
    if (!schema.$ref.startsWith('#/')) return [`${path}: only local $ref is supported`]
    let target: unknown = root
    for (const part of schema.$ref.slice(2).split('/')) target = (target as Record<string, unknown> | undefined)?.[part]
    if (!target) return [`${path}: $ref ${schema.$ref} names nothing`]
    return validate(root, target as Schema, value, path)
  }
  if (value === null) return schema.nullable === true || schema.type === undefined ? [] : [`${path}: null where ${String(schema.type)} is expected`]
  if (Array.isArray(schema.oneOf)) {
    const ok = (schema.oneOf as Schema[]).filter((s) => validate(root, s, value, path).length === 0).length
    if (ok !== 1) return [`${path}: matches ${ok} of oneOf's schemas, not 1`]
  }
  const out: string[] = []
  const t = schema.type
  if (t !== undefined) {
    const actual = Array.isArray(value) ? 'array' : Number.isInteger(value) ? 'integer' : typeof value
    const fits = t === actual || (t === 'number' && actual === 'integer') || (t === 'object' && actual === 'object')
    if (!fits) return [`${path}: ${actual} where ${String(t)} is expected`]
  }
  if (Array.isArray(schema.enum) && !schema.enum.includes(value)) out.push(`${path}: ${JSON.stringify(value)} is not one of ${JSON.stringify(schema.enum)}`)
  if (typeof value === 'string') {
    if (typeof schema.pattern === 'string' && !new RegExp(schema.pattern).test(value)) out.push(`${path}: ${JSON.stringify(value)} does not match ${schema.pattern}`)
    if (typeof schema.minLength === 'number' && value.length < schema.minLength) out.push(`${path}: shorter than ${schema.minLength}`)
    if (typeof schema.maxLength === 'number' && value.length > schema.maxLength) out.push(`${path}: longer than ${schema.maxLength}`)
    if (schema.format === 'date-time' && !(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(value) && !Number.isNaN(Date.parse(value)))) out.push(`${path}: ${JSON.stringify(value)} is not a date-time`)
  }
  if (typeof value === 'number' && typeof schema.minimum === 'number' && value < schema.minimum) out.push(`${path}: ${value} is below ${schema.minimum}`)
  if (Array.isArray(value) && schema.items) value.forEach((v, i) => out.push(...validate(root, schema.items as Schema, v, `${path}[${i}]`)))
  if (typeof value === 'object' && !Array.isArray(value)) {
    const o = value as Record<string, unknown>
    const props = (schema.properties ?? {}) as Record<string, Schema>
    for (const r of (schema.required ?? []) as string[]) if (!(r in o)) out.push(`${path}: '${r}' is missing`)
    for (const [k, v] of Object.entries(o)) {
      if (props[k]) out.push(...validate(root, props[k], v, `${path}.${k}`))
      else if (schema.additionalProperties === false) out.push(`${path}: '${k}' is not in the schema`)
      else if (typeof schema.additionalProperties === 'object') out.push(...validate(root, schema.additionalProperties as Schema, v, `${path}.${k}`))
    }
  }
  return out
}
