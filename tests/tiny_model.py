"""A tiny random Llama and a BPE tokenizer trained on our prompts, built offline for tests."""

from __future__ import annotations

from pathlib import Path


def build_tiny_llama(directory: Path, seed: int = 0, hidden_size: int = 32) -> Path:
    """Write a ~100k-parameter Llama + fast tokenizer that ``from_pretrained`` loads offline
    (``hidden_size`` 64 makes a second model of another size)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from iclvsft_tasks.data.splits import SplitSpec, build_split
    from iclvsft_tasks.prompts import render_completion, render_prompt
    from iclvsft_tasks.tasks.registry import TASKS

    corpus = []
    for task in TASKS:
        for item in build_split(
            SplitSpec(task, train_size=40, test_size=5, test_broken_size=5, validation_size=5), "train"
        ):
            corpus.append(render_prompt(item) + render_completion(item))
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory
