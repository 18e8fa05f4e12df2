"""Scale-out training on PyTorch's own distributed engine: torch.distributed, DDP, FSDP2, DTensor TP, DCP.

The same code runs on a laptop (one process, nothing here is used) and under
``torchrun --nproc_per_node N [--nnodes M]``. Each technique is one ``apply_*`` function in its
own file; :func:`groundup.parallel.parallelize.parallelize` applies them in a fixed order. The
model file (``groundup.model.transformer``) holds no distributed code.
"""

from groundup.parallel.config import ParallelConfig
from groundup.parallel.env import DistEnv, ParallelState, init_distributed

__all__ = ["DistEnv", "ParallelConfig", "ParallelState", "init_distributed"]
