"""The model and the commands on every device: ``cpu`` always, ``cuda`` when a GPU is present.

Tolerances, fast path against the explicit-mask oracle (same weights, same order):

- fp32 (TF32 off): max |Δpred| < 1e-4, loss within 1e-5; gradients within atol 1e-5 / rtol 1e-4 on
  the CPU and atol 5e-5 / rtol 1e-3 on CUDA, whose memory-efficient backward sums in another order;
- bf16 autocast: max |Δpred| < 5e-2, |Δloss| < 1e-2 (8 significant bits; measured on the CPU up to
  1.6e-2 / 3e-5, SDPA and matmul attention alike);
- fp16 autocast: max |Δpred| < 1e-2, |Δloss| < 2e-3 (11 significant bits; measured up to 2e-3 / 1.3e-5).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from semaim import SemAIM
from semaim.bench import sdpa_calls
from semaim.cli import main
from semaim.engine.checkpoint import load_checkpoint
from semaim.engine.distributed import resolve_device
from semaim.engine.run import autocast_context
from semaim.errors import ConfigError
from tests.conftest import TINY_RUN, tiny_model
from tests.cuda.conftest import CUDA_MARKS, DEVICES, NO_CUDA, on_cuda

HALF = {"bf16": (torch.bfloat16, 5e-2, 1e-2), "fp16": (torch.float16, 1e-2, 2e-3)}  # dtype, |Δpred|, |Δloss|
GRAD_TOL = {"cpu": (1e-5, 1e-4), "cuda": (5e-5, 1e-3)}  # atol, rtol


@pytest.mark.parametrize("order", ["semantic", "stochastic"])
@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_equals_the_oracle_in_fp32(device, order, exact_fp32):
    model = tiny_model(img_size=(24, 32), patch_size=4, depth=4, decoder_depth=2, order=order).to(device)
    images = torch.randn(3, 3, 24, 32, device=device)
    c = model.compute_centerness(images, generator=torch.Generator(device).manual_seed(0))
    fast, ref = model(images, c), model.forward_reference(images, c)
    assert fast.pred.device.type == device and fast.pred.dtype == torch.float32
    assert (fast.pred - ref.pred).abs().max().item() < 1e-4
    assert torch.equal(fast.order, ref.order)
    torch.testing.assert_close(fast.loss, ref.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "device, precision", [("cpu", "bf16"), on_cuda("cuda", "bf16"), on_cuda("cuda", "fp16")]
)
def test_fast_path_stays_close_to_the_oracle_in_half_precision(device, precision):
    dtype, pred_tol, loss_tol = HALF[precision]
    model = tiny_model(depth=4, decoder_depth=2, order="semantic").to(device)
    images = torch.randn(3, 3, 32, 32, device=device)
    c = model.compute_centerness(images)
    with autocast_context(torch.device(device), precision):
        fast, ref = model(images, c), model.forward_reference(images, c)
    assert fast.pred.dtype == dtype and ref.pred.dtype == dtype  # autocast really computed in it
    assert (fast.pred.float() - ref.pred.float()).abs().max().item() < pred_tol
    assert abs(fast.loss.item() - ref.loss.item()) < loss_tol


@pytest.mark.parametrize("device", DEVICES)
def test_no_prediction_sees_its_own_or_a_later_patch(device, exact_fp32):
    """Perturb the patch at order position k: the predictions at positions <= k must not move."""
    model = (
        tiny_model(img_size=24, patch_size=4, depth=4, decoder_depth=2, order="stochastic").to(device).eval()
    )
    images = torch.randn(2, 3, 24, 24, device=device)
    c = model.compute_centerness(images, generator=torch.Generator(device).manual_seed(0))
    base = model(images, c)
    p, w = model.patch_size, model.grid[1]
    for k in (0, 5, model.num_patches // 2, model.num_patches - 2):
        perturbed = images.clone()
        for b in range(2):
            r, col = divmod(int(base.order[b, k]), w)
            perturbed[b, :, r * p : (r + 1) * p, col * p : (col + 1) * p] += 3 * torch.randn(
                3, p, p, device=device
            )
        index = base.order[..., None].expand_as(base.pred)
        change = (model(perturbed, c).pred.gather(1, index) - base.pred.gather(1, index)).abs().amax(-1)
        assert change[:, : k + 1].max().item() < 1e-5, f"position <= {k} saw the perturbed patch"
        assert change[:, k + 1 :].max().item() > 1e-3, f"no later position used the patch at position {k}"


@pytest.mark.parametrize("device", DEVICES)
def test_fast_and_oracle_gradients_agree(device, exact_fp32):
    model = tiny_model(depth=4, decoder_depth=2, order="semantic").to(device)
    images = torch.randn(2, 3, 32, 32, device=device)
    c = model.compute_centerness(images)
    grads = []
    for forward in (model, lambda x, c: model.forward_reference(x, c)):
        model.zero_grad()
        forward(images, c).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    atol, rtol = GRAD_TOL[device]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=atol, rtol=rtol, msg=name)


VIT_B16 = dict(img_size=224, patch_size=16, embed_dim=768, depth=1, num_heads=12, decoder_depth=1)
"""ViT-B/16's attention shapes (197 tokens, 12 heads of 64); one block per stream keeps it cheap."""


