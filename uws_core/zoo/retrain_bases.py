"""Retrain the shipped pretrained bases (:mod:`uws_core.zoo.pretrained`) and compare them with, or write them over,
the shipped copies: the developers' side of shipping bases.

``python -m uws_core.zoo.retrain_bases --check`` (``make bases-check``) trains the LoRA base and the Llama and ViT
bases of every seed in a temporary cache with ``UWS_TRAIN_BASES=1`` and compares each file's sha256 with the shipped copy's
(``[match]`` per base; exit status 1 on any difference): the shipped files are what the code trains, bit for bit,
under the pinned numerics. ``--write`` trains them and replaces the shipped copies (after a change meant to change a
base; the population fingerprints then change too: ``make fingerprints``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from uws_core.weights import safe_paths
from uws_core.weights.cache import MANIFEST, CacheError
from uws_core.zoo import llama_zoo, lora_zoo, vit_zoo
from uws_core.zoo.populations import SEEDS, config_for
from uws_core.zoo.pretrained import PRETRAINED_ROOT, TRAIN_ENV, shipped_names

__all__ = ["check", "write", "main"]

log = logging.getLogger("uws.pretrained")


def _trained_bases(cache_root: Path) -> dict[str, Path]:
    """Train the LoRA base and the Llama and ViT bases of every seed in ``cache_root`` (``UWS_TRAIN_BASES`` set meanwhile);
    returns ``{name: directory}``."""
    old = os.environ.get(TRAIN_ENV)
    os.environ[TRAIN_ENV] = "1"
    try:
        out = {}
        lcfg = config_for("lora", 0)
        out[f"lora_base_{lora_zoo.base_key(lcfg)}"] = lora_zoo.trained_base(lcfg, cache_root)
        for kind, zoo in (("llama", llama_zoo), ("vit", vit_zoo)):
            for seed in SEEDS[kind]:
                cfg = config_for(kind, seed)
                out[f"{kind}_base_{zoo.base_key(cfg)}"] = zoo.trained_base(cfg, cache_root)
        return out
    finally:
        if old is None:
            os.environ.pop(TRAIN_ENV, None)
        else:
            os.environ[TRAIN_ENV] = old


def _files(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())["files"]


def check(root: Path | None = None) -> bool:
    """Retrain every base in a temporary cache and compare each file's sha256 with the shipped copy's; logs one
    line per base and returns whether all match (a base that is not shipped counts as a mismatch)."""
    root = PRETRAINED_ROOT if root is None else Path(root)
    ok = True
    with tempfile.TemporaryDirectory(prefix="uws_bases_") as tmp:
        t0 = time.perf_counter()
        for name, built in _trained_bases(Path(tmp)).items():
            shipped = root / name
            if not shipped.is_dir():
                log.info("%-28s [not shipped]  (trained: %s)", name, sorted(_files(built)))
                ok = False
                continue
            same = _files(built) == _files(shipped)
            ok &= same
            log.info("%-28s [%s]", name, "match" if same else "DIFFERS")
        log.info("bases retrained and compared in %.1f s", time.perf_counter() - t0)
    return ok


def write(root: Path | None = None) -> list[str]:
    """Train every base and replace the shipped copies in ``root`` (default :data:`PRETRAINED_ROOT`); shipped bases
    of other keys are removed. Returns the names written."""
    root = PRETRAINED_ROOT if root is None else Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="uws_bases_") as tmp:
        built = _trained_bases(Path(tmp))
        for name in shipped_names(root):
            if name not in built:
                shutil.rmtree(safe_paths.contained(root, name, str(root)))
        for name, src in built.items():
            dst = safe_paths.contained(root, name, str(root))
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst)
            log.info("wrote %s", dst)
    return sorted(built)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uws_core.zoo.retrain_bases", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true", help="retrain every base and compare with the shipped files")
    group.add_argument("--write", action="store_true", help="retrain every base and replace the shipped files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.write:
            write()
            return 0
        return 0 if check() else 1
    except CacheError as err:
        log.error("%s", err)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
