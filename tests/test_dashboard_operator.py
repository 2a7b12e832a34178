"""The operator's seat in a real browser: Playwright drives the system Chromium (no browser download) against
`snslab server` in its own process, with a scripted display and bridge (tests/rig_peers.py) running the
session over real ZeroMQ. Screenshots go to test-artifacts/ (or $SNSLAB_TEST_ARTIFACTS).

The tests run in order on one server: the form creates and runs a maximize session; an invariance probe
referenced on it is watched live (points arrive without reload, pause/resume from the buttons, a viewer
cannot act, the forced drop of the neuron's response raises the warning); then the stored sessions are
scrubbed and exported.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from api_fixtures import api_db_url, url_text  # noqa: F401  (fixture)
from rig_peers import ScriptedBridge, ScriptedDisplay
from server_process import ROOT, ServerProcess

pytest_plugins = ["db_fixtures"]
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]

TOKEN = "dash-operator-token"
VIEWER = "dash-viewer-token"  # the read-only token (SNSLAB_VIEWER_TOKEN)
WINDOW = 4  # reference repeats in the neuron's running estimate (the server's $SNSLAB_NEURON_WINDOW)
ARTIFACTS = Path(os.environ.get("SNSLAB_TEST_ARTIFACTS", ROOT / "test-artifacts"))
SMALL_DCT = {"name": "dct", "code_size": 16, "image_size": 8, "channels": 1}
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def srv(api_db_url, tmp_path_factory):
    env = {"SNSLAB_NEURON_WINDOW": str(WINDOW), "SNSLAB_VIEWER_TOKEN": VIEWER}
    with ServerProcess(url_text(api_db_url), tmp_path_factory.mktemp("data"), token=TOKEN, extra_env=env) as s:
        yield s


@pytest.fixture(scope="module")
def engine(api_db_url):
    e = sa.create_engine(url_text(api_db_url))
    yield e
    e.dispose()


@pytest.fixture(scope="module")
def rig(srv):
    # it says what the display client says in its hello: the refresh rate it measured and that it paces
    # its flips on a software clock (no vsync)
    display = ScriptedDisplay(srv.wire, period_s=0.04,
                              capabilities={"refresh_hz": 60.0, "refresh_measured": True, "paced": True})
    bridge = ScriptedBridge(srv.wire, units=["sim:0"], seed=5)
    assert display.peer.wait_connected(30) and bridge.peer.wait_connected(30)
    yield display, bridge
    display.close()
    bridge.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


class Page:
    """A browser page with its console errors collected; ``token`` is stored the way the page keeps it."""

    def __init__(self, browser, srv, token: str | None):
        self.context = browser.new_context(viewport={"width": 1440, "height": 1300})
        if token:
            self.context.add_init_script(f"localStorage.setItem('snslab-token', {json.dumps(token)})")
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.dialogs: list[str] = []

        def accept(d):
            self.dialogs.append(d.message)
            d.accept()

        self.page.on("dialog", accept)
        self.page.set_default_timeout(TIMEOUT_MS)
        self.url = srv.url

    def open(self, session=None):
        self.page.goto(self.url + "/" + (f"?session={session}" if session else ""))
        return self.page

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self):
        self.context.close()


def _status(engine, sid) -> str:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT status FROM sessions WHERE id = :s"), {"s": sid}).scalar_one()


def _points(page, cls: str) -> int:
    return page.locator(f"#response-plot circle.pt-{cls}").count()


def _wait_until(fn, what: str, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while not fn():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


STATE: dict = {}


def test_form_creates_a_session_that_runs(browser, srv, rig, engine):
    ui = Page(browser, srv, TOKEN)
    try:
        page = ui.open()
        page.wait_for_selector("#role.operator")
        assert page.locator("#empty").is_visible()  # nothing stored yet
        assert ui.errors == []  # the page loads with no console errors
        page.click("#new-session")
        form = page.locator("#create-form")
        form.locator("[name=operator]").fill("ana")
        form.locator("[name=subject_id]").fill("m01")
        form.locator("[name=mode]").select_option("maximize")
        form.locator("[name=population]").fill("0")  # refused by the server, which says why
        form.locator("[name=generations]").fill("4")
        # (no reference check after it: that is test_live_reference_check's)
        form.locator("[name=probe_extra]").fill(json.dumps({"generator": SMALL_DCT, "reference": {"check_repeats": 0}}))
        form.locator("button[name=create]").click()
        page.wait_for_selector("#create-error:not([hidden])")
        error = page.locator("#create-error").inner_text()
        assert "population" in error and "\n" not in error
        assert ui.errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
        ui.errors.clear()  # the refused POST itself, which Chromium logs
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM sessions")).scalar_one() == 0
        form.locator("[name=population]").fill("6")
        form.locator("button[name=create-start]").click()
        page.wait_for_selector("#status.badge.completed")
        sid = page.locator("#meta code").inner_text()
        assert _status(engine, sid) == "completed"
        assert _points(page, "mean") == 4  # drawn from pushed updates, no reload
        assert any(d.startswith("Create and start a maximize session for m01") for d in ui.dialogs)
        with engine.connect() as c:
            msgs = c.execute(sa.text("SELECT message FROM events WHERE session_id = :s ORDER BY id"),
                             {"s": sid}).scalars().all()
        assert any(m.startswith("create requested by ana (dashboard)") for m in msgs)
        assert any(m.startswith("start requested by ana (dashboard)") for m in msgs)
        ui.shot("form-session-completed")
        assert ui.errors == []
        STATE["maximize"] = sid
    finally:
        ui.close()


def test_live_session_pushes_pauses_resumes_and_warns(browser, srv, rig, engine):
    from server.client import Client

    display, bridge = rig
    with Client(srv.url, TOKEN, operator_name="script") as c:
        s = c.create({"operator": "ana", "subject_id": "m01", "units": ["sim:0"], "on_ms": 40, "off_ms": 40,
                      "reference": {"source": "maximize-session", "session_id": STATE["maximize"]},
                      "probe": {"mode": "invariance", "population": 6, "generations": 60, "retests": 0,
                                "reference_repeats": 4, "lead_in": 2, "generator": SMALL_DCT, "stages": ["pixel"]}})
        c.start(s.id)
    sid = str(s.id)
    STATE["invariance"] = sid
    ui = Page(browser, srv, TOKEN)
    viewer = Page(browser, srv, VIEWER)
    try:
        page = ui.open(sid)
        page.evaluate("window.__loadedOnce = true")
        page.wait_for_function("document.querySelectorAll('#response-plot circle.pt-mean').length >= 2")
        first = _points(page, "mean")
        page.wait_for_function(f"document.querySelectorAll('#response-plot circle.pt-mean').length >= {first + 2}")
        assert page.evaluate("window.__loadedOnce") is True  # the same page: points arrived by push
        assert _points(page, "best") == _points(page, "mean") or _points(page, "best") >= first + 2

        # the neuron is steady: enough repeats for a verdict, no warning
        page.wait_for_function(f"document.querySelectorAll('#neuron-plot circle.pt-refresp').length >= {2 * WINDOW}")
        page.wait_for_selector("#neuron-status.neuron-ok")
        assert page.locator("#neuron-warning").is_hidden()
        rig_text = page.locator("#rig").inner_text()
        assert "60 Hz (measured) · paced in software (no vsync)" in rig_text and "connected" in rig_text
        assert "12.5 s (median" in rig_text  # the bridge's TTL onsets run 12.5 s after the display's clock

        # pause and resume from the buttons: the stored state follows
        page.click("#controls button[data-verb=pause]")
        _wait_until(lambda: _status(engine, sid) == "paused", "paused in the database")
        page.wait_for_selector("#status.badge.paused")
        page.wait_for_selector("#controls button[data-verb=resume]:not([disabled])")
        page.click("#controls button[data-verb=resume]")
        _wait_until(lambda: _status(engine, sid) == "running", "running again in the database")
        page.wait_for_selector("#status.badge.running")
        assert [d.split(" session")[0] for d in ui.dialogs] == ["Pause", "Resume"]

        # a viewer with the read-only token (not the operator's) sees the same session and cannot act
        vpage = viewer.open(sid)
        vpage.wait_for_function("document.querySelectorAll('#response-plot circle.pt-mean').length >= 2")
        assert vpage.locator("#role").inner_text().startswith("viewer")
        for verb in ("start", "pause", "resume", "stop"):
            assert vpage.locator(f"#controls button[data-verb={verb}]").is_disabled()
        assert vpage.locator("#new-session").is_disabled()
        refused = vpage.evaluate(f"fetch('/api/sessions/{sid}/pause', {{method: 'POST', headers: "
                                 f"{{Authorization: 'Bearer {VIEWER}'}}}}).then(r => r.status)")
        assert refused == 401 and _status(engine, sid) == "running"
        assert viewer.dialogs == []

        # the neuron is lost: every response (the reference's too) drops to a twentieth
        n_before = page.locator("#neuron-plot circle.pt-refresp").count()
        bridge.gain = 0.05
        page.wait_for_selector("#neuron-warning:not([hidden])")
        # the running estimate passes through "drifted" (half the window low) before "collapsed"
        page.wait_for_function("document.querySelector('#neuron-warning').innerText.includes('collapsed')")
        warning = page.locator("#neuron-warning").inner_text()
        assert "collapsed" in warning and "unit sim:0" in warning
        assert page.locator("#neuron-plot circle.pt-refresp").count() >= n_before + 1
        vpage.wait_for_selector("#neuron-warning:not([hidden])")  # viewers are warned too
        with Client(srv.url, VIEWER) as c:  # scripts read the same state
            health = c.neuron_health(sid)
        assert health["status"] == "collapse" and health["units"][0]["status"] == "collapse"
        last = health["units"][0]["references"][-WINDOW:]
        assert sum(r["response"] for r in last) / WINDOW < 0.5 * health["units"][0]["initial"]["mean"]
        ui.shot("live-neuron-collapse")
        viewer.shot("viewer-read-only")
        assert ui.errors == []
    finally:
        bridge.gain = 1.0
        ui.close()
        viewer.close()
        from server.client import Client

        with Client(srv.url, TOKEN) as c:
            c.stop(sid)


def test_stored_sessions_scrub_and_export(browser, srv, engine):
    sid = STATE["invariance"]
    ui = Page(browser, srv, TOKEN)
    try:
        page = ui.open(sid)
        page.wait_for_selector("#status.badge.aborted")
        done = int(page.locator("#progress").get_attribute("data-done"))
        assert done >= 4
        # as of generation 2: three generations plotted, generation 2's images, front up to 2
        page.locator("#scrub-range").fill("2")
        page.wait_for_selector("#scrub[data-as-of='2']")
        page.wait_for_function("document.getElementById('images-title').textContent.startsWith('Generation 2:')")
        assert _points(page, "mean") == 3
        gens = {int(g) for g in page.locator("#front-plot circle.pt-front").evaluate_all(
            "els => els.map(e => e.dataset.generation)")}
        assert gens == {0, 1, 2}
        assert page.locator("#neuron-status").inner_text() == "as of generation 2"
        assert page.locator("#neuron-warning").is_hidden()  # the past is shown without alarms
        ui.shot("past-session-generation-2")

        href = page.locator("#export-front").get_attribute("href")
        assert href.endswith(f"/export/front.zip?generation=2&access_token={TOKEN}")  # links cannot send headers
        z = zipfile.ZipFile(io.BytesIO(page.request.get(srv.url + href).body()))
        rows = list(csv.DictReader(io.StringIO(z.read("front.csv").decode())))
        pngs = [n for n in z.namelist() if n.endswith(".png")]
        assert len(rows) == len(pngs) > 0 and sorted(r["file"] for r in rows) == sorted(pngs)
        assert all(z.read(n)[:8] == b"\x89PNG\r\n\x1a\n" for n in pngs)
        with engine.connect() as c:
            front = c.execute(sa.text(
                "SELECT p.id, (sc.distances->>'pixel')::float, r.counts[1] FROM scores sc"
                " JOIN presentations p ON p.id = sc.presentation_id JOIN generations g ON g.id = sc.generation_id"
                " JOIN responses r ON r.presentation_id = p.id"
                " WHERE g.session_id = :s AND g.index = 2 AND sc.front_index = 0"), {"s": sid}).all()
            n_pres = c.execute(sa.text("SELECT count(*) FROM presentations WHERE session_id = :s"), {"s": sid}).scalar()
        assert {int(r["presentation_id"]): (float(r["distance_pixel"]), int(r["response_sim:0"])) for r in rows} == {
            pid: (d, n) for pid, d, n in front}
        table = page.request.get(srv.url + page.locator("#export-presentations").get_attribute("href"))
        assert table.headers["content-type"].startswith("text/csv")
        assert len(list(csv.DictReader(io.StringIO(table.text())))) == n_pres
        assert ui.errors == []
    finally:
        ui.close()
