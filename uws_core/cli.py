"""Command line: ``uws spectrum``, ``uws spectra``, ``uws report``, ``uws download`` and ``uws manifest lock``.

* ``uws spectrum DIRS... --unfolding rows --out results.json``: one JSON for a population (below), and a
  short table per module type on the terminal (:func:`spectrum_table`);
* ``uws spectra POPULATION_DIR --out DIR [--resume]``: the same spectra streamed key by key into a
  directory, resumable after an interruption (:mod:`uws_core.weights.population_spectra`);
* ``uws report DIR``: ``DIR/report.md`` and ``report.html`` for a ``uws spectra`` directory: table, scree and
  cumulative plots beside the Marchenko-Pastur null, settings and recipe (:mod:`uws_core.report.spectra_report`);
* ``uws download MANIFEST [--limit N] [--only REGEX] [--dest DIR]``: pinned, checksum-verified downloads
  of a manifest's entries (:mod:`uws_core.weights.hub`); ``uws manifest lock MANIFEST`` pins their revisions and
  checksums (needs network).

``uws spectrum``: for every weight key shared by a population of transformers checkpoints, or every module key shared
by a population of PEFT LoRA adapters, compute the spectrum of one centred unfolding of the stack
(N, d_out, d_in) (a plain truncated SVD of that unfolding; see :mod:`uws_core.linalg.spectral`) and write a
JSON summary: shape, N, unfolding, centring, the full explained-variance-ratio (EVR) list, the k that
reaches 50/90/99% of the variance and the cumulative EVR of the top k components.

For adapters three spectra are reported per module key:

* ``lora_A``: the A stack (N, r, d_in), unfolding "rows", centring "samples" (authors' recipe: the A_i^T
  side by side as d_in x (N r), mean column subtracted);
* ``lora_B``: the B stack (N, d_out, r), unfolding "cols", centring "samples" (authors' recipe);
* ``product``: the weight updates P_i = s_i B_i @ A_i (s_i = alpha/r of adapter i) with the given
  ``--unfolding`` and ``--center``, computed in factored form (no (N, d_out, d_in) stack is formed).

``--recipe NAME`` replaces the generic unfolding by a peer's recipe (:mod:`uws_core.linalg.recipes`): authors-pca
(toshi2k2/unisub run_pca.py: mean matrix removed, rows stacked; A (N r, d_in), B (N d_out, r); checkpoints
too), authors-subspace (unisub NLG/get_subspaceadapter.py: the lora_A / lora_B views above) or replication
(cahlen/universal-subspace-stress-test analyze.py: B@A unscaled, model axis, with its null). ``--scaling``
chooses alpha/r or none for the product. The output's ``recipe`` field names what was computed.

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
from pathlib import Path

from uws_core.experiments.task_eval_cli import add_evaluate_parser, run_evaluate
from uws_core.weights import dtype_policy, safe_paths
from uws_core.linalg import numerics
from uws_core.linalg.conventions import CENTERS, DEFAULT_SCALING, RECIPES, SCALINGS, UNFOLDINGS
# weight readers and solvers (torch) are imported in the commands that use them: --help, lock, download skip torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CliInputError(ValueError):
    """Command-line input that names no usable population (missing path, mixed kinds, no key)."""


def find_population(paths: list[Path | str]) -> tuple[str, list[Path], list[str]]:
    """Resolve DIRS to ("adapters" | "checkpoints", directories, names).

    A path that is itself an adapter or checkpoint directory is taken as one model; any other
    directory is a root whose adapter or checkpoint subdirectories (any depth) are taken, named by
    their path relative to the root when it is the only path given.
    """
    from uws_core.weights.adapters import find_adapter_dirs, is_adapter_dir
    from uws_core.weights.checkpoints import find_checkpoint_dirs, is_checkpoint_dir, unique_names
    from uws_core.weights.kohya import find_kohya_dirs, is_kohya_lora

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
        elif is_kohya_lora(p):
            kinds.add("kohya")
            found = [p]
        else:
            ads, cks = find_adapter_dirs(p), find_checkpoint_dirs(p)
            kos = [] if (ads or cks) else find_kohya_dirs(p)
            if ads and cks:
                raise CliInputError(f"{p} holds both PEFT adapters ({ads[0]}) and checkpoints ({cks[0]}); "
                                    "pass one kind")
            if not (ads or cks or kos):
                raise CliInputError(f"{p} is neither a PEFT adapter directory (adapter_config.json), a "
                                    "checkpoint directory (model.safetensors[.index.json]) nor a root holding them")
            kinds.add("adapters" if ads else "checkpoints" if cks else "kohya")
            found = ads or cks or kos
            if len(paths) == 1:
                names = [c.relative_to(p).as_posix() for c in found]
        dirs.extend(found)
    if len(kinds) > 1:
        raise CliInputError("DIRS mix PEFT adapters and transformers checkpoints; pass one kind")
    if len(set(d.resolve() for d in dirs)) != len(dirs):
        raise CliInputError("the same directory is listed twice in DIRS")
    return kinds.pop(), dirs, names or unique_names(dirs)


def run_spectrum(args: argparse.Namespace) -> dict:
    """Compute the ``spectrum`` subcommand's result dictionary (no file written)."""
    if args.recipe is None and args.unfolding is None:
        raise CliInputError("give --unfolding (with --center) or --recipe")
    if args.recipe is not None and args.unfolding is not None:
        raise CliInputError("--recipe fixes the unfolding and centring; do not also give --unfolding")
    from uws_core.linalg import recipes
    from uws_core.weights import recipe_runs
    from uws_core.weights.adapters import AdapterSet
    from uws_core.weights.checkpoints import CheckpointSet
    from uws_core.weights.key_spectra import adapter_spectra, checkpoint_spectra, spectrum_summary

    scaling = args.scaling or DEFAULT_SCALING[args.recipe]
    kind, dirs, names = find_population(args.dirs)
    if kind == "kohya":
        raise CliInputError("kohya LoRAs (ranks differ per adapter): use `uws spectra DIRS --out DIR`")
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
    check_memory(pop, kind, keys, args.unfolding, args.center, memory_limit(args))
    log.info("%d %s, %d keys", len(pop), kind, len(keys))
    if args.recipe is not None:
        results = recipe_runs.recipe_spectra(pop, kind, keys, args.recipe, scaling, args.k, spectrum_summary,
                                             checkpoint_spectra, device=args.device)
        extra = {"recipe": args.recipe, "recipe_source": recipes.SOURCES[args.recipe],
                 **({"scaling": scaling} if args.recipe == "replication" else {})}
        if args.recipe == "authors-pca":
            extra["authors_figure_evr"] = recipe_runs.figure_evr(results)
        unfolding = center = None
    else:
        if kind == "adapters":
            results = adapter_spectra(pop, keys, args.unfolding, args.center, args.k, device=args.device,
                                      scaling=scaling)
        else:
            results = checkpoint_spectra(pop, keys, args.unfolding, args.center, args.k, device=args.device)
        extra = {"recipe": None, **({"scaling": scaling} if kind == "adapters" else {})}
        unfolding, center = args.unfolding, args.center
    return {
        "format": "uws-spectrum", "format_version": FORMAT_VERSION, "source": kind,
        "n_models": len(pop), "models": pop.names, "dirs": [str(d) for d in dirs],
        "unfolding": unfolding, "center": center, "k": args.k, "keys_regex": args.keys, **extra,
        "keys": results,
    }


