"""A command that writes one file never writes it over one of its inputs, nor over an existing file
without --force; a file type it cannot write is refused before the work starts."""

from __future__ import annotations

import pytest

from semaim.cli import main
from tests.conftest import make_image_folder


def test_knn_never_writes_over_its_checkpoint_or_an_existing_result(tmp_path, fmnist, pretrained, capsys):
    common = ["knn", "--data", fmnist, "--workers", "0", "--no-progress", "--ks", "3"]
    kept = pretrained.read_bytes()
    assert main([*common, "--checkpoint", str(pretrained), "--out", str(pretrained)]) == 2
    assert "that is an input of this command" in capsys.readouterr().err
    assert pretrained.read_bytes() == kept
    result = tmp_path / "knn.json"
    result.write_text("{}")
    assert main([*common, "--checkpoint", str(pretrained), "--out", str(result)]) == 2
    assert "exists; give another file, or --force" in capsys.readouterr().err and result.read_text() == "{}"
    assert main([*common, "--checkpoint", str(pretrained), "--out", str(result), "--force"]) == 0
    assert '"top1"' in result.read_text()
    assert main([*common, "--pixels", "--out", str(tmp_path / "scores.txt")]) == 2
    assert "writes a .json file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["visualize", "plot-metrics"])
def test_figures_never_write_over_an_input_and_refuse_a_format_they_cannot_write(tmp_path, command, capsys):
    images = make_image_folder(tmp_path / "images", classes=("a",), per_class=2, nested=False)
    photo, kept = images[0], images[0].read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "lr": 0.1, "images_per_s": 5.0}\n')
    given = [str(photo)] if command == "visualize" else [str(run)]
    over = photo if command == "visualize" else run / "metrics.jsonl"
    assert main([command, *given, "--out", str(over)]) == 2
    assert "that is an input of this command" in capsys.readouterr().err
    assert photo.read_bytes() == kept
    assert main([command, *given, "--out", str(tmp_path / "figure.jpgx")]) == 2
    assert "writes a .png" in capsys.readouterr().err
