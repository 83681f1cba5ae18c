"""Text conditioning: prompts encoded into token embeddings that a backbone cross-attends to.

See :doc:`/text`.
"""

from .builtin import TextTransformer
from .conditioned import TextConditioned, check_text_encoder
from .embedding import TextEmbedding, check_prompts
from .pretrained import PretrainedTextEncoder, minilm_folder
from .tokenizer import WordTokenizer

__all__ = ["PretrainedTextEncoder", "TextConditioned", "TextEmbedding", "TextTransformer",
           "WordTokenizer", "check_prompts", "check_text_encoder", "minilm_folder"]
