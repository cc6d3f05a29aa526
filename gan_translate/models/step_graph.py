"""``model.step_graph=true``: a whole training iteration (every D and G update of a batch) as one CUDA graph.

Why: at batch 1 a GAN step is a few hundred small kernels, and the GPU waits for the host to launch them (issue
14: an H200 busy 12 % of a 25 ms pix2pix step). ``torch.compile(mode="reduce-overhead")`` graphs each network
call on its own and leaves the losses, the optimizers and the guard launching kernel by kernel, plus the graph
trees' Python per call. Here the model's own ``training_step`` is captured once, forward, backward, the fused
Adam updates and the non-finite guard included, and each later batch is one copy of its images into the graph's
input tensors and one replay.

How, per batch shape (a last, smaller batch gets a graph of its own, or runs eagerly past ``max_graphs``):
1. ``warmup`` batches run the step eagerly, on a side stream (what CUDA graph capture wants: lazy
   initialisations, cuDNN's choices, Adam's state and torch.compile's compilation happen before it);
2. the next batch is captured, then replayed for that batch (capture records the kernels without running them);
3. every later batch: its tensors are copied into the captured inputs and the graph is replayed.

What the host did in the captured step is redone after each replay by this class: Lightning's optimizer-step
count (``trainer.global_step``), the deferred non-finite guard's record, and the logged values (the captured
step's values are the graph's outputs, logged on the batches that log). Python that is not torch work therefore
runs once only, at capture: a step must not decide anything on the host from the batch (``.item()``, Python
random numbers). What it decides from the model's host state (which parameters require grad: pix2pixHD freezes G1
for its first epochs) is watched: when ``GANModule.step_graph_state()`` changes, the graphs are dropped and the step
is warmed up and captured anew. ``GANModule.check_step_graph`` refuses the settings that do (``nonfinite_check=step``, a
GradScaler, pix2pixHD's feature encoder, ...), naming the key.

The optimizers run with ``capturable=True`` and the learning rate as a device tensor, so that the schedulers'
per-epoch changes reach the captured update.

Off CUDA (the tests) there is no graph: "capture" and "replay" run the step eagerly, and the host's work is then
redone by the same code as on the GPU, so the bookkeeping is tested on the CPU. The CPU "capture" also refuses a
step that reads a tensor's value on the host (``.item()``, ``bool(tensor)``, ``nonzero``) or makes a tensor
there (``torch.randn(shape)`` without ``device=``), naming the line: on the GPU the capture would fail there, or
freeze the host's values into the graph. And each CPU "replay" is compared op by op with the capture, as a graph
would hold it (the ops, their shapes, their numbers, the memory of the tensors from before the step): a step that
would do something else on a later batch than the replayed graph does (a branch on ``batch_idx``, a Python number
that changes, an attribute tensor assigned anew) is stopped at the first op that differs, with its line.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

log = logging.getLogger(__name__)


def _batch_key(batch) -> tuple:
    """Shapes and dtypes of the batch's tensors: one graph per distinct key."""
    if isinstance(batch, torch.Tensor):
        return (tuple(batch.shape), batch.dtype, batch.device)
    if isinstance(batch, dict):
        return tuple((key, _batch_key(value)) for key, value in batch.items())
    if isinstance(batch, (list, tuple)):
        return tuple(_batch_key(value) for value in batch)
    return ()


def _static_copy(batch):
    """The graph's input tensors: new tensors with the batch's values (non-tensors are kept as they are)."""
    return tree_map(lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) else leaf, batch)


def _copy_into(static, batch) -> None:
    for target, source in zip(tree_leaves(static), tree_leaves(batch), strict=True):
        if isinstance(target, torch.Tensor):
            target.copy_(source, non_blocking=True)


# Ops whose result the host needs (a tensor's value, or an output size that depends on values): on the GPU each
# one synchronises, which a CUDA graph capture does not allow.
HOST_READS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_dim",
              "unique_consecutive", "equal", "is_nonzero", "bincount", "repeat_interleave")
# Indexing with a boolean mask: the result's size is the mask's count (a host read on CUDA, inside the op on the CPU).
MASK_INDEXING = ("index", "index_put", "index_put_", "_index_put_impl_")


