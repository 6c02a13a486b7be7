"""Run by test_train_ddp.py under `python -m torch.distributed.run` (or plainly for one process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from semask.train import Trainer, config_from_dict

if __name__ == "__main__":
    config_file, result_dir = Path(sys.argv[1]), Path(sys.argv[2])
    first_grads = {}

    def keep_first_gradient(trainer, rec):  # Adam's exp_avg after step 1 = (1 - beta1) x the averaged gradient
        if rec["iter"] == 1:
            names = {id(p): n for n, p in trainer.module.named_parameters()}
            first_grads.update({names[id(p)]: s["exp_avg"].clone() for p, s in trainer.optimizer.state.items()})

    trainer = Trainer(config_from_dict(json.loads(config_file.read_text())), progress=False,
                      callbacks=[keep_first_gradient])
    with torch.no_grad():  # gamma = 0 (the original init) leaves the semantic-layer gradients at rounding noise,
        for name, p in trainer.module.named_parameters():  # which Adam amplifies to lr-sized steps of random sign
            if name.endswith(".gamma"):
                p.fill_(0.5)
    for m in trainer.module.modules():  # the semantic layers' proj_drop (0.1, not a config field): per-process masks
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    before = trainer.evaluate()  # the same initial weights everywhere: metrics must be identical
    after = trainer.fit()
    if trainer.rank == 0:
        losses = [r["loss"] for r in trainer.records if "loss" in r]
        result_dir.mkdir(parents=True, exist_ok=True)
        (result_dir / "result.json").write_text(json.dumps({"before": before, "after": after, "losses": losses,
                                                            "world": trainer.world}))
        torch.save(trainer.module.state_dict(), result_dir / "weights.pt")
        torch.save(first_grads, result_dir / "grads.pt")
    if dist.is_initialized():
        dist.destroy_process_group()
