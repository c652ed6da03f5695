/** The hart's engines (SPEC.md §Engines): `interp` is the reference, `jit` translates blocks; same counts, same states. */
export const ENGINES = ['interp', 'jit'] as const
export type Engine = (typeof ENGINES)[number]
