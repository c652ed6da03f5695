/**
 * The subset of JSON Schema (draft 2020-12) the scenario schema uses, checked by hand (no
 * validator is a dependency): type, properties, required, additionalProperties (false or a
 * schema), items, enum, const, minimum, maximum, minItems, maxItems, pattern, oneOf with a
 * discriminating `const`, $ref to #/$defs/NAME. Each error names the path of the value (`$.timeline[2].atMs`).
 */
export interface JsonSchema {
  type?: 'object' | 'array' | 'string' | 'number' | 'integer' | 'boolean'
  properties?: Record<string, JsonSchema>
  required?: string[]
  additionalProperties?: boolean | JsonSchema
  items?: JsonSchema
  enum?: unknown[]
  const?: unknown
  minimum?: number
  maximum?: number
  minItems?: number
  maxItems?: number
  pattern?: string
  oneOf?: JsonSchema[]
  $ref?: string
  $defs?: Record<string, JsonSchema>
  description?: string
  examples?: unknown[]
  default?: unknown
  title?: string
  $schema?: string
  $id?: string
}

export interface SchemaError {
  path: string
  message: string
}

const typeOf = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'array' : Number.isInteger(v) ? 'integer' : typeof v)
const fits = (t: string, v: unknown) => typeOf(v) === t || (t === 'number' && typeOf(v) === 'integer')
const key = (path: string, k: string) => (/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) ? `${path}.${k}` : `${path}[${JSON.stringify(k)}]`)

/** Every way `value` breaks `schema` (empty: it conforms). `root` holds the `$defs` a `$ref` names. */
export function validate(schema: JsonSchema, value: unknown, path = '$', root: JsonSchema = schema): SchemaError[] {
  if (schema.$ref) {
    const name = /^#\/\$defs\/(.+)$/.exec(schema.$ref)?.[1]
    const target = name ? root.$defs?.[name] : undefined
    if (!target) throw new Error(`schema: unresolved $ref ${schema.$ref}`)
    return validate(target, value, path, root)
  }
  const errs: SchemaError[] = []
  const err = (message: string, p = path) => errs.push({ path: p, message })
  if (schema.type && !fits(schema.type, value)) {
    err(`must be ${schema.type === 'integer' || schema.type === 'array' || schema.type === 'object' ? 'an' : 'a'} ${schema.type}, not ${typeOf(value)}`)
    return errs
  }
  if (schema.const !== undefined && value !== schema.const) err(`must be ${JSON.stringify(schema.const)}`)
  if (schema.enum && !schema.enum.includes(value)) err(`must be one of ${schema.enum.map((e) => JSON.stringify(e)).join(', ')}, not ${JSON.stringify(value)}`)
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) err(`must be at least ${schema.minimum}`)
    if (schema.maximum !== undefined && value > schema.maximum) err(`must be at most ${schema.maximum}`)
  }
  if (typeof value === 'string' && schema.pattern && !new RegExp(schema.pattern).test(value)) err(`${JSON.stringify(value)} does not match ${schema.pattern}`)
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) err(`must have at least ${schema.minItems} item${schema.minItems === 1 ? '' : 's'}`)
    if (schema.maxItems !== undefined && value.length > schema.maxItems) err(`must have at most ${schema.maxItems} items`)
    if (schema.items) value.forEach((v, i) => errs.push(...validate(schema.items!, v, `${path}[${i}]`, root)))
  }
  if (typeOf(value) === 'object') {
    const o = value as Record<string, unknown>
    for (const r of schema.required ?? []) if (!(r in o)) err(`is required`, key(path, r))
    for (const [k, v] of Object.entries(o)) {
      const p = schema.properties?.[k]
      if (p) errs.push(...validate(p, v, key(path, k), root))
      else if (schema.additionalProperties === false) err(`is not a known property${schema.properties ? ` (known: ${Object.keys(schema.properties).join(', ')})` : ''}`, key(path, k))
      else if (typeof schema.additionalProperties === 'object') errs.push(...validate(schema.additionalProperties, v, key(path, k), root))
    }
  }
  if (schema.oneOf) {
    // a discriminated union: the branch whose const property the value carries judges it
    const branches = schema.oneOf.map((b) => (b.$ref ? root.$defs![b.$ref.replace('#/$defs/', '')] : b))
    const disc = Object.keys(branches[0].properties ?? {}).find((k) => branches.every((b) => b.properties?.[k]?.const !== undefined))
    const o = value as Record<string, unknown>
    if (disc && typeOf(value) === 'object') {
      const b = branches.find((x) => x.properties![disc].const === o[disc])
      if (b) errs.push(...validate(b, value, path, root))
      else err(`must be one of ${branches.map((x) => JSON.stringify(x.properties![disc].const)).join(', ')}${disc in o ? `, not ${JSON.stringify(o[disc])}` : ''}`, key(path, disc))
    } else {
      const passing = branches.filter((b) => validate(b, value, path, root).length === 0).length
      if (passing !== 1) err(`must match exactly one of ${branches.length} forms (matches ${passing})`)
    }
  }
  return errs
}
