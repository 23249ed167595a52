"""Command line: ``uws spectrum DIRS... --unfolding rows --out results.json``.

For every weight key shared by a population of transformers checkpoints, or every module key shared
by a population of PEFT LoRA adapters, compute the spectrum of one centred unfolding of the stack
(N, d_out, d_in) (a plain truncated SVD of that unfolding; see :mod:`uws_core.spectral`) and write a
JSON summary: shape, N, unfolding, centring, the full explained-variance-ratio (EVR) list, the k that
reaches 50/90/99% of the variance and the cumulative EVR of the top k components.

For adapters three spectra are reported per module key:

* ``lora_A``: the A stack (N, r, d_in), unfolding "rows", centring "samples" (authors' recipe: the A_i^T
  side by side as d_in x (N r), mean column subtracted);
* ``lora_B``: the B stack (N, d_out, r), unfolding "cols", centring "samples" (authors' recipe);
* ``product``: the weight updates P_i = s_i B_i @ A_i (s_i = alpha/r of adapter i) with the given
  ``--unfolding`` and ``--center``, computed in factored form (no (N, d_out, d_in) stack is formed).

DIRS are adapter directories (``adapter_config.json``), checkpoint directories (``model.safetensors``
or ``model.safetensors.index.json``) or roots holding many of one kind; mixing kinds is refused.
``main(argv)`` never calls ``sys.exit`` on success, so it can be called from a notebook or a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from uws_core.adapters import AdapterSet, find_adapter_dirs, is_adapter_dir, parse_module_key
from uws_core.checkpoints import CheckpointSet, find_checkpoint_dirs, is_checkpoint_dir, unique_names
from uws_core.lora import lora_factor_spectra, lora_product_spectrum
from uws_core.spectral import CENTERS, UNFOLDINGS, StreamingSpectrum

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
THRESHOLDS = (0.5, 0.9, 0.99)


class CliInputError(ValueError):
    """Command-line input that names no usable population (missing path, mixed kinds, no key)."""


def find_population(paths: list[Path | str]) -> tuple[str, list[Path], list[str]]:
    """Resolve DIRS to ("adapters" | "checkpoints", directories, names).

    A path that is itself an adapter or checkpoint directory is taken as one model; any other
    directory is a root whose adapter or checkpoint subdirectories (any depth) are taken, named by
    their path relative to the root when it is the only path given.
    """
    kinds, dirs, names = set(), [], []
    for p in map(Path, paths):
        if not p.is_dir():
            raise CliInputError(f"{p} is not a directory")
        if is_adapter_dir(p):
            kinds.add("adapters")
            found = [p]
        elif is_checkpoint_dir(p):
            kinds.add("checkpoints")
            found = [p]
        else:
            ads, cks = find_adapter_dirs(p), find_checkpoint_dirs(p)
            if ads and cks:
                raise CliInputError(f"{p} holds both PEFT adapters ({ads[0]}) and checkpoints ({cks[0]}); "
                                    "pass one kind")
            if not (ads or cks):
                raise CliInputError(f"{p} is neither a PEFT adapter directory (adapter_config.json), a "
                                    "checkpoint directory (model.safetensors[.index.json]) nor a root holding them")
            kinds.add("adapters" if ads else "checkpoints")
            found = ads or cks
            if len(paths) == 1:
                names = [c.relative_to(p).as_posix() for c in found]
        dirs.extend(found)
    if len(kinds) > 1:
        raise CliInputError("DIRS mix PEFT adapters and transformers checkpoints; pass one kind")
    if len(set(d.resolve() for d in dirs)) != len(dirs):
        raise CliInputError("the same directory is listed twice in DIRS")
    return kinds.pop(), dirs, names or unique_names(dirs)


def spectrum_summary(spec, k: int) -> dict:
    """JSON-able summary of one Spectrum: shape, N, unfolding, centring, full EVR, k at 50/90/99%, top-k EVR."""
    evr = spec.evr()
    if not spec.total_variance > 0:  # e.g. untrained adapters (B = 0), or one model centred on itself
        log.warning("zero total variance (%s, %s, %s): EVR reported as zeros", spec.unfolding, spec.center,
                    list(spec.matrix_shape))
    return {
        "shape": [int(s) for s in spec.matrix_shape], "N": int(spec.n_models),
        "unfolding": spec.unfolding, "center": spec.center,
        "n_components": int(len(evr)), "total_variance": float(spec.total_variance),
        "evr": [float(v) for v in evr],
        "k_at": {str(t): int(spec.k_at(t)) for t in THRESHOLDS},
        "top_k": int(k), "top_k_evr": float(spec.top_evr(k)),
    }


def checkpoint_spectra(cs: CheckpointSet, keys: list[str], unfolding: str, center: str, k: int,
                       device=None) -> dict:
    """Per weight key, the spectrum of the chosen unfolding, streamed one model at a time."""
    out = {}
    for key in tqdm(keys, desc="weight keys", disable=None):
        acc = StreamingSpectrum(unfolding, center, shape=cs.shape(key), device=device, key=key)
        for name, w in cs.iter_key(key):
            acc.add(w, name=name)
        layer, module = parse_module_key(key)
        out[key] = {"layer": layer, "module": module, **spectrum_summary(acc.finalize(k=0), k)}
    return out


def adapter_spectra(aset: AdapterSet, keys: list[str], unfolding: str, center: str, k: int,
                    device=None) -> dict:
    """Per module key: lora_A and lora_B spectra (authors' recipe) and the factored B@A spectrum."""
    out = {}
    for key in tqdm(keys, desc="module keys", disable=None):
        b, a = aset.factors(key)  # (N, d_out, r), (N, r, d_in), as stored
        spec_a, spec_b = lora_factor_spectra(b, a, center="samples", k=0, device=device)
        # P_i = s_i B_i @ A_i, the weight update itself (s_i = alpha_i / r)
        spec_p = lora_product_spectrum(b, a, unfolding=unfolding, center=center, k=0, device=device,
                                       scaling=aset.scalings, key=key)
        d_out, r, d_in = aset.shape(key)
        layer, module = parse_module_key(key)
        out[key] = {"layer": layer, "module": module, "shape": [d_out, d_in], "rank": r, "N": len(aset),
                    "lora_A": spectrum_summary(spec_a, k), "lora_B": spectrum_summary(spec_b, k),
                    "product": {**spectrum_summary(spec_p, k), "scaled": True}}
    return out


def run_spectrum(args: argparse.Namespace) -> dict:
    """Compute the ``spectrum`` subcommand's result dictionary (no file written)."""
    kind, dirs, names = find_population(args.dirs)
    pattern = re.compile(args.keys) if args.keys else None
    if kind == "adapters":
        pop = AdapterSet.from_dirs(dirs, names=names)
        all_keys = pop.module_keys
    else:
        pop = CheckpointSet.from_dirs(dirs, names=names, strict=not args.allow_missing_keys)
        all_keys = pop.weight_keys
    keys = [key for key in all_keys if pattern is None or pattern.search(key)]
    if not keys:
        raise CliInputError(f"no key matches --keys {args.keys!r} (e.g. {all_keys[0]!r})")
    log.info("%d %s, %d keys", len(pop), kind, len(keys))
    fn = adapter_spectra if kind == "adapters" else checkpoint_spectra
    results = fn(pop, keys, args.unfolding, args.center, args.k, device=args.device)
    return {
        "format": "uws-spectrum", "format_version": FORMAT_VERSION, "source": kind,
        "n_models": len(pop), "models": pop.names, "dirs": [str(d) for d in dirs],
        "unfolding": args.unfolding, "center": args.center, "k": args.k, "keys_regex": args.keys,
        "keys": results,
    }


def write_json(obj: dict, out: Path) -> None:
    """Write JSON atomically (temporary file in the same directory, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uws", description="Spectra of weight stacks across model populations.")
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("spectrum", help="EVR spectrum of one unfolding per weight key",
                        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("dirs", nargs="+", type=Path, metavar="DIRS",
                    help="adapter or checkpoint directories, or roots holding many of one kind")
    sp.add_argument("--unfolding", required=True, choices=UNFOLDINGS,
                    help="rows: (N*d_out, d_in); cols: (N*d_in, d_out); model: (N, d_out*d_in)")
    sp.add_argument("--center", default="models", choices=CENTERS,
                    help="none; models: subtract the mean matrix (default); samples: subtract the mean sample")
    sp.add_argument("--k", type=int, default=16, help="report the cumulative EVR of the top k (default 16)")
    sp.add_argument("--keys", default=None, metavar="REGEX", help="only keys matching this regex (re.search)")
    sp.add_argument("--device", default=None, help="compute device (default: UWS_DEVICE, else cuda if present)")
    sp.add_argument("--allow-missing-keys", action="store_true",
                    help="checkpoints: analyse the keys common to all models instead of refusing differing key sets")
    sp.add_argument("--out", required=True, type=Path, help="output JSON file")
    sp.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``uws``; returns 0 on success, exits with status 1 and a message on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k < 0:
        parser.error(f"--k must be >= 0, got {args.k}")
    if args.keys:
        try:
            re.compile(args.keys)
        except re.error as exc:
            parser.error(f"--keys {args.keys!r} is not a valid regex: {exc}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_spectrum(args)
    except (ValueError, KeyError, OSError) as exc:  # loader refusals name the file and key
        log.debug("uws %s failed", args.command, exc_info=True)
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        parser.exit(1, f"uws {args.command}: error: {msg}\n")
    write_json(result, args.out)
    sys.stdout.write(f"wrote spectra of {len(result['keys'])} keys x {result['n_models']} {result['source']} "
                     f"to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
