// cimtwin console: log-in, the map, live alerts and building state, the building panel.

import './style.css';
import { api, ApiError, checkKey, getKey, setKey, takeKeyFromHash } from './api.js';
import { AlertBoard } from './alerts.js';
import { BuildingPanel } from './building.js';
import { getLang, onLangChange, setLang, t, translate } from './i18n.js';
import {
  addLayers, componentPopupHtml, createMap, escapeHtml, fetchTileJsons, sensorPopupHtml, setBuildingState, showPopup,
} from './map.js';

const SENSOR_REFRESH_DEBOUNCE_MS = 1000;
const SENSOR_REFRESH_EVERY_MS = 60_000;   // offline is a matter of time alone: look again now and then

const $ = (sel) => document.querySelector(sel);

/** What tests and the curious can look at: window.cimtwin.state. */
const state = {
  ready: false,
  live: 'connecting',
  buildingStates: new Map(),  // building id → ok | warning | alarm | offline
  statesAvailable: null,      // false when GET /twin/states is not there (older API)
  sawBuildingStateEvent: false,
  alerts: null,
  building: null,
};

// --- toasts, live indicator ----------------------------------------------------------------------

function toast(message, kind = 'info') {
  const el = document.createElement('div');
  el.className = `toast toast-${kind}`;
  el.setAttribute('data-testid', 'toast');
  el.textContent = message;
  $('.toasts').append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 7000 : 3500);
}

function setLive(live) {
  state.live = live;
  const el = $('[data-testid="live-status"]');
  el.dataset.live = live;
  el.textContent = t(`live.${live}`);
}

// --- log-in ----------------------------------------------------------------------------------------

function showLogin(message = '') {
  $('.app').hidden = true;
  document.body.classList.add('logged-out');
  const login = $('.login');
  login.hidden = false;
  const err = $('[data-testid="login-error"]');
  err.textContent = message;
  err.hidden = !message;
  $('[data-testid="login-key"]').focus();
}

function loginMessage(err) {
  if (err instanceof ApiError && err.status === 401) return t('login.invalid');
  if (err instanceof ApiError && err.status === 403) return t('login.forbidden');
  return t('login.failed', { error: err.message });
}

function wireLogin() {
  $('.login form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = $('[data-testid="login-key"]').value.trim();
    if (!key) return;
    const button = $('[data-testid="login-submit"]');
    button.disabled = true;
    button.textContent = t('login.checking');
    try {
      await checkKey(key);
      $('[data-testid="login-key"]').value = '';
      loginWith(key);
    } catch (err) {
      showLogin(loginMessage(err));
    } finally {
      button.disabled = false;
      button.textContent = t('login.submit');
    }
  });
}

function loginWith(key) {
  setKey(key);
  if (window.cimtwin) location.reload();  // a session that failed before: start afresh
  else start().catch((err) => toast(t('error.generic', { detail: err.message }), 'error'));
}

function logout() {
  setKey('');
  history.replaceState(null, '', location.pathname + location.search);
  location.reload();
}

// --- the app ------------------------------------------------------------------------------------

let started = false;

