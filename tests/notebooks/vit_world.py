"""A tiny stand-in for the manifest's ViT fine-tunes at paper scale (the notebooks' ViT parts read them under
``UWS_VIT_DIR``): a tiny ViT base under the base's hub id and one fine-tune per manifest id."""
from pathlib import Path


def write_vit_family(root: Path, ids: list[str], base_id: str, seed: int = 0) -> None:
    """A tiny ViTForImageClassification base under ``base_id`` and one fine-tune per id (base + a small
    low-rank-plus-noise update, its own head), written with transformers' save_pretrained."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    image_size=8, patch_size=4, num_channels=1, num_labels=10,
                    architectures=["ViTForImageClassification"])
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base = ViTForImageClassification(cfg)
    base.save_pretrained(root / base_id)
    for i, repo_id in enumerate(ids):
        model = ViTForImageClassification(cfg)
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 2 and "embeddings" not in name and not name.startswith("classifier"):  # encoder matrices
                    u = torch.randn(p.shape[0], 2, generator=g)
                    v = torch.randn(2, p.shape[1], generator=g)
                    p.add_(0.01 * u @ v / p.shape[1] ** 0.5 + 0.001 * torch.randn(p.shape, generator=g))
        model.save_pretrained(root / repo_id)
