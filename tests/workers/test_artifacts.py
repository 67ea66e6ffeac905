import json
import multiprocessing as mp

from workers.artifacts import ArtifactStore, clear_process_cache
from workers.config import ArtifactKey


def _write(tmp, text="hello"):
    (tmp / "a.txt").write_text(text)
    return {"note": 1}


def test_build_publishes_with_manifest_and_checksums(tmp_path):
    store = ArtifactStore(tmp_path)
    key = ArtifactKey.make("subset", {"b": 1, "a": [1, 2]})
    assert key == ArtifactKey.make("subset", {"a": [1, 2], "b": 1})
    path = store.build(key, _write)
    m = json.loads((path / "manifest.json").read_text())
    assert m["config"] == {"a": [1, 2], "b": 1} and "a.txt" in m["files"] and m["note"] == 1
    assert store.verify(key)
    (path / "a.txt").write_text("tampered")
    assert not store.verify(key)


def test_a_failed_build_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    key = ArtifactKey.make("subset", {"x": 1})

    def boom(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("crash")

    try:
        store.build(key, boom)
    except RuntimeError:
        pass
    assert not store.exists(key)
    assert list((tmp_path / "subset").iterdir()) == []


def _race(root, text):
    ArtifactStore(root).build(ArtifactKey.make("subset", {"x": 2}), lambda tmp: _write(tmp, text))


def test_concurrent_builders_end_with_one_valid_copy(tmp_path):
    procs = [mp.get_context("spawn").Process(target=_race, args=(tmp_path, f"v{i}")) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    store = ArtifactStore(tmp_path)
    key = ArtifactKey.make("subset", {"x": 2})
    assert store.verify(key)
    assert [p.name for p in (tmp_path / "subset").iterdir()] == [key.digest]


def test_a_corrupted_artifact_is_detected_and_rebuilt(tmp_path, caplog):
    key = ArtifactKey.make("subset", {"x": 3})
    calls = []

    def write(tmp):
        calls.append(1)
        (tmp / "a.txt").write_text("payload")

    path = ArtifactStore(tmp_path).build(key, write)
    (path / "a.txt").write_text("payl")  # truncated on disk
    assert ArtifactStore(tmp_path).build(key, write) == path and len(calls) == 1  # checked once per process
    clear_process_cache()  # as a new process
    with caplog.at_level("WARNING"):
        path2 = ArtifactStore(tmp_path).build(key, write)  # checks the checksums
    assert path2 == path and (path / "a.txt").read_text() == "payload" and len(calls) == 2
    assert "fails its manifest checksums" in caplog.text
    assert ArtifactStore(tmp_path).verify(key)
    assert sorted(p.name for p in (tmp_path / "subset").iterdir()) == [key.digest]
