"""Tiny models built from config, with offline tokenizers built by the `tokenizers` library, and toy data.

For the test suite and the benchmarks (no download, seconds to build); the app itself never imports this.
"""

from __future__ import annotations

import random
from pathlib import Path

POSITIVE = "good great fine superb lovely excellent wonderful brilliant happy charming".split()
NEGATIVE = "bad awful poor terrible dull boring horrible weak sad clumsy".split()
NEUTRAL = "film movie plot actor scene story the a was and it this script cast ending music".split()
SPORT = "goal match team score league coach player ball win season".split()
WORDS = sorted(set(POSITIVE + NEGATIVE + NEUTRAL + SPORT))


def build_bert(path: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.1,
    )
    BertModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def build_llama(path: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> $B:1", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def toy_sentiment(n: int, seed: int = 0) -> list[dict]:
    """Two labels told apart by a sentiment word among neutral words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(NEUTRAL, 4) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def toy_topic(n: int, seed: int = 0) -> list[dict]:
    """Three labels: film-positive, film-negative, sport."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("pos", "neg", "sport")[i % 3]
        pool = {"pos": POSITIVE, "neg": NEGATIVE, "sport": SPORT}[label]
        words = rng.sample(NEUTRAL, 3) + rng.sample(pool, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows
