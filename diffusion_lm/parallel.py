"""Device mesh, logical-axis rules, shardings and multi-host start-up.

Parameters carry logical axis names (see models/transformer.py). `config.mesh` sizes a
("data", "fsdp", "tensor") mesh, and the rules (DEFAULT_RULES, overridden by
`config.mesh.rules`) map logical names to mesh axes:
  - batches are split over (data, fsdp); fsdp also shards the large weight matrices along
    `embed` (ZeRO-3 style: each device keeps 1/fsdp of the params and optimizer state, and XLA
    all-gathers a layer's weights when it needs them);
  - tensor splits heads / mlp / vocab (Megatron style), with activations constrained to match.
A dimension a rule would shard but that the mesh axes do not divide stays whole (see
`fit_spec`), so odd vocabularies or tiny test models still run on any mesh.

Multi-host: every host runs the same program; `initialize_distributed` joins them (TPU pods,
SLURM and Open MPI are detected; `--coordinator_address/--num_processes/--process_id` cover
other clusters and the local multi-process launcher).

Example:
  >>> mesh = make_mesh(config.mesh)
  >>> rules = logical_rules(config.mesh)
  >>> with activate(mesh, rules):
  ...   state = init_fn(rng)
"""

import contextlib
import ctypes
import ctypes.util
import importlib.util
import inspect
import logging
import math
import os
import sys
from collections.abc import Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from diffusion_lm import axes
from diffusion_lm.errors import ConfigError, UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name (axes.py) → mesh axes (None = replicated).
DEFAULT_RULES = (
    (axes.BATCH, ("data", "fsdp")),
    (axes.ACT_BATCH, ("data", "fsdp")),
    (axes.ACT_LENGTH, None),
    (axes.ACT_EMBED, None),
    (axes.ACT_MLP, "tensor"),
    (axes.LENGTH, None),
    (axes.EMBED, "fsdp"),
    (axes.EMBED_OUT, None),
    (axes.EMBED_SMALL, None),
    (axes.MLP, "tensor"),
    (axes.HEADS, "tensor"),
    (axes.KV, None),
    (axes.VOCAB, "tensor"),
)

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


# ----------------------------------------------------------------------------------------------
# Rules and meshes
# ----------------------------------------------------------------------------------------------


def parse_rules(text: str) -> Rules:
  """Parses `config.mesh.rules`: "name=axis[+axis],name=,…" (empty axis = replicated).

  Example:
    >>> parse_rules("embed=,vocab=tensor,batch=data+fsdp")
    (('embed', None), ('vocab', 'tensor'), ('batch', ('data', 'fsdp')))
  """
  known = {name for name, _ in DEFAULT_RULES}
  rules = []
  for item in (part.strip() for part in text.split(",")):
    if not item:
      continue
    name, equals, axes_text = (s.strip() for s in item.partition("="))
    if not equals or name not in known:
      raise ConfigError(f"--config.mesh.rules item {item!r} is invalid; write name=axis[+axis] with a name "
                        f"from {', '.join(sorted(known))}")
    axes = tuple(a.strip() for a in axes_text.split("+") if a.strip())
    if any(axis not in MESH_AXES for axis in axes):
      raise ConfigError(f"--config.mesh.rules item {item!r} names an unknown mesh axis; use "
                        f"{', '.join(MESH_AXES)} joined by '+', or nothing for replicated")
    rules.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
  return tuple(rules)


def logical_rules(mesh_config) -> Rules:
  """DEFAULT_RULES with `mesh_config.rules` overrides applied by name (order kept).

  Example:
    >>> dict(logical_rules(ConfigDict({"rules": "embed="})))["embed"] is None
    True
  """
  overrides = dict(parse_rules(mesh_config.get("rules", "") or ""))
  return tuple((name, overrides.get(name, axes)) for name, axes in DEFAULT_RULES)


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Resolves the (data, fsdp, tensor) sizes; at most one may be -1 (= the remaining devices).

  Example:
    >>> mesh_shape(ConfigDict({"data": -1, "fsdp": 4, "tensor": 1}), 8)
    (2, 4, 1)
  """
  sizes = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"config.mesh sizes {tuple(sizes)} are invalid: use positive sizes with at most one -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"config.mesh {tuple(sizes)} cannot fill {num_devices} devices: "
                        f"{num_devices} is not divisible by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"config.mesh {tuple(sizes)} needs {math.prod(sizes)} devices but {num_devices} "
                      "are available; set one axis to -1 or match the device count")
  return tuple(sizes)


def local_mesh() -> jax.sharding.Mesh:
  """A data-parallel mesh over this process's view of the devices (inference, scoring, tools)."""
  return make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))


