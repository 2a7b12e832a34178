"""The dashboard in a real headless Chromium (Playwright on the system browser) against uvicorn and a stored
in-silico session: the DOM it builds from the pushed view carries the session's numbers, it subscribes once
instead of polling, and its screenshot is a real, non-blank picture."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil

import numpy as np
import pytest

from api_fixtures import CHROMIUM, INSILICO, TOKEN, requires_chromium
from api_fixtures import api_database, api_db_url, api_settings, live_server, stored  # noqa: F401  (fixtures)

pytest_plugins = ["db_fixtures"]

pytestmark = [requires_chromium, pytest.mark.slow]

WIDTH, HEIGHT = 1280, 1100


WATCH_S = 3.0  # after the first render: long enough for a polling page to have asked again


@pytest.fixture(scope="module")
def browser_page(live_server, stored):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def page(browser_page, live_server, stored) -> tuple[str, list[str]]:
    """The DOM once the session is drawn (and WATCH_S later), and the requests the page made meanwhile."""
    import time

    live_server.requests.clear()
    browser_page.goto(f"{live_server.url}/?session={stored.invariance}&access_token={TOKEN}")
    browser_page.wait_for_selector("#status.badge.completed")
    browser_page.wait_for_function("[...document.querySelectorAll('#images img')].every(i => i.complete) && "
                                   "document.querySelectorAll('#events tr[data-id]').length > 0")
    time.sleep(WATCH_S)
    return browser_page.content(), list(live_server.requests)


@pytest.fixture(scope="module")
def dom(page) -> str:
    return page[0]


def _count(pattern: str, html: str) -> int:
    return len(re.findall(pattern, html))


def _element(html: str, element_id: str) -> str:
    """The opening tag and content of the element with this id, up to the next element of the same kind."""
    m = re.search(rf'<(\w+)[^>]*\bid="{element_id}"', html)
    assert m, f"no element #{element_id} in the DOM"
    end = html.find(f"</{m.group(1)}>", m.end())
    return html[m.start(): end]


def test_dom_shows_the_selected_session(dom, stored, api_database):
    repo = api_database.repository()
    summary = repo.session_summary(stored.invariance)
    gens = INSILICO["generations"]
    assert summary.n_completed_generations == gens
    assert 'id="status" class="badge completed">completed<' in dom
    assert f"generation {gens} / {gens}" in _element(dom, "progress-text")
    assert f'data-done="{gens}"' in dom and f'data-budget="{gens}"' in dom
    assert 'style="width: 100%;"' in _element(dom, "progress-bar")
    assert f"{summary.n_answered} / {summary.n_presentations} answered" in dom
    assert str(stored.invariance) in dom


def test_dom_plots_one_point_per_generation(dom, stored, api_database):
    stats = api_database.repository().generation_stats(stored.invariance)
    plot = _element(dom, "response-plot")
    means = [float(v) for v in re.findall(r'class="pt pt-mean" data-generation="\d+" data-value="([^"]+)"', plot)]
    bests = [float(v) for v in re.findall(r'class="pt pt-best" data-generation="\d+" data-value="([^"]+)"', plot)]
    assert len(means) == len(bests) == len(stats) == INSILICO["generations"]
    np.testing.assert_allclose(means, [g.mean_response for g in stats])
    assert bests == [g.max_response for g in stats]
    # the reference line of the invariance probe, one point per generation too
    assert _count(r'class="pt pt-ref"', plot) == len(stats)


def test_dom_draws_the_fronts_coloured_by_generation(dom, stored, api_database):
    members = api_database.repository().front_history(stored.invariance)
    plot = _element(dom, "front-plot")
    assert _count(r'class="pt pt-front', plot) == len(members) > 0
    newest = max(m.generation for m in members)
    assert _count(r'class="pt pt-front newest"', plot) == sum(m.generation == newest for m in members)
    colours = set(re.findall(r'fill="(rgb\([^)]*\))" class="pt pt-front', plot))
    assert len(colours) == len({m.generation for m in members})  # one colour per generation
    assert "distance in stage 'pixel'" in plot


def test_dom_shows_the_newest_generation_images(dom, stored, api_database):
    images = api_database.repository().generation_images(stored.invariance, INSILICO["generations"] - 1)
    grid = dom[dom.index('id="images"'):dom.index('id="events-card"')]
    # the images ride in the pushed view (built once for every viewer): each is the stored PNG, inline
    srcs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', grid)
    pngs = api_database.repository().stimulus_images([im.stimulus_sha256 for im in images])
    assert [base64.b64decode(x) for x in srcs] == [pngs[im.stimulus_sha256] for im in images]
    assert len(srcs) == INSILICO["population"] + 4  # candidates + reference repeats
    assert re.findall(r'class="tile ([a-z]+)', grid) == [im.kind for im in images]
    assert sum(im.kind == "reference" for im in images) == 4
    assert _count(r'class="tile [a-z]+ invalid"', grid) == 1  # the presentation whose QC failed


def test_dom_lists_sessions_and_events(dom, stored):
    listing = _element(dom, "sessions")
    assert _count(r'class="session-item', listing) == 2
    assert f'data-id="{stored.maximize}"' in listing
    log = dom[dom.index('id="events"'):]
    for message in stored.events:
        assert message in log
    assert 'class="level warning"' in log


def test_page_subscribes_once_instead_of_polling(page, stored):
    requests = page[1]
    api = [r for r in requests if r.startswith("GET /api/") and not r.startswith("GET /api/stimuli/")]
    # who am I, the session list, one stream: everything else arrives pushed on the stream
    assert api == ["GET /api/whoami", "GET /api/sessions?limit=200",
                   f"GET /api/sessions/{stored.invariance}/stream?access_token={TOKEN}"]
    stimuli = [r for r in requests if r.startswith("GET /api/stimuli/")]
    assert stimuli == []  # the images arrive inline in the pushed view, not one request per image and viewer
    assert not any(r.startswith("POST") for r in requests)


def test_screenshot_is_a_real_picture(browser_page, page, tmp_path):
    from PIL import Image

    shot = tmp_path / "dashboard.png"
    browser_page.screenshot(path=str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    assert img.size == (WIDTH, HEIGHT)
    pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert pixels.var() > 100  # text, plots and stimuli, not a blank page
    # the plot colours are drawn: some pixels are the mean line's blue (#2563eb) and the best line's orange
    close = lambda rgb: (np.abs(pixels - rgb).sum(axis=2) < 30).sum()
    assert close((37, 99, 235)) > 50 and close((232, 89, 12)) > 50
    if os.environ.get("SNSLAB_KEEP_SCREENSHOT"):  # to look at it: SNSLAB_KEEP_SCREENSHOT=/tmp/dash.png
        shutil.copy(shot, os.environ["SNSLAB_KEEP_SCREENSHOT"])
