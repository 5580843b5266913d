"""The reproduction study's registry: CNN zoos that change one detail of the paper's setup.

The paper's CNN zoo recovers about 20 ordered initial epochs; ours, trained as SPEC.md reads
the paper, far fewer (docs/reproduction.md). Each variant changes ONE thing (or says which
two) against the baseline, the paper's settings, and is a `ZooConfig`: it trains through
`run_zoo` into a run directory of its own, which resumes when killed and which every analysis
command reads.
"""

from __future__ import annotations

import dataclasses

from wsjax.errors import ConfigError
from wsjax.zoo import ZooConfig

__all__ = ["Variant", "VARIANTS", "get_variant"]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One change against the paper-settings CNN baseline.

    Attributes:
        name: registry key (and the run directory's name).
        doc: what it changes and why it is a candidate.
        changes: `ZooConfig` fields that differ from the baseline.
    """

    name: str
    doc: str
    changes: tuple[tuple[str, object], ...] = ()

    def config(self, **zoo) -> ZooConfig:
        """The variant's ZooConfig; `zoo` sets the rest (dataset, seeds, epochs, ...)."""
        clash = sorted(set(zoo) & {k for k, _ in self.changes})
        if clash:
            raise ConfigError(f"variant {self.name} fixes {', '.join(clash)}; leave it out")
        return ZooConfig(**{"arch": "cnn", **zoo, **dict(self.changes)})


def _v(name: str, doc: str, **changes) -> Variant:
    return Variant(name, doc, tuple(sorted(changes.items())))


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    _v("baseline", "the paper's settings as SPEC.md reads them (bias-free, Kaiming normal "
       "fan-in, coupled decay 0.1 on all weights, summed MSE, floor pooling, inputs in [0, 1])"),
    _v("wd_decoupled", "weight decay applied after momentum (w -= lr*wd*w), not through the "
       "momentum buffer as in PyTorch's SGD", coupling="decoupled"),
    _v("wd_0.01", "coupled weight decay 0.01 instead of 0.1: in steady state the same balance "
       "of decay and gradient as wd_decoupled (decay times 1 - momentum)", weight_decay=0.01),
    _v("lr_0.0001", "learning rate 0.0001 instead of 0.0003: smaller steps, fewer sudden "
       "jumps, slower decay of the initialization", learning_rate=0.0001),
    _v("lr_0.000025", "learning rate 0.0003 / 12: the summed loss taking the steps of a "
       "batch-averaged loss (batch_mean_decoupled is this plus 20% more decay)",
       learning_rate=0.000025),
    _v("batch_mean", "MSE summed over classes and averaged over the batch (12x smaller "
       "gradients than the sum)", loss="batch_mean"),
    _v("batch_mean_decoupled", "TWO changes: MSE averaged over the batch (summed over "
       "classes) and decay after momentum; 12x smaller gradients, 10x weaker decay, so the "
       "baseline's balance of the two with much smaller steps", loss="batch_mean",
       coupling="decoupled"),
    _v("bias_decay_all", "biases in the model (PyTorch default init), decayed, left out of "
       "the weight vector", use_bias=True, kernels_only=True),
    _v("bias_decay_kernels", "biases in the model, weight decay on kernels only, biases left "
       "out of the weight vector", use_bias=True, kernels_only=True, decay="kernels"),
    _v("init_torch_default", "PyTorch's default init (uniform, variance 1/(3 fan_in), 6x "
       "smaller than Kaiming normal)", weight_init="torch_default"),
    _v("init_fan_out", "Kaiming normal with fan_out (4x smaller std in the first conv, 2x "
       "larger in the dense layer)", weight_init="kaiming_normal_fan_out"),
    _v("pool_ceil", "max-pool in ceil mode (7x7 -> 4x4, then 2x2 -> 1x1)", pool_ceil=True),
    _v("input_norm", "inputs standardised with MNIST mean 0.1307 / std 0.3081",
       input_norm=True),
    _v("half_data", "first half of the training images: half the steps per epoch",
       n_train=12000),
    _v("full_epochs", "epochs of 60,000 examples (5,000 steps), as on full MNIST: the "
       "24,000-image subset tiled to 60,000 and shuffled each epoch", epoch_examples=60000),
    _v("lr_0.000025_full_epochs", "TWO changes: lr_0.000025 with full_epochs",
       learning_rate=0.000025, epoch_examples=60000),
]}


def get_variant(name: str) -> Variant:
    """The registered variant `name`, or a ConfigError that lists the choices."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown variant {name!r}; choose one of "
                          f"{', '.join(VARIANTS)}") from None
