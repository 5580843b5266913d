"""Zoo training speed: wsjax (fast kernels, plain vmap) against two PyTorch peers, one table.

    python benchmarks/train_table.py                      # 250 seeds, both architectures
    python benchmarks/train_table.py --seeds 32 --arch cnn --repeats 3

Rows are architectures; each row runs in one fresh process, where every trainer trains the
same number of seeds with the paper's SGD settings (momentum 0.9, learning rate and weight
decay of Table 1, summed MSE, batch 4 for the FFNN and 12 for the CNN) on the same random data,
its repeats interleaved with the other trainers' repeats. Speed is model-steps per second
(seeds x optimizer steps / second), the median over the repeats; the ratios are wsjax-fast
over each peer. wsjax-fast runs on all local devices, the seeds sharded over them (on a CPU the
process gives JAX one CPU device per core, `wsjax.sharding.use_cpu_cores`, as
`python -m experiments.zoo` does); wsjax-fast-1 is the same trainer on one device (left out
where there is only one), wsjax-plain the plain vmapped trainer on one device. The peers:

- PyTorch, one seed after another: a `torch.nn` model and `torch.optim.SGD` per seed, the way
  zoos are usually trained;
- PyTorch `torch.func` ensemble: `stack_module_state` + `vmap(grad(functional_call))` over all
  seeds, the SGD update done on the stacked tensors.

PyTorch rows need `pip install torch` (the `bench` extra); without it they are skipped with a
message. On a GPU (JAX's default backend), the PyTorch peers run on the GPU too
(`--torch-device auto`, the default), so that every ratio compares trainers on one device.
A last fresh process per architecture trains the fast wsjax zoo alone and reports its peak
resident memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

# The trainers, in the table's order: name -> a function (arch, seeds, steps, devices,
# torch device) -> runner. `make bench` (bench_train.py) generates its cases from this dict too,
# so that a trainer added here is benchmarked there.
RUNNERS: dict[str, Callable[..., Callable[[], float]]] = {
    "wsjax-fast": lambda arch, seeds, steps, devices, _: wsjax_runner(
        arch, seeds, steps, True, devices),
    "wsjax-fast-1": lambda arch, seeds, steps, _, __: wsjax_runner(arch, seeds, steps, True),
    "wsjax-general": lambda arch, seeds, steps, devices, _: wsjax_runner(
        arch, seeds, steps, True, devices, use_kernels=False),
    "wsjax-plain": lambda arch, seeds, steps, _, __: wsjax_runner(arch, seeds, steps, False),
    "torch-loop": lambda arch, seeds, steps, _, device: torch_loop_runner(
        arch, seeds, steps, device),
    "torch-func": lambda arch, seeds, steps, _, device: torch_func_runner(
        arch, seeds, steps, device),
}
TRAINERS = tuple(RUNNERS)

# Rows: the paper's two models (hand kernels; wsjax-general is the general path on them), and
# three models a user might bring, which only the general path trains.
# name -> (input shape, batch, optimizer, loss, learning rate, momentum, weight decay)
USER_ROWS = {
    "mlp": ((196,), 32, "adam", "xent", 1e-3, 0.0, 0.0),
    "lenet": ((28, 28, 1), 32, "adam", "xent", 1e-3, 0.0, 0.0),
}
ROWS = ("ffnn", "cnn", "cnn-bias", *USER_ROWS)


def row_settings(row: str) -> tuple:
    """A row's (input shape, batch, optimizer, loss, learning rate, momentum, weight decay):
    the paper's models (and the CNN with biases) with their Table 1 SGD settings."""
    if row in USER_ROWS:
        return USER_ROWS[row]
    from wsjax.models import get_arch

    spec = get_arch(row.removesuffix("-bias"))
    return (spec.input_shape, spec.batch_size, "sgd", "mse", spec.learning_rate,
            spec.momentum, spec.weight_decay)


PAPER_ROWS = ("ffnn", "cnn")


