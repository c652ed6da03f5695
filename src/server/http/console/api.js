// Every request of the console goes through `request`: it adds `Authorization: Bearer <token>`
// once the user has given a token, and on a 401 asks for one (a single dialog, however many
// requests were refused at once) and tries again. The token is kept in sessionStorage: it lasts
// as long as the tab and is not shared with other tabs or sites.

const TOKEN_KEY = 'tandem.apiToken'

/** An API error: the HTTP status and the server's `{"error":{"code","message"}}`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

/** The pending token question, shared by every request refused while it is open. */
let asking = null
/** The user closed the dialog without a token: do not ask again until they choose to. */
let declined = false

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY)
}

/** Resolves to a new token, or null when the user declined. `ask` is the page's dialog. */
function askToken(ask, why) {
  if (declined) return Promise.resolve(null)
  asking ??= ask(why).then((token) => {
    asking = null
    if (token) sessionStorage.setItem(TOKEN_KEY, token)
    else declined = true
    return token || null
  })
  return asking
}

let tokenDialog = () => Promise.resolve(null)

/** The page's way of asking for a token: (reason) => Promise<string | null>. */
export function setTokenDialog(ask) {
  tokenDialog = ask
}

/** Asks for a token now (the page's "token" button), even after the user declined once. */
export function changeToken() {
  declined = false
  return askToken(tokenDialog, 'Enter the API token (the file .tandem/api-token in the datastore).')
}

/** fetch with the token; a 401 asks for one (once) and repeats the request with it. */
export async function request(path, { method = 'GET', body } = {}) {
  for (;;) {
    const token = storedToken()
    const headers = { accept: 'application/json' }
    if (token) headers.authorization = `Bearer ${token}`
    if (body !== undefined) headers['content-type'] = 'application/json'
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
    if (res.status !== 401) return res
    const why = token ? 'The server refused the token: enter the API token again.' : 'The server asks for its API token (the file .tandem/api-token in the datastore).'
    const given = await askToken(tokenDialog, why)
    if (!given) return res
  }
}

async function failure(res) {
  let code = 'HTTP'
  let message = `${res.status} ${res.statusText}`
  try {
    const j = await res.json()
    if (j && j.error) {
      code = j.error.code ?? code
      message = j.error.message ?? message
    }
  } catch {
    // not JSON: the status line says it
  }
  return new ApiError(res.status, code, message)
}

/** A JSON request; resolves to the body (null for 204), rejects with ApiError. */
export async function json(path, opts) {
  const res = await request(path, opts)
  if (!res.ok) throw await failure(res)
  // read to the end even when empty (204): a response left unread is cancelled, and logged
  const body = await res.text()
  return body === '' ? null : JSON.parse(body)
}

/** A text request (/metrics); rejects with ApiError. */
export async function text(path) {
  const res = await request(path)
  if (!res.ok) throw await failure(res)
  return res.text()
}
