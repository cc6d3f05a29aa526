"""CycleGAN: real training, every loss term, identity switch, image pools, checkpoints and prediction."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    TINY_CYCLEGAN_OVERRIDES,
    changed_parameters,
    compose_train,
    initial_state,
    logged,
    on_disk,
    read_metrics,
    write_unaligned,
)
from hydra.errors import InstantiationException

from gan_translate.checkpoint import build_model, model_from_checkpoint
from gan_translate.models import CycleGAN, ImagePool
from gan_translate.train import train
from gan_translate.translator import Translator

LOSS_KEYS = ("loss_G_A", "loss_G_B", "loss_cycle_A", "loss_cycle_B", "loss_idt_A", "loss_idt_B", "loss_D_A", "loss_D_B")
BATCHES = 2


@pytest.fixture(scope="module")
def cyclegan_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cyclegan")
    cfg = compose_train(TINY_CYCLEGAN_OVERRIDES, run_dir)
    before = initial_state(cfg)
    metric = train(cfg)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return cfg, run_dir, before, metric, checkpoint


def test_all_four_networks_trained(cyclegan_run):
    _, _, before, _, checkpoint = cyclegan_run
    for prefix in ("generator_A.", "generator_B.", "discriminator_A.", "discriminator_B."):
        changed, total = changed_parameters(before, checkpoint, prefix)
        assert total > 0 and changed == total, f"{prefix}: {changed}/{total} parameters changed"
    # Two optimizers (both generators, both discriminators): two optimizer steps per batch.
    assert len(checkpoint["optimizer_states"]) == 2
    assert checkpoint["global_step"] == 2 * BATCHES


def test_every_loss_term_logged(cyclegan_run):
    _, run_dir, _, metric, _ = cyclegan_run
    rows = read_metrics(run_dir)
    for key in LOSS_KEYS:
        values = logged(rows, f"train/{key}")
        assert len(values) == BATCHES and all(math.isfinite(v) for v in values), key
    assert all(math.isfinite(v) for v in logged(rows, "val/cycle_l1"))
    assert metric is None  # no FID weights in tests: monitor=auto selects nothing (cycle L1 rewards blur too)


def test_pools_saved_and_restored(cyclegan_run):
    cfg, _, _, _, checkpoint = cyclegan_run
    pools = checkpoint["image_pools"]
    for name in ("fake_A", "fake_B"):
        assert pools[name]["size"] == 50
        assert pools[name]["images"].shape == (8, 3, 32, 32)  # 2 batches of 4 fakes, pool not yet full
    model = build_model(cfg)
    assert len(model.fake_A_pool) == 0
    model.on_load_checkpoint(checkpoint)
    assert len(model.fake_A_pool) == 8
    assert torch.equal(model.fake_B_pool.stored(), pools["fake_B"]["images"])


def test_predict_both_directions(cyclegan_run):
    _, run_dir, _, _, _ = cyclegan_run
    path = run_dir / "checkpoints" / "last.ckpt"
    model = model_from_checkpoint(path, expected=CycleGAN)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        to_b, to_a = model.generator_A(images), model.generator_B(images)
    assert not torch.allclose(to_b, to_a)
    assert torch.allclose(Translator.from_checkpoint(path, device="cpu")(images), to_b, atol=1e-6)
    assert torch.allclose(Translator.from_checkpoint(path, direction="BtoA", device="cpu")(images), to_a, atol=1e-6)
    with pytest.raises(ValueError, match="direction"):
        Translator.from_checkpoint(path, direction="AtoC")


def generator_grads(lambda_identity: float, tmp_path) -> tuple[dict, dict]:
    """Loss terms and G grads of one generator objective, from the same seeded weights and images."""
    cfg = compose_train([*TINY_CYCLEGAN_OVERRIDES, f"loss.lambda_identity={lambda_identity}"], tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    real_a, real_b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    fake_b, fake_a = model.generator_A(real_a), model.generator_B(real_b)
    terms = model.generator_loss_terms(real_a, real_b, fake_b, fake_a)
    sum(terms.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("generator") and p.grad is not None}
    return terms, grads


def test_identity_loss_switch(tmp_path):
    with_idt, grads_on = generator_grads(0.5, tmp_path)
    without, grads_off = generator_grads(0.0, tmp_path)
    assert {"loss_idt_A", "loss_idt_B"} <= set(with_idt) and not {"loss_idt_A", "loss_idt_B"} & set(without)
    for key in ("loss_G_A", "loss_G_B", "loss_cycle_A", "loss_cycle_B"):
        assert torch.allclose(with_idt[key], without[key])  # same weights, same images
    # identity weight = lambda_identity * lambda_cycle = 0.5 * 10
    assert with_idt["loss_idt_A"].item() > 0
    assert set(grads_on) == set(grads_off)
    assert any(not torch.allclose(grads_on[n], grads_off[n]) for n in grads_on)


def test_identity_off_in_training(tmp_path):
    cfg = compose_train([*TINY_CYCLEGAN_OVERRIDES, "loss.lambda_identity=0", "data.train_length=4"], tmp_path)
    train(cfg)
    columns = set(read_metrics(tmp_path)[0])
    assert "train/loss_cycle_A" in columns
    assert not {"train/loss_idt_A", "train/loss_idt_B"} & columns


def test_identity_needs_matching_channels(tmp_path):
    cfg = compose_train([*TINY_CYCLEGAN_OVERRIDES, "data.output_nc=1"], tmp_path)
    with pytest.raises(InstantiationException, match=r"input_nc == output_nc .*lambda_identity=0"):
        build_model(cfg)


def test_pool_size_zero_returns_input():
    pool = ImagePool(0)
    images = torch.rand(3, 3, 4, 4)
    assert torch.equal(pool.query(images), images) and len(pool) == 0
    with pytest.raises(ValueError, match="model.pool_size"):
        ImagePool(-1)


def test_pool_returns_history_half_the_time():
    torch.manual_seed(0)
    pool = ImagePool(5)
    first = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    assert torch.equal(pool.query(first), first)  # filling: returned as they are
    from_history = 0
    queries = 1000
    for i in range(queries):
        image = torch.full((1, 3, 2, 2), 1000.0 + i)  # never seen before
        returned = pool.query(image)
        from_history += not torch.equal(returned, image)
        assert len(pool) == 5
    assert 0.4 < from_history / queries < 0.6
    state = pool.state_dict()
    restored = ImagePool(5)
    restored.load_state_dict(state)
    assert torch.equal(restored.stored(), pool.stored()) and len(restored) == 5


def test_pix2pix_networks_and_no_pool_by_config(tmp_path):
    cfg = compose_train(
        [*TINY_CYCLEGAN_OVERRIDES, "generator=unet_64", "generator.ngf=8", "generator.num_downs=5",
         "discriminator=pixel", "model.pool_size=0", "data.train_length=4"],
        tmp_path,
    )
    train(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["image_pools"]["fake_A"]["images"].numel() == 0
    model = model_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert type(model.generator_A).__name__ == "UnetGenerator"
    assert type(model.discriminator_B).__name__ == "PixelDiscriminator"
    assert all(math.isfinite(v) for v in logged(read_metrics(tmp_path), "train/loss_D_A"))


def test_cyclegan_on_unaligned_folders_without_validation(tmp_path):
    root = write_unaligned(tmp_path / "h2z", count_a=3, count_b=4, size=40)
    run_dir = tmp_path / "run"
    cfg = compose_train(["experiment=shapes_cyclegan", "data=unaligned", *on_disk(TINY_CYCLEGAN_OVERRIDES), f"data.root={root}",
                         "data.batch_size=2"], run_dir)
    with pytest.warns(UserWarning, match=r"no val \(or test\) split found under data.root=.*h2z"):
        assert train(cfg) is None  # nothing to validate on: no val/test folders
    rows = read_metrics(run_dir)
    assert len(logged(rows, "train/loss_cycle_A")) == 2  # max(3, 4) images / batch 2
    assert list((run_dir / "samples").glob("*.png"))  # grids come from a training batch instead
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["image_pools"]["fake_B"]["images"].shape == (4, 3, 32, 32)


def test_resume_continues_counters_and_pools(cyclegan_run, tmp_path):
    cfg, run_dir, _, _, checkpoint = cyclegan_run
    resumed_dir = tmp_path / "resumed"
    overrides = [*TINY_CYCLEGAN_OVERRIDES, "trainer.max_epochs=2", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]
    train(compose_train(overrides, resumed_dir))
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 2 * checkpoint["global_step"]
    # The restored pool (8 fakes) kept filling: 8 + 8 more.
    assert resumed["image_pools"]["fake_A"]["images"].shape[0] == 16
    assert len(logged(read_metrics(resumed_dir), "train/loss_G_A")) == BATCHES  # only the second epoch ran