def skip_reason(name: str, arch: str, devices: int) -> str | None:
    """Why trainer `name` has no case on row `arch` with `devices` local devices, else None."""
    if name == "wsjax-fast-1" and devices == 1:
        return "one device: the same as wsjax-fast"
    if arch not in PAPER_ROWS and name in ("wsjax-general", "torch-loop"):
        return "the general path is wsjax-fast there; the loop peer is SGD only"
    return None


def table_steps(fast: int) -> dict[str, int]:
    """Optimizer steps per repeat of each trainer in this script's table, `fast` for the fast
    trainers: the slower ones run fewer, so that a repeat takes seconds (rates, not times, are
    compared there)."""
    return {"wsjax-fast": fast, "wsjax-fast-1": fast, "wsjax-general": fast,
            "wsjax-plain": max(1, fast // 4), "torch-loop": max(20, fast // 50),
            "torch-func": max(1, fast // 8)}


def flax_module(row: str):
    from wsjax.models import CNN, FFNN, MLP, LeNet

    return {"ffnn": FFNN, "cnn": CNN, "cnn-bias": lambda: CNN(use_bias=True), "mlp": MLP,
            "lenet": LeNet}[row]()


def random_data(arch: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 inputs [n, 196] or [n, 14, 14, 1] in [0, 1) and int32 labels [n]."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, *row_settings(arch)[0]), dtype=np.float32)
    return x, rng.integers(0, 10, n).astype(np.int32)


def run_stamp() -> dict:
    """Where and when a measurement ran: local devices ("2 x cpu"), JAX backend and version,
    UTC date to the minute."""
    import datetime

    import jax

    devices = jax.local_devices()
    return {"devices": f"{len(devices)} x {devices[0].device_kind}",
            "backend": jax.default_backend(), "jax": jax.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def check_n_train(archs: list[str], n_train: int) -> None:
    """ConfigError (a one-line message) where `n_train` is less than one batch of an arch."""
    from wsjax.errors import ConfigError

    for arch in archs:
        batch = row_settings(arch)[1]
        if n_train < batch:
            raise ConfigError(f"--n-train {n_train} is less than one {arch} batch ({batch}); "
                              f"give at least {batch}")


def wsjax_runner(arch: str, seeds: int, steps: int, fast: bool, devices: int = 1,
                 use_kernels: bool = True, **options) -> Callable[[], float]:
    """A function that trains `seeds` members for `steps` optimizer steps and returns seconds.

    fast: the training core (`wsjax.train.BatchedTrainer`; use_kernels: the hand kernels where
    they apply), else the plain vmapped trainer. `options`: the core's speed options.

    devices > 1: the members sharded over that many local devices (wsjax.sharding), padded to
    a multiple of it with copies as `run_zoo` does; only the `seeds` members are counted.
    """
    import jax
    import jax.numpy as jnp
    import optax

    import wsjax.train as wt
    from wsjax.sharding import seed_mesh, shard_members
    from wsjax.zoo import member_keys

    shape, batch, opt, loss, lr, momentum, decay = row_settings(arch)
    members = -(-seeds // devices) * devices
    optimizer = wt.sgd_with_weight_decay if opt == "sgd" else (
        lambda hp: optax.adam(hp.learning_rate))
    loss_fn = wt.mse_sum if loss == "mse" else wt.softmax_cross_entropy
    if fast:
        trainer = wt.BatchedTrainer(flax_module(arch), optimizer, loss_fn, batch,
                                    use_kernels=use_kernels, **options)
    else:
        trainer = wt.PlainTrainer(flax_module(arch), optimizer, loss_fn, batch)
    x, y = random_data(arch, steps * batch)
    x, y = jnp.asarray(x), jnp.asarray(y)
    hp = trainer.broadcast_hparams(wt.HParams(lr, momentum, decay), members)
    state = trainer.init(member_keys(np.minimum(np.arange(members), seeds - 1)), hp, x)
    if devices > 1:
        mesh = seed_mesh(jax.local_devices()[:devices])
        state, hp = shard_members(state, mesh), shard_members(hp, mesh)
        x, y = shard_members((x, y), mesh, replicate=True)
    epoch = [1]

    def run() -> float:
        nonlocal state
        t0 = time.perf_counter()
        state, loss, _, _ = trainer.train_epochs(state, hp, x, y, epoch[0], 1)
        jax.block_until_ready((state, loss))
        if hasattr(trainer, "block_until_ready"):
            trainer.block_until_ready()  # the next epoch's orders, drawn ahead: timed here
        epoch[0] += 1
        return time.perf_counter() - t0

    run()  # compile
    return run


def _torch_model(arch: str):
    from torch import nn

    if arch == "ffnn":
        return nn.Sequential(nn.Linear(196, 10, bias=False), nn.Sigmoid(),
                             nn.Linear(10, 10, bias=False), nn.Sigmoid(),
                             nn.Linear(10, 10, bias=False))
    if arch == "mlp":
        return nn.Sequential(nn.Linear(196, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                             nn.Linear(64, 10))
    if arch == "lenet":
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                             nn.Linear(84, 10))
    bias = arch == "cnn-bias"
    return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=bias), nn.MaxPool2d(2),
                         nn.LeakyReLU(0.01), nn.Conv2d(16, 8, 3, 2, 1, bias=bias),
                         nn.MaxPool2d(2), nn.LeakyReLU(0.01), nn.Flatten(),
                         nn.Linear(8, 10, bias=bias))


def torch_device(choice: str = "auto") -> str:
    """"cpu" or "cuda": auto is cuda where JAX's default backend is a GPU and torch sees one."""
    import torch

    if choice != "auto":
        return choice
    import jax

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _torch_setup(arch: str, seeds: int, steps: int, device: str = "cpu"):
    """(the row's settings, inputs, targets, `seeds` fresh torch models) for `steps` steps, on
    `device`. Targets: one-hot for the MSE rows, class indices for cross-entropy."""
    import torch

    spec = row_settings(arch)
    x, y = random_data(arch, steps * spec[1])
    x = torch.from_numpy(x)
    if x.ndim == 4:
        x = x.permute(0, 3, 1, 2).contiguous()
    t = torch.from_numpy(y).long()
    if spec[3] == "mse":
        t = torch.nn.functional.one_hot(t, 10).float()
    torch.manual_seed(0)
    return spec, x.to(device), t.to(device), [_torch_model(arch).to(device) for _ in range(seeds)]


def torch_loop_runner(arch: str, seeds: int, steps: int,
                      device: str = "cpu") -> Callable[[], float]:
    """One model and one torch.optim.SGD per seed, trained one seed after another."""
    import torch

    spec, x, t, models = _torch_setup(arch, seeds, steps, device)
    _, bs, _, _, lr, mom, wd = spec
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=mom, weight_decay=wd)
            for m in models]
    gen = torch.Generator().manual_seed(0)

    def run() -> float:
        t0 = time.perf_counter()
        for model, opt in zip(models, opts, strict=True):
            perm = torch.randperm(len(x), generator=gen).to(device)
            for s in range(steps):
                idx = perm[s * bs:(s + 1) * bs]
                opt.zero_grad(set_to_none=True)
                loss = ((model(x[idx]) - t[idx]) ** 2).sum()
                loss.backward()
                opt.step()
        _sync(device)
        return time.perf_counter() - t0

    run()
    return run


def torch_func_runner(arch: str, seeds: int, steps: int,
                      device: str = "cpu") -> Callable[[], float]:
    """All seeds as one torch.func ensemble: vmap(grad(functional_call)) and a stacked SGD
    (as torch.optim.SGD) or Adam (as torch.optim.Adam) update."""
    import copy

    import torch
    from torch.func import functional_call, grad, stack_module_state, vmap

    spec, x, t, models = _torch_setup(arch, seeds, steps, device)
    _, bs, opt, loss, lr, mom, wd = spec
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    names = list(params)
    momentum = {k: torch.zeros_like(v) for k, v in params.items()}
    second = {k: torch.zeros_like(v) for k, v in params.items()}
    count = [0]

    def loss_of(p, b, xb, tb):
        out = functional_call(base, (p, b), (xb,))
        if loss == "mse":
            return ((out - tb) ** 2).sum()
        return torch.nn.functional.cross_entropy(out, tb)

    grads_of = vmap(grad(loss_of))
    gen = torch.Generator().manual_seed(0)

    def run() -> float:
        t0 = time.perf_counter()
        order = torch.stack([torch.randperm(len(x), generator=gen)
                             for _ in range(seeds)]).to(device)
        with torch.no_grad():
            for s in range(steps):
                idx = order[:, s * bs:(s + 1) * bs]
                grads = grads_of(params, buffers, x[idx], t[idx])
                if opt == "adam":
                    count[0] += 1
                    c1, c2 = 1 - 0.9 ** count[0], 1 - 0.999 ** count[0]
                for k in names:
                    if opt == "adam":
                        momentum[k].mul_(0.9).add_(grads[k], alpha=0.1)
                        second[k].mul_(0.999).addcmul_(grads[k], grads[k], value=0.001)
                        denom = (second[k] / c2).sqrt_().add_(1e-8)
                        params[k].addcdiv_(momentum[k], denom, value=-lr / c1)
                        continue
                    d = grads[k].add_(params[k], alpha=wd)  # as torch.optim.SGD
                    momentum[k].mul_(mom).add_(d)
                    params[k].sub_(momentum[k], alpha=lr)
        _sync(device)
        return time.perf_counter() - t0

    run()
    return run


def measure_row(arch: str, seeds: int, steps: dict[str, int], repeats: int,
                torch_choice: str = "auto") -> dict:
    """Median model-steps/s of every available trainer, repeats interleaved."""
    import jax

    runners, skipped = {}, {}
    try:
        import torch  # noqa: F401

        device = torch_device(torch_choice)
    except ImportError:
        device = None
    cores = len(jax_devices())
    for name in TRAINERS:
        if name.startswith("torch") and device is None:
            skipped[name] = "torch is not installed (pip install torch)"
            continue
        if skip_reason(name, arch, cores) is None:
            runners[name] = RUNNERS[name](arch, seeds, steps[name], cores, device)
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(run())
    rates = {name: seeds * steps[name] / float(np.median(ts)) for name, ts in times.items()}
    return {"arch": arch, "seeds": seeds, "rates": rates, "skipped": skipped,
            "torch": _torch_version(), "torch_device": device, "devices": cores,
            "backend": jax.default_backend()}


def jax_devices() -> list:
    import jax

    return jax.local_devices()


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def measure_memory(arch: str, seeds: int, n_train: int) -> dict:
    """Peak resident memory of a process that trains a fast wsjax zoo for one epoch."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = wsjax_runner(arch, seeds, n_train // row_settings(arch)[1], True,
                       len(jax_devices()))
    run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"arch": arch, "seeds": seeds, "n_train": n_train, "peak_rss_mib": peak / 1024,
            "rss_before_jax_mib": before / 1024}


def _in_fresh_process(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark process failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict], memory: list[dict], torch_threads: int = 1) -> str:
    head = ("| model | seeds | wsjax core, all devices | wsjax core, 1 device "
            "| general path, all devices | wsjax plain (vmap) | PyTorch one seed after another "
            "| PyTorch torch.func ensemble | general / core | core / plain | core / torch.func "
            "| general / torch.func |")
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        rate = r["rates"]

        def cell(name, rate=rate):
            return f"{rate[name]:,.0f}" if name in rate else "skipped"

        def ratio(name, over="wsjax-fast", rate=rate):
            ok = name in rate and over in rate
            return f"{rate[over] / rate[name]:.2f}x" if ok else "-"

        general = "wsjax-general" if "wsjax-general" in rate else "wsjax-fast"
        lines.append(f"| {r['arch']} | {r['seeds']} | {cell('wsjax-fast')} | "
                     f"{cell('wsjax-fast-1')} | {cell(general)} | {cell('wsjax-plain')} | "
                     f"{cell('torch-loop') if r['arch'] in PAPER_ROWS else '-'} | "
                     f"{cell('torch-func')} | {ratio('wsjax-fast', general)} | "
                     f"{ratio('wsjax-plain')} | {ratio('torch-func')} | "
                     f"{ratio('torch-func', general)} |")
    backend = rows[0].get("backend", "cpu") if rows else "cpu"
    where = ("CPU device(s), one per core (wsjax.sharding.use_cpu_cores)" if backend == "cpu"
             else f"{backend.upper()} device(s)")
    notes = ["", "model-steps/s (seeds x optimizer steps / s), medians; ratios from the same "
             "process. wsjax fast, all devices: the seeds sharded over "
             f"{rows[0].get('devices', 1) if rows else 1} {where}."]
    for r in rows:
        for name, why in r["skipped"].items():
            notes.append(f"{r['arch']}: {name} skipped: {why}")
    versions = {(r["torch"], r.get("torch_device") or "cpu") for r in rows if r["torch"]}
    for version, device in sorted(versions):
        notes.append(f"PyTorch {version} on {device}"
                     + (f", {torch_threads} intra-op thread(s)" if device == "cpu" else ""))
    for m in memory:
        notes.append(f"peak memory, {m['arch']} fast zoo of {m['seeds']} seeds, one epoch of "
                     f"{m['n_train']:,} examples: {m['peak_rss_mib']:,.0f} MiB resident "
                     f"(ru_maxrss)")
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--seeds", type=int, default=250)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per repeat for the wsjax trainers (default per arch)")
    p.add_argument("--memory-train", type=int, default=24_000,
                   help="training examples of the peak-memory run (0: skip it)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="PyTorch intra-op threads (default 1: faster than 2 for these tiny "
                        "models on a busy 2-core machine)")
    p.add_argument("--torch-device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the PyTorch peers run (auto: the GPU where JAX runs on one)")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.row or a.memory:
        from wsjax.sharding import use_cpu_cores

        use_cpu_cores()  # before JAX starts: one CPU device per core
    if a.row:
        steps = json.loads(a.row)
        try:
            import torch

            torch.set_num_threads(a.torch_threads)
        except ImportError:
            pass
        print(json.dumps(measure_row(a.arch[0], a.seeds, steps, a.repeats, a.torch_device)))
        return 0
    if a.memory:
        print(json.dumps(measure_memory(a.arch[0], a.seeds, int(a.memory))))
        return 0
    if a.torch_device == "cuda":
        try:
            import torch
        except ImportError:
            p.error("--torch-device cuda: torch is not installed (pip install torch)")
        if not torch.cuda.is_available():
            p.error("--torch-device cuda: this PyTorch sees no CUDA GPU; use --torch-device "
                    "cpu or auto")
    rows, memory = [], []
    for arch in a.arch:
        fast = a.steps or {"ffnn": 1000, "cnn": 200, "cnn-bias": 100, "mlp": 200,
                           "lenet": 20}[arch]
        steps = table_steps(fast)
        rows.append(_in_fresh_process(["--arch", arch, "--seeds", str(a.seeds), "--repeats",
                                       str(a.repeats), "--torch-threads",
                                       str(a.torch_threads), "--torch-device",
                                       a.torch_device, "--row", json.dumps(steps)]))
        print(format_table(rows, memory, a.torch_threads), file=sys.stderr, flush=True)
    if a.memory_train:
        for arch in a.arch:
            memory.append(_in_fresh_process(["--arch", arch, "--seeds", str(a.seeds),
                                             "--memory", str(a.memory_train)]))
    print(format_table(rows, memory, a.torch_threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
