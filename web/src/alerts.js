// Alerts: the list (GET /alerts, unfinished first), live changes (SSE /alerts/stream), markers on the
// map, and the operator's actions (acknowledge, dispatch, resolve).

import { api, streamUrl } from './api.js';
import { formatNumber, formatTime, t } from './i18n.js';
import { escapeHtml } from './map.js';

const UNFINISHED = ['open', 'acknowledged', 'dispatched'];
const SEVERITY_RANK = { critical: 4, major: 3, warning: 2, info: 1 };
const UNFINISHED_LIMIT = 300;
const FINISHED_LIMIT = 30;
const SHOWN_MAX = 400;

export const isUnfinished = (a) => UNFINISHED.includes(a.status);

/** The alert's point as [lon, lat], from a REST alert (geometry) or a stream document (lon/lat). */
function lonLat(a) {
  if (a.geometry && a.geometry.type === 'Point') return a.geometry.coordinates.slice(0, 2);
  if (a.lon != null && a.lat != null) return [a.lon, a.lat];
  return null;
}

export class AlertBoard {
  /**
   * @param {object} opts
   * @param {HTMLElement} opts.list         the list element (data-testid="alert-list")
   * @param {HTMLElement} opts.summary      where the count of unfinished alerts goes
   * @param {(a: object) => void} opts.onLocate  fly to an alert
   * @param {(doc: object) => void} opts.onEvent  every stream document (after it is applied)
   * @param {(d: object) => void} opts.onBuildingState  every building_state event
   * @param {(status: string) => void} opts.onLive  connected | connecting | disconnected
   * @param {(msg: string, kind?: string) => void} opts.toast
   * @param {() => void} opts.onReconnect   the stream came back after a break
   */
  constructor(opts) {
    Object.assign(this, opts);
    this.alerts = new Map();   // id → alert (REST fields, updated by stream documents)
    this.items = new Map();    // id → <li>
    this.lastEventId = 0;
    this.selectedId = null;
    this.parties = null;
    this.source = null;
    this.buffer = null;        // stream documents that arrive before the first list is in
    this.listeners = new Set();
    this.renderQueued = false;
  }

  onChange(fn) {
    this.listeners.add(fn);
  }

  // --- loading ------------------------------------------------------------------------------

  /**
   * Opens the stream and reads the lists at the same time; stream events that come while the lists
   * are read are applied on top of them, in order. The lists may have been read just before the
   * stream began, so they are read once more, quietly, once it is open.
   */
  async start() {
    const opened = this.connect();
    await Promise.all([Promise.race([opened, new Promise((r) => setTimeout(r, 3000))]), this.reload()]);
    this.reload().catch(() => {});
  }

  /** Reads the lists again (one reading at a time: a later one must not be overtaken by an earlier one). */
  reload() {
    const run = (this.reloading || Promise.resolve()).catch(() => {}).then(() => this.readLists());
    this.reloading = run;
    return run;
  }

  async readLists() {
    if (!this.buffer) this.buffer = [];
    const unfinished = new URLSearchParams({ limit: String(UNFINISHED_LIMIT) });
    for (const s of UNFINISHED) unfinished.append('status', s);
    const finished = new URLSearchParams({ limit: String(FINISHED_LIMIT) });
    for (const s of ['resolved', 'closed']) finished.append('status', s);
    let open;
    let done;
    try {
      [open, done] = await Promise.all([api(`/alerts?${unfinished}`), api(`/alerts?${finished}`)]);
    } catch (err) {
      this.flush();
      throw err;
    }
    const fresh = new Map([...this.alerts].filter(([, a]) => a.fresh).map(([id, a]) => [id, a.fresh]));
    this.alerts.clear();
    for (const a of [...done.items, ...open.items]) this.alerts.set(a.id, fresh.has(a.id) ? { ...a, fresh: fresh.get(a.id) } : a);
    this.unfinishedMatched = open.numberMatched;
    this.flush();
  }

