"""Run under torchrun by test_parallel_cp.py: one forward and backward of a fixed batch with the sequence split over
the ranks (context parallelism, with tensor parallelism too when asked), against the same model whole in this
process; then pretraining runs (as parallel_worker.py does them) in the same process group.

argv[1]: a JSON list. A check is {"name", "preset": a model preset (tiny-llama), "model": ModelConfig overrides,
"segments": bool (documents: document-causal attention), "ignore": "none" | "some" | "rank1" (targets set to -100:
30% of them, or every one rank 1 of 2 holds), "tp": int, "ac": bool (activation checkpointing)}; rank 0 prints one line of the worst differences over
the ranks, and every rank exits non-zero on a mismatch. A pretraining run is {"tokens": ..., "out": ..., plus
overrides of the test config}."""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist
from parallel_common import make_config

from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer
from groundup.parallel.apply_cp import apply_cp, local_positions
from groundup.parallel.env import DistEnv, build_mesh
from groundup.train import pretrain

TOL = 1e-5


def batch(config: ModelConfig, case: dict, T: int = 32, B: int = 2):
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, config.vocab_size, (B, T), generator=g)
    targets = torch.randint(0, config.vocab_size, (B, T), generator=g)
    ignore = case.get("ignore", "none")
    if ignore == "some":
        targets[torch.rand(B, T, generator=g) < 0.3] = -100
    elif ignore == "rank1":  # every target of rank 1 of 2 (positions 8..23) ignored
        targets[:, local_positions(T, 2, 1)] = -100
    kwargs = {}
    if case.get("segments"):
        kwargs["segments"] = torch.tensor([0] * 5 + [1] * 14 + [2] * 13).expand(B, T).contiguous()
    return idx, targets, kwargs


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        out[name.replace("_checkpoint_wrapped_module.", "")] = g.full_tensor() if isinstance(g, DTensor) else g
    return out


def main() -> None:
    dist.init_process_group("gloo")
    env = DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size())
    torch.set_num_threads(1)
    meshes = {}
    for case in json.loads(sys.argv[1]):
        if "tokens" in case:
            pretrain.run(make_config(**case))
            continue
        tp = case.get("tp", 1)
        cp = env.world_size // tp
        config = ModelConfig.from_name(case.get("preset", "tiny-llama"), **{
            "n_layer": 2, "n_embd": 32, "n_head": 4, "n_kv_head": 2, "vocab_size": 320, "block_size": 32,
            "dropout": 0.0, **case.get("model", {})})
        torch.manual_seed(0)
        reference = Transformer(config)
        model = copy.deepcopy(reference)
        idx, targets, kwargs = batch(config, case)
        loss_ref = reference(idx, targets, **kwargs)
        loss_ref.backward()

        if tp not in meshes:
            meshes[tp] = build_mesh(env, tp, context_parallel=cp)
        mesh = meshes[tp]
        if tp > 1:
            from groundup.parallel.apply_tp import apply_tp, to_plain_layout

            apply_tp(model, mesh["tp"])
        apply_cp(model, mesh)
        if case.get("ac"):  # backward recomputes each block, its K/V gather included
            from groundup.parallel.apply_ac import apply_ac

            apply_ac(model, "full")
        model.train()
        loss = model(idx, targets, **kwargs)
        loss.backward()
        # The mean over the sequence's ranks is the loss and gradient of the whole sequence.
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss, group=mesh["cp"].get_group())
        mean_loss /= cp
        got = grads(model)
        if tp > 1:
            got = to_plain_layout(got, config, tp)
        worst = 0.0
        for name, ref in grads(reference).items():
            g = got[name].clone()
            dist.all_reduce(g, group=mesh["cp"].get_group())
            worst = max(worst, (g / cp - ref).abs().max().item())
        loss_diff = abs(mean_loss.item() - loss_ref.item())
        # the model still runs whole in eval mode (evaluation on every rank) and gives the reference's logits
        model.eval()
        with torch.no_grad():
            logits_diff = (model(idx, **kwargs) - reference.eval()(idx, **kwargs)).abs().max().item()
        diffs = torch.tensor([loss_diff, worst, logits_diff], dtype=torch.float64)
        dist.all_reduce(diffs, op=dist.ReduceOp.MAX)  # the worst over the ranks
        if env.rank == 0:
            print(f"case {case['name']}: loss {loss_ref.item():.6f} |dloss| {diffs[0]:.2e} |dgrad| {diffs[1]:.2e} "
                  f"|dlogits| {diffs[2]:.2e}", flush=True)
        if not bool((diffs <= TOL).all()):
            raise SystemExit(f"case {case['name']}: context parallelism differs from one process")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
