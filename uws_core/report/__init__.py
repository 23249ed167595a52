"""Results files, figures, the published numbers of the paper and the replication, the claims ledger, seed
spreads and the notebook runner (make reproduce). The top layer: may import every other layer.

Modules: ``claims``, ``notebook_map``, ``plots``, ``published``, ``reproduce``, ``results``, ``seeds``.
The names below are loaded on first use (importing the package stays cheap).
"""

from __future__ import annotations

from uws_core import lazy_exports

#: public name -> module of this package that defines it
_API = {
    "CLAIMS": "claims",
    "Claim": "claims",
    "SEED_DEPENDENT": "seeds",
    "format_spread": "seeds",
    "ledger": "claims",
    "load_all": "claims",
    "main": "claims",
    "notebook_calls": "notebook_map",
    "render_map": "notebook_map",
    "render_markdown": "claims",
    "seed_table": "seeds",
    "spread": "seeds",
    "verdict_over_seeds": "seeds",
    "write_ledger": "claims",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