async function start() {
  if (started) return;
  started = true;
  $('.login').hidden = true;
  $('.app').hidden = false;
  document.body.classList.remove('logged-out');
  setLive('connecting');

  performance.mark('cimtwin-start');
  // The map and the panel are made below, after the first requests are on their way: setting up
  // WebGL holds the page for a while, and the answers can arrive meanwhile. The callbacks that use
  // them run later.
  let map = null;
  let panel = null;
  window.cimtwin = { map, state };

  let sensorTimer = null;
  const refreshSensors = () => {
    clearTimeout(sensorTimer);
    sensorTimer = setTimeout(() => { if (map?.getSource('sensors')) map.refreshTiles('sensors'); },
      SENSOR_REFRESH_DEBOUNCE_MS);
  };
  const sensorInterval = setInterval(() => { if (map?.getSource('sensors')) map.refreshTiles('sensors'); },
    SENSOR_REFRESH_EVERY_MS);

  let statesTimer = null;
  const loadStates = async () => {
    try {
      const body = await api('/twin/states');
      state.statesAvailable = true;
      const seen = new Set();
      for (const b of body.buildings || []) {
        seen.add(b.id);
        state.buildingStates.set(b.id, b.state);
        if (map) setBuildingState(map, b.id, b.state);
      }
      for (const id of [...state.buildingStates.keys()]) {
        if (!seen.has(id)) {
          state.buildingStates.delete(id);
          if (map) setBuildingState(map, id, null);
        }
      }
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 405)) {
        state.statesAvailable = false;  // an API without live building state: colours stay neutral
        console.info(t('error.noStates'));
      } else throw err;
    }
  };

  const board = new AlertBoard({
    list: $('[data-testid="alert-list"]'),
    summary: $('.alerts-summary'),
    toast,
    onLive: setLive,
    onLocate: (a) => locateAlert(map, panel, board, a),
    onEvent: (doc) => {
      refreshSensors();
      const b = doc.alert?.building_id;
      if (b != null) panel?.refreshSoon(b);
      if (!state.sawBuildingStateEvent && b != null && state.statesAvailable !== false) {
        // No building_state events from this API (yet): read the states after a burst of alerts.
        clearTimeout(statesTimer);
        statesTimer = setTimeout(() => loadStates().catch(() => {}), SENSOR_REFRESH_DEBOUNCE_MS);
      }
    },
    onBuildingState: (d) => {
      state.sawBuildingStateEvent = true;
      if (d.state) state.buildingStates.set(d.building_id, d.state);
      else state.buildingStates.delete(d.building_id);
      if (map) setBuildingState(map, d.building_id, d.state ?? null);
      panel?.refreshSoon(d.building_id);
    },
    onReconnect: () => {
      loadStates().catch(() => {});
      refreshSensors();
    },
  });
  state.alerts = board;
  window.cimtwin.board = board;
  board.onChange(() => {
    const src = map?.getSource('alerts');
    if (src) src.setData(board.markers());
  });

  const tileJsons = fetchTileJsons();
  const alertsLoaded = board.start();
  const statesLoaded = loadStates();
  // Looked at below (allSettled); marked handled now, in case start() ends early (a refused key).
  for (const p of [tileJsons, alertsLoaded, statesLoaded]) p.catch(() => {});

  map = createMap('map');
  window.cimtwin.map = map;
  performance.mark('cimtwin-map-created');
  const styleLoaded = new Promise((resolve) => { if (map.isStyleLoaded()) resolve(); else map.once('style.load', resolve); });
  panel = new BuildingPanel({
    map, panel: $('[data-testid="building-panel"]'), toast,
    onOpen: (id) => {
      const hash = id == null ? '' : `#building=${id}`;
      if (location.hash !== hash) history.replaceState(null, '', location.pathname + location.search + hash);
    },
  });
  state.building = panel;

  const failed = (err) => {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      board.stop();
      clearInterval(sensorInterval);
      clearTimeout(sensorTimer);
      setKey('');
      started = false;
      map?.remove();
      map = null;
      showLogin(loginMessage(err));
      return true;
    }
    toast(t('error.generic', { detail: err.message }), 'error');
    return false;
  };

  let sources;
  try {
    [sources] = await Promise.all([tileJsons, styleLoaded]);
  } catch (err) {
    if (failed(err)) return;
    throw err;
  }
  addLayers(map, sources);
  for (const [id, st] of state.buildingStates) setBuildingState(map, id, st);
  map.getSource('alerts').setData(board.markers());
  performance.mark('cimtwin-layers');
  wireMapClicks(map, panel, board);

  const results = await Promise.allSettled([alertsLoaded, statesLoaded]);
  performance.mark('cimtwin-alerts');
  for (const r of results) if (r.status === 'rejected' && failed(r.reason)) return;
  // Every tile of the start view drawn.
  await new Promise((resolve) => { if (map.loaded()) resolve(); else map.once('idle', resolve); });
  performance.mark('cimtwin-idle');

  openFromHash(panel);
  window.addEventListener('hashchange', () => openFromHash(panel));
  onLangChange(() => {
    board.relabel();
    panel.render();
    setLive(state.live);
  });

  state.ready = true;
  document.documentElement.dataset.ready = 'true';
  performance.mark('cimtwin-ready');
}

function openFromHash(panel) {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get('key')) {
    setKey(takeKeyFromHash());
    location.reload();
    return;
  }
  const id = Number(params.get('building'));
  if (Number.isInteger(id) && id > 0 && id !== panel.id) panel.open(id, { fly: true });
}

function selectMarker(map, board, id) {
  if (!map.getSource('alerts')) return;
  for (const f of board.markers().features) map.setFeatureState({ source: 'alerts', id: f.id }, { selected: f.id === id });
}

function locateAlert(map, panel, board, a) {
  const ll = a.geometry?.type === 'Point' ? a.geometry.coordinates : (a.lon != null ? [a.lon, a.lat] : null);
  selectMarker(map, board, a.id);
  if (a.building_id != null) panel.open(a.building_id, { fly: !ll });
  if (ll) map.flyTo({ center: ll, zoom: Math.max(map.getZoom(), 17), pitch: 50, duration: 900 });
}

