"""Tiny models built from config, with offline tokenizers built by the `tokenizers` library, and toy data.

For the test suite and the benchmarks (no download, seconds to build); the app itself never imports this.

`build_tiny(arch, path)` builds one of `ARCHITECTURES` the way a real hub base is saved: encoders as their
backbone (`*Model`) or pre-training model (`*ForMaskedLM`, `*ForPreTraining`), decoders as `*ForCausalLM`,
so `AutoModelForSequenceClassification.from_pretrained(path)` initialises the task head newly, as it does
for a real base. Each has a fast tokenizer of the family's shape (special tokens, post-processor, which
inputs the model takes); decoders ship without a pad token, as Llama's, GPT-2's and Mistral's do (Qwen2's
tokenizer class makes eos its pad whatever the folder says; real Gemma ships a <pad> the tiny one omits, so
every decoder here takes the service's pad = eos). `plain_peft_probs` is what
plain transformers + peft give for a saved adapter on such a base: the reference the tests and
bench/architectures.py hold the service to.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# Texts to compare answers on: one word to a dozen, and one of 180 words (over a tiny model's 128 tokens).
PROBE_TEXTS = [
    "good",
    "awful plot",
    "it was fine",
    "the movie was dull and boring",
    "a great cast and a wonderful story with lovely music and a charming ending",
    "goal match team score",
    " ".join(["the film was good and the music was lovely"] * 20),
]


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


def toy_multilabel(n: int, seed: int = 0) -> list[dict]:
    """Multi-label: "positive", "negative" and "sport", each present when a word of its kind is (none, one or
    two of them per row, among neutral words)."""
    rng = random.Random(seed)
    pools = {"positive": POSITIVE, "negative": NEGATIVE, "sport": SPORT}
    combos = [[], ["positive"], ["negative"], ["sport"], ["positive", "sport"], ["negative", "sport"]]
    rows = []
    for i in range(n):
        labels = combos[i % len(combos)]
        words = rng.sample(NEUTRAL, 4) + [rng.choice(pools[label]) for label in labels]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": list(labels)})
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


# ---- every *ForSequenceClassification family the service serves ------------------------------------------------
ARCHITECTURES = (
    "bert",
    "llama",
    "gpt2",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "deberta-v2",
    "electra",
    "albert",
    "modernbert",
    "qwen2",
    "mistral",
    "phi3",
    "gemma",
)
POSITIONS = 128  # tokens a tiny model takes
NO_TYPES = ["input_ids", "attention_mask"]  # the inputs of a model without token types
WITH_TYPES = ["input_ids", "token_type_ids", "attention_mask"]
_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def build_tiny(arch: str, path: Path) -> Path:
    """A tiny random `arch` base (one of ARCHITECTURES) and its tokenizer saved in `path`; returns `path`."""
    try:
        build = _BUILDERS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}") from None
    import torch

    path = Path(path)
    torch.manual_seed(0)
    build(path)
    return path


# ---- tokenizers -------------------------------------------------------------------------------------------------
def _wrap(tok: Any, input_names: list[str], **specials: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_input_names=input_names, model_max_length=POSITIONS, **specials
    )


def _cls_sep_tokenizer(
    pad: str = "[PAD]", unk: str = "[UNK]", cls: str = "[CLS]", sep: str = "[SEP]", mask: str = "[MASK]", *, types: bool
) -> Any:
    """BERT-like: WordPiece, lower-cased, `[CLS] A [SEP] B [SEP]`; token types only where the model has them."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate([pad, unk, cls, sep, mask, *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    tok.decoder = decoders.WordPiece()
    names = WITH_TYPES if types else NO_TYPES
    return _wrap(tok, names, pad_token=pad, unk_token=unk, cls_token=cls, sep_token=sep, mask_token=mask)


def _roberta_tokenizer() -> Any:
    """RoBERTa / XLM-R: `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3, `<mask>` last; `<s> A </s></s> B </s>`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *WORDS, "<mask>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    names = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>")
    return _wrap(tok, NO_TYPES, pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", **names)


def _decoder_tokenizer(specials: list[str], bos: str, eos: str, unk: str) -> tuple[Any, dict]:
    """A Llama-like decoder's: WordLevel, `bos` before the text, no pad token; returns it and its vocab."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {eos} $B:1", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return _wrap(tok, NO_TYPES, bos_token=bos, eos_token=eos, unk_token=unk), vocab


