"""Mixed precision, gradient clipping, channels_last and torch.compile through real Trainer fits."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from pytorch_lightning.plugins.precision import MixedPrecision
from tiny_runs import tiny_config
from torch.optim.optimizer import register_optimizer_step_post_hook

from gan_translate.checkpoint import build_model
from gan_translate.losses import gradient_penalty
from gan_translate.networks import NLayerDiscriminator

CUDA = torch.cuda.is_available()


def fp16_on_cpu(init_scale: float = 2.0**16) -> dict:
    """Trainer arguments for real 16-mixed on the CPU: fp16 autocast plus a CPU GradScaler (Lightning maps
    precision=16-mixed to bf16 on CPU, so the plugin is given explicitly)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return {"precision": None, "plugins": [MixedPrecision("16-mixed", "cpu", scaler=scaler)]}


def fit(cfg, model=None, **trainer_kwargs):
    """Fit a tiny run; returns the trained model, its starting weights and its callback metrics."""
    model = model or build_model(cfg)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          **trainer_kwargs)
    trainer.fit(model, datamodule=instantiate(cfg.data))
    return model, initial, {k: float(v) for k, v in trainer.callback_metrics.items()}


def record_discriminator_outputs(model) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    for name, network in model.networks().items():
        if name.startswith("discriminator"):
            network.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    return dtypes


def assert_trained(model, initial, metrics):
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    for prefix in ("generator", "discriminator"):
        assert any(not torch.equal(p, initial[n]) for n, p in model.named_parameters() if n.startswith(prefix))
        assert all(torch.isfinite(p).all() for n, p in model.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("method", ["pix2pix", "cyclegan"])
def test_bf16_mixed_trains_under_autocast(tmp_path, method):
    cfg = tiny_config(method, tmp_path, "trainer.precision=bf16-mixed", "trainer.accelerator=cpu", train_length=4)
    model = build_model(cfg)
    dtypes = record_discriminator_outputs(model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=instantiate(cfg.data))
    assert torch.bfloat16 in dtypes  # the precision plugin's autocast covered the manual steps
    assert_trained(model, initial, {k: float(v) for k, v in trainer.callback_metrics.items()})


def test_compile_mode_is_checked(tmp_path):
    with pytest.raises(InstantiationException, match=r"model.compile_mode must be one of \('default', 'reduce-overhead'"):
        build_model(tiny_config("pix2pix", tmp_path, "model.compile_mode=graphs"))


def test_gradient_penalty_is_fp32_under_autocast():
    torch.manual_seed(0)
    discriminator = NLayerDiscriminator(input_nc=3, ndf=8, n_layers=2, norm="none")
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    fake = (torch.rand(2, 3, 32, 32) * 2 - 1).bfloat16()  # a generator output under bf16 autocast
    torch.manual_seed(1)
    reference = gradient_penalty(discriminator, real, fake.float())
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = gradient_penalty(discriminator, real, fake)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    torch.testing.assert_close(mixed, reference)
    mixed.backward()  # double backward through D works
    grads = [p.grad for p in discriminator.parameters() if p.grad is not None]  # the last bias has none
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("method", ["pix2pix", "cyclegan"])
def test_wgangp_under_bf16_mixed_stays_finite(tmp_path, method):
    cfg = tiny_config(method, tmp_path, "trainer.precision=bf16-mixed", "trainer.accelerator=cpu",
                      "loss.gan_mode=wgangp", train_length=4)
    model, initial, metrics = fit(cfg)
    assert_trained(model, initial, metrics)
    assert ("train/loss_D_GP" in metrics) if method == "pix2pix" else ("train/loss_D_A" in metrics)


@pytest.mark.parametrize("precision", ["32-true", "16-mixed-cpu", pytest.param("16-mixed", marks=pytest.mark.skipif(
    not CUDA, reason="16-mixed on the GPU needs one"))])
def test_gradient_clipping_applies_to_unscaled_gradients(tmp_path, precision):
    """Every optimizer step sees gradients of norm <= gradient_clip_val (under 16-mixed: after unscaling)."""
    clip = 0.05
    overrides = [f"model.gradient_clip_val={clip}", "optim.fused=false"]  # fused unscales inside its step
    if precision == "16-mixed":
        overrides += ["trainer.precision=16-mixed", "trainer.accelerator=gpu"]
    else:
        overrides += ["trainer.accelerator=cpu"]
    cfg = tiny_config("pix2pix", tmp_path, *overrides, train_length=4)
    norms: list[float] = []

    def record(optimizer, args, kwargs):  # after the step: grads are what the update used
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))))

    handle = register_optimizer_step_post_hook(record)
    try:
        # A small initial scale: the default one overflows (and skips) the first steps of such a short run.
        model, initial, metrics = fit(cfg, **(fp16_on_cpu(2.0**8) if precision == "16-mixed-cpu" else {}))
    finally:
        handle.remove()
    assert norms and max(norms) <= clip * 1.001, norms
    assert min(norms) > clip * 0.1  # real gradients, not zeros (clipped ones sit at the limit)
    assert_trained(model, initial, metrics)


