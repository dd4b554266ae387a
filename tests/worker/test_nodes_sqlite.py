"""Nodes on SQLite: one worker per database, as before nodes existed, and it says so; `register --node`,
`nodes assign` and `nodes list` through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from healing.pixelrts import write_image
from storage.engine import get_engine
from tests.conftest import selfheal_cmd, subprocess_env
from tests.worker._procs import start_worker, stop_worker, wait_for, write_config


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*selfheal_cmd(), *args], capture_output=True, text=True, timeout=120, env=subprocess_env())


def _images(tmp_path: Path, *names: str) -> list[str]:
    paths = []
    for n, name in enumerate(names):
        path = tmp_path / "imgs" / f"{name}.rts.png"
        path.parent.mkdir(exist_ok=True)
        write_image(bytes((k * 13 + n) % 251 for k in range(5000)), path)
        paths.append(str(path))
    return paths


def _nodes_of(home: Path) -> dict[str, str | None]:
    with get_engine(f"sqlite:///{home / 'selfheal.db'}").connect() as conn:
        return {Path(p).name: node for p, node in conn.exec_driver_sql("SELECT path, node FROM images")}


@pytest.mark.slow
def test_register_node_assign_and_list(tmp_path: Path, _isolated_home: Path) -> None:
    one, two, three = _images(tmp_path, "one", "two", "three")
    assert _cli("register", "--node", "edge-1", one, two).returncode == 0
    assert _cli("register", three).returncode == 0  # no --node: this host's name
    host = os.uname().nodename
    assert _nodes_of(_isolated_home) == {"one.rts.png": "edge-1", "two.rts.png": "edge-1", "three.rts.png": host}
    assert _cli("register", "--node", "edge-2", two).returncode == 0  # re-registering with --node moves it
    out = _cli("nodes", "assign", "edge-2", one, "/not/registered.png", "--json")
    assert (out.returncode, json.loads(out.stdout)) == (3, {"node": "edge-2", "moved": 1, "already_there": 0,
                                                            "not_registered": ["/not/registered.png"]})
    assert out.stderr == "selfheal: /not/registered.png: not a registered image\n"
    assert _nodes_of(_isolated_home) == {"one.rts.png": "edge-2", "two.rts.png": "edge-2", "three.rts.png": host}
    listed = json.loads(_cli("nodes", "list", "--json").stdout)
    assert [(n["node"], n["images"], n["statuses"], n["running"], n["leader"]) for n in listed] == sorted([
        ("edge-2", 2, {"unknown": 2}, False, False), (host, 1, {"unknown": 1}, False, False)])
    out = subprocess.run([*selfheal_cmd(), "nodes", "assign", "edge-3", "--from-file", "-"], input=f"# list\n\n{three}\n",
                         capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert (out.returncode, out.stdout.strip()) == (0, "1 image(s) moved to node edge-3, 0 already there, 0 not registered")
    assert _nodes_of(_isolated_home)["three.rts.png"] == "edge-3"
    assert _cli("nodes", "assign", "edge-3", "--from-file", str(tmp_path / "none.txt")).stderr.strip().endswith(
        "none.txt: cannot read the list of paths (No such file or directory)")
    out = _cli("nodes", "assign", "bad name", one)
    assert (out.returncode, out.stderr.splitlines()[-1]) == (
        64, "selfheal nodes assign: error: argument NODE: a node name must be printable and without spaces, got 'bad name'")
    out = _cli("worker", "--once", "--node", "")
    assert (out.returncode, out.stderr.splitlines()[-1]) == (64, "selfheal worker: error: argument --node: a node name must not be empty")


@pytest.mark.slow
def test_sqlite_is_one_worker_that_checks_every_node_and_says_so(tmp_path: Path, _isolated_home: Path) -> None:
    paths = _images(tmp_path, "mine", "elsewhere")
    assert _cli("register", "--node", "node-a", paths[0]).returncode == 0
    assert _cli("register", "--node", "node-b", paths[1]).returncode == 0
    config = write_config(tmp_path / "c.yaml")
    log = tmp_path / "worker.log"
    proc = start_worker(_isolated_home, config, log, "--node", "node-a")
    try:
        started = wait_for(lambda: "started" in log.read_text(errors="replace") and log.read_text(), 60)
        assert started and f"(home {_isolated_home}, node node-a, single worker (SQLite))" in started
        engine = get_engine(f"sqlite:///{_isolated_home / 'selfheal.db'}")

        def checked() -> set[str]:
            with engine.connect() as conn:
                return {Path(p).name for (p,) in conn.exec_driver_sql("SELECT image_path FROM checks")}

        # SQLite keeps one worker for the whole database: it checks node-b's image too.
        assert wait_for(lambda: checked() == {"mine.rts.png", "elsewhere.rts.png"}, 60)
        status = subprocess.run([*selfheal_cmd(), "daemon", "status"], capture_output=True, text=True, timeout=60,
                                env=subprocess_env(SELFHEAL_HOME=str(_isolated_home), SELFHEAL_CONFIG=str(config)))
        assert status.returncode == 0 and status.stdout.rstrip().endswith(", node node-a (single worker (SQLite))"), status.stdout
        # A second worker on the same database, whatever its node, is refused with one line.
        second = subprocess.run([*selfheal_cmd(), "worker", "--node", "node-b"], capture_output=True, text=True, timeout=60,
                                env=subprocess_env(SELFHEAL_HOME=str(_isolated_home), SELFHEAL_CONFIG=str(config)))
        assert second.returncode == 3
        assert second.stderr == (f"selfheal: another worker is already running for this database (pid {proc.pid}, "
                                 f"lock {_isolated_home / 'worker.lock'})\n")
    finally:
        stop_worker(proc)


@pytest.mark.parametrize(("yaml", "message"), [
    ("worker:\n  node: ''\n", "config: worker.node: a node name must not be empty"),
    ("worker:\n  node: 'two words'\n", "config: worker.node: a node name must be printable and without spaces, got 'two words'"),
    ("worker:\n  node: 7\n", "config: worker.node must be a name, got 7"),
    ("worker:\n  leader_interval: 30\n", "config: worker.leader_interval must be ≤ 10, got 30.0"),
])
def test_node_settings_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml: str, message: str) -> None:
    from healing.config import load_settings
    from healing.errors import ConfigError
    from healing.worker import WorkerSettings

    config = tmp_path / "c.yaml"
    config.write_text(yaml)
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        WorkerSettings.from_settings(load_settings())
    assert str(caught.value) == message


def test_worker_node_setting_names_the_worker_and_its_registrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from healing.config import load_settings
    from healing.worker import Worker
    from storage.nodes import current_node, use_node

    config = tmp_path / "c.yaml"
    config.write_text("worker:\n  node: rack-7\n  leader_interval: 0.5\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    try:
        worker = Worker(load_settings())
        assert (worker.node, worker.config.leader_interval, current_node()) == ("rack-7", 0.5, "rack-7")
        assert Worker(load_settings(), node="rack-8").node == "rack-8"  # --node wins
    finally:
        use_node(None)
    assert current_node() == os.uname().nodename