# ---- encoders ---------------------------------------------------------------------------------------------------
def _distilbert(path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    tok = _cls_sep_tokenizer(types=False)
    config = DistilBertConfig(
        vocab_size=len(tok),
        dim=32,
        hidden_dim=64,
        n_layers=2,
        n_heads=2,
        max_position_embeddings=POSITIONS,
        dropout=0.0,
        attention_dropout=0.0,
        seq_classif_dropout=0.0,
        pad_token_id=tok.pad_token_id,
    )
    _save(DistilBertForMaskedLM(config), tok, path)


def _roberta(path: Path, xlm: bool = False) -> None:
    from transformers import RobertaConfig, RobertaForMaskedLM, XLMRobertaConfig, XLMRobertaForMaskedLM

    tok = _roberta_tokenizer()
    if xlm:
        config_class, model_class = XLMRobertaConfig, XLMRobertaForMaskedLM
    else:
        config_class, model_class = RobertaConfig, RobertaForMaskedLM
    config = config_class(
        vocab_size=len(tok),
        **_SMALL,
        **_NO_DROPOUT,
        # positions start after the pad id (RoBERTa's quirk: 514 in roberta-base for 512 tokens)
        max_position_embeddings=POSITIONS + 2,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    _save(model_class(config), tok, path)


def _deberta_v2(path: Path) -> None:
    from transformers import DebertaV2Config, DebertaV2Model

    tok = _cls_sep_tokenizer(types=False)
    config = DebertaV2Config(  # DeBERTa-v3's shape: relative attention, no absolute positions, no token types
        vocab_size=len(tok),
        **_SMALL,
        **_NO_DROPOUT,
        max_position_embeddings=POSITIONS,
        type_vocab_size=0,
        relative_attention=True,
        position_buckets=32,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pooler_hidden_size=32,
        pooler_dropout=0.0,
        pad_token_id=tok.pad_token_id,
    )
    _save(DebertaV2Model(config), tok, path)


def _electra(path: Path) -> None:
    from transformers import ElectraConfig, ElectraForPreTraining

    tok = _cls_sep_tokenizer(types=True)
    config = ElectraConfig(
        vocab_size=len(tok),
        embedding_size=32,
        **_SMALL,
        **_NO_DROPOUT,
        max_position_embeddings=POSITIONS,
        pad_token_id=tok.pad_token_id,
    )
    _save(ElectraForPreTraining(config), tok, path)  # the discriminator, as google/electra-*-discriminator


def _albert(path: Path) -> None:
    from transformers import AlbertConfig, AlbertForPreTraining

    # albert-base-v2's ids: <pad>=0 <unk>=1 [CLS]=2 [SEP]=3 [MASK]=4
    tok = _cls_sep_tokenizer(pad="<pad>", unk="<unk>", types=True)
    config = AlbertConfig(
        vocab_size=len(tok),
        embedding_size=16,
        **_SMALL,
        **_NO_DROPOUT,
        classifier_dropout_prob=0.0,
        max_position_embeddings=POSITIONS,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    _save(AlbertForPreTraining(config), tok, path)  # with the pooler, as albert-base-v2's weights have it


def _modernbert(path: Path) -> None:
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    tok = _cls_sep_tokenizer(types=False)
    config = ModernBertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=POSITIONS,
        local_attention=16,  # its sliding-window layers see +-8 tokens: the toy texts exercise both kinds
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        cls_token_id=tok.cls_token_id,
        sep_token_id=tok.sep_token_id,
    )
    _save(ModernBertForMaskedLM(config), tok, path)


# ---- decoders ---------------------------------------------------------------------------------------------------
def _byte_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE (GPT-2 / Qwen2 style) trained on the toy words, with and without a leading space, until
    each is one token: its vocab (specials first, then the 256 bytes and the merges) and merges."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator([" ".join(WORDS), *WORDS], trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def _gpt2(path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    # GPT-2: byte-level BPE; <|endoftext|> is its bos, eos and unk, and it adds no special token to a text
    vocab, merges = _byte_bpe(["<|endoftext|>"])
    tok = GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=POSITIONS)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=POSITIONS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    _save(GPT2LMHeadModel(config), tok, path)


def _qwen2(path: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    # Qwen2: byte-level BPE, no BOS; <|endoftext|> ends texts, <|im_start|>/<|im_end|> frame chat turns.
    # transformers always loads a qwen2 folder with Qwen2Tokenizer (it ignores tokenizer_config's class), which
    # names <|endoftext|> the pad token by default: the service's pad = eos, written down.
    vocab, merges = _byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=POSITIONS)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(vocab), **_SMALL, bos_token_id=eos, eos_token_id=eos, pad_token_id=None, **_decoder_common()
    )
    _save(Qwen2ForCausalLM(config), tok, path)


