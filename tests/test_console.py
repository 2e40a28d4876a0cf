"""The console (web/, served by the API at /) in Debian's headless Chromium, driven by Playwright,
against the real stack: database, broker, ingest worker and `cimtwin serve` (tests/console_support.py).

Screenshots are kept in test-artifacts/console/."""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from .console_support import (ARTIFACTS, CHANNEL, CHROMIUM, CHROMIUM_ARGS, DEVICE, THRESHOLD, VENDOR, Stack,
                              chromium_or_fail, latest_value, start_stack)
from .helpers import wait_for

READY = "document.documentElement.dataset.ready === 'true'"
CJK = re.compile(r"[\u4e00-\u9fff]")
CANVAS_ONLY = "* { visibility: hidden !important } [data-testid=map] canvas { visibility: visible !important }"


@pytest.fixture(scope="module")
def stack(base_settings, database_url):
    chromium_or_fail()
    yield from start_stack(base_settings, database_url)


@pytest.fixture(scope="module")
def browser(stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Console:
    """A fresh browser context on the console. It records every request its pages make, and lets
    through only those to the API's own origin: the rest fail as they would without internet."""

    def __init__(self, browser, stack: Stack, *, locale: str = "en-US", logged_in: bool = True):
        self.stack = stack
        self.origin = stack.api.url
        self.context = browser.new_context(viewport={"width": 1280, "height": 800}, locale=locale)
        if logged_in:
            self.context.add_init_script(
                f"if (!localStorage.getItem('cimtwin.apiKey')) "
                f"localStorage.setItem('cimtwin.apiKey', {json.dumps(stack.operator_key)})")
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda req: self.requests.append(req.url))
        self.context.route("**/*", self._only_own_origin)
        self.page = self.new_page()

    def _only_own_origin(self, route) -> None:
        url = route.request.url
        if url.startswith(self.origin + "/") or urlsplit(url).scheme in ("data", "blob"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("internetdisconnected")

    def new_page(self):
        page = self.context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return page

    def open(self, fragment: str = "") -> None:
        self.page.goto(f"{self.origin}/{fragment}")
        self.wait_ready()

    def wait_ready(self, timeout: float = 30_000) -> None:
        self.page.wait_for_function(READY, timeout=timeout)

    def wait_idle(self) -> None:
        """Until the map has drawn everything it has to draw."""
        self.page.evaluate("""() => new Promise(resolve => {
            const map = window.cimtwin.map;
            if (map.loaded() && map.areTilesLoaded()) resolve(); else map.once('idle', () => resolve());
        })""")

    def screenshot(self, name: str, selector: str | None = None) -> bytes:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        target = self.page.locator(selector) if selector else self.page
        return target.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    def map_pixels(self, name: str) -> np.ndarray:
        """The map's canvas alone (the panels and controls over it hidden), as RGB pixels."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        canvas = self.page.locator("[data-testid=map] canvas").first
        png = canvas.screenshot(path=str(ARTIFACTS / f"{name}.png"), style=CANVAS_ONLY)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def shared(browser, stack):
    """One logged-in console for the module's tests (each page load costs seconds in software WebGL)."""
    c = Console(browser, stack)
    c.open()
    yield c
    c.close()


@pytest.fixture
def console(shared):
    yield shared
    assert not shared.errors, shared.errors


def share_differing(a: np.ndarray, b: np.ndarray, tolerance: int = 24) -> float:
    """The share of pixels whose colour differs (summed channel distance above tolerance)."""
    return float((np.abs(a - b).sum(axis=2) > tolerance).mean())


def set_layers_visible(console: Console, layer_ids: list[str], visible: bool) -> None:
    console.page.evaluate("""([ids, visible]) => new Promise(resolve => {
        const map = window.cimtwin.map;
        map.once('idle', () => resolve());
        for (const id of ids) map.setLayoutProperty(id, 'visibility', visible ? 'visible' : 'none');
        map.triggerRepaint();
    })""", [layer_ids, visible])


def test_login_in_the_browsers_language_and_the_map_draws_the_district(browser, stack):
    c = Console(browser, stack, locale="zh-CN", logged_in=False)
    try:
        _login_and_check_the_map(c, stack)
    finally:
        c.close()


def _login_and_check_the_map(c: Console, stack: Stack) -> None:
    c.page.goto(f"{c.origin}/")
    c.page.get_by_test_id("login-key").wait_for(state="visible")
    # No language chosen yet: the browser's (zh-CN) it is.
    assert c.page.evaluate("document.documentElement.lang").startswith("zh")
    assert CJK.search(c.page.get_by_test_id("login-submit").inner_text())
    c.page.get_by_test_id("login-key").fill("not-a-valid-key-000000000000000")
    c.page.get_by_test_id("login-submit").click()
    c.page.get_by_test_id("login-error").wait_for(state="visible")
    c.screenshot("01-login-refused")
    assert c.page.evaluate("localStorage.getItem('cimtwin.apiKey')") is None  # a wrong key is not kept
    c.page.get_by_test_id("login-key").fill(stack.operator_key)
    c.page.get_by_test_id("login-submit").click()
    c.wait_ready()
    assert c.page.evaluate("localStorage.getItem('cimtwin.apiKey')") == stack.operator_key
    c.wait_idle()
    c.screenshot("01-console")
    full = c.map_pixels("01-map-canvas")

    layers = c.page.evaluate("""() => window.cimtwin.map.getStyle().layers
        .map(l => ({id: l.id, type: l.type, source: l.source || null}))""")
    building_layers = [layer["id"] for layer in layers if layer["source"] == "buildings"]
    assert building_layers, layers
    drawn = c.page.evaluate("ids => window.cimtwin.map.queryRenderedFeatures({layers: ids}).length", building_layers)
    assert drawn > 100, f"only {drawn} building features rendered"

    # The background alone is one colour; what is drawn over it changes a good share of the map.
    others = [layer["id"] for layer in layers if layer["type"] != "background"]
    set_layers_visible(c, others, False)
    background = c.map_pixels("01-map-canvas-background-only")
    colours, counts = np.unique(background.reshape(-1, 3), axis=0, return_counts=True)
    assert counts.max() / counts.sum() > 0.99, "the background alone is not one colour"
    background_colour = colours[counts.argmax()]
    assert share_differing(full, background) > 0.05, "the map shows little more than its background"

    # Everything but the buildings: the picture changes where they were, so they are drawn, and shaded.
    set_layers_visible(c, [i for i in others if i not in building_layers], True)
    no_buildings = c.map_pixels("01-map-canvas-without-buildings")
    changed = np.abs(full - no_buildings).sum(axis=2) > 24
    assert changed.mean() > 0.03, f"hiding the buildings changed only {changed.mean():.1%} of the map"
    drawn_buildings = full[changed]
    assert (np.abs(drawn_buildings - background_colour).sum(axis=1) > 24).mean() > 0.9, \
        "buildings drawn in the background's colour"
    assert len(np.unique(drawn_buildings // 16, axis=0)) >= 2, "buildings drawn in one flat colour"
    assert not c.errors and not c.blocked, c.errors + c.blocked


def _publish(stack: Stack, value: float) -> None:
    """One reading through mosquitto_pub, a real MQTT client (the service account's login)."""
    ep = stack.settings.mqtt
    payload = json.dumps({"readings": [{"channel": CHANNEL, "value": value}]})
    subprocess.run(["mosquitto_pub", "-h", ep.host, "-p", str(ep.port), "-u", ep.username, "-P", ep.password,
                    "-q", "1", "-t", f"cim/v1/{VENDOR}/{DEVICE}/up", "-m", payload], check=True, timeout=10)


def _building_state(c: Console, building_id: int):
    return c.page.evaluate("""id => (window.cimtwin.map.getFeatureState(
        {source: 'buildings', sourceLayer: 'buildings', id}) || {}).state""", building_id)


def test_a_breaking_reading_appears_within_2_s_and_is_acknowledged_from_the_list(console, stack):
    c = console
    items = c.page.locator("[data-testid=alert-list] [data-testid=alert-item]")
    assert items.count() == 0 and stack.api.get("/alerts").json()["items"] == []
    started = time.monotonic()
    _publish(stack, THRESHOLD + 30)
    items.first.wait_for(state="visible", timeout=5_000)
    elapsed = time.monotonic() - started
    c.screenshot("02-alert-arrived")
    (ARTIFACTS / "alert-latency.json").write_text(json.dumps({"publish_to_list_s": round(elapsed, 3)}) + "\n")
    assert elapsed < 2.0, f"the alert took {elapsed:.2f} s from publish to the console's list"

    alerts = stack.api.get("/alerts").json()["items"]
    assert [(a["rule_id"], a["sensor_id"]) for a in alerts] == [(stack.rule_id, stack.sensor_id)]
    alert = alerts[0]
    item = c.page.locator(f"[data-testid=alert-item][data-alert-id='{alert['id']}']")
    assert items.count() == 1 and item.get_attribute("data-status") == "open"

    item.get_by_test_id("alert-ack").click()
    wait_for(lambda: stack.api.get(f"/alerts/{alert['id']}").json()["status"] == "acknowledged", timeout=5,
             message="for the API to show the alert acknowledged")
    acked = stack.api.get(f"/alerts/{alert['id']}").json()
    assert acked["events"][-1]["action"] == "acknowledged", acked["events"]
    wait_for(lambda: item.get_attribute("data-status") == "acknowledged", timeout=5,
             message="for the list to show it acknowledged")
    c.screenshot("02-alert-acknowledged")

    # Its building is in alarm on the map (live state; an acknowledged critical alert is unfinished).
    wait_for(lambda: _building_state(c, stack.building_id) == "alarm", timeout=5,
             message="for the building's alarm state on the map")


def _rooms_by_level(stack: Stack) -> dict[int, dict[int, str]]:
    tree = stack.api.get(f"/twin/buildings/{stack.building_id}").json()
    return {f["level"]: {r["id"]: r["name"] for r in f["rooms"]} for f in tree["floors"]}


def _listed_rooms(c: Console) -> dict[int, str]:
    rooms = c.page.locator("[data-testid=building-panel] [data-testid=room-item]")
    return {int(rooms.nth(i).get_attribute("data-room-id")): rooms.nth(i).inner_text() for i in range(rooms.count())}


def _panel_shows(c: Console, name: str) -> bool:
    panel = c.page.get_by_test_id("building-panel")
    return panel.is_visible() and name in panel.inner_text()


def test_a_building_its_floors_and_their_rooms(console, stack):
    c = console
    expected = _rooms_by_level(stack)
    assert sorted(expected) == [0, 1] and expected[0] and expected[1]
    other = next(f for f in stack.api.get("/buildings", params={"limit": 100}).json()["features"]
                 if f["properties"]["name"] and f["id"] != stack.building_id)

    # By the URL: #building=<id>
    c.page.evaluate("id => { location.hash = 'building=' + id; }", other["id"])
    wait_for(lambda: _panel_shows(c, other["properties"]["name"]), timeout=10,
             message="for the building panel from the URL")
    # By the search box, by name
    search = c.page.get_by_test_id("building-search")
    search.fill(stack.building_name)
    search.press("Enter")
    wait_for(lambda: _panel_shows(c, stack.building_name), timeout=10, message="for the searched building")
    assert f"building={stack.building_id}" in c.page.evaluate("location.hash")

    select = c.page.get_by_test_id("building-panel").get_by_test_id("floor-select")
    assert {v for v in select.locator("option").evaluate_all("os => os.map(o => o.value)") if v} == {"0", "1"}
    for level in (1, 0):
        select.select_option(str(level))
        wait_for(lambda: set(_listed_rooms(c)) == set(expected[level]), timeout=10,
                 message=f"for the rooms of floor {level} (expected {expected[level]})")
        listed = _listed_rooms(c)
        for room_id, name in expected[level].items():
            assert name in listed[room_id], (name, listed[room_id])
        c.wait_idle()
        c.screenshot(f"03-building-floor-{level}")
    # Each room shows its live state; the room with the sensor lists it with its latest value.
    tree = stack.api.get(f"/twin/buildings/{stack.building_id}").json()
    states = {r["id"]: r["state"] or "none" for f in tree["floors"] if f["level"] == 0 for r in f["rooms"]}
    rooms = c.page.locator("[data-testid=building-panel] [data-testid=room-item]")
    wait_for(lambda: {int(r.get_attribute("data-room-id")): r.get_attribute("data-state") for r in rooms.all()}
             == states, timeout=5, message=f"for the rooms' states {states}")
    value = latest_value(stack.api, stack.sensor_id)
    if value is not None:
        assert f"{value:g}" in _listed_rooms(c)[stack.room_id], _listed_rooms(c)[stack.room_id]


def _ui_text(c: Console) -> str:
    """The console's own words: the page's text without data (alerts, the building panel) and
    without the language switch (which names the other language)."""
    return c.page.evaluate("""() => {
        const body = document.body.cloneNode(true);
        body.querySelectorAll('[data-testid=alert-list], [data-testid=building-panel], [data-testid=lang-toggle]')
            .forEach(e => e.remove());
        return body.textContent.replace(/\\s+/g, ' ');
    }""")


def _lang(page) -> str:
    return page.evaluate("document.documentElement.lang")


def test_language_toggle_switches_labels_and_is_kept(console, stack):
    c = console
    assert _lang(c.page).startswith("en")  # the context's locale is en-US
    en = _ui_text(c)
    assert not CJK.search(en), en
    c.page.get_by_test_id("lang-toggle").click()
    wait_for(lambda: _lang(c.page).startswith("zh"), timeout=5)
    zh = _ui_text(c)
    assert len(CJK.findall(zh)) > 20, zh
    assert "alert" not in zh.lower(), zh
    c.screenshot("04-lang-zh")
    # Kept: a new page in the same browser profile starts in Chinese.
    other = c.new_page()
    try:
        other.goto(f"{c.origin}/")
        wait_for(lambda: _lang(other).startswith("zh"), timeout=10)
    finally:
        other.close()
    c.page.get_by_test_id("lang-toggle").click()
    wait_for(lambda: _lang(c.page).startswith("en"), timeout=5)
    assert _ui_text(c) == en


def test_the_console_needs_nothing_but_its_own_api(console, stack):
    """Everything the module's console did went to the API's own origin (nothing was blocked)."""
    c = console
    # (Also when run alone: a floor plan is fetched.)
    c.page.evaluate("id => { location.hash = 'building=' + id; }", stack.building_id)
    wait_for(lambda: _panel_shows(c, stack.building_name), timeout=10, message="for the building panel")
    c.page.get_by_test_id("floor-select").select_option("1")
    c.page.locator("[data-testid=room-item]").first.wait_for()
    c.wait_idle()
    assert not c.blocked, c.blocked
    foreign = [u for u in c.requests if not u.startswith(c.origin + "/") and urlsplit(u).scheme not in ("data", "blob")]
    assert not foreign, foreign
    paths = [urlsplit(u).path for u in c.requests]
    for prefix in ("/assets/", "/tiles/buildings/", "/alerts/stream", f"/twin/buildings/{stack.building_id}/floors/"):
        assert any(p.startswith(prefix) for p in paths), (prefix, sorted(set(paths)))
