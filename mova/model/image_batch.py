"""Which sample each image of a batch belongs to, and the ``images`` dict repeated per sample.

``images`` holds one row per image, in placeholder order across the batch, and a sample may have no image,
one or several. ``generate()`` repeats every top-level tensor ``expand_size`` times along the batch (beam
search, ``num_return_sequences``) but cannot know which image rows go with which sample: these helpers read
that off the image tokens of each sample and the token count of each image.
"""

from __future__ import annotations

import torch

from mova.errors import PlaceholderMismatchError


def images_per_sample(image_mask: torch.Tensor, tokens_per_image: list[int]) -> list[int]:
    """How many images each row of ``image_mask`` (``[B, L]``, True on image tokens) holds.

    ``tokens_per_image`` gives each image's visual-token count in batch order (it varies with OCR words).
    """
    per_row = image_mask.sum(-1).tolist()
    counts: list[int] = []
    k = 0
    for row, tokens in enumerate(per_row):
        n = 0
        while tokens > 0:
            if k >= len(tokens_per_image):
                raise PlaceholderMismatchError(f"sample {row} holds more image tokens than the images given make")
            tokens -= tokens_per_image[k]
            k += 1
            n += 1
        if tokens != 0:
            raise PlaceholderMismatchError(f"sample {row}: its image tokens do not add up to whole images")
        counts.append(n)
    if k != len(tokens_per_image):
        raise PlaceholderMismatchError(f"{len(tokens_per_image)} images given but the samples' image tokens "
                                       f"make {k}")
    return counts


def expand_images(images: dict[str, torch.Tensor], counts: list[int], expand_size: int) -> dict[str, torch.Tensor]:
    """``images`` with each sample's rows repeated ``expand_size`` times, as ``repeat_interleave`` does to the
    sample itself (sample ``i``'s copies stay adjacent)."""
    starts = [sum(counts[:i]) for i in range(len(counts))]
    index = [starts[i] + j for i, n in enumerate(counts) for _ in range(expand_size) for j in range(n)]
    out = {}
    for key, value in images.items():
        out[key] = value.index_select(0, torch.tensor(index, dtype=torch.long, device=value.device))
    return out
