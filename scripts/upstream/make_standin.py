"""Builds the offline stand-in for `EleutherAI/gpt-neo-125M`, the model the
tensorizer 2.12.1 test-suite loads from the Hugging Face hub.

The stand-in is a real GPT-Neo (transformers' own class, eight layers
alternating global and local attention, 15 M parameters: its float16
checkpoint is over the 20 MiB that the torch_compat tests expect of
gpt-neo-125M, and its embedding has the rows a token id of 1000 needs) with a byte-level BPE tokenizer
trained here on a small generated corpus, then trained for a few hundred
steps to continue " hello hello ..." with " hello": the suite's generation
check (`check_inference`: 400 x " hello" in, more "hello" out after 50
sampled tokens) then means something, as it does with the real model.

It is written into a Hugging Face cache laid out as the hub client lays it
out (`models--EleutherAI--gpt-neo-125M/snapshots/<commit>/`, `refs/main`),
so `from_pretrained("EleutherAI/gpt-neo-125M")` finds it with
`HF_HUB_OFFLINE=1` and never touches the network.

Usage: python make_standin.py HF_HOME     (idempotent; prints HF_HOME)
Deterministic: fixed seeds, one thread.
"""

import json
import os
import random
import sys

REPO = "EleutherAI/gpt-neo-125M"
# A fixed, made-up commit hash: the cache layout wants one.
COMMIT = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e"
VERSION = "standin-v1"  # bump to rebuild cached stand-ins


def corpus(rng):
    words = ("hello world model tensor weights load stream file fast disk network "
             "the a of and to in is it that for on with as was by GPU memory "
             "serialize deserialize read write bytes chunk hash key").split()
    lines = []
    for _ in range(2000):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 16))))
    for n in range(1, 60):
        lines.append(" hello" * n)
    return lines


def main():
    hf_home = os.path.abspath(sys.argv[1])
    repo_dir = os.path.join(hf_home, "hub", "models--" + REPO.replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", COMMIT)
    stamp = os.path.join(snapshot, "standin.json")
    if os.path.exists(stamp) and json.load(open(stamp)).get("version") == VERSION:
        print(hf_home)
        return

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPTNeoConfig, GPTNeoForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = random.Random(0)
    lines = corpus(rng)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", model_max_length=2048)
    hello = tok.encode(" hello").ids
    assert len(hello) == 1, f'" hello" must be one token, got {hello}'

    config = GPTNeoConfig(
        vocab_size=2048, max_position_embeddings=1024, hidden_size=384,
        num_layers=8, num_heads=6, attention_types=[[["global", "local"], 4]],
        window_size=256, intermediate_size=1536, bos_token_id=0, eos_token_id=0)
    model = GPTNeoForCausalLM(config)
    # Layer norms away from their (1, 0) initialisation, so a freshly made
    # LayerNorm never equals a trained one (the verification tests swap one).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)

    # Teach it to continue " hello hello ..." with " hello", keeping the
    # rest of the corpus so it stays a language model of sorts.
    ids = [tok.encode(line).ids for line in lines]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(120):
        if step % 2 == 0:
            n = rng.randint(16, 460)
            batch = torch.tensor([hello * n])
        else:
            seq = []
            while len(seq) < 128:
                seq += ids[rng.randrange(len(ids))] + [0]
            batch = torch.tensor([seq[:128]])
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([hello * 400])).logits[0, -1]
        p_hello = torch.softmax(logits, -1)[hello[0]].item()
    assert p_hello > 0.9, f"the stand-in continues hello with p={p_hello:.3f} only"

    os.makedirs(snapshot, exist_ok=True)
    model.save_pretrained(snapshot, safe_serialization=True)
    fast.save_pretrained(snapshot)
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(COMMIT)
    with open(stamp, "w") as f:
        json.dump({"version": VERSION, "p_hello_after_400": round(p_hello, 4),
                   "parameters": sum(p.numel() for p in model.parameters())}, f)
    print(hf_home)


if __name__ == "__main__":
    main()