@pytest.mark.parametrize("method", ["pix2pix", "cyclegan"])
def test_fused_adam_under_16_mixed_grad_scaler(tmp_path, method):
    """The default fused Adam takes the GradScaler's scale and inf check into its own step."""
    cfg = tiny_config(method, tmp_path, "trainer.accelerator=cpu", train_length=16)
    assert cfg.optim.fused is True
    model = build_model(cfg)
    dtypes = record_discriminator_outputs(model)
    trainer_kwargs = fp16_on_cpu()
    scaler = trainer_kwargs["plugins"][0].scaler
    model, initial, metrics = fit(cfg, model, **trainer_kwargs)
    assert torch.float16 in dtypes
    assert all(opt.optimizer.param_groups[0]["fused"] for opt in model.optimizers())
    # The first steps overflow at the default scale: the fused step reported the infs back to the
    # scaler (which lowered its scale) and skipped those updates.
    assert scaler.get_scale() < 2.0**16
    assert_trained(model, initial, metrics)


def test_clipping_with_fused_optimizer_under_16_mixed_fails_before_training(tmp_path):
    cfg = tiny_config("pix2pix", tmp_path, "trainer.accelerator=cpu", "model.gradient_clip_val=0.1", train_length=4)
    model = build_model(cfg)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          **fp16_on_cpu())
    with pytest.raises(ValueError, match=r"model.gradient_clip_val=0.1 .*optim.fused=false"):
        trainer.fit(model, datamodule=instantiate(cfg.data))
    assert all(torch.equal(p, initial[n]) for n, p in model.named_parameters())


def test_channels_last_fit(tmp_path):
    cfg = tiny_config("pix2pix", tmp_path, "model.channels_last=true", train_length=4)
    model = build_model(cfg)
    layouts: list[bool] = []
    first_conv = next(m for m in model.discriminator.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(
        lambda module, args, out: layouts.append(module.weight.is_contiguous(memory_format=torch.channels_last)
                                                 and args[0].is_contiguous(memory_format=torch.channels_last)))
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=instantiate(cfg.data))
    assert layouts and all(layouts)
    assert_trained(model, initial, {k: float(v) for k, v in trainer.callback_metrics.items()})


@pytest.mark.slow
@pytest.mark.parametrize(("gan_mode", "mode"), [("vanilla", "default"), ("wgangp", "default"),
                                                ("vanilla", "reduce-overhead")])
def test_compile_fit(tmp_path, gan_mode, mode):
    """torch.compile (inductor; on CPU it builds C++ with gcc). Under WGAN-GP D stays eager (double backward).
    reduce-overhead (CUDA graphs, trainer=gpu_fast) compiles as default off CUDA, so the switch trains here too."""
    cfg = tiny_config("pix2pix", tmp_path, "model.compile=true", f"model.compile_mode={mode}",
                      f"loss.gan_mode={gan_mode}", train_length=4)
    model, initial, metrics = fit(cfg)
    assert model.generator._compiled_call_impl is not None
    assert (model.discriminator._compiled_call_impl is None) == (gan_mode == "wgangp")
    assert_trained(model, initial, metrics)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("method", ["pix2pix", "cyclegan"])
def test_cuda_graphs_replay_every_training_graph(tmp_path, method):
    """trainer=gpu_fast's point on a GPU: every compiled training graph replays as a CUDA graph. torch falls back
    to launching the compiled kernels one by one when it cannot (some input mutations, CPU tensors), silently
    unless TORCH_LOGS=cudagraphs; the model then warns, and this test fails."""
    from torch._dynamo.utils import counters

    counters.clear()
    cfg = tiny_config(method, tmp_path, "trainer.accelerator=gpu", "model.compile=true",
                      "model.compile_mode=reduce-overhead", "model.nonfinite_check=deferred", train_length=6)
    model, initial, metrics = fit(cfg)
    assert model._cuda_graphs_checked
    assert counters["inductor"]["cudagraph_skips"] == 0
    assert_trained(model, initial, metrics)


def test_cuda_graph_fallback_is_reported(tmp_path):
    """The warning a GPU run gives when torch ran graphs without CUDA graphs (torch's own counter, set here)."""
    from torch._dynamo.utils import counters

    model = build_model(tiny_config("pix2pix", tmp_path, "model.compile_mode=reduce-overhead"))
    counters.clear()
    assert model.warn_on_cuda_graph_skips() == 0
    counters["inductor"]["cudagraph_skips"] += 2
    try:
        with pytest.warns(UserWarning, match=r"reduce-overhead: torch ran 2 compiled graph\(s\) without CUDA graphs"):
            assert model.warn_on_cuda_graph_skips() == 2
    finally:
        counters.clear()
