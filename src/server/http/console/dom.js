// Builds DOM and SVG nodes from data (text is always set as text, never parsed as HTML).

const SVG = 'http://www.w3.org/2000/svg'

function fill(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else if (k === 'dataset') Object.assign(el.dataset, v)
    else el.setAttribute(k, v === true ? '' : String(v))
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue
    el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
  return el
}

/** An HTML element: h('td', { class: 'x' }, 'text', child, [more]). */
export const h = (tag, attrs, ...children) => fill(document.createElement(tag), attrs, children)

/** An SVG element. */
export const s = (tag, attrs, ...children) => fill(document.createElementNS(SVG, tag), attrs, children)

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren()
  fill(el, {}, children)
}
