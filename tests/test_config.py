"""Hydra composition of every option of every group, the paper experiments, config errors and multirun."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import (
    CONF_DIR,
    TINY_CYCLEGAN_OVERRIDES,
    TINY_OVERRIDES,
    compose_train,
    random_rgb,
    run_module,
    write_aligned,
    write_unaligned,
)
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from gan_translate.checkpoint import build_model
from gan_translate.config import ConfigError, check_value_types
from gan_translate.data import AlignedDataModule, UnalignedDataModule
from gan_translate.models import CycleGAN, GANModule, Pix2Pix
from gan_translate.networks import NLayerDiscriminator, ResnetGenerator, UnetGenerator
from gan_translate.train import train

DEFAULT_GROUPS = ("data", "generator", "discriminator", "loss", "optim", "scheduler", "trainer", "callbacks",
                  "logger", "paths", "metrics", "model", "experiment")
# Groups that are in conf/ but not in train.yaml's defaults list are appended with `+group=option`.
OPTIONAL_GROUPS = ()
# In train.yaml's defaults with `null`: chosen only on demand (e.g. hparams_search=...).
ON_DEMAND_GROUPS = ("hparams_search",)
TINY_WIDTHS = ["generator.ngf=4", "discriminator.ndf=4"]


def group_options():
    for group in (*DEFAULT_GROUPS, *OPTIONAL_GROUPS):
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            yield group, path.stem


def test_every_group_is_known():
    on_disk = {p.name for p in CONF_DIR.iterdir() if p.is_dir()} - set(ON_DEMAND_GROUPS)
    assert on_disk == set(DEFAULT_GROUPS) | set(OPTIONAL_GROUPS)


def experiment_defaults(name: str) -> dict[str, str]:
    """group -> option that conf/experiment/<name>.yaml overrides."""
    defaults = OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml").get("defaults", [])
    # (a plain name entry includes another experiment, e.g. facades_pix2pixhd_local includes facades_pix2pixhd)
    return {k.split("/")[-1]: v for entry in defaults if not isinstance(entry, str) for k, v in entry.items()}


def embedded_experiment_for(group: str, option: str) -> str | None:
    """An experiment that selects ``group=option``, on embedded data unless ``group`` is data itself (the test
    writes those files); None if the default one does."""
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        chosen = experiment_defaults(path.stem)
        embedded = group == "data" or chosen.get("data", "synthetic").startswith("synthetic")  # data: files made below
        if chosen.get(group) == option and embedded:
            return path.stem
    return None


MODEL_GROUPS = ("generator", "discriminator", "loss", "optim", "scheduler", "model", "experiment")


@pytest.mark.parametrize(("group", "option"), list(group_options()), ids=lambda v: str(v))
def test_every_option_composes(group, option, tmp_path):
    if (group, option) == ("model", "common"):
        pytest.skip("conf/model/common.yaml holds the keys every model shares; it is no model of its own")
    prefix = "+" if group in OPTIONAL_GROUPS else ""
    overrides = [f"{prefix}{group}={option}", *TINY_WIDTHS]
    # Options of another method (a CycleGAN loss, a DCGAN generator ...) are composed in the embedded-data
    # experiment that uses them; the others in the default one (experiment=demo, pix2pix).
    experiment = embedded_experiment_for(group, option) if group != "experiment" else None
    recipe = experiment or (option if group == "experiment" else "")
    if recipe.endswith("aae"):  # the adversarial autoencoder's latent discriminator has no ndf
        overrides = [f"{prefix}{group}={option}", "generator.ngf=4", "model.encoder.nef=4"]
    if experiment:
        overrides.insert(0, f"experiment={experiment}")
    if group in ("data", "experiment") and option in ("image_folder", "mnist_dcgan", "mnist_cgan", "mnist_infogan",
                                                      "mnist_aae"):
        for digit in range(10):  # class folders root/train/0..9
            (tmp_path / "root" / "train" / str(digit)).mkdir(parents=True)
            Image.fromarray(random_rgb(28, 28, digit)).save(tmp_path / "root" / "train" / str(digit) / "0.png")
        overrides.append(f"data.root={tmp_path / 'root'}")
    if group in ("data", "experiment") and option in (
        "aligned", "paired_folders", "facades_pix2pix", "facades_pix2pixhd", "facades_pix2pixhd_local"
    ):
        overrides.append(f"data.root={write_aligned(tmp_path / 'root', count=1)}")
    if group in ("data", "experiment") and option in ("unaligned", "horse2zebra_cyclegan"):
        overrides.append(f"data.root={write_unaligned(tmp_path / 'root', 1, 1)}")
    if group in ("data", "experiment") and option in ("label_folders", "cityscapes_pix2pixhd", "cityscapes_pix2pixhd_local"):
        overrides.append(f"data.root={tmp_path}")  # an existing folder: the datamodule reads files at setup only
    if recipe.endswith("pix2pixhd_local"):
        overrides.append("model.global_ckpt=stage1.ckpt")  # read at fit start only; required while G1 is frozen
    if group == "data" and option == "paired_folders":
        write_unaligned(tmp_path / "root", 1, 1)  # trainA/trainB with matching names are made below
    cfg = compose_train(overrides, tmp_path / "run")
    check_value_types(cfg)  # no shipped value is of a type its parameter does not take
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["paths"]["output_dir"] == str(tmp_path / "run")
    # Every model-facing option must still build a model.
    if group in MODEL_GROUPS:
        model = build_model(cfg)
        assert isinstance(model, GANModule)
        model.configure_optimizers()
    if group == "data" and option != "paired_folders":
        assert instantiate(cfg.data).batch_size >= 1


def test_model_without_its_loss_fails_naming_the_keys(tmp_path):
    cfg = compose_train(["model=cyclegan", *TINY_WIDTHS], tmp_path)  # keeps the default loss=pix2pix
    with pytest.raises(InstantiationException, match=r"model=cyclegan needs .*loss=cyclegan.*experiment=shapes_cyclegan"):
        build_model(cfg)


@pytest.mark.parametrize(("experiment", "loss", "expected"), [
    ("demo_dcgan", "infogan", "model=dcgan needs .*loss=dcgan"),      # trained, the loss keys ignored
    ("demo_cgan", "pix2pix", "model=cgan needs .*loss=dcgan.*experiment=demo_cgan"),
    ("demo_infogan", "dcgan", "model=infogan needs .*loss=infogan"),  # failed only in the first step
    ("demo_aae", "dcgan", "model=aae needs .*loss=aae"),
])
def test_noise_models_with_another_methods_loss_fail_naming_the_keys(experiment, loss, expected, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"loss={loss}"], tmp_path)
    with pytest.raises(InstantiationException, match=expected):
        build_model(cfg)


def test_model_configs_stay_in_their_group():
    # A model config holds the model only: data, networks and losses are chosen by experiments.
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        text = path.read_text()
        assert "@package" not in text, path
        assert not any(line.strip().startswith("- override") for line in text.splitlines()), path


def test_experiment_facades_pix2pix(tmp_path):
    root = write_aligned(tmp_path / "facades", splits=("train", "val"), count=2, size=32)
    cfg = compose_train(["experiment=facades_pix2pix", f"data.root={root}", *TINY_WIDTHS, "data.num_workers=0"], tmp_path)
    # The paper's settings.
    assert cfg.data.direction == "BtoA" and cfg.data.load_size == 286 and cfg.data.crop_size == 256
    assert cfg.loss.gan_mode == "vanilla" and cfg.loss.lambda_l1 == 100
    assert cfg.optim.lr == 2e-4 and list(cfg.optim.betas) == [0.5, 0.999]
    assert cfg.trainer.max_epochs == 200 and cfg.scheduler.constant_epochs is None  # null: the first half
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, AlignedDataModule)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["A"].shape == (1, 3, 256, 256)
    model = build_model(cfg)
    assert isinstance(model, Pix2Pix) and isinstance(model.generator, UnetGenerator)
    assert model.generator.size_divisor == 256
    with torch.no_grad():
        assert model.eval()(batch["A"]).shape == (1, 3, 256, 256)
    schedulers = model.configure_optimizers()[1]
    assert schedulers[0]["scheduler"].constant_epochs == 100


def test_experiment_horse2zebra_cyclegan(tmp_path):
    root = write_unaligned(tmp_path / "h2z", 2, 3, size=32)
    cfg = compose_train(["experiment=horse2zebra_cyclegan", f"data.root={root}", *TINY_WIDTHS], tmp_path)
    assert cfg.loss.gan_mode == "lsgan" and cfg.loss.lambda_cycle == 10 and cfg.loss.lambda_identity == 0.5
    assert cfg.model.pool_size == 50 and cfg.discriminator.norm == "instance"
    assert cfg.generator.n_blocks == 9 and cfg.monitor.metric == "auto"
    assert isinstance(instantiate(cfg.data), UnalignedDataModule)
    model = build_model(cfg)
    assert isinstance(model, CycleGAN) and isinstance(model.generator_A, ResnetGenerator)
    assert isinstance(model.discriminator_A, NLayerDiscriminator)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_experiment_switches_defaults_but_command_line_wins(tmp_path):
    cfg = compose_train(["experiment=shapes_cyclegan"], tmp_path)
    assert cfg.generator.n_blocks == 9 and cfg.loss.lambda_cycle == 10
    assert cfg.data._target_.endswith("SyntheticShapesDataModule")
    cfg = compose_train(["experiment=shapes_cyclegan", "generator=unet_64", "discriminator=pixel"], tmp_path)
    assert cfg.generator.num_downs == 6 and cfg.discriminator._target_.endswith("PixelDiscriminator")


def test_aligned_without_root_names_the_key(tmp_path):
    """Before anything is built, and printed without a traceback (omegaconf's MissingMandatoryValue came from
    inside instantiate)."""
    cfg = compose_train(["data=aligned", *TINY_OVERRIDES[:2]], tmp_path)
    with pytest.raises(ConfigError, match=r"required values not given: data\.root \(pass data\.root=\.\.\.\)"):
        train(cfg)
    result = run_module("gan_translate.train", "data=aligned", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                        check=False)
    assert result.returncode != 0 and "data.root" in result.stderr and "Traceback" not in result.stderr


def test_unknown_group_option_in_compose(tmp_path):
    with pytest.raises(ConfigCompositionException, match="unet_999"):
        compose_train(["generator=unet_999"], tmp_path)


@pytest.mark.parametrize(
    ("override", "named"),
    [("loss.lambda_l11=3", "loss.lambda_l11"), ("generator=unet_999", "unet_999")],
)
def test_cli_config_errors_name_the_key(override, named, tmp_path):
    result = run_module("gan_translate.train", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert named in result.stderr
    assert "Traceback" not in result.stderr  # a config error, not a crash
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_values_of_the_wrong_type_fail_before_training_naming_the_keys(tmp_path):
    # "flase" is a non-empty string: without the check the model would take it as true and capture a CUDA graph.
    result = run_module("gan_translate.train", "model.step_graph=flase", "data.batch_size=two", "loss.lambda_l1=1e2x",
                        "trainer.max_epochs=1.5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                        check=False)
    assert result.returncode != 0
    for message in ("model.step_graph must be true or false, got 'flase'", "data.batch_size must be an integer",
                    "loss.lambda_l1 must be a number, got '1e2x'", "trainer.max_epochs must be an integer or null"):
        assert message in result.stderr
    assert "model.loss.lambda_l1" not in result.stderr  # the interpolated copy of loss is not reported twice
    assert "Traceback" not in result.stderr  # a user's error is printed as its message alone (UsageError)
    assert not (tmp_path / "run" / "checkpoints").exists()
    # The run folder Hydra made says why the run stopped.
    assert "run failed: ConfigError: invalid config values" in (tmp_path / "run" / "train.log").read_text()

    cfg = compose_train(["model.nonfinite=3", "trainer.log_every_n_steps=true"], tmp_path / "run2")
    with pytest.raises(ValueError, match=r"model.nonfinite must be a string, got 3 \(quote it: model.nonfinite='3'\);"
                                         r" trainer.log_every_n_steps must be an integer or null, got True"):
        check_value_types(cfg)


def test_values_out_of_range_fail_before_training_naming_the_keys(tmp_path):
    """Each of these failed later without naming its key: a comparison error inside Adam (lr), an IndexError
    (betas), a ZeroDivisionError in the loader (batch_size 0), a conv error in the first step (ngf 0), int()'s
    message (seed), and a negative loss weight trained towards the wrong target without a word."""
    cfg = compose_train([*TINY_OVERRIDES, "optim.lr=2e-4x", "optim.betas=[0.5]", "data.batch_size=0",
                         "generator.ngf=0", "discriminator.n_layers=-1", "seed=abc", "loss.lambda_l1=-1",
                         "data.num_workers=-1"], tmp_path)
    with pytest.raises(ValueError) as raised:
        train(cfg)
    for message in ("optim.lr must be a number, got '2e-4x'", "optim.betas must be a list of 2 values, got [0.5]",
                    "data.batch_size must be >= 1, got 0", "generator.ngf must be >= 1, got 0",
                    "discriminator.n_layers must be >= 0, got -1", "seed must be an integer or null, got 'abc'",
                    "loss.lambda_l1 must be >= 0, got -1", "data.num_workers must be >= 0, got -1"):
        assert message in str(raised.value)
    assert not (tmp_path / "checkpoints").exists()
    # Items of a fixed-length tuple are checked one by one; a value at its bound passes.
    with pytest.raises(ValueError, match=r"optim\.betas\[1\] must be a number, got 'x'"):
        check_value_types(compose_train([*TINY_OVERRIDES, "optim.betas=[0.5,x]"], tmp_path))
    check_value_types(compose_train([*TINY_OVERRIDES, "loss.lambda_l1=0", "seed=null", "optim.lr=1"], tmp_path))


def test_the_value_check_leaves_valid_configs_alone(tmp_path, monkeypatch):
    """Nested _target_ nodes (a tensor for a `float | Tensor` or `Tensor | None` parameter) are built by their own
    target; a seed from the environment is a string of digits; `~` in data.root stays the home folder."""
    from gan_translate.train import absolute_data_root

    monkeypatch.setenv("SEED", "7")
    cfg = compose_train([*TINY_OVERRIDES, "seed=${oc.env:SEED}", "+optim.lr._target_=torch.tensor",
                         "+optim.lr.data=0.001"], tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.loss_extra = {"_target_": "torch.nn.BCEWithLogitsLoss", "pos_weight": {"_target_": "torch.tensor",
                                                                               "data": [2.0]}}
    check_value_types(cfg)
    cfg.data.root = "~/datasets/facades"
    absolute_data_root(cfg)
    assert cfg.data.root == "~/datasets/facades"  # expanded by the datamodule, as before
    cfg.data.root = "datasets/facades"
    absolute_data_root(cfg)
    assert cfg.data.root == str(Path.cwd() / "datasets" / "facades")


def test_annotated_types_bounds_of_user_classes_are_checked():
    """ranges.py invites user classes to use annotated-types bounds: all four, grouped ones too, are enforced."""
    import typing

    import annotated_types

    from gan_translate.config import _check_of, _problem

    ratio = _check_of(typing.Annotated[float, annotated_types.Interval(ge=0, le=1)])
    assert _problem(0.5, ratio, "model.ratio") is None
    assert _problem(1.5, ratio, "model.ratio") == "model.ratio must be <= 1, got 1.5"
    assert _problem(-1, ratio, "model.ratio") == "model.ratio must be >= 0, got -1"
    below = _check_of(typing.Annotated[int, annotated_types.Lt(4)] | None)
    assert _problem(None, below, "k") is None and _problem(4, below, "k") == "k must be < 4, got 4"


@pytest.mark.parametrize("model", ["dcgan", "cgan", "infogan", "aae"])
def test_a_noise_model_alone_names_its_experiments(model, tmp_path):
    """model=dcgan alone keeps the default facades data, which has no image_size: omegaconf's bare
    "Interpolation key 'data.image_size' not found" came from inside instantiate."""
    cfg = compose_train([f"model={model}"], tmp_path)
    with pytest.raises(ValueError, match=rf"model\.image_size refers to data\.image_size, which is not set.*"
                                         rf"experiment=demo_{model} or experiment=mnist_{model}"):
        train(cfg)


@pytest.mark.parametrize("experiment", ["demo", "shapes_cyclegan"])
def test_a_feature_list_discriminator_is_refused_where_one_score_map_is_read(experiment, tmp_path):
    """discriminator=multiscale (pix2pixHD's) with pix2pix failed inside GANLoss at the first step."""
    cfg = compose_train([f"experiment={experiment}", "discriminator=multiscale"], tmp_path)
    with pytest.raises(InstantiationException, match=r"takes one score map.*discriminator=multiscale.*basic"):
        build_model(cfg)


def test_wgangp_with_a_batch_norm_critic_warns(tmp_path):
    """The gradient penalty treats every sample on its own; batch norm in the critic mixes them."""
    overrides = [*TINY_OVERRIDES, "loss.gan_mode=wgangp", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
                 "+trainer.limit_val_batches=1"]
    with pytest.warns(UserWarning, match=r"wgangp with batch norm in discriminator.*discriminator\.norm=instance"):
        train(compose_train(overrides, tmp_path / "batch"))
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(compose_train([*overrides, "discriminator.norm=instance"], tmp_path / "instance"))
    assert not [w for w in caught if "batch norm in" in str(w.message)]


def sweep(tmp_path: Path, *overrides: str) -> Path:
    sweep_dir = tmp_path / "sweep"
    run_module("gan_translate.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    return sweep_dir


def check_jobs(sweep_dir: Path, key: str, values: list[float]) -> None:
    for job, value in enumerate(values):
        job_dir = sweep_dir / str(job)
        assert OmegaConf.select(OmegaConf.load(job_dir / ".hydra" / "config.yaml"), key) == value
        checkpoint = torch.load(job_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        stored = OmegaConf.create(checkpoint["gan_translate"]["config"])
        assert OmegaConf.select(stored, key) == value
        assert stored.paths.output_dir == str(job_dir)  # each job writes into its own folder


def test_multirun_pix2pix(tmp_path):
    sweep_dir = sweep(tmp_path, "loss.lambda_l1=10,100", *TINY_OVERRIDES, "data.train_length=4", "data.val_length=2")
    check_jobs(sweep_dir, "loss.lambda_l1", [10, 100])


def test_multirun_cyclegan(tmp_path):
    sweep_dir = sweep(
        tmp_path, "loss.lambda_cycle=5,10", *TINY_CYCLEGAN_OVERRIDES, "data.train_length=4", "data.val_length=2"
    )
    check_jobs(sweep_dir, "loss.lambda_cycle", [5, 10])
    checkpoint = torch.load(sweep_dir / "1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["gan_translate"]["model_class"] == "gan_translate.models.cyclegan.CycleGAN"


def test_no_best_checkpoint_warning_says_why(tmp_path, caplog, monkeypatch):
    from gan_translate.train import choose_monitor

    # Nothing cached anywhere (a weights path given but missing is an error instead, see test_metrics).
    for variable in ("GAN_TRANSLATE_FID_WEIGHTS", "GAN_TRANSLATE_LPIPS_WEIGHTS"):
        monkeypatch.delenv(variable, raising=False)
    for variable in ("GAN_TRANSLATE_CACHE", "HOME", "TORCH_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / "empty"))
    reasons = {}
    for name, overrides in {
        "off": ["metrics=none"],
        "missing": ["metrics.collection.fid=auto", "metrics.collection.lpips=auto"],
    }.items():
        caplog.clear()
        with caplog.at_level("WARNING", logger="gan_translate.train"):
            assert choose_monitor(compose_train(overrides, tmp_path / name)) is None
        reasons[name] = " ".join(r.getMessage() for r in caplog.records)
    assert "this metrics config runs neither FID nor LPIPS" in reasons["off"] and "weights" not in reasons["off"]
    assert "no FID or LPIPS weights were found" in reasons["missing"]
