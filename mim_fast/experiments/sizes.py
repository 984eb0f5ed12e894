"""Model sizes of the reference (encoder and decoder width / depth / heads, MLP ratio 4)."""

MODEL_SIZES: dict[str, dict[str, int]] = {
    # name: encoder_embedding_size, encoder_depth, encoder_num_heads, decoder_embedding_size, decoder_depth, decoder_num_heads
    "nano": dict(enc_dim=128, enc_depth=4, enc_heads=8, dec_dim=128, dec_depth=4, dec_heads=8),
    "tiny": dict(enc_dim=192, enc_depth=12, enc_heads=3, dec_dim=192, dec_depth=12, dec_heads=3),
    "base": dict(enc_dim=768, enc_depth=12, enc_heads=12, dec_dim=768, dec_depth=12, dec_heads=12),
    "large": dict(enc_dim=1024, enc_depth=24, enc_heads=16, dec_dim=1024, dec_depth=24, dec_heads=16),
    "tiny_shallow_decoder": dict(enc_dim=192, enc_depth=12, enc_heads=3, dec_dim=192, dec_depth=4, dec_heads=3),
    "small_shallow_decoder": dict(enc_dim=384, enc_depth=12, enc_heads=6, dec_dim=384, dec_depth=4, dec_heads=6),
    "base_shallow_decoder": dict(enc_dim=768, enc_depth=12, enc_heads=12, dec_dim=768, dec_depth=4, dec_heads=12),
    "large_shallow_decoder": dict(enc_dim=1024, enc_depth=24, enc_heads=16, dec_dim=1024, dec_depth=4, dec_heads=16),
}
MLP_RATIO = 4.0

# The study's scripts map short names to these.
SIZE_ALIASES = {"nano": "nano", "tiny": "tiny_shallow_decoder", "base": "base_shallow_decoder",
                "large": "large_shallow_decoder", "small": "small_shallow_decoder"}  # fmt: skip


def resolve_size(size: str) -> dict[str, int]:
    """Size arguments by short name (``nano``, ``tiny``, ``base``, ``large``, ``small``) or full name."""
    name = SIZE_ALIASES.get(size, size)
    if name not in MODEL_SIZES:
        known = sorted(set(MODEL_SIZES) | set(SIZE_ALIASES))
        raise ValueError(f"size: unknown model size {size!r}; known: {', '.join(known)}")
    return MODEL_SIZES[name]
