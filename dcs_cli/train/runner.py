"""`dcs train` in the parent process: check everything, prepare the run folder, start the workers.

`resolve_config` makes the run's config (a checkpoint's, a YAML file, `--set` overrides and the command's
typed options), `run_train(cfg, resume=None, overwrite=False)` trains and returns a summary.

Every user mistake (missing list, empty data, a label ≥ num_classes, sample_num > classes, an unreachable
paramserver, a batch larger than a worker's share of the data) is reported here, as one line, before any
worker starts. One process runs the loop in place, on the data opened for the checks and the checkpoint
loaded for them; `dist.nproc × dist.nnodes > 1` starts one worker per device through torch's elastic
launcher; under an external `torchrun` every process runs the loop itself.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from dcs_cli import console
from dcs_cli.config import save_resolved, to_dict
from dcs_cli.errors import ConfigError, DataError, Interrupted, OutputExistsError, ServerError
from dcs_cli.fsutil import guard_output_folder, write_json_atomic
from dcs_cli.models.backbones import check_backbone_input
from dcs_cli.selection import check_adaptive
from dcs_cli.train.checkpoint import checkpoint_epoch, list_checkpoints, load_checkpoint
from dcs_cli.train.class_store import class_store_kind
from dcs_cli.train.data import build_data, steps_per_epoch
from dcs_cli.train.dist import LaunchSpec, check_gpu_per_worker, env_world_size, launch, resolve_backend
from dcs_cli.train.loop import TrainJob, train_worker
from dcs_cli.train.metrics import read_metrics
from dcs_cli.train.sharded_softmax import ADAPTIVE_UNSUPPORTED

MARKER = "config.yaml"  # written by every run: a folder holding it is a dcs run folder


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or env_world_size() > 1


def probe_paramserver(cfg, num_classes: int) -> None:
    """Fail fast (one line) when `paramserver.address` does not answer."""
    from dcs_cli.paramserver.auth import read_token
    from dcs_cli.paramserver.client import RemoteStore

    ps = cfg.paramserver
    try:
        store = RemoteStore(ps.address, "classifier", num_classes, cfg.model.feature_dim, bias=cfg.head.bias,
                            seed=cfg.optim.seed, token=read_token(ps.token_file),
                            timeout=min(ps.request_timeout, 10.0), heartbeat=False,
                            init_std=cfg.head.row_init_std(cfg.model.feature_dim), catch_up=cfg.optim.catch_up)
    except ServerError as exc:
        raise ServerError(f"paramserver.address {ps.address}: {exc}") from None
    store.close()


def check_run(cfg, world: int, report: bool = True):
    """All checks that need no worker: data, sizes, backend, paramserver. Returns the opened data; `report`
    (one process of the run) says what it goes without."""
    data = build_data(cfg, report)
    check_backbone_input(cfg.model, data.input_shape)
    if steps_per_epoch(len(data.train), cfg.data.batch_size, world) < 1:
        raise DataError(f"data.batch_size = {cfg.data.batch_size} is larger than each of the {world} worker(s)' "
                        f"share of the {len(data.train)} training samples; lower it")
    if world > 1:
        check_gpu_per_worker(resolve_backend(cfg.dist.backend), cfg.dist.nproc)
    if cfg.data.batch_size < 2:
        raise ConfigError(f"data.batch_size = {cfg.data.batch_size}: training needs at least 2 samples per "
                          "batch (batch norm); raise it")
    check_adaptive(cfg.selection)
    kind = class_store_kind(cfg, world)  # also refuses a store choice that cannot work
    if kind == "sharded" and cfg.selection.adaptive:
        raise ConfigError(ADAPTIVE_UNSUPPORTED)
    if kind == "sharded" and data.num_classes < world:
        raise ConfigError(f"{data.num_classes} classes cannot be sharded over {world} processes; use fewer "
                          "processes or dist.class_store=paramserver")
    if cfg.selection.mode != "full" and kind == "paramserver" and cfg.paramserver.address:
        probe_paramserver(cfg, data.num_classes)
    warn_sizes = report and cfg.selection.mode != "full"  # (once per run: every process checks)
    if warn_sizes and kind == "sharded" and world > 1:
        # A shard holds the positives of the whole global batch that fall in it (data.batch_size on average)
        # in about sample_num slots; an uneven step can bring half as many again, and trains them alone.
        uneven = min(cfg.data.batch_size * 3 // 2, -(-data.num_classes // world))
        if cfg.selection.sample_num < uneven:
            console.warn(f"selection.sample_num = {cfg.selection.sample_num} leaves each of the {world} shards "
                         f"little room above the ~{cfg.data.batch_size} distinct labels of the global batch that "
                         "fall in it: a step whose labels land unevenly trains that shard's positives alone, "
                         "without negatives (counted as shard_overflow in the metrics); raise sample_num to "
                         f"{uneven} or more")
    elif warn_sizes and cfg.selection.sample_num < min(cfg.data.batch_size, data.num_classes):
        console.warn(f"selection.sample_num = {cfg.selection.sample_num} is below data.batch_size = "
                     f"{cfg.data.batch_size}: a batch with more distinct labels than that fails")
    return data


def _check_resume(cfg, state: dict, num_classes: int) -> None:
    """Refuse, before the run folder is touched, a resume that the checkpoint cannot continue."""
    saved = state.get("config", {})
    trained = _saved_num_classes(state)
    if trained is not None and trained != num_classes:
        raise ConfigError(f"--resume: the checkpoint {state['_path']} has {trained:,} classes, the data now "
                          f"{num_classes:,}; resume with the data (and data.num_classes) it was trained on")
    # every model key shapes the weights except the dropout rate; so do the head's type and bias
    shaping = [("model", f.name) for f in dataclasses.fields(cfg.model) if f.name != "dropout"]
    for section, key in [*shaping, ("head", "bias"), ("head", "type")]:
        before = saved.get(section, {}).get(key)
        now = getattr(getattr(cfg, section), key)
        if before is not None and before != now:
            raise ConfigError(f"{section}.{key} = {now!r} but the checkpoint {state['_path']} was trained with "
                              f"{before!r}; resume with the same value")
    saved_mode = saved.get("selection", {}).get("mode")
    was_full = saved_mode == "full" if saved_mode else state.get("store") is None
    if was_full != (cfg.selection.mode == "full"):
        raise ConfigError(f"--resume: the checkpoint was trained in "
                          f"{'full' if was_full else 'a sampled'} mode; "
                          f"resume with the same --mode ({saved_mode or '?'})")
    store = state.get("store") or {}
    if "snapshot" in store and not (Path(state["_path"]).parent / store["snapshot"]).is_file():
        raise DataError(f"{state['_path']}: its class-store snapshot {store['snapshot']} is missing beside it")
    if "sharded" in store:
        from dcs_cli.train.shard_checkpoint import read_manifest

        read_manifest(Path(state["_path"]).parent / store["sharded"])  # one line when shards are missing
    if int(state["epoch"]) >= cfg.optim.epochs:
        raise ConfigError(f"--resume: the checkpoint finished epoch {state['epoch']} of optim.epochs = "
                          f"{cfg.optim.epochs}; raise optim.epochs to train further")


def _saved_num_classes(state: dict) -> int | None:
    """The checkpoint's class count: recorded since it was, else read off an in-process classifier's rows."""
    if state.get("num_classes") is not None:
        return int(state["num_classes"])
    for part in (state.get("classifier"), state.get("store")):
        weight = part.get("weight") if isinstance(part, dict) else None
        if weight is not None and hasattr(weight, "shape"):
            return int(weight.shape[0])
    return None


def _prepare_run_dir(run_dir: Path, overwrite: bool, data_cfg) -> None:
    """Refuse a folder holding a run that saved something; clear one whose run never saved a checkpoint
    (only a folder dcs made, holding none of the data: `guard_output_folder`)."""
    finished = (run_dir / "summary.json").exists()
    if (finished or list_checkpoints(run_dir)) and not overwrite:
        raise OutputExistsError(f"{run_dir} holds a {'finished' if finished else 'started'} run; continue it with "
                                f"dcs train --resume {run_dir}, or pass --overwrite to start afresh")
    # A folder with our config.yaml but no checkpoint is a run that stopped before saving: start afresh.
    inputs = [path for path in (data_cfg.train_list, data_cfg.train_root, data_cfg.val_list, data_cfg.rec) if path]
    guard_output_folder(run_dir, overwrite=True, marker=MARKER, inputs=inputs)


def resolve_config(config_path, overrides: list[str], resume: str | None, settings: dict | None = None):
    """The run's config: defaults ← the checkpoint's config (resume) ← the YAML file ← `--set` overrides ←
    `settings`, typed values by dotted key ({"dist.nproc": 2}; None = not given), checked like overrides.

    Resuming without `output.dir` among the overrides or settings continues in the checkpoint's own run
    folder. Returns (config, loaded checkpoint or None).
    """
    from dcs_cli.config import load_config

    if config_path is None and not resume:
        raise ConfigError("pass --config FILE (see configs/) or --resume CHECKPOINT")
    state = load_checkpoint(resume) if resume else None
    settings = {key: value for key, value in (settings or {}).items() if value is not None}
    if state is not None and "output.dir" not in settings and not _sets_output_dir(overrides):
        run_dir = _run_folder_of(state["_path"])
        if run_dir is None:
            raise ConfigError(f"--resume {resume}: the checkpoint is not in a run folder (RUN/checkpoints/); "
                              "pass --out FOLDER for the continued run")
        settings["output.dir"] = str(run_dir)
    cfg = load_config(config_path, list(overrides), base=state["config"] if state else None, values=settings)
    return cfg, state


def _run_folder_of(checkpoint: str) -> Path | None:
    """The run folder a checkpoint was saved in (RUN/checkpoints/epoch_NNN.pt, RUN holding config.yaml), or
    None for a checkpoint elsewhere (copied, renamed): its continued run needs --out."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if folder.name == "checkpoints" and (folder.parent / MARKER).is_file() else None


