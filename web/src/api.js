// The API, same origin: the key goes in `Authorization: Bearer`, except for EventSource (?api_key=).

const KEY_STORAGE = 'cimtwin.apiKey';

let apiKey = localStorage.getItem(KEY_STORAGE) || '';

export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
    this.body = body;
  }
}

export function getKey() {
  return apiKey;
}

export function setKey(key) {
  apiKey = key;
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

/** A key given in the URL fragment (`#key=…`) is taken and removed from the address bar. */
export function takeKeyFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get('key');
  if (!key) return null;
  params.delete('key');
  const rest = params.toString();
  history.replaceState(null, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
  return key;
}

export function isSameOrigin(url) {
  try {
    return new URL(url, location.href).origin === location.origin;
  } catch {
    return false;
  }
}

export async function api(path, { method = 'GET', body, key = apiKey, signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.slice(0, 200) };
    }
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

/** Checks a key against the API (a reader route that needs no database). */
export async function checkKey(key) {
  await api('/tiles', { key });
}

export function streamUrl(lastEventId) {
  const q = new URLSearchParams({ api_key: apiKey });
  if (lastEventId) q.set('last_event_id', String(lastEventId));
  return `/alerts/stream?${q}`;
}