def memory_limit(args: argparse.Namespace) -> float:
    """``--max-key-gib`` in bytes, else the default guard
    (:func:`uws_core.weights.dtype_policy.default_memory_limit_bytes`)."""
    if args.max_key_gib is not None:
        if not args.max_key_gib > 0:
            raise CliInputError(f"--max-key-gib must be > 0, got {args.max_key_gib}")
        return args.max_key_gib * 2 ** 30
    return dtype_policy.default_memory_limit_bytes()


def check_memory(pop, kind: str, keys: list[str], unfolding: str, center: str, limit: float) -> None:
    """Refuse, before anything is allocated, a key whose memory bound (from the headers' shapes alone,
    :func:`uws_core.weights.memory_bounds.in_memory_key_bound_bytes`) exceeds ``limit``; the message names the
    key, its shape, the bound and the limit."""
    for key in keys:
        from uws_core.weights.memory_bounds import in_memory_key_bound_bytes

        shape, bound = in_memory_key_bound_bytes(pop, kind, key, unfolding, center)
        if bound > limit:
            raise CliInputError(f"key {key!r} (shape {tuple(shape)}, {len(pop)} models, model {pop.names[0]!r} ...) "
                                f"needs up to {dtype_policy.format_gib(bound)}, over the memory limit "
                                f"{dtype_policy.format_gib(limit)}; pass --max-key-gib to change the limit, or "
                                "--keys to leave the key out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uws", description="Spectra of weight stacks across model populations.")
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("spectrum", help="EVR spectrum of one unfolding per weight key",
                        description=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("dirs", nargs="+", type=Path, metavar="DIRS",
                    help="adapter or checkpoint directories, or roots holding many of one kind")
    sp.add_argument("--unfolding", default=None, choices=UNFOLDINGS,
                    help="rows: (N*d_out, d_in); cols: (N*d_in, d_out); model: (N, d_out*d_in) (or give --recipe)")
    sp.add_argument("--recipe", default=None, choices=RECIPES,
                    help="a peer's recipe by name instead of --unfolding/--center (see uws_core.linalg.recipes)")
    sp.add_argument("--scaling", default=None, choices=SCALINGS,
                    help="LoRA product B@A times alpha/r or not (default: alpha-over-r; none with --recipe)")
    sp.add_argument("--center", default="models", choices=CENTERS,
                    help="none; models: subtract the mean matrix (default); samples: subtract the mean sample")
    sp.add_argument("--k", type=int, default=16, help="report the cumulative EVR of the top k (default 16)")
    sp.add_argument("--keys", default=None, metavar="REGEX", help="only keys matching this regex (re.search)")
    sp.add_argument("--device", default=None, help="compute device (default: UWS_DEVICE, else cuda if present)")
    sp.add_argument("--allow-missing-keys", action="store_true",
                    help="checkpoints: analyse the keys common to all models instead of refusing differing key sets")
    sp.add_argument("--max-key-gib", type=float, default=None,
                    help="refuse keys whose memory bound exceeds this many GiB (default: "
                         f"{dtype_policy.MEMORY_FRACTION:.0%}% of the memory available)")
    sp.add_argument("--out", required=True, type=Path, help="output JSON file")
    sp.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")

    ss = sub.add_parser("spectra", help="per-key spectra of a population streamed into a directory, resumable",
                        description=population_spectra_doc())
    ss.add_argument("dirs", nargs="+", type=Path, metavar="POPULATION_DIR",
                    help="a root holding adapters or checkpoints (any depth), or the model directories")
    ss.add_argument("--out", required=True, type=Path, help="output directory (keys/*.json, spectra.json)")
    ss.add_argument("--resume", action="store_true", help="continue a run in --out: keys already written are skipped")
    ss.add_argument("--unfolding", default="rows", choices=UNFOLDINGS, help="default rows (the authors' recipe)")
    ss.add_argument("--center", default="models", choices=CENTERS, help="default models (subtract the mean matrix)")
    ss.add_argument("--recipe", default=None, choices=RECIPES,
                    help="a peer's recipe by name instead of --unfolding/--center (see uws_core.linalg.recipes)")
    ss.add_argument("--scaling", default=None, choices=SCALINGS,
                    help="LoRA product B@A times alpha/r or not (default: alpha-over-r; none with --recipe)")
    ss.add_argument("--keys", default=None, metavar="REGEX", help="only keys matching this regex (re.search)")
    ss.add_argument("--basis-k", type=int, default=0, help="also save the top-k basis per key (checkpoints, rows/cols)")
    ss.add_argument("--max-key-gib", type=float, default=None,
                    help="skip (and report) keys whose memory bound exceeds this many GiB (default: "
                         f"{dtype_policy.MEMORY_FRACTION:.0%}% of the memory available)")
    ss.add_argument("--device", default=None, help="compute device (default: UWS_DEVICE, else cuda if present)")
    ss.add_argument("--allow-missing-keys", action="store_true", help="checkpoints: use the keys common to all")
    ss.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")

    sr = sub.add_parser("report", help="report.md and report.html for a `uws spectra` directory",
                        description="Turn a `uws spectra` output directory into DIR/report.md and DIR/report.html: "
                                    "a table of top-k EVR and k at 50/80/90/95/99%% per key, scree and cumulative "
                                    "plots per module type beside the Marchenko-Pastur null, the settings and recipe.")
    sr.add_argument("dir", type=Path, metavar="DIR", help="the --out directory of `uws spectra`")
    sr.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")

    sd = sub.add_parser("download", help="pinned, sha256-verified download of a manifest's entries")
    sd.add_argument("manifest", metavar="MANIFEST", help="a family (mistral7b_loras, llama8b, ...) or its CSV path")
    sd.add_argument("--dest", type=Path, default=None,
                    help="root of the local copies (default: the notebook's env variable, e.g. UWS_MISTRAL_LORA_DIR, "
                         "else checkpoints/<family>)")
    sd.add_argument("--limit", type=int, default=None, help="only the first N selected entries")
    sd.add_argument("--only", default=None, metavar="REGEX", help="only entries whose repo id matches (re.search)")
    sd.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                    help="only entries whose COLUMN equals VALUE (repeatable; e.g. name_flags_heuristic= for unflagged)")
    sd.add_argument("--allow-unpinned", action="store_true",
                    help="download entries that are not locked, at the hub's current main (reported, not pinned)")
    sd.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")

    sm = sub.add_parser("manifest", help="manifest maintenance")
    msub = sm.add_subparsers(dest="action", required=True)
    sl = msub.add_parser("lock", help="pin revisions and hub checksums into a manifest (needs network)")
    sl.add_argument("manifest", metavar="MANIFEST", help="a family or its CSV path")
    sl.add_argument("--limit", type=int, default=None, help="only the first N selected entries")
    sl.add_argument("--only", default=None, metavar="REGEX", help="only entries whose repo id matches (re.search)")
    sl.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                    help="only entries whose COLUMN equals VALUE (repeatable)")
    sl.add_argument("--relock", action="store_true", help="re-resolve entries that are already locked")
    sl.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    add_evaluate_parser(sub)
    return parser


