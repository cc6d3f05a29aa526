"""pix2pixHD: networks, loss terms, label/instance inputs, the two-stage run and the feature-encoder clusters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_CPU_QUIET, compose_train, read_metrics, write_aligned
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from gan_translate.checkpoint import CheckpointError, build_model, load_checkpoint, model_from_checkpoint
from gan_translate.data.datasets import DataError
from gan_translate.data.labels import LabelFoldersDataset, SyntheticLabelFacades
from gan_translate.data.transforms import build_transform
from gan_translate.encode_features import encode_features, instance_features, kmeans
from gan_translate.losses import FeatureMatchingLoss, GANLoss, MultiscaleGANLoss, VGGLoss
from gan_translate.models.pix2pixhd import Pix2PixHD
from gan_translate.networks.generators import ResnetBlock
from gan_translate.networks.pix2pixhd import (
    FeatureEncoder,
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    Pix2PixHDGenerator,
    boundary_map,
    encode_label_ids,
    instance_average,
    label_ids,
)
from gan_translate.predict import predict
from gan_translate.sizes import SizeRule
from gan_translate.train import CONF_DIR, train
from gan_translate.translator import Translator

TINY_HD = [
    "experiment=demo_pix2pixhd",
    *TINY_CPU_QUIET,
    "generator.n_downsample_global=2",
    "generator.n_blocks_global=1",
    "discriminator.n_layers=2",
]
LOCAL = ["generator=pix2pixhd_local", "generator.n_blocks_local=1", "data.size=64"]


class TinyFeatures(nn.Module):
    """A small random stand-in for VGG19 in the perceptual loss: 5 feature maps at halving resolutions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2 if i else 1))
            for i in range(5)
        )

    def forward(self, x):
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


# ----- networks -----
@pytest.mark.parametrize("size", [(16, 16), (32, 48), (48, 16)])
def test_global_generator_shapes(size):
    net = GlobalGenerator(5, 3, ngf=4, n_downsample_global=2, n_blocks_global=1)
    assert net.size_divisor == 4
    out = net(torch.randn(2, 5, *size))
    assert out.shape == (2, 3, *size) and out.abs().max() <= 1


@pytest.mark.parametrize(("enhancers", "size"), [(1, (16, 32)), (1, (48, 48)), (2, (32, 64))])
def test_local_enhancer_shapes_and_global_weights(enhancers, size):
    net = LocalEnhancer(5, 3, ngf=8, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=enhancers,
                        n_blocks_local=1)
    assert net.size_divisor == 2 ** (2 + enhancers)
    assert net(torch.randn(1, 5, *size)).shape == (1, 3, *size)
    stage1 = GlobalGenerator(5, 3, ngf=8, n_downsample_global=2, n_blocks_global=1)
    net.load_global_generator(stage1.state_dict())
    for (name, own), theirs in zip(net.global_features.state_dict().items(), stage1.features.state_dict().values(),
                                   strict=True):
        assert torch.equal(own, theirs), name
    with pytest.raises(ValueError, match="generator.ngf"):
        net.load_global_generator(GlobalGenerator(5, 3, ngf=16, n_downsample_global=2, n_blocks_global=1).state_dict())