@pytest.mark.parametrize(
    "device, precision",
    [("cpu", "fp32"), on_cuda("cuda", "bf16"), on_cuda("cuda", "fp16"), on_cuda("cuda", "fp32")],
)
def test_fast_path_attention_runs_fused_kernels_in_both_streams(device, precision):
    """Every SDPA call of a fast step (order pass, content stream, query stream; forward and backward)
    runs a fused kernel: on CUDA flash or memory-efficient, never the math fallback that materialises
    the B×H×N×N scores; on the CPU the CPU flash kernel."""
    torch.manual_seed(0)
    model = SemAIM(**VIT_B16).to(device)
    images = torch.randn(2, 3, 224, 224, device=device)

    def step() -> None:
        with autocast_context(torch.device(device), precision):
            loss = model(images).loss
        loss.backward()

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        step()  # a call that only the math kernel could run would raise here
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()  # and with the default choice, nothing falls back to math either
    calls = sdpa_calls(prof.key_averages())
    fused = {"flash", "efficient", "cudnn"} if device == "cuda" else {"cpu-flash"}
    assert sum(calls["forward"].values()) == 3  # order pass + encoder block + decoder block
    assert set(calls["forward"]) <= fused, calls
    assert sum(calls["backward"].values()) == 2 and set(calls["backward"]) <= fused, calls


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_fp16_grad_scaler_skips_overflowing_steps_then_trains():
    """From a loss scale that overflows fp16 gradients, the scaler skips steps (weights untouched) and
    lowers the scale until steps go through; the weights then change and stay finite."""
    model = tiny_model(order="semantic").cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)
    images = torch.randn(4, 3, 32, 32, device="cuda")
    before = [p.detach().clone() for p in model.parameters()]
    skipped = 0
    for _ in range(40):
        with autocast_context(torch.device("cuda"), "fp16"):
            loss = model(images).loss
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if scaler.get_scale() < scale:
            skipped += 1
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        else:
            break
    assert skipped >= 1 and scaler.get_scale() < 2.0**40
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_pretrain_in_fp16_on_cuda_keeps_its_scaler_in_the_checkpoint(tmp_path, fmnist, capsys):
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--data",
        fmnist,
        "--out",
        str(out),
        "--limit",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--device",
        "cuda",
        "--precision",
        "fp16",
        *TINY_RUN,
    ]
    assert main(args) == 0
    assert "fp16 on cuda:0" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(
        torch.isfinite(torch.tensor(r["loss"])) for r in records
    )
    ckpt = load_checkpoint(out / "checkpoint-last.pt")
    assert 0 < ckpt["scaler"]["scale"] <= 2.0**16  # the scaler's state, saved to resume it


MOVES = [("cpu", "cpu"), on_cuda("cuda", "cpu"), on_cuda("cpu", "cuda")]


