"""Run in a subprocess by tests/test_sharding.py (XLA_FLAGS must be set before JAX starts).

    python tests/_sharding_worker.py mesh OUT SEEDS EPOCHS DEVICES
    python tests/_sharding_worker.py dist OUT SEEDS EPOCHS COORDINATOR NUM_PROCESSES PROCESS_ID
"""

from __future__ import annotations

import json
import sys


def _output_shards(config, mesh) -> list[int]:
    """Addressable shard counts of one sharded epoch's outputs (state leaves, snapshots)."""
    import jax
    import numpy as np

    from wsjax.data import load_digits
    from wsjax.sharding import shard_members
    from wsjax.zoo import _prepare_inputs, make_trainer, member_keys

    ds = _prepare_inputs(config, load_digits())
    trainer = make_trainer(config)
    keys = member_keys(np.arange(mesh.size))
    hp = trainer.broadcast_hparams(config.hparams(), mesh.size)
    state = shard_members(trainer.init(keys, hp, ds.x_train), mesh)
    hp = shard_members(hp, mesh)
    x, y = shard_members((ds.x_train[:64], ds.y_train[:64]), mesh, replicate=True)
    state, _, snaps, _ = trainer.train_epochs(state, hp, x, y, 1, 1)
    outs = [*jax.tree.leaves(state), snaps]
    return [len({s.device for s in a.addressable_shards if s.data.shape[0] == 1})
            for a in outs]


def main(argv: list[str]) -> int:
    import jax

    from wsjax.data import load_digits
    from wsjax.sharding import initialize_distributed, seed_mesh
    from wsjax.zoo import ZooConfig, run_zoo, run_zoo_sharded

    mode, out, seeds, epochs = argv[0], argv[1], int(argv[2]), int(argv[3])
    config = ZooConfig(arch="ffnn", dataset="digits", seeds=seeds, epochs=epochs)
    quiet = {"progress": False, "log": lambda *_: None}
    if mode == "mesh":
        mesh = seed_mesh(jax.devices()[: int(argv[4])])
        run_zoo(config, out, dataset=load_digits(), mesh=mesh, **quiet)
        print(json.dumps({"devices": mesh.size, "output_shards": _output_shards(config, mesh)}))
        return 0
    initialize_distributed(argv[4], int(argv[5]), int(argv[6]))
    shard = run_zoo_sharded(config, out, dataset=load_digits(), **quiet)
    print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                      "local_devices": jax.local_device_count(), "shard": str(shard)}))
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
