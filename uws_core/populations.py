"""Build (or verify in the cache) every laptop-scale population before the notebooks run.

The notebooks build the population they need on first use, so this step is only about time: run from
``make reproduce`` and ``make test``, it trains the LoRA, ViT and Llama populations in parallel worker
processes (each population's own thread settings and seeds are unchanged, so the weights are the same as a
serial build: the caches are keyed and verified by :mod:`uws_core.cache`), and the notebooks that follow
only read them. ``python -m uws_core.populations [--workers N] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ProcessPoolExecutor

__all__ = ["BUILDERS", "build", "build_all", "main"]

log = logging.getLogger("uws.populations")


def _lora() -> str:
    from uws_core.lora_zoo import build_lora_population
    return str(build_lora_population(progress=False).root)


def _vit() -> str:
    from uws_core.vit_zoo import build_vit_populations
    return str(build_vit_populations().root)


def _llama() -> str:
    from uws_core.llama_zoo import build_llama_population
    return str(build_llama_population().root)


# longest first, so that two workers finish close together (measured serial builds: ViT ~250 s,
# LoRA ~180 s, Llama ~80 s on 2 cores)
BUILDERS = {"vit": _vit, "lora": _lora, "llama": _llama}


def build(name: str) -> tuple[str, str, float]:
    """Build one population by name; returns (name, cache directory, seconds)."""
    if name not in BUILDERS:
        raise KeyError(f"unknown population {name!r}; expected one of {sorted(BUILDERS)}")
    t0 = time.perf_counter()
    root = BUILDERS[name]()
    return name, root, time.perf_counter() - t0


def build_all(names=None, workers: int = 2) -> list[tuple[str, str, float]]:
    """Build the named populations (default all), ``workers`` at a time (1: in this process)."""
    names = list(BUILDERS) if names is None else list(names)
    for n in names:
        if n not in BUILDERS:
            raise KeyError(f"unknown population {n!r}; expected one of {sorted(BUILDERS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(names) == 1:
        return [build(n) for n in names]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(build, names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uws_core.populations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="populations built at once (default 2)")
    parser.add_argument("--only", nargs="+", choices=sorted(BUILDERS), help="build only these")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from uws_core.results import scale

    if scale() == "paper":  # the notebooks read the real checkpoints; our populations are not used
        log.info("UWS_SCALE=paper: no laptop population is needed, nothing built")
        return 0
    t0 = time.perf_counter()
    for name, root, seconds in build_all(args.only, args.workers):
        log.info("%-6s %7.1f s  %s", name, seconds, root)
    log.info("all populations ready in %.1f s", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