def population_spectra_doc() -> str:
    """The first paragraph of :mod:`uws_core.weights.population_spectra`'s docstring, from its source (no torch)."""
    import ast

    source = Path(__file__).resolve().parent / "weights" / "population_spectra.py"
    return ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))).split("\n\n")[0]


# the notebooks' paper-scale directories: the default --dest of ``uws download``
DEST_ENV = {"mistral7b_loras": "UWS_MISTRAL_LORA_DIR", "vit": "UWS_VIT_DIR", "llama8b": "UWS_LLAMA_DIR"}


def run_spectra(args: argparse.Namespace) -> str:
    """``uws spectra``: stream per-key spectra into ``--out``; returns the line to print."""
    from uws_core.weights.kohya import KohyaLoraSet
    from uws_core.weights.population_spectra import AdapterSet, MatrixPopulation, population_spectra

    kind, dirs, names = find_population(args.dirs)
    pop = (AdapterSet.from_dirs(dirs, names=names) if kind == "adapters"
           else KohyaLoraSet.from_dirs(dirs, names=names) if kind == "kohya"
           else MatrixPopulation(dirs, names=names, strict=not args.allow_missing_keys))
    scaling = args.scaling or DEFAULT_SCALING[args.recipe]
    res = population_spectra(pop, args.out, args.unfolding, args.center, keys=args.keys, basis_k=args.basis_k,
                             resume=args.resume, device=args.device, recipe=args.recipe, scaling=scaling,
                             max_key_bytes=memory_limit(args))
    return (f"{args.recipe or 'generic'} spectra of {len(res['keys'])} keys x {res['n_models']} {kind} in {args.out} "
            f"({len(res['computed'])} computed, {len(res['resumed'])} resumed, {len(res['too_big'])} over the memory limit); "
            f"`uws report {args.out}` renders a page of it")