  /** Applies the stream events held back while the lists were read. */
  flush() {
    const pending = this.buffer || [];
    this.buffer = null;
    for (const doc of pending) this.apply(doc);
    this.changed();
  }

  connect() {
    return new Promise((resolve) => {
      if (this.source) this.source.close();
      this.onLive('connecting');
      const es = new EventSource(streamUrl(this.lastEventId));
      this.source = es;
      es.addEventListener('open', () => {
        if (this.brokenAt) {
          this.brokenAt = null;
          this.onReconnect?.();
        }
        this.onLive('connected');
        resolve();
      });
      es.addEventListener('alert', (e) => {
        if (e.lastEventId) this.lastEventId = Number(e.lastEventId) || this.lastEventId;
        let doc;
        try {
          doc = JSON.parse(e.data);
        } catch {
          return;
        }
        if (this.buffer) this.buffer.push(doc);
        else {
          this.apply(doc);
          this.changed();
        }
        this.onEvent?.(doc);
      });
      es.addEventListener('building_state', (e) => {
        try {
          this.onBuildingState?.(JSON.parse(e.data));
        } catch {
          /* a malformed event is dropped */
        }
      });
      // Older events were left out of a resumed stream: read the lists again.
      es.addEventListener('truncated', () => this.reload().catch(() => {}));
      es.addEventListener('error', () => {
        this.brokenAt = this.brokenAt || Date.now();
        if (es.readyState === EventSource.CLOSED) {
          // The browser gave up (an HTTP error, e.g. 503 while the hub connects): try again ourselves.
          this.onLive('disconnected');
          setTimeout(() => { if (this.source === es) this.connect(); }, 3000);
          resolve();
        } else {
          this.onLive('connecting');
        }
      });
    });
  }

  stop() {
    if (this.source) this.source.close();
    this.source = null;
  }

  // --- state --------------------------------------------------------------------------------

  /** Merges one stream document into the alert it is about. */
  apply(doc) {
    const a = doc.alert;
    const ev = doc.event || {};
    if (!a || a.id == null) return;
    const prev = this.alerts.get(a.id) || {};
    const next = { ...prev, ...a };
    if (ev.to_status) next.status = ev.to_status;
    if (a.lon != null && a.lat != null) next.geometry = { type: 'Point', coordinates: [a.lon, a.lat] };
    if (a.party_id !== prev.party_id && prev.party_id !== undefined) next.party_name = null;
    if (ev.action === 'raised' && !prev.id) next.fresh = Date.now();
    this.alerts.set(a.id, next);
    // The stream names the area and the party by code: read their names once.
    if (!prev.id || a.party_id !== prev.party_id) this.fetchNames(a.id);
  }

  async fetchNames(id) {
    if ((this.namesInFlight || 0) >= 4) return;  // a burst: codes will do
    this.namesInFlight = (this.namesInFlight || 0) + 1;
    try {
      const full = await api(`/alerts/${id}`);
      const cur = this.alerts.get(id);
      if (!cur || cur.party_id !== full.party_id) return;
      this.alerts.set(id, { ...cur, area_name: full.area_name, party_name: full.party_name,
        geometry: cur.geometry || full.geometry });
      this.changed();
    } catch {
      /* codes stay */
    } finally {
      this.namesInFlight -= 1;
    }
  }

  /** An alert as an action returned it (the REST shape, with its trail). */
  put(alert) {
    const { events, ...rest } = alert;
    this.alerts.set(alert.id, { ...this.alerts.get(alert.id), ...rest });
    this.changed();
  }

  sorted() {
    return [...this.alerts.values()].sort((x, y) => {
      const ux = isUnfinished(x) ? 1 : 0;
      const uy = isUnfinished(y) ? 1 : 0;
      if (ux !== uy) return uy - ux;
      if (ux && x.status !== y.status && (x.status === 'open' || y.status === 'open')) return x.status === 'open' ? -1 : 1;
      const sx = SEVERITY_RANK[x.severity] || 0;
      const sy = SEVERITY_RANK[y.severity] || 0;
      if (ux && sx !== sy) return sy - sx;
      return String(y.raised_at).localeCompare(String(x.raised_at)) || y.id - x.id;
    });
  }