@pytest.mark.parametrize("first, then", MOVES)
def test_a_checkpoint_resumes_on_another_device(tmp_path, fmnist, first, then):
    out = tmp_path / "run"
    common = [
        "pretrain",
        "--data",
        fmnist,
        "--out",
        str(out),
        "--limit",
        "16",
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        *TINY_RUN,
    ]
    assert main([*common, "--epochs", "1", "--device", first]) == 0
    saved = load_checkpoint(out / "checkpoint-last.pt")
    assert main([*common, "--epochs", "2", "--device", then, "--resume"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    ckpt = load_checkpoint(out / "checkpoint-last.pt")
    assert ckpt["step"] == 4
    # The optimizer state travelled with the weights: AdamW counts 4 steps, not 2 since a fresh start.
    assert {float(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {4.0}
    assert any(not torch.equal(ckpt["model"][k], saved["model"][k]) for k in saved["model"])
    # ... and the checkpoint written on one device is evaluated on the other.
    knn = [
        "knn",
        "--checkpoint",
        str(out / "checkpoint-last.pt"),
        "--data",
        fmnist,
        "--device",
        first,
        "--workers",
        "0",
        "--ks",
        "3",
        "--no-progress",
        "--out",
        str(tmp_path / "knn.json"),
    ]
    assert main(knn) == 0 and 0 <= json.loads((tmp_path / "knn.json").read_text())["top1"]["3"] <= 100


@pytest.mark.parametrize("device", DEVICES)
def test_knn_and_finetune_run_on_the_device(tmp_path, fmnist, device, capsys):
    knn = tmp_path / "knn.json"
    args = [
        "knn",
        "--random",
        "--data",
        fmnist,
        "--device",
        device,
        "--workers",
        "0",
        "--batch-size",
        "16",
        "--ks",
        "3",
        "--no-progress",
        "--out",
        str(knn),
    ]
    assert main(args) == 0
    assert 0 <= json.loads(knn.read_text())["top1"]["3"] <= 100
    ft = tmp_path / "ft"
    args = [
        "finetune",
        "--random",
        "--data",
        fmnist,
        "--device",
        device,
        "--out",
        str(ft),
        "--no-progress",
        "--set",
        "budget_steps=0",
        "--limit",
        "16",
        "--set",
        "epochs=1",
        "--set",
        "batch_size=8",
        "--set",
        "workers=0",
        "--set",
        "val_size=4",
    ]
    assert main(args) == 0
    assert f"on {device}" in capsys.readouterr().err  # "... bf16 on cuda:0": it trained there
    assert len((ft / "metrics.jsonl").read_text().splitlines()) == 2
    assert 0 <= json.loads((ft / "result.json").read_text())["test_top1"] <= 100


NEEDS_DEVICE = {
    "pretrain": ["pretrain", "--out", "{tmp}/run", *TINY_RUN],
    "finetune": ["finetune", "--random", "--out", "{tmp}/run", "--no-progress"],
    "knn": ["knn", "--random", "--no-progress", "--out", "{tmp}/run/knn.json"],
    "linprobe": ["linprobe", "--random", "--no-progress", "--out", "{tmp}/run/lp.json"],
    "bench": ["bench", "--model", "tiny-32", "--no-memory", "--out", "{tmp}/run/bench.json"],
}


@pytest.mark.parametrize("command", list(NEEDS_DEVICE))
def test_cuda_asked_for_without_a_gpu_is_exit_2(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [a.format(tmp=tmp_path) for a in NEEDS_DEVICE[command]]
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == f"semaim {command}: error: device: 'cuda' asked for, but no CUDA device is available\n"
    assert not (tmp_path / "run").exists()  # stopped before writing anything


def test_a_gpu_that_is_not_there_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(
        ConfigError, match=r"'cuda:2' asked for, but the CUDA devices here are cuda:0 to cuda:1"
    ):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")


@pytest.mark.parametrize("command", ["pretrain", "bench"])
def test_fp16_on_the_cpu_is_a_clear_error(tmp_path, capsys, command):
    args = [a.format(tmp=tmp_path) for a in NEEDS_DEVICE[command]]
    assert main([*args, "--device", "cpu", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "fp16 needs a CUDA device" in err and "use bf16 (or fp32) on the CPU" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_cuda_params_are_marked_and_skipped_visibly():
    """Where there is no GPU, every CUDA case is skipped with a reason pytest prints (``-rs``)."""
    mark, skip = CUDA_MARKS
    assert mark.name == "cuda" and skip.name == "skipif"
    assert skip.args == (not torch.cuda.is_available(),) and skip.kwargs["reason"] == NO_CUDA
