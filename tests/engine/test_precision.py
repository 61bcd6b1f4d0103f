"""Precision choices are honest: ``auto`` picks bf16 only where it is native; asking for bf16 where it is
emulated runs, with a one-line warning that names the slowdown and the fix."""

from __future__ import annotations

import warnings

import pytest
import torch

from semaim.cli import main
from semaim.engine import run as run_module
from semaim.errors import SlowPrecisionWarning
from tests.conftest import TINY_RUN


def test_emulated_bf16_warns_and_auto_falls_back_to_fp32(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(run_module, "native_bf16", lambda device: False)
    with pytest.warns(SlowPrecisionWarning, match="emulated.*use --precision fp32"):
        assert run_module.resolve_precision("bf16", cpu) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for what does not emulate
        assert run_module.resolve_precision("auto", cpu) == "fp32"
        assert run_module.resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(run_module, "native_bf16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_module.resolve_precision("bf16", cpu) == "bf16"
        assert run_module.resolve_precision("auto", cpu) == "bf16"


def test_the_command_line_prints_the_warning_on_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_module, "native_bf16", lambda device: False)
    argv = ["pretrain", "--out", str(tmp_path / "run"), "--limit", "16", "--batch-size", "8", "--epochs", "1"]
    assert main([*argv, "--precision", "bf16", *TINY_RUN]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "warning" in line]
    assert warned and warned[0].startswith("semaim: warning: bf16 on this cpu is emulated")
