"""Pinned, verified downloads of the paper-scale manifests from the Hugging Face hub.

Two steps, both driven by a manifest of ``data_manifests/`` (see :mod:`uws_core.weights.manifests`):

``lock_manifest`` (``uws manifest lock``, needs network)
    resolves each entry's revision to a commit sha and records, for every wanted file at that commit,
    the hub's checksum: the LFS ``sha256`` for LFS files, the git blob id (sha1) for small files, and
    the size (``HfApi.model_info(files_metadata=True)``). Entries with no safetensors weights (pickles
    only), missing or gated repositories are marked ``lock_failed`` with the reason.
``download_manifest`` (``uws download``)
    fetches only the locked files of the selected entries at the pinned revision
    (``HfApi.hf_hub_download`` into a staging directory beside ``dest``; within one run the client retries a
    broken transfer from where it stopped, across runs only whole files verified in staging are reused),
    cross-checks the hub's metadata (``HfApi.get_paths_info``) against the lock, verifies
    each file's size and checksum and the expected tensor shapes of safetensors files, and only then
    moves an entry's files to ``dest/owner/name/`` (where ``uws_core.weights.manifests.local_dir`` finds them) only
    once all of them are verified, so loaders never see a partial or unverified model. A file that fails
    is moved to a ``rejected`` directory beside ``dest`` and reported. Files already verified (in ``dest``
    or in staging) are not fetched again, so a rerun resumes; a damaged file in staging is deleted and fetched
    again. With ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set nothing is fetched: files present are
    verified against the lock and missing ones are reported.

Every path written, moved or deleted is checked first (:mod:`uws_core.weights.safe_paths`): repository ids by
huggingface_hub's validator, file names as relative paths inside the entry, no symbolic link on the way; an
incomplete entry moves only its own listed files back to staging (a user's other files stay).

The API object is injected (``api=``): an ``huggingface_hub.HfApi`` by default, a local fake in tests.
Only three of its methods are used: ``model_info`` (``dataset_info`` for a dataset entry), ``get_paths_info`` and
``hf_hub_download`` (both given ``repo_type="dataset"`` for a dataset entry: a manifest's ``repo_type`` column).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from uws_core.linalg.numerics import progress_disabled
from uws_core.weights import safe_paths
from uws_core.weights.hub_paths import (DownloadReport, EntryPaths, FileOutcome, read_stamp, stamp_of, write_stamp, check_entry_file_name, entry_paths, free_bytes,
                                        move_file, side_dirs, unpublish)
from uws_core.weights.file_checks import checksum_problem, shape_problems
from uws_core.weights.manifests import (DATA_SUFFIXES, FileChecksum, ManifestError, format_checksums, load_manifest,
                                        match_files, parse_checksums, parse_expected_shapes, repo_type_of, split_cell,
                                        write_manifest)

log = logging.getLogger(__name__)

SAVE_EVERY = 25  # lock: rewrite the manifest every this many entries, so an interrupted lock keeps its work


class HubError(RuntimeError):
    """A download or lock that cannot proceed (offline lock, unlocked manifest, ...)."""


OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # huggingface_hub reads both (constants.py)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value (read now, not at import;
    huggingface_hub itself goes offline on either)."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_VARS)


def error_text(exc: BaseException, limit: int = 1200) -> str:
    """``Type: message`` with every line of the message kept (joined by `` | ``): huggingface_hub puts the
    reason ("Repository Not Found", "Cannot access gated repo", "Revision Not Found") on the lines after the
    first."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {' | '.join(lines)}"[:limit]


def default_api():
    from huggingface_hub import HfApi

    return HfApi()


def _lfs_sha256(lfs) -> str:
    return lfs["sha256"] if isinstance(lfs, dict) else lfs.sha256


