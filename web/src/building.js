// The building panel: a building's tree (GET /twin/buildings/{id}), a floor picker, and the floor's
// rooms with their sensors (GET /twin/buildings/{id}/floors/{level}), the plan drawn on the map.

import { api, ApiError } from './api.js';
import { formatNumber, formatTime, t } from './i18n.js';
import { emptyCollection, escapeHtml, hideBuilding, setBuildingSelected } from './map.js';

const REFRESH_DEBOUNCE_MS = 800;

function stateBadge(state, testid) {
  const s = state || 'none';
  return `<span class="state state-${escapeHtml(s)}"${testid ? ` data-testid="${testid}" data-state="${escapeHtml(s)}"` : ''}>`
    + `${escapeHtml(t(`state.${s}`))}</span>`;
}

function countsHtml(c) {
  if (!c) return '';
  return `<span class="counts">${['alarm', 'warning', 'ok', 'offline'].map((k) => (
    `<span class="count state-${k}" title="${escapeHtml(t(`state.${k}`))}">${escapeHtml(t(`state.${k}`))} ${c[k] ?? 0}</span>`)).join('')}</span>`;
}

function sensorRow(s) {
  const value = s.value == null ? '—' : `${formatNumber(s.value)}${s.unit ? ` ${s.unit}` : ''}`;
  return `<li class="sensor" data-sensor-id="${s.id}" data-state="${escapeHtml(s.state)}">
    <span class="dot state-${escapeHtml(s.state)}"></span>
    <span class="sensor-name">${escapeHtml(s.device)}/${escapeHtml(s.channel)}</span>
    <span class="sensor-q">${escapeHtml(s.quantity ?? '')}</span>
    <span class="sensor-value" title="${escapeHtml(formatTime(s.time))}">${escapeHtml(value)}</span>
    ${stateBadge(s.state)}</li>`;
}

function floorLabel(f) {
  return t('building.level', { level: f.level }) + (f.name ? ` · ${f.name}` : '');
}

/** [[w, s], [e, n]] of any GeoJSON geometry, or null. */
export function bbox(geometry) {
  let w = Infinity;
  let s = Infinity;
  let e = -Infinity;
  let n = -Infinity;
  const walk = (c) => {
    if (typeof c[0] === 'number') {
      w = Math.min(w, c[0]); e = Math.max(e, c[0]); s = Math.min(s, c[1]); n = Math.max(n, c[1]);
    } else c.forEach(walk);
  };
  if (geometry?.type === 'GeometryCollection') geometry.geometries.forEach((g) => walk(g.coordinates));
  else if (geometry?.coordinates) walk(geometry.coordinates);
  return Number.isFinite(w) ? [[w, s], [e, n]] : null;
}

export class BuildingPanel {
  constructor({ map, panel, toast, onOpen }) {
    this.map = map;
    this.panel = panel;
    this.toast = toast;
    this.onOpen = onOpen;
    this.id = null;
    this.tree = null;
    this.level = null;
    this.plan = null;
    this.selectedRoom = null;
    this.seq = 0;
    panel.addEventListener('change', (e) => {
      if (e.target.matches('[data-testid="floor-select"]')) {
        const v = e.target.value;
        this.pickFloor(v === '' ? null : Number(v));
      }
    });
    panel.addEventListener('click', (e) => {
      if (e.target.closest('[data-action="close"]')) return this.close();
      const room = e.target.closest('[data-testid="room-item"]');
      if (room) this.selectRoom(Number(room.dataset.roomId), { fly: true });
    });
  }

  get isOpen() {
    return this.id != null;
  }

  async open(id, { fly = false } = {}) {
    if (!Number.isInteger(id) || id < 1) return;
    const seq = ++this.seq;
    if (this.id !== id) {
      this.clearFloor();
      setBuildingSelected(this.map, this.id, false);
      this.id = id;
      this.tree = null;
      this.level = null;
      setBuildingSelected(this.map, id, true);
    }
    this.panel.hidden = false;
    this.panel.dataset.buildingId = String(id);
    if (!this.tree) this.panel.querySelector('.panel-body').innerHTML = `<p class="muted">${escapeHtml(t('building.loading'))}</p>`;
    this.onOpen?.(id);
    const place = fly ? api(`/buildings/${id}`).catch(() => null) : null;
    try {
      const tree = await api(`/twin/buildings/${id}`);
      if (seq !== this.seq) return;
      this.tree = tree;
      this.render();
    } catch (err) {
      if (seq !== this.seq) return;
      const msg = err instanceof ApiError && err.status === 404 ? t('building.notFound', { id }) : err.message;
      this.panel.querySelector('.panel-body').innerHTML = `<p class="error">${escapeHtml(msg)}</p>`;
      this.panel.querySelector('.panel-title').textContent = `#${id}`;
      return;
    }
    if (place) {
      const feature = await place;
      const b = feature && bbox(feature.geometry);
      if (b && seq === this.seq) this.map.fitBounds(b, { padding: 120, maxZoom: 18, pitch: 55, duration: 900 });
    }
  }

  close() {
    this.seq += 1;
    this.clearFloor();
    setBuildingSelected(this.map, this.id, false);
    this.id = null;
    this.tree = null;
    this.level = null;
    this.panel.hidden = true;
    delete this.panel.dataset.buildingId;
    this.onOpen?.(null);
  }

  clearFloor() {
    this.plan = null;
    this.selectedRoom = null;
    const src = this.map.getSource('floor');
    if (src) src.setData(emptyCollection());
    hideBuilding(this.map, null);
  }

  /** Called on live changes; re-reads the tree and the floor shown, once per burst. */
  refreshSoon(buildingId) {
    if (this.id == null || (buildingId != null && buildingId !== this.id)) return;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this.refresh(), REFRESH_DEBOUNCE_MS);
  }

  async refresh() {
    if (this.id == null) return;
    const id = this.id;
    const level = this.level;
    try {
      const [tree, plan] = await Promise.all([api(`/twin/buildings/${id}`),
        level == null ? null : api(`/twin/buildings/${id}/floors/${level}`)]);
      if (id !== this.id) return;
      this.tree = tree;
      if (level === this.level && plan) this.setPlan(plan, { fly: false });
      this.render();
    } catch {
      /* the next change tries again */
    }
  }

  async pickFloor(level) {
    this.level = level;
    if (level == null) {
      this.clearFloor();
      this.render();
      return;
    }
    const id = this.id;
    const list = this.panel.querySelector('.rooms');
    if (list) list.innerHTML = `<p class="muted">${escapeHtml(t('building.loading'))}</p>`;
    try {
      const plan = await api(`/twin/buildings/${id}/floors/${level}`);
      if (id !== this.id || level !== this.level) return;
      this.setPlan(plan, { fly: true });
      this.render();
    } catch (err) {
      this.toast(t('error.generic', { detail: err.message }), 'error');
    }
  }

  setPlan(plan, { fly }) {
    // Numeric ids for feature-state (the API's are "room.12", "sensor.3").
    plan.features.forEach((f, i) => { f.properties.fid = i; f.id = i; });
    this.plan = plan;
    this.map.getSource('floor')?.setData(plan);
    hideBuilding(this.map, this.id);
    if (this.selectedRoom != null) this.highlightRoom(this.selectedRoom);
    if (fly) {
      const b = bbox({ type: 'GeometryCollection', geometries: plan.features.map((f) => f.geometry).filter(Boolean) });
      if (b) this.map.fitBounds(b, { padding: 100, maxZoom: 20, duration: 800 });
    }
  }

  roomFeature(roomId) {
    return this.plan?.features.find((f) => f.properties.kind === 'room' && f.properties.id === roomId);
  }

  highlightRoom(roomId) {
    for (const f of this.plan?.features || []) {
      if (f.properties.kind === 'room') {
        this.map.setFeatureState({ source: 'floor', id: f.id }, { selected: f.properties.id === roomId });
      }
    }
  }

  selectRoom(roomId, { fly = false, scroll = false } = {}) {
    this.selectedRoom = roomId;
    this.highlightRoom(roomId);
    for (const li of this.panel.querySelectorAll('[data-testid="room-item"]')) {
      li.classList.toggle('selected', Number(li.dataset.roomId) === roomId);
      if (scroll && Number(li.dataset.roomId) === roomId) li.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
    }
    const f = fly && this.roomFeature(roomId);
    const b = f && bbox(f.geometry);
    if (b) this.map.fitBounds(b, { padding: 160, maxZoom: 21, duration: 600 });
  }

  /** Sensors of the plan by room id (directly, or on a component in the room); null key: on the floor. */
  sensorsByRoom() {
    const byRoom = new Map();
    const components = new Map();
    for (const f of this.plan?.features || []) {
      if (f.properties.kind === 'component') components.set(f.properties.id, f.properties);
    }
    for (const f of this.plan?.features || []) {
      const p = f.properties;
      if (p.kind !== 'sensor') continue;
      const room = p.room_id ?? (p.component_id != null ? components.get(p.component_id)?.room_id : null) ?? null;
      if (!byRoom.has(room)) byRoom.set(room, []);
      byRoom.get(room).push(p);
    }
    return byRoom;
  }

  render() {
    const b = this.tree;
    if (!b) return;
    this.panel.querySelector('.panel-title').textContent = b.name || `#${b.id}`;
    const facts = [b.use, b.height != null ? t('building.height', { h: formatNumber(b.height) }) : null,
      b.floors_above != null ? t('building.floorsAbove', { n: b.floors_above }) : null,
      b.floors_below ? t('building.floorsBelow', { n: b.floors_below }) : null].filter(Boolean);
    const floors = b.floors || [];
    const options = floors.map((f) => `<option value="${f.level}" ${f.level === this.level ? 'selected' : ''}>`
      + `${escapeHtml(floorLabel(f))}${f.state ? ` — ${escapeHtml(t(`state.${f.state}`))}` : ''}</option>`).join('');
    const direct = [...(b.sensors || []), ...(b.components || []).flatMap((c) => c.sensors || [])];
    const body = `
      <div class="building-facts">
        <div>#${b.id}${b.ext_id ? ` · ${escapeHtml(b.ext_id)}` : ''}</div>
        ${b.address ? `<div>${escapeHtml(b.address)}</div>` : ''}
        ${facts.length ? `<div>${escapeHtml(facts.join(' · '))}</div>` : ''}
      </div>
      <div class="building-state-row">
        <span class="label">${escapeHtml(t('building.state'))}</span>${stateBadge(b.state, 'building-state')}
        ${countsHtml(b.counts)}
      </div>
      ${floors.length ? `<label class="floor-picker"><span>${escapeHtml(t('building.floors'))}</span>
        <select data-testid="floor-select"><option value="" ${this.level == null ? 'selected' : ''}>${escapeHtml(t('building.floor'))}</option>${options}</select></label>`
    : `<p class="muted" data-testid="no-floors">${escapeHtml(t('building.noFloors'))}</p>`}
      <div class="rooms">${this.roomsHtml()}</div>
      ${direct.length ? `<h4>${escapeHtml(t('building.other'))}</h4><ul class="sensors">${direct.map(sensorRow).join('')}</ul>` : ''}`;
    const el = this.panel.querySelector('.panel-body');
    const scroll = el.scrollTop;
    el.innerHTML = body;
    el.scrollTop = scroll;
    this.panel.dataset.state = b.state || 'none';
  }

  roomsHtml() {
    if (this.level == null || !this.plan) return '';
    const rooms = this.plan.features.filter((f) => f.properties.kind === 'room').map((f) => f.properties);
    const byRoom = this.sensorsByRoom();
    const items = rooms.map((r) => {
      const sensors = byRoom.get(r.id) || [];
      return `<li class="room${r.id === this.selectedRoom ? ' selected' : ''}" data-testid="room-item" data-room-id="${r.id}" data-state="${escapeHtml(r.state || 'none')}">
        <div class="room-head"><span class="room-name">${escapeHtml(r.name || r.ext_id || `#${r.id}`)}</span>
          ${r.use ? `<span class="muted">${escapeHtml(r.use)}</span>` : ''}${stateBadge(r.state)}</div>
        ${sensors.length ? `<ul class="sensors">${sensors.map((s) => sensorRow({ ...s, id: s.sensor_id ?? s.id })).join('')}</ul>`
    : `<div class="muted small">${escapeHtml(t('building.noSensors'))}</div>`}
      </li>`;
    }).join('');
    const loose = byRoom.get(null) || [];
    return `<h4>${escapeHtml(t('building.rooms'))} (${rooms.length})</h4>
      ${rooms.length ? `<ul class="room-list">${items}</ul>` : `<p class="muted">${escapeHtml(t('building.noRooms'))}</p>`}
      ${loose.length ? `<h4>${escapeHtml(t('building.onFloor'))}</h4><ul class="sensors">${loose.map((s) => sensorRow({ ...s, id: s.sensor_id ?? s.id })).join('')}</ul>` : ''}`;
  }
}
