"""Build (or verify in the cache) every laptop-scale population, for every seed, before the notebooks run.

A population is named ``<kind>/seed<s>``: ``lora``, ``vit`` or ``llama`` trained from seed ``s``
(:func:`config_for`; the tasks and their splits stay the same). For ViT and Llama the base model's seed and
the fine-tunes' seeds derive from ``s``; the LoRA replicates retrain every adapter (initialisations,
minibatch order, which adapters share an A init) on the one seed-0 base, as the public adapters share
Mistral-7B (the base is cached once, :func:`uws_core.zoo.lora_zoo.trained_base`). Seed 0 is the population every notebook analyses in full; the
other seeds give each headline finding its spread (:data:`SEEDS`).

Run from ``make reproduce`` and ``make test``, it trains the populations in parallel worker processes under
the pinned numerical environment (:mod:`uws_core.linalg.numerics`; each builder fixes its own threads and seeds,
so the weights equal a serial build's), prints each population's content fingerprint
(:mod:`uws_core.weights.fingerprints`) beside the committed one, and the notebooks that follow only read them.

``python -m uws_core.zoo.populations [--workers N] [--only NAME ...] [--tiny] [--record]``
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

__all__ = ["SEEDS", "KINDS", "population_names", "config_for", "build", "build_all", "fingerprint_tiny", "main"]

log = logging.getLogger("uws.populations")

#: seeds built per kind: the LoRA population moved most between machines, so it gets three; the ViT and
#: Llama populations two (the second seed's ViT has no untrained / from-scratch models: only notebook 07
#: reads those, from seed 0).
SEEDS = {"vit": (0, 1), "lora": (0, 1, 2), "llama": (0, 1)}
KINDS = tuple(SEEDS)  # longest build first, so that two workers finish close together


def population_names(kinds=None) -> list[str]:
    """``kind/seed<s>`` for every seed of every kind (default all), longest builds first."""
    kinds = KINDS if kinds is None else kinds
    names = [f"{k}/seed{s}" for s in range(max(len(v) for v in SEEDS.values())) for k in kinds
             if s < len(SEEDS[k])]
    return names


def _parse(name: str) -> tuple[str, int]:
    kind, _, seed = name.partition("/seed")
    if kind not in SEEDS or not seed.isdigit():
        raise KeyError(f"unknown population {name!r}; expected one of {population_names()}")
    return kind, int(seed)


def config_for(kind: str, seed: int = 0, tiny: bool = False):
    """The config of population ``kind`` trained from ``seed`` (``tiny``: the seconds-sized test preset)."""
    if kind == "lora":  # the adapters' seeds only: every public adapter shares one base model too
        from uws_core.zoo.lora_zoo import LoraPopulationConfig as C
        base = C.tiny() if tiny else C()
        return dataclasses.replace(base, seed=seed)
    if kind == "vit":
        from uws_core.zoo.vit_zoo import VitZooConfig as C
        base = C.tiny() if tiny else C()
        extra = {} if seed == 0 or tiny else {"n_random_init": 0, "n_scratch": 0}
        return dataclasses.replace(base, seed=seed, **extra)
    if kind == "llama":
        from uws_core.zoo.llama_zoo import LlamaZooConfig as C
        base = C.tiny() if tiny else C()
        return dataclasses.replace(base, base_seed=seed, seed=seed)
    raise KeyError(f"unknown population kind {kind!r}; expected one of {list(SEEDS)}")


def load(kind: str, seed: int = 0, cache_dir=None, tiny: bool = False):
    """The population object of ``kind`` from ``seed`` (built now if it is not in the cache)."""
    cfg = config_for(kind, seed, tiny)
    if kind == "lora":
        from uws_core.zoo.lora_zoo import build_lora_population
        return build_lora_population(cfg, cache_dir=cache_dir, progress=False)
    if kind == "vit":
        from uws_core.zoo.vit_zoo import build_vit_populations
        return build_vit_populations(cfg, cache_dir=cache_dir)
    from uws_core.zoo.llama_zoo import build_llama_population
    return build_llama_population(cfg, cache_dir=cache_dir)


def build(name: str, cache_dir=None, tiny: bool = False) -> tuple[str, str, float, str, str]:
    """Build one population by name; returns (name, cache directory, seconds, fingerprint, profile)."""
    from uws_core.weights.fingerprints import population_fingerprint
    from uws_core.linalg.numerics import profile

    kind, seed = _parse(name)
    t0 = time.perf_counter()
    root = load(kind, seed, cache_dir, tiny).root
    return name, str(root), time.perf_counter() - t0, population_fingerprint(root), profile()


def build_all(names=None, workers: int = 2, cache_dir=None, tiny: bool = False) -> list[tuple]:
    """Build the named populations (default all), ``workers`` at a time (1: in this process)."""
    names = population_names() if names is None else list(names)
    for n in names:
        _parse(n)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(names) == 1:
        return [build(n, cache_dir, tiny) for n in names]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(build, names, [cache_dir] * len(names), [tiny] * len(names)))


def fingerprint_tiny(seed: int = 0, kinds=("llama", "lora", "vit")) -> dict[str, str]:
    """Fingerprints of the tiny presets built from ``seed`` in a temporary cache (a few seconds each):
    ``{"tiny/lora": sha256, ...}``; what tests/test_fingerprints.py builds under other CPU settings."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="uws_tiny_") as tmp:
        for kind in kinds:
            _, _, _, fp, _ = build(f"{kind}/seed{seed}", cache_dir=Path(tmp) / kind, tiny=True)
            out[f"tiny/{kind}" + (f"/seed{seed}" if seed else "")] = fp
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uws_core.zoo.populations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="populations built at once (default 2)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help=f"build only these (kinds {list(SEEDS)} or names such as lora/seed1)")
    parser.add_argument("--tiny", action="store_true", help="fingerprint the tiny test presets instead (no cache)")
    parser.add_argument("--record", action="store_true",
                        help="write the fingerprints into data_manifests/population_fingerprints.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from uws_core.weights.fingerprints import compare_with_committed, record_fingerprints
    from uws_core.linalg.numerics import kernel_report, profile
    from uws_core.weights.scale import scale

    if scale() == "paper" and not args.tiny:  # the notebooks read the real checkpoints
        log.info("UWS_SCALE=paper: no laptop population is needed, nothing built")
        return 0
    log.info("numerics: %s", kernel_report())
    t0 = time.perf_counter()
    if args.tiny:
        rows = [(name, "-", float("nan"), fp, profile()) for name, fp in fingerprint_tiny().items()]
    else:
        names = None
        if args.only:
            names = [n for o in args.only for n in (population_names([o]) if o in SEEDS else [o])]
        rows = build_all(names, args.workers)
    for name, root, seconds, fp, prof in rows:
        log.info("%-12s %7.1f s  sha256 %s  [%s]  %s", name, seconds, fp[:16],
                 compare_with_committed(name, fp, prof), root)
    if args.record:
        path = record_fingerprints({name: {"sha256": fp} for name, _, _, fp, _ in rows}, profile())
        log.info("recorded %d fingerprints in %s", len(rows), path)
    log.info("all populations ready in %.1f s", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
