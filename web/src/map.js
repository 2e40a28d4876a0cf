// The map: the project's own vector tiles on a plain background (no basemap, nothing from the internet).
// No symbol layers, so no glyphs are needed: names and values are shown in HTML popups and panels.

import maplibregl from 'maplibre-gl';
import 'maplibre-gl/dist/maplibre-gl.css';
import { api, getKey, isSameOrigin } from './api.js';
import { formatNumber, formatTime, t } from './i18n.js';

export const COLORS = {
  ok: '#2f9e44',
  warning: '#f59f00',
  alarm: '#e03131',
  offline: '#868e96',
  no_data: '#495057',
  none: '#5c7089',
  selected: '#4dabf7',
  component: '#b197fc',
};

export const SEVERITY_COLORS = { info: '#4dabf7', warning: '#f59f00', major: '#f76707', critical: '#e03131' };

const TILE_LAYERS = ['areas', 'buildings', 'components', 'sensors'];
// Tiles are made up to this zoom and over-zoomed beyond: fewer requests when the operator zooms in.
const TILE_MAXZOOM = 16;

const stateColor = (expr) => ['match', ['coalesce', expr, 'none'],
  'alarm', COLORS.alarm, 'warning', COLORS.warning, 'ok', COLORS.ok, 'offline', COLORS.offline,
  'no_data', COLORS.no_data, COLORS.none];

/**
 * The map, empty: `addLayers` brings the layers once the TileJSON is in. Making
 * the map (WebGL) holds the page for a while, so the TileJSON is asked for before, and arrives meanwhile.
 */
export function createMap(container) {
  const map = new maplibregl.Map({
    container,
    // No background layer: the canvas is transparent and the map's CSS background shows through (one
    // shader program fewer to compile before the first picture).
    style: { version: 8, sources: {}, layers: [] },
    center: [121.49, 31.235],
    zoom: 14,
    pitch: 50,
    bearing: -12,
    maxPitch: 75,
    attributionControl: { compact: true },
    // The key goes with every same-origin request (tiles), never to another origin.
    transformRequest: (url) => (isSameOrigin(url) && getKey()
      ? { url, headers: { Authorization: `Bearer ${getKey()}` } } : { url }),
  });
  map.addControl(new maplibregl.NavigationControl({ visualizePitch: true }), 'top-right');
  map.addControl(new maplibregl.ScaleControl({ unit: 'metric' }), 'bottom-left');
  for (const id of ['buildings-3d', 'sensors', 'components', 'alerts', 'alerts-halo', 'floor-rooms', 'floor-points']) {
    map.on('mouseenter', id, () => { map.getCanvas().style.cursor = 'pointer'; });
    map.on('mouseleave', id, () => { map.getCanvas().style.cursor = ''; });
  }
  return map;
}

/** TileJSON of each layer as a MapLibre source. Tile URLs carry the host the API saw; behind a proxy that
 * may not be the page's, so they are taken as paths on the page's own origin. */
export async function fetchTileJsons() {
  const docs = await Promise.all(TILE_LAYERS.map((layer) => api(`/tiles/${layer}.json`)));
  const out = {};
  TILE_LAYERS.forEach((layer, i) => {
    const doc = docs[i];
    out[layer] = {
      type: 'vector',
      tiles: doc.tiles.map((u) => location.origin + u.replace(/^https?:\/\/[^/]+/, '')),
      minzoom: doc.minzoom ?? 0,
      maxzoom: Math.min(doc.maxzoom ?? TILE_MAXZOOM, TILE_MAXZOOM),
      bounds: doc.bounds,
      attribution: doc.attribution,
    };
  });
  return out;
}

/** The project's layers on the map (its style must be loaded), and the start view: the buildings' bounds. */
export function addLayers(map, sources) {
  for (const [id, source] of Object.entries(sources)) map.addSource(id, source);
  map.addSource('floor', { type: 'geojson', data: emptyCollection() });
  map.addSource('alerts', { type: 'geojson', data: emptyCollection() });
  for (const layer of styleLayers()) map.addLayer(layer);
  const b = sources.buildings?.bounds;
  if (b && b[2] - b[0] < 10) { // an empty layer's TileJSON gives the whole world
    map.fitBounds([[b[0], b[1]], [b[2], b[3]]], { padding: 40, duration: 0, pitch: 50, bearing: -12, maxZoom: 17 });
  }
}

// Shader programs are compiled on first use, and in software WebGL each costs a few hundred ms. One
// program serves every layer of a type whose paint properties are per-feature (or not) alike, so
// constants are written as per-feature expressions where another layer of the type has them per feature:
// circles (colour, opacity, stroke colour), fills (colour, opacity), lines (colour, width, opacity).
// For the same reason areas are outlines only (no fill layer until a floor plan is shown).
const perFeature = (value) => ['coalesce', ['get', '__constant'], value];