@pytest.mark.parametrize(("num_d", "n_layers", "size"), [(2, 3, (64, 64)), (3, 2, (64, 96)), (1, 3, (32, 32))])
def test_multiscale_discriminator(num_d, n_layers, size):
    net = MultiscaleDiscriminator(4, ndf=4, n_layers=n_layers, num_D=num_d)
    outputs = net(torch.randn(2, 4, *size))
    assert len(outputs) == num_d
    for scale, features in enumerate(outputs):
        assert len(features) == n_layers + 2  # n_layers + 1 feature blocks, then the score map
        assert features[-1].size(1) == 1
        assert features[0].shape[-1] == -(-size[1] // 2**scale) // 2  # each scale sees a 2x smaller input
    # min_size is the real limit: one pixel less breaks the coarsest PatchGAN.
    net(torch.randn(1, 4, net.min_size, net.min_size))
    with pytest.raises((RuntimeError, ValueError)):  # conv: output too small; instance norm: a single pixel
        net(torch.randn(1, 4, net.min_size - 1, net.min_size - 1))


def test_yaml_defaults_are_the_papers():
    def build(group, name, **overrides):
        return instantiate(OmegaConf.merge(OmegaConf.load(Path(CONF_DIR) / group / f"{name}.yaml"), overrides))

    global_g = build("generator", "pix2pixhd_global", ngf=4)(input_nc=36, output_nc=3)
    local_g = build("generator", "pix2pixhd_local", ngf=4)(input_nc=36, output_nc=3)
    assert (global_g.size_divisor, local_g.size_divisor) == (16, 32)
    assert (global_g.min_size, local_g.min_size) == (32, 64)
    with pytest.raises((RuntimeError, ValueError)):  # below min_size: a 1 x 1 bottleneck (reflection pad, norm)
        global_g(torch.randn(1, 36, 16, 16))
    assert sum(isinstance(m, ResnetBlock) for m in global_g.modules()) == 9
    assert sum(isinstance(m, ResnetBlock) for m in local_g.modules()) == 9 + 3
    assert local_g(torch.randn(1, 36, 64, 96)).shape == (1, 3, 64, 96)
    discriminator = build("discriminator", "multiscale", ndf=4)(input_nc=39)
    assert (discriminator.num_D, discriminator.n_layers, discriminator.min_size) == (2, 3, 47)
    assert build("discriminator", "multiscale", ndf=4, num_D=3)(input_nc=39).min_size == 93


@pytest.mark.parametrize(
    "network",
    [
        GlobalGenerator(3, 3, ngf=2, n_downsample_global=2, n_blocks_global=1),
        LocalEnhancer(3, 3, ngf=4, n_downsample_global=1, n_blocks_global=1, n_blocks_local=1),
        FeatureEncoder(3, 3, ngf=2, n_downsampling=2),
        *(MultiscaleDiscriminator(3, ndf=2, n_layers=n, num_D=k) for n in (1, 3) for k in (1, 2)),
    ],
    ids=lambda net: f"{type(net).__name__}{getattr(net, 'size_args', '')}",
)
def test_declared_sizes_are_exact(network):
    """From 1 px up, a batch of one in train mode runs (and a generator keeps the size) exactly where
    size_divisor/min_size say so: what the pre-training size check and predict rely on."""
    network.train()
    rule = SizeRule.of(network)
    for side in range(1, rule.smallest + 2 * rule.divisor + 3):
        try:
            with torch.no_grad():
                out = network(torch.randn(1, 3, side, side), torch.zeros(1, 1, side, side)) if isinstance(
                    network, FeatureEncoder) else network(torch.randn(1, 3, side, side))
            runs = all(s[-1].numel() > 0 for s in out) if isinstance(out, list) else out.shape[-2:] == (side, side)
        except (RuntimeError, ValueError):
            runs = False
        assert runs == rule.accepts(side), side


# ----- loss terms -----
def test_feature_matching_weights_and_zero_for_identical():
    fm = FeatureMatchingLoss()
    # 2 scales of 3 feature blocks + scores: 2 * (1/2) * 3 * (4/3) * |1 - 0| = 4; scores are not matched.
    fake = [[torch.ones(1, 2, 4, 4)] * 3 + [torch.full((1, 1, 2, 2), 5.0)] for _ in range(2)]
    real = [[torch.zeros(1, 2, 4, 4)] * 3 + [torch.zeros(1, 1, 2, 2)] for _ in range(2)]
    assert fm(fake, real).item() == pytest.approx(4.0)

    net = MultiscaleDiscriminator(4, ndf=4, n_layers=2, num_D=2)
    x, y = torch.randn(1, 4, 32, 32), torch.randn(1, 4, 32, 32)
    assert fm(net(x), net(x)).item() == 0
    assert fm(net(x), net(y)).item() > 0


def test_multiscale_gan_loss_uses_each_scales_scores():
    scales = [[torch.zeros(1, 2, 4, 4), torch.full((1, 1, 3, 3), 0.5)], [torch.zeros(1, 2, 2, 2), torch.ones(1, 1, 2, 2)]]
    gan = GANLoss("lsgan")
    per_scale = [gan.generator_loss(s[-1]) for s in scales]  # (0.5 - 1)^2 and 0
    assert MultiscaleGANLoss(gan, "sum").generator_loss(scales).item() == pytest.approx(float(sum(per_scale)))
    assert MultiscaleGANLoss(gan, "mean").generator_loss(scales).item() == pytest.approx(float(sum(per_scale)) / 2)


def test_perceptual_loss_zero_for_identical_and_frozen():
    loss = VGGLoss(TinyFeatures())
    loss.train()
    assert not loss.features.training
    assert not any(p.requires_grad for p in loss.features.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    fake = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    assert loss(x, x).item() == 0
    value = loss(fake, x)
    assert value.item() > 0
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


# ----- inputs -----
def test_one_hot_and_edge_inputs_on_a_hand_made_map():
    ids = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]).view(1, 1, 4, 4)
    instances = torch.tensor([[5, 5, 7, 7], [5, 5, 7, 7], [8, 8, 9, 9], [8, 8, 9, 9]]).view(1, 1, 4, 4).float()
    wrapper = Pix2PixHDGenerator(nn.Identity(), label_nc=3, instance=True)
    condition, regions, decoded = wrapper.condition(torch.cat([encode_label_ids(ids), instances], 1))
    assert condition.shape == (1, 4, 4, 4)
    for class_id in range(3):
        assert torch.equal(condition[0, class_id], (ids[0, 0] == class_id).float())
    # Every pixel next to another instance is an edge; here that is every pixel but the four corners.
    edges = torch.ones(4, 4)
    edges[0, 0] = edges[0, 3] = edges[3, 0] = edges[3, 3] = 0
    assert torch.equal(condition[0, 3], edges)
    assert torch.equal(decoded, ids) and torch.equal(regions, instances)
    # Without an instance channel the edges are the label map's own boundaries (5|7 and 8|9 are not separated).
    label_edges = boundary_map(ids)[0, 0]
    assert torch.equal(wrapper.condition(encode_label_ids(ids))[0][0, 3], label_edges)
    assert label_edges[3].sum() == 0 and label_edges[0, 1] == 1
    with pytest.raises(ValueError, match="label_nc=3"):
        wrapper.condition(encode_label_ids(ids + 1))
    averaged = instance_average(torch.arange(16.0).view(1, 1, 4, 4), instances)
    assert averaged[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4 and averaged[0, 0, 3, 3] == (10 + 11 + 14 + 15) / 4


def write_label_folders(root: Path, split: str = "train", count: int = 2, size: int = 8, instances: bool = True):
    rng = np.random.default_rng(0)
    for sub in ("labels", "images") + (("instances",) if instances else ()):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        ids = np.repeat(np.repeat(rng.integers(0, 4, (size // 4, size // 4), dtype=np.uint8), 4, 0), 4, 1)
        Image.fromarray(ids, mode="L").save(root / split / "labels" / f"x{i}_label.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / "images" / f"x{i}.jpg")
        if instances:
            Image.fromarray(ids.astype(np.uint16) * 1000 + 3).save(root / split / "instances" / f"x{i}.png")
    return root


def test_label_folders_keep_ids_under_resizing(tmp_path):
    root = write_label_folders(tmp_path / "data")
    dataset = LabelFoldersDataset(root, "train", label_nc=4, instance=True, label_suffix="_label",
                                  transform=build_transform("resize_and_crop", 12, 12, train=False))
    item = dataset[0]
    ids = np.asarray(Image.open(root / "train" / "labels" / "x0_label.png"))
    expected = torch.from_numpy(np.asarray(Image.fromarray(ids).resize((12, 12), Image.NEAREST)).astype(np.int64))
    assert item["A"].shape == (1, 12, 12) and item["B"].shape == (3, 12, 12)
    assert torch.equal(torch.round((item["A"][0] + 1) * 127.5).long(), expected)  # NEAREST: no blended ids
    assert torch.equal(item["inst"][0].long(), expected * 1000 + 3)
    assert item["B"].min() >= -1 and item["B"].max() <= 1

    no_instances = write_label_folders(tmp_path / "plain", instances=False)
    assert "inst" not in LabelFoldersDataset(no_instances, "train", label_nc=4, label_suffix="_label")[0]
    with pytest.raises(DataError, match="data.instance=false"):
        LabelFoldersDataset(no_instances, "train", label_nc=4, instance=True, label_suffix="_label")
    with pytest.raises(DataError, match="not in every folder"):
        LabelFoldersDataset(root, "train", label_nc=4)  # without the suffix, names do not match
    with pytest.raises(DataError, match="data.label_nc=3"):
        LabelFoldersDataset(root, "train", label_nc=3, label_suffix="_label")[0]


def test_evaluate_feeds_the_splits_instance_maps(tmp_path):
    """evaluate on a split with instance maps gives the generator those maps, as validation does: here every
    4 x 4 block is an instance of its own, so same-class neighbours are separated only by the instance map."""
    from gan_translate.evaluate import evaluate

    root = write_label_folders(tmp_path / "data", "train", size=32)
    write_label_folders(root, "val", size=32)
    blocks = np.arange(64, dtype=np.uint16).reshape(8, 8).repeat(4, 0).repeat(4, 1)
    for path in (root / "val" / "instances").iterdir():
        Image.fromarray(blocks + 100).save(path)
    run = tmp_path / "run"
    data = ["data=label_folders", f"data.root={root}", "data.label_nc=4", "data.instance=true",
            "data.label_suffix=_label", "data.preprocess=resize_and_crop", "data.load_size=32", "data.crop_size=32",
            "data.num_workers=0"]
    train(compose_train(["experiment=demo_pix2pixhd", *data, *TINY_HD[-3:], "generator.ngf=8", "discriminator.ndf=8",
                         "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0",
                         "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", "logger=csv", "metrics=none"], run))
    ckpt = run / "checkpoints" / "last.ckpt"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt_path={ckpt}", "split=val", "device=cpu",
                                             "metrics.collection.fid=false", "metrics.collection.lpips=false",
                                             f"output={tmp_path / 'report.json'}"])
    got = evaluate(cfg)["metrics"]["l1"]

    model = model_from_checkpoint(ckpt, expected=Pix2PixHD)
    generator = model.generator_for().eval()
    dataset = instantiate(model.run_config["data"]).make_dataset("val", train=False)
    l1 = {}
    with torch.no_grad():
        for name, with_instances in (("instances", True), ("labels only", False)):
            errors = [(generator(torch.cat([item["A"], item["inst"]])[None] if with_instances else item["A"][None])
                       .clamp(-1, 1) - item["B"]).abs().mean() / 2 for item in dataset]
            l1[name] = float(torch.stack(errors).mean())
    assert got == pytest.approx(l1["instances"], rel=1e-4) and got != pytest.approx(l1["labels only"], rel=1e-4)

    # predict gets them from a folder, matched by name after the suffixes; without them, other outputs.
    def run(output: Path, *extra: str) -> list[Path]:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return predict(compose("predict", overrides=[f"ckpt_path={ckpt}", f"input={root / 'val' / 'labels'}",
                                                         f"output_dir={output}", "device=cpu", *extra]))

    written = run(tmp_path / "with", f"instances={root / 'val' / 'instances'}", "label_suffix=_label")
    without = run(tmp_path / "without")
    with torch.no_grad():
        for path, plain, item in zip(written, without, dataset, strict=True):
            expected = (generator(torch.cat([item["A"], item["inst"]])[None])[0].clamp(-1, 1) + 1) * 127.5
            saved = torch.from_numpy(np.asarray(Image.open(path))).permute(2, 0, 1).float()
            assert (saved - expected).abs().max() <= 0.55
            assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(path)))
    with pytest.raises(ValueError, match=r"no instance map for x0_label\.png, x1_label\.png.*label_suffix=''"):
        run(tmp_path / "unmatched", f"instances={root / 'val' / 'instances'}")


# ----- training runs -----
class GlobalProbe(pl.Callback):
    """G1's weights at fit start and at the end of every epoch; the local enhancer's at the end of epoch 0."""

    def __init__(self) -> None:
        self.g1: list[dict[str, torch.Tensor]] = []
        self.enhancer: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def _copy(module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_start(self, trainer, pl_module) -> None:
        self.g1.append(self._copy(pl_module.generator.network.global_features))
        self.enhancer.append(self._copy(pl_module.generator.network.enhancers))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.g1.append(self._copy(pl_module.generator.network.global_features))
        self.enhancer.append(self._copy(pl_module.generator.network.enhancers))


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hd_stage1")
    train(compose_train(TINY_HD, out))
    return out / "checkpoints" / "last.ckpt"


def test_two_stage_training_and_prediction(stage1, tmp_path):
    stage1_g = {k[len("generator.network.features."):]: v for k, v in load_checkpoint(stage1)["state_dict"].items()
                if k.startswith("generator.network.features.")}
    probe = GlobalProbe()
    run = tmp_path / "stage2"
    cfg = compose_train([*TINY_HD, *LOCAL, f"model.global_ckpt={stage1}", "model.fix_global_epochs=1",
                         "trainer.max_epochs=2"], run)
    train(cfg, extra_callbacks=[probe])
    start, after_frozen, after_joint = probe.g1
    assert same(start, stage1_g)  # G1 starts from stage 1
    assert same(after_frozen, start)  # ... and does not move while frozen
    assert not same(after_joint, after_frozen)  # then trains jointly
    assert not same(probe.enhancer[1], probe.enhancer[0])  # the enhancer trained in the frozen epoch
    rows = read_metrics(run)
    assert any(row.get("train/loss_G_feat") for row in rows)

    # Predict needs the checkpoint only: label PNGs in, photos out, equal to the model's own output.
    ckpt = run / "checkpoints" / "last.ckpt"
    item = SyntheticLabelFacades(1, 64, "test")[0]
    ids = torch.round((item["A"][0] + 1) * 127.5).to(torch.uint8).numpy()
    inputs = tmp_path / "labels"
    inputs.mkdir()
    Image.fromarray(ids, mode="L").save(inputs / "facade.png")
    Image.fromarray(ids[:40, :56], mode="L").save(inputs / "odd.png")  # not a multiple of 16: padded
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        predict_cfg = compose("predict", overrides=[f"ckpt_path={ckpt}", f"input={inputs}",
                                                    f"output_dir={tmp_path / 'out'}", "device=cpu"])
    written = predict(predict_cfg)
    assert sorted(p.name for p in written) == ["facade.png", "odd.png"]
    assert Image.open(tmp_path / "out" / "odd.png").size == (56, 40)
    model = model_from_checkpoint(ckpt, expected=Pix2PixHD)
    with torch.no_grad():
        expected = model(item["A"][None])
    translator = Translator.from_checkpoint(ckpt, device="cpu")
    assert torch.allclose(translator(item["A"]), expected[0].clamp(-1, 1), atol=1e-5)
    saved = np.asarray(Image.open(tmp_path / "out" / "facade.png")).astype(np.float32)
    assert np.abs(saved - (expected[0].clamp(-1, 1).permute(1, 2, 0).numpy() + 1) * 127.5).max() <= 0.55  # rounded to 8-bit levels


def test_predict_reads_label_maps_as_class_ids_and_names_a_file_that_is_not_one(stage1, tmp_path):
    """A palette PNG gives its indices (the image reader would give colours); a colour photo or ids beyond the
    model's classes stop predict, naming the file, after the files before it were written."""
    ids = torch.round((SyntheticLabelFacades(1, 64, "test")[0]["A"][0] + 1) * 127.5).to(torch.uint8).numpy()
    inputs = tmp_path / "labels"
    inputs.mkdir()
    Image.fromarray(ids, mode="L").save(inputs / "a_grey.png")
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette([c for i in range(256) for c in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    palette.save(inputs / "b_palette.png")

    def run(folder: Path, output: Path) -> list[Path]:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return predict(compose("predict", overrides=[f"ckpt_path={stage1}", f"input={folder}",
                                                         f"output_dir={output}", "device=cpu"]))

    run(inputs, tmp_path / "out")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a_grey.png")),
                          np.asarray(Image.open(tmp_path / "out" / "b_palette.png")))

    Image.fromarray(np.stack([ids] * 3, -1)).save(inputs / "c_photo.png")
    with pytest.raises(ValueError, match=r"c_photo\.png: .*label maps of 6 classes.*mode is RGB"):
        run(inputs, tmp_path / "bad")
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == ["a_grey.png", "b_palette.png"]
    (inputs / "c_photo.png").unlink()
    Image.fromarray(np.full_like(ids, 9), mode="L").save(inputs / "d_nine.png")
    with pytest.raises(ValueError, match=r"d_nine\.png: .*class ids 9\.\.9, outside 0\.\.5"):
        run(inputs, tmp_path / "bad")


def test_label_map_model_exports_to_onnx_and_torchscript(stage1, tmp_path):
    """Export traces with valid class ids (the generator checks them) and the boundary map exports too: the files
    give the checkpoint's outputs on other label maps and sizes, and their metadata has the smallest side."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from gan_translate.export import export_generator

    translator = Translator.from_checkpoint(stage1, device="cpu")
    maps = [SyntheticLabelFacades(2, size, "test")[i]["A"][None] for i, size in ((0, 32), (1, 48))]
    onnx_path = export_generator(stage1, format="onnx", output=tmp_path / "hd.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(export_generator(stage1, format="torchscript", output=tmp_path / "hd.pt")))
    for x in maps:
        expected = translator(x)
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected.numpy(), atol=1e-4)
        torch.testing.assert_close(scripted(x).clamp(-1, 1), expected, atol=1e-5, rtol=1e-5)
    metadata = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_path)).metadata_props}
    assert metadata["instance_boundaries"] == "from the class ids (no instance-map input)"  # trained with instances
    smallest = metadata["min_size"]
    assert smallest == 8  # G1 with 2 halvings: a 2 x 2 bottleneck
    x = encode_label_ids(torch.randint(0, 6, (1, 1, smallest, smallest)))
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], translator(x).numpy(), atol=1e-4)


def test_sampling_a_translation_checkpoint_names_the_file(stage1):
    from gan_translate.sampler import Sampler

    with pytest.raises(CheckpointError, match=rf"{stage1.name}: Pix2PixHD has no sampling_network.*predict.*GenerativeGAN"):
        Sampler.from_checkpoint(stage1, device="cpu")


def test_label_maps_are_resized_without_blending_class_ids(stage1):
    translator = Translator.from_checkpoint(stage1, device="cpu", size_policy="resize")
    ids = np.zeros((41, 57), dtype=np.uint8)  # odd sizes: not a multiple of any generator's divisor
    ids[:, 28:] = 5
    resized, _ = translator._fit_size(translator.to_tensor(Image.fromarray(ids, mode="L"))[None])
    assert resized.shape[-2:] == tuple(translator.size_rule.nearest(n) for n in (41, 57)) != (41, 57)
    assert set(label_ids(resized).unique().tolist()) == {0, 5}
    assert translator(Image.fromarray(ids, mode="L")).size == (57, 41)


def test_resumed_local_stage_keeps_its_weights_without_the_stage1_file(stage1, tmp_path):
    copy = tmp_path / "stage1.ckpt"
    copy.write_bytes(stage1.read_bytes())
    stage2 = [*TINY_HD, *LOCAL, f"model.global_ckpt={copy}", "model.fix_global_epochs=1", "trainer.max_epochs=2"]
    train(compose_train([*stage2, "trainer.max_steps=4"], tmp_path / "a"))  # the frozen epoch only
    copy.unlink()
    first = tmp_path / "a" / "checkpoints" / "last.ckpt"
    train(compose_train([*stage2, f"ckpt_path={first}"], tmp_path / "b"))
    before, after = load_checkpoint(first)["state_dict"], load_checkpoint(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert after["epoch"] == 1
    g1 = [k for k in before if ".global_features." in k]
    assert g1 and all(not torch.equal(before[k], after["state_dict"][k]) for k in g1)  # resumed, then joint


def test_facades_experiment_on_rgb_labels(tmp_path):
    root = write_aligned(tmp_path / "facades", count=2, size=32)
    overrides = [o for o in TINY_HD if not o.startswith(("experiment=", "data.size", "data.train_length", "data.val_length"))]
    cfg = compose_train(["experiment=facades_pix2pixhd", *overrides, f"data.root={root}", "data.load_size=36",
                         "data.crop_size=32", "loss.lambda_vgg=0"], tmp_path / "run")
    assert (cfg.model.label_nc, cfg.model.instance, cfg.data.direction) == (0, False, "BtoA")
    assert (cfg.loss.gan_mode, cfg.loss.lambda_feat, cfg.discriminator.num_D) == ("lsgan", 10, 2)
    train(cfg)
    translator = Translator.from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", device="cpu")
    assert translator.input_nc == 3
    assert translator(Image.open(root / "val" / "000.png").crop((32, 0, 64, 32))).size == (32, 32)


def test_perceptual_network_is_frozen_and_not_saved(tmp_path):
    cfg = compose_train([*TINY_HD, "loss.lambda_vgg=10", "+model.perceptual_network._target_=test_pix2pixhd.TinyFeatures",
                         "+model.perceptual_network._partial_=true", "loss.gan_mode=wgangp"], tmp_path)
    train(cfg)
    rows = read_metrics(tmp_path)
    assert all(v > 0 for v in (float(r["train/loss_G_VGG"]) for r in rows if r.get("train/loss_G_VGG")))
    assert any(r.get("train/loss_D_GP") for r in rows)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert not any("blocks" in k or "perceptual" in k for k in state)
    # Without an injected network, lambda_vgg > 0 builds VGG19 from model.vgg_weights, failing before training.
    pytest.importorskip("gan_translate.networks.vgg")
    cfg = compose_train([*TINY_HD, "loss.lambda_vgg=10", f"model.vgg_weights={tmp_path / 'missing.pth'}"], tmp_path / "b")
    with pytest.raises(Exception, match="gan_translate.weights fetch vgg"):
        train(cfg)


def test_feature_encoder_clusters_give_different_outputs(tmp_path):
    run = tmp_path / "run"
    train(compose_train([*TINY_HD, "model.feature_encoder=true", "model.encoder_downsampling=2"], run))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("encode_features", overrides=[f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "device=cpu",
                                                    "n_clusters=3"])
    path = encode_features(cfg)
    assert path == run / "checkpoints" / "last-features.ckpt"
    generator = model_from_checkpoint(path, expected=Pix2PixHD).generator_for()
    assert generator.cluster_centres.shape == (6, 3, 3) and generator.cluster_counts.max() == 3
    item = SyntheticLabelFacades(1, 32, "test")[0]
    x = torch.cat([item["A"], item["inst"]])[None]
    outputs = []
    with torch.no_grad():
        for choice in range(3):
            generator.cluster_choice = choice
            outputs.append(generator(x))
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[1], outputs[2])
    from gan_translate.export import export_generator

    with pytest.raises(ValueError, match=r"last-features\.ckpt: .*feature encoder.*cannot be exported"):
        export_generator(path, output=tmp_path / "features.onnx")
    assert not (tmp_path / "features.onnx").exists()
    centres = kmeans(torch.tensor([[0.0], [0.1], [10.0], [10.1]]), 2)
    assert sorted(centres.flatten().tolist()) == pytest.approx([0.05, 10.05])


def test_the_readme_feature_encoder_command_builds(tmp_path):
    """README: `experiment=demo_pix2pixhd model.feature_encoder=true` (the encoder downsamples like the demo's G1)."""
    from gan_translate.checkpoint import build_model

    model = build_model(compose_train(["experiment=demo_pix2pixhd", "model.feature_encoder=true"], tmp_path))
    assert model.encoder is not None


def test_a_frozen_g1_without_a_stage1_checkpoint_is_refused(tmp_path):
    """facades_pix2pixhd_local without model.global_ckpt trained a random G1 kept frozen (its `???` could not
    override the model config's null)."""
    cfg = compose_train([*TINY_HD, *LOCAL, "model.fix_global_epochs=1"], tmp_path)
    with pytest.raises(InstantiationException, match=r"model\.global_ckpt is unset.*model\.fix_global_epochs=0"):
        build_model(cfg)
    assert isinstance(build_model(compose_train([*TINY_HD, *LOCAL, "model.fix_global_epochs=0"], tmp_path)), Pix2PixHD)


def test_encode_features_clusters_only_instances_larger_than_min_area(tmp_path):
    """pix2pixHD's rule: instances of at most 1/64 of their image stay out of k-means (a class whose instances
    are all small is clustered from all of them). With one centre per class, a centre is the mean of the kept
    instances' features."""

    run = tmp_path / "run"
    train(compose_train([*TINY_HD, "model.feature_encoder=true", "model.encoder_downsampling=2"], run))
    ckpt = run / "checkpoints" / "last.ckpt"
    model = model_from_checkpoint(ckpt, expected=Pix2PixHD)
    datamodule = instantiate(OmegaConf.create(model.run_config).data)
    loader = torch.utils.data.DataLoader(datamodule.make_dataset("train", train=False), batch_size=1)
    features, classes, areas = instance_features(model, loader, torch.device("cpu"))
    assert torch.allclose(areas.sum(), torch.tensor(float(len(loader))))  # every pixel in one instance
    min_area = float(areas.median())  # some instances on either side of the threshold
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("encode_features", overrides=[f"ckpt_path={ckpt}", "device=cpu", "n_clusters=1",
                                                    f"min_area={min_area}", f"output={tmp_path / 'f.ckpt'}"])
    centres = load_checkpoint(encode_features(cfg))["state_dict"]["generator.cluster_centres"]
    filtered_any = False
    for class_id in classes.unique().tolist():
        members = classes == class_id
        kept = members & (areas > min_area)
        filtered_any |= bool(kept.any() and (members & ~kept).any())
        expected = features[kept if kept.any() else members].double().mean(0).float()
        torch.testing.assert_close(centres[class_id, 0], expected, rtol=1e-4, atol=1e-5)
    assert filtered_any  # the threshold left some instances of a clustered class out