def _reads_on_host(func, args, kwargs) -> bool:
    name = func.overloadpacket.__name__
    if name == "repeat_interleave":  # a tensor of repeats (a number is decomposed before here), no output_size
        return kwargs.get("output_size") is None
    if name in MASK_INDEXING:
        return any(index is not None and index.dtype in (torch.bool, torch.uint8) for index in args[1])
    return name in HOST_READS


_capturing = False


def capturing_step() -> bool:
    """Whether a training step is being captured now (on the CPU: the eager run standing in for the capture),
    for code that checks its inputs on the host and must leave that to the eager steps then."""
    return _capturing


def autocast_without_cache(device: str) -> contextlib.AbstractContextManager:
    """For the capture: autocast's cache of cast weights must not outlive it (their memory is the graph's).
    Lightning's bf16/16-mixed autocast has the cache off already; only an autocast with the cache on is re-entered
    without it. The global switch is left alone otherwise: torch.compile guards on it, and flipping it for the
    capture alone would recompile every compiled network inside the capture (seen with 32-true)."""
    if not (torch.is_autocast_enabled(device) and torch.is_autocast_cache_enabled()):
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False)


def first_error(error: BaseException) -> str:
    """The error a failed capture started from, with the line of our or the user's code it came from. The step's
    own error is raised inside ``torch.cuda.graph``, whose exit then fails too ("capture invalidated"): Python
    keeps the first one only as the second one's context."""
    chain = [error]
    while chain[-1].__context__ is not None and chain[-1].__context__ not in chain:
        chain.append(chain[-1].__context__)
    first = chain[-1]
    frames = [f for f in traceback.extract_tb(first.__traceback__) if "/torch/" not in f.filename]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    later = f"; then: {error}" if first is not error else ""
    return f"{type(first).__name__}: {first}{where}{later}"


class SameObject:
    """Equal to another only for the same object, which it keeps alive: a bare id() of a freed tensor can be reused
    by a new one, and ``==`` on tensors would read their values (on the GPU, a synchronisation)."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SameObject) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


class HostReadError(RuntimeError):
    """A training step under model.step_graph reads a tensor's value on the host, or makes a tensor there."""


class ReplayDivergenceError(RuntimeError):
    """A training step under model.step_graph did, on a later batch, something else than the captured step."""


