"""Captions as token ids: a fixed vocabulary, a whitespace tokenizer, a fixed length.

Choices, and why:

* **A fixed vocabulary, no unknown token.** A caption model here is trained on a small, closed
  language (``DIGIT_CAPTION_VOCABULARY``: the digits as numerals and as words, ``left``,
  ``right``, ``of``). A word outside it has no embedding the model ever trained, so mapping it to
  an ``<unk>`` id would silently generate *something*; instead ``encode`` raises ``ValueError``
  naming every unknown word and the known vocabulary (Serve's 422, the CLI's exit 2).
* **Lower case, whitespace split**, nothing else (no punctuation stripping, no stemming): the
  language is tiny and exact, and what is refused is easy to state.
* **A fixed length** ``max_length``, right-padded with id 0 (``PAD``): captions are a tensor
  column ``(N, max_length)`` int64 in the data and in a batch, the same shape for every row. A
  caption longer than that is an error saying so (never truncated: a cut caption means something
  else); an empty caption is allowed and is all padding (a caption-conditioned model may use it
  as "no caption").
* Token ids are 1..V in vocabulary order, so ``vocab_size = V + 1`` with the pad.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

PAD = 0
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_CAPTION_VOCABULARY: tuple[str, ...] = (
    *(str(d) for d in range(10)),
    *DIGIT_WORDS,
    "left",
    "right",
    "of",
)
MAX_CAPTION_LENGTH = 8


class Tokenizer:
    """Whitespace tokenizer over a fixed ``vocabulary`` with right padding to ``max_length``."""

    def __init__(
        self,
        vocabulary: Sequence[str] = DIGIT_CAPTION_VOCABULARY,
        max_length: int = MAX_CAPTION_LENGTH,
    ) -> None:
        words = tuple(vocabulary)
        if not words or any(not isinstance(w, str) or not w or w != w.lower() for w in words):
            raise ValueError("vocabulary: expected non-empty lower-case words")
        if any(len(w.split()) != 1 for w in words):
            raise ValueError("vocabulary: a word may not contain whitespace")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary: words must be distinct")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
        self.vocabulary = words
        self.max_length = max_length
        self.ids = {w: i + 1 for i, w in enumerate(words)}

    @property
    def vocab_size(self) -> int:
        """Number of ids, the pad included."""
        return len(self.vocabulary) + 1

    def words(self, caption: str) -> list[str]:
        if not isinstance(caption, str):
            raise ValueError(f"a caption must be a string, got {type(caption).__name__}")
        return caption.lower().split()

    def encode(self, captions: str | Sequence[str]) -> Tensor:
        """``(N, max_length)`` int64 ids of one caption or a list; ``ValueError`` on unknown
        words (naming each, and the vocabulary) or a caption longer than ``max_length``."""
        batch = [captions] if isinstance(captions, str) else list(captions)
        out = torch.full((len(batch), self.max_length), PAD, dtype=torch.long)
        unknown: list[str] = []
        for i, caption in enumerate(batch):
            words = self.words(caption)
            unknown += [w for w in words if w not in self.ids and w not in unknown]
            if len(words) > self.max_length:
                raise ValueError(
                    f"caption {caption!r} has {len(words)} words; at most {self.max_length}"
                )
            out[i, : len(words)] = torch.tensor([self.ids.get(w, PAD) for w in words] or [])
        if unknown:
            raise ValueError(
                f"unknown word(s) in caption: {', '.join(repr(w) for w in unknown)}; "
                f"known: {' '.join(self.vocabulary)}"
            )
        return out

    def decode(self, ids: Tensor) -> list[str]:
        """The captions of ``(N, max_length)`` ids (padding dropped)."""
        ids = torch.as_tensor(ids).reshape(-1, ids.shape[-1])
        return [" ".join(self.vocabulary[int(t) - 1] for t in row if int(t) != PAD) for row in ids]

    def check_ids(self, ids: Tensor) -> Tensor:
        """Token ids from data: ``(N, max_length)`` integers in ``0..V``, else ``ValueError``."""
        t = torch.as_tensor(ids)
        if t.is_floating_point() or t.dtype == torch.bool or t.dim() != 2:
            raise ValueError(
                f"caption ids must be an integer tensor (N, {self.max_length}), got "
                f"{t.dtype} {tuple(t.shape)}"
            )
        if t.shape[1] != self.max_length:
            raise ValueError(
                f"caption ids have length {t.shape[1]}; this model's max_length is "
                f"{self.max_length}"
            )
        if bool(((t < 0) | (t >= self.vocab_size)).any()):
            raise ValueError(f"caption ids must be in 0..{self.vocab_size - 1}")
        return t.long()