function wireMapClicks(map, panel, board) {
  const order = ['alerts', 'alerts-halo', 'floor-points', 'sensors', 'components', 'floor-rooms', 'buildings-3d'];
  map.on('click', (e) => {
    const features = map.queryRenderedFeatures(e.point, { layers: order.filter((l) => map.getLayer(l)) });
    if (!features.length) return;
    // The topmost by our order of importance, not by drawing order.
    features.sort((x, y) => order.indexOf(x.layer.id) - order.indexOf(y.layer.id));
    const f = features[0];
    const p = f.properties;
    switch (f.layer.id) {
      case 'alerts':
      case 'alerts-halo':
        board.select(p.id, { scroll: true });
        selectMarker(map, board, p.id);
        break;
      case 'floor-points':
      case 'sensors':
        if (p.kind === 'component') showPopup(map, e.lngLat, componentPopupHtml(p));
        else showPopup(map, e.lngLat, sensorPopupHtml(p));
        break;
      case 'components':
        showPopup(map, e.lngLat, componentPopupHtml(p));
        break;
      case 'floor-rooms':
        panel.selectRoom(p.id, { scroll: true });
        break;
      case 'buildings-3d':
        if (f.id != null) panel.open(Number(f.id));
        break;
      default:
    }
  });
}

// --- building search --------------------------------------------------------------------------------

function wireSearch() {
  const input = $('[data-testid="building-search"]');
  const results = $('[data-testid="building-search-results"]');
  let timer = null;
  let seq = 0;

  const hide = () => {
    results.hidden = true;
    results.replaceChildren();
  };
  const open = (id) => {
    hide();
    state.building?.open(id, { fly: true });
  };

  const search = async (q) => {
    const mine = ++seq;
    if (!q) {
      hide();
      return [];
    }
    let items = [];
    try {
      const params = new URLSearchParams({ q, limit: '8' });
      const [byId, byName] = await Promise.all([
        /^\d+$/.test(q) ? api(`/buildings/${q}`).catch(() => null) : null,
        api(`/buildings?${params}`).catch(() => ({ features: [] })),
      ]);
      items = [...(byId ? [byId] : []), ...(byName.features || []).filter((f) => !byId || f.id !== byId.id)];
    } catch {
      items = [];
    }
    if (mine !== seq) return items;
    results.innerHTML = items.length
      ? items.map((f) => `<li data-testid="building-search-result" data-building-id="${f.id}">`
        + `<strong>${escapeHtml(f.properties?.name || `#${f.id}`)}</strong> <span class="muted">#${f.id}`
        + `${f.properties?.address ? ` · ${escapeHtml(f.properties.address)}` : ''}</span></li>`).join('')
      : `<li class="muted">${escapeHtml(t('search.none'))}</li>`;
    results.hidden = false;
    return items;
  };

  input.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => search(input.value.trim()), 250);
  });
  input.addEventListener('keydown', async (e) => {
    if (e.key === 'Escape') {
      hide();
      return;
    }
    if (e.key !== 'Enter') return;
    e.preventDefault();
    clearTimeout(timer);
    const q = input.value.trim();
    if (/^\d+$/.test(q)) {
      open(Number(q));
      return;
    }
    const items = await search(q);
    if (items.length) open(Number(items[0].id));
  });
  results.addEventListener('click', (e) => {
    const li = e.target.closest('[data-building-id]');
    if (li) open(Number(li.dataset.buildingId));
  });
  document.addEventListener('click', (e) => {
    if (!e.target.closest('.search')) hide();
  });
}

// --- boot ------------------------------------------------------------------------------------------

function boot() {
  translate();
  $('[data-testid="lang-toggle"]').addEventListener('click', () => setLang(getLang() === 'zh' ? 'en' : 'zh'));
  $('[data-testid="logout"]').addEventListener('click', logout);
  wireLogin();
  wireSearch();

  // A link with #key=… opened on the log-in page (the same document: only the fragment changes).
  window.addEventListener('hashchange', () => {
    if (!started && new URLSearchParams(location.hash.slice(1)).get('key')) loginWith(takeKeyFromHash());
  });

  const fromHash = takeKeyFromHash();
  if (fromHash) setKey(fromHash);
  if (getKey()) start().catch((err) => toast(t('error.generic', { detail: err.message }), 'error'));
  else showLogin();
}

boot();