def parse_where(items: list[str]) -> dict[str, str]:
    """``["col=value", ...]`` -> ``{col: value}`` (the value may be empty)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise CliInputError(f"--where {item!r} is not COLUMN=VALUE")
        col, value = item.split("=", 1)
        out[col] = value
    return out


def run_download(args: argparse.Namespace, api=None) -> tuple[str, int]:
    """``uws download``: returns (summary, exit status: 1 if a file was refused, failed or is missing)."""
    from uws_core.weights.hub import download_manifest
    from uws_core.weights.manifests import resolve_manifest

    family, mdir = resolve_manifest(args.manifest)
    dest = args.dest or Path(os.environ.get(DEST_ENV.get(family, ""), "") or Path("checkpoints") / family)
    rep = download_manifest(family, dest, api=api, manifest_dir=mdir, limit=args.limit, only=args.only,
                            allow_unpinned=args.allow_unpinned, where=parse_where(args.where))
    counts = rep.to_dict()["counts"]
    lines = [f"{family}: {len(rep.entries)} entries into {dest}"
             + (" (HF_HUB_OFFLINE: nothing fetched)" if rep.offline else "") + ": "
             + ", ".join(f"{v} {k}" for k, v in counts.items() if v)]
    lines += [f"  {f.status}: {f.repo_id}/{f.file}: {f.detail}" for f in rep.files
              if f.status in ("refused", "error", "missing_offline")]
    not_ok = {k: v for k, v in rep.entries.items() if v != "ok"}
    if not_ok:
        lines.append(f"  {len(not_ok)} entries not downloaded, e.g. {next(iter(not_ok))}: {next(iter(not_ok.values()))}")
    lines.append(f"report: {dest / f'uws-download-{family}.json'}")
    bad = counts["refused"] + counts["error"] + counts["missing_offline"]
    return "\n".join(lines) + "\n", int(bad > 0)


def run_lock(args: argparse.Namespace, api=None) -> str:
    from uws_core.weights.hub import lock_manifest
    from uws_core.weights.manifests import manifest_path, resolve_manifest

    family, mdir = resolve_manifest(args.manifest)
    res = lock_manifest(family, api=api, manifest_dir=mdir, limit=args.limit, only=args.only, relock=args.relock,
                        where=parse_where(args.where))
    lines = [f"{manifest_path(family, mdir)}: {res['locked']} entries locked, {len(res['failed'])} failed, "
             f"{res['kept_locked']} were locked before"]
    lines += [f"  lock_failed: {f['repo_id']}: {f['reason']}" for f in res["failed"][:20]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, api=None) -> int:
    """Entry point of ``uws``; returns 0 on success, exits with status 2 and one message (no traceback) on bad
    input or any failure, status 1 when ``download`` refused, failed or missed a file.

    ``api`` replaces ``huggingface_hub.HfApi()`` for ``download`` and ``manifest lock`` (tests pass a local fake).
    """
    numerics.release_pin()  # every command reads or analyses checkpoints: MKL's own kernels (no-op once torch is in)
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "manifest lock" if args.command == "manifest" else args.command
    if getattr(args, "k", 0) < 0:
        parser.error(f"--k must be >= 0, got {args.k}")
    for opt in ("keys", "only"):
        if getattr(args, opt, None):
            try:
                re.compile(getattr(args, opt))
            except re.error as exc:
                parser.error(f"--{opt} {getattr(args, opt)!r} is not a valid regex: {exc}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    status = 0
    try:
        if args.command == "spectrum":
            result = run_spectrum(args)
        elif args.command == "spectra":
            message = run_spectra(args) + "\n"
        elif args.command == "report":
            from uws_core.report.spectra_report import write_report

            md, page = write_report(args.dir)
            message = f"wrote {md} and {page}\n"
        elif args.command == "download":
            message, status = run_download(args, api=api)
        elif args.command == "evaluate":
            message = run_evaluate(args)
        else:
            message = run_lock(args, api=api)
        if args.command == "spectrum":
            from uws_core.report.spectra_report import spectrum_table

            safe_paths.write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
            message = spectrum_table(result) + (f"wrote spectra of {len(result['keys'])} keys x "
                                                f"{result['n_models']} {result['source']} to {args.out}\n")
    except (ValueError, KeyError, OSError, RuntimeError) as exc:  # loader refusals name the file and key
        log.debug("uws %s failed", command, exc_info=True)
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        parser.exit(2, f"uws {command}: error: {msg}\n")
    except Exception as exc:  # noqa: BLE001 - no traceback reaches a user; -v logs it
        log.info("uws %s failed", command, exc_info=True)
        parser.exit(2, f"uws {command}: error: {type(exc).__name__}: {exc} (unexpected; rerun with -v for details)\n")
    sys.stdout.write(message)
    if status:
        parser.exit(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
