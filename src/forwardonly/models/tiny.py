"""Tiny random models and an offline tokenizer, for tests and examples.

The tokenizer is a byte-level BPE trained in a few milliseconds on a fixed
built-in corpus, so any text tokenizes (no unknown tokens) and the words the
built-in tasks use as labels (" positive", " Yes", ...) are single tokens,
as they are for real models.
"""

from __future__ import annotations

import functools

ARCHS = ("llama", "gemma3", "qwen2", "gpt2", "opt", "bert")

_WORDS = (
    "positive negative neutral ambivalent Yes No yes no True False Review Sentiment Question Answer "
    "Context Options the a an is was of to and in it this that for on with as not but good bad great "
    "terrible movie hotel food service room staff doctor product Tracy Riley Sydney need do before what "
    "how would you describe feel want next Sad Happy person people went home because after"
)
VOCAB_SIZE = 1280  # the trainer stops merging earlier; spare ids are unused rows


@functools.cache
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    words = _WORDS.split()
    # Repetition makes every word (with and without a leading space) a single merged token.
    corpus = [" " + " ".join(words)] * 50 + [w for w in words for _ in range(20)]
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer():
    """A :class:`transformers.PreTrainedTokenizerFast` that needs no download."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from .loading import prepare_tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        pad_token="<pad>", bos_token="<s>", eos_token="</s>",
    )
    return prepare_tokenizer(tok)


def tiny_config(arch: str = "llama"):
    """A 2-layer, 32-wide config of architecture ``arch`` (see :data:`ARCHS`)."""
    from transformers import BertConfig, Gemma3TextConfig, GPT2Config, LlamaConfig, OPTConfig, Qwen2Config

    special = {"vocab_size": VOCAB_SIZE, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, **special)
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, head_dim=8, sliding_window=16,
                                layer_types=["sliding_attention", "full_attention"])
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **special)
    if arch == "opt":
        return OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=256, word_embed_proj_dim=32, **special)
    if arch == "bert":
        return BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=256, num_labels=2, vocab_size=VOCAB_SIZE, pad_token_id=0)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHS}")


def tiny_model(arch: str = "llama", seed: int = 0, num_labels: int = 2):
    """A randomly initialised tiny ``(model, tokenizer)``; ``bert`` gets a classification head.

    Initialisation uses a private generator seeded with ``seed``, so the global
    RNG is untouched and the same seed gives the same weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = tiny_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "bert":
            config.num_labels = num_labels
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    return model.float().eval(), tiny_tokenizer()
