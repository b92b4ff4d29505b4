"""core/artifacts.py: staged builds, manifests, build-once across processes, leftovers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core import artifacts
from core.artifacts import (
    HOST_TAG,
    STAGING_PREFIX,
    ArtifactError,
    build_once,
    cleanup_leftovers,
    read_manifest,
    staged_dir,
    verify_manifest,
    write_manifest,
)


def test_staged_dir_renames_into_place_only_on_success(tmp_path):
    final = tmp_path / "out" / "thing"
    with staged_dir(final) as stage:
        (stage / "a.txt").write_text("a")
        assert not final.exists() and stage.name.startswith(STAGING_PREFIX + "thing-")
    assert (final / "a.txt").read_text() == "a"
    with pytest.raises(RuntimeError), staged_dir(tmp_path / "out" / "broken") as stage:
        (stage / "half").write_text("x")
        raise RuntimeError("build failed")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["thing"]
    with pytest.raises(ArtifactError, match="exists already"), staged_dir(final):
        pass
    with staged_dir(final, replace=True) as stage:
        (stage / "b.txt").write_text("b")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["thing"]


def test_manifest_lists_every_file_and_verification_finds_changes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "sub" / "b.txt").write_text("hello")
    m = write_manifest(tmp_path, "adapter", name="x", source={"job": 3})
    assert m["kind"] == "adapter" and m["source"] == {"job": 3}
    assert set(m["files"]) == {"a.bin", "sub/b.txt"} and m["files"]["a.bin"]["bytes"] == 10
    assert m["library_versions"]["python"] and "torch" in m["library_versions"]
    assert read_manifest(tmp_path)["name"] == "x"
    assert verify_manifest(tmp_path) == []
    (tmp_path / "sub" / "b.txt").write_text("changed")
    (tmp_path / "a.bin").unlink()
    (tmp_path / "extra").write_text("?")
    assert verify_manifest(tmp_path) == [
        "a.bin: missing",
        "sub/b.txt: sha256 differs from the manifest",
        "extra: not in the manifest",
    ]


def test_a_nested_artifact_s_manifest_is_listed_like_any_file(tmp_path):
    (tmp_path / "inner").mkdir()
    write_manifest(tmp_path / "inner", "adapter")
    m = write_manifest(tmp_path, "backup")
    assert set(m["files"]) == {"inner/manifest.json"}
    assert verify_manifest(tmp_path) == []
    (tmp_path / "inner" / "manifest.json").write_text("{}")
    assert verify_manifest(tmp_path) == ["inner/manifest.json: sha256 differs from the manifest"]


BUILD_IN_A_PROCESS = """
import sys, time
from pathlib import Path
from core.artifacts import build_once

target, counter = Path(sys.argv[1]), sys.argv[2]

def build(folder):
    with open(counter, "a") as f:
        f.write("built\\n")
    time.sleep(0.5)
    (folder / "done").write_text("ok")

build_once(target, lambda p: (p / "done").exists(), build)
"""


def test_build_once_builds_once_across_processes(tmp_path):
    target, counter = tmp_path / "model", tmp_path / "count.txt"
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_IN_A_PROCESS, str(target), str(counter)], cwd=root
        )
        for _ in range(3)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert counter.read_text() == "built\n"
    assert (target / "done").read_text() == "ok"


def test_build_once_replaces_an_incomplete_target_and_old_leftovers(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "partial").write_text("?")
    dead = tmp_path / f"{STAGING_PREFIX}model-{HOST_TAG}-999999-deadbeef"
    dead.mkdir()
    build_once(target, lambda p: (p / "done").exists(), lambda f: (f / "done").write_text("1"))
    assert sorted(p.name for p in target.iterdir()) == ["done"]
    assert not dead.exists()


def test_cleanup_removes_what_dead_builds_left_and_keeps_live_ones(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "models").mkdir()
        dead_dir = tmp_path / "models" / f"{STAGING_PREFIX}demo-{HOST_TAG}-999999-0000aaaa"
        live_dir = tmp_path / "models" / f"{STAGING_PREFIX}onnx-{HOST_TAG}-{live.pid}-0000bbbb"
        dead_file = tmp_path / f"{STAGING_PREFIX}export.jsonl-{HOST_TAG}-999999-0000cccc.jsonl"
        dead_dir.mkdir()
        live_dir.mkdir()
        dead_file.write_text("half")
        keep = tmp_path / "models" / "demo"
        keep.mkdir()
        other_host = tmp_path / f"{STAGING_PREFIX}demo-0123abcd-999999-0000eeee"
        other_host.mkdir()
        assert sorted(cleanup_leftovers(tmp_path, dry_run=True)) == sorted([dead_dir, dead_file])
        assert dead_dir.exists() and dead_file.exists()
        removed = cleanup_leftovers(tmp_path)
        assert sorted(removed) == sorted([dead_dir, dead_file])
        assert other_host.exists()  # another machine's build on a shared data dir
        assert live_dir.exists() and keep.exists()
        # Young leftovers may belong to a build we cannot see yet: kept until old enough.
        young = tmp_path / f"{STAGING_PREFIX}x-{HOST_TAG}-999999-0000dddd"
        young.mkdir()
        assert cleanup_leftovers(tmp_path, min_age_s=3600) == []
    finally:
        live.kill()
        live.wait()


def test_lock_is_held_only_while_building(tmp_path):
    target = tmp_path / "m"
    seen = []
    build_once(target, lambda p: False, lambda f: seen.append(artifacts.lock_is_held(target)))
    assert seen == [True]  # flock is per open file, so even this process sees it held
    assert not artifacts.lock_is_held(target)
