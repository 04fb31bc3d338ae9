from pathlib import Path

import platformdirs

from kittyterm import locations, runs
from kittyterm.jobs.models import model_path


def test_kittyterm_home_holds_every_folder(kittyterm_home):
    for folder in (locations.data_dir(), locations.cache_dir(), locations.config_dir(), locations.runs_dir(), locations.gallery_dir()):
        assert kittyterm_home in folder.parents


def test_platform_folders_without_kittyterm_home(monkeypatch):
    monkeypatch.delenv("KITTYTERM_HOME")
    assert locations.data_dir() == Path(platformdirs.user_data_dir("kittyterm", appauthor=False))
    assert locations.cache_dir() == Path(platformdirs.user_cache_dir("kittyterm", appauthor=False))


def test_run_names_and_the_default_model(tmp_path, kittyterm_home):
    assert runs.run_name("tiny", tmp_path / "catfaces64" / "train") == "tiny-catfaces64-train"
    assert runs.run_name("kitty-64", tmp_path / "my cats!") == "kitty-64-my-cats"
    assert model_path() == locations.shipped_model()
    checkpoint = runs.run_dir("tiny-x") / runs.CHECKPOINT_NAME
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"x")
    assert model_path() == checkpoint
    archived = runs.archive_run("tiny-x")
    assert archived.exists() and not checkpoint.exists()
    assert model_path() == locations.shipped_model()  # archived runs are not picked
