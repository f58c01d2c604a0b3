"""Discovery files: atomic JSON under a lock, deadline waits, port files."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import List

import pytest

from sente_lite import discovery
from sente_lite.errors import DiscoveryTimeout


def test_write_then_read(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert discovery.read_json(path) is None
    discovery.write_json(path, {"a": [1, 2], "b": "ü"})
    assert discovery.read_json(path) == {"a": [1, 2], "b": "ü"}
    discovery.write_json(str(path), [3])  # str paths too; replaces
    assert discovery.read_json(str(path)) == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.lock"]


def test_failed_write_leaves_old_file_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    discovery.write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        discovery.write_json(path, {"v": object()})
    assert discovery.read_json(path) == {"v": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_readers_never_see_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    versions = [{"n": i, "pad": str(i) * 50_000} for i in range(4)]
    discovery.write_json(path, versions[0])
    stop = threading.Event()
    errors: List[BaseException] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            discovery.write_json(path, versions[i % len(versions)])

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(150):
            try:
                value = discovery.read_json(path)
            except BaseException as exc:  # a torn file would fail to parse
                errors.append(exc)
                break
            assert value in versions
    finally:
        stop.set()
        t.join(10)
    assert errors == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_wait_for_returns_first_truthy_value() -> None:
    calls = []

    def cond() -> object:
        calls.append(1)
        return "ready" if len(calls) >= 3 else None

    assert discovery.wait_for(cond, 5.0, "three calls", interval=0.001) == "ready"
    assert len(calls) == 3
    assert discovery.wait_for(lambda: 0, 1.0, "zero") == 0  # 0 is a value, not "not yet"


def test_wait_for_json_deadline_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "never.json"
    started = time.monotonic()
    with pytest.raises(DiscoveryTimeout) as info:
        discovery.wait_for_json(path, timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert str(path) in str(info.value)
    assert "0.2" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # a polling reader leaves no lock file behind


def test_wait_for_json_sees_a_file_written_later(tmp_path: Path) -> None:
    path = tmp_path / "later.json"
    t = threading.Thread(target=discovery.write_json, args=(path, {"ok": True}))
    t.start()
    try:
        assert discovery.wait_for_json(path, timeout=5) == {"ok": True}
    finally:
        t.join(5)


def test_port_file_content(tmp_path: Path) -> None:
    path = tmp_path / "port.json"
    discovery.write_port_file(path, "127.0.0.1", 4321, "ws://127.0.0.1:4321/chsk", "sid")
    assert discovery.read_port_file(path, timeout=1) == {
        "host": "127.0.0.1", "port": 4321, "url": "ws://127.0.0.1:4321/chsk",
        "pid": os.getpid(), "server-id": "sid"}


def test_read_port_file_skips_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "port.json"
    discovery.write_port_file(path, "127.0.0.1", 1111, "ws://127.0.0.1:1111/chsk", "old")
    with pytest.raises(DiscoveryTimeout):
        discovery.read_port_file(path, timeout=0.2, not_server_id="old")

    # The fresh file is written only after the reader has seen (and skipped) the stale one.
    stale_seen = threading.Event()
    real_read = discovery.read_json

    def spying_read(p: object) -> object:
        value = real_read(p)  # type: ignore[arg-type]
        if value is not None and value.get("server-id") == "old":
            stale_seen.set()
        return value

    monkeypatch.setattr(discovery, "read_json", spying_read)

    def restart() -> None:
        assert stale_seen.wait(5)
        discovery.write_port_file(path, "127.0.0.1", 2222, "ws://127.0.0.1:2222/chsk", "new")

    t = threading.Thread(target=restart)
    t.start()
    try:
        fresh = discovery.read_port_file(path, timeout=5, not_server_id="old")
    finally:
        t.join(5)
    assert stale_seen.is_set()
    assert (fresh["server-id"], fresh["port"]) == ("new", 2222)
    assert discovery.read_port_file(path, timeout=1)["server-id"] == "new"


def test_remove_removes_file_and_lock(tmp_path: Path) -> None:
    path = tmp_path / "port.json"
    discovery.write_json(path, {"x": 1})
    assert (tmp_path / "port.json.lock").exists()
    discovery.remove(path)
    assert list(tmp_path.iterdir()) == []
    discovery.remove(path)  # removing what is gone is fine
    assert list(tmp_path.iterdir()) == []