def _storage(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().data_ptr() if tensor.numel() else 0
    except (RuntimeError, NotImplementedError):  # no storage (meta, sparse, ...)
        return 0


# The per-op walks below are hand-written, not torch's pytree: they run for every op of a step under the checks,
# and pytree made the CPU stand-in's steps about a quarter slower.
def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


class FindHostReads(TorchDispatchMode):
    """Notes every op in ``HOST_READS`` run inside it, with the line of the model's code that caused it.

    It also writes down what a CUDA graph would hold of each op (``trace``): the op, its tensors' shapes and
    dtypes, its other arguments (numbers are baked into a graph), and, for a tensor that existed before the step
    (parameters, buffers, optimizer states, attributes), its memory (a graph reads that address at every replay).
    Given the capture's trace (``expected``), a run notes where it first does something else (``divergence``):
    what a replay on the GPU would not do.
    """

    def __init__(self, expected: list | None = None) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self.trace: list[tuple] = []
        self.expected = expected
        self.divergence: str | None = None
        self._made: set[int] = {0}  # storages allocated inside the step

    def _describe(self, value):
        """``value`` (an op's arguments) with each leaf replaced by what a graph holds of it."""
        if isinstance(value, torch.Tensor):
            storage = _storage(value)
            if storage not in self._made:
                return ("tensor from before the step", tuple(value.shape), value.dtype, storage, value.storage_offset())
            return ("tensor", tuple(value.shape), value.dtype)
        if isinstance(value, (list, tuple)):
            return tuple(self._describe(item) for item in value)
        if isinstance(value, dict):
            return tuple((key, self._describe(item)) for key, item in value.items())
        if value is None or isinstance(value, (bool, int, float, complex, str, torch.dtype, torch.device,
                                               torch.layout, torch.memory_format)):
            return repr(value)  # numbers are baked into a graph (repr: nan equals nan)
        return type(value).__name__  # an object (a profiler record, a generator): its identity is not the op's

    def _note(self, func, args, kwargs) -> None:
        fresh = func.overloadpacket.__name__ in ("lift_fresh", "lift_fresh_copy")  # torch.tensor(...): a constant
        if fresh:
            self._made.update(_storage(t) for t in _tensors(args))
        entry = (str(func), self._describe(args), self._describe(kwargs))
        if fresh:
            # A graph keeps the constant's value at capture (a small CPU tensor is even passed to kernels as a
            # number), so a value that changes per batch diverges here.
            entry += tuple(repr(t.tolist()) for t in _tensors(args) if t.numel() <= 64)
        index = len(self.trace)
        self.trace.append(entry)
        if self.expected is not None and self.divergence is None and (
                index >= len(self.expected) or self.expected[index] != entry):
            captured = self.expected[index] if index < len(self.expected) else "nothing (the capture ended there)"
            self.divergence = (f"op {index + 1} is {entry} at {self._caller()}, where the capture ran {captured}")

    def finish(self) -> None:
        """After the run: a shorter run than the capture diverges too."""
        if self.expected is not None and self.divergence is None and len(self.trace) < len(self.expected):
            self.divergence = (f"the step ended after {len(self.trace)} ops, where the capture ran "
                               f"{len(self.expected)} (op {len(self.trace) + 1}: {self.expected[len(self.trace)]})")

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        # Otherwise torch.compile steps aside while any dispatch mode is active, and model.compile's networks
        # would run eagerly in the stand-in (not what the GPU captures). A host read in a compiled network is a
        # graph break, run eagerly, so still seen here.
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _reads_on_host(func, args, kwargs):
            self.found.append((str(func), self._caller()))
        self._note(func, args, kwargs)
        inputs = {_storage(t) for t in _tensors((args, kwargs))}
        result = func(*args, **kwargs)
        self._made.update(storage for t in _tensors(result) if (storage := _storage(t)) not in inputs)
        return result

    @staticmethod
    def _caller() -> str:
        """The innermost line outside torch, Lightning and other installed packages: the model's own code."""
        frames = [f for f in traceback.extract_stack()
                  if "site-packages" not in f.filename and "/torch/" not in f.filename
                  and f.filename not in (__file__, contextlib.__file__)]
        return f"{frames[-1].filename}:{frames[-1].lineno} ({frames[-1].line})" if frames else "?"


# Factories that make a tensor on the host unless told a device. Inside a captured step on the GPU such a tensor is
# either copied to the device at capture, its values frozen into the graph (a random draw repeated every replay),
# or refused by the capture; a 0-dim constant (``torch.tensor(0.5)``) is a kernel argument and fine.
HOST_FACTORIES = {torch.tensor, torch.as_tensor, torch.empty, torch.zeros, torch.ones, torch.full, torch.arange,
                  torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm}
HOST_RANDOM = {torch.rand, torch.randn, torch.randint, torch.randperm}
# Copies of a tensor's values to the host: on CUDA a synchronisation, which a capture does not allow.
HOST_COPIES = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}


