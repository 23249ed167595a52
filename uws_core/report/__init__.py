"""Results files, figures, the published numbers of the paper and the replication, the claims ledger, seed
spreads and the notebook runner (make reproduce). The top layer: may import every other layer.

Modules: ``claims``, ``claims_paper``, ``lab``, ``notebook_map``, ``paper_scale_checks``, ``plots``, ``published``, ``reproduce``, ``results``, ``seeds``, ``site``, ``spectra_report``.
The names below are loaded on first use (importing the package stays cheap).
"""

from __future__ import annotations

from uws_core import lazy_exports

#: public name -> module of this package that defines it
_API = {
    "ADAPTATION": "published",
    "AUTHORS_LATER": "published",
    "CLAIMS": "claims",
    "Claim": "claims",
    "DISPLAY_NAME": "lab",
    "KERNELSPEC": "lab",
    "KERNEL_NAME": "lab",
    "LORA_LOO": "published",
    "LORA_SPECTRA": "published",
    "MERGING": "published",
    "NOT_MEASURED": "claims_paper",
    "PAPER": "published",
    "PHASE1_KS": "paper_scale_checks",
    "PUBLISHED_DIR": "published",
    "PublishedDataError": "published",
    "REPLICATION": "published",
    "ReportInputError": "spectra_report",
    "SEED_DEPENDENT": "seeds",
    "SiteInputError": "site",
    "VIT": "published",
    "add_rouge_quality": "claims_paper",
    "authors_family_summary": "published",
    "build_site": "site",
    "check_site": "site",
    "compare_with_phase1_report": "paper_scale_checks",
    "compression_quality_paper": "claims_paper",
    "figures_of": "site",
    "format_spread": "seeds",
    "k_at": "spectra_report",
    "ledger": "claims",
    "load_all": "claims",
    "load_run": "spectra_report",
    "loo_paper": "claims_paper",
    "main": "claims",
    "merging_paper": "claims_paper",
    "notebook_calls": "notebook_map",
    "null_evr": "spectra_report",
    "phase1_verdict": "paper_scale_checks",
    "read_published": "published",
    "render_map": "notebook_map",
    "render_markdown": "claims",
    "replication_adapter_ids": "paper_scale_checks",
    "replication_loo_weight_errors": "published",
    "replication_mean_vs_basis": "published",
    "replication_module_name": "paper_scale_checks",
    "replication_phase1_modules": "published",
    "results_with_seed": "seeds",
    "scale_note": "claims_paper",
    "seed_table": "seeds",
    "set_kernelspec": "lab",
    "spectrum_table": "spectra_report",
    "spectrum_table_rows": "spectra_report",
    "spread": "seeds",
    "verdict_over_seeds": "seeds",
    "verdicts_per_seed": "seeds",
    "write_ledger": "claims",
    "write_report": "spectra_report",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