  unfinishedCount() {
    let n = 0;
    for (const a of this.alerts.values()) if (isUnfinished(a)) n += 1;
    return n;
  }

  /** Unfinished alerts with a place, as GeoJSON for the map. */
  markers() {
    const features = [];
    for (const a of this.alerts.values()) {
      const ll = isUnfinished(a) && lonLat(a);
      if (ll) {
        features.push({ type: 'Feature', id: a.id, geometry: { type: 'Point', coordinates: ll },
          properties: { id: a.id, severity: a.severity, status: a.status, title: a.title } });
      }
    }
    return { type: 'FeatureCollection', features };
  }

  changed() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    queueMicrotask(() => {
      this.renderQueued = false;
      this.render();
      for (const fn of this.listeners) fn();
    });
  }

  // --- the list -----------------------------------------------------------------------------

  render() {
    const sorted = this.sorted().slice(0, SHOWN_MAX);
    const keep = new Set(sorted.map((a) => a.id));
    for (const [id, li] of this.items) {
      if (!keep.has(id)) {
        li.remove();
        this.items.delete(id);
      }
    }
    let before = this.list.firstElementChild;
    for (const a of sorted) {
      let li = this.items.get(a.id);
      if (!li) {
        li = document.createElement('li');
        li.setAttribute('data-testid', 'alert-item');
        li.addEventListener('click', (e) => this.onItemClick(e, li));
        this.items.set(a.id, li);
      }
      this.fill(li, a);
      if (li !== before) this.list.insertBefore(li, before);
      else before = before.nextElementSibling;
    }
    const empty = this.list.parentElement.querySelector('.alerts-empty');
    if (empty) empty.hidden = sorted.length > 0;
    const n = this.unfinishedCount();
    const more = Math.max(0, (this.unfinishedMatched || 0) - UNFINISHED_LIMIT);
    this.summary.textContent = t('alerts.unfinished', { n }) + (more ? ` · ${t('alerts.more', { n: more })}` : '');
  }

  fill(li, a) {
    const sig = JSON.stringify([a.status, a.severity, a.title, a.count, a.last_value, a.party_id, a.party_name,
      a.party_code, a.area_name, a.area_code, a.building_id, a.raised_at, this.selectedId === a.id,
      this.busy?.has(a.id), this.picking === a.id]);
    if (li.dataset.sig === sig) return;
    li.dataset.sig = sig;
    li.dataset.alertId = String(a.id);
    li.dataset.status = a.status;
    li.dataset.severity = a.severity;
    li.className = `alert-item sev-${a.severity} status-${a.status}${this.selectedId === a.id ? ' selected' : ''}`
      + (a.fresh && Date.now() - a.fresh < 10000 ? ' fresh' : '');
    const where = [a.area_name || a.area_code, a.building_id ? t('alert.building', { id: a.building_id }) : null]
      .filter(Boolean).join(' · ');
    const party = a.party_name || a.party_code;
    const busy = this.busy?.has(a.id);
    const unfinished = isUnfinished(a);
    li.innerHTML = `
      <div class="alert-head">
        <span class="sev-badge sev-${escapeHtml(a.severity)}">${escapeHtml(t(`severity.${a.severity}`))}</span>
        <span class="alert-title">${escapeHtml(a.title)}</span>
        <span class="alert-status status-${escapeHtml(a.status)}" data-testid="alert-status">${escapeHtml(t(`status.${a.status}`))}</span>
      </div>
      <div class="alert-meta">
        <span>#${a.id}</span>
        ${where ? `<span>${escapeHtml(where)}</span>` : ''}
        <time datetime="${escapeHtml(a.raised_at)}">${escapeHtml(formatTime(a.raised_at))}</time>
        ${a.count > 1 ? `<span>${escapeHtml(t('alert.count', { n: a.count }))}</span>` : ''}
        ${a.last_value != null ? `<span>${escapeHtml(t('alert.value', { v: formatNumber(a.last_value) }))}</span>` : ''}
      </div>
      <div class="alert-party">${escapeHtml(t('alert.party'))}: ${party ? escapeHtml(party) : `<em>${escapeHtml(t('alert.noParty'))}</em>`}</div>
      ${unfinished ? `<div class="alert-actions">
        <button type="button" data-testid="alert-ack" data-action="acknowledge" ${a.status !== 'open' || busy ? 'disabled' : ''}>${escapeHtml(t('alert.ack'))}</button>
        <button type="button" data-testid="alert-dispatch" data-action="dispatch" ${busy ? 'disabled' : ''}>${escapeHtml(t('alert.dispatch'))}</button>
        <button type="button" class="link" data-testid="alert-dispatch-other" data-action="pick" ${busy ? 'disabled' : ''}>${escapeHtml(t('alert.dispatchOther'))}</button>
        <button type="button" data-testid="alert-resolve" data-action="resolve" ${busy ? 'disabled' : ''}>${escapeHtml(t('alert.resolve'))}</button>
      </div>` : ''}
      ${this.picking === a.id ? this.pickerHtml(a) : ''}`;
  }

  pickerHtml(a) {
    const options = (this.parties || []).map((p) => `<option value="${p.id}" ${p.id === a.party_id ? 'selected' : ''}>`
      + `${escapeHtml(p.name || p.code)}${p.id === a.party_id ? escapeHtml(t('alert.routed')) : ''}</option>`).join('');
    return `<div class="dispatch-picker">
      <label>${escapeHtml(t('alert.chooseParty'))}
        <select data-testid="dispatch-party">${a.party_id == null ? '<option value="" selected>—</option>' : ''}${options}</select></label>
      <button type="button" data-testid="dispatch-confirm" data-action="dispatch-confirm">${escapeHtml(t('alert.confirmDispatch'))}</button>
      <button type="button" class="link" data-action="pick-cancel">${escapeHtml(t('alert.cancel'))}</button>
    </div>`;
  }

  relabel() {
    for (const li of this.items.values()) li.dataset.sig = '';
    this.render();
  }

  select(id, { scroll = false } = {}) {
    this.selectedId = id;
    this.render();
    if (scroll) this.items.get(id)?.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  }

  async onItemClick(e, li) {
    const id = Number(li.dataset.alertId);
    const a = this.alerts.get(id);
    if (!a) return;
    const button = e.target.closest('button');
    if (e.target.closest('select, label')) return;
    if (!button) {
      this.select(id);
      this.onLocate?.(a);
      return;
    }
    const action = button.dataset.action;
    if (action === 'pick') return this.openPicker(a);
    if (action === 'pick-cancel') {
      this.picking = null;
      return this.render();
    }
    if (action === 'dispatch' && a.party_id == null) return this.openPicker(a);
    if (action === 'dispatch-confirm') {
      const value = li.querySelector('select[data-testid="dispatch-party"]')?.value;
      if (!value) return;
      const partyId = Number(value);
      this.picking = null;
      return this.act(a, 'dispatch', partyId === a.party_id ? {} : { party_id: partyId });
    }
    if (['acknowledge', 'dispatch', 'resolve'].includes(action)) return this.act(a, action, {});
  }

  async openPicker(a) {
    if (!this.parties) {
      try {
        const page = await api('/parties?limit=1000');
        this.parties = page.items || page;
      } catch (err) {
        this.toast(t('alert.failed', { detail: err.message }), 'error');
        return;
      }
    }
    this.picking = a.id;
    this.render();
  }

  async act(a, action, body) {
    this.busy = this.busy || new Set();
    this.busy.add(a.id);
    this.render();
    try {
      const updated = await api(`/alerts/${a.id}/${action}`, { method: 'POST', body });
      this.busy.delete(a.id);
      this.put(updated);  // the item shows the new status: no other message
    } catch (err) {
      this.busy.delete(a.id);
      this.render();
      this.toast(t('alert.failed', { detail: err.message }), 'error');
    }
  }
}