class FindHostTensors(TorchFunctionMode):
    """Notes every tensor made on the host by a factory in ``HOST_FACTORIES`` called without a device, and every
    copy to the host (``HOST_COPIES``), and where."""

    def __init__(self, found: list[tuple[str, str]]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_COPIES:  # on the CPU these do not reach the dispatcher
            self.found.append((f"Tensor.{func.__name__}", FindHostReads._caller()))
        result = func(*args, **kwargs)
        if (func in HOST_FACTORIES and kwargs.get("device") is None
                and not any(isinstance(arg, torch.Tensor) for arg in args)  # as_tensor(t): t's device
                and isinstance(result, torch.Tensor) and (result.dim() > 0 or func in HOST_RANDOM)):
            self.found.append((f"torch.{func.__name__} without device=", FindHostReads._caller()))
        return result


@dataclass
class StepRecord:
    """What the captured step did on the host, to be redone after each replay."""

    optimizer_steps: int = 0
    logged: list[tuple[dict[str, torch.Tensor], int, bool]] = field(default_factory=list)  # values, batch size, bar
    guard_updates: list[tuple[int, int]] = field(default_factory=list)  # (global step offset, optimizer index)
    batch_nonfinite: torch.Tensor | None = None


@dataclass
class CapturedStep:
    inputs: object  # the static batch
    record: StepRecord
    graph: torch.cuda.CUDAGraph | None  # None off CUDA
    trace: list | None = None  # off CUDA: what the graph would hold (FindHostReads.trace), for the replays


class TrainingStepGraph:
    """Callable that stands in for ``module.training_step`` while training (``GANModule.on_train_start``)."""

    def __init__(self, module, step, warmup: int = 3, max_graphs: int = 2) -> None:
        self.module = module
        self.step = step  # the model's training_step, bound
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.captured: dict[tuple, CapturedStep] = {}
        self.eager_batches: Counter = Counter()
        self.replays = self.captures = 0
        self.model_state: tuple | None = None  # module.step_graph_state() of the graphs in ``captured``
        self.on_cuda = module.device.type == "cuda"
        self.side_stream = torch.cuda.Stream(module.device) if self.on_cuda else None
        if not self.on_cuda:
            log.info("model.step_graph on %s: no CUDA graph; each step runs eagerly with the capture's checks and "
                     "bookkeeping (what the tests use; every op goes through the checks: about 8 %% slower than "
                     "model.step_graph=false for a 256 px pix2pix step on a 2-core CPU)", module.device)

    def __call__(self, batch, batch_idx: int) -> None:
        state = self.module.step_graph_state()
        if state != self.model_state:  # e.g. pix2pixHD's G1 unfrozen: the graphs hold the old step; capture anew
            if self.captured:
                log.info("model.step_graph: the model's host state changed; the training step is captured again")
            self.captured.clear()
            self.eager_batches.clear()
            self.model_state = state
        key = _batch_key(batch)
        entry = self.captured.get(key)
        if entry is not None:
            self._replay(entry, batch, batch_idx)
        elif self.eager_batches[key] < self.warmup or len(self.captured) >= self.max_graphs:
            self.eager_batches[key] += 1
            self._eager(batch, batch_idx)
        else:
            self.captured[key] = self._capture(batch, batch_idx)

    # ----- the three ways a batch is trained -----
    def _run_step(self, batch, batch_idx: int) -> None:
        """The model's step, with the deferred guard's snapshot and restore of the norm buffers (in the graph)."""
        with self.module.norm_buffers_guarded():
            self.step(batch, batch_idx)

    def _eager(self, batch, batch_idx: int) -> None:
        with self._on_side_stream():
            self._run_step(batch, batch_idx)

    def _capture(self, batch, batch_idx: int) -> CapturedStep:
        module = self.module
        inputs = _static_copy(batch)
        # Gradients that do not exist yet are allocated by the captured backward in the graph's own memory and
        # written (not accumulated) by each replay.
        for optimizer in module.trainer.optimizers:
            optimizer.zero_grad(set_to_none=True)
        steps_before = module.trainer.global_step
        record = StepRecord()
        module._step_record = record
        graph = torch.cuda.CUDAGraph() if self.on_cuda else None
        try:
            with self._on_side_stream(), self._capturing(graph) as host_reads:
                self._run_step(inputs, batch_idx)
            if host_reads is not None and host_reads.found:
                places = "; ".join(f"{op} at {where}" for op, where in dict.fromkeys(host_reads.found))
                raise HostReadError(
                    f"model.step_graph: {type(module).__name__}.training_step reads a tensor's value on the host or "
                    f"makes a tensor there ({len(host_reads.found)} time(s): {places}); a CUDA graph capture fails "
                    "there or freezes the value. Keep that work on the device (torch.where; device=self.device), or "
                    "train with model.step_graph=false."
                )
        except RuntimeError as error:
            if graph is None:
                raise
            raise RuntimeError(
                f"model.step_graph: {type(module).__name__}.training_step could not be captured as a CUDA graph "
                f"({first_error(error)}). Train with model.step_graph=false, or find what in the step reads a device "
                "value on the host or draws host random numbers."
            ) from error
        finally:
            module._step_record = None
        record.optimizer_steps = module.trainer.global_step - steps_before
        record.guard_updates = [(step - steps_before, index) for step, index in module._batch_guard]
        record.batch_nonfinite = module.batch_nonfinite
        if graph is not None:
            graph.replay()  # the capture only recorded this batch's work
        self._after_step(record, steps_before=None)
        log.info("model.step_graph: captured the training step of batches shaped %s", _batch_key(batch))
        self.captures += 1
        return CapturedStep(inputs, record, graph, trace=None if host_reads is None else host_reads.trace)

    def _replay(self, entry: CapturedStep, batch, batch_idx: int) -> None:
        _copy_into(entry.inputs, batch)
        steps_before = self.module.trainer.global_step
        if entry.graph is not None:
            entry.graph.replay()
        else:
            self._eager_replay(entry, batch_idx)
        self.replays += 1
        self._after_step(entry.record, steps_before)

    def _eager_replay(self, entry: CapturedStep, batch_idx: int) -> None:
        """Off CUDA: run the step again in place of the graph, write its values into the captured outputs and undo
        its host bookkeeping, which ``_after_step`` then redoes from the capture's record, as after a replay."""
        module = self.module
        progress = self._step_progress()
        saved = progress.state_dict()
        record = StepRecord()
        module._step_record = record
        try:
            with self._capturing(None, expected=entry.trace) as replay:
                self._run_step(entry.inputs, batch_idx)
            replay.finish()
        finally:
            module._step_record = None
        if replay.divergence:
            raise ReplayDivergenceError(
                f"model.step_graph: {type(module).__name__}.training_step did something else at batch {batch_idx} "
                f"than when it was captured: {replay.divergence}. A CUDA graph replays the captured step as it "
                "was, so the step must not decide on the host from what changes between batches (batch_idx, the "
                "epoch, Python numbers, tensors assigned anew). Decide on the device (torch.where), update tensors "
                "in place, add the state to step_graph_state() (a new capture when it changes), or train with "
                "model.step_graph=false."
            )
        progress.load_state_dict(saved)
        for (captured, _, _), (fresh, _, _) in zip(entry.record.logged, record.logged, strict=True):
            for name, value in captured.items():
                value.copy_(fresh[name])
        if entry.record.batch_nonfinite is not None:
            entry.record.batch_nonfinite.copy_(module.batch_nonfinite)

    # ----- the host's share of a step -----
    def _after_step(self, record: StepRecord, steps_before: int | None) -> None:
        """Redo, for a replayed batch, what the step's Python did (``steps_before`` None: the step's Python ran)."""
        module = self.module
        if steps_before is not None:
            progress = self._step_progress()
            for _ in range(record.optimizer_steps):  # what Lightning's optimizer wrapper counts per step()
                progress.increment_ready()
                progress.increment_completed()
            module._batch_guard = [(steps_before + offset, index) for offset, index in record.guard_updates]
            module.batch_nonfinite = record.batch_nonfinite
        if module.logs_this_batch():
            for values, batch_size, prog_bar in record.logged:
                module.log_dict(values, prog_bar=prog_bar, batch_size=batch_size)

    def _step_progress(self):
        # Lightning counts manual optimizer steps here (trainer.global_step is its total); there is no public
        # way to count a step that did not go through its optimizer wrapper.
        return self.module.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress

    @contextlib.contextmanager
    def _on_side_stream(self):
        if self.side_stream is None:
            yield
            return
        self.side_stream.wait_stream(torch.cuda.current_stream(self.side_stream.device))
        with torch.cuda.stream(self.side_stream):
            yield
        torch.cuda.current_stream(self.side_stream.device).wait_stream(self.side_stream)

    @contextlib.contextmanager
    def _capturing(self, graph: torch.cuda.CUDAGraph | None, expected: list | None = None):
        global _capturing
        _capturing = True
        try:
            with self._recording(graph, expected) as host_reads:
                yield host_reads
        finally:
            _capturing = False

    @contextlib.contextmanager
    def _recording(self, graph: torch.cuda.CUDAGraph | None, expected: list | None = None):
        if graph is None:  # off CUDA: the step runs eagerly, and what would break a capture is noted
            # Compiled networks run their ops partly outside the dispatcher, and not the same ones at every call
            # (their first calls, recompilations): the replays are not compared then.
            compiled = getattr(self.module, "compile_networks", False)
            with FindHostReads(None if compiled else expected) as host_reads, FindHostTensors(host_reads.found):
                yield host_reads
            return
        # thread_local: the DataLoader's pinning thread may use CUDA meanwhile.
        with torch.cuda.graph(graph, stream=self.side_stream, capture_error_mode="thread_local"), \
                autocast_without_cache(self.module.device.type):
            yield None
