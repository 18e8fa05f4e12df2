"""Measure the machine: matmul peak per dtype, memory bandwidth, host<->device copies, token shard reads,
collectives between local processes, the GPUs' topology; the hardware's state while training; cluster launch.

``groundup probe`` (:mod:`groundup.probe.run`) writes probe.json and a copy in the machine's cache
(:mod:`groundup.probe.cache`), where pretraining finds its matmul peak; ``groundup plan --hardware
probe.json`` plans with the measured figures. :mod:`groundup.probe.telemetry` samples GPUs (NVML) and the
host during training; ``groundup launch`` (:mod:`groundup.probe.launch`) writes a Slurm script.
"""