def checksum_from_hub(name: str, size, blob_id, lfs) -> FileChecksum:
    """A FileChecksum from the hub's metadata of one file (``RepoSibling`` or ``RepoFile`` fields)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise HubError(f"the hub gave size {size!r} for {name!r}")
    if lfs is not None:
        return FileChecksum(name, "sha256", _lfs_sha256(lfs), int(size))
    if not blob_id:
        raise HubError(f"the hub gave no checksum for {name!r} (ask for files_metadata=True)")
    return FileChecksum(name, "git-sha1", blob_id, int(size))


def _type_kw(repo_type: str) -> dict:
    """``{"repo_type": "dataset"}`` for a dataset entry, nothing for a model (so model-only fakes keep working)."""
    return {} if repo_type == "model" else {"repo_type": repo_type}


def lock_entry(api, repo_id: str, patterns: str, revision: str | None = None,
               repo_type: str = "model") -> tuple[str, list[FileChecksum]]:
    """Resolve one repository at ``revision`` (default: main): (commit sha, checksums of the wanted files).

    Raises HubError when the repository is gated (``ModelInfo.gated``: its files cannot be fetched without an
    accepted licence and a token), when a listed file name would leave the entry's directory, or when no
    safetensors weights (for a dataset: no data file, ``DATA_SUFFIXES``) match the patterns (e.g. pickles only)."""
    safe_paths.check_repo_id(repo_id, f"repository {repo_id!r}")
    info_of = api.dataset_info if repo_type == "dataset" else api.model_info
    info = info_of(repo_id, revision=revision or None, files_metadata=True)
    gated = getattr(info, "gated", False)
    if gated:
        raise HubError(f"repository {repo_id!r} is gated (gated={gated!r}): its files need an accepted licence and "
                       "a token; not locked")
    siblings = {s.rfilename: s for s in info.siblings}
    wanted = match_files(list(siblings), patterns)
    for n in wanted:
        check_entry_file_name(n, f"repository {repo_id!r} at {info.sha}")
    if repo_type == "dataset":
        if not any(n.endswith(DATA_SUFFIXES) for n in wanted):
            raise HubError(f"no data files ({', '.join(DATA_SUFFIXES)}) matching {patterns!r} in dataset {repo_id!r} "
                           f"at {info.sha}")
    elif not any(n.endswith(".safetensors") for n in wanted):
        pickles = sorted(n for n in siblings if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
        raise HubError(f"no safetensors weights matching {patterns!r} at {info.sha}"
                       + (f" (pickles only: {', '.join(pickles[:3])})" if pickles else ""))
    if not isinstance(info.sha, str) or not re.fullmatch(r"[0-9a-f]{40}", info.sha):
        raise HubError(f"repository {repo_id!r}: the hub gave commit {info.sha!r}, not a 40-hex sha")
    sums = [checksum_from_hub(n, siblings[n].size, siblings[n].blob_id, siblings[n].lfs) for n in wanted]
    try:  # what the hub said must read back from the manifest cell it is written to
        if parse_checksums(format_checksums(sums)) != sums:
            raise ValueError("checksums do not read back")
    except (ValueError, TypeError) as exc:
        raise HubError(f"repository {repo_id!r} at {info.sha}: unusable file metadata from the hub: {exc}") from None
    return info.sha, sums


def _select(df, only: str | None, limit: int | None, statuses, where: dict | None = None) -> list[int]:
    """Row positions with a status in ``statuses``, repo id matching ``only``, ``df[col] == value`` for
    every ``where`` item; the first ``limit`` of them."""
    pattern = re.compile(only) if only else None
    for col in where or {}:
        if col not in df.columns:
            raise ManifestError(f"--where names column {col!r}, which the manifest lacks (has {list(df.columns)})")
    rows = [i for i in range(len(df)) if df["hub_status"].iloc[i] in statuses
            and (pattern is None or pattern.search(df["repo_id"].iloc[i]))
            and all(df[c].iloc[i] == v for c, v in (where or {}).items())]
    return rows[:limit] if limit is not None else rows


def lock_manifest(family: str, api=None, manifest_dir=None, limit: int | None = None, only: str | None = None,
                  relock: bool = False, progress: bool = True, where: dict | None = None) -> dict:
    """Pin revisions and checksums of a manifest's hub entries and write them into the manifest.

    Each entry is resolved at the hub's current ``main``. Entries already ``locked`` are kept unless
    ``relock``; ``unresolved`` and ``no_hub_checkpoint`` entries are never contacted. A relock that fails
    (network, gated, missing) keeps the entry's previous pin and says why in ``hub_note``; offline
    (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``) nothing is changed. Gated repositories are refused
    (``ModelInfo.gated``). Failure reasons keep the hub's whole message. Returns counts per outcome and the
    failures with their reasons.
    """
    from tqdm.auto import tqdm

    if hub_offline():
        raise HubError("uws manifest lock needs the network, but HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set; "
                       "nothing was changed")
    api = api or default_api()
    df = load_manifest(family, manifest_dir)
    statuses = ("unlocked", "lock_failed", "locked") if relock else ("unlocked", "lock_failed")
    rows = _select(df, only, limit, statuses, where)
    out = {"family": family, "locked": 0, "failed": [], "kept_locked": int((df["hub_status"] == "locked").sum())}
    for n_done, i in enumerate(tqdm(rows, desc=f"lock {family}", disable=progress_disabled(progress)), 1):
        repo_id = df.at[i, "repo_id"]
        try:
            sha, sums = lock_entry(api, repo_id, df.at[i, "files"], repo_type=repo_type_of(df.iloc[i]))  # main
        except Exception as exc:  # noqa: BLE001 - one entry's failure (404, gated, network) is recorded, the lock goes on
            reason = error_text(exc)
            if df.at[i, "hub_status"] == "locked":  # a relock that fails keeps the old pin: never erase a lock
                df.loc[i, "hub_note"] = f"relock failed, previous pin kept: {reason}"
                out["failed"].append({"repo_id": repo_id, "reason": f"previous pin kept: {reason}"})
            else:
                df.loc[i, ["revision", "checksums", "hub_status", "hub_note"]] = ["", "", "lock_failed", reason]
                out["failed"].append({"repo_id": repo_id, "reason": reason})
        else:
            df.loc[i, ["revision", "checksums", "hub_status", "hub_note"]] = [sha, format_checksums(sums),
                                                                              "locked", ""]
            out["locked"] += 1
        if n_done % SAVE_EVERY == 0:
            write_manifest(df, family, manifest_dir)
    write_manifest(df, family, manifest_dir)
    return out


def download_manifest(family: str, dest: Path | str, api=None, manifest_dir=None, limit: int | None = None,
                      only: str | None = None, allow_unpinned: bool = False, progress: bool = True,
                      where: dict | None = None) -> DownloadReport:
    """Download the locked files of a manifest's entries into ``dest/owner/name/``, verified.

    Parameters
    ----------
    family : str
        Manifest family (see ``uws_core.weights.manifests.FAMILIES``).
    dest : path
        Root of the local copies (what ``UWS_MISTRAL_LORA_DIR`` etc. point at).
    api : object, optional
        Provides ``model_info``, ``get_paths_info`` and ``hf_hub_download`` (default ``HfApi()``).
    limit, only, where : optional
        Take the first ``limit`` entries whose repo id matches the regex ``only`` and whose columns equal
        the values in ``where`` (e.g. ``{"name_flags_heuristic": ""}``: the Llama entries without a flag).
    allow_unpinned : bool
        Download entries that are not locked at the hub's current ``main`` (resolved and reported, not
        written to the manifest). Default: refuse them and say to run ``uws manifest lock``.

    Returns
    -------
    DownloadReport (also written to ``dest/uws-download-<family>.json``).
    """
    from tqdm.auto import tqdm

    dest = Path(dest).resolve()  # links above --dest are the user's choice; none is followed below it
    offline = hub_offline()
    api = None if offline else (api or default_api())
    df = load_manifest(family, manifest_dir)
    staging, rejected = side_dirs(dest)
    report = DownloadReport(family, str(dest), offline)
    rows = _select(df, only, limit, ("locked", "unlocked", "lock_failed", "unresolved", "no_hub_checkpoint"), where)
    for i in tqdm(rows, desc=f"download {family}", disable=progress_disabled(progress)):
        row = df.iloc[i]
        repo_id, status = row["repo_id"], row["hub_status"]
        if status in ("unresolved", "no_hub_checkpoint", "lock_failed"):
            report.entries[repo_id or f"row {i + 1}"] = f"{status}: {row['hub_note']}"
            continue
        revision, sums = row["revision"], parse_checksums(row["checksums"])
        if status == "unlocked":
            if not allow_unpinned or offline:
                report.entries[repo_id] = "unlocked: run `uws manifest lock` first (or pass --allow-unpinned)"
                continue
            try:
                revision, sums = lock_entry(api, repo_id, row["files"], repo_type=repo_type_of(row))
            except Exception as exc:  # noqa: BLE001 - reported per entry
                report.entries[repo_id] = f"error: {error_text(exc)}"
                continue
        try:
            paths = entry_paths(repo_id, sums, dest, staging, rejected)
        except safe_paths.UnsafePathError as exc:  # nothing is touched for a hostile id, name or planted link
            report.files.append(FileOutcome(repo_id, "*", "refused", str(exc)))
            report.entries[repo_id] = f"refused: {exc}"
            continue
        try:
            report.entries[repo_id] = _download_entry(api, repo_id, revision, sums,
                                                      parse_expected_shapes(row["expected_shapes"]), paths, report,
                                                      _type_kw(repo_type_of(row)))
        except OSError as exc:  # e.g. a file where the entry's directory should be: this entry fails, not the run
            report.files.append(FileOutcome(repo_id, "*", "error", error_text(exc)))
            report.entries[repo_id] = f"error: {error_text(exc)}"
    dest.mkdir(parents=True, exist_ok=True)
    safe_paths.write_text_atomic(dest / f"uws-download-{family}.json", json.dumps(report.to_dict(), indent=1))
    return report


def _download_entry(api, repo_id, revision, sums, expected, paths: EntryPaths, report, type_kw: dict) -> str:
    """Fetch and verify one repository's pinned files; returns the entry's outcome (``type_kw``: ``repo_type``)."""
    repo_dir = paths.repo_dir
    stamp = read_stamp(repo_dir)
    if api is not None:  # cross-check the lock with the hub's metadata at the pinned revision
        try:
            infos = api.get_paths_info(repo_id, [c.name for c in sums], revision=revision, **type_kw)
            hub = {f.path: checksum_from_hub(f.path, f.size, f.blob_id, f.lfs) for f in infos
                   if f.path in {c.name for c in sums}}
        except Exception as exc:  # noqa: BLE001 - network or hub errors (or nonsense metadata) are reported per entry
            report.files.append(FileOutcome(repo_id, "*", "error", f"get_paths_info failed: {error_text(exc)}"))
            return "error"
        for c in sums:
            if hub.get(c.name) != c:
                detail = (f"the hub's metadata at {revision} ({hub.get(c.name)}) differs from the lock ({c})"
                          if c.name in hub else f"not on the hub at revision {revision}")
                report.files.append(FileOutcome(repo_id, c.name, "refused", detail))
                return "refused"
    if api is not None:  # a transfer that cannot fit is refused before it starts, not when the disk is full
        need = sum(c.size for c in sums if not paths.target[c.name].is_file() and not paths.stage[c.name].is_file())
        free = free_bytes(paths.stage_dir)
        if need > free:
            report.files.append(FileOutcome(repo_id, "*", "error", f"needs {need} bytes in {paths.stage_dir}, only "
                                            f"{free} free on that disk; nothing fetched"))
            return "error"
    outcome, staged = "ok", []
    for c in sums:
        target, stage, bad = paths.target[c.name], paths.stage[c.name], paths.rejected[c.name]
        if target.is_file():
            if stamp.get(c.name) == stamp_of(target, c):
                report.files.append(FileOutcome(repo_id, c.name, "present", "verified earlier", str(target)))
                continue
            problem = checksum_problem(target, c)
            if problem is None:
                stamp[c.name] = stamp_of(target, c)
                write_stamp(repo_dir, stamp)
                report.files.append(FileOutcome(repo_id, c.name, "present", "verified", str(target)))
                continue
            move_file(target, bad)
            report.files.append(FileOutcome(repo_id, c.name, "refused", f"local copy: {problem}; moved to {bad}"))
        elif bad.exists():
            report.files.append(FileOutcome(repo_id, c.name, "refused",
                                            f"refused earlier: see {bad} (delete it to retry)"))
            outcome = "refused"
            continue
        refetch = False
        if stage.is_file():
            if checksum_problem(stage, c) is None and not shape_problems(stage, expected):
                staged.append((c, stage, "verified in staging (fetched by an earlier run)"))
                continue
            # a damaged file left in staging: huggingface_hub would return it again without a request (its
            # download metadata still matches), so it is deleted and fetched anew
            log.warning("%s/%s: damaged copy in staging deleted, fetching again", repo_id, c.name)
            stage.unlink()
            refetch = True
        if api is None:
            report.files.append(FileOutcome(repo_id, c.name, "missing_offline",
                                            "HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set"))
            outcome = "missing" if outcome == "ok" else outcome
            continue
        try:
            kw = {**type_kw, "force_download": True} if refetch else type_kw
            got = Path(api.hf_hub_download(repo_id=repo_id, filename=c.name, revision=revision,
                                           local_dir=paths.stage_dir, **kw))
            if got.resolve() != stage.resolve() or got.is_symlink():
                raise safe_paths.UnsafePathError(f"the download of {c.name!r} landed at {got}, not at {stage}")
        except Exception as exc:  # noqa: BLE001 - a broken transfer is reported; a rerun fetches it again
            report.files.append(FileOutcome(repo_id, c.name, "error", error_text(exc)))
            outcome = "error"
            continue
        problems = [p for p in [checksum_problem(got, c)] if p] or shape_problems(got, expected)
        if problems:
            move_file(got, bad)
            log.warning("%s/%s refused: %s", repo_id, c.name, problems[0])
            report.files.append(FileOutcome(repo_id, c.name, "refused", f"{'; '.join(problems[:3])}; moved to {bad}"))
            outcome = "refused"
            continue
        staged.append((c, got, time.strftime("fetched %Y-%m-%dT%H:%M:%S")))
    if outcome != "ok":  # an incomplete or refused entry never appears in dest: its good files wait in staging
        for c, path, _ in staged:
            report.files.append(FileOutcome(repo_id, c.name, "staged", f"verified, waiting for the rest of the entry "
                                            f"in {path.parent}"))
        if repo_dir.is_dir():
            unpublish(paths)
        return outcome
    for c, path, detail in staged:  # every file verified: publish the entry
        move_file(path, paths.target[c.name])
        stamp[c.name] = stamp_of(paths.target[c.name], c)
        report.files.append(FileOutcome(repo_id, c.name, "downloaded", detail, str(paths.target[c.name])))
    if staged:
        write_stamp(repo_dir, stamp)
    return outcome


__all__ = ["HubError", "hub_offline", "lock_entry", "lock_manifest", "download_manifest", "DownloadReport", "FileOutcome",
           "side_dirs", "ManifestError", "split_cell"]
