"""Run under torchrun by the parallel tests: several pretrain or fine-tuning runs in one process group.

argv[1]: a JSON list of runs, each {"out": ..., "tokens": ..., plus overrides of the test config}.
A run may ask for {"nan_at_call": N, "nan_rank": R}: that rank's N-th forward returns a NaN loss.
A run may ask for {"expert_bias": [...]}: the MoE layers' routing bias at initialization.
A fine-tuning run is {"finetune": [METHOD, "--flag", "value", ...]}: the `groundup finetune` command line.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from parallel_common import make_config, preset_expert_bias  # noqa: E402

from groundup.model.transformer import Transformer  # noqa: E402
from groundup.train import pretrain  # noqa: E402


def main() -> None:
    for run in json.loads(sys.argv[1]):
        if "finetune" in run:
            from groundup import cli

            cli.main(["finetune", *run["finetune"]])
            continue
        nan_at = run.pop("nan_at_call", None)
        nan_rank = run.pop("nan_rank", 0)
        original = Transformer.forward
        if nan_at is not None and int(os.environ["RANK"]) == nan_rank:
            calls = {"n": 0}

            def forward(self, idx, targets=None, *, _original=original, _calls=calls, _at=nan_at, **kw):
                out = _original(self, idx, targets, **kw)
                if targets is not None and self.training:
                    _calls["n"] += 1
                    if _calls["n"] == _at:
                        return out * torch.tensor(float("nan"))
                return out

            Transformer.forward = forward
        try:
            with preset_expert_bias(run.pop("expert_bias", None)):
                pretrain.run(make_config(**run))
        finally:
            Transformer.forward = original


if __name__ == "__main__":
    main()