def strip_boxes(tree):
  """Plain arrays from logically-annotated ones (without the sharding constraint `nn.unbox` adds)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """A ("data", "fsdp", "tensor") mesh over all (or the given) devices, Auto axis types.

  Auto (not the newer default, Explicit) so that GSPMD propagates shardings from the logical
  constraints, which is what the rules are written for.

  Example:
    >>> mesh = make_mesh(ConfigDict({"data": 2, "fsdp": 4, "tensor": 1}))
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
  """Makes `mesh` current and `rules` the logical-axis rules (for activation constraints)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


# ----------------------------------------------------------------------------------------------
# Shardings
# ----------------------------------------------------------------------------------------------


def _axis_size(mesh: jax.sharding.Mesh, axes) -> int:
  if axes is None:
    return 1
  return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> PartitionSpec:
  """`spec` with, per dimension, trailing mesh axes dropped until they divide its size.

  jit needs every sharded dimension divisible by its mesh axes; a 1000-word vocabulary on
  tensor=16 (or a test model on 8 devices) keeps that dimension whole instead of failing.

  Example:
    >>> fit_spec(PartitionSpec("tensor", None), (1001, 64), mesh)   # tensor=2
    PartitionSpec(None, None)
  """
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    while axes and dim % _axis_size(mesh, axes):
      axes = axes[:-1]
    fitted.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*fitted)


def shardings_for(boxed_abstract, mesh: jax.sharding.Mesh, rules: Rules):
  """NamedShardings for a tree of logically boxed (nn.Partitioned) abstract arrays.

  Unboxed leaves (e.g. the step counter) are replicated.

  Example:
    >>> boxed = jax.eval_shape(model.init, rng, inputs)
    >>> shardings = shardings_for(boxed, mesh, logical_rules(config.mesh))
  """
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)

  def leaf_sharding(leaf) -> NamedSharding:
    if not is_box(leaf):
      return NamedSharding(mesh, PartitionSpec())
    spec = nn.logical_to_mesh_axes(tuple(leaf.get_partition_spec()), rules)
    return NamedSharding(mesh, fit_spec(spec, leaf.value.shape, mesh))
  return jax.tree.map(leaf_sharding, boxed_abstract, is_leaf=is_box)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Rows of a [batch, length] array split over (data, fsdp)."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A full copy on every device (scalars, metrics, sampled tokens every process can read)."""
  return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """How many ways a batch is split: data × fsdp."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, process_count: int | None = None,
                     flag: str = "--config.train.batch_size") -> None:
  """Raises UserError unless the global batch splits evenly over devices and processes.

  Example:
    >>> check_batch_size(64, mesh)   # fine on (8, 1, 1)
  """
  process_count = jax.process_count() if process_count is None else process_count
  parallel = data_parallel_size(mesh)
  if batch_size % parallel:
    raise UserError(f"{flag}={batch_size} is not divisible by the data-parallel size {parallel} "
                    f"(mesh data × fsdp); use a multiple of {parallel}")
  if batch_size % process_count:
    raise UserError(f"{flag}={batch_size} is not divisible by the {process_count} processes; "
                    f"use a multiple of {process_count}")


# ----------------------------------------------------------------------------------------------
# What a state costs on a mesh (train --dry_run)
# ----------------------------------------------------------------------------------------------


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _spec_text(spec: PartitionSpec) -> str:
  parts = ["-" if a is None else a if isinstance(a, str) else "+".join(a) for a in spec]
  return "(" + ", ".join(parts) + ")"


def sharding_report(abstract_state, mesh: jax.sharding.Mesh) -> dict:
  """Counts and per-device bytes of an abstract train state {params, ema_params, opt_state, …}.

  Every leaf must be a ShapeDtypeStruct carrying a NamedSharding. Returns
  {"mesh": {...}, "num_params": int, "per_device_bytes": {"params", "ema_params", "opt_state",
  "total"}, "weights": [{"name", "shape", "spec", "shard_shape"}, …]}.

  Example:
    >>> report = sharding_report(abstract_state, mesh)
    >>> print(format_report(report))
  """
  def per_device_bytes(tree) -> int:
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
               for leaf in jax.tree.leaves(tree))
  weights = [{"name": _path_name(path), "shape": list(leaf.shape), "spec": _spec_text(leaf.sharding.spec),
              "shard_shape": list(leaf.sharding.shard_shape(leaf.shape))}
             for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state["params"])[0]]
  groups = {name: per_device_bytes(abstract_state[name]) for name in ("params", "ema_params", "opt_state")
            if name in abstract_state}
  return {"mesh": dict(mesh.shape), "num_devices": mesh.size,
          "num_params": sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract_state["params"])),
          "per_device_bytes": {**groups, "total": per_device_bytes(abstract_state)},
          "weights": weights}


def _bytes_text(count: int) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if count >= size:
      return f"{count / size:.2f} {unit}"
  return f"{count} B"


def format_report(report: dict) -> str:
  """The dry-run table: mesh, parameter count, per-device bytes, then one line per weight."""
  mesh = " × ".join(f"{name}={size}" for name, size in report["mesh"].items())
  per_device = report["per_device_bytes"]
  lines = [f"mesh: {mesh} ({report['num_devices']} devices)",
           f"parameters: {report['num_params']:,}",
           "per-device bytes: " + ", ".join(f"{name} {per_device[name]:,} ({_bytes_text(per_device[name])})"
                                           for name in per_device),
           f"{'weight':<48} {'shape':<18} {'sharding':<22} per-device shape"]
  for weight in report["weights"]:
    lines.append(f"{weight['name']:<48} {str(tuple(weight['shape'])):<18} {weight['spec']:<22} "
                 f"{tuple(weight['shard_shape'])}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Multi-host
# ----------------------------------------------------------------------------------------------


def _cluster_detected() -> str | None:
  """The multi-process environment jax can configure itself from, if this looks like one."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "SLURM"  # Inside `srun` with several tasks (one process per task).
  if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "Open MPI"
  on_tpu_vm = os.path.exists("/dev/accel0") or os.path.isdir("/dev/vfio")
  if on_tpu_vm and importlib.util.find_spec("libtpu") is not None:
    return "Cloud TPU"  # jax reads the worker list from the TPU metadata (one host works too).
  return None


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, timeout_s: int = 300,
                           heartbeat_timeout_s: int = 100) -> bool:
  """Joins this process to the others (`jax.distributed.initialize`) when there are others.

  Call before anything touches a jax device. Explicit arguments win (the local multi-process
  launcher and unsupported clusters pass all three); otherwise TPU pods, SLURM and Open MPI are
  detected and jax fills in the rest; otherwise this is a single process and nothing happens.
  `timeout_s` bounds the wait for the other processes to join; a peer that dies later is noticed
  after `heartbeat_timeout_s` and the survivors exit with an error instead of hanging.
  Returns whether the distributed runtime was started.

  Example:
    >>> initialize_distributed("10.0.0.1:1234", num_processes=2, process_id=0)
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(value is not None for value in explicit):
    if None in explicit:
      raise UserError("--coordinator_address, --num_processes and --process_id go together; set all "
                      "three, or none to auto-detect TPU pods and SLURM")
    if not 0 <= process_id < num_processes:
      raise UserError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    if num_processes == 1:
      return False
    source = f"{coordinator_address} (process {process_id} of {num_processes})"
  else:
    source = _cluster_detected()
    if source is None:
      return False
  if jax.distributed.is_initialized():
    return True
  logging.info("jax.distributed.initialize via %s", source)
  # Timeout keywords are passed only where this jax has them (they were renamed over versions).
  accepted = inspect.signature(jax.distributed.initialize).parameters
  timeouts = {name: value for name, value in (("initialization_timeout", timeout_s),
                                              ("heartbeat_timeout_seconds", heartbeat_timeout_s))
              if name in accepted}
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **timeouts)
  except Exception as error:  # The runtime raises XlaRuntimeError/RuntimeError/ValueError variants.
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UserError(f"could not join the other processes via {source} within {timeout_s}s ({first_line}); "
                    "check that every process started with the same --coordinator_address and "
                    "--num_processes and that the coordinator's port is reachable") from error
  return True


def use_fake_cpu_devices(count: int) -> None:
  """Makes jax see `count` CPU devices (planning a pod's mesh anywhere); call before jax starts.

  Example:
    >>> use_fake_cpu_devices(32); len(jax.devices())
    32
  """
  jax.config.update("jax_platforms", "cpu")
  _set_cpu_device_count(count)


def use_cpu_devices(count: int) -> None:
  """Splits a CPU host into `count` XLA devices (`config.mesh.cpu_devices`); call before jax starts.

  XLA's CPU backend runs most ops of a small model on one thread at a time, so on a 2-core
  machine one device per core, each with half the batch (the data axis), keeps both cores busy
  (BENCHMARKS.md, "Training throughput"). Where jax runs on GPUs or TPUs this only changes the
  CPU backend, which the mesh does not use. 1 is jax's default; XLA_FLAGS with
  --xla_force_host_platform_device_count overrides it.

  Example:
    >>> use_cpu_devices(2); jax.devices("cpu")
    [CpuDevice(id=0), CpuDevice(id=1)]
  """
  if not isinstance(count, int) or count < 1:
    raise ConfigError(f"--config.mesh.cpu_devices={count!r} is out of range; it must be an integer >= 1")
  if count == 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return  # An explicit XLA flag (fake devices for a mesh test, a launcher's split) wins.
  _set_cpu_device_count(count)


# glibc's mallopt options (malloc.h): M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_host_memory() -> bool:
  """Keeps memory the process frees for its next allocation (glibc), so XLA's CPU buffers are reused.

  XLA's CPU client allocates each execution's temporary buffer (~100 MB per device for the default
  E2E train step) with posix_memalign. glibc serves requests that large with a fresh mmap and
  unmaps them on free, so every step faulted ~200 MB of zeroed pages back in: nearly a quarter of
  the training's CPU time went to the kernel. One malloc arena, no mmap and no trimming keep freed
  blocks in the heap: 1.3-1.4× the train steps per second on a 2-core CPU, the same numbers
  (BENCHMARKS.md, "Training throughput"). The heap then never shrinks below its peak. The binaries
  call it first thing, before jax starts its threads; returns False where the C library has no
  glibc mallopt (macOS, musl), which changes nothing.

  Example:
    >>> keep_freed_host_memory()
    True
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
  except (AttributeError, OSError, TypeError):
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
  return all([mallopt(option, value) == 1 for option, value in settings])


def _set_cpu_device_count(count: int) -> None:
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except (AttributeError, ValueError):  # A jax without the option: the XLA flag does the same.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"


def is_chief() -> bool:
  """Whether this process writes logs, metrics, samples and reports (process 0)."""
  return jax.process_index() == 0


def warn(message: str) -> None:
  """One `warning: ...` line on stderr from the chief process (the binaries' error style).

  Example:
    >>> warn("checkpoint /tmp/run/checkpoints/20 is corrupt (...)")
  """
  if is_chief():
    print(f"warning: {message}", file=sys.stderr, flush=True)


def sync_processes(name: str) -> None:
  """A barrier across processes (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def define_distributed_flags() -> None:
  """Defines --coordinator_address/--num_processes/--process_id/--distributed_timeout_s.

  Example:
    >>> define_distributed_flags()   # in a binary's run(), before cli.run(main)
  """
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for clusters jax does not "
                      "detect (TPU pods and SLURM need nothing); with --num_processes and --process_id.")
  flags.DEFINE_integer("num_processes", None, "Total processes in the job (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
  flags.DEFINE_integer("distributed_timeout_s", 300, "Seconds to wait for all processes to join.")


def initialize_from_flags() -> bool:
  """`initialize_distributed` with the values of the flags `define_distributed_flags` made."""
  values = flags.FLAGS
  return initialize_distributed(values.coordinator_address, values.num_processes, values.process_id,
                                values.distributed_timeout_s)
