"""Lineage recovery on a zoo with a known tree: ours against the MoTHer-style baseline.

20 roots of the paper's FFNN trained 10 epochs on MNIST, each forked at epochs 3, 6 and 9 into
children trained 5 more epochs (on one half of the data, or on all of it at half the learning
rate); every epoch-3 child forked again at its epoch 2, and the epoch-6 child of every
even-numbered root at its epoch 3. The last 5 roots and their descendants are held out: they
were not looked at while the methods were designed. The tree is trained once into --out and
read from there afterwards.

    python -m experiments.lineage_eval --data-dir DIR --out runs/lineage-tree \\
        [--export runs/lineage-heldout] [--json lineage.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from wsjax.cli import ArgumentParser, run_cli
from wsjax.errors import ConfigError
from wsjax.evaluation import tree_identify
from wsjax.lineage import (
    Fork,
    Model,
    lineage_agreement,
    mother_lineage,
    recover_lineage,
    trajectory_lineage,
)
from wsjax.store import atomic_save_npz, atomic_write_json, read_json

ROOTS, HELD_OUT = 20, 5


def forks(roots: int = ROOTS) -> list[Fork]:
    out = []
    for i in range(roots):
        r = f"r{i}"
        out += [Fork(f"{r}.e3", r, 3, 5, half=i % 2),
                Fork(f"{r}.e6", r, 6, 5, lr_scale=0.5),
                Fork(f"{r}.e9", r, 9, 5, half=(i + 1) % 2),
                Fork(f"{r}.e3.g2", f"{r}.e3", 2, 5, half=(i + 1) % 2)]
        if i % 2 == 0:
            out.append(Fork(f"{r}.e6.g3", f"{r}.e6", 3, 5, half=0, lr_scale=0.5))
    return out


def tree(out: Path, data_dir: str | None, arch: str = "ffnn",
         seed_start: int = 0) -> tuple[list[Model], dict]:
    """The trained tree (models, truth), from --out if it was trained before."""
    if not (out / "truth.json").exists():
        from wsjax.lineage import train_tree
        from wsjax.zoo import ZooConfig

        cfg = ZooConfig(arch=arch, seeds=ROOTS, epochs=10, seed_start=seed_start)
        models, truth = train_tree(cfg, forks(), data_dir=data_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_npz(out / "tree.npz", **{f"x:{m.name}": m.x for m in models},
                        **{f"steps:{m.name}": m.steps for m in models})
        atomic_write_json(out / "config.json", dict(arch=arch, seed_start=seed_start))
        atomic_write_json(out / "truth.json", {c: list(v) for c, v in truth.items()})
    # a tree trained before its settings were recorded is the FFNN one from seed 0
    kept = read_json(out / "config.json") if (out / "config.json").exists() else \
        dict(arch="ffnn", seed_start=0)
    if kept != dict(arch=arch, seed_start=seed_start):
        raise ConfigError(f"{out} holds a tree of {kept}, not of arch={arch!r}, "
                          f"seed_start={seed_start}; give another --out")
    truth = {c: tuple(v) for c, v in read_json(out / "truth.json").items()}
    with np.load(out / "tree.npz", allow_pickle=False) as z:
        models = [Model(c, z[f"x:{c}"], z[f"steps:{c}"]) for c in truth]
    return models, truth


def export(models: list[Model], out: Path, arch: str) -> None:
    """Each model as a folder of safetensors checkpoints named by epoch, in arch's layout."""
    from safetensors.numpy import save_file

    from wsjax.identify import zoo_layout

    layout = zoo_layout({"arch": arch, "config": {"arch": arch}}, models[0].x.shape[1])
    for m in models:
        (out / m.name).mkdir(parents=True, exist_ok=True)
        for x, step in zip(m.x, m.steps, strict=True):
            save_file(layout.unflatten(x), str(out / m.name / f"epoch_{int(step):03d}.safetensors"))


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m experiments.lineage_eval", description=__doc__)
    ap.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files")
    ap.add_argument("--out", default="runs/lineage-tree", help="where the tree is kept")
    ap.add_argument("--arch", default="ffnn", choices=["ffnn", "cnn"],
                    help="the paper's model the tree is made of")
    ap.add_argument("--seed-start", type=int, default=0, help="first root's seed")
    ap.add_argument("--export", default=None, help="write the held-out models here as "
                    "folders of safetensors checkpoints (for python -m wsjax lineage)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    models, truth = tree(Path(args.out), args.data_dir, args.arch, args.seed_start)
    held = {f"r{i}" for i in range(ROOTS - HELD_OUT, ROOTS)}
    family = {m.name: m.name.split(".")[0] in held for m in models}
    parts = {"held-out (5 roots)": [m for m in models if family[m.name]],
             "design (15 roots)": [m for m in models if not family[m.name]],
             "all (20 roots)": models}
    result = {}
    print("| part | method | models | parent right | fork within 1 epoch | direction | roots |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for part, ms in parts.items():
        sub = {m.name: truth[m.name] for m in ms}
        for name, fn in (("ours", recover_lineage), ("ours, Euclidean", trajectory_lineage),
                         ("MoTHer-style", mother_lineage)):
            a = lineage_agreement(fn(ms), sub)
            result[f"{part} / {name}"] = a
            print(f"| {part} | {name} | {a['n_models']} | {a['parent_acc']:.3f} | "
                  f"{a['fork_acc']:.3f} | {a['direction_acc']:.3f} | {a['root_acc']:.3f} |")
    result["identify"] = ident = tree_identify(parts["design (15 roots)"],
                                               parts["held-out (5 roots)"])
    print(f"identify: held-out families as unseen models, {ident['unseen_accepted']}/"
          f"{ident['unseen_models']} accepted (95% upper {ident['unseen_fa_upper95']:.3f}); "
          f"their odd steps against their even ones: right model "
          f"{ident['holdout_model_acc']:.3f} of {ident['holdout_n']}, epoch error "
          f"{ident['holdout_epoch_mae']:.2f}")
    if args.export:
        export(parts["held-out (5 roots)"], Path(args.export), args.arch)
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