def _mistral(path: Path) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    tok, vocab = _decoder_tokenizer(["<unk>", "<s>", "</s>"], "<s>", "</s>", "<unk>")
    config = MistralConfig(
        vocab_size=len(vocab),
        **_SMALL,
        head_dim=16,  # Mistral's default is 128, whatever the hidden size
        sliding_window=POSITIONS,
        **_decoder_ids(vocab, "<s>", "</s>"),
        **_decoder_common(),
    )
    _save(MistralForCausalLM(config), tok, path)


def _phi3(path: Path) -> None:
    from transformers import Phi3Config, Phi3ForCausalLM

    tok, vocab = _decoder_tokenizer(["<unk>", "<s>", "</s>", "<|endoftext|>"], "<s>", "<|endoftext|>", "<unk>")
    config = Phi3Config(
        vocab_size=len(vocab),
        **_SMALL,
        original_max_position_embeddings=POSITIONS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        **_decoder_ids(vocab, "<s>", "<|endoftext|>"),
        **_decoder_common(),
    )
    _save(Phi3ForCausalLM(config), tok, path)


def _gemma(path: Path) -> None:
    from transformers import GemmaConfig, GemmaForCausalLM

    # Gemma's ids: <pad>=0 <eos>=1 <bos>=2 <unk>=3 (the tokenizer names no pad token here: see the module doc)
    tok, vocab = _decoder_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"], "<bos>", "<eos>", "<unk>")
    config = GemmaConfig(
        vocab_size=len(vocab),
        **_SMALL,
        head_dim=16,  # Gemma's default is 256
        **_decoder_ids(vocab, "<bos>", "<eos>"),
        **_decoder_common(),
    )
    _save(GemmaForCausalLM(config), tok, path)


def _decoder_ids(vocab: dict[str, int], bos: str, eos: str) -> dict[str, int | None]:
    return {"bos_token_id": vocab[bos], "eos_token_id": vocab[eos], "pad_token_id": None}


def _decoder_common() -> dict[str, Any]:
    return {"num_key_value_heads": 1, "max_position_embeddings": POSITIONS, "attention_dropout": 0.0}


def _save(model: Any, tokenizer: Any, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


# ---- the reference ----------------------------------------------------------------------------------------------
def plain_peft_probs(base: Path, adapter: Path, n_labels: int, texts: list[str], seed: int = 1234) -> Any:
    """Probabilities [len(texts), n_labels] that plain transformers + peft give for the adapter saved in
    `adapter` on the base saved in `base`: `AutoModelForSequenceClassification.from_pretrained` (its new head
    and any other weight the checkpoint lacks drawn from `seed`, so whatever the adapter does not bring differs
    from what the service drew), `PeftModel.from_pretrained`, eval, fp32, one batch padded on the right. The
    pad token is the tokenizer's, or its eos where it has none (decoders), as the service sets it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=n_labels, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=POSITIONS, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**enc).logits.float(), dim=-1)


_BUILDERS: dict[str, Callable[[Path], Any]] = {
    "bert": build_bert,
    "llama": build_llama,
    "gpt2": _gpt2,
    "distilbert": _distilbert,
    "roberta": _roberta,
    "xlm-roberta": lambda path: _roberta(path, xlm=True),
    "deberta-v2": _deberta_v2,
    "electra": _electra,
    "albert": _albert,
    "modernbert": _modernbert,
    "qwen2": _qwen2,
    "mistral": _mistral,
    "phi3": _phi3,
    "gemma": _gemma,
}
assert tuple(_BUILDERS) == ARCHITECTURES
