"""A real tiny GLA learns MQAR from mqar_batch in a few hundred fast steps (T <= 16), and evaluate_mqar sees
it: accuracy at N=2 far above chance (1/128)."""
from __future__ import annotations

import torch

from statex_dist.eval import evaluate_mqar, mqar_batch


def test_tiny_gla_learns_mqar():
    from statex_dist.archs.gla.config import GLAConfig
    from statex_dist.models import build_model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steps of a few ms: one thread is faster than two
    try:
        torch.manual_seed(0)
        # one layer with a short convolution: a tiny GLA that learns MQAR within the test's steps
        model = build_model(GLAConfig(vocab_size=256, hidden_size=64, num_layers=1, num_heads=4, expand_k=1.0,
                                      use_short_conv=True))
        before = evaluate_mqar(model, pairs=(2,), n=128)
        steps = 250
        opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps, pct_start=0.1)
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(steps):
            ids, labels = mqar_batch([2, 3, 4], 64, g)
            loss = model(ids, labels=labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        after = evaluate_mqar(model, pairs=(2, 4), n=128)
    finally:
        torch.set_num_threads(threads)
    assert model.training  # evaluate_mqar restores the caller's mode
    assert before[2] < 0.05
    assert after[2] > 0.25 and after[4] > 2 / 128, after
