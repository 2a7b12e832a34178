"""An installable wheel: built from the source tree, installed without -e into fresh virtual environments.

- with only the ``bridge`` extra: every bridge and display module imports with ``server`` made unimportable
  (so none of them needs it), and the server's own stack (SQLAlchemy, FastAPI, torch) is not there at all;
- with the ``server`` extra: ``snslab db migrate`` creates the schema of an empty embedded PostgreSQL from the
  migrations shipped inside the package.

No download: each fresh environment sees exactly the distributions its extras require (the closure of the
wheel's Requires-Dist), linked from the environment running the tests, never the checkout or its editable
install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from db_fixtures import private_tmpdir

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "server", "wire", "snslab_common", "recording_bridge",
           "stimulus_client", "migrations"]
RIG_PACKAGES = ("recording_bridge", "stimulus_client", "wire", "snslab_common")
SERVER_STACK = ("sqlalchemy", "fastapi", "torch", "alembic", "pydantic_settings")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the sources (the build leaves nothing in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                        "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("snslab-*.whl")
    return whl


def _closure(whl: Path, extra: str) -> set[str]:
    """Names of the distributions the wheel needs with ``extra``, transitively (as installed here)."""
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [Requirement(line.split(":", 1)[1].strip()) for line in z.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    todo = [(r, extra) for r in reqs]
    seen: set[str] = set()
    while todo:
        req, ex = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ex or ""}):
            continue
        dist = metadata.distribution(req.name)
        name = dist.metadata["Name"].lower()
        if name in seen:
            continue
        seen.add(name)
        for sub in dist.requires or []:
            r = Requirement(sub)
            todo += [(r, e) for e in (req.extras or {""})]
    return seen


def _venv(tmp: Path, whl: Path, extra: str) -> Path:
    """A fresh venv with the wheel installed (no -e) and its extra's dependencies linked in; returns python."""
    env_dir = tmp / f"venv-{extra}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                        str(whl)], capture_output=True, text=True, timeout=300, env=_clean())
    assert r.returncode == 0, r.stderr
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = tmp / f"deps-{extra}"
    deps.mkdir()
    for name in _closure(whl, extra):
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if (base / top).exists() and not (deps / top).exists():
                (deps / top).symlink_to(base / top)
    (site / "_snslab_test_deps.pth").write_text(f"{deps}\n")
    return python


def _clean() -> dict[str, str]:
    """The environment without what points at the checkout (PYTHONPATH) or at a database."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL", "SNSLAB_DATA_DIR")}


def _run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], cwd=cwd, env=_clean(), capture_output=True, text=True,
                          timeout=300)


def test_the_rig_packages_install_and_import_without_the_server(wheel, tmp_path):
    python = _venv(tmp_path, wheel, "bridge")
    with zipfile.ZipFile(wheel) as z:
        modules = sorted({n[:-3].replace("/", ".").removesuffix(".__init__") for n in z.namelist()
                          if n.endswith(".py") and n.split("/")[0] in RIG_PACKAGES and not n.endswith("__main__.py")})
    assert {"recording_bridge.adapters.sim", "recording_bridge.cli", "stimulus_client.display",
            "stimulus_client.cli", "wire.server", "snslab_common.neurons"} <= set(modules)
    code = f"""
import importlib, importlib.abc, sys

class NoServer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "server" or name.startswith("server."):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)

sys.meta_path.insert(0, NoServer())
try:
    import server
    print("server importable")
except ModuleNotFoundError:
    pass
for m in {modules!r}:
    mod = importlib.import_module(m)
    assert "site-packages" in mod.__file__, mod.__file__
print(len({modules!r}), "modules")
print("stack:", [m for m in {SERVER_STACK!r} if importlib.util.find_spec(m) is not None])
"""
    r = _run(python, code, tmp_path)  # cwd outside the checkout: only the installed wheel can answer
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{len(modules)} modules", "stack: []"], r.stdout
    # the rig's commands run from the installed scripts: their own, and `snslab bridge|display` as the README
    # tells a rig PC (the server's stack is not needed for them)
    for command in (["snslab-bridge"], ["snslab-display"], ["snslab", "bridge"], ["snslab", "display"]):
        h = subprocess.run([str(python.parent / command[0]), *command[1:], "--help"], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path, env=_clean())
        assert h.returncode == 0 and "--config" in h.stdout, (command, h.stderr)
    # without the blocker `server` is there (one wheel) but cannot start: its stack is not installed
    r = _run(python, "import server.db", tmp_path)
    assert r.returncode != 0 and re.search(r"No module named '(sqlalchemy|pydantic_settings)'", r.stderr), r.stderr


def test_the_server_installs_and_migrates_an_empty_embedded_database(wheel):
    # outside pytest's 0700 basetemp: as root, postgres runs as the user 'pgserver', who must reach its binaries
    tmp_path = private_tmpdir("snslab-wheel-")
    os.chmod(tmp_path, 0o755)
    data = tmp_path / "data"
    python = _venv(tmp_path, wheel, "server")
    try:
        code = """
import server, server.db.database as d
print(server.__file__)
print(d.MIGRATIONS_DIR)
"""
        r = _run(python, code, tmp_path)
        assert r.returncode == 0, r.stderr
        server_file, migrations = r.stdout.split()
        site = str(tmp_path / "venv-server")
        assert server_file.startswith(site) and migrations == str(Path(server_file).parent / "migrations")
        assert (Path(server_file).parent / "dashboard" / "index.html").is_file()
        versions = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
        assert sorted(p.name for p in Path(migrations, "versions").glob("*.py")) == versions
        env = _clean() | {"SNSLAB_DATA_DIR": str(data)}
        r = subprocess.run([str(python.parent / "snslab"), "db", "migrate"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        texts = [(ROOT / "migrations" / "versions" / v).read_text() for v in versions]
        revisions = {re.search(r'^revision(?::[^=]*)? = "([^"]+)"', t, re.M).group(1) for t in texts}
        downs = {d for t in texts for d in re.findall(r'"([^"]+)"', re.search(r"^down_revision.*$", t, re.M).group(0))}
        (head,) = revisions - downs  # the newest migration: no other one names it as its parent
        assert r.stdout.strip().endswith(f"(embedded) schema revision {head}"), r.stdout
        code = f"""
import sqlalchemy as sa
from server.db.database import connect
from server.settings import Settings
db = connect(Settings(data_dir={str(data)!r}), migrate_schema=False)
with db.engine.connect() as c:
    print(sorted(sa.inspect(c).get_table_names()))
db.close()
"""
        r = _run(python, code, tmp_path)
        assert r.returncode == 0, r.stderr
        tables = eval(r.stdout.strip())  # noqa: S307  (our own print of a list of names)
        assert {"sessions", "units", "generations", "presentations", "responses", "scores", "stimuli",
                "events", "alembic_version"} <= set(tables)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
