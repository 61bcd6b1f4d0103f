"""The device fixtures leave torch's global backend switches exactly as they found them."""

from __future__ import annotations

import pytest

from tests.conftest import _fp32_switches, backend_fp32_settings, exact_fp32_math


@pytest.fixture
def tf32_allowed():
    """Every fp32 switch set to allow TF32 (not the default), then put back."""
    switches = _fp32_switches()
    saved = [getattr(owner, name) for owner, name in switches]
    allowed = "tf32" if switches[0][1] == "fp32_precision" else True
    for owner, name in switches:
        setattr(owner, name, allowed)
    yield
    for (owner, name), value in zip(switches, saved, strict=True):
        setattr(owner, name, value)


def test_exact_fp32_turns_tf32_off_and_restores_every_switch(tf32_allowed):
    before = backend_fp32_settings()
    with exact_fp32_math():
        inside = backend_fp32_settings()
        assert all(value in ("ieee", False) for value in inside.values()), inside
    assert backend_fp32_settings() == before


def test_exact_fp32_restores_after_an_error(tf32_allowed):
    before = backend_fp32_settings()
    with pytest.raises(ValueError), exact_fp32_math():
        raise ValueError("a failing test body")
    assert backend_fp32_settings() == before
