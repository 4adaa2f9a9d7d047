"""Paths that cannot work fail before any Flower process starts, naming the key."""

import os

import pytest

from common.config import RunConfig
from deploy import local_sim
from server_app.preflight import PreflightError, preflight

SMALL = {"num-clients": 4, "partitioner": "iid", "max-samples-per-client": 64}


def _cfg(defaults, tmp_path, **overrides):
    return RunConfig.from_run_config(
        {**defaults, **SMALL, "output-dir": str(tmp_path / "out"), **overrides}
    )


def test_the_defaults_pass(defaults, tmp_path):
    preflight(_cfg(defaults, tmp_path))
    assert (tmp_path / "out").is_dir()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"guidance-model": "/nonexistent/sd-folder"},
            r"'guidance-model' = '/nonexistent/sd-folder': .* does not exist",
        ),
        ({"data-root": "/nonexistent/data"}, r"'data-root' = '/nonexistent/data': "),
    ],
)
def test_a_missing_path_names_its_key(defaults, tmp_path, overrides, message):
    with pytest.raises(PreflightError, match=message):
        preflight(_cfg(defaults, tmp_path, **overrides))


def test_a_folder_without_the_diffusers_layout_is_refused(defaults, tmp_path):
    folder = tmp_path / "not-a-model"
    (folder / "vae").mkdir(parents=True)
    with pytest.raises(PreflightError, match=r"'guidance-model'.*missing .*unet"):
        preflight(_cfg(defaults, tmp_path, **{"guidance-model": str(folder)}))


def test_the_guidance_model_is_not_checked_when_the_method_does_not_load_it(
    defaults, tmp_path
):
    cfg = _cfg(defaults, tmp_path, method="fedavg", **{"guidance-model": "/nope"})
    preflight(cfg)  # FedAvg never loads a guidance model


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_output_dir_that_cannot_be_written(defaults, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PreflightError, match=r"'output-dir' = .* cannot be written"):
        preflight(_cfg(defaults, tmp_path, **{"output-dir": str(locked / "out")}))


def test_an_output_dir_under_a_file_cannot_be_written(defaults, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PreflightError, match=r"'output-dir' = .* cannot be written"):
        preflight(_cfg(defaults, tmp_path, **{"output-dir": str(blocker / "out")}))


def test_the_launcher_fails_before_starting_flower(tmp_path, capsys, monkeypatch):
    """A missing guidance-model folder: exit code 2 and the message, no SuperLink."""

    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(local_sim.subprocess, "Popen", no_process)
    code = local_sim.main(
        [
            "--run-config",
            f"guidance-model='/nonexistent/sd' output-dir='{tmp_path}' "
            "num-clients=4 partitioner='iid' max-samples-per-client=64",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "'guidance-model' = '/nonexistent/sd'" in err and "does not exist" in err
    assert "a process was started" not in err
