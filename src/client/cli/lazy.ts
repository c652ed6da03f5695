/**
 * Loads a module that only the long-running commands need (`serve`, `vm run`, the lock
 * manager), named relative to this folder, when its command runs.
 *
 * The `tandem` executable runs the CLI's bundle as a vm.Script from V8's code cache (tandem.cts),
 * and there Node 20 cannot run `import()`: a script from the code cache loses its import
 * callback ("A dynamic import callback was not specified"). So the executable hands over an
 * import function of its own, under HOST_IMPORT; without it (the unbundled modules, tests)
 * this module imports directly.
 */
const HOST_IMPORT = Symbol.for('tandem.import')

type Importer = (url: string) => Promise<unknown>

export function loadLazy<T>(relative: string): Promise<T> {
  const url = new URL(relative, import.meta.url).href
  const host = (globalThis as { [HOST_IMPORT]?: Importer })[HOST_IMPORT]
  return (host ? host(url) : import(url)) as Promise<T>
}
