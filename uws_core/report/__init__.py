"""Results files, figures, the published numbers of the paper and the replication, the claims ledger, seed
spreads and the notebook runner (make reproduce). The top layer: may import every other layer.
The names below are loaded on first use (importing the package stays cheap).
"""

from __future__ import annotations

from uws_core import lazy_exports

#: module of this package -> the public names it defines (each module's own __all__)
_API = {
    "claims": (
        "CLAIMS", "CLAIM_TEXT", "Claim", "about", "ledger", "load_all", "main", "render_markdown", "write_ledger"),
    "claims_paper": (
        "NOT_MEASURED", "adaptation_paper", "add_rouge_quality", "compression_quality_paper", "loo_paper",
        "merging_paper", "scale_note"),
    "lab": ("DISPLAY_NAME", "KERNELSPEC", "KERNEL_NAME", "set_kernelspec"),
    "ledger_diff": (
        "SpreadPair", "VerdictPair", "compare_ledgers", "compare_seed_spreads", "render", "render_spreads",
        "seed_spreads"),
    "notebook_map": ("notebook_calls", "render_map"),
    "paper_scale_checks": (
        "PHASE1_KS", "compare_with_phase1_report", "phase1_verdict", "replication_adapter_ids",
        "replication_module_name"),
    "published": (
        "ADAPTATION", "AUTHORS_LATER", "LORA_LOO", "LORA_SPECTRA", "MERGING", "PAPER", "PUBLISHED_DIR",
        "PublishedDataError", "REPLICATION", "VIT", "authors_family_summary", "read_published",
        "replication_loo_weight_errors", "replication_mean_vs_basis", "replication_phase1_modules"),
    "seeds": (
        "SEED_DEPENDENT", "format_spread", "results_with_seed", "seed_table", "spread", "verdict_over_seeds",
        "verdicts_per_seed"),
    "site": ("SiteInputError", "build_site", "check_site", "figures_of"),
    "spectra_report": (
        "ReportInputError", "k_at", "load_run", "null_evr", "spectrum_table", "spectrum_table_rows", "write_report"),
}

__all__ = sorted(name for names in _API.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _API)
