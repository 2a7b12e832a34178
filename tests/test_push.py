"""Server push over a real socket: one producer per watched session however many viewers, every viewer gets
the same update, and a viewer that reconnects with Last-Event-ID (or ?since=) gets exactly what it missed."""

from __future__ import annotations

import queue
import threading
import time

import httpx
import pytest

from api_fixtures import LiveServer, api_database, api_db_url, api_settings  # noqa: F401  (fixtures)

pytest_plugins = ["db_fixtures"]


@pytest.fixture(scope="module")
def server(api_settings, api_database):
    from server.api.main import create_app

    with LiveServer(create_app(api_settings, database=api_database, operator_token="t")) as s:
        yield s


@pytest.fixture(scope="module")
def session_id(api_database):
    repo = api_database.repository()
    sid = repo.create_session(config={"probe": {"mode": "maximize", "generations": 3}}, seed=1, mode="simulated",
                              operator="ana", subject_id="m1", rig="rig-t")
    repo.log_event(sid, "test", "first")
    return sid


def _reader(url: str, sid, out: queue.Queue, stop: threading.Event, last_event_id: int | None = None, **params):
    from server.client import Client

    def run():
        with Client(url, "t") as c:
            for update in c.stream(sid, last_event_id=last_event_id, **params):
                out.put(update)
                if stop.is_set():
                    return

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _next(q: queue.Queue, timeout: float = 30) -> dict:
    return q.get(timeout=timeout)


def _feeds(url: str) -> dict:
    return httpx.get(f"{url}/api/push", headers={"Authorization": "Bearer t"}, trust_env=False).json()["feeds"]


def test_many_viewers_share_one_producer(server, session_id, api_database):
    repo = api_database.repository()
    stop = threading.Event()
    queues = [queue.Queue() for _ in range(5)]
    for q in queues:
        _reader(server.url, session_id, q, stop)
    firsts = [_next(q) for q in queues]
    assert all([e["message"] for e in f["events"]] == ["first"] for f in firsts)
    deadline = time.monotonic() + 30
    while _feeds(server.url).get(str(session_id), {}).get("subscribers") != 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    builds = _feeds(server.url)[str(session_id)]["builds"]
    for msg in ("second", "third"):
        repo.log_event(session_id, "test", msg)
    got = []
    for q in queues:  # every viewer sees both events, in order, whatever updates carried them
        seen: list[str] = []
        while len(seen) < 2:
            seen += [e["message"] for e in _next(q)["events"]]
        got.append(seen)
    assert got == [["second", "third"]] * 5
    feeds = _feeds(server.url)
    assert list(feeds) == [str(session_id)]  # one producer for five viewers
    new_builds = feeds[str(session_id)]["builds"] - builds
    assert 1 <= new_builds <= 2  # one view built per change, not one per viewer
    stop.set()
    repo.log_event(session_id, "test", "wake the readers so they stop")


def test_a_reconnecting_viewer_gets_exactly_what_it_missed(server, session_id, api_database):
    repo = api_database.repository()
    q: queue.Queue = queue.Queue()
    stop = threading.Event()
    stop.set()  # read one update and hang up
    th = _reader(server.url, session_id, q, stop)
    first = _next(q)
    th.join(10)
    last_id = max(e["id"] for e in first["events"])
    for i in range(3):
        repo.log_event(session_id, "test", f"while away {i}")
    missed = [e["id"] for e in repo.events(session_id, after_id=last_id)]  # all this viewer never saw
    assert len(missed) >= 3
    # by Last-Event-ID (what EventSource sends on its own) and by ?since= (a page that starts afresh)
    for how in ("last_event_id", "since"):
        q2: queue.Queue = queue.Queue()
        stop2 = threading.Event()
        if how == "since":
            threading.Thread(target=_since, args=(server.url, session_id, last_id, q2, stop2), daemon=True).start()
        else:
            _reader(server.url, session_id, q2, stop2, last_event_id=last_id)
        got: list[int] = []
        update = None
        while len(got) < len(missed):  # the catch-up, and any update right behind it
            update = _next(q2)
            got += [e["id"] for e in update["events"]]
        assert got == missed  # nothing seen before, nothing twice, in order
        assert update["detail"]["id"] == str(session_id) and update["sessions"][0]["id"] == str(session_id)
        stop2.set()
        repo.log_event(session_id, "test", f"wake the {how} reader")
        if how == "since":  # the first update was whole; later ones carry only what changed (not the front)
            deadline = time.monotonic() + 30
            while len(RAW) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "partial" not in RAW[0] and {"detail", "front", "generations", "neuron"} <= RAW[0]
            assert all("partial" in keys and "front" not in keys and "events" in keys for keys in RAW[1:])
        missed.append(missed[-1] + 1)


RAW: list[set[str]] = []  # the keys of every update _since received, as sent


def _since(url: str, sid, since: int, out: queue.Queue, stop: threading.Event) -> None:
    import json

    with httpx.stream("GET", f"{url}/api/sessions/{sid}/stream", params={"since": since, "access_token": "t"}, trust_env=False,
                      timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        data, event, view = [], "", {}
        for line in r.iter_lines():
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif not line:
                if data and event == "update":  # the parts that changed, on top of the whole first view
                    update = json.loads("\n".join(data))
                    RAW.append(set(update))
                    view = view | update if update.pop("partial", False) else update
                    out.put(dict(view))
                    if stop.is_set():
                        return
                data, event = [], ""


def test_the_stream_needs_a_read_token(server, session_id):
    url = f"{server.url}/api/sessions/{session_id}/stream"
    r = httpx.get(url, trust_env=False)
    assert r.status_code == 401 and r.json()["detail"].startswith("read token required")
    assert httpx.get(url, params={"access_token": "nope"}, trust_env=False).status_code == 401


def test_unknown_session_is_refused_before_streaming(server):
    r = httpx.get(f"{server.url}/api/sessions/00000000-0000-0000-0000-000000000009/stream",
                  params={"access_token": "t"}, trust_env=False)
    assert r.status_code == 404 and r.json()["detail"].startswith("no session")
