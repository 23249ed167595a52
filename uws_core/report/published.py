"""Numbers published by the paper and by the independent replication, with their sources.

Copied by hand from the paper digest and the replication's committed result files (see
``data_manifests/README.md``); the notebooks print them beside ours and never compute with them
except to compare. Fractions are in [0, 1]; accuracies in percent as published.
"""

from __future__ import annotations

PAPER = "Kaushik et al., arXiv 2512.05117"
REPLICATION = "cahlen/universal-subspace-stress-test @ dd57f0c"

# Mistral-7B LoRAs (rank 16, q/k/v of 32 layers).
LORA_SPECTRA = {
    "paper": {
        "claim": "about 16 directions per layer hold most of the variance; 19x memory",
        "unfolding": "A (rows) and B (cols) separately, centred by the mean column; randomized SVD",
        "source": PAPER,
    },
    # Medians over the 96 q/k/v modules, N = 100 adapters, B@A flattened, centred, model-axis PCA,
    # against B@A of i.i.d. Gaussian rank-16 factors of matched entry variance (results phase1_report.json).
    "replication": {
        "unfolding": "B@A flattened (model axis), centred",
        "n_adapters": 100,
        "top_evr": {1: 0.0417, 4: 0.1504, 16: 0.4308, 32: 0.6598, 64: 0.9523},
        "null_top_evr": {1: 0.0104, 4: 0.0414, 16: 0.1647, 32: 0.3278, 64: 0.6512},
        "recon_error_k16": 0.7505,
        "source": REPLICATION + " experiments/phase1_lora_spectral/results/phase1_report.json",
    },
    # A separate study of the 500 public adapters: 197 share one identical random init of A.
    "shared_init": {
        "n_shared": 197,
        "n_total": 500,
        "top16_evr_A_shared": (0.86, 0.90),
        "top16_evr_A_rest": (0.02, 0.05),
        "source": "digest section 4 (study of the public Lots-of-LoRAs adapters)",
    },
}

# Leave-one-out functional test on Mistral LoRAs (10 tasks x 20 examples), accuracy in percent.
LORA_LOO = {
    "replication": {"base": 29.5, "own": 68.5, "mean_only": (43.5, 44.0), "mean_plus_k16": (43.5, 44.5),
                    "basis_only": "about the base model's accuracy (no number published)",
                    "source": REPLICATION},
}

VIT = {
    "paper": {"ood_projected_k16": 87.8, "ood_full": 91.3, "compression": "100x (first and last layer excluded)",
              "source": PAPER},
    "authors_later_savings_90ev": {"vit": 0.626, "gpt2": 0.646, "llama": 0.671, "flan_t5": 0.851,
                                   "source": "toshi2k2/unisub Main_weight_analysis/family_summary.csv"},
    "replication_random_init": {"top16_evr": 0.1649, "mp_null_top16_evr": 0.1648, "n_models": 100,
                                "source": REPLICATION},
}

MERGING = {
    "paper": {"subspace": 83.5, "knots_ties": 68.0, "individual": 84.1, "source": PAPER},
    "replication": {"mean": 69.4, "subspace": 69.4, "ties_d0.2": 41.2, "ties_best": 57.5,
                    "task_arithmetic": 34.4, "individual": 85.6, "source": REPLICATION},
}

ADAPTATION = {
    "replication_k16": {"lora_r16": 76.7, "subspace_plus_mean": 73.3, "basis_only": 75.0, "own_adapter": 80.0,
                        "base": 60.0, "source": REPLICATION},
    "replication_k4": {"lora_r16": 75.0, "subspace_plus_mean": 63.3, "basis_only": 66.7, "source": REPLICATION},
}
