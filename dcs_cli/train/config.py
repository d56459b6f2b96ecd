"""`optim:`, `dist:` and `output:` sections — optimisation, processes and outputs of `dcs train`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from dcs_cli.config_fields import opt, require, require_seed


@dataclass
class OptimConfig:
    """SGD with momentum for the backbone and the class store, and its learning-rate schedule."""

    lr: float = opt(0.1, "base learning rate (full mode; also sampled modes unless sampled_lr is set)")
    sampled_lr: float = opt(0.0, "base learning rate in the sampled modes (hf, ivf, hnsw, random, exact); 0 = use lr")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(1e-4, "L2 weight decay")
    epochs: int = opt(30, "training epochs")
    schedule: Literal["multistep", "cosine"] = opt("multistep", "multistep (the original) or warmup + cosine")
    lr_steps: list[int] = opt([21, 27], "multistep: epochs at which the LR is multiplied by lr_gamma")
    lr_gamma: float = opt(0.1, "multistep: LR factor at each step")
    warmup_epochs: float = opt(0.0, "cosine: linear warm-up length in epochs")
    amp: bool = opt(True, "mixed precision (autocast) when training on a GPU")
    seed: int = opt(0, "seed of initialisation and data order")
    catch_up: bool = opt(True, "sampled modes: a class row that sat out steps first catches up their momentum and "
                               "weight decay when next read or selected (what full SGD does on a zero gradient), so "
                               "a step computes with the rows dense SGD would hold; false = the row's weight and "
                               "momentum stay frozen between its selections")
    momentum_dtype: Literal["float32", "bfloat16"] = opt(
        "float32", "storage of the class rows' momentum in the sharded class store: bfloat16 halves it (the "
                   "10M-class option; each update is still computed in float32 and stored rounded); a "
                   "non-float32 choice in one process also uses the sharded store (one shard)")

    def base_lr(self, mode: str) -> float:
        """The schedule's starting LR for a selection mode: `sampled_lr` in sampled modes when set."""
        return self.sampled_lr if mode != "full" and self.sampled_lr > 0 else self.lr

    def validate(self, key: str) -> None:
        require(0 < self.lr < math.inf, f"{key}.lr", "must be > 0 and finite")
        require(0 <= self.sampled_lr < math.inf, f"{key}.sampled_lr", "must be >= 0 and finite (0 = use lr)")
        require(all(s > 0 for s in self.lr_steps), f"{key}.lr_steps", "must be epochs > 0")
        require(0 <= self.momentum < 1, f"{key}.momentum", "must be in [0, 1)")
        require(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        require(self.epochs > 0, f"{key}.epochs", "must be > 0")
        require(self.lr_gamma > 0, f"{key}.lr_gamma", "must be > 0")
        require(self.warmup_epochs >= 0, f"{key}.warmup_epochs", "must be >= 0")
        require_seed(self.seed, f"{key}.seed")


@dataclass
class DistConfig:
    """Process layout; one worker per device."""

    nproc: int = opt(1, "workers per node (one per device)")
    nnodes: int = opt(1, "number of nodes")
    node_rank: int = opt(0, "rank of this node")
    master_addr: str = opt("127.0.0.1", "address of node 0")
    master_port: int = opt(29500, "port on node 0 for the rendezvous; 0 = pick a free one")
    backend: Literal["auto", "gloo", "nccl"] = opt("auto", "auto = nccl with CUDA, gloo otherwise")
    threads: int = opt(0, "CPU threads per worker for torch ops (torch.set_num_threads); 0 = torch's default "
                          "(one per core; launched workers get cores / nproc, on GPUs too)")
    rdzv_timeout: int = opt(300, "seconds to wait for every node to join the rendezvous before failing")
    class_store: Literal["auto", "sharded", "paramserver"] = opt(
        "auto", "where the classifier rows live: sharded = model parallel, rank r of W owns 1/W of the classes "
                "(weights + momentum) and every mode, full included, scores the all-gathered batch against its "
                "own shard; paramserver = one dcs paramserver shared by every rank (paramserver.address, or one "
                "that rank 0 starts; full mode then replicates the classifier under DDP); auto = sharded under "
                "several processes unless paramserver.address is set, the in-process store in one process")

    def validate(self, key: str) -> None:
        require(self.nproc > 0, f"{key}.nproc", "must be > 0")
        require(self.nnodes > 0, f"{key}.nnodes", "must be > 0")
        require(0 <= self.node_rank < self.nnodes, f"{key}.node_rank", "must be in [0, nnodes)")
        require(0 <= self.master_port < 65536, f"{key}.master_port", "must be a port number")
        require(self.threads >= 0, f"{key}.threads", "must be >= 0 (0 = default)")
        require(self.rdzv_timeout > 0, f"{key}.rdzv_timeout", "must be > 0")


@dataclass
class OutputConfig:
    """Where a run writes and how often it reports."""

    dir: str = opt("runs/default", "output folder (config.yaml, metrics.jsonl, curves.png, checkpoints)")
    print_freq: int = opt(50, "steps between log lines")
    keep_checkpoints: int = opt(3, "most recent epoch checkpoints to keep; 0 = all")
    overwrite: bool = opt(False, "replace a finished run in the same folder")

    def validate(self, key: str) -> None:
        require(bool(str(self.dir).strip()), f"{key}.dir", "must name the run folder")
        require(self.print_freq > 0, f"{key}.print_freq", "must be > 0")
        require(self.keep_checkpoints >= 0, f"{key}.keep_checkpoints", "must be >= 0")