def _sets_output_dir(overrides: list[str]) -> bool:
    from dcs_cli.config import parse_override

    for text in overrides:
        keys, value = parse_override(text)
        if keys[:2] == ["output", "dir"] or (keys == ["output"] and isinstance(value, dict) and "dir" in value):
            return True
    return False


def run_train(cfg, resume: str | dict | None = None, overwrite: bool = False,
              stop_after_steps: int | None = None) -> dict:
    """Train as the config says; returns a summary (final val accuracy, steps, samples/s, run folder).

    `resume` is a checkpoint path (or one already loaded, which a run in this process then trains from
    in place: its optimiser state changes); `stop_after_steps` is a test hook that stops the workers after
    that global step without saving, like a kill.
    """
    external = under_torchrun()
    world = env_world_size() if external else cfg.dist.nproc * cfg.dist.nnodes
    main = int(os.environ.get("RANK", "0")) == 0 if external else cfg.dist.node_rank == 0
    data = check_run(cfg, world, report=main)
    state = None
    if resume:
        state = resume if isinstance(resume, dict) else load_checkpoint(resume)
        _check_resume(cfg, state, data.num_classes)
    d = cfg.dist
    spec = LaunchSpec(nproc=d.nproc, nnodes=d.nnodes, node_rank=d.node_rank, master_addr=d.master_addr,
                      master_port=d.master_port, rdzv_timeout=d.rdzv_timeout)
    if not external and world > 1:
        spec.check()
    run_dir = Path(cfg.output.dir)
    if main:
        resuming_here = state is not None and _run_folder_of(state["_path"]) == run_dir.resolve()
        if not resuming_here:
            _prepare_run_dir(run_dir, overwrite or cfg.output.overwrite, cfg.data)
        else:  # the run is no longer finished; its later checkpoints go with this run's first (save_checkpoint)
            later = [p.name for p in list_checkpoints(run_dir) if checkpoint_epoch(p) > int(state["epoch"])]
            if later:
                console.warn(f"resuming {run_dir} from epoch {state['epoch']}: its later checkpoints "
                             f"({', '.join(later)}) are removed when this run saves its first, and their "
                             "metrics are replaced by this run's")
            (run_dir / "summary.json").unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir)
    job = TrainJob(config=to_dict(cfg), run_dir=str(run_dir), resume=state["_path"] if state else None,
                   quiet=console.is_quiet(), stop_after_steps=stop_after_steps)
    mode = cfg.selection.mode
    console.info(f"train: mode {mode}, {data.num_classes:,} classes, {len(data.train):,} samples, "
                 f"{world} worker(s), run folder {run_dir}")
    start = time.perf_counter()
    try:
        if external or world == 1:
            result = train_worker(job, data, state)
        else:
            result = launch(train_worker, (job,), spec).get(0) or {}
    except KeyboardInterrupt:
        saved = list_checkpoints(run_dir)
        hint = (f"resume from {saved[-1].name} with: dcs train --resume {run_dir}" if saved else
                "no epoch finished, so nothing was saved; run the same command again to start afresh")
        raise Interrupted(f"training interrupted; {hint}") from None
    seconds = time.perf_counter() - start
    summary = _summary(run_dir, result, mode, world, seconds)
    if main and not result.get("stopped"):
        write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _summary(run_dir: Path, result: dict, mode: str, world: int, seconds: float) -> dict:
    rows = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    return {
        "mode": mode, "workers": world, "epochs": result.get("epoch"), "steps": result.get("step"),
        "final_loss": train[-1]["loss"] if train else None,
        "val_top1": val[-1]["acc"] if val else None,
        "samples_per_s": run_samples_per_s(train),
        "wall_seconds": seconds, "run_dir": str(run_dir), "stopped": bool(result.get("stopped")),
    }


def run_samples_per_s(train_rows: list[dict]) -> float | None:
    """The run's training throughput from its log windows: all samples over all the windows' seconds. The
    windows differ in length (`print_freq` steps, or to the epoch's end), so a plain mean of their rates
    would count a 10-step window's start-up as much as a 50-step window."""
    counted, seconds, last = 0, 0.0, 0
    for row in train_rows:
        steps, rate = row["step"] - last, row.get("samples_per_s")
        last = row["step"]
        if steps > 0 and rate:
            counted += steps
            seconds += steps / rate  # (× the batch on both sides: it cancels)
    return counted / seconds if seconds else None
