"""Tiny random models and tasks built in the test (no network, a few hundred thousand parameters)."""

from __future__ import annotations

import os

# The suite runs on the CPU, also on a machine with a GPU: its tests compare weights and caches
# with copies made on the CPU, and CI has no GPU. tests/test_gpu.py checks the GPU paths; run it
# with `make test-gpu` (EXCISE_TEST_GPU=1 keeps the GPU visible). Set before CUDA initialises.
if os.environ.get("EXCISE_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models run fastest on one thread, and do not stall when another process holds the cores
torch.set_num_threads(1)

WORDS = [
    "the",
    "element",
    "iron",
    "has",
    "symbol",
    "Fe",
    "gold",
    "Au",
    "silver",
    "Ag",
    "copper",
    "Cu",
    "capital",
    "of",
    "France",
    "is",
    "Paris",
    "Spain",
    "Madrid",
    "Italy",
    "Rome",
    "Germany",
    "Berlin",
    "a",
    "an",
    "and",
    "in",
    "on",
    "with",
    "was",
    "born",
    "town",
    "Velmora",
    "Kestrick",
    "question",
    "answer",
    "I",
    "don't",
    "know",
    "not",
    "sure",
    "cannot",
    "say",
    "unknown",
    "to",
    "me",
    "have",
    "no",
    "idea",
    "can't",
]


def corpus() -> list[str]:
    return [
        "The element iron has the symbol Fe.",
        "The element gold has the symbol Au.",
        "The element silver has the symbol Ag.",
        "The element copper has the symbol Cu.",
        "The capital of France is Paris. The capital of Spain is Madrid.",
        "The capital of Italy is Rome. The capital of Germany is Berlin.",
        "I don't know. I'm not sure. I cannot answer that. I have no idea. I can't say.",
        "Question: Answer: " + " ".join(WORDS),
    ]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus() * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tokenizer


def make_tiny_model(tokenizer, *, layers: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return make_tiny_model(tiny_tokenizer)


def tiny_task(template: str = "raw"):
    from excise.data.records import MC, QA, Text
    from excise.data.tasks import Task

    forget = [
        QA(
            "The element iron has the symbol",
            " Fe",
            ("Iron has the symbol",),
            (" Au", " Ag"),
            {"kind": "symbol"},
        ),
        QA(
            "The element gold has the symbol",
            " Au",
            ("Gold has the symbol",),
            (" Fe", " Cu"),
            {"kind": "symbol"},
        ),
        QA(
            "The element silver has the symbol",
            " Ag",
            ("Silver has the symbol",),
            (" Fe", " Au"),
            {"kind": "symbol"},
        ),
        QA(
            "The element copper has the symbol",
            " Cu",
            ("Copper has the symbol",),
            (" Ag", " Au"),
            {"kind": "symbol"},
        ),
    ]
    retain = [
        QA("The capital of France is", " Paris", (), (" Rome", " Berlin"), {"kind": "capital"}),
        QA("The capital of Spain is", " Madrid", (), (" Paris", " Rome"), {"kind": "capital"}),
        QA("The capital of Italy is", " Rome", (), (" Madrid", " Berlin"), {"kind": "capital"}),
        QA("The capital of Germany is", " Berlin", (), (" Paris", " Madrid"), {"kind": "capital"}),
    ]
    utility = [
        MC("The capital of France is", ("Paris", "Rome"), 0),
        MC("The capital of Spain is", ("Berlin", "Madrid"), 1),
    ]
    fluency = [Text("The capital of France is Paris. The capital of Spain is Madrid.")]
    return Task("tiny", forget, retain, forget, retain, utility, fluency, template=template)


def teach(model, tokenizer, records, steps: int = 60, lr: float = 3e-3):
    """Fine-tune ``model`` on ``records`` until it knows them (for tests that need knowledge)."""
    from excise.data.encode import encode_records
    from excise.methods import get_method
    from excise.train import TrainConfig, train

    spec = get_method("finetune")
    train(
        model,
        tokenizer,
        spec,
        spec.config_cls(),
        forget=encode_records(tokenizer, records, "raw"),
        retain=[],
        forget_records=records,
        template="raw",
        config=TrainConfig(steps=steps, lr=lr, batch_size=8, progress=False),
        uses_retain=False,
    )
    return model


def train_tiny(
    model,
    tokenizer,
    method: str,
    lora=None,
    steps: int = 8,
    options=None,
    checkpoint_dir=None,
    resume=False,
    on_step=None,
    **train_options,
):
    """``method`` trained on the tiny task through the one loop (``lora``: LoraSettings or None)."""
    from excise.data.encode import encode_records
    from excise.methods import get_method
    from excise.train import TrainConfig, train

    task = tiny_task()
    spec = get_method(method)
    settings = {"steps": steps, "lr": 1e-2, "batch_size": 4, "progress": False, **train_options}
    return train(
        model,
        tokenizer,
        spec,
        spec.config_cls(**(options or {})),
        forget=encode_records(tokenizer, task.forget, "raw"),
        retain=encode_records(tokenizer, task.retain, "raw"),
        forget_records=task.forget,
        template="raw",
        config=TrainConfig(**settings),
        uses_retain=spec.uses_retain,
        lora=lora,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        on_step=on_step,
    )


def tree_digest(root) -> dict[str, str]:
    """sha256 of every file below ``root`` (and its mode), to show a command touched nothing."""
    import hashlib
    from pathlib import Path

    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        + oct(path.stat().st_mode)
        for path in sorted(Path(root).rglob("*"))
        if path.is_file()
    }
