"""Where and in what groups the members run: members in cache-sized blocks, one CPU device
per core with the members sharded over them, and the compile options of the programs."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from wsjax.errors import ConfigError

__all__ = ["usable_cores", "member_blocks", "member_mesh", "on_cpu", "compile_options",
           "Programs", "SPEED_OPTIONS", "speed_options"]


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def member_blocks(members: int, block: int | None):
    """(split, merge): [S, ...] <-> [blocks, size, ...], members cut into equal blocks of at
    most `block` (None: one block), the last padded with copies of the last member (merge
    drops them)."""
    blocks = -(-members // min(members if block is None else block, members))
    size = -(-members // blocks)
    pad = jnp.minimum(jnp.arange(blocks * size), members - 1)

    def split(a):
        return a[pad].reshape(blocks, size, *a.shape[1:])

    def merge(a):
        return a.reshape(blocks * size, *a.shape[2:])[:members]

    return split, merge


def member_mesh(tree):
    """The 1-D mesh that the members of `tree` are sharded over, or None when they are not."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding) and len(sharding.device_set) > 1:
            return sharding.mesh
    return None


def on_cpu(tree) -> bool:
    """Whether the arrays of `tree` live on CPU devices (for host arrays: JAX's default
    backend)."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
            return all(d.platform == "cpu" for d in leaf.devices())
    return jax.default_backend() == "cpu"


# XLA's CPU backend hands reductions and elementwise loops to its YNNPACK library by default;
# on small member-minor reductions that is slower than XLA's own loops, so only the dot
# products go to the library. Copy insertion by region analysis drops copies of loop-carried
# weights that the step loop otherwise makes every step.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
                "xla_cpu_copy_insertion_use_region_analysis": True}

# XLA's CPU backend splits large loops over the cores of the process's thread pool. Where the
# members are sharded over one CPU device per core, every core already runs a device's
# program, and a split loop would wait for a core busy with the other device's program.
_SHARDED_CPU_OPTIONS = {"xla_disable_hlo_passes": "cpu-parallel-task-assigner"}


@functools.cache
def compile_options(sharded: bool = False) -> dict | None:
    """`_CPU_OPTIONS` (and `_SHARDED_CPU_OPTIONS` for a program sharded over several CPU
    devices) where JAX's default backend is the CPU, as many of them as this jaxlib knows."""
    if jax.default_backend() != "cpu":
        return None
    wanted = [dict(_CPU_OPTIONS, **_SHARDED_CPU_OPTIONS)] if sharded else []
    for options in wanted + [dict(_CPU_OPTIONS)]:
        try:
            jax.jit(jnp.sum, compiler_options=options).lower(jnp.zeros(2)).compile()
        except Exception:  # an XLA without the option: its defaults are correct, only slower
            continue
        return options
    return None


class Programs:
    """Jitted programs, each compiled once per function, mesh and static arguments.

    `get(fn, mesh, in_specs, **static)`: `fn` with the static arguments bound, jitted with
    `compile_options` (asked on first use, so that building a trainer does not start JAX).
    With a mesh, under shard_map: arguments sharded member by member ("m" in `in_specs`) or
    replicated ("r"), each device running its own members. `traces` counts the programs
    traced, for tests that check a run compiles once.
    """

    def __init__(self):
        self._cache = {}
        self.traces = 0

    def get(self, fn, mesh, in_specs: str, **static):
        key = (fn.__name__, mesh, tuple(sorted(static.items())))
        if key not in self._cache:
            bound = functools.partial(fn, **static)

            def counted(*args):
                self.traces += 1
                return bound(*args)

            program = counted
            if mesh is not None:
                spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
                specs = tuple(spec if c == "m" else jax.sharding.PartitionSpec()
                              for c in in_specs)
                program = jax.shard_map(counted, mesh=mesh, in_specs=specs, out_specs=spec,
                                        check_vma=False)
            self._cache[key] = jax.jit(program, compiler_options=compile_options(
                mesh is not None))
        return self._cache[key]


SPEED_OPTIONS = ("eval_budget", "seed_block", "unroll")  # speed-only trainer arguments


def speed_options(**options) -> dict[str, int]:
    """The trainer's speed options (`SPEED_OPTIONS`) with the None ones (the default) left
    out; ConfigError for an unknown name or a value that is not a positive integer."""
    unknown = sorted(set(options) - set(SPEED_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown trainer option(s) {', '.join(unknown)}; known: "
                          f"{', '.join(SPEED_OPTIONS)}")
    options = {k: v for k, v in options.items() if v is not None}
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(f"trainer option {name} must be a positive integer (or None for "
                              f"the default), got {value!r}")
    return {k: int(v) for k, v in options.items()}
