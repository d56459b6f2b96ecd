"""`selection:` section — which classes each mini-batch trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dcs_cli.config_fields import opt, require, require_seed
from dcs_cli.selection import MODES, modes_help


@dataclass
class SelectionConfig:
    """Dynamic class selection (the paper's HF-Softmax and its alternatives)."""

    mode: Literal[MODES] = opt("full", modes_help())  # the registry's modes, see selection/__init__.py
    sample_num: int = opt(1000, "active classes per mini-batch (positives included)")
    interval: int = opt(100, "steps between index refreshes (hf, hnsw, ivf)")
    ntrees: int = opt(10, "Annoy trees in the hashing forest (hf)")
    search_k: int = opt(-1, "Annoy search_k; -1 = 20 * ntrees * neighbours kept per sample (not rerank x that)")
    build_jobs: int = opt(-1, "threads for the Annoy build; -1 = all cores")
    query_jobs: int = opt(-1, "hf/hnsw: threads querying the index; -1 = torch's thread count")
    hnsw_m: int = opt(16, "hnswlib M (hnsw)")
    hnsw_ef_construction: int = opt(100, "hnswlib ef_construction (hnsw)")
    hnsw_ef: int = opt(64, "hnswlib ef at query time (hnsw)")
    ivf_lists: int = opt(0, "ivf: inverted lists (spherical k-means centroids) the rows are grouped into; "
                            "0 = one per 100 rows")
    ivf_nprobe: int = opt(4, "ivf: lists each sample probes; all their rows are scored exactly (recall vs speed)")
    ivf_iters: int = opt(3, "ivf: k-means rounds of a full build (a rebuild of up to 1024 lists warm-starts "
                            "from the last centroids and runs one)")
    ivf_rebuild_every: int = opt(10, "ivf: every this many refreshes assigns every row afresh; the others "
                                     "re-assign only the changed rows, among their list's nearest lists")
    adaptive: bool = opt(False, "refresh on weight drift and give hard samples a larger share of sample_num")
    drift_threshold: float = opt(0.05, "adaptive: refresh when updated rows moved this much (relative)")
    seed: int = opt(0, "seed of the random fill")
    metric: Literal["auto", "dot", "angular"] = opt(
        "auto", "similarity the index ranks by; auto = dot for a softmax head, angular for cosface/arcface")
    background: bool = opt(True, "build refreshed indexes in a background thread (old index serves meanwhile); "
                                 "false = refresh in place (deterministic, stalls the step)")
    drift_check: int = opt(10, "adaptive: steps between drift measurements")
    index_dim: int = opt(64, "hf/hnsw: index a PCA projection of the weights to this many dimensions "
                             "(0 or >= d = the full rows); cuts build/refresh cost, see rerank")
    rerank: int = opt(4, "hf/hnsw: retrieve rerank x k candidates per sample and keep the k best by the "
                         "exact score against the current full rows (1 = take the index's order)")
    hnsw_rebuild_fraction: float = opt(0.25, "hnsw: a refresh builds a fresh graph when more than this "
                                             "fraction of the rows changed since the last one (re-inserting "
                                             "that many rows costs more than a build), else re-inserts them")
    tail_samples: int = opt(-1, "uniform draws among the inactive classes per step (per worker, like "
                                "sample_num); their exp-logits, scaled "
                                "up, stand for every inactive class in the softmax denominator of the rows' "
                                "gradient (margin heads need it to train under sampling); -1 = auto: "
                                "64 for cosface/arcface, 0 (off) for softmax")
    tail_near: int = opt(-1, "with the tail estimate on: each sample's next-nearest classes past the active ones "
                             "(hf, hnsw, ivf, exact, adaptive) whose exp-logits join the inactive mass whole, the "
                             "draws covering the rest; -1 = auto: 30 (0 with the estimate off)")
    random_share: float = opt(0.0, "share of the active slots past the positives that the index modes (hf, "
                                    "hnsw, ivf, exact, adaptive) leave to a uniform random fill; the backbone's "
                                    "loss then runs over the positives and the fill, the retrieved hard "
                                    "negatives training the class rows only; 0 = off (it lifts no head: README, "
                                    "ablations; with a margin head --mode random trains better)")
    hard_factor: float = opt(2.0, "adaptive: the hardest samples get up to this many times the even share "
                                  "of neighbours (the easiest get half of it)")

    def validate(self, key: str) -> None:
        require(self.sample_num > 0, f"{key}.sample_num", "must be > 0")
        require_seed(self.seed, f"{key}.seed")
        require(self.interval > 0, f"{key}.interval", "must be > 0")
        require(self.ntrees > 0, f"{key}.ntrees", "must be > 0")
        require(self.hnsw_m > 0, f"{key}.hnsw_m", "must be > 0")
        require(self.hnsw_ef_construction > 0, f"{key}.hnsw_ef_construction", "must be > 0")
        require(self.hnsw_ef > 0, f"{key}.hnsw_ef", "must be > 0")
        require(self.ivf_lists >= 0, f"{key}.ivf_lists", "must be >= 0 (0 = one list per 100 rows)")
        require(self.ivf_nprobe > 0, f"{key}.ivf_nprobe", "must be > 0")
        require(self.ivf_iters >= 0, f"{key}.ivf_iters", "must be >= 0")
        require(self.ivf_rebuild_every > 0, f"{key}.ivf_rebuild_every", "must be > 0")
        require(self.drift_threshold > 0, f"{key}.drift_threshold", "must be > 0")
        require(self.drift_check > 0, f"{key}.drift_check", "must be > 0")
        require(self.tail_samples >= -1, f"{key}.tail_samples", "must be >= 0, or -1 (auto: by the head)")
        require(self.tail_near >= -1, f"{key}.tail_near", "must be >= 0, or -1 (auto)")
        require(0 <= self.random_share <= 1, f"{key}.random_share", "must lie in [0, 1]")
        require(self.hard_factor >= 1, f"{key}.hard_factor", "must be >= 1")
        require(self.index_dim >= 0, f"{key}.index_dim", "must be >= 0 (0 = index the full rows)")
        require(self.rerank >= 1, f"{key}.rerank", "must be >= 1 (1 = no re-ranking)")
        require(0 <= self.hnsw_rebuild_fraction <= 1, f"{key}.hnsw_rebuild_fraction", "must lie in [0, 1]")
        require(self.query_jobs == -1 or self.query_jobs > 0, f"{key}.query_jobs",
                "must be -1 (torch's thread count) or > 0")
        require(self.build_jobs == -1 or self.build_jobs > 0, f"{key}.build_jobs", "must be -1 (all cores) or > 0")
