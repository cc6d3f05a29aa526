"""GANModule: what every GAN here shares, so that a method's file holds only its equations.

- manual optimization: each D or G update is ``optimization_step`` (zero_grad -> manual_backward ->
  optional clipping -> step) on a LightningOptimizer, so precision plugins (bf16/16-mixed scaling)
  and strategies (DDP) stay in the loop;
- one optimizer and one scheduler per parameter group, schedulers stepped per epoch by us
  (Lightning does not step them under manual optimization);
- channels_last and torch.compile switches;
- validation metrics (torchmetrics via gan_translate.metrics) computed every N epochs and logged as val/*;
- the run's composed config stored in every checkpoint, so predict needs nothing else.

Two policies live in small mixins of their own, each tested separately: what a NaN/Inf loss does
(``models/nonfinite.py``, ``model.nonfinite``) and batch norm at test time (``models/norm_modes.py``,
``model.test_batch_stats``). A subclass needs neither's internals: ``optimization_step`` applies the first,
``evaluating()`` and validation the second, and ``step_skipped`` says whether an update of this batch was dropped.

Note: ``trainer.global_step`` counts optimizer steps, i.e. 2 per batch (G and D) for pix2pix and CycleGAN; losses are
logged against batches. ``trainer.max_steps`` is therefore in optimizer steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau

import gan_translate
from gan_translate.models.nonfinite import NonFiniteLossError, NonFiniteLossPolicy
from gan_translate.models.norm_modes import EvalNormMode
from gan_translate.models.step_graph import SameObject, StepRecord, TrainingStepGraph
from gan_translate.schedulers import check_run_length

CHECKPOINT_KEY = "gan_translate"
# torch.compile modes; the first two replay CUDA graphs (on CUDA devices only: elsewhere they compile as default).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
log = logging.getLogger(__name__)
__all__ = ["CHECKPOINT_KEY", "GANModule", "NonFiniteLossError", "build_network", "expect_loss", "expect_score_map"]


def build_network(factory: Callable[..., nn.Module] | nn.Module, **channels: int) -> nn.Module:
    """Accept a ready module or a factory (e.g. a Hydra ``_partial_``) that still needs channel counts."""
    return factory if isinstance(factory, nn.Module) else factory(**channels)


def expect_loss(loss: object, expected: type, model: str, example: str, loss_config: str | None = None) -> None:
    """Fail at construction, naming the keys, when a model is composed with another method's loss config
    (``model=cyclegan`` alone keeps the default ``loss=pix2pix``). ``loss_config``: the loss option the model
    takes, when it is not named like the model (cGAN uses ``loss=dcgan``)."""
    if not isinstance(loss, expected):
        loss_config = loss_config or model
        raise TypeError(
            f"model={model} needs its own loss weights ({expected.__name__}, loss={loss_config}), got "
            f"{type(loss).__name__}: pass loss={loss_config}, or an experiment that sets data, networks and loss "
            f"together, e.g. experiment={example}"
        )


def expect_score_map(discriminator: nn.Module, model: str) -> None:
    """Fail at construction, naming the keys, when a model that reads one score map per image gets a discriminator
    that returns lists of features (``discriminator=multiscale`` with pix2pix failed inside GANLoss at the first
    step)."""
    if getattr(discriminator, "returns_features", False):
        raise TypeError(
            f"model={model} takes one score map from its discriminator, but {type(discriminator).__name__} "
            "(discriminator=multiscale) returns every scale's features, for pix2pixHD's feature matching: use "
            "discriminator=basic or n_layers, or model=pix2pixhd (e.g. experiment=demo_pix2pixhd)"
        )


class GANModule(NonFiniteLossPolicy, EvalNormMode, pl.LightningModule):
    """Base of the GAN LightningModules. Subclasses define ``optimizer_groups``, ``training_step``,
    ``validation_step`` (calling ``update_metrics``) and ``visuals``; ``generator_for(direction)``
    serves prediction and export."""

    paired: bool = True  # whether validation targets are pixel-aligned with the outputs
    _step_record: StepRecord | None = None  # set while model.step_graph captures the training step

    def __init__(
        self,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
        input_nc: int = 3,
        output_nc: int = 3,
        scheduler_monitor: str | None = None,
        gradient_clip_val: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
        metrics: Callable[..., nn.Module] | nn.Module | None = None,
        metrics_every_n_epochs: int = 1,
        test_batch_stats: bool = False,
        nonfinite: str = "raise",
        nonfinite_check: str = "step",
        log_every_batch: bool = True,
        step_graph: bool = False,
    ) -> None:
        super().__init__()
        self.set_nonfinite_policy(nonfinite, nonfinite_check)  # see models/nonfinite.py
        self.automatic_optimization = False
        self.input_nc, self.output_nc = input_nc, output_nc
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.gradient_clip_val = gradient_clip_val
        self.channels_last = channels_last
        self.compile_networks = compile
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"model.compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.compile_mode = compile_mode
        self.log_every_batch = log_every_batch
        self.step_graph = step_graph  # see models/step_graph.py
        self._step_graph: TrainingStepGraph | None = None
        self._step_graph_parameters: list[torch.nn.Parameter] | None = None  # list(self.parameters()) while it runs
        self.run_config: dict | None = None  # the composed Hydra config, set by the entry point
        # A factory gets told whether targets are pixel-aligned (pix2pix) or only same-domain (CycleGAN).
        self.metrics = metrics if metrics is None or isinstance(metrics, nn.Module) else metrics(paired=self.paired)
        self.metrics_every_n_epochs = metrics_every_n_epochs
        self.test_batch_stats = test_batch_stats  # see models/norm_modes.py
        self._validated_epoch: int | None = None
        self._metrics_active = False
        # The last epoch whose validation computed the metrics collection, and the names it logged.
        self._metrics_epoch: int | None = None
        self._metric_names: set[str] = set()

    # ----- hooks for subclasses -----
    def optimizer_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """Name -> parameters, one optimizer each, in the order ``self.optimizers()`` returns them."""
        raise NotImplementedError

    def networks(self) -> dict[str, nn.Module]:
        """Every trainable network by name (for channels_last/compile and for checks)."""
        return {name: module for name, module in self.named_children() if name.startswith(("generator", "discriminator"))}

    def generator_for(self, direction: str | None = None) -> nn.Module:
        """The generator that translates in ``direction`` (None: the model's own direction)."""
        raise NotImplementedError

    def source_channels(self, direction: str | None = None) -> int:
        """Channel count of the images that ``generator_for(direction)`` takes."""
        return self.output_nc if direction == "BtoA" else self.input_nc

    def visuals(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named image batches (in [-1, 1]) shown side by side in sample grids."""
        raise NotImplementedError

    # ----- setup -----
    @property
    def uses_gradient_penalty(self) -> bool:
        """Whether the configured loss adds the WGAN-GP penalty (a double backward through the discriminators)."""
        return getattr(getattr(self, "loss", None), "uses_gradient_penalty", False)

    def configure_model(self) -> None:
        for name, network in self.networks().items():
            if self.channels_last:
                network.to(memory_format=torch.channels_last)
            if self.compile_networks:
                # aot_autograd has no double backward, which the WGAN-GP penalty takes through the discriminators.
                if self.uses_gradient_penalty and name.startswith("discriminator"):
                    log.info("model.compile: %s stays eager (the gradient penalty needs double backward)", name)
                    continue
                network.compile(mode=self.compile_mode)  # in place: state_dict keys stay unprefixed

    # CUDA graphs (compile_mode=reduce-overhead): a graph's outputs live in memory its next replay reuses. A GAN
    # calls D several times per batch, so each batch starts a new "step" of the graph trees explicitly.
    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._mark_cuda_graph_step()
        super().on_train_batch_start(batch, batch_idx)

    def on_validation_batch_start(self, batch, batch_idx, dataloader_idx: int = 0) -> None:
        self._mark_cuda_graph_step()
        super().on_validation_batch_start(batch, batch_idx, dataloader_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if batch_idx == 2 and self._uses_cuda_graphs() and not getattr(self, "_cuda_graphs_checked", False):
            self._cuda_graphs_checked = True
            self.warn_on_cuda_graph_skips()

    def logs_this_batch(self) -> bool:
        """Whether the training step logs its values for this batch. With ``model.log_every_batch=false``
        (trainer=gpu_fast) only on the batches whose values reach the loggers (every
        ``trainer.log_every_n_steps``): each logged tensor costs kernels (Lightning clones it; the mean D scores are
        computed for it), and the other batches' values would only ever reach the progress bar."""
        if self.log_every_batch or self._trainer is None:
            return True
        return self.trainer._logger_connector.should_update_logs  # Lightning's own test (there is no public one)

    def log_train(self, values: dict[str, torch.Tensor], batch_size: int, prog_bar: bool = False) -> None:
        """Log training values by name; a tensor of several elements (D's scores) is logged as its mean.

        Only on the batches that log (``logs_this_batch``). Under ``model.step_graph`` the captured step's values
        are the graph's outputs, and the graph logs them after each replay that logs instead."""
        record: StepRecord | None = self._step_record
        if record is None and not self.logs_this_batch():
            return
        values = {name: value.detach() if value.ndim == 0 else value.detach().float().mean()
                  for name, value in values.items()}
        if record is not None:
            record.logged.append((values, batch_size, prog_bar))
        else:
            self.log_dict(values, prog_bar=prog_bar, batch_size=batch_size)

    def _uses_cuda_graphs(self) -> bool:
        return self.compile_networks and self.compile_mode in CUDA_GRAPH_MODES and self.device.type == "cuda"

    def warn_on_cuda_graph_skips(self) -> int:
        """After the first batches (every training graph compiled): did torch decide to run any of them without
        CUDA graphs? It says why only in its ``cudagraphs`` log, which is off by default, and such a graph still
        runs compiled, only slower (kernel by kernel), so the fast path would be slow without a word."""
        from torch._dynamo.utils import counters

        skips = counters["inductor"]["cudagraph_skips"]
        if skips:
            rank_zero_warn(
                f"model.compile_mode={self.compile_mode}: torch ran {skips} compiled graph(s) without CUDA graphs "
                "(they launch kernel by kernel). TORCH_LOGS=cudagraphs prints the reasons."
            )
        return skips

    # ----- model.step_graph: the whole training step as one CUDA graph (models/step_graph.py) -----
    def step_graph_unsupported(self) -> str | None:
        """Why this model's training step, as configured, cannot be captured (None: it can). A subclass whose
        step decides something on the host adds its reason, naming the key (pix2pixHD: its feature encoder)."""
        return None

    def step_graph_state(self) -> tuple:
        """The host state a captured training step depends on besides the batch's shapes: when it changes, the step
        is captured anew. Which parameters require grad decides what autograd and Adam do (pix2pixHD's frozen G1).
        The optimizers' settings are numbers baked into the graph at capture, except the learning rate, a device
        tensor the schedulers fill in place: a new value of any other (betas set by a scheduler), or a new lr
        object (a scheduler that assigns floats), needs a new capture. A subclass whose step branches on other
        host state adds it."""
        if any(not isinstance(group["lr"], torch.Tensor) for group in self._param_groups()):
            self._make_optimizers_capturable()  # lr assigned as a number: into a device tensor again
        settings = tuple(tuple((key, SameObject(value) if isinstance(value, torch.Tensor) else value)
                               for key, value in group.items() if key != "params") for group in self._param_groups())
        parameters = self._step_graph_parameters if self._step_graph_parameters is not None else self.parameters()
        return tuple(parameter.requires_grad for parameter in parameters), settings

    # Hooks Lightning calls from manual_backward and optimizer.step(): host code that a replay of the captured step
    # does not run (only the capture does). GANModule's own on_before_optimizer_step only clips, refused below.
    HOST_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")

    def _param_groups(self) -> list[dict]:
        return [group for optimizer in self.trainer.optimizers for group in optimizer.param_groups]

    def check_step_graph(self) -> None:
        """Refuse, before the first step and naming the keys, what a captured training step cannot do."""
        reasons = []
        if self.nonfinite != "ignore" and self.nonfinite_check == "step":
            reasons.append("model.nonfinite_check=step reads every loss on the host: use model.nonfinite_check=deferred")
        if self.compile_networks and self.compile_mode in CUDA_GRAPH_MODES:
            reasons.append(f"model.compile_mode={self.compile_mode} makes CUDA graphs of each network itself: use "
                           "default or max-autotune-no-cudagraphs")
        if self.gradient_clip_val:
            reasons.append("model.gradient_clip_val clips in Lightning's optimizer hook, which a replay skips: set null")
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            reasons.append(f"trainer.precision={self.trainer.precision} checks its GradScaler on the host: use "
                           "bf16-mixed or 32-true")
        if self.trainer.world_size > 1:
            reasons.append(f"{self.trainer.world_size} processes: DDP's gradient all-reduce is not captured; one device only")
        for name, optimizer in zip(self.optimizer_groups(), self.trainer.optimizers, strict=False):
            if "capturable" not in optimizer.defaults:
                reasons.append(f"the {name} optimizer ({type(optimizer).__name__}) has no capturable mode: use optim=adam")
        for hook in self.HOST_STEP_HOOKS:
            owners = [type(self).__name__] if is_overridden(hook, self, parent=GANModule) else []
            owners += [type(c).__name__ for c in self.trainer.callbacks if is_overridden(hook, c, parent=pl.Callback)]
            if owners:
                reasons.append(f"{hook} of {', '.join(owners)} would run at the capture only, not at the replays")
        reasons += [reason] if (reason := self.step_graph_unsupported()) else []
        if reasons:
            raise ValueError("model.step_graph=true: " + "; ".join(reasons))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.step_graph:  # before the sanity validation: the settings are known, nothing has run yet
            self.check_step_graph()

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.step_graph:
            self._make_optimizers_capturable()  # after Lightning restored a checkpoint's optimizer states
            # step_graph_state() runs every batch: walking the module tree there costs 75 us for pix2pix, 1 % of
            # the GPU goal's 7.5 ms step; a list made once costs 3 us.
            self._step_graph_parameters = list(self.parameters())
            # Lightning calls self.training_step: the graph stands in for it while this fit runs.
            self._step_graph = TrainingStepGraph(self, type(self).training_step.__get__(self))
            self.training_step = self._step_graph
            self.guard_buffers_in_step = True

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        if "training_step" in self.__dict__:
            del self.training_step
        self._step_graph = None
        self._step_graph_parameters = None
        self.guard_buffers_in_step = False
        # The deferred guard's flag on each optimizer (under model.step_graph: memory of the graph, freed with it):
        # a later step() outside this fit must not read it.
        for optimizer in getattr(self._trainer, "optimizers", None) or []:
            inner = getattr(optimizer, "optimizer", optimizer)
            if hasattr(inner, "found_inf"):
                del inner.found_inf

    def _make_optimizers_capturable(self) -> None:
        """A captured update reads its learning rate from device memory (the schedulers fill the tensor in place)
        and keeps its step counts on the device. After Lightning restored a checkpoint, so resumed runs too."""
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                device = group["params"][0].device
                group["capturable"] = True
                group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=device).clone()
                for param in group["params"]:
                    state = optimizer.state.get(param, {})
                    if isinstance(state.get("step"), torch.Tensor):
                        state["step"] = state["step"].to(device)

    def _mark_cuda_graph_step(self) -> None:
        if self._uses_cuda_graphs():
            torch.compiler.cudagraph_mark_step_begin()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def configure_optimizers(self):
        groups = {name: list(params) for name, params in self.optimizer_groups().items()}
        self._check_every_trainable_parameter_is_optimized(groups)
        self._warn_on_batch_norm_critic()
        optimizers = [self.optimizer_factory(params) for params in groups.values()]
        self._check_clipping_possible(optimizers)
        if self.scheduler_factory is None:
            return optimizers
        # Named so that LearningRateMonitor logs lr-generator, lr-discriminator, ...
        schedulers = [
            {"scheduler": self.scheduler_factory(optimizer), "name": f"lr-{name}", "interval": "epoch"}
            for name, optimizer in zip(groups, optimizers, strict=True)
        ]
        for entry in schedulers:
            if isinstance(entry["scheduler"], CosineAnnealingLR):
                check_run_length(entry["scheduler"].T_max, "scheduler.T_max")
        if self.scheduler_monitor is None and any(
            isinstance(entry["scheduler"], ReduceLROnPlateau) for entry in schedulers
        ):
            raise ValueError(
                "scheduler=plateau watches monitor.metric, which is unset (monitor.metric=auto found no FID or "
                "LPIPS weights): set monitor.metric=val/... (and monitor.mode), or fetch the FID weights"
            )
        return optimizers, schedulers

    def _check_every_trainable_parameter_is_optimized(self, groups: dict[str, list]) -> None:
        # A module a subclass adds (a new head, a learned prior) trains only if optimizer_groups() lists it; left
        # out, it silently stays at its initial weights while its gradients pile up.
        optimized = {
            id(param)
            for params in groups.values()
            for item in params
            for param in (item["params"] if isinstance(item, dict) else [item])
        }
        missed = [name for name, param in self.named_parameters() if param.requires_grad and id(param) not in optimized]
        if missed:
            shown = ", ".join(missed[:5]) + (f" (+{len(missed) - 5} more)" if len(missed) > 5 else "")
            raise ValueError(
                f"{type(self).__name__}: parameters that require gradients are in none of optimizer_groups() "
                f"({', '.join(groups)}): {shown}. Add them to a group in optimizer_groups(), or freeze them "
                "(requires_grad_(False))"
            )

    def _warn_on_batch_norm_critic(self) -> None:
        # The WGAN-GP penalty holds each sample's gradient norm to 1, which assumes the critic scores every sample
        # on its own; batch norm mixes the samples of a batch (Gulrajani et al. leave it out of the critic).
        if not self.uses_gradient_penalty:
            return
        critics = [name for name, network in self.networks().items() if name.startswith("discriminator")
                   and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())]
        if critics:
            rank_zero_warn(
                f"loss.gan_mode=wgangp with batch norm in {', '.join(critics)}: the gradient penalty assumes each "
                "sample is scored on its own, which batch norm breaks (the WGAN-GP paper leaves it out of the "
                "critic). Set discriminator.norm=instance or none."
            )

    def _check_clipping_possible(self, optimizers: list[torch.optim.Optimizer]) -> None:
        # Under a GradScaler (16-mixed) a fused optimizer unscales the gradients inside its own step, so
        # there is no moment at which unscaled gradients could be clipped. Lightning would only fail at
        # the first step; say which keys to change before training starts.
        if not self.gradient_clip_val or self._trainer is None:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:
            return
        if any(getattr(optimizer, "_step_supports_amp_scaling", False) for optimizer in optimizers):
            raise ValueError(
                f"model.gradient_clip_val={self.gradient_clip_val} under trainer.precision={self.trainer.precision} "
                "needs optim.fused=false: a fused optimizer unscales the gradients inside its step, so they "
                "cannot be clipped after unscaling"
            )

    # ----- optimization -----
    @contextmanager
    def updating(self, optimizer) -> Iterator[None]:
        """Only ``optimizer``'s parameters require grad inside (no wasted grads for the other network)."""
        with self.toggled_optimizer(optimizer):
            yield

    def optimization_step(self, optimizer, loss: torch.Tensor, terms: dict[str, torch.Tensor] | None = None) -> None:
        """One update; ``terms`` (the named parts of ``loss``) only serve the non-finite loss message."""
        if not self.loss_is_usable(optimizer, loss, terms):
            return
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()  # clipping happens in on_before_optimizer_step

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this inside optimizer.step(), after 16-mixed's GradScaler has unscaled the
        # gradients; clipping right after manual_backward would clip the scaled ones.
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()  # the deferred non-finite check (models/nonfinite.py) comes first
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if isinstance(scheduler, ReduceLROnPlateau):
                if self.scheduler_monitor is not None and self._validated_epoch != self.current_epoch:
                    # No validation this epoch (trainer.check_val_every_n_epoch > 1): nothing new to judge; the
                    # last value would be counted again against the patience.
                    continue
                value = self.trainer.callback_metrics.get(self.scheduler_monitor or "")
                if self._metrics_epoch != self.current_epoch and (
                        self.scheduler_monitor in self._metric_names
                        or (value is None and self.metrics_every_n_epochs > 1)):
                    # A metric of the collection, computed every metrics.every_n_epochs only: not on this epoch.
                    continue
                if value is None:
                    if self.trainer.current_epoch > 0 or self.scheduler_monitor is None:
                        raise RuntimeError(
                            f"plateau scheduler watches model.scheduler_monitor={self.scheduler_monitor!r}, "
                            f"which was not logged; logged metrics: {sorted(self.trainer.callback_metrics)}"
                        )
                    continue
                scheduler.step(value)
            else:
                scheduler.step()

    # ----- validation metrics -----
    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking:
            self._validated_epoch = self.current_epoch  # read by the plateau scheduler
        every = self.metrics_every_n_epochs
        self._metrics_active = (
            self.metrics is not None
            and every > 0
            and not self.trainer.sanity_checking
            and (self.current_epoch + 1) % every == 0
        )

    def update_metrics(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        if self._metrics_active:
            self.metrics.update(fake, real)

    def on_validation_epoch_end(self) -> None:
        if self._metrics_active:
            # compute() already synchronises the metric states across processes, so every rank holds the same
            # values: sync_dist averages equal numbers (a few scalars per validation) and silences Lightning's
            # "use sync_dist=True" warning under DDP.
            values = {f"val/{name}": float(value) for name, value in self.metrics.compute().items()}
            self.log_dict(values, sync_dist=True)
            self._metrics_epoch, self._metric_names = self.current_epoch, set(values)
            self.metrics.reset()
            self._metrics_active = False

    # ----- checkpoint -----
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = {
            "version": gan_translate.__version__,
            "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": self.run_config,
        }
