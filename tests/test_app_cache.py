"""The app's bounded cache: gradio's ``delete_cache`` pass deletes old output files, and the app's wrapper also
removes the folders those files leave empty (gradio writes each file into a folder of its own)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from gradio import route_utils

import app


def _file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"png")
    return str(path)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "gradio"
    root.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(root))
    return root


def test_the_delete_cache_pass_is_the_apps() -> None:
    assert route_utils.delete_files_created_by_app is app._delete_files_created_by_app


def test_emptied_folders_go_and_every_other_folder_stays(cache: Path) -> None:
    alone = _file(cache / "a" / "out.png")  # its folder empties: removed
    shared = _file(cache / "b" / "out.png")  # its folder keeps a file gradio did not track: kept
    _file(cache / "b" / "upload.png")
    at_root = _file(cache / "root.png")  # the cache folder itself is never removed
    kept = _file(cache / "c" / "kept.png")  # a component keeps it in the cache: file and folder stay
    blocks = SimpleNamespace(blocks={0: SimpleNamespace(keep_in_cache={kept})},
                             temp_file_sets=[{alone, shared}, {at_root, kept}])
    app._delete_files_created_by_app(blocks, None)
    assert not (cache / "a").exists()
    assert sorted(os.listdir(cache / "b")) == ["upload.png"]
    assert cache.is_dir() and not Path(at_root).exists()
    assert Path(kept).is_file()
    assert blocks.temp_file_sets == [set(), {kept}]


def test_files_younger_than_the_age_and_their_folders_stay(cache: Path) -> None:
    young = _file(cache / "d" / "out.png")
    blocks = SimpleNamespace(blocks={}, temp_file_sets=[{young}])
    app._delete_files_created_by_app(blocks, 3600)
    assert Path(young).is_file() and blocks.temp_file_sets == [{young}]