function styleLayers() {
  const severityColor = ['match', ['get', 'severity'], 'critical', SEVERITY_COLORS.critical, 'major', SEVERITY_COLORS.major,
    'warning', SEVERITY_COLORS.warning, SEVERITY_COLORS.info];
  return [
    {
      id: 'areas-line', type: 'line', source: 'areas', 'source-layer': 'areas',
      paint: {
        'line-color': ['match', ['get', 'level'], 'district', '#74c0fc', 'street', '#66d9e8', 'community', '#63e6be', '#8ce99a'],
        'line-width': ['match', ['get', 'level'], 'district', 3, 'street', 2.2, 'community', 1.5, 1],
        'line-opacity': ['match', ['get', 'level'], 'grid', 0.45, 0.8],
      },
    },
    {
      // Colour by live state: feature-state `state` (GET /twin/states, SSE building_state), `selected`.
      id: 'buildings-3d', type: 'fill-extrusion', source: 'buildings', 'source-layer': 'buildings',
      paint: {
        'fill-extrusion-color': ['case', ['boolean', ['feature-state', 'selected'], false], COLORS.selected,
          stateColor(['feature-state', 'state'])],
        'fill-extrusion-height': ['coalesce', ['get', 'render_height'], 10],
        'fill-extrusion-base': ['coalesce', ['get', 'render_min_height'], 0],
        'fill-extrusion-opacity': 1,  // opaque: one pass (a translucent extrusion takes two)
        'fill-extrusion-vertical-gradient': true,
      },
    },
    {
      id: 'floor-rooms', type: 'fill', source: 'floor', filter: ['==', ['get', 'kind'], 'room'],
      paint: { 'fill-color': stateColor(['get', 'state']), 'fill-opacity': 0.45, 'fill-antialias': false },
    },
    {
      id: 'floor-rooms-line', type: 'line', source: 'floor', filter: ['==', ['get', 'kind'], 'room'],
      paint: {
        'line-color': perFeature('#e9ecef'), 'line-opacity': perFeature(1),
        'line-width': ['case', ['boolean', ['feature-state', 'selected'], false], 3, 1.2],
      },
    },
    {
      id: 'floor-points', type: 'circle', source: 'floor', filter: ['in', ['get', 'kind'], ['literal', ['sensor', 'component']]],
      paint: {
        'circle-radius': 5,
        'circle-color': ['match', ['get', 'kind'], 'component', COLORS.component, stateColor(['get', 'state'])],
        'circle-opacity': perFeature(1), 'circle-stroke-color': perFeature('#fff'), 'circle-stroke-width': 1.2,
      },
    },
    {
      id: 'components', type: 'circle', source: 'components', 'source-layer': 'components',
      paint: {
        'circle-radius': ['interpolate', ['linear'], ['zoom'], 12, 1.5, 17, 4.5],
        'circle-color': perFeature(COLORS.component), 'circle-opacity': perFeature(0.85),
        'circle-stroke-color': perFeature('#1c2533'), 'circle-stroke-width': 0.6,
      },
    },
    {
      // Sensors by the tile's `status`: alarm, warning, offline, no_data, ok.
      id: 'sensors', type: 'circle', source: 'sensors', 'source-layer': 'sensors',
      paint: {
        'circle-radius': ['interpolate', ['linear'], ['zoom'], 10, 2.5, 17, 7],
        'circle-color': stateColor(['get', 'status']), 'circle-opacity': perFeature(1),
        'circle-stroke-color': perFeature('#ffffff'), 'circle-stroke-width': 1.2,
      },
    },
    {
      id: 'alerts-halo', type: 'circle', source: 'alerts',
      paint: {
        'circle-radius': ['interpolate', ['linear'], ['zoom'], 10, 10, 17, 22],
        'circle-color': severityColor,
        'circle-opacity': ['case', ['boolean', ['feature-state', 'selected'], false], 0.55, 0.25],
        'circle-stroke-color': severityColor, 'circle-stroke-width': 2,
        'circle-pitch-alignment': 'map',
      },
    },
    {
      id: 'alerts', type: 'circle', source: 'alerts',
      paint: {
        'circle-radius': 5, 'circle-color': severityColor, 'circle-opacity': perFeature(1),
        'circle-stroke-color': perFeature('#fff'), 'circle-stroke-width': 2,
      },
    },
  ];
}

export function emptyCollection() {
  return { type: 'FeatureCollection', features: [] };
}

// --- building live state through feature-state -------------------------------------------------

export function setBuildingState(map, id, state) {
  if (map.getSource('buildings')) map.setFeatureState({ source: 'buildings', sourceLayer: 'buildings', id }, { state });
}

export function setBuildingSelected(map, id, selected) {
  if (id == null || !map.getSource('buildings')) return;
  map.setFeatureState({ source: 'buildings', sourceLayer: 'buildings', id }, { selected });
}

/** While a floor plan is shown, its building is left out so that the rooms can be seen. */
export function hideBuilding(map, id) {
  if (!map.getLayer('buildings-3d')) return;
  map.setFilter('buildings-3d', id == null ? null : ['!=', ['id'], id]);
  map.setPaintProperty('buildings-3d', 'fill-extrusion-opacity', id == null ? 1 : 0.45);
}

// --- popups ---------------------------------------------------------------------------------------

function escapeHtml(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function row(label, value) {
  return `<tr><th>${escapeHtml(label)}</th><td>${value}</td></tr>`;
}

export function sensorPopupHtml(p) {
  const status = p.status ?? p.state;
  const value = p.value == null ? '—' : `${escapeHtml(formatNumber(p.value))} ${escapeHtml(p.unit ?? '')}`;
  return `<div class="popup"><h4>${escapeHtml(t('popup.sensor'))} ${escapeHtml(p.device)}/${escapeHtml(p.channel)}</h4>
    <table>${row(t('popup.status'), `<span class="state state-${escapeHtml(status)}">${escapeHtml(t(`state.${status}`))}</span>`)}
    ${row(p.quantity ?? '', value)}${row(t('popup.time'), escapeHtml(formatTime(p.time)))}</table></div>`;
}

export function componentPopupHtml(p) {
  return `<div class="popup"><h4>${escapeHtml(t('popup.component'))}: ${escapeHtml(p.name || p.kind || p.component_kind)}</h4>
    <table>${row('kind', escapeHtml(p.kind || p.component_kind))}</table></div>`;
}

export function showPopup(map, lngLat, html) {
  return new maplibregl.Popup({ closeButton: true, maxWidth: '280px' }).setLngLat(lngLat).setHTML(html).addTo(map);
}

export { escapeHtml };
